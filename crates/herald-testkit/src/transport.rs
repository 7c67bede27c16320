//! The transport conformance suite: what every [`Publisher`] + [`Subscriber`] must do.
//!
//! Implement [`TransportFactory`] in the transport's integration tests and call
//! [`transport_suite!`](crate::transport_suite). Every test names its subscriptions with a
//! fresh UUID, so a broker transport can run the suite in parallel, and repeatedly, against a
//! shared server.
//!
//! Every `next()` runs under a timeout, so a broken transport fails a test instead of hanging
//! it. Some timeouts are expected to fire (proving that nothing arrives), which drops a pending
//! `next()` future: a transport's `next` must be cancel-safe (a message is never lost because
//! a `next()` future was dropped), as the consumer's shutdown needs anyway.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald_core::{
    Bytes, DeadLetter, DeadLetterOrigin, DeadLetters, Delivery, DeliveryStream, Envelope, Metadata,
    Page, Publisher, Selection, Subscriber, SubscriptionSpec, TraceContext, Uuid,
};

use crate::{TestEvent, envelope, interleaved};

/// Makes isolated transports for the suite.
pub trait TransportFactory: Send + Sync + 'static {
    /// The transport under test.
    type Transport: Publisher + Subscriber + Clone;

    /// Whether publishing a message that no subscription is bound to fails, like AMQP's
    /// `mandatory` flag (a feature flag, as watermill's `Features`): when `false`, the suite
    /// skips [`unroutable_publish_fails`].
    const MANDATORY: bool;

    /// Whether a subscription receives messages in the order they were published across
    /// partition keys (watermill's `GuaranteedOrder`). A partitioned log (Kafka) keeps order
    /// per partition, so per partition key only: when `false`, the suite checks order per
    /// partition key (and that every message came), and where a test steps through messages
    /// in publish order it publishes them under one key.
    const TOTAL_ORDER: bool = true;

    /// A transport that no other test shares: its own exchange, queues or stream names.
    fn create(&self) -> impl Future<Output = Self::Transport> + Send;

    /// The transport's view of one subscription's dead letters.
    type DeadLetters: DeadLetters;

    /// The dead letters of `subscription` (the transport's own accessor, such as
    /// `dead_letter_queue`), listed oldest first.
    fn dead_letter_queue(
        &self,
        transport: &Self::Transport,
        subscription: &str,
    ) -> Self::DeadLetters;
}

/// Expands to one `#[tokio::test]` per behaviour of the transport suite, each calling the
/// function of the same name in [`herald_testkit::transport`](crate::transport) with
/// `$factory`.
#[macro_export]
macro_rules! transport_suite {
    ($factory:expr) => {
        $crate::transport_suite!(@tests $factory;
            every_field_round_trips,
            batch_is_delivered_in_publish_order,
            each_subscription_receives_every_message,
            streams_of_one_subscription_share_its_messages,
            subscription_receives_only_its_event_types,
            acked_message_is_not_delivered_again,
            messages_wait_for_a_durable_subscription,
            retry_redelivers_after_the_delay,
            rejected_message_lands_in_the_dead_letters,
            retries_stop_at_the_subscriptions_max_attempts,
            dead_letters_are_paged_replayed_and_purged,
            dropped_delivery_is_delivered_again,
            prefetch_bounds_unsettled_deliveries,
            unroutable_publish_fails,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::transport::$name(&$factory).await;
            }
        )*
    };
}

/// How long a delivery that should come may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long we watch for a delivery that should not come.
const QUIET: Duration = Duration::from_millis(200);

const ALPHA: &str = "testkit.alpha";
const BETA: &str = "testkit.beta";

/// A subscription name no other test (or run) uses.
fn unique(base: &str) -> String {
    format!("testkit-{base}-{}", Uuid::now_v7())
}

fn spec(name: &str, event_types: &[&str]) -> SubscriptionSpec {
    SubscriptionSpec::new(name, event_types.iter().copied())
}

/// The `n`-th test envelope, relabelled as `event_type`.
fn typed(event_type: &str, n: u64) -> Envelope {
    let mut env = envelope("typed", n);
    env.event_type = event_type.to_owned();
    env
}

fn ids(envelopes: &[Envelope]) -> Vec<Uuid> {
    envelopes.iter().map(|e| e.id).collect()
}

