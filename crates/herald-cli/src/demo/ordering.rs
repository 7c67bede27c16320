//! The ordering context: writes orders and records their events in the same transaction.

use std::collections::HashSet;

use anyhow::Result;
use herald_core::Uuid;
use herald_postgres::PgOutbox;
use herald_sqlite::SqliteOutbox;

use super::events::{OrderCancelled, OrderCreated};

/// The ordering context's database and outbox.
#[derive(Clone)]
pub enum Ordering {
    /// Orders and outbox in a PostgreSQL schema.
    Postgres {
        /// The outbox (its pool is the context's pool).
        outbox: PgOutbox,
        /// Quoted schema name for the business table.
        schema: String,
    },
    /// Orders and outbox in one SQLite file.
    Sqlite {
        /// The outbox (its pool is the context's pool).
        outbox: SqliteOutbox,
    },
}

impl Ordering {
    /// Creates the `orders` table next to the outbox.
    pub async fn setup(&self) -> Result<()> {
        match self {
            Ordering::Postgres { outbox, schema } => {
                let ddl = format!(
                    "CREATE TABLE IF NOT EXISTS {schema}.orders (id uuid PRIMARY KEY, \
                     customer text NOT NULL, sku text NOT NULL, quantity int NOT NULL, \
                     total_cents bigint NOT NULL, status text NOT NULL, \
                     created_at timestamptz NOT NULL DEFAULT now())"
                );
                sqlx::query(sqlx::AssertSqlSafe(ddl))
                    .execute(outbox.pool())
                    .await?;
            }
            Ordering::Sqlite { outbox } => {
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
                     sku TEXT NOT NULL, quantity INTEGER NOT NULL, total_cents INTEGER NOT NULL, \
                     status TEXT NOT NULL)",
                )
                .execute(outbox.pool())
                .await?;
            }
        }
        Ok(())
    }

    /// Places an order: one transaction inserts the order row and records `OrderCreated`.
    /// Returns the event id.
    pub async fn place(&self, order: &OrderCreated) -> Result<Uuid> {
        match self {
            Ordering::Postgres { outbox, schema } => {
                let mut tx = outbox.begin().await?;
                let sql = format!(
                    "INSERT INTO {schema}.orders (id, customer, sku, quantity, total_cents, status) \
                     VALUES ($1, $2, $3, $4, $5, 'placed')"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(order.order_id)
                    .bind(&order.customer)
                    .bind(&order.sku)
                    .bind(order.quantity as i32)
                    .bind(order.total_cents)
                    .execute(&mut *tx)
                    .await?;
                let id = tx.record(order).await?;
                tx.commit().await?;
                Ok(id)
            }
            Ordering::Sqlite { outbox } => {
                let mut tx = outbox.begin().await?;
                sqlx::query(
                    "INSERT INTO orders (id, customer, sku, quantity, total_cents, status) \
                     VALUES (?, ?, ?, ?, ?, 'placed')",
                )
                .bind(order.order_id.to_string())
                .bind(&order.customer)
                .bind(&order.sku)
                .bind(order.quantity as i64)
                .bind(order.total_cents)
                .execute(&mut *tx)
                .await?;
                let id = tx.record(order).await?;
                tx.commit().await?;
                Ok(id)
            }
        }
    }

    /// Cancels an order: one transaction updates its status and records `OrderCancelled`.
    pub async fn cancel(&self, event: &OrderCancelled) -> Result<Uuid> {
        match self {
            Ordering::Postgres { outbox, schema } => {
                let mut tx = outbox.begin().await?;
                let sql = format!("UPDATE {schema}.orders SET status = 'cancelled' WHERE id = $1");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(event.order_id)
                    .execute(&mut *tx)
                    .await?;
                let id = tx.record(event).await?;
                tx.commit().await?;
                Ok(id)
            }
            Ordering::Sqlite { outbox } => {
                let mut tx = outbox.begin().await?;
                sqlx::query("UPDATE orders SET status = 'cancelled' WHERE id = ?")
                    .bind(event.order_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                let id = tx.record(event).await?;
                tx.commit().await?;
                Ok(id)
            }
        }
    }

    /// The ids of the orders in a status, for the closing check.
    pub async fn ids(&self, status: &str) -> Result<HashSet<Uuid>> {
        let ids: Vec<Uuid> = match self {
            Ordering::Postgres { outbox, schema } => {
                let sql = format!("SELECT id FROM {schema}.orders WHERE status = $1");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(status)
                    .fetch_all(outbox.pool())
                    .await?
            }
            Ordering::Sqlite { outbox } => {
                let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM orders WHERE status = ?")
                    .bind(status)
                    .fetch_all(outbox.pool())
                    .await?;
                ids.iter()
                    .map(|id| Uuid::parse_str(id))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(ids.into_iter().collect())
    }
}
