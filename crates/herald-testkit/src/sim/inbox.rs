//! A model of the PostgreSQL inbox ([`Inbox`]) with PostgreSQL's transaction semantics: a
//! statement that fails aborts its transaction, every later statement fails, and a `COMMIT` of
//! an aborted transaction rolls it back *and answers without an error* (what sqlx returns).
//! Handlers write their effects with [`ModelConnection::write_effect`]; the effects and the
//! inbox records become visible together at commit. Key holds ([`Inbox::hold_key`]) are rows
//! of the same database, with the same commit semantics.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::{
    Claim, Claimed, Envelope, Inbox, OutboxTransaction, Result, TransactionalOutbox, Uuid,
};

use super::{Sim, failure, lock};

/// How the model database misbehaves; drawn per seed.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxFaults {
    /// Delay of one statement, in ms (lowest, highest).
    pub latency: (u64, u64),
    /// Probability that `BEGIN` fails.
    pub begin_fail: f64,
    /// Probability that a handler's write fails (aborting the transaction).
    pub write_fail: f64,
    /// Probability that a `COMMIT` fails before committing.
    pub commit_fail: f64,
    /// Probability that a `COMMIT` commits and its answer is lost.
    pub commit_lost: f64,
}

impl InboxFaults {
    /// Faults drawn from the world's seed.
    pub fn draw(sim: &Sim) -> Self {
        let pick = |choices: &[f64]| choices[sim.between(0, choices.len() as u64 - 1) as usize];
        InboxFaults {
            latency: (1, sim.between(2, 15)),
            begin_fail: pick(&[0.0, 0.0, 0.02]),
            write_fail: pick(&[0.0, 0.02, 0.05, 0.1]),
            commit_fail: pick(&[0.0, 0.0, 0.02]),
            commit_lost: pick(&[0.0, 0.0, 0.02]),
        }
    }
}

/// A key hold: (consumer, key, message).
type Hold = (String, String, Uuid);

#[derive(Default)]
struct Open {
    marks: Vec<(Uuid, String)>,
    effects: Vec<Uuid>,
    /// Holds written (with their due time) and holds deleted, applied at commit.
    holds: Vec<(Hold, u64)>,
    released: Vec<Hold>,
    aborted: bool,
    /// The open savepoint: how many marks, effects and released holds were written before it.
    savepoint: Option<(usize, usize, usize)>,
}

#[derive(Default)]
struct State {
    records: BTreeMap<(Uuid, String), u64>,
    effects: BTreeMap<Uuid, Vec<u64>>,
    /// Committed key holds: their due times and their places in their keys' order (as
    /// first taken; holding again keeps it).
    holds: BTreeMap<Hold, (u64, u64)>,
    /// The place the next new hold takes.
    next_seq: u64,
    open: HashMap<u64, Open>,
    transactions: u64,
}

/// The model inbox database. Cheap to clone.
#[derive(Clone)]
pub struct ModelInbox {
    sim: Sim,
    faults: InboxFaults,
    state: Arc<Mutex<State>>,
}

debug_faults!(ModelInbox);

/// A connection inside a transaction: what a handler's `ctx.db()` is.
#[derive(Debug)]
pub struct ModelConnection {
    inbox: ModelInbox,
    tx: u64,
    statements: u64,
}

/// An open transaction; rolled back when dropped unfinished.
#[derive(Debug)]
pub struct ModelTransaction {
    conn: ModelConnection,
    finished: bool,
}

impl Deref for ModelTransaction {
    type Target = ModelConnection;

    fn deref(&self) -> &ModelConnection {
        &self.conn
    }
}

impl DerefMut for ModelTransaction {
    fn deref_mut(&mut self) -> &mut ModelConnection {
        &mut self.conn
    }
}

impl Drop for ModelTransaction {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.inbox.state().open.remove(&self.conn.tx);
        }
    }
}

