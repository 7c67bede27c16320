#![doc = include_str!("../README.md")]
// The README shows the `#[test]` an application writes; a doctest does not run it.
#![allow(clippy::test_attr_in_doctest)]

mod asyncapi;
mod catalog;
mod compat;
mod error;
pub mod json;
pub mod protobuf;
mod report;
mod snapshot;

pub use asyncapi::{
    ASYNCAPI_VERSION, AmqpChannels, AsyncApiConfig, KafkaChannels, PROTOBUF_FORMAT, Transport,
};
pub use catalog::{Catalog, UPDATE_VARIABLE, UpdateMode};
pub use compat::{Comparison, Incompatibility, compare};
pub use error::{Error, Result};
pub use protobuf::{ProtoEnum, ProtoField, ProtoMessage, ProtoSchema};
pub use report::{Entry, Report, ReportKind, Status, diff};
pub use snapshot::{Format, Key, Snapshot, path_of, read_dir};

/// The schemars this crate derives schemas with (`#[derive(JsonSchema)]` on events).
pub use schemars;
