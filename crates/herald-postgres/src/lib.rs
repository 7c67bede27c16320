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
mod watermark;

pub use config::PgOutboxConfig;
pub use outbox::PgOutbox;
pub use record::Along;
pub use transaction::PgOutboxTx;

pub use sqlx::{PgConnection, PgPool, Postgres, Transaction};
