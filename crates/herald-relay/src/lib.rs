//! The Herald relay (outbox processor).
//!
//! A [`Relay`] claims batches of recorded events from an [`OutboxStore`], publishes them through
//! a [`Publisher`] with a pipelined round per batch, and writes each row's fate back in one
//! statement per kind: completed (deleted or archived), rescheduled with jittered exponential
//! backoff, or dead-lettered after [`RelayConfig::max_attempts`]. It wakes when a writer rings
//! the store's signal and otherwise polls, runs as several instances safely, and keeps
//! per-partition-key order (see the `batch` module for how).
//!
//! [`OutboxStore`]: herald_core::OutboxStore
//! [`Publisher`]: herald_core::Publisher

mod batch;
mod config;
mod metrics;
mod relay;

pub use config::{RelayConfig, Retention};
pub use metrics::{RelayMetrics, RelaySnapshot};
pub use relay::{BatchReport, Relay};
