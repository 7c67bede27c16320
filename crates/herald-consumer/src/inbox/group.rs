//! Group commit for the transactional inbox: the runs of one transactional handler that arrive
//! together share one database transaction, so that one commit (one fsync) stands for many
//! messages.
//!
//! Each run is a [`Job`]: it takes the open transaction, runs the handler on it, and hands the
//! transaction back. The inbox records of a whole group are written first, in one statement
//! ([`Inbox::claim_all`]): a duplicate is acknowledged without running its handler, and a run
//! whose key is held for another message (away for a delayed retry) is not run either. A
//! worker takes the first waiting job, then every job already waiting (up to the batch size)
//! without waiting for more, so a lone message is never delayed, and runs them one after the
//! other on one transaction, each under a savepoint of its own. Then:
//!
//! - a job done: its savepoint is released, which also proves that none of its statements
//!   failed. On PostgreSQL a failed statement aborts the whole transaction even when the
//!   handler caught the error ("a unique violation means already done"), and `COMMIT` then
//!   rolls back without an error: the release fails instead, and the job is treated as failed;
//! - a job not done (retry, reject, error, panic, a swallowed database error): the transaction
//!   is rolled back to the job's savepoint and its inbox record removed; its outcome stands,
//!   and the group goes on;
//! - once every job ran: one commit; each caller learns that its message committed (and only
//!   then is the message acknowledged), or its own failure;
//! - a job that times out or is abandoned takes the transaction with it (its future held it):
//!   every other job of the group runs again in a transaction of its own, as it does when
//!   begin, a savepoint or the commit fails. If the commit did happen after all, the inbox
//!   finds each record and the second run is skipped as a duplicate.
//!
//! Savepoints cost a round trip per job (release and next savepoint go as one query).
//!
//! Messages of one partition key are never in flight together (the dispatcher holds later ones
//! back), so grouping never reorders a key. Runs of one group take turns on its connection, so
//! a handler's runs overlap only across groups: [`workers`] groups at once (for the defaults,
//! concurrency 16 and batch 32: two, one committing while the other runs). Transactional
//! handlers are meant to be short database work; one that waits on something slow holds up its
//! group (set `transaction_batch` to 1 for a transaction, and full concurrency, per message).

use std::sync::Arc;
use std::time::Duration;

use herald_core::{BoxFuture, Claim, Claimed, Inbox, OutboxTransaction, Uuid};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::TimedOut;
use crate::{HandlerError, HandlerResult};

/// What a job did on the shared transaction.
pub(crate) enum Ran {
    /// The handler is done; its writes wait for the commit.
    Done {
        /// Events it recorded (the commit then wakes the relays).
        recorded: usize,
    },
    /// Anything else: the group must roll back, and this is the job's result.
    Failed(HandlerResult),
}

/// What became of a job.
pub(crate) enum Verdict {
    /// Committed with its group.
    Committed {
        /// The inbox already had the record: the handler did not run.
        duplicate: bool,
    },
    /// The job's own result; its writes were rolled back.
    Failed(HandlerResult),
    /// Not run: its key is held for another message, due back in `due_in`.
    Held {
        /// The message the key waits for.
        by: Uuid,
        /// How long until it is due back.
        due_in: Duration,
    },
    /// Not committed through no fault of its own: run it again in a transaction of its own.
    Alone,
}

/// One handler run waiting for a group: takes the transaction, gives it back with what it did.
pub(crate) type Work<T> = Box<dyn FnOnce(T) -> BoxFuture<'static, (T, Ran)> + Send>;

/// A consumer (subscription) and a partition key.
pub(crate) type OrderKey = (Arc<str>, Arc<str>);

struct Job<T> {
    message_id: Uuid,
    handler: Arc<str>,
    key: Option<OrderKey>,
    /// Whether the message may hold its key (delivered before): the hold goes at the commit.
    own_hold: bool,
    work: Work<T>,
    reply: oneshot::Sender<Verdict>,
}

/// The group committer of one transactional handler.
pub(crate) struct GroupCommit<O: Inbox> {
    jobs: mpsc::Sender<Job<O::Transaction>>,
}

impl<O: Inbox> GroupCommit<O> {
    /// Starts the workers (on the current runtime). They stop once this value is dropped and
    /// the jobs already sent are done.
    pub(crate) fn start(
        store: O,
        batch: usize,
        concurrency: usize,
        timeout: Option<Duration>,
        stale_after: Duration,
    ) -> Self {
        let batch = batch.max(1);
        let workers = workers(concurrency, batch);
        let (jobs, receiver) = mpsc::channel(batch * workers);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..workers {
            tokio::spawn(work(
                store.clone(),
                Arc::clone(&receiver),
                batch,
                timeout,
                stale_after,
            ));
        }
        GroupCommit { jobs }
    }

