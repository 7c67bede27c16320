//! The unit of work's open transaction: the application's writes, the domain events waiting
//! for dispatch, and the integration events waiting to be recorded.

use std::collections::VecDeque;
use std::fmt;

use herald_core::{Envelope, Event, Metadata, OutboxTransaction, TransactionalOutbox};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainEvents, Stamp};
use crate::converter::{Key, Lineage, encode};
use crate::event::{AnyEnvelope, DomainEnvelope, DomainEvent};
use crate::{Origin, Result, UnitOfWork};

/// An open unit of work: a database transaction plus the domain events raised in it.
///
/// The application's queries run on [`Transaction::conn`]. Aggregates hand over the events
/// they raised with [`Transaction::collect`]. [`Transaction::commit`] dispatches them to their
/// handlers and converters until none is left, records the integration events in the outbox
/// with one INSERT, and commits, all or nothing. Dropping the transaction without committing
/// rolls it back.
///
/// Handlers receive the same `&mut Transaction`, so they write, raise and record exactly like
/// the work that started it.
pub struct Transaction<O: TransactionalOutbox> {
    pub(crate) uow: UnitOfWork<O>,
    pub(crate) inner: O::Transaction,
    pub(crate) origin: Origin,
    pub(crate) correlation_id: Uuid,
    /// Domain events waiting for dispatch, oldest first, with their generation.
    pub(crate) pending: VecDeque<Pending>,
    /// Integration events to record at commit, in order.
    pub(crate) outgoing: Vec<Envelope>,
    /// The domain event whose handlers are running, if any.
    pub(crate) cause: Option<Cause>,
}

/// A domain event waiting for dispatch.
pub(crate) struct Pending {
    /// 0 for events raised by the work, n + 1 for events raised by a handler of generation n.
    pub(crate) depth: u32,
    pub(crate) envelope: Box<dyn AnyEnvelope>,
}

/// The domain event being handled: what events raised and recorded by its handlers inherit.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub(crate) id: Uuid,
    pub(crate) aggregate_id: String,
    pub(crate) depth: u32,
}

impl<O: TransactionalOutbox> Transaction<O> {
    pub(crate) fn new(uow: UnitOfWork<O>, inner: O::Transaction, origin: Origin) -> Self {
        Transaction {
            correlation_id: origin.correlation_id.unwrap_or_else(Uuid::now_v7),
            uow,
            inner,
            origin,
            pending: VecDeque::new(),
            outgoing: Vec::new(),
            cause: None,
        }
    }

    /// The connection of the transaction, for the application's own queries:
    /// `sqlx::query(…).execute(tx.conn())`.
    pub fn conn(&mut self) -> &mut O::Connection {
        &mut self.inner
    }

    /// The correlation id shared by every event of this unit of work.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }

    /// The origin the unit of work started from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Takes over the domain events `aggregate` raised, to be dispatched at commit. Call it
    /// where the aggregate is saved.
    pub fn collect<A: Aggregate + ?Sized>(&mut self, aggregate: &mut A) {
        let aggregate_id = aggregate.aggregate_id();
        self.collect_events(&aggregate_id, aggregate.domain_events());
    }

    /// Takes over `events`, raised by the aggregate `aggregate_id`, to be dispatched at commit.
    pub fn collect_events(&mut self, aggregate_id: &str, events: &mut DomainEvents) {
        let (causation_id, depth) = self.lineage();
        let stamp = Stamp {
            aggregate_id,
            correlation_id: self.correlation_id,
            causation_id,
        };
        for raised in events.take() {
            let envelope = raised.into_envelope(&stamp);
            self.pending.push_back(Pending { depth, envelope });
        }
    }

