//! Subscribing: one consumer-group member per stream, polled by a task of its own (so that
//! rebalances proceed while the application is busy), whose records wait in the stream's
//! state until `next()` hands them out under the prefetch bound.
//!
//! A stream reads the subscription's event topics and its retry topic. Records of event
//! types the subscription does not want are settled at once; records that do not decode
//! are dead-lettered at once; retried records wait for their due time without holding up
//! the others.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Delivery, DeliveryStream, Result, SubscriptionSpec};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use time::OffsetDateTime;
use tokio::sync::{Notify, oneshot, watch};

use crate::Shared;
use crate::config::SubscriptionTopics;
use crate::error::kafka;
use crate::mapping::{self, Lookup, RecordHeaders, header};
use crate::settle::{self, KafkaAcker};
use crate::state::{Commit, Received, State, Tp, Tracked, parse_metadata};

/// Records a stream reads ahead of what it hands out before it pauses its partitions.
const READ_AHEAD: usize = 1000;
/// How long `subscribe` waits for the group to assign the new member its partitions.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a stream, its poll task and its deliveries share.
pub(crate) struct StreamShared {
    pub(crate) transport: Arc<Shared>,
    pub(crate) topics: SubscriptionTopics,
    pub(crate) spec: SubscriptionSpec,
    state: Mutex<State>,
    /// Wakes `next()`: records arrived, room was made, the consumer stopped.
    changed: Notify,
    /// Wakes the poll task: a commit point moved.
    commit: Notify,
}

impl StreamShared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Settles `record`: its offset may now be committed.
    pub(crate) fn settled(&self, record: &Received, handed_out: bool) {
        let moved = {
            let mut state = self.state();
            if handed_out {
                state.handed_out = state.handed_out.saturating_sub(1);
            }
            state.settle(
                &record.topic,
                record.partition,
                record.offset,
                record.generation,
            )
        };
        if moved {
            self.commit.notify_one();
        }
        self.changed.notify_waiters();
    }

    /// Takes back a delivery that was not settled: handed out again, first, as redelivered.
    pub(crate) fn requeue(&self, record: Arc<Received>) {
        {
            let mut state = self.state();
            state.handed_out = state.handed_out.saturating_sub(1);
            if state.is_current(&record) {
                let again = Received {
                    redelivered: true,
                    due_ms: 0,
                    ..clone_received(&record)
                };
                state.ready.push_front(Arc::new(again));
            }
        }
        self.changed.notify_waiters();
    }
}

fn clone_received(r: &Received) -> Received {
    Received {
        topic: r.topic.clone(),
        partition: r.partition,
        offset: r.offset,
        generation: r.generation,
        envelope: r.envelope.clone(),
        attempt: r.attempt,
        redelivered: r.redelivered,
        due_ms: r.due_ms,
        key: r.key.clone(),
        headers: r.headers.clone(),
        payload: r.payload.clone(),
    }
}

/// The deliveries of one subscription, from one member of its consumer group.
///
/// Dropping the stream commits what was settled and leaves the group; deliveries not settled
/// by then go to the partitions' next owner.
pub struct KafkaStream {
    shared: Arc<StreamShared>,
    consumer: Arc<KConsumer>,
    _close: oneshot::Sender<()>,
}

impl Drop for KafkaStream {
    fn drop(&mut self) {
        // Commit what was settled now, not when the poll task next runs: a program that drops
        // its stream and exits would otherwise have its last settlements delivered again.
        commit(&self.consumer, &self.shared, CommitMode::Sync);
    }
}

impl std::fmt::Debug for KafkaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStream")
            .field("group", &self.shared.topics.group)
            .finish_non_exhaustive()
    }
}

impl DeliveryStream for KafkaStream {
    /// Cancel-safe: a record leaves the stream's state only when this returns it.
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let shared = &self.shared;
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut state = shared.state();
                let due = state.promote(now_ms());
                let room = shared.spec.prefetch == 0 || state.handed_out < shared.spec.prefetch;
                if room && let Some(record) = state.ready.pop_front() {
                    state.handed_out += 1;
                    drop(state);
                    let delivery = Delivery::new(
                        record.envelope.clone(),
                        record.attempt,
                        record.redelivered,
                        Box::new(KafkaAcker::new(Arc::clone(shared), record.clone())),
                    );
                    return Some(Ok(delivery));
                }
                if state.ended && state.ready.is_empty() {
                    return None;
                }
                due
            };
            match next_due {
                Some(due) => {
                    let wait = Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0));
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// The consumer's callbacks: commit before partitions are revoked, renew generations when
/// they are assigned.
pub(crate) struct StreamContext {
    shared: Arc<StreamShared>,
    assigned: watch::Sender<bool>,
}

