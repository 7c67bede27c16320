//! A relay process killed with SIGKILL mid-batch loses nothing.
//!
//! The test re-runs its own binary as the relay process (`relay_process`, active only when
//! `HERALD_RELAY_CHILD` is set). That process publishes into a journal file: each confirmed
//! message is appended and fsynced before the publish call returns, which is exactly what a
//! broker's publisher confirm promises. The parent kills it while it holds claimed rows, starts
//! another one, and checks that every committed event reached the journal.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_core::{Envelope, OutboxAdmin, OutboxStore, Publisher, Result, Uuid};
use herald_relay::{Relay, RelayConfig};
use herald_testkit::interleaved;
use tokio_util::sync::CancellationToken;

/// Appends confirmed message ids to a file, fsyncing before confirming.
#[derive(Clone)]
struct Journal(Arc<Mutex<std::fs::File>>);

impl Publisher for Journal {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        // Slow enough that a kill almost always lands inside a batch.
        tokio::time::sleep(Duration::from_millis(15)).await;
        let mut text = String::new();
        for env in batch {
            text.push_str(&env.id.to_string());
            text.push('\n');
        }
        let mut file = self.0.lock().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.sync_data().unwrap();
        batch.iter().map(|_| Ok(())).collect()
    }
}

async fn run_child<S: OutboxStore>(store: S, journal: &str) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal)
        .unwrap();
    let config = RelayConfig {
        batch_size: 50,
        lease: Duration::from_millis(1500),
        publish_timeout: Duration::from_millis(500),
        ..fast_config()
    };
    let relay = Relay::new(store, Journal(Arc::new(Mutex::new(file))), config).unwrap();
    relay.run(CancellationToken::new()).await.unwrap();
}

/// The relay process. Does nothing in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_process() {
    let Ok(database) = std::env::var("HERALD_RELAY_CHILD") else {
        return;
    };
    let journal = std::env::var("HERALD_RELAY_JOURNAL").unwrap();
    if database.starts_with("postgres") {
        let schema = std::env::var("HERALD_RELAY_SCHEMA").unwrap();
        let config = herald_postgres::PgOutboxConfig::new(&schema, "outbox").unwrap();
        let store = herald_postgres::PgOutbox::connect(&database, config)
            .await
            .unwrap();
        run_child(store, &journal).await;
    } else {
        run_child(sqlite_at(&database).await, &journal).await;
    }
}

/// The relay process; killed (SIGKILL) and reaped when dropped, so a failing test leaves no
/// process behind.
struct RelayProcess(Child);

impl RelayProcess {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_relay(database: &str, schema: &str, journal: &str) -> RelayProcess {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "relay_process", "--nocapture"])
        .env("HERALD_RELAY_CHILD", database)
        .env("HERALD_RELAY_SCHEMA", schema)
        .env("HERALD_RELAY_JOURNAL", journal)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    RelayProcess(child)
}

fn journal_ids(journal: &str) -> Vec<Uuid> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Uuid::parse_str(l).ok())
        .collect()
}

/// Kills the relay process mid-batch, restarts it, and checks that every event got out.
async fn kill_mid_batch_then_restart<S: OutboxAdmin>(
    store: &S,
    database: &str,
    schema: &str,
    expected: &HashSet<Uuid>,
) {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.txt");
    let journal = journal.to_str().unwrap();

    let mut first = spawn_relay(database, schema, journal);
    let mut killed_with_claims = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let published = journal_ids(journal).len();
        if published >= expected.len() / 4 && store.stats().await.unwrap().in_flight > 0 {
            first.kill(); // SIGKILL
            killed_with_claims = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        killed_with_claims,
        "the relay was killed while holding claims"
    );
    let stats = store.stats().await.unwrap();
    assert!(stats.pending + stats.in_flight > 0, "work was left behind");

    let mut second = spawn_relay(database, schema, journal);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut published: HashSet<Uuid> = HashSet::new();
    while std::time::Instant::now() < deadline {
        published = journal_ids(journal).into_iter().collect();
        if expected.is_subset(&published) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.kill();
    let missing = expected.difference(&published).count();
    assert_eq!(missing, 0, "{missing} committed events were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relay_loses_nothing_postgres() {
    let store = pg_store().await;
    let events = interleaved(50, 40);
    record_pg(&store, &events).await;
    let expected = events.iter().map(|e| e.id).collect();
    let schema = store.config().schema.as_str().to_owned();
    kill_mid_batch_then_restart(&store, &database_url(), &schema, &expected).await;
    pg_drop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relay_loses_nothing_sqlite() {
    let (dir, store) = sqlite_store().await;
    let events = interleaved(50, 40);
    record_sqlite(&store, &events).await;
    let expected = events.iter().map(|e| e.id).collect();
    let path = dir.path().join("outbox.db");
    kill_mid_batch_then_restart(&store, path.to_str().unwrap(), "", &expected).await;
}
