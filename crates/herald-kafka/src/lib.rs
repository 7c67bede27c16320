#![doc = include_str!("../README.md")]

mod config;
mod dead_letters;
mod error;
#[cfg(test)]
mod fatal_tests;
pub mod mapping;
mod publisher;
mod settle;
mod state;
mod subscriber;
pub mod topology;

use std::fmt;
use std::sync::Arc;

use herald_core::{Envelope, Publisher, Result, Subscriber, SubscriptionSpec};
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

pub use crate::config::{KafkaConfig, MAX_TOPIC, OWNED_PROPERTIES, SubscriptionTopics};
pub use crate::dead_letters::KafkaDeadLetterQueue;
pub use crate::publisher::producer_config;
pub use crate::subscriber::KafkaStream;
pub use crate::topology::Declaration;

use crate::error::{Secrets, kafka};
use crate::publisher::Producing;

/// `messaging.system` in traces (OpenTelemetry's messaging conventions).
const MESSAGING_SYSTEM: &str = "kafka";

/// An Apache Kafka transport: a [`Publisher`] for relays and a [`Subscriber`] for consumers.
///
/// One idempotent producer serves every clone (rebuilt if librdkafka declares it fatally
/// failed); each subscribed stream is a consumer-group member of its own. Cheap to clone.
#[derive(Clone)]
pub struct KafkaTransport {
    shared: Arc<Shared>,
}

/// What every clone, stream and delivery of one transport shares.
pub(crate) struct Shared {
    pub(crate) config: Arc<KafkaConfig>,
    pub(crate) secrets: Secrets,
    pub(crate) producing: Producing,
    admin: AdminClient<DefaultClientContext>,
}

impl Shared {
    /// Declares the event topics and the topics of one subscription, and starts the
    /// subscription's group at the end of the event topics' partitions it has no offset for,
    /// as a new queue starts empty: messages published from now on wait for the group.
    pub(crate) async fn declare_subscription(
        self: &Arc<Self>,
        topics: &SubscriptionTopics,
    ) -> Result<()> {
        let mut declarations = topology::plan(&self.config);
        declarations.extend(topology::plan_subscription(&self.config, topics));
        topology::apply(&self.admin, &declarations, &self.secrets).await?;
        let shared = Arc::clone(self);
        let group = topics.group.clone();
        tokio::task::spawn_blocking(move || topology::start_at_end(&shared, &group))
            .await
            .map_err(|e| error::other("declare a subscription", true, e.to_string()))?
    }
}

impl fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("bootstrap_servers", &self.shared.config.bootstrap_servers)
            .field("topic", &self.shared.config.topic)
            .finish_non_exhaustive()
    }
}

/// The settings of every client of the transport: servers, client id and the configured
/// extra properties.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", &config.client_id);
    for (name, value) in &config.properties {
        client.set(name, value);
    }
    client
}

impl KafkaTransport {
    /// A transport configured by `config` that declares its event topics now, so that a
    /// wrong address shows at start-up.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let transport = Self::lazy(config)?;
        transport.declare().await?;
        Ok(transport)
    }

    /// A transport configured by `config` that talks to the cluster on first use (librdkafka
    /// connects in the background and reconnects by itself).
    pub fn lazy(config: KafkaConfig) -> Result<Self> {
        config.validate()?;
        let secrets = Secrets::of_properties(&config.properties);
        let admin = client_config(&config)
            .create()
            .map_err(|e| kafka("create an admin client", &e, &secrets))?;
        let config = Arc::new(config);
        let producing = Producing::new(Arc::clone(&config), secrets.clone())?;
        Ok(KafkaTransport {
            shared: Arc::new(Shared {
                config,
                secrets,
                producing,
                admin,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }

    /// Declares the event topics (see [`topology::plan`]); idempotent. Returns what was
    /// declared.
    pub async fn declare(&self) -> Result<Vec<Declaration>> {
        let declarations = topology::plan(&self.shared.config);
        topology::apply(&self.shared.admin, &declarations, &self.shared.secrets).await?;
        Ok(declarations)
    }

    /// Declares the event topics and subscription `name`'s retry and dead-letter topics
    /// (see [`topology::plan_subscription`]); idempotent. Returns what was declared.
    pub async fn declare_subscription(&self, name: &str) -> Result<Vec<Declaration>> {
        let topics = SubscriptionTopics::of(&self.shared.config, name)?;
        self.shared.declare_subscription(&topics).await?;
        let mut declarations = topology::plan(&self.shared.config);
        declarations.extend(topology::plan_subscription(&self.shared.config, &topics));
        Ok(declarations)
    }

    /// Deletes subscription `name`'s retry and dead-letter topics (with their messages) and
    /// its consumer group (with its committed offsets); the event topics stay. For
    /// throw-away subscriptions (tests, demos): a group with members still connected is
    /// refused by the broker.
    pub async fn delete_subscription(&self, name: &str) -> Result<()> {
        let topics = SubscriptionTopics::of(&self.shared.config, name)?;
        topology::remove_subscription(&self.shared.admin, &topics, &self.shared.secrets).await
    }

    /// Waits (up to the delivery timeout) until the producer delivered what it holds, so
    /// that a program that exits next loses nothing it published. Streams end when dropped.
    pub async fn close(&self) {
        self.shared.producing.flush().await;
    }

    /// Checks that the cluster answers: reads its metadata, waiting up to 2 s.
    pub async fn ping(&self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            shared
                .admin
                .inner()
                .fetch_metadata(None, std::time::Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| kafka("read metadata", &e, &shared.secrets))
        })
        .await
        .map_err(|e| error::other("ping", true, e.to_string()))?
    }

    /// The dead letters of subscription `name`.
    pub fn dead_letter_queue(&self, name: &str) -> Result<KafkaDeadLetterQueue> {
        let topics = SubscriptionTopics::of(&self.shared.config, name)?;
        Ok(KafkaDeadLetterQueue::new(Arc::clone(&self.shared), topics))
    }
}

impl Publisher for KafkaTransport {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        self.shared.producing.publish(batch).await
    }

    fn messaging_system(&self) -> &'static str {
        MESSAGING_SYSTEM
    }

    /// The event's topic: its route, or the outbox's topic.
    fn destination<'a>(&'a self, envelope: &'a Envelope) -> &'a str {
        self.shared.config.topic_for(&envelope.event_type)
    }
}

impl Subscriber for KafkaTransport {
    type Stream = KafkaStream;

    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<KafkaStream> {
        subscriber::open(Arc::clone(&self.shared), spec).await
    }

    fn messaging_system(&self) -> &'static str {
        MESSAGING_SYSTEM
    }
}
