//! The broker is stopped and started again while the relay drains thousands of events from
//! PostgreSQL to Kafka: every event arrives, in order per key, and the relay and the
//! subscriber resume by themselves; a new subscription declared right after the restart
//! waits for the group coordinator instead of failing.
//!
//! Alone in its test binary: cargo runs test binaries one after another, so no other Kafka
//! test sees the broker go away. The broker is stopped through the pid file of
//! `scripts/services kafka` and started again by that script whatever happens (a guard), so
//! it is left running, pass or fail.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::{DeliveryStream, Subscriber, SubscriptionSpec, Uuid};
use herald_kafka::{KafkaConfig, KafkaTransport};
use herald_relay::Relay;
use herald_testkit::{TestEvent, envelope, interleaved};
use tokio_util::sync::CancellationToken;

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// Starts the broker with `scripts/services kafka` when dropped (even on a panic).
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        start_broker();
    }
}

fn start_broker() -> bool {
    let out = Command::new(scripts().join("services"))
        .arg("kafka")
        .output()
        .unwrap();
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// Stops the broker that `scripts/services kafka` started (SIGTERM through its pid file) and
/// waits until it has exited.
fn stop_broker() -> bool {
    let script = format!(
        ". '{}/kafka/layout' && pid=$(cat \"$kafka_pid\") && kill \"$pid\" && \
         while kill -0 \"$pid\" 2>/dev/null; do sleep 0.2; done",
        scripts().display()
    );
    Command::new("bash")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success()
}

fn broker_listens() -> bool {
    TcpStream::connect_timeout(
        &"127.0.0.1:9092".parse().unwrap(),
        Duration::from_millis(500),
    )
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_drain_loses_nothing_and_needs_no_restart() {
    common::logs();
    if common::servers() != herald_testkit::env::KAFKA {
        eprintln!("skipped: HERALD_TEST_KAFKA names another cluster than scripts/services' one");
        return;
    }
    assert!(
        broker_listens(),
        "scripts/services kafka must have started the broker"
    );
    let transport = KafkaTransport::connect(KafkaConfig {
        delivery_timeout: Duration::from_secs(10),
        ..common::config()
    })
    .await
    .unwrap();
    let name = common::unique("restart");
    let mut stream = transport
        .subscribe(&SubscriptionSpec {
            prefetch: 1000,
            ..SubscriptionSpec::new(&name, Vec::<String>::new())
        })
        .await
        .unwrap();

    let store = common::pg_store().await;
    let first = interleaved(200, 40);
    // Recorded while the broker is down, under keys of their own.
    let second: Vec<_> = (0..20)
        .flat_map(|n| (0..100).map(move |k| envelope(&format!("late-{k}"), n)))
        .collect();
    common::record(&store, &first).await;
    let expected: HashSet<Uuid> = first.iter().chain(&second).map(|e| e.id).collect();

    let relay = Relay::new(store.clone(), transport.clone(), common::relay_config()).unwrap();
    let metrics = relay.metrics();
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let received: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    // Per key, the event numbers in the order first handled.
    let order: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let consumer = tokio::spawn({
        let received = Arc::clone(&received);
        let order = Arc::clone(&order);
        async move {
            while let Some(item) = stream.next().await {
                let delivery = item.expect("the stream recovers by itself");
                if received.lock().unwrap().insert(delivery.envelope.id) {
                    let event = delivery.envelope.decode::<TestEvent>().unwrap();
                    order
                        .lock()
                        .unwrap()
                        .entry(event.key)
                        .or_default()
                        .push(event.n);
                }
                let _ = delivery.ack().await;
            }
        }
    });
    let count = || received.lock().unwrap().len();

    // Mid-stream: stop the broker, record more events while it is down, start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count() < 500 {
        assert!(
            Instant::now() < deadline,
            "nothing flows before the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let guard = StartAgain;
    let at_stop = count();
    assert!(
        tokio::task::spawn_blocking(stop_broker).await.unwrap(),
        "the broker stops"
    );
    common::record(&store, &second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tokio::task::spawn_blocking(start_broker).await.unwrap(),
        "the broker starts again"
    );
    std::mem::forget(guard);
    // A new group declared while the broker still loads its group coordinator (as on a fresh
    // broker's first group): the coordinator's not-ready errors are waited out, not returned.
    let late = transport
        .subscribe(&SubscriptionSpec::new(
            common::unique("after-restart"),
            Vec::<String>::new(),
        ))
        .await;
    assert!(
        late.is_ok(),
        "a subscription declared right after the restart: {:?}",
        late.err()
    );
    assert!(
        at_stop < first.len(),
        "the restart happened mid-drain ({at_stop} received at stop)"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    while count() < expected.len() && Instant::now() < deadline {
        assert!(!relay_task.is_finished(), "the relay keeps running");
        assert!(!consumer.is_finished(), "the subscriber keeps running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().unwrap().clone();
    let missing = expected.difference(&got).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} events never arrived",
        expected.len()
    );
    for (key, ns) in order.lock().unwrap().iter() {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {key} handled in recording order");
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.dead_lettered, 0, "{snapshot:?}");
    eprintln!(
        "restart: {} events, {} received before the stop, relay {snapshot:?}",
        expected.len(),
        at_stop
    );

    shutdown.cancel();
    relay_task.await.unwrap().unwrap();
    consumer.abort();
    common::drop_schema(&store).await;
}
