#![doc = include_str!("../README.md")]

mod acks;
mod config;
mod connection;
mod dead_letters;
mod error;
pub mod mapping;
mod publisher;
mod settle;
mod subscriber;
pub mod topology;

use std::fmt;
use std::sync::Arc;

use herald_core::{Result, SubscriptionSpec};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

pub use crate::config::{AmqpConfig, AmqpTls, ExchangeKind, QueueKind, QueueNames};
pub use crate::dead_letters::AmqpDeadLetterQueue;
pub use crate::subscriber::AmqpStream;
pub use crate::topology::Declaration;

use crate::connection::Link;
use crate::error::{ResultExt, Secrets};
use crate::publisher::Publishing;

/// The transport's `messaging.system` in traces (OpenTelemetry's name for RabbitMQ).
const MESSAGING_SYSTEM: &str = "rabbitmq";

/// A RabbitMQ transport: a [`Publisher`](herald_core::Publisher) for relays and a
/// [`Subscriber`](herald_core::Subscriber) for consumers.
///
/// It keeps two connections, made on first use (publishing and consuming apart, so that a
/// broker throttling publishers never stalls consumers' acknowledgements) and re-made with
/// backoff whenever they are lost. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct AmqpTransport {
    shared: Arc<Shared>,
}

/// What every clone, stream and delivery of one transport shares.
pub(crate) struct Shared {
    pub(crate) config: Arc<AmqpConfig>,
    pub(crate) secrets: Secrets,
    pub(crate) publishing: Publishing,
    pub(crate) consuming: Link,
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.consuming.is_closed()
    }
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTransport")
            .field(
                "url",
                &herald_core::redact::redact_url(&self.shared.config.url),
            )
            .field("exchange", &self.shared.config.exchange)
            .field("closed", &self.shared.is_closed())
            .finish_non_exhaustive()
    }
}

impl AmqpTransport {
    /// A transport configured by `config`, connecting to the broker now (and declaring the
    /// exchange), so that a wrong URL or password shows at start-up. Later losses of the
    /// connection are recovered by themselves.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let transport = Self::lazy(config)?;
        let (channel, _) = transport.shared.publishing.link().channel().await?;
        topology::apply(
            &channel,
            &[topology::exchange(&transport.shared.config)],
            &transport.shared.secrets,
        )
        .await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(transport)
    }

    /// A transport configured by `config` that connects on first use.
    pub fn lazy(config: AmqpConfig) -> Result<Self> {
        config.validate()?;
        let secrets = Secrets::of_url(&config.url);
        let config = Arc::new(config);
        let publishing = Publishing::new(
            Link::new("publisher", Arc::clone(&config), secrets.clone()),
            Arc::clone(&config),
            secrets.clone(),
        );
        let consuming = Link::new("subscriber", Arc::clone(&config), secrets.clone());
        Ok(AmqpTransport {
            shared: Arc::new(Shared {
                config,
                secrets,
                publishing,
                consuming,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AmqpConfig {
        &self.shared.config
    }

    /// Declares the topology of `spec` (see [`topology::plan`]) without consuming, so that
    /// messages published before its first consumer starts wait in its queue. Idempotent.
    /// Returns what was declared.
    pub async fn declare(&self, spec: &SubscriptionSpec) -> Result<Vec<Declaration>> {
        let declarations = topology::plan(&self.shared.config, spec)?;
        let (channel, _) = self.shared.consuming.channel().await?;
        let result = topology::apply(&channel, &declarations, &self.shared.secrets).await;
        let _ = channel.close(200, "declared".into()).await;
        result.map(|()| declarations)
    }

    /// Deletes subscription `name`'s queues (with their messages, dead letters included) and
    /// its dead-letter exchange. The main exchange stays.
    pub async fn delete_subscription(&self, name: &str) -> Result<()> {
        let names = QueueNames::of(name)?;
        let secrets = &self.shared.secrets;
        let (channel, _) = self.shared.consuming.channel().await?;
        let mut queues = vec![names.queue.clone(), names.dead_letter_queue.clone()];
        queues.extend(
            self.shared
                .config
                .delays()
                .into_iter()
                .map(|d| names.delay_queue(d)),
        );
        for queue in queues {
            channel
                .queue_delete(
                    mapping::short("queue", &queue)?,
                    QueueDeleteOptions::default(),
                )
                .await
                .amqp("delete a queue", secrets)?;
        }
        channel
            .exchange_delete(
                mapping::short("exchange", &names.dead_letter_exchange)?,
                ExchangeDeleteOptions::default(),
            )
            .await
            .amqp("delete an exchange", secrets)?;
        let _ = channel.close(200, "deleted".into()).await;
        Ok(())
    }

    /// Closes both connections. Open streams end (`next()` returns `None`); publishing fails.
    pub async fn close(&self) {
        self.shared.consuming.close().await;
        self.shared.publishing.link().close().await;
    }

    /// Checks that the broker answers: opens a channel on the publishing connection
    /// (connecting first if the connection was lost) and closes it. A readiness probe's
    /// question; bound it with a timeout, as a connection attempt may take a while.
    pub async fn ping(&self) -> Result<()> {
        let (channel, _) = self.shared.publishing.link().channel().await?;
        let _ = channel.close(200, "ping".into()).await;
        Ok(())
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}
