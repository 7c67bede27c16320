#![doc = include_str!("../README.md")]

mod config;
mod consumer;
mod context;
mod dispatcher;
mod error;
mod handler;
mod inbox;
mod layer;
pub mod metrics;
mod outcome;
mod router;

pub use config::{ConsumerConfig, UnhandledPolicy};
pub use consumer::Consumer;
pub use context::{Context, TxContext};
pub use error::{Classifier, ErrorClass, HandlerError, Panicked, default_class};
pub use handler::Handler;
pub use layer::{Layer, Next, RetryPolicy, TimedOut};
pub use metrics::{ConsumerMetrics, ConsumerSnapshot};
pub use outcome::{HandlerResult, IntoOutcome, Outcome};
pub use router::Router;
