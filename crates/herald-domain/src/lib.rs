#![doc = include_str!("../README.md")]

mod aggregate;
mod converter;
mod dispatcher;
mod error;
mod event;
mod handler;
mod registry;
mod transaction;
mod unit_of_work;

pub use aggregate::{Aggregate, DomainEvents};
pub use converter::{Conversion, Outgoing};
pub use error::{Error, Result};
pub use event::{DomainEnvelope, DomainEvent};
pub use handler::{DomainHandler, DomainHandlerFn};
pub use registry::Registry;
pub use transaction::Transaction;
pub use unit_of_work::{Origin, UnitOfWork, UnitOfWorkConfig};
