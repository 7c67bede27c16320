//! Create an order: the Rust counterpart of the classic "create order" command handler
//! (eShopOnContainers' `CreateOrderCommandHandler`), with Herald's unit of work.
//!
//! The `CreateOrder` command creates the `Order` aggregate, which raises the domain event
//! `OrderCreated`. Saving the order hands the event to the unit of work, which, in the same
//! SQLite transaction, runs a domain handler (the buyer's running totals) and converts the
//! event into the published contract `ordering.order_created` in the outbox, for a relay to
//! publish. A command that breaks an invariant leaves no trace at all.
//!
//! ```sh
//! cargo run -p herald --example create_order --features sqlite,domain
//! ```

use std::error::Error;

use herald::Uuid;
use herald::domain::UnitOfWork;
use herald::{SqliteOutbox, SqliteOutboxConfig, sqlx};

use application::{CreateOrder, CreateOrderError};
use domain::OrderLine;

/// The ordering domain: the aggregate, its invariants and its domain events. No I/O.
mod domain {
    use herald::Uuid;
    use herald::domain::{Aggregate, DomainEvent, DomainEvents};

    /// A line of an order; amounts in cents.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct OrderLine {
        pub product_id: u32,
        pub product_name: String,
        pub unit_price_cents: i64,
        pub discount_cents: i64,
        pub units: u32,
    }

    impl OrderLine {
        pub fn total_cents(&self) -> i64 {
            self.unit_price_cents * i64::from(self.units) - self.discount_cents
        }
    }

    /// Domain event: an order was created. It carries what the ordering context knows; the
    /// published contract carries less.
    #[derive(Debug, Clone)]
    pub struct OrderCreated {
        pub order_id: Uuid,
        pub buyer_id: String,
        pub lines: Vec<OrderLine>,
        pub total_cents: i64,
    }

    impl DomainEvent for OrderCreated {}

    /// Why an order cannot be created.
    #[derive(Debug, thiserror::Error)]
    pub enum OrderError {
        #[error("an order needs at least one line")]
        Empty,
        #[error("product {0}: an order line needs at least one unit")]
        NoUnits(u32),
        #[error("product {0}: the discount exceeds the line's price")]
        DiscountTooHigh(u32),
    }

    /// The order aggregate.
    #[derive(Debug)]
    pub struct Order {
        id: Uuid,
        buyer_id: String,
        lines: Vec<OrderLine>,
        events: DomainEvents,
    }

    impl Order {
        /// Creates an order for `buyer_id`, merging lines of the same product.
        pub fn create(
            buyer_id: &str,
            lines: impl IntoIterator<Item = OrderLine>,
        ) -> Result<Order, OrderError> {
            let mut order = Order {
                id: Uuid::now_v7(),
                buyer_id: buyer_id.to_owned(),
                lines: Vec::new(),
                events: DomainEvents::new(),
            };
            for line in lines {
                order.add_line(line)?;
            }
            if order.lines.is_empty() {
                return Err(OrderError::Empty);
            }
            order.events.raise(OrderCreated {
                order_id: order.id,
                buyer_id: order.buyer_id.clone(),
                lines: order.lines.clone(),
                total_cents: order.total_cents(),
            });
            Ok(order)
        }

        /// Adds a line, or adds its units to the line of the same product and keeps the
        /// larger discount.
        fn add_line(&mut self, line: OrderLine) -> Result<(), OrderError> {
            if line.units == 0 {
                return Err(OrderError::NoUnits(line.product_id));
            }
            match self
                .lines
                .iter_mut()
                .find(|l| l.product_id == line.product_id)
            {
                Some(existing) => {
                    existing.units += line.units;
                    existing.discount_cents = existing.discount_cents.max(line.discount_cents);
                    if existing.total_cents() < 0 {
                        return Err(OrderError::DiscountTooHigh(line.product_id));
                    }
                }
                None if line.total_cents() < 0 => {
                    return Err(OrderError::DiscountTooHigh(line.product_id));
                }
                None => self.lines.push(line),
            }
            Ok(())
        }

        pub fn id(&self) -> Uuid {
            self.id
        }

        pub fn buyer_id(&self) -> &str {
            &self.buyer_id
        }

        pub fn lines(&self) -> &[OrderLine] {
            &self.lines
        }

        pub fn total_cents(&self) -> i64 {
            self.lines.iter().map(OrderLine::total_cents).sum()
        }
    }

    impl Aggregate for Order {
        fn aggregate_id(&self) -> String {
            self.id.to_string()
        }

        fn domain_events(&mut self) -> &mut DomainEvents {
            &mut self.events
        }
    }
}

