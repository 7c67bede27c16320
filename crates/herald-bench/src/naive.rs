//! The relay most outbox libraries ship, for comparison (B2): fetch 100 pending rows, publish
//! each and wait for its confirmation, mark each row published with its own UPDATE, sleep when
//! there is nothing to do. It is given every advantage it would have in production: a partial
//! index on the pending rows and the same transport (client, connection, confirms) as Herald.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use herald_amqp::AmqpTransport;
use herald_core::{Envelope, Publisher};
use herald_postgres::PgPool;
use sqlx::Row;

/// The naive outbox table, `schema`.naive_outbox (`schema` quoted).
pub async fn create(pool: &PgPool, schema: &str) -> Result<()> {
    let sql = format!(
        "CREATE TABLE {schema}.naive_outbox ( \
             seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             id uuid NOT NULL, event_type text NOT NULL, occurred_at timestamptz NOT NULL, \
             correlation_id uuid NOT NULL, partition_key text, payload bytea NOT NULL, \
             published_at timestamptz); \
         CREATE INDEX ON {schema}.naive_outbox (seq) WHERE published_at IS NULL"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await?;
    Ok(())
}

/// Inserts `envelopes` as pending rows (1 000 per statement).
pub async fn fill(pool: &PgPool, schema: &str, envelopes: &[Envelope]) -> Result<()> {
    let sql = format!(
        "INSERT INTO {schema}.naive_outbox (id, event_type, occurred_at, correlation_id, partition_key, payload) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::uuid[], $5::text[], $6::bytea[])"
    );
    for chunk in envelopes.chunks(1000) {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(chunk.iter().map(|e| e.id).collect::<Vec<_>>())
            .bind(
                chunk
                    .iter()
                    .map(|e| e.event_type.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(chunk.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|e| e.correlation_id).collect::<Vec<_>>())
            .bind(
                chunk
                    .iter()
                    .map(|e| e.partition_key.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(chunk.iter().map(|e| e.payload.to_vec()).collect::<Vec<_>>())
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Drains the naive outbox until `expected` rows are published; returns the time it took.
pub async fn drain(
    pool: &PgPool,
    schema: &str,
    transport: &AmqpTransport,
    expected: usize,
) -> Result<Duration> {
    let fetch = format!(
        "SELECT seq, id, event_type, occurred_at, correlation_id, partition_key, payload \
         FROM {schema}.naive_outbox WHERE published_at IS NULL ORDER BY seq LIMIT 100"
    );
    let mark = format!("UPDATE {schema}.naive_outbox SET published_at = now() WHERE seq = $1");
    let started = Instant::now();
    let mut published = 0usize;
    while published < expected {
        let rows = sqlx::query(sqlx::AssertSqlSafe(fetch.clone()))
            .fetch_all(pool)
            .await?;
        if rows.is_empty() {
            if started.elapsed() > Duration::from_secs(600) {
                bail!("naive relay: {published} of {expected} rows published, then nothing");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for row in rows {
            let seq: i64 = row.try_get("seq")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let envelope = Envelope {
                id: row.try_get("id")?,
                event_type: row.try_get("event_type")?,
                version: 1,
                occurred_at: row.try_get("occurred_at")?,
                correlation_id: row.try_get("correlation_id")?,
                causation_id: None,
                partition_key: row.try_get("partition_key")?,
                content_type: "application/json".to_owned(),
                trace: Default::default(),
                headers: Default::default(),
                payload: payload.into(),
            };
            for result in transport.publish(std::slice::from_ref(&envelope)).await {
                result?;
            }
            sqlx::query(sqlx::AssertSqlSafe(mark.clone()))
                .bind(seq)
                .execute(pool)
                .await?;
            published += 1;
        }
    }
    Ok(started.elapsed())
}
