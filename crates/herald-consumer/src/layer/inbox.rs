//! The inbox around a handler: the `(message id, handler)` record that makes a redelivered
//! message a no-op.
//!
//! - [`Transactional`]: opens a transaction, writes the record first (a duplicate is found by
//!   the table's primary key, not by a read), runs the handler on the same transaction and
//!   commits both, or rolls both back. Effects in that database happen exactly once.
//! - [`Deduplicated`]: for handlers whose effects are elsewhere (an e-mail, an HTTP call). It
//!   checks for a record before running and writes one after the handler succeeded. A crash
//!   between the effect and the record, or two deliveries racing, runs the effect again:
//!   effects are at least once, duplicates from the broker are still suppressed in the usual
//!   case.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use herald_core::{BoxFuture, Event, Inbox, OutboxTransaction};

use crate::handler::{Endpoint, catch_panic, decode};
use crate::layer::group::{GroupCommit, Ran, Verdict, Work, cannot_commit};
use crate::{Context, Handler, HandlerError, HandlerResult, Outcome, TxContext};

/// The transactional inbox around a handler that takes a [`TxContext`]. Runs that arrive
/// together share a transaction ([`GroupCommit`]), unless the batch size is 1.
pub(crate) struct Transactional<O: Inbox, E, H> {
    store: O,
    handler: Arc<H>,
    settings: OnceLock<(usize, usize, Option<Duration>)>,
    group: OnceLock<GroupCommit<O>>,
    event: PhantomData<fn() -> E>,
}

impl<O: Inbox, E, H> Transactional<O, E, H> {
    pub(crate) fn new(store: O, handler: H) -> Arc<Self> {
        Arc::new(Transactional {
            store,
            handler: Arc::new(handler),
            settings: OnceLock::new(),
            group: OnceLock::new(),
            event: PhantomData,
        })
    }
}

impl<O, E, H> Endpoint for Transactional<O, E, H>
where
    O: Inbox,
    E: Event,
    H: Handler<E, TxContext<O>>,
{
    fn call<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.run(ctx))
    }

    fn configure(&self, config: &crate::ConsumerConfig) {
        let _ = self.settings.set((
            config.transaction_batch,
            config.concurrency,
            config.handler_timeout,
        ));
    }
}

impl<O, E, H> Transactional<O, E, H>
where
    O: Inbox,
    E: Event,
    H: Handler<E, TxContext<O>>,
{
    async fn run(&self, ctx: &mut Context) -> HandlerResult {
        let event = decode::<E>(ctx)?;
        let (batch, concurrency, timeout) = self.settings.get().copied().unwrap_or((1, 1, None));
        if batch <= 1 {
            return self.run_alone(ctx, event).await;
        }
        let group = self
            .group
            .get_or_init(|| GroupCommit::start(self.store.clone(), batch, concurrency, timeout));
        let (store, handler, job_ctx) =
            (self.store.clone(), Arc::clone(&self.handler), ctx.clone());
        let work: Work<O::Transaction> = Box::new(move |tx| {
            Box::pin(async move { in_group(store, handler, job_ctx, event, tx).await })
        });
        let (message_id, name) = (ctx.message_id(), ctx.handler_name());
        match group.run(message_id, name, work).await {
            Verdict::Committed { duplicate } => {
                if duplicate {
                    ctx.mark_duplicate();
                }
                Ok(Outcome::Done)
            }
            Verdict::Failed(result) => result,
            Verdict::Alone => {
                let event = decode::<E>(ctx)?;
                self.run_alone(ctx, event).await
            }
        }
    }

    /// One run in a transaction of its own.
    async fn run_alone(&self, ctx: &mut Context, event: E) -> HandlerResult {
        let mut tx = self.store.begin().await?;
        let fresh = match self
            .store
            .mark_handled(&mut tx, ctx.message_id(), ctx.handler())
            .await
        {
            Ok(fresh) => fresh,
            Err(error) => {
                rollback(tx).await;
                return Err(error.into());
            }
        };
        if !fresh {
            rollback(tx).await;
            ctx.mark_duplicate();
            return Ok(Outcome::Done);
        }

        let mut tx_ctx = TxContext::new(ctx.clone(), self.store.clone(), tx);
        let result = catch_panic(self.handler.handle(event, &mut tx_ctx)).await;
        let (_, mut tx, recorded) = tx_ctx.into_parts();
        match result {
            Ok(Outcome::Done) => {
                // A statement the handler saw fail (and swallowed) has aborted a PostgreSQL
                // transaction, whose COMMIT would then roll back without an error.
                if let Err(error) = self.store.ensure_committable(&mut tx).await {
                    rollback(tx).await;
                    return Err(cannot_commit(&error));
                }
                // Only a transaction that recorded events has anything for the relays.
                let committed = if recorded > 0 {
                    tx.commit().await
                } else {
                    self.store.commit_quietly(tx).await
                };
                committed.map_err(HandlerError::from)?;
                Ok(Outcome::Done)
            }
            // Retry, reject or fail: neither the effects nor the inbox record stay.
            other => {
                rollback(tx).await;
                other
            }
        }
    }
}

/// One run on a group's transaction (its inbox record already written). Hands the
/// transaction back whatever happened; only [`Ran::Done`] lets the group commit.
async fn in_group<O, E, H>(
    store: O,
    handler: Arc<H>,
    ctx: Context,
    event: E,
    tx: O::Transaction,
) -> (O::Transaction, Ran)
where
    O: Inbox,
    E: Event,
    H: Handler<E, TxContext<O>>,
{
    let mut tx_ctx = TxContext::new(ctx, store, tx);
    let result = catch_panic(handler.handle(event, &mut tx_ctx)).await;
    let (_, tx, recorded) = tx_ctx.into_parts();
    let ran = match result {
        Ok(Outcome::Done) => Ran::Done { recorded },
        other => Ran::Failed(other),
    };
    (tx, ran)
}

async fn rollback(tx: impl OutboxTransaction) {
    if let Err(error) = tx.rollback().await {
        // The transaction is gone either way (a dropped connection rolls it back).
        tracing::warn!(error = %error.chain(), "inbox rollback failed");
    }
}

/// The non-transactional inbox around a handler whose effects live outside the database.
pub(crate) struct Deduplicated<O, E, H> {
    store: O,
    handler: H,
    event: PhantomData<fn() -> E>,
}

impl<O, E, H> Deduplicated<O, E, H> {
    pub(crate) fn new(store: O, handler: H) -> Arc<Self> {
        Arc::new(Deduplicated {
            store,
            handler,
            event: PhantomData,
        })
    }
}

impl<O, E, H> Endpoint for Deduplicated<O, E, H>
where
    O: Inbox,
    E: Event,
    H: Handler<E, Context>,
{
    fn call<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let event = decode::<E>(ctx)?;
            if self
                .store
                .is_handled(ctx.message_id(), ctx.handler())
                .await?
            {
                ctx.mark_duplicate();
                return Ok(Outcome::Done);
            }
            let outcome = catch_panic(self.handler.handle(event, ctx)).await?;
            if outcome.is_done() {
                // If this fails the message is retried and the effect happens again: the
                // at-least-once part of this mode.
                let mut tx = self.store.begin().await?;
                self.store
                    .mark_handled(&mut tx, ctx.message_id(), ctx.handler())
                    .await?;
                self.store.commit_quietly(tx).await?;
            }
            Ok(outcome)
        })
    }
}
