//! The inventory context: consumes the ordering events into its own SQLite database, with the
//! consumer's transactional inbox.
//!
//! Each message is handled by a plain `async fn` on the transaction that also holds its inbox
//! record `(message id, handler)`, so a message the broker delivers twice changes nothing the
//! second time.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use herald_consumer::{
    Context, HandlerError, HandlerResult, Layer, Next, Outcome, Router, TxContext,
};
use herald_core::Uuid;
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};

use super::events::{OrderCancelled, OrderCreated, SKUS};

/// Handler names: they key the inbox records.
pub const RESERVE: &str = "inventory.reserve-stock";
/// See [`RESERVE`].
pub const RELEASE: &str = "inventory.release-stock";

/// The inventory context's database: its own tables, plus the outbox and inbox tables that
/// `herald-sqlite` migrates (the inventory publishes nothing, but it could, in the same
/// transactions).
#[derive(Clone)]
pub struct Inventory {
    db: SqliteOutbox,
}

impl Inventory {
    /// Opens (creates) the database at `path` and stocks every product.
    pub async fn open(path: &Path, stock_per_sku: i64) -> Result<Self> {
        let url = format!("sqlite://{}", path.display());
        let db = SqliteOutbox::connect(&url, SqliteOutboxConfig::default()).await?;
        db.migrate().await?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, on_hand INTEGER NOT NULL, \
             reserved INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, \
             quantity INTEGER NOT NULL, status TEXT NOT NULL)",
        ] {
            sqlx::query(ddl).execute(db.pool()).await?;
        }
        for sku in SKUS {
            sqlx::query("INSERT OR IGNORE INTO stock (sku, on_hand, reserved) VALUES (?, ?, 0)")
                .bind(sku)
                .bind(stock_per_sku)
                .execute(db.pool())
                .await?;
        }
        Ok(Inventory { db })
    }

    /// The handlers, each with the transactional inbox, and the demo's measuring layer.
    pub fn router(&self, meter: Meter) -> Router {
        Router::new()
            .transactional(&self.db, RESERVE, reserve)
            .transactional(&self.db, RELEASE, release)
            .layer(meter)
    }

    /// Total units reserved, the orders with a live reservation, and the units those
    /// reservations add up to, for the closing check.
    pub async fn totals(&self) -> Result<(i64, HashSet<Uuid>, i64)> {
        let reserved: i64 = sqlx::query_scalar("SELECT coalesce(sum(reserved), 0) FROM stock")
            .fetch_one(self.db.pool())
            .await?;
        let live: Vec<String> =
            sqlx::query_scalar("SELECT order_id FROM reservations WHERE status = 'reserved'")
                .fetch_all(self.db.pool())
                .await?;
        let live = live
            .iter()
            .map(|id| Uuid::parse_str(id))
            .collect::<Result<_, _>>()?;
        let by_reservations: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(quantity), 0) FROM reservations WHERE status = 'reserved'",
        )
        .fetch_one(self.db.pool())
        .await?;
        Ok((reserved, live, by_reservations))
    }

    /// Inbox records, one per message handled.
    pub async fn inbox_records(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM herald_outbox_inbox")
                .fetch_one(self.db.pool())
                .await?,
        )
    }
}

/// Reserves stock for a new order. An order for a product the inventory does not stock can
/// never succeed: it is rejected (dead-lettered) with the reason.
async fn reserve(
    order: OrderCreated,
    ctx: &mut TxContext<SqliteOutbox>,
) -> Result<Outcome, HandlerError> {
    let known = sqlx::query("UPDATE stock SET reserved = reserved + ? WHERE sku = ?")
        .bind(i64::from(order.quantity))
        .bind(&order.sku)
        .execute(ctx.db())
        .await?
        .rows_affected()
        == 1;
    if !known {
        return Ok(Outcome::reject(format!(
            "unknown sku `{}` for order {}",
            order.sku, order.order_id
        )));
    }
    sqlx::query(
        "INSERT INTO reservations (order_id, sku, quantity, status) VALUES (?, ?, ?, 'reserved')",
    )
    .bind(order.order_id.to_string())
    .bind(&order.sku)
    .bind(i64::from(order.quantity))
    .execute(ctx.db())
    .await?;
    Ok(Outcome::Done)
}

/// Releases the reservation of a cancelled order (if it was reserved).
async fn release(
    cancel: OrderCancelled,
    ctx: &mut TxContext<SqliteOutbox>,
) -> Result<(), HandlerError> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "UPDATE reservations SET status = 'released' \
         WHERE order_id = ? AND status = 'reserved' RETURNING sku, quantity",
    )
    .bind(cancel.order_id.to_string())
    .fetch_optional(ctx.db())
    .await?;
    if let Some((sku, quantity)) = row {
        sqlx::query("UPDATE stock SET reserved = reserved - ? WHERE sku = ?")
            .bind(quantity)
            .bind(sku)
            .execute(ctx.db())
            .await?;
    }
    Ok(())
}

/// A layer of the demo's own (the kind a user adds for metrics): counts handled messages and
/// duplicates, and measures the time from the ordering context's commit to the inventory's.
#[derive(Clone, Default)]
pub struct Meter {
    /// Messages whose effects committed.
    pub handled: Arc<AtomicU64>,
    /// Handler runs the inbox skipped.
    pub duplicates: Arc<AtomicU64>,
    /// When each event was committed by the ordering context.
    pub committed: Arc<Mutex<HashMap<Uuid, Instant>>>,
    /// Commit → handled, per message.
    pub latencies: Arc<Mutex<Vec<Duration>>>,
}

impl Layer for Meter {
    async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult {
        let result = next.run(ctx).await;
        if let Ok(Outcome::Done) = &result {
            if ctx.is_duplicate() {
                self.duplicates.fetch_add(1, AtomicOrdering::Relaxed);
            } else {
                self.handled.fetch_add(1, AtomicOrdering::Relaxed);
                let committed = self
                    .committed
                    .lock()
                    .ok()
                    .and_then(|map| map.get(&ctx.message_id()).copied());
                if let (Some(at), Ok(mut latencies)) = (committed, self.latencies.lock()) {
                    latencies.push(at.elapsed());
                }
            }
        }
        result
    }
}
