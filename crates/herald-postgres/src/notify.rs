//! Cross-process wake-ups with LISTEN/NOTIFY, kept out of the writers' transactions.
//!
//! A `NOTIFY` inside the writing transaction takes a global lock at commit and serializes every
//! writer. Instead, [`PgOutbox::notify`] (called after commit, by
//! [`PgOutboxTx::commit`](crate::PgOutboxTx::commit)) rings this process's [`Signal`] and asks a
//! background task (`crate::notifier`) to send `pg_notify` on a pooled connection of its own, at
//! most once per few milliseconds however many commits happen meanwhile. A relay in another process
//! [`watch_commits`](PgOutbox::watch_commits) and rings its [`Signal`] on each notification;
//! the poll interval stays the fallback when a notification is lost.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{Backoff, Signal};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::scrub_all;
use crate::outbox::PgOutbox;

impl PgOutbox {
    /// Tells relays that work was committed: rings this process's [`Signal`] at once, and has a
    /// background task send one `NOTIFY` on a pooled connection for other processes (at most
    /// one per few milliseconds, however often this is called). Call it after committing (what
    /// [`PgOutboxTx::commit`](crate::PgOutboxTx::commit) does); it never touches the caller's
    /// transaction.
    pub fn notify(&self) {
        self.inner.signal.ring();
        self.inner.notifier.request();
    }

    /// Watches for commits made through other handles and processes, and rings this outbox's
    /// [`signal`](herald_core::OutboxStore::signal) on each, until `shutdown` is cancelled: it
    /// listens for the notifications of [`notify`](Self::notify) on this outbox's channel.
    /// Reconnects with backoff after errors, and rings once after every (re)connection, since
    /// notifications may have been missed meanwhile. Holds one pooled connection.
    ///
    /// Never fails on PostgreSQL (the listener connects, and reconnects, in the background);
    /// the `Result` is the shape both stores share.
    pub async fn watch_commits(
        &self,
        shutdown: CancellationToken,
    ) -> herald_core::Result<JoinHandle<()>> {
        Ok(tokio::spawn(listen(
            self.inner.pool.clone(),
            self.inner.channel.clone(),
            self.inner.signal.clone(),
            self.inner.secrets.clone(),
            shutdown,
        )))
    }
}

/// The listener task behind [`PgOutbox::watch_commits`].
async fn listen(
    pool: PgPool,
    channel: Arc<str>,
    signal: Signal,
    secrets: Vec<String>,
    shutdown: CancellationToken,
) {
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
        multiplier: 2.0,
        jitter: 0.5,
    };
    let mut failures = 0u32;
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let error = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect => match connected {
                Ok(mut listener) => {
                    tracing::debug!(channel = %channel, "listening for outbox notifications");
                    failures = 0;
                    // Notifications sent while nobody listened are lost: look for work now.
                    signal.ring();
                    match receive(&mut listener, &signal, &shutdown).await {
                        Some(error) => error,
                        None => return,
                    }
                }
                Err(error) => error,
            },
        };
        if pool.is_closed() {
            tracing::debug!(channel = %channel, "pool closed: stop listening");
            return;
        }
        failures = failures.saturating_add(1);
        let delay = backoff.delay(failures);
        tracing::warn!(
            channel = %channel,
            error = %scrub_all(&herald_core::error::error_chain(&error), &secrets),
            retry_in = ?delay,
            "outbox notification listener failed"
        );
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Rings `signal` on every notification until shutdown (`None`) or an error.
async fn receive(
    listener: &mut PgListener,
    signal: &Signal,
    shutdown: &CancellationToken,
) -> Option<sqlx::Error> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            received = listener.try_recv() => match received {
                Ok(Some(_)) => signal.ring(),
                // The connection was lost and re-established: notifications may be lost.
                Ok(None) => signal.ring(),
                Err(error) => return Some(error),
            },
        }
    }
}
