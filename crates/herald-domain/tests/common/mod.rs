//! Shared by the integration tests: a small ordering domain, its published contracts, the
//! application's error, and one database fixture per backend (own SQLite file, own PostgreSQL
//! schema).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use herald_core::{ClaimRequest, Envelope, Event, OutboxStore, Uuid};
use herald_domain::{Aggregate, DomainEnvelope, DomainEvent, DomainEvents};
use serde::{Deserialize, Serialize};

/// The business tables, the same SQL on both backends.
pub const TABLES: &str = "
    CREATE TABLE orders (id TEXT PRIMARY KEY, buyer TEXT NOT NULL, total_cents BIGINT NOT NULL);
    CREATE TABLE buyers (id TEXT PRIMARY KEY, orders BIGINT NOT NULL);
    CREATE TABLE shipments (
        order_id TEXT NOT NULL REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED
    );
";

/// The domain: an order aggregate that raises `OrderPlaced` when created.
pub struct Order {
    pub id: String,
    pub buyer: String,
    pub total_cents: i64,
    events: DomainEvents,
}

impl Order {
    /// Places an order; `internal` orders (staff tests, say) must not leave the context.
    pub fn place(buyer: &str, total_cents: i64, internal: bool) -> Order {
        let mut order = Order {
            id: format!("order-{}", Uuid::now_v7().simple()),
            buyer: buyer.to_owned(),
            total_cents,
            events: DomainEvents::new(),
        };
        order.events.raise(OrderPlaced {
            buyer: buyer.to_owned(),
            total_cents,
            internal,
        });
        order
    }
}

impl Aggregate for Order {
    fn aggregate_id(&self) -> String {
        self.id.clone()
    }

    fn domain_events(&mut self) -> &mut DomainEvents {
        &mut self.events
    }
}

/// Domain event: an order was placed.
#[derive(Debug, Clone)]
pub struct OrderPlaced {
    pub buyer: String,
    pub total_cents: i64,
    pub internal: bool,
}
impl DomainEvent for OrderPlaced {}

/// Domain event raised by a handler of `OrderPlaced`: the buyer earned loyalty points.
#[derive(Debug, Clone)]
pub struct PointsEarned {
    pub buyer: String,
    pub points: i64,
}
impl DomainEvent for PointsEarned {}

/// Domain events whose handlers raise each other forever.
pub struct Ping;
impl DomainEvent for Ping {}
pub struct Pong;
impl DomainEvent for Pong {}

/// The published contracts.
pub mod contracts {
    use std::collections::HashMap;

    use super::*;

    /// `ordering.order_placed`: keyed by default (the aggregate id).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub total_cents: i64,
    }
    impl Event for OrderPlaced {
        const TYPE: &'static str = "ordering.order_placed";
    }

    /// `billing.invoice_requested`: the event type keys it by buyer.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct InvoiceRequested {
        pub buyer: String,
        pub total_cents: i64,
    }
    impl Event for InvoiceRequested {
        const TYPE: &'static str = "billing.invoice_requested";
        fn partition_key(&self) -> Option<String> {
            Some(format!("buyer-{}", self.buyer))
        }
    }

    /// `loyalty.points_earned`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct PointsEarned {
        pub buyer: String,
        pub points: i64,
    }
    impl Event for PointsEarned {
        const TYPE: &'static str = "loyalty.points_earned";
    }

    /// `ordering.audited`: recorded directly by a handler.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct Audited {
        pub note: String,
    }
    impl Event for Audited {
        const TYPE: &'static str = "ordering.audited";
    }

    /// An event JSON cannot encode (a map with non-string keys).
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Unencodable {
        pub by_pair: HashMap<(i32, i32), i32>,
    }
    impl Event for Unencodable {
        const TYPE: &'static str = "ordering.unencodable";
    }
}

/// Converter: `OrderPlaced` leaves the context unless the order is internal.
pub fn order_placed_contract(
    event: &DomainEnvelope<OrderPlaced>,
) -> Option<contracts::OrderPlaced> {
    (!event.internal).then(|| contracts::OrderPlaced {
        order_id: event.aggregate_id.clone(),
        total_cents: event.total_cents,
    })
}

/// Converter: billing hears about every order.
pub fn invoice_request(event: &DomainEnvelope<OrderPlaced>) -> Option<contracts::InvoiceRequested> {
    Some(contracts::InvoiceRequested {
        buyer: event.buyer.clone(),
        total_cents: event.total_cents,
    })
}

/// What a handler saw of a domain event.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub event: &'static str,
    pub id: Uuid,
    pub aggregate_id: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub occurred_at: time::OffsetDateTime,
}

/// A log of the domain envelopes handlers saw, shared with a test.
#[derive(Debug, Clone, Default)]
pub struct SeenLog(pub Arc<Mutex<Vec<Seen>>>);

