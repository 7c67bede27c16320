//! What a relay does with the outbox: claim, complete, fail, release, prune.
//!
//! SQLite lets one connection write at a time, across threads and processes, so a claim is one
//! `UPDATE … RETURNING` that picks and leases its rows atomically: two relays never get the
//! same row. Operations of more than one statement (archiving, failing) run in a
//! `BEGIN IMMEDIATE` transaction, which takes the write lock up front instead of upgrading a
//! read lock (the upgrade is what fails with `SQLITE_BUSY` without waiting).
//!
//! Every change a relay makes to a claimed row is fenced by `locked_by = relay`: a relay whose
//! lease expired and whose rows were taken over cannot complete or fail them any more. Failures
//! and releases are also fenced by the lease's validity (`locked_until > now`): once the lease
//! ran out, they leave the row as the claim left it (claimable at once, the claim counted), the
//! same contract as PostgreSQL's, where another relay may be claiming past the row meanwhile.

use herald_core::{
    ClaimRequest, ClaimedEvent, Completion, Disposition, Failure, OutboxStore, Result, Seq, Signal,
};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::error::{ResultExt, corrupt, retry_busy};
use crate::outbox::SqliteOutbox;
use crate::row::{duration_micros, envelope_from_row, now_micros, query};
use crate::statements::ClaimSql;

/// `seqs` as one JSON array parameter (`json_each(?)`).
fn seq_list(seqs: &[Seq]) -> String {
    let items: Vec<String> = seqs.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(","))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteOutbox {
    fn sql(&self) -> &ClaimSql {
        &self.inner.sql.claim
    }

    async fn claim_rows(&self, request: &ClaimRequest) -> Result<Vec<SqliteRow>, sqlx::Error> {
        let now = now_micros();
        query(&self.sql().claim)
            .bind(request.relay_id.hyphenated().to_string())
            .bind(now.saturating_add(duration_micros(request.lease)))
            .bind(now)
            .bind(limit(request.limit))
            .fetch_all(self.pool())
            .await
    }

    async fn complete_once(&self, relay: &str, seqs: &str) -> Result<u64, sqlx::Error> {
        if self.config().completion == Completion::Delete {
            let done = query(&self.sql().delete)
                .bind(relay)
                .bind(seqs)
                .execute(self.pool())
                .await?;
            return Ok(done.rows_affected());
        }
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        query(&self.sql().archive)
            .bind(relay)
            .bind(seqs)
            .bind(now_micros())
            .execute(&mut *tx)
            .await?;
        let done = query(&self.sql().delete)
            .bind(relay)
            .bind(seqs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn fail_once(&self, relay: &str, failures: &[Failure]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let now = now_micros();
        for failure in failures {
            match failure.disposition {
                Disposition::Retry { delay } => {
                    query(&self.sql().retry)
                        .bind(relay)
                        .bind(failure.seq)
                        .bind(now.saturating_add(duration_micros(delay)))
                        .bind(failure.error.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                Disposition::DeadLetter => {
                    query(&self.sql().dead_letter)
                        .bind(relay)
                        .bind(failure.seq)
                        .bind(failure.error.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    query(&self.sql().delete_one)
                        .bind(relay)
                        .bind(failure.seq)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await
    }
}

impl OutboxStore for SqliteOutbox {
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let rows = retry_busy("claim", || self.claim_rows(request)).await?;
        let mut decoded = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq").store_err("claim")?;
            let event = (|| {
                let attempts: i64 = row.try_get("attempts").store_err("claim")?;
                let attempts = u32::try_from(attempts)
                    .map_err(|_| corrupt("claim", format!("attempts {attempts}")))?;
                let envelope = envelope_from_row(row, "claim")?;
                Ok::<_, herald_core::Error>(ClaimedEvent {
                    seq,
                    attempts,
                    envelope,
                })
            })();
            decoded.push((seq, event));
        }
        // Sorted by seq there: RETURNING gives rows in no particular order.
        let (claimed, malformed) = herald_core::store::split_malformed(decoded);
        for failure in &malformed {
            tracing::warn!(seq = failure.seq, error = %failure.error, "dead-lettering an outbox row");
        }
        self.fail(request.relay_id, &malformed).await?;
        Ok(claimed)
    }

    async fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let (relay, seqs) = (relay_id.hyphenated().to_string(), seq_list(seqs));
        retry_busy("complete", || self.complete_once(&relay, &seqs)).await
    }

    async fn fail(&self, relay_id: Uuid, failures: &[Failure]) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let relay = relay_id.hyphenated().to_string();
        retry_busy("fail", || self.fail_once(&relay, failures)).await
    }

    async fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let (relay, seqs) = (relay_id.hyphenated().to_string(), seq_list(seqs));
        retry_busy("release", || async {
            query(&self.sql().release)
                .bind(&relay)
                .bind(&seqs)
                .bind(now_micros())
                .execute(self.pool())
                .await
        })
        .await?;
        Ok(())
    }

    async fn prune(&self, older_than: std::time::Duration, max: usize) -> Result<u64> {
        if max == 0 {
            return Ok(0);
        }
        let before = now_micros().saturating_sub(duration_micros(older_than));
        let done = retry_busy("prune", || async {
            query(&self.sql().prune)
                .bind(before)
                .bind(limit(max))
                .execute(self.pool())
                .await
        })
        .await?;
        Ok(done.rows_affected())
    }

    fn signal(&self) -> Signal {
        self.inner.signal.clone()
    }
}
