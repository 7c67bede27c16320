//! `KafkaTransport` against a real broker, beyond the conformance suite: what a plain Kafka
//! client sees, offsets committed for settled messages only, retries to the dead-letter topic.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_core::{
    DeadLetters, Delivery, DeliveryStream, Envelope, Metadata, Page, Publisher, Subscriber,
    SubscriptionSpec, TraceContext,
};
use herald_kafka::KafkaTransport;
use herald_testkit::envelope;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(15);

/// A record as a plain client reads it.
#[derive(Debug)]
struct Plain {
    partition: i32,
    key: Option<Vec<u8>>,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
}

fn plain_client() -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", common::servers());
    client
}

/// Reads `n` records of `topic` (every partition, from the start) with a plain consumer.
fn read_plain(topic: &str, partitions: i32, n: usize) -> Vec<Plain> {
    let consumer: BaseConsumer = plain_client()
        .set("group.id", common::unique("plain"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} records in {topic}",
            out.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Plain {
            partition: message.partition(),
            key: message.key().map(<[u8]>::to_vec),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

/// Kafka's `Utils.murmur2`, which the Java clients' default partitioner hashes keys with.
fn java_murmur2(data: &[u8]) -> i32 {
    let m: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> 24;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java clients pick for `key`.
fn java_partition(key: &str, partitions: i32) -> i32 {
    (java_murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

async fn next<S: DeliveryStream>(stream: &mut S) -> Delivery {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(err))) => panic!("delivery failed: {}", err.chain()),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

async fn quiet<S: DeliveryStream>(stream: &mut S, what: &str) {
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await {
        panic!("{what}, but got {got:?}");
    }
}

async fn publish(transport: &KafkaTransport, envelopes: &[Envelope]) {
    for result in transport.publish(envelopes).await {
        result.unwrap();
    }
}

#[test]
fn the_murmur2_of_this_test_is_kafkas() {
    // Vectors of Kafka's own UtilsTest.
    assert_eq!(java_murmur2(b"21"), -973_932_308);
    assert_eq!(java_murmur2(b"foobar"), -790_332_482);
    assert_eq!(java_murmur2(b"a-little-bit-long-string"), -985_981_536);
    assert_eq!(java_murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_reads_cloudevents_headers_and_java_partitions() {
    let transport = common::transport().await;
    let config = transport.config().clone();
    let cause = envelope("order-1", 0);
    let mut meta = Metadata::caused_by(&cause)
        .with_partition_key("order-1")
        .with_header("tenant", "acme");
    meta.trace = TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: Some("vendor=abc".into()),
    };
    let mut keyed = Envelope::from_event(
        &herald_testkit::TestEvent {
            key: "order-1".into(),
            n: 1,
            note: "n".into(),
        },
        meta,
    )
    .unwrap();
    keyed.version = 2;
    let mut keys: Vec<Envelope> = (0..12).map(|n| envelope(&format!("k{n}"), 0)).collect();
    let mut unkeyed = envelope("none", 0);
    unkeyed.partition_key = None;
    keys.insert(0, keyed.clone());
    keys.push(unkeyed.clone());
    publish(&transport, &keys).await;

    let records = read_plain(&config.topic, config.partitions, keys.len());
    let by_id = |id: &str| records.iter().find(|r| r.headers["ce_id"] == id).unwrap();
    let record = by_id(&keyed.id.to_string());
    let h = &record.headers;
    assert_eq!(h["ce_specversion"], "1.0");
    assert_eq!(h["ce_type"], keyed.event_type);
    assert_eq!(h["ce_source"], "herald");
    assert_eq!(
        time::OffsetDateTime::parse(
            &h["ce_time"],
            &time::format_description::well_known::Rfc3339
        )
        .unwrap(),
        keyed.occurred_at
    );
    assert_eq!(h["content-type"], keyed.content_type);
    assert_eq!(h["ce_eventversion"], "2");
    assert_eq!(h["ce_correlationid"], keyed.correlation_id.to_string());
    assert_eq!(h["ce_causationid"], cause.id.to_string());
    assert_eq!(h["ce_partitionkey"], "order-1");
    assert_eq!(h["traceparent"], keyed.trace.traceparent.clone().unwrap());
    assert_eq!(h["tracestate"], "vendor=abc");
    assert_eq!(h["tenant"], "acme");
    assert_eq!(record.key.as_deref(), Some(&b"order-1"[..]));
    assert_eq!(record.payload, keyed.payload.to_vec());

    for env in &keys {
        let record = by_id(&env.id.to_string());
        match &env.partition_key {
            Some(key) => {
                assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
                assert_eq!(
                    record.partition,
                    java_partition(key, config.partitions),
                    "key {key} lands where a Java client puts it"
                );
            }
            None => assert_eq!(record.key, None, "no partition key: a null record key"),
        }
    }
}

/// The group's committed offset and metadata for one partition, as a plain client reads it.
fn committed(group: &str, topic: &str, partition: i32) -> (Offset, String) {
    let consumer: BaseConsumer = plain_client().set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let elem = offsets.find_partition(topic, partition).unwrap();
    (elem.offset(), elem.metadata().to_owned())
}

async fn wait_committed(group: &str, topic: &str, partition: i32, offset: i64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, metadata) = committed(group, topic, partition);
        if got == Offset::Offset(offset) {
            return metadata;
        }
        assert!(
            Instant::now() < deadline,
            "committed {got:?}, expected {offset}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_never_pass_the_lowest_unsettled_and_a_restart_gets_exactly_the_unsettled() {
    let transport = common::transport().await;
    let topic = transport.config().topic.clone();
    let group = common::unique("offsets");
    let spec = SubscriptionSpec::new(&group, Vec::<String>::new());
    let mut stream = transport.subscribe(&spec).await.unwrap();
    // One key: one partition, offsets 0..6 in publish order.
    let envs: Vec<Envelope> = (0..6).map(|n| envelope("one-key", n)).collect();
    let partition = java_partition("one-key", transport.config().partitions);
    publish(&transport, &envs).await;
    let mut deliveries = Vec::new();
    for env in &envs {
        let delivery = next(&mut stream).await;
        assert_eq!(delivery.envelope.id, env.id);
        deliveries.push(Some(delivery));
    }
    let mut take = |i: usize| deliveries[i].take().unwrap();

    // Handlers finish out of order: 4, 1 and 3 settle while 0 is still running.
    take(4).ack().await.unwrap();
    take(1).ack().await.unwrap();
    take(3).ack().await.unwrap();
    let metadata = wait_committed(&group, &topic, partition, 0).await;
    assert_eq!(metadata, "herald-settled:1,3,4", "nothing passes offset 0");
    take(0).ack().await.unwrap();
    let metadata = wait_committed(&group, &topic, partition, 2).await;
    assert_eq!(
        metadata, "herald-settled:1,2",
        "last contiguous settled + 1"
    );

    // A crash with 2 and 5 unsettled: the restarted group gets exactly those again.
    let unsettled = (take(2), take(5));
    drop(stream);
    drop(unsettled);
    let mut restarted = transport.subscribe(&spec).await.unwrap();
    let again = next(&mut restarted).await;
    assert_eq!(again.envelope.id, envs[2].id);
    again.ack().await.unwrap();
    let again = next(&mut restarted).await;
    assert_eq!(again.envelope.id, envs[5].id);
    again.ack().await.unwrap();
    quiet(&mut restarted, "settled messages are not delivered again").await;
    wait_committed(&group, &topic, partition, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_goes_through_retries_to_the_dead_letter_topic_while_others_flow() {
    let transport = common::transport().await;
    let topic = transport.config().topic.clone();
    let group = common::unique("poison");
    let spec = SubscriptionSpec {
        max_attempts: 3,
        ..SubscriptionSpec::new(&group, Vec::<String>::new())
    };
    let mut stream = transport.subscribe(&spec).await.unwrap();
    // The poison first, then healthy messages of its own key and of others.
    let poison = envelope("shared-key", 0);
    let mut envs = vec![poison.clone()];
    envs.extend((1..=10).map(|n| envelope("shared-key", n)));
    envs.extend((0..10).map(|n| envelope(&format!("other-{n}"), n)));
    publish(&transport, &envs).await;

    let mut healthy_done = 0;
    let mut attempts = Vec::new();
    let mut healthy_before_last_attempt = None;
    let deadline = Instant::now() + WAIT;
    while healthy_done < envs.len() - 1 || attempts.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "stalled: {healthy_done} healthy, poison attempts {attempts:?}"
        );
        let delivery = next(&mut stream).await;
        if delivery.envelope.id == poison.id {
            attempts.push(delivery.attempt);
            if delivery.attempt == 3 {
                healthy_before_last_attempt = Some(healthy_done);
            }
            delivery
                .retry(Duration::from_millis(300), "stock service down")
                .await
                .unwrap();
        } else {
            healthy_done += 1;
            delivery.ack().await.unwrap();
        }
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    assert_eq!(
        healthy_before_last_attempt,
        Some(envs.len() - 1),
        "the retried message held up nothing, not even its own key"
    );
    quiet(
        &mut stream,
        "a dead-lettered message is not delivered again",
    )
    .await;

    let dead = transport
        .dead_letter_queue(&group)
        .unwrap()
        .dead_letters(Page::ALL)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.as_ref(), Some(&poison));
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].reason.contains("max-attempts") && dead[0].reason.contains("stock service down"),
        "{}",
        dead[0].reason
    );
    // What a plain client sees on the dead-letter topic.
    let records = read_plain(&format!("{topic}.{group}.dead-letter"), 1, 1);
    let h = &records[0].headers;
    assert_eq!(h["x-herald-dead-letter-reason"], "max-attempts");
    assert!(h["x-herald-error"].contains("stock service down"));
    assert_eq!(h["x-herald-attempts"], "3");
    assert_eq!(h["x-herald-original-topic"], topic);
    assert_eq!(
        h["x-herald-original-partition"],
        java_partition("shared-key", transport.config().partitions).to_string()
    );
    assert_eq!(h["x-herald-original-offset"], "0");
    assert_eq!(h["ce_id"], poison.id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decode_is_dead_lettered_at_once() {
    let transport = common::transport().await;
    let topic = transport.config().topic.clone();
    let group = common::unique("malformed");
    let spec = SubscriptionSpec::new(&group, Vec::<String>::new());
    let mut stream = transport.subscribe(&spec).await.unwrap();
    // librdkafka's own default partitioner is not the Java clients' one.
    let producer: FutureProducer = plain_client()
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let garbage = FutureRecord::to(&topic)
        .key("k")
        .payload("not an event")
        .headers(OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "ce_specversion",
            value: Some("1.0"),
        }));
    producer
        .send(garbage, Duration::from_secs(10))
        .await
        .unwrap();
    let good = envelope("k", 1);
    publish(&transport, std::slice::from_ref(&good)).await;

    let delivery = next(&mut stream).await;
    assert_eq!(
        delivery.envelope.id, good.id,
        "the malformed record is skipped"
    );
    delivery.ack().await.unwrap();
    let dead_letters = transport.dead_letter_queue(&group).unwrap();
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let dead = dead_letters.dead_letters(Page::ALL).await.unwrap();
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1);
    assert!(dead[0].envelope.is_none());
    assert!(
        dead[0].reason.starts_with("malformed: "),
        "{}",
        dead[0].reason
    );
    assert!(dead[0].reason.contains("ce_id"), "{}", dead[0].reason);
    assert_eq!(dead[0].raw.payload.as_ref(), b"not an event");
    // Settled: the group's offset passed it and the good record.
    wait_committed(
        &group,
        &topic,
        java_partition("k", transport.config().partitions),
        2,
    )
    .await;
}

/// What the streams of a test handled: (stream, key, n), in the order handled.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(&'static str, String, u64)>>>;

/// Acks whatever `stream` delivers, noting (stream, key, n), until `stop` is set.
async fn drain_into(
    mut stream: herald_kafka::KafkaStream,
    name: &'static str,
    seen: Seen,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(100), stream.next()).await
        {
            let delivery = delivery.unwrap();
            let event = delivery
                .envelope
                .decode::<herald_testkit::TestEvent>()
                .unwrap();
            seen.lock().unwrap().push((name, event.key, event.n));
            delivery.ack().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_joining_and_leaving_mid_stream_loses_nothing_and_keeps_key_order() {
    let transport = common::transport().await;
    let config = transport.config().clone();
    let group = common::unique("rebalance");
    let spec = SubscriptionSpec::new(&group, Vec::<String>::new());
    let keys = 8;
    let per_key = 60u64;
    let all: Vec<Envelope> = herald_testkit::interleaved(keys, per_key);
    let (first, rest) = all.split_at(all.len() / 3);
    let (second, third) = rest.split_at(rest.len() / 2);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));

    let (stop_a, stopped_a) = tokio::sync::watch::channel(false);
    let a = transport.subscribe(&spec).await.unwrap();
    let task_a = tokio::spawn(drain_into(a, "a", seen.clone(), stopped_a));
    publish(&transport, first).await;

    // B joins mid-stream: partitions move from A to B.
    let b = transport.subscribe(&spec).await.unwrap();
    let (stop_b, stopped_b) = tokio::sync::watch::channel(false);
    let task_b = tokio::spawn(drain_into(b, "b", seen.clone(), stopped_b));
    publish(&transport, second).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // B leaves mid-stream: its partitions go back to A.
    stop_b.send_replace(true);
    task_b.await.unwrap();
    publish(&transport, third).await;

    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let distinct: std::collections::HashSet<(String, u64)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, k, n)| (k.clone(), *n))
            .collect();
        if distinct.len() == all.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} messages handled",
            distinct.len(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_a.send_replace(true);
    task_a.await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let by_b = seen.iter().filter(|(s, _, _)| *s == "b").count();
    assert!(by_b > 0, "b took part");
    for k in 0..keys {
        let key = format!("key-{k}");
        let mut firsts = Vec::new();
        for (_, _, n) in seen.iter().filter(|(_, sk, _)| *sk == key) {
            if !firsts.contains(n) {
                firsts.push(*n);
            }
        }
        assert_eq!(
            firsts,
            (0..per_key).collect::<Vec<_>>(),
            "key {key} handled in order, each message"
        );
    }
    let redelivered = seen.len() - all.len();
    assert!(redelivered <= 2 * keys, "{redelivered} redeliveries");

    // Committed offsets are exactly the ends of the partitions: a restarted group gets nothing.
    for p in 0..config.partitions {
        let consumer: BaseConsumer = plain_client().create().unwrap();
        let (_, high) = consumer
            .fetch_watermarks(&config.topic, p, Duration::from_secs(10))
            .unwrap();
        if high > 0 {
            wait_committed(&group, &config.topic, p, high).await;
        }
    }
    let mut restarted = transport.subscribe(&spec).await.unwrap();
    quiet(&mut restarted, "every message was settled and committed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscription_starts_where_the_topic_ends_when_declared() {
    let transport = common::transport().await;
    let before = envelope("history", 0);
    publish(&transport, std::slice::from_ref(&before)).await;
    let group = common::unique("late");
    transport.declare_subscription(&group).await.unwrap();
    let after = envelope("history", 1);
    publish(&transport, std::slice::from_ref(&after)).await;
    let spec = SubscriptionSpec::new(&group, Vec::<String>::new());
    let mut stream = transport.subscribe(&spec).await.unwrap();
    let delivery = next(&mut stream).await;
    assert_eq!(
        delivery.envelope.id, after.id,
        "published after the declaration: delivered; before: not"
    );
    delivery.ack().await.unwrap();
    quiet(
        &mut stream,
        "history from before the subscription is not delivered",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_a_message_rejected_are_two_dead_letters() {
    let transport = common::transport().await;
    let group = common::unique("copies");
    let spec = SubscriptionSpec::new(&group, Vec::<String>::new());
    let mut stream = transport.subscribe(&spec).await.unwrap();
    // Published twice, as a relay does when a confirm is lost.
    let message = envelope("twice", 0);
    publish(&transport, &[message.clone(), message.clone()]).await;
    for _ in 0..2 {
        let copy = next(&mut stream).await;
        assert_eq!(copy.envelope.id, message.id);
        copy.reject("poison").await.unwrap();
    }
    let queue = transport.dead_letter_queue(&group).unwrap();
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let dead = queue.dead_letters(Page::ALL).await.unwrap();
        if dead.len() >= 2 || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 2, "each copy is a dead letter");
    assert!(dead.iter().all(|d| d.id == Some(message.id)));
    assert_eq!(
        queue
            .purge(herald_core::Selection::One(message.id))
            .await
            .unwrap(),
        2,
        "purging the id purges both copies"
    );
    assert!(queue.dead_letters(Page::ALL).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_subscription_removes_its_topics_and_its_group() {
    let transport = common::transport().await;
    let group = common::unique("throwaway");
    let topics = herald_kafka::SubscriptionTopics::of(transport.config(), &group).unwrap();
    transport.declare_subscription(&group).await.unwrap();
    let spec = SubscriptionSpec::new(&group, Vec::<String>::new());
    let mut stream = transport.subscribe(&spec).await.unwrap();
    let event = envelope("throwaway", 0);
    publish(&transport, std::slice::from_ref(&event)).await;
    let delivery = next(&mut stream).await;
    delivery.ack().await.unwrap();
    drop(stream);

    transport.delete_subscription(&group).await.unwrap();
    let admin: BaseConsumer = plain_client().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = admin.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let left: Vec<&str> = metadata
            .topics()
            .iter()
            .map(|t| t.name())
            .filter(|name| *name == topics.retry || *name == topics.dead_letter)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "topics left: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let groups = admin
        .fetch_group_list(Some(&group), Duration::from_secs(10))
        .unwrap();
    assert!(
        groups
            .groups()
            .iter()
            .all(|g| g.name() != group || g.state() == "Dead"),
        "the group is gone"
    );
    assert!(
        transport.config().topic.starts_with("herald-test-events-"),
        "the event topic stays"
    );
    // Deleting again finds nothing to delete, and is not an error.
    transport.delete_subscription(&group).await.unwrap();
}
