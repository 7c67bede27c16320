//! Picking a transport by name or URL at run time, and the demo's fault injection.

use anyhow::{Result, bail};
use herald_amqp::{AmqpConfig, AmqpStream, AmqpTransport};
use herald_core::{
    DeadLetter, DeadLetters, Delivery, DeliveryStream, Envelope, Error, Page, Publisher,
    Subscriber, SubscriptionSpec,
};
use herald_kafka::{KafkaConfig, KafkaStream, KafkaTransport};
use herald_memory::{MemoryStream, MemoryTransport};

/// A broker connection on whichever transport `--transport` names.
#[derive(Clone)]
pub enum AnyTransport {
    /// The in-process broker.
    Memory(MemoryTransport),
    /// RabbitMQ.
    Amqp(AmqpTransport),
    /// Apache Kafka.
    Kafka(KafkaTransport),
}

impl AnyTransport {
    /// Connects to the transport named by `spec`: `memory`, or a broker URL
    /// (`amqp://…`, `amqps://…`, `kafka://host:port[,host:port…][/topic]`).
    pub async fn connect(spec: &str) -> Result<Self> {
        match spec {
            "memory" => Ok(AnyTransport::Memory(MemoryTransport::new())),
            url if is_amqp(url) => Ok(AnyTransport::Amqp(
                AmqpTransport::connect(amqp_config(url)?).await?,
            )),
            url if is_kafka(url) => Ok(AnyTransport::Kafka(
                KafkaTransport::connect(kafka_config(url)?).await?,
            )),
            other => bail!(
                "unknown transport {:?}: this build knows `memory`, `amqp://…`, `amqps://…` and `kafka://…`",
                herald_core::redact::redact_url(other)
            ),
        }
    }

    /// Connects like [`connect`](Self::connect), with the `[amqp]` or `[kafka]` settings of
    /// `file` (the environment's `HERALD_AMQP_*` / `HERALD_KAFKA_*` overrides win over the
    /// file's).
    pub async fn connect_with(spec: &str, file: &crate::config::FileConfig) -> Result<Self> {
        match spec {
            url if is_amqp(url) => {
                let mut config = AmqpConfig::new(url);
                config.connection_name = format!("herald {}", std::process::id());
                file.apply_amqp(&mut config)?;
                apply_env(&mut config)?;
                Ok(AnyTransport::Amqp(AmqpTransport::connect(config).await?))
            }
            url if is_kafka(url) => {
                let mut config = KafkaConfig::from_url(url)?;
                config.client_id = format!("herald-{}", std::process::id());
                file.apply_kafka(&mut config)?;
                apply_kafka_env(&mut config)?;
                Ok(AnyTransport::Kafka(KafkaTransport::connect(config).await?))
            }
            other => Self::connect(other).await,
        }
    }

    /// What to print about this transport (never a password).
    pub fn describe(&self) -> String {
        match self {
            AnyTransport::Memory(_) => "in-memory broker".to_owned(),
            AnyTransport::Amqp(t) => format!(
                "RabbitMQ {} (exchange {})",
                herald_core::redact::redact_url(&t.config().url),
                t.config().exchange
            ),
            AnyTransport::Kafka(t) => format!(
                "Kafka {} (topic {})",
                t.config().bootstrap_servers,
                t.config().topic
            ),
        }
    }

    /// Declares a subscription's queue and bindings ahead of publishing, so that nothing
    /// published before its consumer starts is unroutable.
    pub async fn declare(&self, spec: &SubscriptionSpec) -> Result<()> {
        match self {
            AnyTransport::Memory(t) => t.declare(spec),
            AnyTransport::Amqp(t) => {
                t.declare(spec).await?;
            }
            AnyTransport::Kafka(t) => {
                t.declare_subscription(&spec.name).await?;
            }
        }
        Ok(())
    }

    /// Deletes a throw-away subscription: its queues (or topics and consumer group) and what
    /// they hold. Nothing to do in memory.
    pub async fn delete_subscription(&self, name: &str) -> Result<()> {
        match self {
            AnyTransport::Memory(_) => {}
            AnyTransport::Amqp(t) => t.delete_subscription(name).await?,
            AnyTransport::Kafka(t) => t.delete_subscription(name).await?,
        }
        Ok(())
    }

