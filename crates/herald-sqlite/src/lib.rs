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
mod transaction;

pub use config::SqliteOutboxConfig;
pub use outbox::SqliteOutbox;
pub use transaction::SqliteOutboxTx;

pub use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
