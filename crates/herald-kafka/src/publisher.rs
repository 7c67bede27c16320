//! Publishing: an idempotent producer (`enable.idempotence`, `acks=all`, the Java clients'
//! `murmur2_random` partitioner), delivery reports pipelined under a bounded window, and a
//! producer rebuilt when librdkafka reports it fatally failed.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Envelope, Result};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::config::KafkaConfig;
use crate::error::{Secrets, kafka, other};
use crate::mapping::{self, RecordHeaders};

/// A record to produce, whatever it carries (an event, a retry, a dead letter, a tombstone).
#[derive(Debug, Clone, Default)]
pub(crate) struct Record {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: RecordHeaders,
    /// `None` for a record without a value.
    pub(crate) payload: Option<Bytes>,
    pub(crate) timestamp_ms: Option<i64>,
}

impl From<mapping::Outgoing> for Record {
    fn from(out: mapping::Outgoing) -> Self {
        Record {
            topic: out.topic,
            key: out.key.map(String::into_bytes),
            headers: out.headers,
            payload: Some(out.payload),
            timestamp_ms: Some(out.timestamp_ms),
        }
    }
}

/// The producer settings the transport's guarantees rest on (idempotence, `acks=all`, five
/// requests in flight per connection, the Java clients' partitioner, the delivery timeout),
/// over [`client_config`](crate::client_config): for tools that must produce exactly as the
/// transport does.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = crate::client_config(config);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("partitioner", "murmur2_random")
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        );
    client
}

/// The transport's producer, shared by its clones, publishers and acknowledgers.
pub(crate) struct Producing {
    config: Arc<KafkaConfig>,
    secrets: Secrets,
    /// The producer in use and how many were built before it.
    current: Mutex<(u64, FutureProducer)>,
}

impl Producing {
    pub(crate) fn new(config: Arc<KafkaConfig>, secrets: Secrets) -> Result<Self> {
        let producer = build(&config, &secrets)?;
        Ok(Producing {
            config,
            secrets,
            current: Mutex::new((0, producer)),
        })
    }

    /// How many producers were built before the one in use.
    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.current().0
    }

    fn current(&self) -> (u64, FutureProducer) {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces producer `generation` when it is in a fatal state (librdkafka's idempotence
    /// bookkeeping gave up on it): its unacknowledged messages were reported failed, and the
    /// caller sends them again on the new producer, in order.
    fn recover(&self, generation: u64, producer: &FutureProducer) {
        let Some((code, reason)) = producer.client().fatal_error() else {
            return;
        };
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 != generation {
            return; // another caller rebuilt it already
        }
        tracing::warn!(%code, reason = %self.secrets.scrub(&reason), "rebuilding the Kafka producer after a fatal error");
        match build(&self.config, &self.secrets) {
            Ok(fresh) => *current = (generation + 1, fresh),
            Err(err) => tracing::error!(error = %err.chain(), "cannot rebuild the Kafka producer"),
        }
    }

    /// Publishes `batch` in order under the configured in-flight window; one result per
    /// envelope. A message whose key had an earlier message fail in this call is not sent
    /// (it fails too), so that a retry by the caller cannot put it ahead of that message.
    pub(crate) async fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        let (generation, producer) = self.current();
        let mut results: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
        let mut pending: VecDeque<(usize, Option<String>, DeliveryFuture)> = VecDeque::new();
        let mut failed_keys: HashSet<String> = HashSet::new();
        for (i, envelope) in batch.iter().enumerate() {
            let key = envelope.partition_key.clone();
            if key.as_ref().is_some_and(|k| failed_keys.contains(k)) {
                results[i] = Some(Err(held_back()));
                continue;
            }
            let record = match mapping::encode(envelope, &self.config) {
                Ok(out) => Record::from(out),
                Err(err) => {
                    key.map(|k| failed_keys.insert(k));
                    results[i] = Some(Err(err));
                    continue;
                }
            };
            while pending.len() >= self.config.in_flight {
                self.settle_front(&mut pending, &mut results, &mut failed_keys)
                    .await;
            }
            match self
                .enqueue(
                    &producer,
                    &record,
                    &mut pending,
                    &mut results,
                    &mut failed_keys,
                )
                .await
            {
                Ok(future) => pending.push_back((i, key, future)),
                Err(err) => {
                    key.map(|k| failed_keys.insert(k));
                    results[i] = Some(Err(err));
                }
            }
        }
        while !pending.is_empty() {
            self.settle_front(&mut pending, &mut results, &mut failed_keys)
                .await;
        }
        self.recover(generation, &producer);
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(other("publish", true, "no delivery report"))))
            .collect()
    }

    /// Waits until the producer delivered what it holds (at most the delivery timeout).
    pub(crate) async fn flush(&self) {
        let (_, producer) = self.current();
        let timeout = self.config.delivery_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(error = %err, "the Kafka producer did not deliver everything before closing");
        }
    }

    /// Produces one record and waits for its delivery report.
    pub(crate) async fn send(&self, record: &Record) -> Result<()> {
        let (generation, producer) = self.current();
        let mut pending = VecDeque::new();
        let mut results = vec![None];
        let mut failed = HashSet::new();
        let result = match self
            .enqueue(&producer, record, &mut pending, &mut results, &mut failed)
            .await
        {
            Ok(future) => self.report(future).await,
            Err(err) => Err(err),
        };
        self.recover(generation, &producer);
        result
    }

    /// Hands `record` to the producer, waiting for room when its queue is full.
    async fn enqueue(
        &self,
        producer: &FutureProducer,
        record: &Record,
        pending: &mut VecDeque<(usize, Option<String>, DeliveryFuture)>,
        results: &mut [Option<Result<()>>],
        failed_keys: &mut HashSet<String>,
    ) -> Result<DeliveryFuture> {
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: Some(value.as_slice()),
                });
            }
            let mut out = FutureRecord::<[u8], [u8]>::to(&record.topic).headers(headers);
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            if let Some(payload) = &record.payload {
                out = out.payload(payload.as_ref());
            }
            if let Some(ts) = record.timestamp_ms {
                out = out.timestamp(ts);
            }
            match producer.send_result(out) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    } else {
                        self.settle_front(pending, results, failed_keys).await;
                    }
                }
                Err((err, _)) => return Err(kafka("publish", &err, &self.secrets)),
            }
        }
    }

    async fn settle_front(
        &self,
        pending: &mut VecDeque<(usize, Option<String>, DeliveryFuture)>,
        results: &mut [Option<Result<()>>],
        failed_keys: &mut HashSet<String>,
    ) {
        if let Some((i, key, future)) = pending.pop_front() {
            let result = self.report(future).await;
            if result.is_err() {
                key.map(|k| failed_keys.insert(k));
            }
            results[i] = Some(result);
        }
    }

    async fn report(&self, future: DeliveryFuture) -> Result<()> {
        match future.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((err, _))) => Err(kafka("publish", &err, &self.secrets)),
            Err(_) => Err(other("publish", true, "the producer went away")),
        }
    }
}

fn held_back() -> herald_core::Error {
    other(
        "publish",
        true,
        "not sent: an earlier message of its partition key failed in this batch",
    )
}

fn build(config: &KafkaConfig, secrets: &Secrets) -> Result<FutureProducer> {
    producer_config(config)
        .create()
        .map_err(|e| kafka("create a producer", &e, secrets))
}
