//! Plain rdkafka clients beside the Kafka transport: count a topic's records (its partitions'
//! high watermarks), delete the run's topic, and the *ceiling* producer of B2k — a
//! `FutureProducer` with the transport's producer settings, publishing the records the
//! transport would send, from memory, under the transport's in-flight window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use herald_core::Envelope;
use herald_kafka::KafkaConfig;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

/// How long a metadata or watermark request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A record as the transport would produce it (`herald_kafka::mapping`): key, CloudEvents
/// headers in the mapping's order, payload and timestamp.
#[derive(Debug, Clone)]
pub struct Record {
    /// The topic.
    pub topic: String,
    /// The partition key's bytes.
    pub key: Option<Vec<u8>>,
    /// Header names and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The value.
    pub payload: bytes::Bytes,
    /// `occurred_at` in Unix milliseconds.
    pub timestamp_ms: i64,
}

impl Record {
    /// The record the transport configured by `config` sends for `envelope`
    /// (`herald_kafka::mapping::encode`).
    pub fn of(envelope: &Envelope, config: &KafkaConfig) -> Result<Self> {
        let out = herald_kafka::mapping::encode(envelope, config)?;
        Ok(Record {
            topic: out.topic,
            key: out.key.map(String::into_bytes),
            headers: out.headers,
            payload: out.payload,
            timestamp_ms: out.timestamp_ms,
        })
    }
}

/// The settings of the ceiling's clients: the transport's, under a client id of their own.
fn plain_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = herald_kafka::client_config(config);
    client.set("client.id", "herald-bench-ceiling");
    client
}

/// A producer, a consumer (for metadata and watermarks) and an admin client.
pub struct KafkaBroker {
    producer: FutureProducer,
    consumer: Arc<BaseConsumer>,
    admin: AdminClient<DefaultClientContext>,
}

impl KafkaBroker {
    /// Clients of the cluster of `config`, the producer set up as the transport's.
    pub fn connect(config: &KafkaConfig) -> Result<Self> {
        Ok(KafkaBroker {
            producer: herald_kafka::producer_config(config)
                .set("client.id", "herald-bench-ceiling")
                .create()
                .context("create the ceiling producer")?,
            consumer: Arc::new(plain_config(config).create().context("create a consumer")?),
            admin: plain_config(config)
                .create()
                .context("create an admin client")?,
        })
    }

    /// Records ever written to `topic`: the sum of its partitions' high watermarks.
    pub async fn written(&self, topic: &str) -> Result<u64> {
        let consumer = Arc::clone(&self.consumer);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let metadata = consumer.fetch_metadata(Some(&topic), TIMEOUT)?;
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                .filter(|p| !p.is_empty())
                .with_context(|| format!("topic `{topic}` has no partitions"))?;
            let mut written = 0u64;
            for partition in partitions {
                let (_, high) = consumer.fetch_watermarks(&topic, partition, TIMEOUT)?;
                written += u64::try_from(high).unwrap_or(0);
            }
            Ok(written)
        })
        .await?
    }

    /// Produces `records` in order with at most `window` awaiting their delivery report at
    /// once, and waits for every report; fails on the first failed delivery.
    pub async fn publish(&self, records: &[Record], window: usize) -> Result<()> {
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(window);
        for record in records {
            while pending.len() >= window.max(1) {
                settle(pending.pop_front()).await?;
            }
            loop {
                match self.producer.send_result(future_record(record)) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if pending.is_empty() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        } else {
                            settle(pending.pop_front()).await?;
                        }
                    }
                    Err((err, _)) => return Err(err).context("produce"),
                }
            }
        }
        while let Some(delivery) = pending.pop_front() {
            settle(Some(delivery)).await?;
        }
        Ok(())
    }

    /// Deletes `topic`.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for result in self.admin.delete_topics(&[topic], &options).await? {
            if let Err((topic, code)) = result {
                bail!("delete topic `{topic}`: {code}");
            }
        }
        Ok(())
    }

    /// Waits until the producer delivered what it holds.
    pub async fn close(self) {
        let producer = self.producer;
        let _ = tokio::task::spawn_blocking(move || producer.flush(TIMEOUT)).await;
    }
}

/// The rdkafka record of `record` (built per send, as the transport does).
fn future_record(record: &Record) -> FutureRecord<'_, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (name, value) in &record.headers {
        headers = headers.insert(Header {
            key: name.as_str(),
            value: Some(value.as_slice()),
        });
    }
    let mut out = FutureRecord::<[u8], [u8]>::to(&record.topic)
        .headers(headers)
        .payload(record.payload.as_ref())
        .timestamp(record.timestamp_ms);
    if let Some(key) = &record.key {
        out = out.key(key.as_slice());
    }
    out
}

async fn settle(delivery: Option<DeliveryFuture>) -> Result<()> {
    let Some(delivery) = delivery else {
        return Ok(());
    };
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => Err(err).context("delivery failed"),
        Err(_) => bail!("the producer went away"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn records_read_back_as_the_envelopes_they_came_from() {
        let config = KafkaConfig::new("127.0.0.1:9092");
        for envelope in fixture::envelopes(3, 2).expect("envelopes") {
            let record = Record::of(&envelope, &config).expect("record");
            let decoded = herald_kafka::mapping::decode(
                &record.headers,
                record.key.as_deref(),
                &record.payload,
                &config,
            )
            .expect("a record of the transport's mapping");
            assert_eq!(decoded, envelope);
            assert_eq!(record.topic, config.topic);
            assert_eq!(record.key, envelope.partition_key.map(String::into_bytes));
        }
    }
}
