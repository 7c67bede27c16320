//! What both relay loops share: what became of a batch's rows, the rows the store needs back, one
//! publish call bounded by the publish timeout, and a failed row's disposition. Which event
//! goes in which call is the [`Scheduler`](crate::pipeline::Scheduler)'s: an event only after
//! its predecessor of the same key was confirmed; after a failure, the later events of its key
//! are given back to the store behind it.

use herald_core::{Disposition, Envelope, Error, Failure, Publisher, Seq};

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
/// Its duration goes to `metrics`.
pub(crate) async fn confirm_round<P: Publisher>(
    publisher: &P,
    envelopes: &[Envelope],
    config: &RelayConfig,
    metrics: &RelayMetrics,
) -> Vec<Result<(), Error>> {
    let expected = envelopes.len();
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(config.publish_timeout, publisher.publish(envelopes)).await;
    metrics.published_call(started.elapsed());
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
