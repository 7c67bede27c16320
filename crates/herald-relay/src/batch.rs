//! What both relay loops share: what became of a batch's rows, the rows the store needs back, one
//! publish call bounded by the publish timeout, and a failed row's disposition. Which event
//! goes in which call is the [`Scheduler`](crate::pipeline::Scheduler)'s: an event only after
//! its predecessor of the same key was confirmed; after a failure, the later events of its key
//! are given back to the store behind it.

use herald_core::{Disposition, Envelope, Error, Failure, Publisher, Seq};
use tracing::Instrument;

use crate::{RelayConfig, RelayMetrics};

/// What became of each row of a batch, ready to be written back to the store.
#[derive(Debug, Default)]
pub(crate) struct RowFates {
    pub(crate) completed: Vec<Seq>,
    pub(crate) failures: Vec<Failure>,
    pub(crate) released: Vec<Seq>,
}

/// What the store needs back about a claimed row once its envelope went to the publisher.
pub(crate) struct Row {
    pub(crate) seq: Seq,
    pub(crate) attempts: u32,
    pub(crate) key: Option<String>,
}

/// One pipelined publish round, bounded by the publish timeout; always one result per envelope.
/// Its duration goes to `metrics`; the call runs inside its [`send_span`].
pub(crate) async fn confirm_round<P: Publisher>(
    publisher: &P,
    envelopes: &[Envelope],
    config: &RelayConfig,
    metrics: &RelayMetrics,
) -> Vec<Result<(), Error>> {
    let span = send_span(publisher, envelopes);
    let expected = envelopes.len();
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(config.publish_timeout, publisher.publish(envelopes))
        .instrument(span.clone())
        .await;
    metrics.published_call(started.elapsed());
    let results = results(outcome, expected, config);
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        span.record("otel.status_code", "ERROR");
        span.record("herald.failed_count", failed);
    }
    results
}

/// The span of one publish call, after OpenTelemetry's messaging conventions for a (batch)
/// send: named `send <destination>` (plain `send` when the call's messages go to several
/// destinations), of kind producer, with `messaging.system`, `messaging.destination.name`,
/// `messaging.batch.message_count`, and `messaging.message.id` when it sends one message.
/// The messages were recorded in other traces: with the feature `otel`, the span links to
/// each message's recorded context rather than joining one of them.
fn send_span<P: Publisher>(publisher: &P, envelopes: &[Envelope]) -> tracing::Span {
    let destination = envelopes.first().map(|e| publisher.destination(e));
    let destination = destination.filter(|first| {
        envelopes
            .iter()
            .skip(1)
            .all(|e| publisher.destination(e) == *first)
    });
    let single = match envelopes {
        [only] => Some(only.id),
        _ => None,
    };
    let span = tracing::info_span!(
        "send",
        otel.name = destination.map_or_else(|| "send".to_owned(), |d| format!("send {d}")),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = publisher.messaging_system(),
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = destination,
        messaging.batch.message_count = envelopes.len(),
        messaging.message.id = single.as_ref().map(tracing::field::display),
        herald.failed_count = tracing::field::Empty,
    );
    if !span.is_disabled() {
        for envelope in envelopes {
            herald_core::trace::add_link(&span, &envelope.trace);
        }
    }
    span
}

/// One result per envelope from what the publish call returned (or its timeout).
fn results(
    outcome: Result<Vec<Result<(), Error>>, tokio::time::error::Elapsed>,
    expected: usize,
    config: &RelayConfig,
) -> Vec<Result<(), Error>> {
    match outcome {
        Ok(results) if results.len() == expected => results,
        Ok(results) => {
            let got = results.len();
            (0..expected)
                .map(|_| {
                    Err(Error::transport(
                        "publish",
                        true,
                        herald_core::error::Message(format!(
                            "transport returned {got} results for {expected} messages"
                        )),
                    ))
                })
                .collect()
        }
        // No answer at all for the whole call: the broker (or the way to it) is stuck, which is
        // not the messages' fault.
        Err(_) => (0..expected)
            .map(|_| {
                Err(Error::unreachable(
                    "publish",
                    herald_core::error::Message(format!(
                        "no broker confirmation within {:?}",
                        config.publish_timeout
                    )),
                ))
            })
            .collect(),
    }
}

pub(crate) fn failure(row: &Row, error: &Error, config: &RelayConfig) -> Failure {
    let disposition = if !error.is_transient() || row.attempts >= config.max_attempts {
        Disposition::DeadLetter
    } else {
        Disposition::Retry {
            delay: config.backoff.delay(row.attempts),
        }
    };
    Failure {
        seq: row.seq,
        error: error.chain(),
        disposition,
    }
}
