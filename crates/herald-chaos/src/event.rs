//! The event the harness produces, and the names one run uses.

use herald_core::Event;
use serde::{Deserialize, Serialize};

/// One step of a key: the `n`th event of `key`, handled in that order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// The partition key.
    pub key: String,
    /// Position within the key, from 0.
    pub n: i64,
    /// A poison event: its handler always fails, so it must end in the dead-letter queue.
    pub poison: bool,
}

impl Event for Step {
    const TYPE: &'static str = "chaos.step";

    fn partition_key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

/// The names of one scenario run: its PostgreSQL schema, exchange or topic, and queues.
#[derive(Debug, Clone)]
pub struct RunNames {
    /// The run's id (a UUIDv7 without hyphens).
    pub id: String,
}

impl RunNames {
    /// Fresh names.
    pub fn fresh() -> Self {
        Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
        }
    }

    /// The PostgreSQL schema (outbox, inbox, the producers' and consumers' tables).
    pub fn schema(&self) -> String {
        format!("herald_chaos_{}", self.id)
    }

    /// The AMQP exchange.
    pub fn exchange(&self) -> String {
        format!("herald-chaos-{}", self.id)
    }

    /// The Kafka topic every event of the run goes to.
    pub fn topic(&self) -> String {
        format!("herald-chaos-{}", self.id)
    }

    /// The consumers' queue (the subscription name; on Kafka, the consumer group).
    pub fn queue(&self) -> String {
        format!("herald-chaos-{}", self.id)
    }

    /// The broker-side witness's queue: bound like the consumers' queue, read by the
    /// orchestrator, which notes first arrivals.
    pub fn witness_queue(&self) -> String {
        format!("herald-chaos-{}-witness", self.id)
    }

    /// The name of the run's RabbitMQ policy (the witness queue's bound).
    pub fn policy(&self) -> String {
        format!("herald-chaos-{}", self.id)
    }

    /// The `application_name` of a role's database sessions: what `pg_terminate_backend`
    /// picks its victims by.
    pub fn application_name(&self, role: &str) -> String {
        format!("herald-chaos-{}-{role}", &self.id[..16])
    }
}
