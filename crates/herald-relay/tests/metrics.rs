//! The relay's metrics through the `metrics` facade, rendered by the Prometheus exporter: a
//! relay drains a PostgreSQL outbox (`HERALD_TEST_DATABASE_URL`) through the in-memory broker,
//! whose fault knob fails the first publication of some events. The recorder is global to this
//! test binary: one test only.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_memory::MemoryTransport;
use herald_relay::{OutboxMonitor, Relay};
use herald_testkit::interleaved;
use metrics_exporter_prometheus::PrometheusBuilder;

fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_metrics_count_published_events_and_injected_failures() {
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .unwrap()
        .install_recorder()
        .unwrap();
    herald_relay::metrics::describe();
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = {
        use herald_core::Subscriber;
        transport.subscribe(&audit()).await.unwrap()
    };
    let events = interleaved(20, 10);
    // The first publication of every seventh event fails, transiently.
    let doomed: HashSet<_> = events.iter().step_by(7).map(|e| e.id).collect();
    let injected = doomed.len();
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    transport.fail_publishes_when({
        let failed_once = failed_once.clone();
        move |envelope| {
            (doomed.contains(&envelope.id) && failed_once.lock().unwrap().insert(envelope.id))
                .then(|| "injected broker failure".to_owned())
        }
    });
    record_pg(&store, &events).await;

    let monitor = OutboxMonitor::new(store.clone(), Duration::from_millis(50));
    let before = monitor.sample().await.unwrap();
    assert_eq!(before.pending, events.len() as u64);
    let sampled = samples(&prometheus.render());
    assert_eq!(
        value(&sampled, "herald_outbox_pending_rows{state=\"due\"}"),
        events.len() as f64
    );
    assert!(value(&sampled, "herald_outbox_oldest_due_age_seconds") > 0.0);

    let relay = Relay::new(store.clone(), transport.clone(), fast_config()).unwrap();
    let snapshot = relay.metrics();
    let delivered = run_until_delivered(relay, &mut stream, events.len()).await;
    assert_eq!(delivered.len(), events.len());
    assert_eq!(failed_once.lock().unwrap().len(), injected);

    let after = samples(&prometheus.render());
    let counters = snapshot.snapshot();
    assert_eq!(
        value(&after, "herald_relay_published_total"),
        events.len() as f64,
        "published = recorded"
    );
    assert_eq!(
        value(&after, "herald_relay_failed_total"),
        injected as f64,
        "failures = injected"
    );
    assert_eq!(value(&after, "herald_relay_dead_lettered_total"), 0.0);
    // The facade and the snapshot count the same things.
    assert_eq!(
        value(&after, "herald_relay_published_total"),
        counters.published as f64
    );
    assert_eq!(
        value(&after, "herald_relay_failed_total"),
        (counters.retried + counters.dead_lettered) as f64
    );
    assert_eq!(
        value(&after, "herald_relay_claimed_total"),
        counters.claimed as f64
    );
    assert_eq!(
        value(&after, "herald_relay_released_total"),
        counters.released as f64
    );
    assert_eq!(
        value(&after, "herald_relay_batch_rows_sum"),
        counters.claimed as f64
    );
    assert_eq!(
        value(&after, "herald_relay_batch_rows_count"),
        counters.batches as f64
    );
    assert!(value(&after, "herald_relay_publish_duration_seconds_count") >= 1.0);
    assert_eq!(value(&after, "herald_relay_in_flight_rows"), 0.0);

    monitor.sample().await.unwrap();
    let drained = samples(&prometheus.render());
    assert_eq!(
        value(&drained, "herald_outbox_pending_rows{state=\"due\"}"),
        0.0
    );
    assert_eq!(value(&drained, "herald_outbox_oldest_due_age_seconds"), 0.0);
    pg_drop(&store).await;
}