/// [`interleaved`] envelopes for a test that steps through them in publish order: under one
/// partition key when the transport keeps order per key only ([`TransportFactory::TOTAL_ORDER`]).
fn in_order<F: TransportFactory>(keys: usize, per_key: u64) -> Vec<Envelope> {
    let mut envs = interleaved(keys, per_key);
    if !F::TOTAL_ORDER {
        for env in &mut envs {
            env.partition_key = Some("in-order".into());
        }
    }
    envs
}

/// Asserts that `got` (ids in delivery order) are the `published` messages in publish order:
/// in total when the transport keeps total order, else per partition key.
fn assert_publish_order<F: TransportFactory>(got: &[Uuid], published: &[Envelope]) {
    if F::TOTAL_ORDER {
        assert_eq!(got, ids(published), "delivered in publish order");
        return;
    }
    let mut sorted_got = got.to_vec();
    let mut sorted_published = ids(published);
    sorted_got.sort();
    sorted_published.sort();
    assert_eq!(sorted_got, sorted_published, "every message delivered once");
    let key_of = |id: &Uuid| {
        published
            .iter()
            .find(|e| e.id == *id)
            .map(|e| e.partition_key.clone())
    };
    let mut keys: Vec<Option<String>> = published.iter().map(|e| e.partition_key.clone()).collect();
    keys.dedup();
    for key in keys.into_iter().filter(Option::is_some) {
        let of_key = |ids: Vec<Uuid>| -> Vec<Uuid> {
            ids.into_iter()
                .filter(|id| key_of(id) == Some(key.clone()))
                .collect()
        };
        assert_eq!(
            of_key(got.to_vec()),
            of_key(ids(published)),
            "messages of key {key:?} delivered in publish order"
        );
    }
}

async fn subscribe<T: Subscriber>(transport: &T, spec: &SubscriptionSpec) -> T::Stream {
    match transport.subscribe(spec).await {
        Ok(stream) => stream,
        Err(err) => panic!("subscribe to `{}` failed: {}", spec.name, err.chain()),
    }
}

async fn publish<T: Publisher>(transport: &T, envelopes: &[Envelope]) {
    let results = transport.publish(envelopes).await;
    assert_eq!(results.len(), envelopes.len(), "one result per envelope");
    for (i, result) in results.into_iter().enumerate() {
        if let Err(err) = result {
            panic!("publish of envelope #{i} failed: {}", err.chain());
        }
    }
}

/// The next delivery, which must come within [`WAIT`].
async fn next<S: DeliveryStream>(stream: &mut S) -> Delivery {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(err))) => panic!("delivery failed: {}", err.chain()),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

async fn ack(delivery: Delivery) {
    if let Err(err) = delivery.ack().await {
        panic!("ack failed: {}", err.chain());
    }
}

/// Takes and acks `n` deliveries, returning their ids in delivery order.
async fn take_ids<S: DeliveryStream>(stream: &mut S, n: usize) -> Vec<Uuid> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let delivery = next(stream).await;
        out.push(delivery.envelope.id);
        ack(delivery).await;
    }
    out
}

/// Asserts that nothing is delivered within [`QUIET`].
async fn quiet<S: DeliveryStream>(stream: &mut S, what: &str) {
    if let Ok(got) = tokio::time::timeout(QUIET, stream.next()).await {
        panic!("{what}, but got {got:?}");
    }
}

/// An envelope with every optional field set and values a sloppy mapping would mangle.
fn full_envelope() -> Envelope {
    let cause = envelope("order-1", 0);
    let mut meta = Metadata::caused_by(&cause)
        .with_partition_key("order-1")
        .with_header("tenant", "acme")
        .with_header("x-note", "value with \"quotes\", ünicode; and = signs");
    meta.trace = TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: Some("vendor=abc,other=def".into()),
    };
    let event = TestEvent {
        key: "order-1".into(),
        n: 1,
        note: "payload".into(),
    };
    let mut env = Envelope::from_event(&event, meta).expect("encode");
    env.version = 3;
    env.content_type = "application/octet-stream".into();
    env.payload = Bytes::from_static(b"\x00\x01\xfe\xffbinary payload\r\n");
    // Brokers carry the time as RFC 3339 text; microseconds are what the stores keep too.
    let micros = env.occurred_at.microsecond();
    env.occurred_at = env
        .occurred_at
        .replace_microsecond(micros)
        .expect("valid microsecond");
    env
}