impl ModelInbox {
    /// An empty database in `sim`'s world.
    pub fn new(sim: Sim, faults: InboxFaults) -> Self {
        ModelInbox {
            sim,
            faults,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// When each message's effects committed (once per commit that carried one).
    pub fn effects(&self) -> BTreeMap<Uuid, Vec<u64>> {
        self.state().effects.clone()
    }

    /// The committed key holds: `(consumer, key, message)` and when the message is due back.
    pub fn holds(&self) -> BTreeMap<(String, String, Uuid), u64> {
        self.state()
            .holds
            .iter()
            .map(|(hold, (due, _))| (hold.clone(), *due))
            .collect()
    }

    /// When each `(message id, handler)` record committed.
    pub fn records(&self) -> BTreeMap<(Uuid, String), u64> {
        self.state().records.clone()
    }

    async fn statement(&self, conn: &mut ModelConnection, what: &str) -> fastrand::Rng {
        conn.statements += 1;
        let name = format!("tx{} statement {} ({what})", conn.tx, conn.statements);
        let mut rng = self.sim.rng_for(&name);
        self.sim
            .sleep(name, rng.u64(self.faults.latency.0..=self.faults.latency.1))
            .await;
        rng
    }

    fn aborted(&self, tx: u64) -> bool {
        self.state().open.get(&tx).is_none_or(|open| open.aborted)
    }

    /// The error PostgreSQL gives every statement of an aborted transaction.
    fn usable(&self, tx: u64) -> Result<()> {
        if self.aborted(tx) {
            return Err(failure(
                "statement",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        Ok(())
    }

    async fn finish(&self, mut tx: ModelTransaction) -> Result<()> {
        let mut rng = self.statement(&mut tx.conn, "commit").await;
        tx.finished = true;
        let id = tx.conn.tx;
        let now = self.sim.now();
        let Some(open) = self.state().open.remove(&id) else {
            return Err(failure("commit", "no transaction"));
        };
        if open.aborted {
            self.sim.log(
                &[],
                format!("tx{id}: COMMIT of an aborted transaction rolls back, and answers OK"),
            );
            return Ok(());
        }
        if rng.f64() < self.faults.commit_fail {
            self.sim
                .log(&[], format!("tx{id}: COMMIT fails, rolled back"));
            return Err(failure("commit", "connection lost before the commit"));
        }
        {
            let mut state = self.state();
            for mark in &open.marks {
                state.records.insert(mark.clone(), now);
            }
            for effect in &open.effects {
                state.effects.entry(*effect).or_default().push(now);
            }
            for (hold, due) in &open.holds {
                let seq = state.next_seq;
                let entry = state.holds.entry(hold.clone()).or_insert((*due, seq));
                entry.0 = *due;
                if entry.1 == seq {
                    state.next_seq += 1;
                }
            }
            for hold in &open.released {
                state.holds.remove(hold);
            }
        }
        self.sim.log(
            &[],
            format!(
                "tx{id} commits {} inbox record(s), {} effect(s)",
                open.marks.len(),
                open.effects.len()
            ),
        );
        if rng.f64() < self.faults.commit_lost {
            self.sim
                .log(&[], format!("tx{id}: the COMMIT's answer is lost"));
            return Err(failure("commit", "connection lost after the commit"));
        }
        Ok(())
    }
}

impl ModelConnection {
    /// A handler's write of its effect for `message` (`label` names it in the trace). May fail
    /// as a database error does: the transaction is then aborted.
    pub async fn write_effect(&mut self, message: Uuid, label: &str) -> Result<()> {
        let inbox = self.inbox.clone();
        let mut rng = inbox.statement(self, "effect").await;
        if inbox.aborted(self.tx) {
            return Err(failure(
                "write",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        if rng.f64() < inbox.faults.write_fail {
            if let Some(open) = inbox.state().open.get_mut(&self.tx) {
                open.aborted = true;
            }
            inbox.sim.log(
                &[],
                format!(
                    "tx{}: the effect of {label} fails (database error): transaction aborted",
                    self.tx
                ),
            );
            return Err(failure("write", "deadlock detected"));
        }
        if let Some(open) = inbox.state().open.get_mut(&self.tx) {
            open.effects.push(message);
        }
        Ok(())
    }
}

impl TransactionalOutbox for ModelInbox {
    type Connection = ModelConnection;
    type Transaction = ModelTransaction;

    async fn begin(&self) -> Result<ModelTransaction> {
        let id = {
            let mut state = self.state();
            state.transactions += 1;
            state.transactions
        };
        let mut conn = ModelConnection {
            inbox: self.clone(),
            tx: id,
            statements: 0,
        };
        let mut rng = self.statement(&mut conn, "begin").await;
        if rng.f64() < self.faults.begin_fail {
            return Err(failure("begin", "no connection"));
        }
        self.state().open.insert(id, Open::default());
        Ok(ModelTransaction {
            conn,
            finished: false,
        })
    }
}

impl OutboxTransaction for ModelTransaction {
    async fn record_all(&mut self, _envelopes: &[Envelope]) -> Result<()> {
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        let inbox = self.conn.inbox.clone();
        inbox.finish(self).await
    }

    async fn rollback(mut self) -> Result<()> {
        let inbox = self.conn.inbox.clone();
        inbox.statement(&mut self.conn, "rollback").await;
        self.finished = true;
        inbox.state().open.remove(&self.conn.tx);
        Ok(())
    }
}

impl ModelInbox {
    /// The inbox record's `INSERT … ON CONFLICT DO NOTHING`, in a statement already counted.
    async fn mark(
        &self,
        conn: &mut ModelConnection,
        message_id: Uuid,
        handler: &str,
    ) -> Result<bool> {
        let record = (message_id, handler.to_owned());
        // INSERT … ON CONFLICT DO NOTHING waits for another transaction holding the same key.
        let mut waits = 0;
        loop {
            let busy = {
                let state = self.state();
                state
                    .open
                    .iter()
                    .any(|(tx, open)| *tx != conn.tx && open.marks.contains(&record))
            };
            if !busy {
                break;
            }
            waits += 1;
            self.sim
                .sleep(format!("tx{} inbox wait {waits}", conn.tx), 10)
                .await;
        }
        let mut state = self.state();
        if state.records.contains_key(&record) {
            return Ok(false);
        }
        if let Some(open) = state.open.get_mut(&conn.tx) {
            if open.marks.contains(&record) {
                return Ok(false);
            }
            open.marks.push(record);
        }
        Ok(true)
    }
}

impl Inbox for ModelInbox {
    async fn mark_handled(
        &self,
        conn: &mut ModelConnection,
        message_id: Uuid,
        handler: &str,
    ) -> Result<bool> {
        self.statement(conn, "inbox").await;
        if self.aborted(conn.tx) {
            return Err(failure(
                "mark",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        self.mark(conn, message_id, handler).await
    }

    async fn claim_all(
        &self,
        conn: &mut ModelConnection,
        claims: &[Claim<'_>],
        stale_after: Duration,
    ) -> Result<Vec<Claimed>> {
        self.statement(conn, "inbox claim").await;
        self.usable(conn.tx)?;
        let now = self.sim.now();
        let stale = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
        let mut answers = Vec::with_capacity(claims.len());
        for claim in claims {
            if let Some((consumer, key)) = claim.key {
                let holder = {
                    let state = self.state();
                    // A message holding its key waits only for holds taken before its own.
                    let own = state
                        .holds
                        .get(&(consumer.to_owned(), key.to_owned(), claim.message_id))
                        .map_or(u64::MAX, |(_, seq)| *seq);
                    state
                        .holds
                        .iter()
                        .filter(|((c, k, id), (due, seq))| {
                            c == consumer
                                && k == key
                                && *id != claim.message_id
                                && *seq < own
                                && due.saturating_add(stale) >= now
                        })
                        .min_by_key(|(_, (_, seq))| *seq)
                        .map(|((_, _, id), (due, _))| (*id, *due))
                };
                if let Some((by, due)) = holder {
                    answers.push(Claimed::Held {
                        by,
                        due_in: Duration::from_millis(due.saturating_sub(now)),
                    });
                    continue;
                }
            }
            let fresh = self.mark(conn, claim.message_id, claim.handler).await?;
            answers.push(if fresh {
                Claimed::New
            } else {
                Claimed::Duplicate
            });
        }
        Ok(answers)
    }

    async fn hold_key(
        &self,
        consumer: &str,
        key: &str,
        message_id: Uuid,
        back_in: Duration,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        self.statement(&mut tx.conn, "hold key").await;
        let due = self
            .sim
            .now()
            .saturating_add(u64::try_from(back_in.as_millis()).unwrap_or(u64::MAX));
        if let Some(open) = self.state().open.get_mut(&tx.conn.tx) {
            open.holds
                .push(((consumer.to_owned(), key.to_owned(), message_id), due));
        }
        self.finish(tx).await
    }

    async fn release_keys(
        &self,
        conn: &mut ModelConnection,
        holds: &[(&str, &str, Uuid)],
    ) -> Result<()> {
        self.statement(conn, "release keys").await;
        self.usable(conn.tx)?;
        if let Some(open) = self.state().open.get_mut(&conn.tx) {
            for (consumer, key, id) in holds {
                open.released
                    .push(((*consumer).to_owned(), (*key).to_owned(), *id));
            }
        }
        Ok(())
    }

    async fn release_key(&self, consumer: &str, key: &str, message_id: Uuid) -> Result<()> {
        let mut tx = self.begin().await?;
        self.statement(&mut tx.conn, "release key").await;
        if let Some(open) = self.state().open.get_mut(&tx.conn.tx) {
            open.released
                .push((consumer.to_owned(), key.to_owned(), message_id));
        }
        self.finish(tx).await
    }

    async fn unmark_handled(
        &self,
        conn: &mut ModelConnection,
        records: &[(Uuid, &str)],
    ) -> Result<()> {
        self.statement(conn, "inbox unmark").await;
        self.usable(conn.tx)?;
        if let Some(open) = self.state().open.get_mut(&conn.tx) {
            open.marks.retain(|(id, handler)| {
                !records
                    .iter()
                    .any(|(other, name)| other == id && name == handler)
            });
        }
        Ok(())
    }

    async fn savepoint(&self, conn: &mut ModelConnection) -> Result<()> {
        self.statement(conn, "savepoint").await;
        self.usable(conn.tx)?;
        if let Some(open) = self.state().open.get_mut(&conn.tx) {
            open.savepoint = Some((open.marks.len(), open.effects.len(), open.released.len()));
        }
        Ok(())
    }

    async fn release_savepoint(&self, conn: &mut ModelConnection, reopen: bool) -> Result<()> {
        self.statement(conn, "release savepoint").await;
        self.usable(conn.tx)?;
        if let Some(open) = self.state().open.get_mut(&conn.tx) {
            open.savepoint =
                reopen.then_some((open.marks.len(), open.effects.len(), open.released.len()));
        }
        Ok(())
    }

    async fn rollback_to_savepoint(&self, conn: &mut ModelConnection) -> Result<()> {
        self.statement(conn, "rollback to savepoint").await;
        let mut state = self.state();
        let Some(open) = state.open.get_mut(&conn.tx) else {
            return Err(failure("rollback to savepoint", "no transaction"));
        };
        let Some((marks, effects, released)) = open.savepoint else {
            return Err(failure("rollback to savepoint", "no savepoint"));
        };
        open.marks.truncate(marks);
        open.effects.truncate(effects);
        open.released.truncate(released);
        open.aborted = false;
        Ok(())
    }

    async fn ensure_committable(&self, conn: &mut ModelConnection) -> Result<()> {
        self.statement(conn, "select 1").await;
        self.usable(conn.tx)
    }

    async fn commit_quietly(&self, tx: ModelTransaction) -> Result<()> {
        self.finish(tx).await
    }

    async fn is_handled(&self, message_id: Uuid, handler: &str) -> Result<bool> {
        Ok(self
            .state()
            .records
            .contains_key(&(message_id, handler.to_owned())))
    }

    async fn prune_inbox(&self, _older_than: Duration, _limit: usize) -> Result<u64> {
        Ok(0)
    }
}
