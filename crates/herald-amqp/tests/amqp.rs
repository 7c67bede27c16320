//! The RabbitMQ transport against the real broker: what the conformance suite does not cover.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herald_amqp::{AmqpConfig, AmqpTransport, QueueKind};
use herald_core::{
    DeadLetters, Delivery, DeliveryStream, Envelope, Metadata, Page, Publisher, Subscriber,
    SubscriptionSpec, TraceContext, Uuid,
};
use herald_relay::Relay;
use herald_testkit::{TestEvent, envelope, interleaved};
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

async fn next<S: DeliveryStream>(stream: &mut S) -> Delivery {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(err))) => panic!("delivery failed: {}", err.chain()),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

fn spec(name: &str) -> SubscriptionSpec {
    SubscriptionSpec::new(name, Vec::<String>::new())
}

fn text(table: &FieldTable, name: &str) -> String {
    match table.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("header {name}: {other:?}"),
    }
}

/// Declares a queue with the plain client, bound to the test's exchange for every key.
async fn plain_queue(channel: &lapin::Channel, exchange: &str, arguments: FieldTable) -> String {
    let queue = common::unique("plain");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_by_the_relay_reads_as_a_cloudevent_in_a_plain_client() {
    let transport = common::transport().await;
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = plain_queue(
        &channel,
        &transport.config().exchange,
        FieldTable::default(),
    )
    .await;

    let store = common::pg_store().await;
    let mut meta = Metadata::default()
        .with_partition_key("order-9")
        .with_header("tenant", "acme");
    meta.trace = TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: None,
    };
    let event = TestEvent {
        key: "order-9".into(),
        n: 1,
        note: "hello".into(),
    };
    let env = Envelope::from_event(&event, meta).unwrap();
    common::record(&store, std::slice::from_ref(&env)).await;
    let relay = Relay::new(store.clone(), transport.clone(), common::relay_config()).unwrap();
    let report = relay.relay_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(report.published, 1, "{report:?}");

    let got = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the relay's message is in the queue");
    let props = &got.delivery.properties;
    let headers = props.headers().as_ref().unwrap();
    assert_eq!(text(headers, "cloudEvents:specversion"), "1.0");
    assert_eq!(text(headers, "cloudEvents:id"), env.id.to_string());
    assert_eq!(text(headers, "cloudEvents:type"), "testkit.test_event");
    assert_eq!(text(headers, "cloudEvents:source"), "/herald");
    let time = text(headers, "cloudEvents:time");
    assert!(
        time.ends_with('Z') && time.contains('T'),
        "RFC 3339 time: {time}"
    );
    assert_eq!(text(headers, "cloudEvents:partitionkey"), "order-9");
    assert_eq!(
        text(headers, "cloudEvents:correlationid"),
        env.id.to_string()
    );
    assert_eq!(
        text(headers, "traceparent"),
        env.trace.traceparent.clone().unwrap()
    );
    assert_eq!(text(headers, "tenant"), "acme");
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        env.id.to_string()
    );
    assert_eq!(
        props.kind().as_ref().unwrap().as_str(),
        "testkit.test_event"
    );
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(got.delivery.routing_key.as_str(), "testkit.test_event");
    let body: TestEvent = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(body, event);
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_fails_transiently_and_alone() {
    let transport = common::transport().await;
    let name = common::unique("routed");
    let mut stream = transport
        .subscribe(&SubscriptionSpec::new(&name, ["testkit.routed"]))
        .await
        .unwrap();
    let mut routed = envelope("a", 0);
    routed.event_type = "testkit.routed".into();
    let mut lost = envelope("a", 1);
    lost.event_type = "testkit.nobody_listens".into();
    let results = transport
        .publish(&[lost.clone(), routed.clone(), lost])
        .await;
    let err = results[0].as_ref().unwrap_err();
    assert!(err.is_transient(), "the relay retries, then dead-letters");
    assert!(err.chain().contains("unroutable"), "{}", err.chain());
    assert!(results[1].is_ok());
    assert!(results[2].is_err());
    assert_eq!(next(&mut stream).await.envelope.id, routed.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_publish_fails_exactly_the_refused_messages() {
    let transport = common::transport().await;
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.unwrap();
    let mut limits = FieldTable::default();
    limits.insert("x-max-length".into(), AMQPValue::LongLongInt(2));
    limits.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    plain_queue(&channel, &transport.config().exchange, limits).await;

    let batch = interleaved(1, 5);
    let results = transport.publish(&batch).await;
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, true, false, false, false], "{results:?}");
    let err = results[2].as_ref().unwrap_err();
    assert!(err.is_transient());
    assert!(err.chain().contains("nack"), "{}", err.chain());
    // The channel survives a nack: the next publish goes through once there is room.
    assert!(transport.publish(&batch[..1]).await[0].is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_retries_nacked_publishes_until_every_event_lands() {
    let transport = common::transport().await;
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.unwrap();
    let mut limits = FieldTable::default();
    limits.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
    limits.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = plain_queue(&channel, &transport.config().exchange, limits).await;

    let store = common::pg_store().await;
    let envs = interleaved(20, 5);
    common::record(&store, &envs).await;
    let relay = Relay::new(store.clone(), transport.clone(), common::relay_config()).unwrap();
    let metrics = relay.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });

    // A slow consumer: the queue keeps filling up, the broker keeps nacking, the relay keeps
    // retrying; nothing is lost and nothing is dead-lettered.
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < envs.len() && Instant::now() < deadline {
        match channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            Some(got) => {
                seen.insert(
                    got.delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .unwrap()
                        .to_string(),
                );
                got.delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(seen.len(), envs.len(), "every event arrived");
    let snapshot = metrics.snapshot();
    assert!(
        snapshot.retried > 0,
        "the broker nacked some publishes: {snapshot:?}"
    );
    assert_eq!(snapshot.dead_lettered, 0);
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_goes_through_the_delay_queues_then_to_the_dead_letters() {
    let transport = common::transport().await;
    let name = common::unique("failing");
    let mut stream = transport
        .subscribe(&SubscriptionSpec {
            max_attempts: 3,
            ..spec(&name)
        })
        .await
        .unwrap();
    let poison = envelope("poison", 0);
    let healthy = interleaved(3, 2);
    transport.publish(std::slice::from_ref(&poison)).await;
    for r in transport.publish(&healthy).await {
        r.unwrap();
    }

    let mut handled = HashSet::new();
    let mut poison_attempts = Vec::new();
    let mut last_retry = None::<Instant>;
    let deadline = Instant::now() + WAIT;
    while (handled.len() < healthy.len() || poison_attempts.len() < 3) && Instant::now() < deadline
    {
        let delivery = next(&mut stream).await;
        if delivery.envelope.id == poison.id {
            if let Some(at) = last_retry {
                assert!(
                    at.elapsed() >= Duration::from_millis(190),
                    "waited out the delay queue"
                );
            }
            poison_attempts.push((delivery.attempt, delivery.redelivered));
            last_retry = Some(Instant::now());
            delivery
                .retry(Duration::from_millis(150), "stock service down")
                .await
                .unwrap();
        } else {
            handled.insert(delivery.envelope.id);
            delivery.ack().await.unwrap();
        }
    }
    assert_eq!(
        handled.len(),
        healthy.len(),
        "other messages flowed throughout"
    );
    assert_eq!(poison_attempts, [(1, false), (2, true), (3, true)]);

    let dead = wait_for_dead_letters(&transport, &name, 1).await;
    assert_eq!(dead[0].envelope.as_ref().unwrap(), &poison);
    assert_eq!(kind(&dead[0]), "max-attempts");
    assert!(
        dead[0].reason.contains("stock service down"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(
        routing_key(&dead[0]),
        poison.event_type,
        "the original routing key"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(800), stream.next()).await;
    assert!(nothing.is_err(), "a dead letter is not redelivered");
}

/// Herald's kind of dead-lettering (`rejected`, `max-attempts`, `malformed`), from the raw
/// headers.
fn kind(dead: &herald_core::DeadLetter) -> &str {
    dead.raw
        .headers
        .get("x-herald-dead-letter-reason")
        .map_or("", String::as_str)
}

/// The routing key the message was first published with, from the raw headers.
fn routing_key(dead: &herald_core::DeadLetter) -> &str {
    let headers = &dead.raw.headers;
    headers
        .get("x-herald-original-routing-key")
        .or_else(|| headers.get("amqp:routing_key"))
        .map_or("", String::as_str)
}

async fn wait_for_dead_letters(
    transport: &AmqpTransport,
    name: &str,
    n: usize,
) -> Vec<herald_core::DeadLetter> {
    let deadline = Instant::now() + WAIT;
    let queue = transport.dead_letter_queue(name).unwrap();
    loop {
        let dead = queue.dead_letters(Page::first(100)).await.unwrap();
        if dead.len() >= n || Instant::now() > deadline {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_dead_lettered_at_once_while_others_flow() {
    let transport = common::transport().await;
    let name = common::unique("malformed");
    let mut stream = transport.subscribe(&spec(&name)).await.unwrap();
    let before = envelope("ok", 0);
    let after = envelope("ok", 1);
    transport.publish(std::slice::from_ref(&before)).await[0]
        .as_ref()
        .unwrap();

    // Another program publishes something that is no Herald envelope: no id, a mistyped time.
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "cloudEvents:specversion".into(),
        AMQPValue::LongString("1.0".into()),
    );
    headers.insert(
        "cloudEvents:type".into(),
        AMQPValue::LongString("testkit.test_event".into()),
    );
    headers.insert("cloudEvents:time".into(), AMQPValue::Boolean(true));
    channel
        .basic_publish(
            transport.config().exchange.as_str().into(),
            "testkit.test_event".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    transport.publish(std::slice::from_ref(&after)).await[0]
        .as_ref()
        .unwrap();

    let first = next(&mut stream).await;
    assert_eq!(first.envelope.id, before.id);
    first.ack().await.unwrap();
    let second = next(&mut stream).await;
    assert_eq!(
        second.envelope.id, after.id,
        "the malformed message never reaches the handler"
    );
    second.ack().await.unwrap();

    let dead = wait_for_dead_letters(&transport, &name, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(kind(&dead[0]), "malformed");
    assert!(dead[0].envelope.is_none());
    assert!(
        dead[0].reason.contains("cloudEvents:id"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(
        dead[0].raw.headers["amqp:routing_key"],
        "testkit.test_event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_again_and_consumption_resumes() {
    let transport = common::transport().await;
    let name = common::unique("deleted");
    let mut stream = transport.subscribe(&spec(&name)).await.unwrap();
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            name.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();

    // The broker cancels the consumer; the stream declares the queue again and consumes.
    let env = envelope("after-delete", 0);
    let consumer = tokio::spawn(async move {
        let delivery = next(&mut stream).await;
        let id = delivery.envelope.id;
        delivery.ack().await.unwrap();
        id
    });
    let deadline = Instant::now() + WAIT;
    while transport.publish(std::slice::from_ref(&env)).await[0].is_err() {
        assert!(
            Instant::now() < deadline,
            "the queue was never declared again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumer.await.unwrap(), env.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_carry_retries_and_dead_letters() {
    let transport = AmqpTransport::connect(AmqpConfig {
        queue_kind: QueueKind::Quorum,
        delivery_limit: Some(5),
        ..common::config()
    })
    .await
    .unwrap();
    let name = common::unique("quorum");
    let mut stream = transport.subscribe(&spec(&name)).await.unwrap();
    let env = envelope("q", 0);
    transport.publish(std::slice::from_ref(&env)).await[0]
        .as_ref()
        .unwrap();
    let first = next(&mut stream).await;
    assert_eq!((first.attempt, first.redelivered), (1, false));
    drop(first);
    let again = next(&mut stream).await;
    assert!(again.redelivered);
    assert_eq!(again.attempt, 2, "quorum queues count redeliveries");
    again
        .retry(Duration::from_millis(100), "later")
        .await
        .unwrap();
    let retried = next(&mut stream).await;
    assert_eq!((retried.attempt, retried.envelope.id), (3, env.id));
    retried.reject("no").await.unwrap();
    let dead = wait_for_dead_letters(&transport, &name, 1).await;
    assert_eq!((kind(&dead[0]), dead[0].attempts), ("rejected", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_named_and_keep_heartbeats() {
    let Ok(_) = std::process::Command::new("rabbitmqctl")
        .arg("--help")
        .output()
    else {
        eprintln!("rabbitmqctl not found: skipped");
        return;
    };
    let name = format!("herald-test-{}", Uuid::now_v7().simple());
    let transport = AmqpTransport::connect(AmqpConfig {
        connection_name: name.clone(),
        ..common::config()
    })
    .await
    .unwrap();
    let _stream = transport
        .subscribe(&spec(&common::unique("named")))
        .await
        .unwrap();
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "timeout", "client_properties"])
        .output()
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    for role in ["publisher", "subscriber"] {
        let wanted = format!("{{\"connection_name\",\"{name} {role}\"}}");
        let line = listing
            .lines()
            .find(|l| l.contains(&wanted))
            .unwrap_or_else(|| panic!("no `{name} {role}` connection in:\n{listing}"));
        assert!(line.starts_with("30\t"), "30 s heartbeat: {line}");
    }
    transport.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_error_without_the_password() {
    let url = common::amqp_url().replace("guest:guest", "guest:hunter2secret");
    let err = AmqpTransport::connect(AmqpConfig::new(url))
        .await
        .unwrap_err();
    let text = format!("{} / {:?}", err.chain(), err);
    assert!(!text.contains("hunter2secret"), "password leaked: {text}");
    assert!(
        text.to_lowercase().contains("access") || text.contains("refused"),
        "{text}"
    );

    let lazy =
        AmqpTransport::lazy(AmqpConfig::new("amqp://app:hunter2secret@127.0.0.1:1/")).unwrap();
    let results = lazy.publish(&[envelope("a", 0)]).await;
    let err = results[0].as_ref().unwrap_err();
    assert!(
        err.is_transient(),
        "an unreachable broker is no reason to dead-letter events"
    );
    assert!(!format!("{err:?}").contains("hunter2secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_urls_speak_tls() {
    // The test broker has no TLS listener: a TLS client hello to the plain port fails the
    // handshake, which shows that `amqps://` takes the TLS path.
    let config = AmqpConfig {
        connect_timeout: Duration::from_secs(3),
        ..AmqpConfig::new(common::amqp_url().replacen("amqp://", "amqps://", 1))
    };
    let err = AmqpTransport::connect(config).await.unwrap_err();
    assert!(err.is_transient(), "{}", err.chain());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_delay_queue_is_declared_again_on_the_next_retry() {
    let transport = common::transport().await;
    let name = common::unique("delay-deleted");
    let mut stream = transport.subscribe(&spec(&name)).await.unwrap();
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.unwrap();
    let delay_queue = format!("{name}.retry.200ms");
    channel
        .queue_delete(
            delay_queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let env = envelope("d", 0);
    transport.publish(std::slice::from_ref(&env)).await[0]
        .as_ref()
        .unwrap();
    let first = next(&mut stream).await;
    first
        .retry(Duration::from_millis(100), "later")
        .await
        .unwrap();
    let again = next(&mut stream).await;
    assert_eq!((again.envelope.id, again.attempt), (env.id, 2));
    again.ack().await.unwrap();
}

/// Counts the messages in `queue` (with a plain client), and how many of them the broker itself
/// dead-lettered (they carry its `x-death` header).
async fn count_queue(channel: &lapin::Channel, queue: &str) -> (usize, usize) {
    let (mut all, mut by_broker) = (0, 0);
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        all += 1;
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        if headers.inner().contains_key("x-death") {
            by_broker += 1;
        }
    }
    (all, by_broker)
}

/// When the dead-letter copy cannot be published, the delivery is rejected for the broker to
/// dead-letter it. That reject must reach the broker before any `multiple` ack that would
/// cover its tag: otherwise the message is acknowledged instead of dead-lettered, and the
/// reject of a tag already acknowledged closes the channel (every other unsettled delivery is
/// then redelivered).
///
/// The dead-letter queue is replaced by a full one that refuses publishes (so every copy is
/// nacked), and a `sink` queue bound to the dead-letter exchange as well shows what the broker
/// dead-lettered (the `x-death` header). Rejects and acks are interleaved as fast as possible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_after_a_failed_dead_letter_copy_is_never_covered_by_a_multiple_ack() {
    let transport = AmqpTransport::connect(AmqpConfig {
        ack_batch: 4,
        ack_interval: Duration::from_millis(1),
        ..common::config()
    })
    .await
    .unwrap();
    let name = common::unique("reject-order");
    let (dlq, dlx) = (format!("{name}.dlq"), format!("{name}.dlx"));
    let mut stream = transport
        .subscribe(&SubscriptionSpec {
            prefetch: 200,
            ..spec(&name)
        })
        .await
        .unwrap();
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(dlq.as_str().into(), Default::default())
        .await
        .unwrap();
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    full.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    let mut sink_args = FieldTable::default();
    sink_args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    let sink = format!("{name}.sink");
    // The dead-letter exchange went with its last binding (the test topology is ephemeral).
    channel
        .exchange_declare(
            dlx.as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for (queue, arguments) in [(&dlq, full), (&sink, sink_args)] {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                arguments,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    const MESSAGES: usize = 1_000;
    let batch: Vec<Envelope> = (0..MESSAGES)
        .map(|i| envelope(&format!("key-{i}"), 0))
        .collect();
    for chunk in batch.chunks(250) {
        for r in transport.publish(chunk).await {
            r.unwrap();
        }
    }
    let mut settling = tokio::task::JoinSet::new();
    let (mut received, mut redelivered, mut rejected) = (HashSet::new(), 0, 0);
    let deadline = Instant::now() + WAIT;
    while received.len() < MESSAGES && Instant::now() < deadline {
        let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(2), stream.next()).await
        else {
            break;
        };
        if delivery.redelivered {
            redelivered += 1;
        }
        let first = received.insert(delivery.envelope.id);
        let reject = delivery.envelope.id.as_u128() % 2 == 0;
        if first && reject {
            rejected += 1;
        }
        settling.spawn(async move {
            if reject {
                // The copy is nacked; the fallback reject may fail only with the channel.
                let _ = delivery.reject("refused by the test").await;
            } else {
                let _ = delivery.ack().await;
            }
        });
    }
    while settling.join_next().await.is_some() {}
    assert_eq!(received.len(), MESSAGES, "every message arrived");
    assert_eq!(
        redelivered, 0,
        "no channel was closed by a reject of an acknowledged tag"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (in_sink, by_broker) = count_queue(&channel, &sink).await;
    assert_eq!(
        by_broker, rejected,
        "every rejected message was dead-lettered by the broker, none acknowledged instead \
         ({in_sink} in the sink)"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(nothing.is_err(), "nothing comes back");
}

/// Copies a message the transport published (taken from a plain queue) into `queue` with the
/// retry headers `extra`, as a delay queue would hand it back.
async fn as_if_back_from_a_delay_queue(
    transport: &AmqpTransport,
    channel: &lapin::Channel,
    queue: &str,
    envelope: &Envelope,
    extra: &[(&str, i64)],
) {
    let plain = plain_queue(channel, &transport.config().exchange, FieldTable::default()).await;
    for r in transport.publish(std::slice::from_ref(envelope)).await {
        r.unwrap();
    }
    let got = channel
        .basic_get(plain.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message is in the plain queue");
    let mut headers = got
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    for (name, value) in extra {
        headers.insert((*name).into(), AMQPValue::LongLongInt(*value));
    }
    let properties = got.delivery.properties.clone().with_headers(headers);
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &got.delivery.data,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Whether a retried message is due is decided by the delay left, as its sender computed it,
/// never by comparing the sender's wall clock with the receiver's: a message back from its
/// delay queue with nothing left to wait is delivered at once, even if it carries a due time an
/// hour ahead (a sender whose clock runs fast); one with time left goes round again first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_due_by_the_delay_left_not_by_the_senders_clock() {
    let transport = common::transport().await;
    let name = common::unique("skew");
    // Bound for another type: the copies below are the only messages it gets.
    let mut stream = transport
        .subscribe(&SubscriptionSpec::new(&name, ["unrelated.type"]))
        .await
        .unwrap();
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.unwrap();
    let hour_ahead = (time::OffsetDateTime::now_utc().unix_timestamp() + 3600) * 1000;

    let due = envelope("skew", 0);
    as_if_back_from_a_delay_queue(
        &transport,
        &channel,
        &name,
        &due,
        &[
            ("x-herald-attempt", 2),
            ("x-herald-not-before", hour_ahead),
            ("x-herald-delay-remaining", 0),
        ],
    )
    .await;
    let started = Instant::now();
    let delivery = next(&mut stream).await;
    assert_eq!(delivery.envelope.id, due.id);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "delivered at once, not parked for the sender's hour: {:?}",
        started.elapsed()
    );
    assert_eq!(delivery.attempt, 2);
    delivery.ack().await.unwrap();

    let early = envelope("skew", 1);
    as_if_back_from_a_delay_queue(
        &transport,
        &channel,
        &name,
        &early,
        &[("x-herald-attempt", 2), ("x-herald-delay-remaining", 150)],
    )
    .await;
    let started = Instant::now();
    let delivery = next(&mut stream).await;
    assert_eq!(delivery.envelope.id, early.id);
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "sent round the 200 ms delay queue first: {:?}",
        started.elapsed()
    );
    assert_eq!(delivery.attempt, 2, "as the same attempt");
    delivery.ack().await.unwrap();
}
