//! What a handler gets besides the event: the message's metadata, the delivery's attempt, a
//! cancellation token and, in transactional mode, the database transaction.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Envelope, Event, Headers, Metadata, OffsetDateTime, OutboxTransaction, TraceContext,
    TransactionalOutbox, Uuid,
};
use tokio_util::sync::CancellationToken;

/// The context of one handler run: the message's metadata and the delivery's circumstances.
///
/// Handlers take it as `&mut Context`; layers see the same value around the handler.
#[derive(Debug, Clone)]
pub struct Context {
    envelope: Arc<Envelope>,
    handler: Arc<str>,
    attempt: u32,
    redelivered: bool,
    retry: u32,
    cancellation: CancellationToken,
    duplicate: bool,
    /// The consumer (subscription) whose per-key order the run keeps, once the router set it.
    consumer: Option<Arc<str>>,
    /// Set when the inbox found the message's key held for another message, away for a
    /// delayed retry: that message, and how long until it is due back.
    held: Option<(Uuid, Duration)>,
    /// Set when this consumer wrote (or may have written) a key hold for this message while
    /// it waited here, behind an earlier message of its key.
    holding: bool,
}

impl Context {
    pub(crate) fn new(
        envelope: Arc<Envelope>,
        handler: Arc<str>,
        attempt: u32,
        redelivered: bool,
        cancellation: CancellationToken,
    ) -> Self {
        Context {
            envelope,
            handler,
            attempt: attempt.max(1),
            redelivered,
            retry: 0,
            cancellation,
            duplicate: false,
            consumer: None,
            held: None,
            holding: false,
        }
    }

    /// The message's id (what the inbox records).
    pub fn message_id(&self) -> Uuid {
        self.envelope.id
    }

    /// The message's event type.
    pub fn event_type(&self) -> &str {
        &self.envelope.event_type
    }

    /// The message's payload version.
    pub fn version(&self) -> u32 {
        self.envelope.version
    }

    /// The conversation the message belongs to.
    pub fn correlation_id(&self) -> Uuid {
        self.envelope.correlation_id
    }

    /// The message that caused this one, if any.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.envelope.causation_id
    }

    /// When the fact happened.
    pub fn occurred_at(&self) -> OffsetDateTime {
        self.envelope.occurred_at
    }

    /// The message's partition key, if any.
    pub fn partition_key(&self) -> Option<&str> {
        self.envelope.partition_key.as_deref()
    }

    /// The message's headers.
    pub fn headers(&self) -> &Headers {
        &self.envelope.headers
    }

    /// The W3C trace context the message carries.
    pub fn trace(&self) -> &TraceContext {
        &self.envelope.trace
    }

    /// The whole envelope (payload included).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The name of the handler being run (what the inbox records with the message id).
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// Which delivery of the message this is: 1 for the first, 2 after one delayed redelivery
    /// (or after the broker redelivered it, e.g. when a consumer went away)…
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many times the handler was already retried at once, in process, during this
    /// delivery (0 on the first run).
    pub fn immediate_retry(&self) -> u32 {
        self.retry
    }

    /// Whether the broker delivered this message before.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Cancelled when the consumer starts shutting down. In-flight handlers may finish (until
    /// the shutdown deadline); a long handler can watch this token to stop early and return an
    /// error (the message is then redelivered later).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancellation
    }

    /// Whether the inbox found that this handler had already handled the message, so that it
    /// was not run (known once the inner layers returned).
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    /// Metadata for an event caused by this message: same correlation id and trace, this
    /// message's id as causation id ([`Metadata::caused_by`]). With the feature `otel` and an
    /// OpenTelemetry layer, the trace is the current span's ([`TraceContext::current`]: inside
    /// a handler, a descendant of the consumer's process span, itself a child of the
    /// message's context), so that the trace goes on through the handling.
    pub fn caused_metadata(&self) -> Metadata {
        let mut metadata = Metadata::caused_by(&self.envelope);
        let current = TraceContext::current();
        if !current.is_empty() {
            metadata.trace = current;
        }
        metadata
    }

    /// The handler's name, shared (no copy).
    pub(crate) fn handler_name(&self) -> Arc<str> {
        Arc::clone(&self.handler)
    }

    pub(crate) fn set_immediate_retry(&mut self, retry: u32) {
        self.retry = retry;
    }

    pub(crate) fn mark_duplicate(&mut self) {
        self.duplicate = true;
    }

    pub(crate) fn set_consumer(&mut self, consumer: Arc<str>) {
        self.consumer = Some(consumer);
    }

    /// The consumer and the partition key whose order this run keeps, if both are known.
    pub(crate) fn order_key(&self) -> Option<(&str, &str)> {
        Some((
            self.consumer.as_deref()?,
            self.envelope.partition_key.as_deref()?,
        ))
    }

    /// Marks the message as one whose key hold this consumer wrote, or may have, while it
    /// waited behind an earlier message of its key: the hold goes with its effects.
    pub(crate) fn set_holding(&mut self, holding: bool) {
        self.holding = holding;
    }

    /// The consumer and key whose hold this message may have (it was delivered before: a
    /// delayed retry, or a redelivery after its consumer went away; or it waited here behind
    /// an earlier message of its key, which another one was deferred behind); `None` for a
    /// first delivery that waited for nothing, which holds nothing.
    pub(crate) fn own_hold(&self) -> Option<(&str, &str)> {
        if self.attempt > 1 || self.redelivered || self.holding {
            self.order_key()
        } else {
            None
        }
    }

    /// The inbox found the key held by `by`, due back in `due_in`: the handler did not run.
    pub(crate) fn mark_held(&mut self, by: Uuid, due_in: Duration) {
        self.held = Some((by, due_in));
    }

    pub(crate) fn held(&self) -> Option<(Uuid, Duration)> {
        self.held
    }
}