impl SeenLog {
    pub fn push<E>(&self, envelope: &DomainEnvelope<E>) {
        self.0.lock().unwrap().push(Seen {
            event: envelope.name(),
            id: envelope.id,
            aggregate_id: envelope.aggregate_id.clone(),
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            occurred_at: envelope.occurred_at,
        });
    }

    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

/// The application's error, as a command handler would define it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("database")]
    Db(#[from] sqlx::Error),
    #[error("unit of work")]
    Domain(#[from] herald_domain::Error),
    #[error("rejected: {0}")]
    Rejected(&'static str),
}

/// Every pending row of `outbox`, oldest first, as a relay would claim them.
pub async fn outbox_rows<S: OutboxStore>(outbox: &S) -> Vec<Envelope> {
    let request = ClaimRequest {
        relay_id: Uuid::now_v7(),
        limit: 1_000,
        lease: std::time::Duration::from_secs(60),
    };
    let claimed = outbox.claim(&request).await.unwrap();
    claimed.into_iter().map(|row| row.envelope).collect()
}

/// Whether two times are equal at the microsecond precision the stores keep.
pub fn same_micros(a: time::OffsetDateTime, b: time::OffsetDateTime) -> bool {
    a.unix_timestamp_nanos() / 1_000 == b.unix_timestamp_nanos() / 1_000
}

pub mod sqlite {
    use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
    use tempfile::TempDir;

    /// The backend under test.
    pub type Outbox = SqliteOutbox;

    /// A migrated outbox and the business tables in a database file of its own.
    pub struct Fixture {
        pub outbox: SqliteOutbox,
        _dir: TempDir,
    }

    impl Fixture {
        pub async fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("app.db").display());
            let outbox = SqliteOutbox::connect(&url, SqliteOutboxConfig::default())
                .await
                .unwrap();
            outbox.migrate().await.unwrap();
            sqlx::raw_sql(super::TABLES)
                .execute(outbox.pool())
                .await
                .unwrap();
            Fixture { outbox, _dir: dir }
        }

        pub async fn count(&self, table: &'static str) -> i64 {
            sqlx::query_scalar(super::count_sql(table))
                .fetch_one(self.outbox.pool())
                .await
                .unwrap()
        }

        pub async fn cleanup(self) {}
    }
}

/// `SELECT COUNT(*)` of one of the business tables.
fn count_sql(table: &'static str) -> &'static str {
    match table {
        "orders" => "SELECT COUNT(*) FROM orders",
        "buyers" => "SELECT COUNT(*) FROM buyers",
        other => panic!("no table {other}"),
    }
}

pub mod postgres {
    use std::str::FromStr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use herald_postgres::{PgOutbox, PgOutboxConfig, PgPool};
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    /// The backend under test.
    pub type Outbox = PgOutbox;

    /// A migrated outbox and the business tables in a schema of its own (the pool's
    /// `search_path`, so the business SQL is the same as on SQLite).
    pub struct Fixture {
        pub outbox: PgOutbox,
        schema: String,
    }

    fn database_url() -> String {
        herald_testkit::env::database_url()
    }

    impl Fixture {
        pub async fn new() -> Fixture {
            let schema = format!("herald_t_{}", super::Uuid::now_v7().simple());
            let options = PgConnectOptions::from_str(&database_url())
                .unwrap()
                .options([("search_path", schema.as_str())]);
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .expect("test database reachable");
            sweep_stale_schemas(&pool).await;
            let outbox = PgOutbox::new(pool, PgOutboxConfig::new(&schema, "outbox").unwrap());
            outbox.migrate().await.unwrap();
            sqlx::raw_sql(super::TABLES)
                .execute(outbox.pool())
                .await
                .unwrap();
            Fixture { outbox, schema }
        }

        pub async fn count(&self, table: &'static str) -> i64 {
            sqlx::query_scalar(super::count_sql(table))
                .fetch_one(self.outbox.pool())
                .await
                .unwrap()
        }

        /// Drops the schema (a failed test leaves it behind, for [`sweep_stale_schemas`]).
        pub async fn cleanup(self) {
            let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(self.outbox.pool())
                .await
                .unwrap();
        }
    }

    /// Drops test schemas of this suite that failed runs left behind: those holding its
    /// `shipments` table and made (UUIDv7 name) more than an hour ago. Once per test binary.
    async fn sweep_stale_schemas(pool: &PgPool) {
        static SWEPT: AtomicBool = AtomicBool::new(false);
        if SWEPT.swap(true, Ordering::SeqCst) {
            return;
        }
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT table_schema::text FROM information_schema.tables \
             WHERE table_schema LIKE 'herald\\_t\\_%' AND table_name = 'shipments'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let hour_ago = time::OffsetDateTime::now_utc().unix_timestamp() - 3_600;
        for name in names {
            let made = super::Uuid::parse_str(&name["herald_t_".len()..])
                .ok()
                .and_then(|id| id.get_timestamp())
                .map(|ts| ts.to_unix().0);
            if made.is_some_and(|secs| i64::try_from(secs).unwrap_or(i64::MAX) < hour_ago) {
                let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                // Another run may be sweeping the same schema: ignore failures.
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await;
            }
        }
    }
}