impl ClientContext for StreamContext {}

impl ConsumerContext for StreamContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let tps = tps_of(tpl);
            let commits = self.shared.state().revoke(&tps);
            if !commits.is_empty()
                && let Err(err) = consumer.commit(&list(&commits), CommitMode::Sync)
            {
                tracing::warn!(group = %self.shared.topics.group, error = %err, "commit before revocation failed; the next owner redelivers from the last commit");
            }
            self.shared.changed.notify_waiters();
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // What earlier owners settled beyond their commit points.
                let committed = consumer
                    .committed_offsets((*tpl).clone(), Duration::from_secs(10))
                    .unwrap_or_else(|err| {
                        tracing::warn!(group = %self.shared.topics.group, error = %err, "cannot read the committed offsets' metadata; settled records past them are delivered again");
                        TopicPartitionList::new()
                    });
                let assigned = tps_of(tpl).into_iter().map(|(topic, partition)| {
                    let skip = committed
                        .find_partition(&topic, partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(parse_metadata(o, e.metadata())),
                            _ => None,
                        })
                        .unwrap_or_default();
                    ((topic, partition), skip)
                });
                self.shared.state().assign(assigned);
                self.assigned.send_replace(true);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(err) => {
                tracing::warn!(group = %self.shared.topics.group, error = %err, "rebalance failed");
            }
        }
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

fn list(commits: &[Commit]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset, metadata) in commits {
        let mut elem = tpl.add_partition(topic, *partition);
        let _ = elem.set_offset(Offset::Offset(*offset));
        elem.set_metadata(metadata);
    }
    tpl
}

type KConsumer = StreamConsumer<StreamContext>;

/// Opens a stream of `spec`: declares its topics, joins its group and waits for the first
/// assignment.
pub(crate) async fn open(transport: Arc<Shared>, spec: &SubscriptionSpec) -> Result<KafkaStream> {
    let topics = SubscriptionTopics::of(&transport.config, &spec.name)?;
    transport.declare_subscription(&topics).await?;
    let config = &transport.config;
    let secrets = transport.secrets.clone();
    let shared = Arc::new(StreamShared {
        transport: Arc::clone(&transport),
        topics,
        spec: spec.clone(),
        state: Mutex::new(State::default()),
        changed: Notify::new(),
        commit: Notify::new(),
    });
    let (assigned, mut joined) = watch::channel(false);
    let context = StreamContext {
        shared: Arc::clone(&shared),
        assigned,
    };
    let session = config.session_timeout.as_millis();
    let mut client = crate::client_config(config);
    client
        .set("group.id", &spec.name)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", (session / 10).max(100).to_string());
    let consumer: KConsumer = client
        .create_with_context(context)
        .map_err(|e| kafka("create a consumer", &e, &secrets))?;
    let mut names = config.topics_of(&spec.event_types);
    names.push(shared.topics.retry.clone());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| kafka("subscribe", &e, &secrets))?;
    let (close, closed) = oneshot::channel();
    let consumer = Arc::new(consumer);
    tokio::spawn(run(Arc::clone(&consumer), Arc::clone(&shared), closed));
    if tokio::time::timeout(JOIN_TIMEOUT, joined.wait_for(|joined| *joined))
        .await
        .is_err()
    {
        tracing::warn!(group = %spec.name, "no partitions assigned after {JOIN_TIMEOUT:?}; the stream waits for them");
    }
    Ok(KafkaStream {
        shared,
        consumer,
        _close: close,
    })
}