    /// Raises `event` on behalf of the aggregate `aggregate_id`, to be dispatched at commit,
    /// after the events already pending. In a handler, the new event is caused by the event
    /// being handled.
    pub fn raise<E: DomainEvent>(&mut self, aggregate_id: impl Into<String>, event: E) {
        let (causation_id, depth) = self.lineage();
        let envelope = Box::new(DomainEnvelope {
            id: Uuid::now_v7(),
            occurred_at: OffsetDateTime::now_utc(),
            aggregate_id: aggregate_id.into(),
            correlation_id: self.correlation_id,
            causation_id,
            event,
        });
        self.pending.push_back(Pending { depth, envelope });
    }

    /// Records an integration event directly, without a domain event: in the outbox at commit,
    /// with the unit of work's correlation id. In a handler, it is caused by the domain event
    /// being handled and keyed by that event's aggregate id unless `I::partition_key` names a
    /// key; elsewhere by the origin's causation id and `I::partition_key`. Returns its id.
    pub fn record<I: Event>(&mut self, event: &I) -> Result<Uuid> {
        self.record_with(event, Metadata::default())
    }

    /// [`Transaction::record`] with `metadata` over the defaults: its correlation id, causation
    /// id, partition key and trace context when set, its headers over the origin's.
    pub fn record_with<I: Event>(&mut self, event: &I, metadata: Metadata) -> Result<Uuid> {
        let Metadata {
            correlation_id,
            causation_id,
            partition_key,
            trace,
            headers,
        } = metadata;
        let lineage = Lineage {
            correlation_id: correlation_id.unwrap_or(self.correlation_id),
            causation_id: causation_id.or_else(|| self.lineage().0),
            aggregate_id: self.cause.as_ref().map(|cause| cause.aggregate_id.as_str()),
            occurred_at: None,
            trace: if trace.traceparent.is_some() {
                &trace
            } else {
                &self.origin.trace
            },
            headers: &self.origin.headers,
        };
        let key = partition_key.map_or(Key::Default, Key::Set);
        let envelope = encode(event, key, headers, &lineage)?;
        let id = envelope.id;
        self.outgoing.push(envelope);
        Ok(id)
    }

    /// Dispatches the pending domain events (converters, then handlers, until none is left),
    /// records the integration events in the outbox, and commits. On any error, rolls back and
    /// returns it: nothing of the unit of work is kept.
    pub async fn commit(mut self) -> Result<()> {
        let dispatched = match self.dispatch().await {
            Ok(dispatched) => dispatched,
            Err(error) => return Err(self.abort(error).await),
        };
        let outgoing = std::mem::take(&mut self.outgoing);
        if !outgoing.is_empty()
            && let Err(error) = self.inner.record_all(&outgoing).await
        {
            return Err(self.abort(error.into()).await);
        }
        let Transaction {
            inner,
            correlation_id,
            ..
        } = self;
        inner.commit().await?;
        tracing::debug!(
            %correlation_id,
            domain_events = dispatched,
            integration_events = outgoing.len(),
            "unit of work committed"
        );
        Ok(())
    }

    /// Rolls back: nothing of the unit of work is kept.
    pub async fn rollback(self) -> Result<()> {
        self.inner.rollback().await?;
        Ok(())
    }

    /// Rolls back after `error`, and returns `error` (a failed rollback is only logged: the
    /// database discards the transaction anyway when the connection drops or is reused).
    pub(crate) async fn abort(self, error: crate::Error) -> crate::Error {
        let correlation_id = self.correlation_id;
        if let Err(rollback) = self.rollback().await {
            tracing::warn!(
                %correlation_id,
                error = %rollback,
                "rolling back a failed unit of work failed"
            );
        }
        error
    }

    /// Causation id and generation of an event raised now.
    fn lineage(&self) -> (Option<Uuid>, u32) {
        match &self.cause {
            Some(cause) => (Some(cause.id), cause.depth.saturating_add(1)),
            None => (self.origin.causation_id, 0),
        }
    }
}

impl<O: TransactionalOutbox> fmt::Debug for Transaction<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("correlation_id", &self.correlation_id)
            .field("pending_domain_events", &self.pending.len())
            .field("integration_events", &self.outgoing.len())
            .finish_non_exhaustive()
    }
}