/// Every envelope field arrives as published, for a fully populated envelope and for one
/// whose optional fields are all empty.
pub async fn every_field_round_trips<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let name = unique("round-trip");
    let mut stream = subscribe(&transport, &spec(&name, &[])).await;
    let full = full_envelope();
    let mut minimal = envelope("order-2", 0);
    minimal.partition_key = None;
    minimal.occurred_at = full.occurred_at;
    publish(&transport, &[full.clone(), minimal.clone()]).await;

    let (first, second) = {
        let a = next(&mut stream).await;
        let b = next(&mut stream).await;
        // Without total order, the message without a partition key may come first.
        if F::TOTAL_ORDER || a.envelope.id == full.id {
            (a, b)
        } else {
            (b, a)
        }
    };
    assert_eq!(first.envelope, full, "every field round-trips");
    assert_eq!((first.attempt, first.redelivered), (1, false));
    ack(first).await;

    assert_eq!(second.envelope, minimal, "empty optional fields stay empty");
    let event = second
        .envelope
        .decode::<TestEvent>()
        .expect("payload decodes");
    assert_eq!(event.key, "order-2");
    ack(second).await;
}

/// One consumer receives a batch in the order it was published.
pub async fn batch_is_delivered_in_publish_order<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let name = unique("order");
    let mut stream = subscribe(&transport, &spec(&name, &[])).await;
    let envs = interleaved(10, 50);
    publish(&transport, &envs).await;
    assert_publish_order::<F>(&take_ids(&mut stream, envs.len()).await, &envs);
    quiet(&mut stream, "every message was delivered once").await;
}

/// Two subscriptions each receive their own copy of every message.
pub async fn each_subscription_receives_every_message<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let mut billing = subscribe(&transport, &spec(&unique("billing"), &[])).await;
    let mut shipping = subscribe(&transport, &spec(&unique("shipping"), &[])).await;
    let envs = interleaved(3, 5);
    publish(&transport, &envs).await;
    assert_publish_order::<F>(&take_ids(&mut billing, envs.len()).await, &envs);
    assert_publish_order::<F>(&take_ids(&mut shipping, envs.len()).await, &envs);
    quiet(&mut billing, "billing got each message once").await;
    quiet(&mut shipping, "shipping got each message once").await;
}

/// Two streams of one subscription compete: each message reaches exactly one of them, and
/// both take part.
pub async fn streams_of_one_subscription_share_its_messages<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let shared = SubscriptionSpec {
        prefetch: 1,
        ..spec(&unique("shared"), &[])
    };
    let mut a = subscribe(&transport, &shared).await;
    let mut b = subscribe(&transport, &shared).await;
    let envs = interleaved(4, 10);
    publish(&transport, &envs).await;

    // With a prefetch of 1, each stream holds one message at once: they share the queue.
    let from_a = next(&mut a).await;
    let from_b = next(&mut b).await;
    assert_ne!(from_a.envelope.id, from_b.envelope.id, "competing streams");
    let mut seen = vec![from_a.envelope.id, from_b.envelope.id];
    ack(from_a).await;
    ack(from_b).await;

    let taken = Arc::new(AtomicUsize::new(seen.len()));
    let total = envs.len();
    let task_a = tokio::spawn(drain_shared(a, Arc::clone(&taken), total));
    let task_b = tokio::spawn(drain_shared(b, Arc::clone(&taken), total));
    let (mut a, ids_a) = task_a.await.expect("stream a drains");
    let (mut b, ids_b) = task_b.await.expect("stream b drains");
    seen.extend(ids_a);
    seen.extend(ids_b);

    assert_eq!(seen.len(), total, "each message delivered exactly once");
    let seen: HashSet<Uuid> = seen.into_iter().collect();
    assert_eq!(seen, ids(&envs).into_iter().collect::<HashSet<_>>());
    quiet(&mut a, "nothing is left for stream a").await;
    quiet(&mut b, "nothing is left for stream b").await;
}

/// Acks what `stream` receives until `taken` reaches `total` across streams.
async fn drain_shared<S: DeliveryStream>(
    mut stream: S,
    taken: Arc<AtomicUsize>,
    total: usize,
) -> (S, Vec<Uuid>) {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while taken.load(Ordering::SeqCst) < total {
        assert!(Instant::now() < deadline, "messages missing after {WAIT:?}");
        match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
            Ok(Some(Ok(delivery))) => {
                out.push(delivery.envelope.id);
                taken.fetch_add(1, Ordering::SeqCst);
                ack(delivery).await;
            }
            Ok(Some(Err(err))) => panic!("delivery failed: {}", err.chain()),
            Ok(None) => panic!("stream ended"),
            Err(_) => {}
        }
    }
    (stream, out)
}

