//! Wake-ups: telling relays that work was committed.
//!
//! SQLite has no LISTEN/NOTIFY. Inside one process, writers ring the outbox's
//! [`Signal`](herald_core::Signal) after committing ([`SqliteOutboxTx::commit`](crate::SqliteOutboxTx::commit)
//! does it), and
//! relays built on the same handle wake at once; nothing is added to the writer's transaction.
//! Commits made by other processes (or through another handle) are seen by
//! [`SqliteOutbox::watch_commits`], which polls SQLite's `PRAGMA data_version` — a counter
//! read from shared memory, no table is touched — or else at the relay's next poll.

use sqlx::{Connection, Row};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ResultExt;
use crate::outbox::SqliteOutbox;

impl SqliteOutbox {
    /// Rings this outbox's signal: relays waiting on it look for work now. Call it after
    /// committing a transaction that recorded events (what
    /// [`SqliteOutboxTx::commit`](crate::SqliteOutboxTx::commit) does).
    pub fn notify(&self) {
        self.inner.signal.ring();
    }

    /// Watches for commits made through other handles and processes, and rings this outbox's
    /// [`signal`](herald_core::OutboxStore::signal) when one happens, until `shutdown` is
    /// cancelled: it reads the database file's commit counter every
    /// [`watch_interval`](crate::SqliteOutboxConfig::watch_interval).
    ///
    /// It opens one connection of its own (with the pool's options) for as long as it runs. A
    /// relay's own claims and completions are commits too, so it also wakes for those: a spare
    /// look for work, never a missed one. Fails if no connection can be had.
    pub async fn watch_commits(
        &self,
        shutdown: CancellationToken,
    ) -> herald_core::Result<JoinHandle<()>> {
        let every = self.inner.config.watch_interval;
        let options = self.pool().connect_options();
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .store_err("watch commits")?;
        let mut last = data_version(&mut conn).await.store_err("watch commits")?;
        let outbox = self.clone();
        Ok(tokio::spawn(async move {
            let mut failing = false;
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                match data_version(&mut conn).await {
                    Ok(version) => {
                        failing = false;
                        if version != last {
                            last = version;
                            outbox.notify();
                        }
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(error = %error, "cannot watch the outbox for commits");
                        }
                        failing = true;
                        // Wake the relay rather than risk sleeping through work.
                        outbox.notify();
                    }
                }
            }
            if let Err(error) = conn.close().await {
                tracing::debug!(error = %error, "closing the commit watcher's connection");
            }
        }))
    }
}

/// SQLite's count of commits seen by this connection from other connections.
async fn data_version(conn: &mut sqlx::SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query("PRAGMA data_version")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)
}
