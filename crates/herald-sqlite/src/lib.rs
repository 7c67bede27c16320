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

pub use config::SqliteOutboxConfig;
pub use outbox::SqliteOutbox;
