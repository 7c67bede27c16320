//! The demo's closing summary.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use anyhow::{Result, bail};
use herald_consumer::ConsumerSnapshot;
use herald_core::{DeadLetter, Uuid};
use herald_relay::RelaySnapshot;

use super::events::OrderCreated;
use super::inventory::{Inventory, Meter};
use super::lost_confirms::ConfirmCounters;
use super::ordering::Ordering;
use crate::fmt_ms;

/// Counters of the ordering side, shared by the producers.
#[derive(Default)]
pub struct Counters {
    pub recorded: AtomicU64,
    pub cancelled: AtomicU64,
}

/// What the demo measured.
pub struct Report {
    orders: u64,
    recorded: u64,
    cancelled: u64,
    handled: u64,
    duplicates: u64,
    lost_confirms: u64,
    consumer: ConsumerSnapshot,
    relays: RelaySnapshot,
    dead_letters: Vec<DeadLetter>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Report {
    #[allow(clippy::too_many_arguments)] // one constructor gathering every measurement
    pub fn new(
        orders: u64,
        counters: &Counters,
        meter: &Meter,
        confirms: &ConfirmCounters,
        consumer: ConsumerSnapshot,
        relays: Vec<RelaySnapshot>,
        dead_letters: Vec<DeadLetter>,
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
            handled: load(&meter.handled),
            duplicates: load(&meter.duplicates),
            lost_confirms: load(&confirms.lost),
            consumer,
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
            (
                "confirms lost (published twice)",
                self.lost_confirms.to_string(),
            ),
            ("events handled", self.handled.to_string()),
            (
                "duplicates skipped by the inbox",
                self.duplicates.to_string(),
            ),
            (
                "consumer redeliveries",
                self.consumer.redeliveries.to_string(),
            ),
            ("dead-lettered", self.consumer.dead_lettered.to_string()),
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
                dead.event_type().unwrap_or("(undecodable)"),
                dead.id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                dead.reason
            );
        }

        let placed = ordering.ids("placed").await?;
        let cancelled = ordering.ids("cancelled").await?;
        let (reserved_units, live, expected_units) = inventory.totals().await?;
        // A dead-lettered order is one whose stock could not be reserved (counted once, even
        // if the broker held two copies of it).
        let dead_orders: HashSet<Uuid> = self
            .dead_letters
            .iter()
            .filter_map(|d| d.envelope.as_ref())
            .filter(|e| e.event_type == <OrderCreated as herald_core::Event>::TYPE)
            .filter_map(|e| serde_json::from_slice::<OrderCreated>(&e.payload).ok())
            .map(|order| order.order_id)
            .collect();
        // Each order must be reserved exactly while ordering says it is open: a cancelled order
        // still reserved means its cancellation was handled before its creation.
        let mut problems = Vec::new();
        let mut name = |what: &str, ids: Vec<&Uuid>| {
            if let Some(first) = ids.first() {
                problems.push(format!("{} {what} (e.g. order {first})", ids.len()));
            }
        };
        name(
            "cancelled orders still hold a reservation: their OrderCancelled was handled before \
             their OrderCreated, per-key order broken",
            live.intersection(&cancelled).collect(),
        );
        name(
            "open orders hold no reservation: their OrderCreated was lost or never handled",
            placed
                .iter()
                .filter(|id| !live.contains(id) && !dead_orders.contains(id))
                .collect(),
        );
        name(
            "reservations belong to no open order",
            live.iter()
                .filter(|id| !placed.contains(id) && !cancelled.contains(id))
                .collect(),
        );
        if reserved_units != expected_units {
            problems.push(format!(
                "the stock counts {reserved_units} units reserved but the live reservations add \
                 up to {expected_units}"
            ));
        }
        if !problems.is_empty() {
            bail!("inventory disagrees with ordering: {}", problems.join("; "));
        }
        let live = live.len();
        let inbox = inventory.inbox_records().await?;
        if inbox as u64 != self.handled {
            bail!(
                "the inbox holds {inbox} records for {} messages handled",
                self.handled
            );
        }
        // Each lost confirm put a second copy in the broker: the inbox skipped it, unless the
        // first copy had been dead-lettered (then the second is dead-lettered too).
        let second_dead_copies = (self.dead_letters.len() - dead_orders.len()) as u64;
        if self.duplicates + second_dead_copies != self.lost_confirms {
            bail!(
                "{} confirms were lost but the inbox skipped {} duplicates",
                self.lost_confirms,
                self.duplicates
            );
        }
        println!(
            "  check: {live} open orders ↔ {live} reservations, {reserved_units} units reserved, \
             {inbox} inbox records for {} handled, {} copies published twice ↔ {} skipped ✔",
            self.handled, self.lost_confirms, self.duplicates
        );
        Ok(())
    }
}
