//! Publishing one claimed batch without breaking per-key order.
//!
//! The batch is cut into *waves*: wave `n` holds the `n`-th event of every partition key (and
//! every key-less event sits in wave 0). A wave is published as one pipelined round; the next
//! wave starts once the broker has confirmed the previous one. So events of different keys
//! share a round trip, while an event is only sent after its predecessor of the same key was
//! confirmed. When an event fails, the later events of its key are not sent: they are given
//! back to the store, behind the failed event, which waits for its backoff.

use std::collections::{HashMap, HashSet};

use herald_core::{ClaimedEvent, Disposition, Envelope, Error, Failure, Publisher, Seq};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::RelayConfig;

/// What became of each row of a batch, ready to be written back to the store.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
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

/// Publishes `claimed` (sorted by seq) and decides the fate of every row.
pub(crate) async fn publish<P: Publisher>(
    publisher: &P,
    claimed: Vec<ClaimedEvent>,
    config: &RelayConfig,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Outcome {
    let (rows, waves) = plan(claimed);
    let mut outcome = Outcome::default();
    let mut failed_keys: HashSet<String> = HashSet::new();

    for wave in waves {
        let (indices, envelopes): (Vec<usize>, Vec<Envelope>) = wave
            .into_iter()
            .filter(|(i, _)| {
                let blocked = rows[*i]
                    .key
                    .as_ref()
                    .is_some_and(|k| failed_keys.contains(k));
                if blocked {
                    outcome.released.push(rows[*i].seq);
                }
                !blocked
            })
            .unzip();
        if envelopes.is_empty() {
            continue;
        }
        if shutdown.is_cancelled() || Instant::now() + config.publish_timeout > deadline {
            // Shutting down, or the lease would run out mid-round: give the rest back.
            outcome
                .released
                .extend(indices.iter().map(|&i| rows[i].seq));
            continue;
        }
        let results = confirm_round(publisher, &envelopes, config).await;
        for (i, result) in indices.into_iter().zip(results) {
            let row = &rows[i];
            match result {
                Ok(()) => outcome.completed.push(row.seq),
                Err(error) => {
                    if let Some(key) = &row.key {
                        failed_keys.insert(key.clone());
                    }
                    outcome.failures.push(failure(row, &error, config));
                }
            }
        }
    }
    outcome
}

/// One pipelined publish round, bounded by the publish timeout; always one result per envelope.
pub(crate) async fn confirm_round<P: Publisher>(
    publisher: &P,
    envelopes: &[Envelope],
    config: &RelayConfig,
) -> Vec<Result<(), Error>> {
    let expected = envelopes.len();
    match tokio::time::timeout(config.publish_timeout, publisher.publish(envelopes)).await {
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
        Err(_) => (0..expected)
            .map(|_| {
                Err(Error::transport(
                    "publish",
                    true,
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

type Wave = Vec<(usize, Envelope)>;

/// Splits the batch into rows (what the store needs back) and waves of envelopes.
fn plan(claimed: Vec<ClaimedEvent>) -> (Vec<Row>, Vec<Wave>) {
    let mut rows = Vec::with_capacity(claimed.len());
    let mut waves: Vec<Wave> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, c) in claimed.into_iter().enumerate() {
        let wave = match &c.envelope.partition_key {
            Some(key) => {
                let n = seen.entry(key.clone()).or_insert(0);
                *n += 1;
                *n - 1
            }
            None => 0,
        };
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        rows.push(Row {
            seq: c.seq,
            attempts: c.attempts,
            key: c.envelope.partition_key.clone(),
        });
        waves[wave].push((i, c.envelope));
    }
    (rows, waves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(seq: Seq, key: Option<&str>) -> ClaimedEvent {
        let mut envelope = herald_testkit_free_envelope();
        envelope.partition_key = key.map(str::to_owned);
        ClaimedEvent {
            seq,
            attempts: 1,
            envelope,
        }
    }

    fn herald_testkit_free_envelope() -> Envelope {
        Envelope {
            id: herald_core::Uuid::now_v7(),
            event_type: "t".into(),
            version: 1,
            occurred_at: herald_core::OffsetDateTime::now_utc(),
            correlation_id: herald_core::Uuid::now_v7(),
            causation_id: None,
            partition_key: None,
            content_type: "application/json".into(),
            trace: Default::default(),
            headers: Default::default(),
            payload: herald_core::Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn waves_hold_one_event_per_key() {
        let batch = vec![
            claimed(1, Some("a")),
            claimed(2, Some("b")),
            claimed(3, Some("a")),
            claimed(4, None),
            claimed(5, Some("a")),
            claimed(6, None),
        ];
        let (_, waves) = plan(batch);
        let seqs: Vec<Vec<usize>> = waves
            .iter()
            .map(|w| w.iter().map(|(i, _)| i + 1).collect())
            .collect();
        assert_eq!(seqs, vec![vec![1, 2, 4, 6], vec![3], vec![5]]);
    }
}