/// The poll task: receives records, commits what was settled, pauses reading far ahead;
/// commits and leaves the group when the stream is dropped.
async fn run(
    consumer: Arc<KConsumer>,
    shared: Arc<StreamShared>,
    mut closed: oneshot::Receiver<()>,
) {
    // Records due now and retried records waiting for their time are read ahead apart: a
    // pile of delayed retries pauses the retry topic only, never the event topics.
    let mut paused = [false, false];
    loop {
        let (buffered, reassigned) = {
            let mut state = shared.state();
            let buffered = [state.ready.len(), state.delayed.len()];
            (buffered, std::mem::take(&mut state.reassigned))
        };
        if reassigned {
            // librdkafka keeps the application's pause of a partition across a rebalance (it
            // resets only its own): a partition paused for read-ahead before a rebalance and
            // assigned again would never be fetched again. Resume what is assigned now (paused
            // again below if its records pile up); if that fails, the loop tries again.
            paused = match consumer.assignment() {
                Ok(assignment) if consumer.resume(&assignment).is_ok() => [false, false],
                _ => [true, true],
            };
        }
        if let Ok(assignment) = consumer.assignment() {
            for (i, retry) in [false, true].into_iter().enumerate() {
                let mut part = TopicPartitionList::new();
                for e in assignment.elements() {
                    if (e.topic() == shared.topics.retry) == retry {
                        part.add_partition(e.topic(), e.partition());
                    }
                }
                if part.count() == 0 {
                    continue;
                }
                if !paused[i] && buffered[i] >= READ_AHEAD {
                    paused[i] = consumer.pause(&part).is_ok();
                } else if paused[i] && buffered[i] < READ_AHEAD / 2 {
                    paused[i] = consumer.resume(&part).is_err();
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut closed => break,
            _ = shared.commit.notified() => commit(&consumer, &shared, CommitMode::Async),
            received = consumer.recv() => match received {
                Ok(message) => {
                    let record = Raw::of(&message);
                    drop(message);
                    ingest(&shared, record).await;
                }
                Err(err) => {
                    tracing::debug!(group = %shared.topics.group, error = %err, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    commit(&consumer, &shared, CommitMode::Sync);
    shared.state().ended = true;
    shared.changed.notify_waiters();
    // Leaving the group may take a moment: not on the runtime's threads.
    drop(tokio::task::spawn_blocking(move || drop(consumer)));
}

fn commit(consumer: &KConsumer, shared: &StreamShared, mode: CommitMode) {
    let commits = shared.state().take_commits();
    if commits.is_empty() {
        return;
    }
    if let Err(err) = consumer.commit(&list(&commits), mode) {
        tracing::debug!(group = %shared.topics.group, error = %err, "offset commit failed; kept for the next one");
        shared.state().restore_commits(commits);
    }
}

/// A received record, copied out of the consumer's buffer.
pub(crate) struct Raw {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: RecordHeaders,
    pub(crate) payload: Bytes,
}

impl Raw {
    fn of(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Raw {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers,
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        }
    }
}

/// Takes a received record in: queued for `next()`, settled at once when the subscription
/// does not want its type, dead-lettered at once when it does not decode.
async fn ingest(shared: &Arc<StreamShared>, raw: Raw) {
    let generation = match shared.state().track(&raw.topic, raw.partition, raw.offset) {
        Tracked::New(generation) => generation,
        Tracked::Settled => {
            shared.commit.notify_one();
            return;
        }
        Tracked::Unassigned => return,
    };
    let config = &shared.transport.config;
    let attempt = mapping::attempt(&raw.headers);
    let decoded = mapping::decode(&raw.headers, raw.key.as_deref(), &raw.payload, config);
    let lookup = Lookup(&raw.headers);
    let due_ms = lookup.number(header::NOT_BEFORE).unwrap_or(0);
    let redelivered = lookup.bytes(header::REDELIVERED).is_some();
    match decoded {
        Ok(envelope) => {
            let wanted = shared.spec.matches(&envelope.event_type);
            let record = Received {
                topic: raw.topic,
                partition: raw.partition,
                offset: raw.offset,
                generation,
                envelope,
                attempt,
                redelivered,
                due_ms,
                key: raw.key,
                headers: raw.headers,
                payload: raw.payload,
            };
            if wanted {
                shared.state().push(Arc::new(record), now_ms());
                shared.changed.notify_waiters();
            } else {
                shared.settled(&record, false);
            }
        }
        Err(err) => {
            tracing::warn!(group = %shared.topics.group, topic = %raw.topic, partition = raw.partition, offset = raw.offset, error = %err.chain(), "dead-lettering a record that does not decode");
            let record =
                settle::dead_letter_record(shared, &raw, "malformed", &err.chain(), attempt);
            for _ in 0..3 {
                match shared.transport.producing.send(&record).await {
                    Ok(()) => {
                        let mut state = shared.state();
                        if state.settle(&raw.topic, raw.partition, raw.offset, generation) {
                            shared.commit.notify_one();
                        }
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err.chain(), "cannot dead-letter a malformed record yet");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            // Left unsettled: the commit point stays before it, so that a restart tries again.
            tracing::error!(group = %shared.topics.group, offset = raw.offset, "a malformed record could not be dead-lettered");
        }
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