/// The context of a handler run in transactional mode: everything [`Context`] has (through
/// `Deref`), plus the open database transaction in which the inbox record was written and in
/// which the handler's own writes commit.
///
/// ```
/// # use herald_consumer::{HandlerError, TxContext};
/// # use herald_postgres::PgOutbox;
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderCreated { order_id: i64, sku: String, quantity: i64 }
/// # impl herald_core::Event for OrderCreated { const TYPE: &'static str = "ordering.order_created"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct StockReserved { order_id: i64 }
/// # impl herald_core::Event for StockReserved { const TYPE: &'static str = "inventory.stock_reserved"; }
/// async fn reserve(order: OrderCreated, ctx: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> {
///     sqlx::query("UPDATE stock SET reserved = reserved + $1 WHERE sku = $2")
///         .bind(order.quantity)
///         .bind(&order.sku)
///         .execute(ctx.db())
///         .await?;
///     ctx.record(&StockReserved { order_id: order.order_id }).await?; // same transaction
///     Ok(())
/// }
/// ```
pub struct TxContext<O: TransactionalOutbox> {
    context: Context,
    outbox: O,
    tx: O::Transaction,
    recorded: usize,
}

impl<O: TransactionalOutbox> TxContext<O> {
    pub(crate) fn new(context: Context, outbox: O, tx: O::Transaction) -> Self {
        TxContext {
            context,
            outbox,
            tx,
            recorded: 0,
        }
    }

    /// The transaction's connection, for the handler's own queries (`.execute(ctx.db())`).
    /// Everything written through it commits together with the inbox record, or not at all.
    pub fn db(&mut self) -> &mut O::Connection {
        &mut self.tx
    }

    /// The store the transaction belongs to.
    pub fn outbox(&self) -> &O {
        &self.outbox
    }

    /// Records `event` in the outbox, in this transaction, as caused by the handled message: it
    /// inherits the message's correlation id and trace (with the feature `otel`, the trace of
    /// the span it is recorded in: see [`Context::caused_metadata`]), and gets the message's
    /// id as causation id. Returns the new event's id.
    pub async fn record<E: Event>(&mut self, event: &E) -> herald_core::Result<Uuid> {
        self.record_with(event, Metadata::default()).await
    }

    /// Records `event` with `metadata` in this transaction. Correlation id, causation id and
    /// trace left unset in `metadata` are taken from the handled message, as in
    /// [`record`](Self::record); values set in `metadata` win.
    pub async fn record_with<E: Event>(
        &mut self,
        event: &E,
        metadata: Metadata,
    ) -> herald_core::Result<Uuid> {
        let cause = self.context.caused_metadata();
        let metadata = Metadata {
            correlation_id: metadata.correlation_id.or(cause.correlation_id),
            causation_id: metadata.causation_id.or(cause.causation_id),
            trace: if metadata.trace == TraceContext::default() {
                cause.trace
            } else {
                metadata.trace
            },
            ..metadata
        };
        let envelope = Envelope::from_event(event, metadata)?;
        self.tx.record_all(std::slice::from_ref(&envelope)).await?;
        self.recorded += 1;
        Ok(envelope.id)
    }

    /// How many events this handler run recorded.
    pub fn recorded(&self) -> usize {
        self.recorded
    }

    pub(crate) fn into_parts(self) -> (Context, O::Transaction, usize) {
        (self.context, self.tx, self.recorded)
    }
}

impl<O: TransactionalOutbox> Deref for TxContext<O> {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.context
    }
}
