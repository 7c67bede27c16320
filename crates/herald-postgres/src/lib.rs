#![doc = include_str!("../README.md")]

mod admin;
mod claim;
mod config;
mod error;
mod inbox;
mod migrate;
mod notify;
mod outbox;
mod transaction;
mod watermark;

pub use config::PgOutboxConfig;
pub use outbox::{Along, PgOutbox};

pub use sqlx::{PgConnection, PgPool, Postgres, Transaction};
