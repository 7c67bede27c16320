//! The broker restarts while the relay drains thousands of events from PostgreSQL: every event
//! arrives, and the relay and the subscriber resume by themselves.
//!
//! Alone in its test binary: cargo runs test binaries one after another, so no other AMQP test
//! sees the broker go away. The broker is started again whatever happens (a guard), and the
//! test waits until it accepts connections before it ends.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_core::{DeliveryStream, Subscriber, SubscriptionSpec, Uuid};
use herald_relay::Relay;
use herald_testkit::interleaved;
use tokio_util::sync::CancellationToken;

/// Runs `rabbitmqctl start_app` when dropped (even on a panic), then waits for port 5672.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        let _ = rabbitmqctl("start_app");
        wait_for_broker(Duration::from_secs(120));
    }
}

fn rabbitmqctl(command: &str) -> bool {
    match Command::new("rabbitmqctl").arg(command).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "rabbitmqctl {command} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
        Err(err) => {
            eprintln!("rabbitmqctl {command}: {err}");
            false
        }
    }
}

/// Waits until the broker's AMQP port (from `HERALD_TEST_AMQP_URL`) accepts connections.
fn wait_for_broker(limit: Duration) -> bool {
    let url = common::amqp_url();
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|a| a.rsplit('@').next().unwrap_or(a).to_owned())
        .unwrap_or_else(|| "127.0.0.1:5672".to_owned());
    let authority = if authority.contains(':') {
        authority
    } else {
        format!("{authority}:5672")
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let up = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|addr| {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            });
        if up {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_drain_loses_nothing_and_needs_no_restart() {
    common::logs();
    assert!(
        rabbitmqctl("status"),
        "this test restarts RabbitMQ with rabbitmqctl, which must work here (run as root, or \
         with access to the broker's Erlang cookie)"
    );
    let transport = AmqpTransport::connect(AmqpConfig {
        expires: Some(Duration::from_secs(600)),
        ..common::config()
    })
    .await
    .unwrap();
    let name = common::unique("restart");
    let mut stream = transport
        .subscribe(&SubscriptionSpec::new(&name, Vec::<String>::new()))
        .await
        .unwrap();

    let store = common::pg_store().await;
    let first = interleaved(200, 40);
    let second = interleaved(100, 20);
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
    let consumer = tokio::spawn({
        let received = Arc::clone(&received);
        async move {
            let mut deliveries = 0u64;
            while let Some(item) = stream.next().await {
                let delivery = item.expect("the stream recovers by itself");
                received.lock().unwrap().insert(delivery.envelope.id);
                deliveries += 1;
                // A settle may fail while the broker is away; the message then comes again.
                let _ = delivery.ack().await;
            }
            deliveries
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
    assert!(rabbitmqctl("stop_app"), "the broker stops");
    common::record(&store, &second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rabbitmqctl("start_app"), "the broker starts again");
    drop(guard);
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
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.dead_lettered, 0, "{snapshot:?}");
    eprintln!(
        "restart: {} events, {} received before the stop, relay {snapshot:?}",
        expected.len(),
        at_stop
    );

    shutdown.cancel();
    relay_task.await.unwrap().unwrap();
    transport.delete_subscription(&name).await.unwrap();
    transport.close().await;
    consumer.await.unwrap();
    common::drop_schema(&store).await;
}
