//! The demo's closing summary.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use anyhow::{Result, bail};
use herald_relay::RelaySnapshot;

use super::inventory::Inventory;
use super::ordering::Ordering;
use crate::fmt_ms;
use crate::transport::DeadMessage;

/// Counters shared by the demo's tasks.
#[derive(Default)]
pub struct Counters {
    pub recorded: AtomicU64,
    pub cancelled: AtomicU64,
    pub handled: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub consumer_retries: AtomicU64,
    pub reject_reasons: Mutex<Vec<String>>,
}

/// What the demo measured.
pub struct Report {
    orders: u64,
    recorded: u64,
    cancelled: u64,
    handled: u64,
    duplicates: u64,
    rejected: u64,
    relays: RelaySnapshot,
    dead_letters: Vec<DeadMessage>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Report {
    pub fn new(
        orders: u64,
        counters: std::sync::Arc<Counters>,
        relays: Vec<RelaySnapshot>,
        dead_letters: Vec<DeadMessage>,
        mut latencies: Vec<Duration>,
        elapsed: Duration,
    ) -> Self {
        latencies.sort_unstable();
        let relays = relays
            .into_iter()
            .fold(RelaySnapshot::default(), |mut a, s| {
                a.published += s.published;
                a.retried += s.retried;
                a.dead_lettered += s.dead_lettered;
                a.batches += s.batches;
                a
            });
        let load = |c: &AtomicU64| c.load(AtomicOrdering::Relaxed);
        Report {
            orders,
            recorded: load(&counters.recorded),
            cancelled: load(&counters.cancelled),
            handled: load(&counters.handled),
            duplicates: load(&counters.duplicates),
            rejected: load(&counters.rejected),
            relays,
            dead_letters,
            latencies,
            elapsed,
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }

    /// Prints the table and checks that both contexts agree; fails if they don't.
    pub async fn print(
        &self,
        backend: &str,
        broker: &str,
        ordering: &Ordering,
        inventory: &Inventory,
    ) -> Result<()> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let rows: Vec<(&str, String)> = vec![
            ("orders placed", self.orders.to_string()),
            (
                "events recorded",
                format!(
                    "{}  ({} created, {} cancelled)",
                    self.recorded,
                    self.recorded - self.cancelled,
                    self.cancelled
                ),
            ),
            ("events published", self.relays.published.to_string()),
            (
                "publish retries (injected faults)",
                self.relays.retried.to_string(),
            ),
            ("events handled", self.handled.to_string()),
            (
                "duplicates skipped by the inbox",
                self.duplicates.to_string(),
            ),
            ("dead-lettered", self.rejected.to_string()),
            ("elapsed", format!("{secs:.2} s")),
            (
                "throughput (handled)",
                format!("{:.0} events/s", self.handled as f64 / secs),
            ),
            ("commit → handled p50", fmt_ms(self.percentile(50.0))),
            ("commit → handled p99", fmt_ms(self.percentile(99.0))),
        ];
        println!();
        println!("  Herald demo summary ({backend} outbox, {broker})");
        println!("  {}", "─".repeat(58));
        for (name, value) in rows {
            println!("  {name:<36}{value}");
        }
        println!("  {}", "─".repeat(58));
        for dead in &self.dead_letters {
            println!(
                "  dead letter: {} {}: {}",
                dead.envelope.event_type, dead.envelope.id, dead.reason
            );
        }

        let placed = ordering.count("placed").await?;
        let (reserved_units, live) = inventory.totals().await?;
        let expected_units = inventory.reserved_by_reservations().await?;
        let expected_live = placed - self.dead_letters.len() as i64;
        if live != expected_live || reserved_units != expected_units {
            bail!(
                "inventory disagrees with ordering: {live} live reservations for {expected_live} \
                 open orders, {reserved_units} units reserved for {expected_units}"
            );
        }
        println!(
            "  check: {live} open orders ↔ {live} reservations, {reserved_units} units reserved ✔"
        );
        Ok(())
    }
}
