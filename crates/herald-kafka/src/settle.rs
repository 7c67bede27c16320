//! Settling a delivery: an ack commits (once every earlier record of its partition is settled
//! too); a retry or a deferral sends a copy to the subscription's retry topic, due after its
//! delay, then settles the original; a reject, or a retry past the subscription's attempts,
//! sends it to the dead-letter topic with why, then settles the original. A delivery dropped
//! unsettled is handed out again.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{Acknowledger, BoxFuture, Result, Settlement};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::mapping::{self, Lookup, RecordHeaders, header};
use crate::publisher::Record;
use crate::state::Received;
use crate::subscriber::{Raw, StreamShared, now_ms};

/// Longest error text kept in a dead letter's headers.
const MAX_ERROR: usize = 4096;

/// The broker side of one delivery.
pub(crate) struct KafkaAcker {
    shared: Arc<StreamShared>,
    /// `None` once settled.
    record: Option<Arc<Received>>,
}

impl KafkaAcker {
    pub(crate) fn new(shared: Arc<StreamShared>, record: Arc<Received>) -> Self {
        KafkaAcker {
            shared,
            record: Some(record),
        }
    }

    fn done(&mut self) {
        if let Some(record) = self.record.take() {
            self.shared.settled(&record, true);
        }
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        // Dropped unsettled, or its settlement failed or was cancelled.
        if let Some(record) = self.record.take() {
            self.shared.requeue(record);
        }
    }
}

impl Acknowledger for KafkaAcker {
    fn settle(mut self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let Some(record) = self.record.clone() else {
                return Ok(());
            };
            let max_attempts = self.shared.spec.max_attempts.max(1);
            let produce = match settlement {
                Settlement::Ack => None,
                Settlement::Retry { reason, .. } if record.attempt >= max_attempts => {
                    Some(dead_letter_record(
                        &self.shared,
                        &raw_of(&record),
                        "max-attempts",
                        &format!("gave up after {} deliveries: {reason}", record.attempt),
                        record.attempt,
                    ))
                }
                Settlement::Retry { delay, reason } => Some(retry_record(
                    &self.shared,
                    &record,
                    record.attempt.saturating_add(1),
                    delay,
                    &reason,
                )),
                Settlement::Defer { delay, reason } => Some(retry_record(
                    &self.shared,
                    &record,
                    record.attempt,
                    delay,
                    &reason,
                )),
                Settlement::Reject { reason } => Some(dead_letter_record(
                    &self.shared,
                    &raw_of(&record),
                    "rejected",
                    &reason,
                    record.attempt,
                )),
            };
            if let Some(out) = produce {
                // On failure `self` drops unsettled: the delivery is handed out again.
                self.shared.transport.producing.send(&out).await?;
            }
            self.done();
            Ok(())
        })
    }
}

fn raw_of(record: &Received) -> Raw {
    Raw {
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        key: record.key.clone(),
        headers: record.headers.clone(),
        payload: record.payload.clone(),
    }
}

/// Where a record first came from: the headers it carries from an earlier trip through a
/// retry topic, else where it was read.
fn mark_origin(headers: &mut RecordHeaders, raw_topic: &str, partition: i32, offset: i64) {
    if Lookup(headers).bytes(header::ORIGINAL_TOPIC).is_none() {
        mapping::set(headers, header::ORIGINAL_TOPIC, raw_topic);
        mapping::set(headers, header::ORIGINAL_PARTITION, partition.to_string());
        mapping::set(headers, header::ORIGINAL_OFFSET, offset.to_string());
    }
}

/// A copy of `record` for the subscription's retry topic, as attempt `attempt`, due after
/// `delay`.
fn retry_record(
    shared: &StreamShared,
    record: &Received,
    attempt: u32,
    delay: Duration,
    reason: &str,
) -> Record {
    let mut headers = record.headers.clone();
    mark_origin(&mut headers, &record.topic, record.partition, record.offset);
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    mapping::set(&mut headers, header::ATTEMPT, attempt.to_string());
    mapping::set(
        &mut headers,
        header::NOT_BEFORE,
        now_ms().saturating_add(delay_ms).to_string(),
    );
    mapping::set(&mut headers, header::REDELIVERED, "true");
    mapping::set(
        &mut headers,
        header::RETRY_REASON,
        mapping::cut(reason, MAX_ERROR),
    );
    Record {
        topic: shared.topics.retry.clone(),
        key: record.key.clone(),
        headers,
        payload: Some(record.payload.clone()),
        timestamp_ms: None,
    }
}

/// The dead-letter record of `raw`: its headers and value, plus why (`kind`: `rejected`,
/// `max-attempts`, `malformed`; `error`: the text), after how many deliveries, from where and
/// when. Keyed by the message id and the place in the log the copy was first read from, so
/// that a purge can remove it and two copies of one message stay two dead letters.
pub(crate) fn dead_letter_record(
    shared: &StreamShared,
    raw: &Raw,
    kind: &str,
    error: &str,
    attempts: u32,
) -> Record {
    let mut headers = raw.headers.clone();
    mark_origin(&mut headers, &raw.topic, raw.partition, raw.offset);
    for name in [header::NOT_BEFORE, header::REDELIVERED, header::ATTEMPT] {
        headers.retain(|(n, _)| n != name);
    }
    if let Some(key) = &raw.key {
        mapping::set(&mut headers, header::ORIGINAL_KEY, key.clone());
    }
    mapping::set(&mut headers, header::DEAD_LETTER_REASON, kind);
    mapping::set(&mut headers, header::ERROR, mapping::cut(error, MAX_ERROR));
    mapping::set(&mut headers, header::ATTEMPTS, attempts.to_string());
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    mapping::set(&mut headers, header::DEAD_LETTERED_AT, now);
    // One key per copy of a message (two copies of one id, published twice, are two dead
    // letters): the id and where the copy was first read.
    let h = Lookup(&headers);
    let text = |name| h.string(name).ok().flatten().unwrap_or_default();
    let key = format!(
        "{}@{}/{}/{}",
        Lookup(&raw.headers)
            .string(header::ID)
            .ok()
            .flatten()
            .unwrap_or_default(),
        text(header::ORIGINAL_TOPIC),
        text(header::ORIGINAL_PARTITION),
        text(header::ORIGINAL_OFFSET)
    );
    Record {
        topic: shared.topics.dead_letter.clone(),
        key: Some(key.into_bytes()),
        headers,
        payload: Some(raw.payload.clone()),
        timestamp_ms: None,
    }
}
