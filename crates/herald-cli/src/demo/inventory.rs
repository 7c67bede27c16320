//! The inventory context: consumes the ordering events into its own SQLite database.
//!
//! Each message is handled in one transaction that also records `(message id, handler)` in an
//! inbox table, so a redelivered message changes nothing the second time.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Result;
use herald_core::{Delivery, Envelope, Event};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::events::{OrderCancelled, OrderCreated, SKUS};

const HANDLER: &str = "inventory.reservations";

/// What handling one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Effects applied and committed.
    Applied,
    /// Seen before: acknowledged without effects.
    Duplicate,
    /// Cannot ever succeed: dead-lettered with this reason.
    Rejected(String),
    /// Failed for now: redelivered later.
    Retry(String),
}

/// The inventory context's database.
#[derive(Clone)]
pub struct Inventory {
    pool: SqlitePool,
}

impl Inventory {
    /// Opens (creates) the database at `path` and stocks every product.
    pub async fn open(path: &Path, stock_per_sku: i64) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, on_hand INTEGER NOT NULL, \
             reserved INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, \
             quantity INTEGER NOT NULL, status TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS inbox (message_id TEXT NOT NULL, handler TEXT NOT NULL, \
             handled_at INTEGER NOT NULL, PRIMARY KEY (message_id, handler))",
        ] {
            sqlx::query(ddl).execute(&pool).await?;
        }
        for sku in SKUS {
            sqlx::query("INSERT OR IGNORE INTO stock (sku, on_hand, reserved) VALUES (?, ?, 0)")
                .bind(sku)
                .bind(stock_per_sku)
                .execute(&pool)
                .await?;
        }
        Ok(Inventory { pool })
    }

    /// Handles one delivery and settles it with the broker.
    pub async fn handle(&self, delivery: Delivery) -> Result<Handled> {
        let outcome = match self.apply(&delivery.envelope).await {
            Ok(outcome) => outcome,
            Err(error) => Handled::Retry(format!("{error:#}")),
        };
        match &outcome {
            Handled::Applied | Handled::Duplicate => delivery.ack().await?,
            Handled::Rejected(reason) => delivery.reject(reason.clone()).await?,
            Handled::Retry(reason) => {
                let delay = Duration::from_millis(50 * u64::from(delivery.attempt.min(20)));
                delivery.retry(delay, reason.clone()).await?
            }
        }
        Ok(outcome)
    }

    async fn apply(&self, envelope: &Envelope) -> Result<Handled> {
        // Decode first: a message that can never be read is rejected without touching the
        // database.
        enum Command {
            Reserve(OrderCreated),
            Release(OrderCancelled),
        }
        let command = match envelope.event_type.as_str() {
            OrderCreated::TYPE => match envelope.decode::<OrderCreated>() {
                Ok(event) => Command::Reserve(event),
                Err(error) => return Ok(Handled::Rejected(error.chain())),
            },
            OrderCancelled::TYPE => match envelope.decode::<OrderCancelled>() {
                Ok(event) => Command::Release(event),
                Err(error) => return Ok(Handled::Rejected(error.chain())),
            },
            other => return Ok(Handled::Rejected(format!("unknown event type `{other}`"))),
        };

        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let fresh = sqlx::query(
            "INSERT INTO inbox (message_id, handler, handled_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(envelope.id.to_string())
        .bind(HANDLER)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            return Ok(Handled::Duplicate);
        }
        match command {
            Command::Reserve(order) => {
                let known = sqlx::query("UPDATE stock SET reserved = reserved + ? WHERE sku = ?")
                    .bind(i64::from(order.quantity))
                    .bind(&order.sku)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if !known {
                    tx.rollback().await?;
                    return Ok(Handled::Rejected(format!(
                        "unknown sku `{}` for order {}",
                        order.sku, order.order_id
                    )));
                }
                sqlx::query(
                    "INSERT INTO reservations (order_id, sku, quantity, status) \
                     VALUES (?, ?, ?, 'reserved')",
                )
                .bind(order.order_id.to_string())
                .bind(&order.sku)
                .bind(i64::from(order.quantity))
                .execute(&mut *tx)
                .await?;
            }
            Command::Release(cancel) => {
                let row: Option<(String, i64)> = sqlx::query_as(
                    "UPDATE reservations SET status = 'released' \
                     WHERE order_id = ? AND status = 'reserved' RETURNING sku, quantity",
                )
                .bind(cancel.order_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((sku, quantity)) = row {
                    sqlx::query("UPDATE stock SET reserved = reserved - ? WHERE sku = ?")
                        .bind(quantity)
                        .bind(sku)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(Handled::Applied)
    }

    /// Total units reserved and the number of live reservations, for the closing check.
    pub async fn totals(&self) -> Result<(i64, i64)> {
        let reserved: i64 = sqlx::query_scalar("SELECT coalesce(sum(reserved), 0) FROM stock")
            .fetch_one(&self.pool)
            .await?;
        let live: i64 =
            sqlx::query_scalar("SELECT count(*) FROM reservations WHERE status = 'reserved'")
                .fetch_one(&self.pool)
                .await?;
        Ok((reserved, live))
    }

    /// Units that the live reservations add up to.
    pub async fn reserved_by_reservations(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce(sum(quantity), 0) FROM reservations WHERE status = 'reserved'",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