/// A subscription receives the event types it asked for, in order, and nothing else; an
/// empty list receives every type.
pub async fn subscription_receives_only_its_event_types<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let mut alpha = subscribe(&transport, &spec(&unique("alpha"), &[ALPHA])).await;
    let mut beta = subscribe(&transport, &spec(&unique("beta"), &[BETA])).await;
    let mut all = subscribe(&transport, &spec(&unique("all"), &[])).await;
    let envs: Vec<Envelope> = (0..6)
        .map(|n| typed(if n % 2 == 0 { ALPHA } else { BETA }, n))
        .collect();
    publish(&transport, &envs).await;

    let of = |t: &str| -> Vec<Uuid> {
        envs.iter()
            .filter(|e| e.event_type == t)
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(take_ids(&mut alpha, 3).await, of(ALPHA));
    assert_eq!(take_ids(&mut beta, 3).await, of(BETA));
    assert_eq!(take_ids(&mut all, 6).await, ids(&envs));
    quiet(&mut alpha, "alpha receives no other type").await;
    quiet(&mut beta, "beta receives no other type").await;
}

/// An acknowledged message is gone, also for the next consumer of the subscription.
pub async fn acked_message_is_not_delivered_again<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let orders = spec(&unique("acked"), &[]);
    let mut stream = subscribe(&transport, &orders).await;
    let envs = interleaved(1, 3);
    publish(&transport, &envs).await;
    assert_eq!(take_ids(&mut stream, 3).await, ids(&envs));
    quiet(&mut stream, "acked messages stay acked").await;
    drop(stream);
    let mut again = subscribe(&transport, &orders).await;
    quiet(&mut again, "a new consumer gets no acked message").await;
}

/// A subscription is durable: messages published while no stream is open wait for the next.
pub async fn messages_wait_for_a_durable_subscription<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let durable = spec(&unique("durable"), &[]);
    drop(subscribe(&transport, &durable).await);
    let envs = interleaved(2, 3);
    publish(&transport, &envs).await;
    let mut stream = subscribe(&transport, &durable).await;
    assert_publish_order::<F>(&take_ids(&mut stream, envs.len()).await, &envs);
}

/// A retried message comes back after its delay, as attempt 2 and marked redelivered, behind
/// the messages that were waiting: a retry does not block the queue.
pub async fn retry_redelivers_after_the_delay<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let mut stream = subscribe(&transport, &spec(&unique("retry"), &[])).await;
    let envs = in_order::<F>(2, 1);
    publish(&transport, &envs).await;

    let first = next(&mut stream).await;
    assert_eq!(first.envelope.id, envs[0].id);
    assert_eq!((first.attempt, first.redelivered), (1, false));
    let delay = Duration::from_millis(500);
    let retried_at = Instant::now();
    first.retry(delay, "not yet").await.expect("retry");

    let other = next(&mut stream).await;
    assert_eq!(
        other.envelope.id, envs[1].id,
        "a retry does not block the queue"
    );
    ack(other).await;

    let again = next(&mut stream).await;
    let waited = retried_at.elapsed();
    assert!(
        waited + Duration::from_millis(10) >= delay,
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    assert_eq!(again.envelope, envs[0], "the same message comes back");
    assert_eq!((again.attempt, again.redelivered), (2, true));
    ack(again).await;
    quiet(&mut stream, "an acked retry is done").await;
}

