//! The unit of work: runs a command's work in one transaction with its domain events, their
//! handlers and the integration events they turn into.

use std::sync::Arc;

use herald_core::{Envelope, Headers, TraceContext, TransactionalOutbox};
use uuid::Uuid;

use crate::{Error, Registry, Result, Transaction};

/// Options of a [`UnitOfWork`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOfWorkConfig {
    /// How many generations of domain events handlers may raise: events raised by the work are
    /// generation 0, events raised by a handler of a generation-n event are generation n + 1.
    /// An event past this depth aborts the unit of work with [`Error::TooDeep`] (default 8,
    /// far more than a readable domain needs, and a handler cycle fails after 9 rounds).
    pub max_depth: u32,
}

impl UnitOfWorkConfig {
    /// The default [`UnitOfWorkConfig::max_depth`].
    pub const DEFAULT_MAX_DEPTH: u32 = 8;
}

impl Default for UnitOfWorkConfig {
    fn default() -> Self {
        UnitOfWorkConfig {
            max_depth: Self::DEFAULT_MAX_DEPTH,
        }
    }
}

/// What a unit of work inherits from the command or message that started it: every domain
/// event and integration event of the unit of work carries its correlation id, trace context
/// and headers, and the ones the work raises directly are caused by its causation id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Groups every message of one conversation; `None` starts a new one (a fresh UUIDv7).
    pub correlation_id: Option<Uuid>,
    /// The command or message being handled.
    pub causation_id: Option<Uuid>,
    /// W3C trace context propagated to the integration events.
    pub trace: TraceContext,
    /// Headers every integration event carries (a tenant, say).
    pub headers: Headers,
}

impl Origin {
    /// A new conversation: fresh correlation id, no cause.
    pub fn new() -> Self {
        Origin::default()
    }

    /// Continues the conversation of `message`, the integration event being handled: its
    /// correlation id and trace context, its id as causation id.
    pub fn caused_by(message: &Envelope) -> Self {
        Origin {
            correlation_id: Some(message.correlation_id),
            causation_id: Some(message.id),
            trace: message.trace.clone(),
            headers: Headers::new(),
        }
    }

    /// Sets the correlation id (one an HTTP request or a command carries, say).
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id (the command's id, say).
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = trace;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// Runs units of work on an outbox: the application's writes, the domain events of its
/// aggregates, their handlers and the integration events they convert into, in one
/// transaction.
///
/// Cheap to clone (an `Arc` inside); build one at start-up and share it.
pub struct UnitOfWork<O: TransactionalOutbox> {
    inner: Arc<Inner<O>>,
}

struct Inner<O: TransactionalOutbox> {
    outbox: O,
    registry: Registry<O>,
    config: UnitOfWorkConfig,
}

impl<O: TransactionalOutbox> UnitOfWork<O> {
    /// Units of work on `outbox`, dispatching domain events with `registry`.
    pub fn new(outbox: O, registry: Registry<O>) -> Self {
        Self::with_config(outbox, registry, UnitOfWorkConfig::default())
    }

    /// Units of work with `config`.
    pub fn with_config(outbox: O, registry: Registry<O>, config: UnitOfWorkConfig) -> Self {
        UnitOfWork {
            inner: Arc::new(Inner {
                outbox,
                registry,
                config,
            }),
        }
    }

    /// The outbox.
    pub fn outbox(&self) -> &O {
        &self.inner.outbox
    }

    /// The registry of handlers and converters.
    pub fn registry(&self) -> &Registry<O> {
        &self.inner.registry
    }

    /// The configuration.
    pub fn config(&self) -> &UnitOfWorkConfig {
        &self.inner.config
    }

    /// Runs `work` in a new transaction and a new conversation; see [`UnitOfWork::run_with`].
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut Transaction<O>) -> Result<T, E>,
        E: From<Error>,
    {
        self.run_with(Origin::new(), work).await
    }

    /// Runs `work` in a new transaction started from `origin`. If `work` succeeds, dispatches
    /// the domain events it raised (and those their handlers raise), records the integration
    /// events they convert into, and commits; if `work` or any of that fails, rolls back and
    /// returns the error. Nothing of a failed unit of work is kept.
    ///
    /// `work` is an async closure taking `&mut Transaction<O>`, so it can borrow the
    /// transaction across its awaits and also borrow the caller's variables (the command).
    pub async fn run_with<T, E, F>(&self, origin: Origin, work: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut Transaction<O>) -> Result<T, E>,
        E: From<Error>,
    {
        let mut tx = self.begin_with(origin).await?;
        match work(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(error) => {
                let correlation_id = tx.correlation_id();
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(
                        %correlation_id,
                        error = %rollback,
                        "rolling back a failed unit of work failed"
                    );
                }
                Err(error)
            }
        }
    }

    /// Begins a unit of work in a new conversation; finish it with [`Transaction::commit`].
    pub async fn begin(&self) -> Result<Transaction<O>> {
        self.begin_with(Origin::new()).await
    }

    /// Begins a unit of work started from `origin`; finish it with [`Transaction::commit`].
    /// Dropping the transaction instead rolls it back.
    ///
    /// A malformed `traceparent` in `origin` is refused here, before any work.
    pub async fn begin_with(&self, origin: Origin) -> Result<Transaction<O>> {
        origin.trace.validate()?;
        let inner = self.inner.outbox.begin().await?;
        Ok(Transaction::new(self.clone(), inner, origin))
    }
}

impl<O: TransactionalOutbox> Clone for UnitOfWork<O> {
    fn clone(&self) -> Self {
        UnitOfWork {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<O: TransactionalOutbox + std::fmt::Debug> std::fmt::Debug for UnitOfWork<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("outbox", &self.inner.outbox)
            .field("registry", &self.inner.registry)
            .field("config", &self.inner.config)
            .finish()
    }
}
