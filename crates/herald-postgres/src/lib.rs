#![doc = include_str!("../README.md")]

mod admin;
mod claim;
mod config;
mod error;
mod inbox;
mod migrate;
mod notifier;
mod notify;
mod outbox;
mod record;
mod row;
mod statements;
mod transaction;
mod watermark;

pub use config::PgOutboxConfig;
pub use outbox::PgOutbox;
pub use record::Along;
pub use transaction::PgOutboxTx;

/// The sqlx this crate is built on, for the application's own queries (versions match).
pub use sqlx;
pub use sqlx::{PgConnection, PgPool, Postgres};
