//! The Herald relay (outbox processor).
//!
//! A [`Relay`] claims batches of recorded events from an [`OutboxStore`], publishes them through
//! a [`Publisher`] in pipelined rounds, and writes each row's fate back in one statement per
//! kind: completed (deleted or archived), rescheduled with jittered exponential backoff, or
//! dead-lettered after [`RelayConfig::max_attempts`]. [`Relay::run`] overlaps claiming,
//! publishing and writing back (the next batch publishes while the previous one is confirmed
//! and settled) so the broker's confirm window stays full. It wakes when a writer rings the
//! store's signal and otherwise polls, runs as several instances safely, and keeps
//! per-partition-key order (see the `batch` and `pipeline` modules for how).
//!
//! What a relay does is counted in [`RelayMetrics`] and emitted through the [`metrics`](::metrics)
//! facade (the names are in [`metrics::names`](crate::metrics::names)); an [`OutboxMonitor`] samples the outbox's
//! depth and the age of its oldest due row into gauges.
//!
//! [`OutboxStore`]: herald_core::OutboxStore
//! [`Publisher`]: herald_core::Publisher

mod batch;
mod config;
pub mod metrics;
mod monitor;
mod pipeline;
mod relay;

pub use config::RelayConfig;
pub use metrics::{RelayMetrics, RelaySnapshot};
pub use monitor::OutboxMonitor;
pub use relay::{BatchReport, Relay};