    /// The dead letters of a subscription, oldest first.
    pub async fn dead_letters(&self, subscription: &str) -> Result<Vec<DeadLetter>> {
        Ok(match self {
            AnyTransport::Memory(t) => {
                t.dead_letter_queue(subscription)
                    .dead_letters(Page::ALL)
                    .await?
            }
            AnyTransport::Amqp(t) => {
                t.dead_letter_queue(subscription)?
                    .dead_letters(Page::first(10_000))
                    .await?
            }
            AnyTransport::Kafka(t) => {
                t.dead_letter_queue(subscription)?
                    .dead_letters(Page::first(10_000))
                    .await?
            }
        })
    }

    /// Checks that the broker answers (the in-memory broker always does, until closed).
    pub async fn ping(&self) -> herald_core::Result<()> {
        match self {
            AnyTransport::Memory(t) if t.is_closed() => Err(Error::transport(
                "ping",
                false,
                herald_core::error::Message("the in-memory broker is closed".into()),
            )),
            AnyTransport::Memory(_) => Ok(()),
            AnyTransport::Amqp(t) => t.ping().await,
            AnyTransport::Kafka(t) => t.ping().await,
        }
    }

    /// Closes the connection; open streams end.
    pub async fn close(&self) {
        match self {
            AnyTransport::Memory(t) => t.close(),
            AnyTransport::Amqp(t) => t.close().await,
            AnyTransport::Kafka(t) => t.close().await,
        }
    }
}

impl Publisher for AnyTransport {
    async fn publish(&self, batch: &[Envelope]) -> Vec<herald_core::Result<()>> {
        match self {
            AnyTransport::Memory(t) => t.publish(batch).await,
            AnyTransport::Amqp(t) => t.publish(batch).await,
            AnyTransport::Kafka(t) => t.publish(batch).await,
        }
    }

    fn messaging_system(&self) -> &'static str {
        match self {
            AnyTransport::Memory(t) => Publisher::messaging_system(t),
            AnyTransport::Amqp(t) => Publisher::messaging_system(t),
            AnyTransport::Kafka(t) => Publisher::messaging_system(t),
        }
    }

    fn destination<'a>(&'a self, envelope: &'a Envelope) -> &'a str {
        match self {
            AnyTransport::Memory(t) => t.destination(envelope),
            AnyTransport::Amqp(t) => t.destination(envelope),
            AnyTransport::Kafka(t) => t.destination(envelope),
        }
    }
}

/// The deliveries of an [`AnyTransport`] subscription.
pub enum AnyStream {
    /// In-memory.
    Memory(MemoryStream),
    /// RabbitMQ.
    Amqp(AmqpStream),
    /// Apache Kafka.
    Kafka(KafkaStream),
}

impl DeliveryStream for AnyStream {
    async fn next(&mut self) -> Option<herald_core::Result<Delivery>> {
        match self {
            AnyStream::Memory(s) => s.next().await,
            AnyStream::Amqp(s) => s.next().await,
            AnyStream::Kafka(s) => s.next().await,
        }
    }
}

impl Subscriber for AnyTransport {
    type Stream = AnyStream;

    async fn subscribe(&self, spec: &SubscriptionSpec) -> herald_core::Result<AnyStream> {
        match self {
            AnyTransport::Memory(t) => Ok(AnyStream::Memory(t.subscribe(spec).await?)),
            AnyTransport::Amqp(t) => Ok(AnyStream::Amqp(t.subscribe(spec).await?)),
            AnyTransport::Kafka(t) => Ok(AnyStream::Kafka(t.subscribe(spec).await?)),
        }
    }

    fn messaging_system(&self) -> &'static str {
        match self {
            AnyTransport::Memory(t) => Subscriber::messaging_system(t),
            AnyTransport::Amqp(t) => Subscriber::messaging_system(t),
            AnyTransport::Kafka(t) => Subscriber::messaging_system(t),
        }
    }
}

/// Whether `spec` names a RabbitMQ broker.
pub fn is_amqp(spec: &str) -> bool {
    spec.starts_with("amqp://") || spec.starts_with("amqps://")
}

/// Whether `spec` names a Kafka cluster.
pub fn is_kafka(spec: &str) -> bool {
    spec.starts_with("kafka://")
}

