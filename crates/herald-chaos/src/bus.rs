//! The run's broker, RabbitMQ or Kafka, as the orchestrator and the checker use it: declare
//! a subscription before anything is published, read its dead letters, clean up.

use anyhow::Result;
use herald_amqp::AmqpTransport;
use herald_core::{DeadLetter, DeadLetters as _, Page, SubscriptionSpec};
use herald_kafka::KafkaTransport;

use crate::event::Step;

/// The transport of one run.
#[derive(Debug, Clone)]
pub enum Bus {
    /// RabbitMQ: a queue per subscription, bound to the run's exchange.
    Amqp(AmqpTransport),
    /// Kafka: the run's topic, a consumer group (with retry and dead-letter topics) per
    /// subscription.
    Kafka(KafkaTransport),
}

impl Bus {
    /// Declares subscription `name` (RabbitMQ: its queue; Kafka: its topics, and its group
    /// placed at the end of the run's topic): what is published from now on reaches it.
    pub async fn declare(&self, name: &str) -> Result<()> {
        match self {
            Bus::Amqp(transport) => {
                transport
                    .declare(&SubscriptionSpec::new(
                        name,
                        vec![<Step as herald_core::Event>::TYPE.to_owned()],
                    ))
                    .await?;
            }
            Bus::Kafka(transport) => {
                transport.declare_subscription(name).await?;
            }
        }
        Ok(())
    }

    /// Every dead letter of subscription `name`.
    pub async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>> {
        let page = Page::first(1_000_000);
        Ok(match self {
            Bus::Amqp(transport) => {
                transport
                    .dead_letter_queue(name)?
                    .dead_letters(page)
                    .await?
            }
            Bus::Kafka(transport) => {
                transport
                    .dead_letter_queue(name)?
                    .dead_letters(page)
                    .await?
            }
        })
    }

    /// Deletes subscription `name` (RabbitMQ: its queue; Kafka: its retry and dead-letter
    /// topics and its consumer group, once the members the harness killed have left; the
    /// run's event topic stays).
    pub async fn delete(&self, name: &str) {
        let deleted = match self {
            Bus::Amqp(transport) => transport.delete_subscription(name).await,
            Bus::Kafka(transport) => transport.delete_subscription(name).await,
        };
        if let Err(err) = deleted {
            eprintln!("herald-chaos: could not delete subscription {name}: {err}");
        }
    }

    /// Closes the transport (delivers what it still holds).
    pub async fn close(&self) {
        match self {
            Bus::Amqp(transport) => transport.close().await,
            Bus::Kafka(transport) => transport.close().await,
        }
    }
}