    /// Runs `work` in the next group and waits for the verdict. A job the workers could not
    /// take (they are gone) runs alone.
    pub(crate) async fn run(
        &self,
        message_id: Uuid,
        handler: Arc<str>,
        key: Option<OrderKey>,
        own_hold: bool,
        work: Work<O::Transaction>,
    ) -> Verdict {
        let (reply, verdict) = oneshot::channel();
        let job = Job {
            message_id,
            handler,
            key,
            own_hold,
            work,
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return Verdict::Alone;
        }
        verdict.await.unwrap_or(Verdict::Alone)
    }
}

/// Transactions (connections) a handler's groups use at once: enough for `concurrency`
/// messages in groups of `batch`, plus one, so that one group commits while another runs; at
/// least two.
pub(crate) fn workers(concurrency: usize, batch: usize) -> usize {
    (concurrency.div_ceil(batch.max(1)) + 1).max(2)
}

async fn work<O: Inbox>(
    store: O,
    jobs: Arc<Mutex<mpsc::Receiver<Job<O::Transaction>>>>,
    batch: usize,
    timeout: Option<Duration>,
    stale_after: Duration,
) {
    let mut group = Vec::with_capacity(batch);
    loop {
        {
            let mut jobs = jobs.lock().await;
            let Some(first) = jobs.recv().await else {
                return;
            };
            group.push(first);
            while group.len() < batch {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
        }
        run_group(&store, &mut group, timeout, stale_after).await;
        group.clear();
    }
}

/// Runs one group on one transaction and tells every job its verdict.
async fn run_group<O: Inbox>(
    store: &O,
    group: &mut Vec<Job<O::Transaction>>,
    timeout: Option<Duration>,
    stale_after: Duration,
) {
    // A caller that stopped waiting (its run timed out, the consumer shut down) is not run.
    group.retain(|job| !job.reply.is_closed());
    if group.is_empty() {
        return;
    }
    let mut tx = match store.begin().await {
        Ok(tx) => tx,
        Err(error) => {
            tracing::debug!(error = %error.chain(), "inbox group could not begin; running alone");
            alone(group.drain(..).map(|job| job.reply));
            return;
        }
    };
    // Every inbox record of the group in one statement; duplicates are known before any
    // handler runs. Then the first run's savepoint.
    let claims: Vec<Claim<'_>> = group
        .iter()
        .map(|job| Claim {
            message_id: job.message_id,
            handler: &job.handler,
            key: job
                .key
                .as_ref()
                .map(|(consumer, key)| (&**consumer, &**key)),
        })
        .collect();
    let marked = match store.claim_all(&mut tx, &claims, stale_after).await {
        Ok(fresh) if fresh.len() == group.len() => store.savepoint(&mut tx).await.map(|()| fresh),
        Ok(_) => Err(herald_core::Error::store(
            "mark inbox",
            false,
            herald_core::error::Message("one answer per record expected".into()),
        )),
        Err(error) => Err(error),
    };
    let fresh = match marked {
        Ok(fresh) => fresh,
        Err(error) => {
            tracing::debug!(error = %error.chain(), "inbox group could not mark; running alone");
            rollback(tx).await;
            alone(group.drain(..).map(|job| job.reply));
            return;
        }
    };
    let mut recorded = 0;
    let mut done: Vec<(oneshot::Sender<Verdict>, bool)> = Vec::with_capacity(group.len());
    // Key holds of the done runs' messages, which go with their effects; a failed run's hold
    // stays.
    let mut releases: Vec<(Arc<str>, Arc<str>, Uuid)> = Vec::new();
    // Runs undone to their savepoint, whose inbox records go before the commit.
    let mut undone: Vec<(Uuid, Arc<str>, oneshot::Sender<Verdict>, HandlerResult)> = Vec::new();
    let mut jobs = group.drain(..).zip(fresh);
    while let Some((mut job, claimed)) = jobs.next() {
        match claimed {
            Claimed::New => {}
            Claimed::Duplicate => {
                // Handled before: acknowledged without running the handler.
                if job.own_hold {
                    releases.extend(job.key.clone().map(|(c, k)| (c, k, job.message_id)));
                }
                done.push((job.reply, true));
                continue;
            }
            Claimed::Held { by, due_in } => {
                // Nothing of it was written: it waits behind the message holding its key.
                let _ = job.reply.send(Verdict::Held { by, due_in });
                continue;
            }
        }
        let run = async {
            match timeout {
                Some(limit) => tokio::time::timeout(limit, (job.work)(tx)).await,
                None => Ok((job.work)(tx).await),
            }
        };
        // A caller that stops waiting (the consumer's shutdown deadline passed) takes its run
        // down with it, as a run of its own would be: nothing of it may commit later.
        let ran = tokio::select! {
            ran = run => Some(ran),
            () = job.reply.closed() => None,
        };
        let (back, result) = match ran {
            Some(Ok((mut back, Ran::Done { recorded: r }))) => {
                // Keeps the run's writes and opens the next run's savepoint; fails if a
                // statement of the run failed (and was swallowed): PostgreSQL has aborted the
                // transaction, and a COMMIT would silently roll the whole group back.
                match store.release_savepoint(&mut back, true).await {
                    Ok(()) => {
                        tx = back;
                        recorded += r;
                        if job.own_hold {
                            releases.extend(job.key.clone().map(|(c, k)| (c, k, job.message_id)));
                        }
                        done.push((job.reply, false));
                        continue;
                    }
                    Err(error) => (back, Err(cannot_commit(&error))),
                }
            }
            Some(Ok((back, Ran::Failed(result)))) => (back, result),
            // The run's future, and the transaction in it, were dropped: sqlx rolls it back
            // when the connection is next used. Every other run of the group went with it.
            Some(Err(_)) | None => {
                let result = match ran {
                    Some(_) => Err(HandlerError::transient(TimedOut {
                        limit: timeout.unwrap_or_default(),
                    })),
                    None => Err(HandlerError::transient(herald_core::error::Message(
                        "abandoned by its caller".into(),
                    ))),
                };
                let _ = job.reply.send(Verdict::Failed(result));
                broken(done, undone, jobs.map(|(job, _)| job.reply));
                return;
            }
        };
        // The run is not done: undo its writes only, and go on with the others.
        tx = back;
        if let Err(error) = store.rollback_to_savepoint(&mut tx).await {
            tracing::debug!(error = %error.chain(), "inbox group could not roll back to a savepoint; running the others alone");
            let _ = job.reply.send(Verdict::Failed(result));
            rollback(tx).await;
            broken(done, undone, jobs.map(|(job, _)| job.reply));
            return;
        }
        undone.push((job.message_id, job.handler, job.reply, result));
    }
    if !undone.is_empty() {
        // The undone runs' records were written with the group's, before any savepoint.
        let records: Vec<(Uuid, &str)> = undone
            .iter()
            .map(|(id, handler, _, _)| (*id, &**handler))
            .collect();
        if let Err(error) = store.unmark_handled(&mut tx, &records).await {
            tracing::debug!(error = %error.chain(), "inbox group could not remove the records of failed runs; running the others alone");
            rollback(tx).await;
            broken(done, undone, std::iter::empty());
            return;
        }
    }
    if !releases.is_empty() {
        let holds: Vec<(&str, &str, Uuid)> = releases
            .iter()
            .map(|(consumer, key, id)| (&**consumer, &**key, *id))
            .collect();
        if let Err(error) = store.release_keys(&mut tx, &holds).await {
            tracing::debug!(error = %error.chain(), "inbox group could not release key holds; running the others alone");
            rollback(tx).await;
            broken(done, undone, std::iter::empty());
            return;
        }
    }
    let committed = if recorded > 0 {
        tx.commit().await
    } else {
        store.commit_quietly(tx).await
    };
    match committed {
        Ok(()) => {
            for (reply, duplicate) in done {
                let _ = reply.send(Verdict::Committed { duplicate });
            }
            for (_, _, reply, result) in undone {
                let _ = reply.send(Verdict::Failed(result));
            }
        }
        Err(error) => {
            tracing::warn!(error = %error.chain(), messages = done.len(), "inbox group commit failed; running each alone");
            broken(done, undone, std::iter::empty());
        }
    }
}

/// The error of a run that returned done on a transaction that can no longer commit.
pub(crate) fn cannot_commit(error: &herald_core::Error) -> HandlerError {
    HandlerError::transient(herald_core::error::Message(format!(
        "the handler returned done, but its transaction cannot commit: a statement of it failed \
         (PostgreSQL aborts a transaction at its first error, even one the handler caught; \
         catch it under a savepoint, or avoid it with ON CONFLICT); its writes were rolled \
         back: {}",
        error.chain()
    )))
}

/// Tells each of `replies` to run again on its own.
fn alone(replies: impl IntoIterator<Item = oneshot::Sender<Verdict>>) {
    for reply in replies {
        let _ = reply.send(Verdict::Alone);
    }
}

/// The group's transaction is gone: runs that were done (or not yet run) go again on their
/// own; failed runs keep their own result.
fn broken(
    done: Vec<(oneshot::Sender<Verdict>, bool)>,
    undone: Vec<(Uuid, Arc<str>, oneshot::Sender<Verdict>, HandlerResult)>,
    rest: impl IntoIterator<Item = oneshot::Sender<Verdict>>,
) {
    alone(done.into_iter().map(|(reply, _)| reply));
    for (_, _, reply, result) in undone {
        let _ = reply.send(Verdict::Failed(result));
    }
    alone(rest);
}

async fn rollback(tx: impl OutboxTransaction) {
    if let Err(error) = tx.rollback().await {
        // The transaction is gone either way (a dropped connection rolls it back).
        tracing::warn!(error = %error.chain(), "inbox group rollback failed");
    }
}