/// What other contexts may rely on: the published integration events.
mod contracts {
    use herald::{Event, Uuid};
    use serde::{Deserialize, Serialize};

    /// `ordering.order_created`, keyed by the order id (the aggregate id, by default).
    #[derive(Debug, Serialize, Deserialize)]
    pub struct OrderCreated {
        pub order_id: Uuid,
        pub buyer_id: String,
        pub total_cents: i64,
        pub items: Vec<OrderedItem>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct OrderedItem {
        pub product_id: u32,
        pub units: u32,
    }

    impl Event for OrderCreated {
        const TYPE: &'static str = "ordering.order_created";
    }
}

/// Persistence: the order's rows, and its domain events handed to the unit of work.
mod repository {
    use herald::domain::Transaction;
    use herald::sqlite::SqliteOutbox;
    use herald::sqlx;

    use super::domain::Order;

    pub const SCHEMA: &str = "
        CREATE TABLE orders (id TEXT PRIMARY KEY, buyer_id TEXT NOT NULL,
                             total_cents INTEGER NOT NULL);
        CREATE TABLE order_lines (order_id TEXT NOT NULL REFERENCES orders (id),
                                  product_id INTEGER NOT NULL, units INTEGER NOT NULL,
                                  unit_price_cents INTEGER NOT NULL,
                                  discount_cents INTEGER NOT NULL,
                                  PRIMARY KEY (order_id, product_id));
        CREATE TABLE buyers (id TEXT PRIMARY KEY, orders INTEGER NOT NULL,
                             spent_cents INTEGER NOT NULL);
    ";

    /// Saves a new order and hands its domain events to the unit of work.
    pub async fn add(tx: &mut Transaction<SqliteOutbox>, order: &mut Order) -> sqlx::Result<()> {
        let order_id = order.id().to_string();
        sqlx::query("INSERT INTO orders (id, buyer_id, total_cents) VALUES ($1, $2, $3)")
            .bind(&order_id)
            .bind(order.buyer_id())
            .bind(order.total_cents())
            .execute(tx.conn())
            .await?;
        for line in order.lines() {
            sqlx::query(
                "INSERT INTO order_lines (order_id, product_id, units, unit_price_cents, \
                 discount_cents) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&order_id)
            .bind(line.product_id)
            .bind(line.units)
            .bind(line.unit_price_cents)
            .bind(line.discount_cents)
            .execute(tx.conn())
            .await?;
        }
        tx.collect(order);
        Ok(())
    }
}

/// The application layer: the command, its handler, and what runs for the domain events.
mod application {
    use herald::Uuid;
    use herald::domain::{DomainEnvelope, Origin, Registry, Transaction, UnitOfWork};
    use herald::sqlite::SqliteOutbox;
    use herald::sqlx;

    use super::domain::{self, Order, OrderError, OrderLine};
    use super::{contracts, repository};

    /// The command: who orders what. `command_id` identifies this request.
    #[derive(Debug)]
    pub struct CreateOrder {
        pub command_id: Uuid,
        pub buyer_id: String,
        pub lines: Vec<OrderLine>,
    }

