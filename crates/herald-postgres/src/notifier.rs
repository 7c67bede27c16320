//! The sending half of the cross-process wake-up (`crate::notify`): a background task that
//! sends the `NOTIFY`s [`Notifier::request`] asks for, at most one per [`THROTTLE`], on a pooled
//! connection of its own, never in a writer's transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::scrub_all;

/// Shortest time between two NOTIFYs from one handle (and its clones).
pub(crate) const THROTTLE: Duration = Duration::from_millis(5);

/// Sends the NOTIFYs that [`request`](Notifier::request) asks for, from a background task.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    pool: PgPool,
    channel: Arc<str>,
    secrets: Arc<[String]>,
    /// The sender task, started on the first request (a handle may be built outside a runtime).
    task: Mutex<Option<JoinHandle<()>>>,
    /// Stops the task when the last clone of the handle is dropped.
    stop: CancellationToken,
}

struct Shared {
    /// Whether a NOTIFY was asked for since the last one was sent.
    pending: AtomicBool,
    wake: Notify,
}

impl Notifier {
    pub(crate) fn new(pool: PgPool, channel: Arc<str>, secrets: Vec<String>) -> Self {
        Notifier {
            shared: Arc::new(Shared {
                pending: AtomicBool::new(false),
                wake: Notify::new(),
            }),
            pool,
            channel,
            secrets: secrets.into(),
            task: Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    /// Asks for a NOTIFY soon. Never blocks, never fails: without a Tokio runtime it only
    /// logs (the relays' poll interval then finds the work).
    pub(crate) fn request(&self) {
        self.shared.pending.store(true, Ordering::Release);
        self.ensure_task();
        self.shared.wake.notify_one();
    }

    fn ensure_task(&self) {
        let Ok(mut task) = self.task.lock() else {
            return;
        };
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no tokio runtime: outbox notification not sent");
            return;
        };
        *task = Some(runtime.spawn(send_notifications(
            self.shared.clone(),
            self.pool.clone(),
            self.channel.clone(),
            self.secrets.clone(),
            self.stop.clone(),
        )));
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sender task: one NOTIFY as soon as asked, then at most one per [`THROTTLE`].
async fn send_notifications(
    shared: Arc<Shared>,
    pool: PgPool,
    channel: Arc<str>,
    secrets: Arc<[String]>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.wake.notified() => {}
        }
        // Requests made from here on get a NOTIFY of their own (their commit may come later
        // than this one is seen).
        if shared.pending.swap(false, Ordering::AcqRel) {
            // Committed without waiting for the WAL flush: a NOTIFY is delivered at commit
            // either way, and one lost to a crash costs a poll interval. A flushed NOTIFY would
            // add one fsync'd commit per burst to the writers' own (B1 measured it).
            let sent = sqlx::query(
                "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')",
            )
            .bind(&*channel)
            .execute(&pool)
            .await;
            if let Err(err) = sent {
                tracing::warn!(
                    channel = %channel,
                    error = %scrub_all(&herald_core::error::error_chain(&err), &secrets),
                    "cannot send outbox notification; relays will find the work by polling"
                );
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(THROTTLE) => {}
        }
    }
}
