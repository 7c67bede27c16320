#![doc = include_str!("../README.md")]

mod admin;
mod claim;
mod config;
mod error;
mod inbox;
mod migrate;
mod notify;
mod outbox;
mod record;
mod row;
mod statements;
mod transaction;

pub use config::SqliteOutboxConfig;
pub use outbox::SqliteOutbox;
pub use transaction::SqliteOutboxTx;

/// The sqlx this crate is built on, for the application's own queries (versions match).
pub use sqlx;
pub use sqlx::{Sqlite, SqliteConnection, SqlitePool};
