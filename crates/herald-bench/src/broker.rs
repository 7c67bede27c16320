//! A plain lapin connection beside the transport: counts and purges queues, deletes the run's
//! exchange, and is the *ceiling* publisher of B2 — the same client, messages and confirm window
//! as the relay's transport, publishing from memory with nothing else in the loop.

use std::collections::VecDeque;

use anyhow::{Context as _, Result, bail};
use herald_amqp::mapping::header;
use herald_core::Envelope;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

/// A raw connection and confirm-mode channel.
pub struct Broker {
    connection: Connection,
    channel: Channel,
}

impl Broker {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("connect to rabbitmq")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Broker {
            connection,
            channel,
        })
    }

    /// Messages ready in `queue`.
    pub async fn ready(&self, queue: &str) -> Result<u64> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await?;
        Ok(u64::from(q.message_count()))
    }

    /// Empties `queue`.
    pub async fn purge(&self, queue: &str) -> Result<()> {
        self.channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        Ok(())
    }

    /// Deletes `exchange`.
    pub async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        self.channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await?;
        Ok(())
    }

    /// Publishes `envelopes` to `exchange` (routing key: the event type) as the transport does
    /// (persistent, mandatory, CloudEvents headers), with at most `window` unconfirmed at
    /// once, and waits for every confirmation.
    pub async fn publish(
        &self,
        exchange: &str,
        envelopes: &[Envelope],
        window: usize,
    ) -> Result<()> {
        let mut inflight = VecDeque::with_capacity(window);
        for envelope in envelopes {
            if inflight.len() >= window.max(1) {
                settle(inflight.pop_front()).await?;
            }
            let (routing_key, properties) = message(envelope);
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &envelope.payload,
                    properties,
                )
                .await?;
            inflight.push_back(confirm);
        }
        while let Some(confirm) = inflight.pop_front() {
            settle(Some(confirm)).await?;
        }
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

async fn settle(confirm: Option<lapin::PublisherConfirm>) -> Result<()> {
    let Some(confirm) = confirm else {
        return Ok(());
    };
    match confirm.await? {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("publish not confirmed: {other:?}"),
    }
}

/// The routing key and properties the transport would send for `envelope`.
fn message(envelope: &Envelope) -> (String, BasicProperties) {
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: String| {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    let id = envelope.id.to_string();
    put(header::SPECVERSION, "1.0".into());
    put(header::ID, id.clone());
    put(header::TYPE, envelope.event_type.clone());
    put(header::SOURCE, "/herald".into());
    put(
        header::TIME,
        envelope
            .occurred_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    );
    put(header::CORRELATION_ID, envelope.correlation_id.to_string());
    if let Some(key) = &envelope.partition_key {
        put(header::PARTITION_KEY, key.clone());
    }
    headers.insert(
        header::EVENT_VERSION.into(),
        AMQPValue::LongLongInt(i64::from(envelope.version)),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.as_str().into())
        .with_type(envelope.event_type.as_str().into())
        .with_timestamp(envelope.occurred_at.unix_timestamp().max(0) as u64)
        .with_correlation_id(envelope.correlation_id.to_string().as_str().into())
        .with_content_type(envelope.content_type.as_str().into())
        .with_headers(headers);
    (envelope.event_type.clone(), properties)
}