/// The Kafka settings for `url` (`kafka://host:port[,host:port…][/topic]`): the defaults,
/// with the overrides operators set in the environment (`HERALD_KAFKA_TOPIC`,
/// `HERALD_KAFKA_PARTITIONS`, `HERALD_KAFKA_REPLICATION_FACTOR`).
pub fn kafka_config(url: &str) -> Result<KafkaConfig> {
    let mut config = KafkaConfig::from_url(url)?;
    config.client_id = format!("herald-{}", std::process::id());
    apply_kafka_env(&mut config)?;
    Ok(config)
}

/// The operators' `HERALD_KAFKA_*` overrides, validated.
fn apply_kafka_env(config: &mut KafkaConfig) -> Result<()> {
    if let Ok(topic) = std::env::var("HERALD_KAFKA_TOPIC") {
        config.topic = topic;
    }
    if let Ok(n) = std::env::var("HERALD_KAFKA_PARTITIONS") {
        config.partitions = n
            .parse()
            .map_err(|_| anyhow::anyhow!("HERALD_KAFKA_PARTITIONS `{n}` is not a number"))?;
    }
    if let Ok(n) = std::env::var("HERALD_KAFKA_REPLICATION_FACTOR") {
        config.replication_factor = n.parse().map_err(|_| {
            anyhow::anyhow!("HERALD_KAFKA_REPLICATION_FACTOR `{n}` is not a number")
        })?;
    }
    config.validate()?;
    Ok(())
}

/// The AMQP settings for `url`: the defaults, with the overrides operators set in the
/// environment (`HERALD_AMQP_EXCHANGE`, `HERALD_AMQP_EXCHANGE_KIND`, `HERALD_AMQP_QUEUE_KIND`,
/// `HERALD_AMQP_CONNECTION_NAME`).
pub fn amqp_config(url: &str) -> Result<AmqpConfig> {
    let mut config = AmqpConfig::new(url);
    config.connection_name = format!("herald {}", std::process::id());
    apply_env(&mut config)?;
    Ok(config)
}

/// The operators' `HERALD_AMQP_*` overrides, validated.
fn apply_env(config: &mut AmqpConfig) -> Result<()> {
    if let Ok(exchange) = std::env::var("HERALD_AMQP_EXCHANGE") {
        config.exchange = exchange;
    }
    if let Ok(kind) = std::env::var("HERALD_AMQP_EXCHANGE_KIND") {
        config.exchange_kind = herald_amqp::ExchangeKind::parse(&kind)?;
    }
    if let Ok(kind) = std::env::var("HERALD_AMQP_QUEUE_KIND") {
        config.queue_kind = herald_amqp::QueueKind::parse(&kind)?;
    }
    if let Ok(name) = std::env::var("HERALD_AMQP_CONNECTION_NAME") {
        config.connection_name = name;
    }
    config.validate()?;
    Ok(())
}

/// A publisher that refuses a random share of messages before they reach the broker, as a
/// flaky network would (transient errors): the demo's way to show retries with backoff on
/// any transport.
#[derive(Clone)]
pub struct Flaky<P> {
    inner: P,
    failure_rate: f64,
}

impl<P> Flaky<P> {
    /// Fails each message with probability `failure_rate`.
    pub fn new(inner: P, failure_rate: f64) -> Self {
        Flaky {
            inner,
            failure_rate,
        }
    }
}

impl<P: Publisher> Publisher for Flaky<P> {
    async fn publish(&self, batch: &[Envelope]) -> Vec<herald_core::Result<()>> {
        let refused: Vec<bool> = batch
            .iter()
            .map(|_| fastrand::f64() < self.failure_rate)
            .collect();
        let passed: Vec<Envelope> = batch
            .iter()
            .zip(&refused)
            .filter(|(_, refused)| !**refused)
            .map(|(env, _)| env.clone())
            .collect();
        let mut results = self.inner.publish(&passed).await.into_iter();
        refused
            .into_iter()
            .map(|refused| {
                if refused {
                    Err(Error::transport(
                        "publish",
                        true,
                        herald_core::error::Message("injected network fault".into()),
                    ))
                } else {
                    results.next().unwrap_or_else(|| {
                        Err(Error::transport(
                            "publish",
                            true,
                            herald_core::error::Message("missing publish result".into()),
                        ))
                    })
                }
            })
            .collect()
    }

    fn messaging_system(&self) -> &'static str {
        self.inner.messaging_system()
    }

    fn destination<'a>(&'a self, envelope: &'a Envelope) -> &'a str {
        self.inner.destination(envelope)
    }
}
