//! Dead letters: one view of a message given up on, whichever backend holds it, and the one
//! trait ([`DeadLetters`]) that lists, replays and purges them.
//!
//! An outbox store keeps the events its relays gave up on in a dead-letter table; a transport
//! keeps the messages its consumers rejected in a dead-letter queue per subscription. Both
//! answer with the same [`DeadLetter`]: what was given up on (the [`Envelope`] when it still
//! decodes, and always its [`RawMessage`]), where ([`DeadLetterOrigin`]), why (`reason`),
//! after how many attempts and when.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Envelope, Result};

/// A message given up on, as an operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The id to replay or purge it by ([`Selection::One`]): the event's id. `None` when the
    /// stored or received message has no id that reads as a UUID (it can still be replayed or
    /// purged with [`Selection::All`]).
    pub id: Option<Uuid>,
    /// The message as an envelope; `None` when it no longer decodes as one (a row written by
    /// something else, a message from a foreign producer). [`raw`](Self::raw) still holds it.
    pub envelope: Option<Envelope>,
    /// The message as it was stored or received, whether it decodes or not.
    pub raw: RawMessage,
    /// Where it was given up on.
    pub origin: DeadLetterOrigin,
    /// Why it was given up on: the last error that sent it there, in words an operator reads
    /// (`"poison: cannot route"`, `"malformed row: …"`, `"gave up after 4 deliveries: …"`).
    pub reason: String,
    /// How many times it was tried (publications for an outbox row, deliveries for a queued
    /// message), the last one included.
    pub attempts: u32,
    /// When it was dead-lettered, when the backend knows (a message the broker itself moved
    /// to the dead-letter queue may not say).
    pub dead_lettered_at: Option<OffsetDateTime>,
}

impl DeadLetter {
    /// The event type, read from the envelope or, when it does not decode, from the raw form.
    pub fn event_type(&self) -> Option<&str> {
        match &self.envelope {
            Some(envelope) => Some(envelope.event_type.as_str()),
            None => self
                .raw
                .headers
                .get(RawMessage::EVENT_TYPE)
                .map(String::as_str),
        }
    }
}

/// A message as a backend holds it, before any decoding: its named fields (an outbox row's
/// columns, a broker message's properties and headers) as text, and its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawMessage {
    /// Each field by name, its value as text (JSON values as their JSON text).
    pub headers: BTreeMap<String, String>,
    /// The body, as stored or received.
    pub payload: Bytes,
}

impl RawMessage {
    /// The field that names the event type in a store's raw form.
    pub const EVENT_TYPE: &'static str = "event_type";

    /// The raw form of a stored row: its `columns` (a JSON object of the row, as the stores
    /// select it) as text fields, nulls left out, and its `payload`.
    pub fn from_columns(
        columns: BTreeMap<String, serde_json::Value>,
        payload: impl Into<Bytes>,
    ) -> Self {
        let headers = columns
            .into_iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(name, value)| match value {
                serde_json::Value::String(text) => (name, text),
                other => (name, other.to_string()),
            })
            .collect();
        RawMessage {
            headers,
            payload: payload.into(),
        }
    }
}

/// Where a dead letter was given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterOrigin {
    /// An outbox store's dead letters: the relay could not publish the row.
    Outbox {
        /// The outbox table (qualified with its schema where the database has schemas).
        table: String,
    },
    /// A subscription's dead-letter queue: the consumer (or the broker) gave up on it.
    Queue {
        /// The subscription's queue.
        name: String,
    },
}

impl fmt::Display for DeadLetterOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterOrigin::Outbox { table } => write!(f, "outbox {table}"),
            DeadLetterOrigin::Queue { name } => write!(f, "queue {name}"),
        }
    }
}

/// Which dead letters to replay or purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The dead letter(s) of this event id.
    One(Uuid),
    /// Every dead letter.
    All,
}

/// A page of a listing: skip `offset` dead letters, then return at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// How many to skip.
    pub offset: usize,
    /// Most to return.
    pub limit: usize,
}

impl Page {
    /// Every dead letter (no offset, no limit).
    pub const ALL: Page = Page {
        offset: 0,
        limit: usize::MAX,
    };

    /// The first `limit` dead letters.
    pub const fn first(limit: usize) -> Page {
        Page { offset: 0, limit }
    }

    /// The page after this one, of the same size.
    pub const fn next(self) -> Page {
        Page {
            offset: self.offset.saturating_add(self.limit),
            limit: self.limit,
        }
    }
}

/// Lists, replays and purges dead letters: what operators (the `herald` CLI, the tests) need.
///
/// An outbox store implements it for its dead-letter table; a transport offers it per
/// subscription (`MemoryTransport::dead_letter_queue`, `AmqpTransport::dead_letter_queue`).
/// Every backend returns the same [`DeadLetter`], and lists a dead letter even when it no
/// longer decodes as an envelope.
pub trait DeadLetters: Send + Sync {
    /// A page of dead letters: newest first in a store, in queue order (oldest first) in a
    /// dead-letter queue.
    fn dead_letters(&self, page: Page) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Gives dead letters another go with a fresh attempt count: an outbox puts them back as
    /// new rows behind every event pending for their keys, a queue republishes them to the
    /// subscription they were dead-lettered from. Returns how many were replayed.
    fn replay(&self, which: Selection) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes dead letters for good; returns how many.
    fn purge(&self, which: Selection) -> impl Future<Output = Result<u64>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other() {
        let page = Page::first(10);
        assert_eq!(
            page.next(),
            Page {
                offset: 10,
                limit: 10
            }
        );
        assert_eq!(Page::ALL.next().offset, usize::MAX);
    }

    #[test]
    fn an_undecodable_dead_letter_still_names_its_type() {
        let mut raw = RawMessage::default();
        raw.headers.insert("event_type".into(), "bad".into());
        let dead = DeadLetter {
            id: None,
            envelope: None,
            raw,
            origin: DeadLetterOrigin::Queue { name: "q".into() },
            reason: "malformed".into(),
            attempts: 1,
            dead_lettered_at: None,
        };
        assert_eq!(dead.event_type(), Some("bad"));
        assert_eq!(dead.origin.to_string(), "queue q");
    }
}
