//! A subscription's dead letters, on its dead-letter topic: listed, replayed and purged.
//!
//! Kafka deletes no single record, so a purge appends a tombstone (the letter's key, no
//! value, header `x-herald-purged`); a listing reads the topic from its start and leaves out
//! what a later tombstone purged. The topic is compacted: the broker drops purged letters
//! and, after a while, their tombstones. A replay sends the letter to the subscription's
//! retry topic as a first attempt, then purges it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::{
    DeadLetter, DeadLetterOrigin, DeadLetters, Page, RawMessage, Result, Selection, Uuid,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Shared;
use crate::config::SubscriptionTopics;
use crate::error::{kafka, other};
use crate::mapping::{self, Lookup, RecordHeaders, header};
use crate::publisher::Record;
use crate::subscriber::now_ms;

/// How long a listing reads before it gives up on reaching the end of the topic.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The dead letters of one subscription (see [`KafkaTransport::dead_letter_queue`]).
///
/// [`KafkaTransport::dead_letter_queue`]: crate::KafkaTransport::dead_letter_queue
#[derive(Clone)]
pub struct KafkaDeadLetterQueue {
    shared: Arc<Shared>,
    topics: SubscriptionTopics,
}

impl std::fmt::Debug for KafkaDeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetterQueue")
            .field("topic", &self.topics.dead_letter)
            .finish_non_exhaustive()
    }
}

/// One live dead-letter record.
struct Letter {
    key: Vec<u8>,
    headers: RecordHeaders,
    payload: Bytes,
}

impl KafkaDeadLetterQueue {
    pub(crate) fn new(shared: Arc<Shared>, topics: SubscriptionTopics) -> Self {
        KafkaDeadLetterQueue { shared, topics }
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topics.dead_letter
    }

    /// The letters not purged, oldest first.
    async fn letters(&self) -> Result<Vec<Letter>> {
        let shared = Arc::clone(&self.shared);
        let topic = self.topics.dead_letter.clone();
        tokio::task::spawn_blocking(move || read_letters(&shared, &topic))
            .await
            .map_err(|e| other("list dead letters", true, e.to_string()))?
    }

    fn to_dead_letter(&self, letter: &Letter) -> DeadLetter {
        let config = &self.shared.config;
        let h = Lookup(&letter.headers);
        let original_key = h.bytes(header::ORIGINAL_KEY);
        let envelope = mapping::decode(&letter.headers, original_key, &letter.payload, config).ok();
        let id = envelope.as_ref().map(|e| e.id).or_else(|| {
            h.string(header::ID)
                .ok()
                .flatten()
                .and_then(|id| Uuid::parse_str(&id).ok())
        });
        let kind = h.string(header::DEAD_LETTER_REASON).ok().flatten();
        let error = h.string(header::ERROR).ok().flatten();
        let reason = match (kind, error) {
            (Some(kind), Some(error)) => format!("{kind}: {error}"),
            (Some(text), None) | (None, Some(text)) => text,
            (None, None) => "dead-lettered".to_owned(),
        };
        let mut raw = RawMessage {
            headers: letter
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            payload: letter.payload.clone(),
        };
        if let Some(t) = raw.headers.get(header::TYPE).cloned() {
            raw.headers.insert(RawMessage::EVENT_TYPE.to_owned(), t);
        }
        DeadLetter {
            id,
            envelope,
            raw,
            origin: DeadLetterOrigin::Queue {
                name: self.topics.group.clone(),
            },
            reason,
            attempts: h
                .number(header::ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            dead_lettered_at: h
                .string(header::DEAD_LETTERED_AT)
                .ok()
                .flatten()
                .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok()),
        }
    }

    fn selected(&self, letters: Vec<Letter>, which: Selection) -> Vec<Letter> {
        letters
            .into_iter()
            .filter(|letter| match which {
                Selection::All => true,
                Selection::One(id) => self.to_dead_letter(letter).id == Some(id),
            })
            .collect()
    }

    async fn tombstone(&self, letter: &Letter) -> Result<()> {
        let record = Record {
            topic: self.topics.dead_letter.clone(),
            key: Some(letter.key.clone()),
            headers: vec![(header::PURGED.to_owned(), b"true".to_vec())],
            payload: None,
            timestamp_ms: None,
        };
        self.shared.producing.send(&record).await
    }
}

impl DeadLetters for KafkaDeadLetterQueue {
    async fn dead_letters(&self, page: Page) -> Result<Vec<DeadLetter>> {
        let letters = self.letters().await?;
        Ok(letters
            .iter()
            .skip(page.offset)
            .take(page.limit)
            .map(|l| self.to_dead_letter(l))
            .collect())
    }

    async fn replay(&self, which: Selection) -> Result<u64> {
        let letters = self.selected(self.letters().await?, which);
        let mut replayed = 0;
        for letter in &letters {
            let mut headers = letter.headers.clone();
            let key = Lookup(&headers)
                .bytes(header::ORIGINAL_KEY)
                .map(<[u8]>::to_vec);
            headers.retain(|(name, _)| {
                !name.starts_with("x-herald-")
                    || [
                        header::ORIGINAL_TOPIC,
                        header::ORIGINAL_PARTITION,
                        header::ORIGINAL_OFFSET,
                    ]
                    .contains(&name.as_str())
            });
            mapping::set(&mut headers, header::ATTEMPT, "1");
            mapping::set(&mut headers, header::NOT_BEFORE, now_ms().to_string());
            let record = Record {
                topic: self.topics.retry.clone(),
                key,
                headers,
                payload: Some(letter.payload.clone()),
                timestamp_ms: None,
            };
            self.shared.producing.send(&record).await?;
            self.tombstone(letter).await?;
            replayed += 1;
        }
        Ok(replayed)
    }

    async fn purge(&self, which: Selection) -> Result<u64> {
        let letters = self.selected(self.letters().await?, which);
        for letter in &letters {
            self.tombstone(letter).await?;
        }
        Ok(letters.len() as u64)
    }
}

/// Reads the dead-letter topic from its start to its end (one partition), folding
/// tombstones in: the letters left, in log order.
fn read_letters(shared: &Shared, topic: &str) -> Result<Vec<Letter>> {
    let secrets = &shared.secrets;
    let mut client = crate::client_config(&shared.config);
    client
        .set("group.id", "herald-dead-letter-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = client
        .create()
        .map_err(|e| kafka("list dead letters", &e, secrets))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_err(|e| kafka("list dead letters", &e, secrets))?;
    if high <= low {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(|e| kafka("list dead letters", &e, secrets))?;
    consumer
        .assign(&tpl)
        .map_err(|e| kafka("list dead letters", &e, secrets))?;
    let mut live: Vec<Option<Letter>> = Vec::new();
    let mut by_key: HashMap<Vec<u8>, usize> = HashMap::new();
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut next = low;
    while next < high {
        if Instant::now() > deadline {
            return Err(other(
                "list dead letters",
                true,
                format!("{topic} not read to its end ({next} of {high}) in {READ_TIMEOUT:?}"),
            ));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(|e| kafka("list dead letters", &e, secrets))?;
        next = message.offset() + 1;
        let headers: RecordHeaders = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let key = message.key().unwrap_or_default().to_vec();
        if let Some(at) = by_key.remove(&key) {
            live[at] = None;
        }
        if Lookup(&headers).bytes(header::PURGED).is_some() {
            continue;
        }
        by_key.insert(key.clone(), live.len());
        live.push(Some(Letter {
            key,
            headers,
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        }));
    }
    Ok(live.into_iter().flatten().collect())
}