/// The subscription's `max_attempts` caps retries: a retry asked on the last attempt
/// dead-letters the message with the retry's reason instead of delivering it again. A deferral
/// spends no attempt, so it never dead-letters, even on the last attempt.
pub async fn retries_stop_at_the_subscriptions_max_attempts<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let name = unique("capped");
    let capped = SubscriptionSpec {
        max_attempts: 2,
        ..spec(&name, &[])
    };
    let mut stream = subscribe(&transport, &capped).await;
    let envs = interleaved(2, 1);
    publish(&transport, &envs[..1]).await;

    let first = next(&mut stream).await;
    assert_eq!(first.attempt, 1);
    first
        .retry(Duration::ZERO, "try again")
        .await
        .expect("retry");
    let second = next(&mut stream).await;
    assert_eq!((second.envelope.id, second.attempt), (envs[0].id, 2));
    second
        .defer(Duration::ZERO, "behind an earlier message")
        .await
        .expect("defer");
    let deferred = next(&mut stream).await;
    assert_eq!(
        (deferred.envelope.id, deferred.attempt),
        (envs[0].id, 2),
        "a deferral spends no attempt and never dead-letters"
    );
    let reason = format!("still failing {}", Uuid::now_v7());
    deferred
        .retry(Duration::ZERO, reason.clone())
        .await
        .expect("retry");

    let dead = wait_for_dead_letters(&factory.dead_letter_queue(&transport, &name), 1).await;
    assert_eq!(dead.len(), 1, "the retry past the cap dead-lettered it");
    assert_eq!(dead[0].id, Some(envs[0].id));
    assert_eq!(dead[0].attempts, 2);
    let why = &dead[0].reason;
    assert!(why.contains(&reason), "reason `{why}` keeps `{reason}`");
    quiet(
        &mut stream,
        "a message past its attempts is not delivered again",
    )
    .await;

    // The cap is the subscription's: the next message has its own attempts.
    publish(&transport, &envs[1..]).await;
    let fresh = next(&mut stream).await;
    assert_eq!((fresh.envelope.id, fresh.attempt), (envs[1].id, 1));
    ack(fresh).await;
}

/// A rejected message goes to the subscription's dead letters with its reason, is not
/// delivered again, and does not block the next message.
pub async fn rejected_message_lands_in_the_dead_letters<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let name = unique("reject");
    let mut stream = subscribe(&transport, &spec(&name, &[])).await;
    let envs = in_order::<F>(2, 1);
    publish(&transport, &envs).await;

    let poison = next(&mut stream).await;
    assert_eq!(poison.envelope.id, envs[0].id);
    let reason = format!("poison pill {}", Uuid::now_v7());
    poison.reject(reason.clone()).await.expect("reject");
    let healthy = next(&mut stream).await;
    assert_eq!(
        healthy.envelope.id, envs[1].id,
        "a reject does not block the queue"
    );
    ack(healthy).await;

    let dead = wait_for_dead_letters(&factory.dead_letter_queue(&transport, &name), 1).await;
    assert_eq!(dead.len(), 1, "one dead letter");
    let (envelope, why) = match &dead[0] {
        DeadLetter {
            envelope: Some(envelope),
            reason,
            ..
        } => (envelope, reason),
        other => panic!("a dead letter that does not decode: {other:?}"),
    };
    assert_eq!(envelope.id, envs[0].id);
    assert_eq!(envelope.event_type, envs[0].event_type);
    assert_eq!(envelope.payload, envs[0].payload);
    assert!(why.contains(&reason), "reason `{why}` keeps `{reason}`");
    quiet(&mut stream, "a rejected message is not redelivered").await;
}

