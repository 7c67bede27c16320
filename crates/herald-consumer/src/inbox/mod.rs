//! The inbox around a handler: the `(message id, handler)` record that makes a redelivered
//! message a no-op.
//!
//! - [`Transactional`]: opens a transaction, writes the record first (a duplicate is found by
//!   the table's primary key, not by a read), runs the handler on the same transaction and
//!   commits both, or rolls both back. Effects in that database happen exactly once. The same
//!   statement checks the message's key for a hold ([`Inbox::claim_all`]): a message whose key
//!   waits for another one, away for a delayed retry, is not run (the dispatcher defers it),
//!   and a message's own hold goes when its effects commit.
//! - [`Deduplicated`]: for handlers whose effects are elsewhere (an e-mail, an HTTP call). It
//!   checks for a record before running and writes one after the handler succeeded. A crash
//!   between the effect and the record, or two deliveries racing, runs the effect again:
//!   effects are at least once, duplicates from the broker are still suppressed in the usual
//!   case.

mod group;

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use herald_core::{BoxFuture, Claim, Claimed, Event, Inbox, OutboxTransaction, Uuid};
use tracing::Instrument;

use self::group::{GroupCommit, Ran, Verdict, Work, cannot_commit};
use crate::handler::{Endpoint, catch_panic, decode};
use crate::{Context, Handler, HandlerError, HandlerResult, Outcome, TxContext};

/// The transactional inbox around a handler that takes a [`TxContext`]. Runs that arrive
/// together share a transaction ([`GroupCommit`]), unless the batch size is 1.
pub(crate) struct Transactional<O: Inbox, E, H> {
    store: O,
    handler: Arc<H>,
    /// Transaction batch, concurrency, handler timeout, and how long past its due time a key
    /// hold stops holding.
    settings: OnceLock<(usize, usize, Option<Duration>, Duration)>,
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
            config.hold_stale_after(),
        ));
    }

    fn hold<'a>(
        &'a self,
        consumer: &'a str,
        key: &'a str,
        id: Uuid,
        back_in: Duration,
    ) -> Option<BoxFuture<'a, herald_core::Result<()>>> {
        Some(Box::pin(self.store.hold_key(consumer, key, id, back_in)))
    }

    fn release<'a>(
        &'a self,
        consumer: &'a str,
        key: &'a str,
        id: Uuid,
    ) -> Option<BoxFuture<'a, herald_core::Result<()>>> {
        Some(Box::pin(self.store.release_key(consumer, key, id)))
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
        let (batch, concurrency, timeout, stale_after) = self.settings();
        if batch <= 1 {
            return self.run_alone(ctx, event).await;
        }
        let group = self.group.get_or_init(|| {
            GroupCommit::start(self.store.clone(), batch, concurrency, timeout, stale_after)
        });
        let (store, handler, job_ctx) =
            (self.store.clone(), Arc::clone(&self.handler), ctx.clone());
        // The group's worker runs it on a task of its own: inside this run's span, so that
        // its log lines and the events it records carry the handling's fields and trace.
        let span = tracing::Span::current();
        let work: Work<O::Transaction> = Box::new(move |tx| {
            Box::pin(in_group(store, handler, job_ctx, event, tx).instrument(span))
        });
        let (message_id, name) = (ctx.message_id(), ctx.handler_name());
        let key = ctx
            .order_key()
            .map(|(consumer, key)| (Arc::<str>::from(consumer), Arc::<str>::from(key)));
        let own_hold = ctx.own_hold().is_some();
        match group.run(message_id, name, key, own_hold, work).await {
            Verdict::Committed { duplicate } => {
                if duplicate {
                    ctx.mark_duplicate();
                }
                Ok(Outcome::Done)
            }
            Verdict::Held { by, due_in } => {
                ctx.mark_held(by, due_in);
                Ok(Outcome::Done)
            }
            Verdict::Failed(result) => result,
            Verdict::Alone => {
                let event = decode::<E>(ctx)?;
                self.run_alone(ctx, event).await
            }
        }
    }

    fn settings(&self) -> (usize, usize, Option<Duration>, Duration) {
        self.settings.get().copied().unwrap_or((
            1,
            1,
            None,
            crate::ConsumerConfig::default().hold_stale_after(),
        ))
    }

    /// One run in a transaction of its own.
    async fn run_alone(&self, ctx: &mut Context, event: E) -> HandlerResult {
        let stale_after = self.settings().3;
        let mut tx = self.store.begin().await?;
        let claim = Claim {
            message_id: ctx.message_id(),
            handler: ctx.handler(),
            key: ctx.order_key(),
        };
        let claimed = match self.store.claim_all(&mut tx, &[claim], stale_after).await {
            Ok(claimed) => claimed.first().copied(),
            Err(error) => {
                rollback(tx).await;
                return Err(error.into());
            }
        };
        match claimed {
            Some(Claimed::New) => {}
            Some(Claimed::Duplicate) => {
                // Removes the message's own key hold, if it may have one (its effects
                // committed earlier, and its retry was asked for after all).
                if let Some((consumer, key)) = ctx.own_hold() {
                    let hold = [(consumer, key, ctx.message_id())];
                    if let Err(error) = self.store.release_keys(&mut tx, &hold).await {
                        rollback(tx).await;
                        return Err(error.into());
                    }
                    self.store.commit_quietly(tx).await?;
                } else {
                    rollback(tx).await;
                }
                ctx.mark_duplicate();
                return Ok(Outcome::Done);
            }
            Some(Claimed::Held { by, due_in }) => {
                rollback(tx).await;
                ctx.mark_held(by, due_in);
                return Ok(Outcome::Done);
            }
            None => {
                rollback(tx).await;
                return Err(HandlerError::transient(herald_core::error::Message(
                    "the inbox answered no claim".into(),
                )));
            }
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
                // The message's own key hold, if it may have one, goes with its effects.
                if let Some((consumer, key)) = ctx.own_hold() {
                    let hold = [(consumer, key, ctx.message_id())];
                    if let Err(error) = self.store.release_keys(&mut tx, &hold).await {
                        rollback(tx).await;
                        return Err(error.into());
                    }
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