    #[derive(Debug, thiserror::Error)]
    pub enum CreateOrderError {
        #[error(transparent)]
        Invalid(#[from] OrderError),
        #[error("database error")]
        Database(#[from] sqlx::Error),
        #[error(transparent)]
        UnitOfWork(#[from] herald::domain::Error),
    }

    /// The command handler. Saving the order is all it does by hand: the unit of work
    /// dispatches the order's domain events, records the integration events they convert
    /// into and commits, or rolls everything back.
    pub async fn create_order(
        uow: &UnitOfWork<SqliteOutbox>,
        command: CreateOrder,
    ) -> Result<Uuid, CreateOrderError> {
        let origin = Origin::new().with_causation_id(command.command_id);
        uow.run_with(origin, async |tx| {
            let mut order = Order::create(&command.buyer_id, command.lines)?;
            repository::add(tx, &mut order).await?;
            Ok(order.id())
        })
        .await
    }

    /// The ordering context's domain event handlers and converters.
    pub fn registry() -> Registry<SqliteOutbox> {
        Registry::new()
            .on(update_buyer)
            .convert(order_created_contract)
    }

    /// Domain handler: the buyer's running totals, in the same transaction.
    async fn update_buyer(
        event: &DomainEnvelope<domain::OrderCreated>,
        tx: &mut Transaction<SqliteOutbox>,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO buyers (id, orders, spent_cents) VALUES ($1, 1, $2) \
             ON CONFLICT (id) DO UPDATE SET orders = orders + 1, \
             spent_cents = spent_cents + excluded.spent_cents",
        )
        .bind(&event.buyer_id)
        .bind(event.total_cents)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Converter: what other contexts learn of a new order (no names, prices or discounts).
    fn order_created_contract(
        event: &DomainEnvelope<domain::OrderCreated>,
    ) -> Option<contracts::OrderCreated> {
        Some(contracts::OrderCreated {
            order_id: event.order_id,
            buyer_id: event.buyer_id.clone(),
            total_cents: event.total_cents,
            items: event
                .lines
                .iter()
                .map(|line| contracts::OrderedItem {
                    product_id: line.product_id,
                    units: line.units,
                })
                .collect(),
        })
    }
}

/// An outbox row: type, partition key, correlation id, causation id, payload.
type OutboxRow = (String, Option<String>, String, Option<String>, Vec<u8>);

fn line(product_id: u32, name: &str, price: i64, discount: i64, units: u32) -> OrderLine {
    OrderLine {
        product_id,
        product_name: name.to_owned(),
        unit_price_cents: price,
        discount_cents: discount,
        units,
    }
}

/// Runs two commands against a fresh SQLite database and prints what they left behind.
/// (`pub` so that `tests/examples.rs` can run it too.)
#[tokio::main]
pub async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("ordering.db").display());
    let outbox = SqliteOutbox::connect(&url, SqliteOutboxConfig::default()).await?;
    outbox.migrate().await?;
    sqlx::raw_sql(repository::SCHEMA)
        .execute(outbox.pool())
        .await?;
    let uow = UnitOfWork::new(outbox.clone(), application::registry());

    let command = CreateOrder {
        command_id: Uuid::now_v7(),
        buyer_id: "alice".into(),
        lines: vec![
            line(1, "Rust mug", 1_250, 0, 2),
            line(7, "Herald tee", 2_400, 400, 1),
            line(1, "Rust mug", 1_250, 250, 1),
        ],
    };
    let command_id = command.command_id;
    let order_id = application::create_order(&uow, command).await?;
    println!("command {command_id}: created order {order_id}");

    let invalid = CreateOrder {
        command_id: Uuid::now_v7(),
        buyer_id: "alice".into(),
        lines: vec![line(3, "Sticker", 100, 500, 1)],
    };
    match application::create_order(&uow, invalid).await {
        Err(CreateOrderError::Invalid(reason)) => println!("rejected a command: {reason}"),
        other => return Err(format!("expected a rejection, got {other:?}").into()),
    }

    let (orders, lines): (i64, i64) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM order_lines)")
            .fetch_one(outbox.pool())
            .await?;
    let (buyer_orders, spent): (i64, i64) =
        sqlx::query_as("SELECT orders, spent_cents FROM buyers WHERE id = 'alice'")
            .fetch_one(outbox.pool())
            .await?;
    println!("orders: {orders} ({lines} lines); alice: {buyer_orders} order, {spent} cents");

    // What a relay will publish: the outbox rows of the committed unit of work only.
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT event_type, partition_key, correlation_id, causation_id, payload \
         FROM herald_outbox ORDER BY seq",
    )
    .fetch_all(outbox.pool())
    .await?;
    println!("outbox: {} event(s)", rows.len());
    for (event_type, key, correlation_id, causation_id, payload) in &rows {
        println!(
            "  {event_type}  partition key {}",
            key.as_deref().unwrap_or("-")
        );
        println!(
            "    correlation {correlation_id}, caused by domain event {}",
            causation_id.as_deref().unwrap_or("-")
        );
        println!("    {}", String::from_utf8_lossy(payload));
    }
    if (orders, buyer_orders, rows.len()) != (1, 1, 1) {
        return Err("expected one order, one buyer update and one outbox row".into());
    }
    Ok(())
}