/// Lists `dead_letters` until at least `n` are there or [`WAIT`] passed.
async fn wait_for_dead_letters<D: DeadLetters>(dead_letters: &D, n: usize) -> Vec<DeadLetter> {
    let deadline = Instant::now() + WAIT;
    loop {
        let dead = match dead_letters.dead_letters(Page::ALL).await {
            Ok(dead) => dead,
            Err(err) => panic!("listing dead letters failed: {}", err.chain()),
        };
        if dead.len() >= n || Instant::now() > deadline {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dead_ids(dead: &[DeadLetter]) -> Vec<Option<Uuid>> {
    dead.iter().map(|d| d.id).collect()
}

/// Dead letters are listed by page in queue order, with where and why; one is replayed as a
/// first delivery, one purged, and the rest purged at once; an unknown id selects nothing.
pub async fn dead_letters_are_paged_replayed_and_purged<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let name = unique("dead");
    let mut stream = subscribe(&transport, &spec(&name, &[])).await;
    let envs = in_order::<F>(3, 1);
    publish(&transport, &envs).await;
    for env in &envs {
        let delivery = next(&mut stream).await;
        assert_eq!(delivery.envelope.id, env.id);
        let reason = format!("cannot handle {}", env.id);
        delivery.reject(reason).await.expect("reject");
    }
    let queue = factory.dead_letter_queue(&transport, &name);
    let dead = wait_for_dead_letters(&queue, 3).await;
    let expected: Vec<Option<Uuid>> = envs.iter().map(|e| Some(e.id)).collect();
    assert_eq!(dead_ids(&dead), expected, "oldest first");
    for (letter, env) in dead.iter().zip(&envs) {
        assert_eq!(letter.envelope.as_ref(), Some(env));
        assert_eq!(letter.raw.payload, env.payload, "the raw form is kept");
        assert!(
            letter.reason.contains(&format!("cannot handle {}", env.id)),
            "{}",
            letter.reason
        );
        assert_eq!(letter.attempts, 1);
        assert_eq!(
            letter.origin,
            DeadLetterOrigin::Queue { name: name.clone() }
        );
    }
    let page = queue
        .dead_letters(Page {
            offset: 1,
            limit: 1,
        })
        .await
        .expect("page");
    assert_eq!(
        dead_ids(&page),
        vec![Some(envs[1].id)],
        "the second page of one"
    );

    assert_eq!(
        queue
            .replay(Selection::One(Uuid::now_v7()))
            .await
            .expect("replay"),
        0
    );
    assert_eq!(
        queue
            .purge(Selection::One(Uuid::now_v7()))
            .await
            .expect("purge"),
        0
    );
    assert_eq!(
        queue
            .replay(Selection::One(envs[0].id))
            .await
            .expect("replay"),
        1
    );
    let replayed = next(&mut stream).await;
    assert_eq!(replayed.envelope, envs[0], "the same message comes back");
    assert_eq!(replayed.attempt, 1, "as a first attempt");
    ack(replayed).await;
    quiet(&mut stream, "only the selected dead letter is replayed").await;

    assert_eq!(
        queue
            .purge(Selection::One(envs[1].id))
            .await
            .expect("purge"),
        1
    );
    let left = queue.dead_letters(Page::ALL).await.expect("list");
    assert_eq!(dead_ids(&left), vec![Some(envs[2].id)]);
    assert_eq!(queue.purge(Selection::All).await.expect("purge all"), 1);
    assert!(
        queue
            .dead_letters(Page::ALL)
            .await
            .expect("list")
            .is_empty()
    );
    quiet(&mut stream, "purged dead letters are gone").await;
}

/// A delivery dropped without being settled (a consumer that crashed) is delivered again,
/// marked redelivered.
pub async fn dropped_delivery_is_delivered_again<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let mut stream = subscribe(&transport, &spec(&unique("dropped"), &[])).await;
    let env = envelope("crash", 0);
    publish(&transport, std::slice::from_ref(&env)).await;

    let lost = next(&mut stream).await;
    assert!(!lost.redelivered);
    let first_attempt = lost.attempt;
    drop(lost);

    let again = next(&mut stream).await;
    assert_eq!(again.envelope, env);
    assert!(again.redelivered, "marked redelivered");
    assert!(again.attempt >= first_attempt);
    ack(again).await;
    quiet(&mut stream, "an acked redelivery is done").await;
}

/// A stream never holds more unsettled deliveries than its prefetch; settling one frees room.
pub async fn prefetch_bounds_unsettled_deliveries<F: TransportFactory>(factory: &F) {
    let transport = factory.create().await;
    let bounded = SubscriptionSpec {
        prefetch: 2,
        ..spec(&unique("prefetch"), &[])
    };
    let mut stream = subscribe(&transport, &bounded).await;
    let envs = interleaved(1, 5);
    publish(&transport, &envs).await;

    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    quiet(
        &mut stream,
        "a third unsettled delivery exceeds a prefetch of 2",
    )
    .await;
    ack(first).await;
    let third = next(&mut stream).await;
    let mut got = vec![second.envelope.id, third.envelope.id];
    ack(second).await;
    ack(third).await;
    got.extend(take_ids(&mut stream, 2).await);
    assert_eq!(got, ids(&envs[1..]));
}

/// Publishing a message that no subscription is bound to fails for that message only (when
/// the transport is [`MANDATORY`](TransportFactory::MANDATORY)).
pub async fn unroutable_publish_fails<F: TransportFactory>(factory: &F) {
    if !F::MANDATORY {
        return;
    }
    let transport = factory.create().await;
    let mut stream = subscribe(&transport, &spec(&unique("routed"), &[ALPHA])).await;
    let routed = typed(ALPHA, 0);
    let unroutable = typed("testkit.unroutable", 1);
    let results = transport.publish(&[routed.clone(), unroutable]).await;
    assert_eq!(results.len(), 2, "one result per envelope");
    if let Err(err) = &results[0] {
        panic!("routed publish failed: {}", err.chain());
    }
    assert!(results[1].is_err(), "unroutable publish must fail");
    let delivery = next(&mut stream).await;
    assert_eq!(delivery.envelope.id, routed.id);
    ack(delivery).await;
}
