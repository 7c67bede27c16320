//! The transport's settings, checked before any connection is made.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_core::{Error, Result};

/// Kafka's limit on a topic name's length.
pub const MAX_TOPIC: usize = 249;

/// librdkafka properties the transport sets itself: its guarantees rest on them, so
/// [`KafkaConfig::properties`] may not override them.
pub const OWNED_PROPERTIES: [&str; 11] = [
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "partitioner",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "transactional.id",
];

/// How a [`KafkaTransport`](crate::KafkaTransport) talks to the cluster and names its topics.
///
/// By default every event type goes to one topic ([`topic`](Self::topic)), so that events of
/// one partition key stay in order whatever their type (an order's `created` never overtakes
/// its `cancelled`). [`routes`](Self::routes) sends chosen types to other topics, which gives
/// up order between those types.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// The cluster's bootstrap servers, `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// The topic of every event type that [`routes`](Self::routes) does not name.
    pub topic: String,
    /// Event types published to another topic than [`topic`](Self::topic): type → topic.
    /// Order between events on different topics is not kept.
    pub routes: BTreeMap<String, String>,
    /// Partitions of the topics the transport declares (event topics and retry topics;
    /// dead-letter topics have one, to list their letters in order).
    pub partitions: i32,
    /// Replicas of each partition of the declared topics (3 on a production cluster; 1 for a
    /// single broker).
    pub replication_factor: i32,
    /// CloudEvents `source` of published messages.
    pub source: String,
    /// The client id the broker sees (logs, quotas).
    pub client_id: String,
    /// Most messages of one publish call awaiting their delivery report at once.
    pub in_flight: usize,
    /// How long the producer keeps trying to deliver a message before it reports it failed
    /// (librdkafka's `message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// Largest payload published or accepted, in bytes (Kafka's default `message.max.bytes`
    /// is about 1 MB, headers included).
    pub max_message_bytes: usize,
    /// Consumer session timeout: how long the group waits for a silent consumer before it
    /// gives its partitions to another.
    pub session_timeout: Duration,
    /// Further librdkafka properties for every client (security, SASL, tuning …), except
    /// those in [`OWNED_PROPERTIES`]. Values of properties named like a secret never appear
    /// in errors or logs.
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// The configuration for `bootstrap_servers`, with defaults for everything else: topic
    /// `herald.events`, 6 partitions, replication factor 1, source `herald`, 1000 messages in
    /// flight, deliveries given up after 30 s, payloads up to 1 000 000 bytes.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            topic: "herald.events".into(),
            routes: BTreeMap::new(),
            partitions: 6,
            replication_factor: 1,
            source: "herald".into(),
            client_id: "herald".into(),
            in_flight: 1000,
            delivery_timeout: Duration::from_secs(30),
            max_message_bytes: 1_000_000,
            session_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
        }
    }

    /// Reads `kafka://host:port[,host:port…][/topic]`: the bootstrap servers and, when given,
    /// the topic.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| Error::Config(format!("`{url}` is not a kafka:// URL")))?;
        let (servers, topic) = match rest.split_once('/') {
            Some((servers, topic)) => (servers, Some(topic)),
            None => (rest, None),
        };
        let mut config = KafkaConfig::new(servers);
        if let Some(topic) = topic.filter(|t| !t.is_empty()) {
            config.topic = topic.to_owned();
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::Config("bootstrap servers must not be empty".into()));
        }
        check_topic("topic", &self.topic)?;
        for (event_type, topic) in &self.routes {
            if event_type.is_empty() {
                return Err(Error::Config(
                    "a route's event type must not be empty".into(),
                ));
            }
            check_topic("route topic", topic)?;
        }
        if self.partitions < 1 {
            return Err(Error::Config("partitions must be at least 1".into()));
        }
        if self.replication_factor < 1 {
            return Err(Error::Config(
                "replication factor must be at least 1".into(),
            ));
        }
        if self.in_flight == 0 {
            return Err(Error::Config("in-flight window must be at least 1".into()));
        }
        if self.delivery_timeout < Duration::from_millis(1) {
            return Err(Error::Config("delivery timeout must be positive".into()));
        }
        if self.session_timeout < Duration::from_secs(1) {
            return Err(Error::Config("session timeout must be at least 1 s".into()));
        }
        if self.max_message_bytes == 0 {
            return Err(Error::Config("max message bytes must be positive".into()));
        }
        if self.source.is_empty() {
            return Err(Error::Config("source must not be empty".into()));
        }
        if let Some(name) = self
            .properties
            .keys()
            .find(|name| OWNED_PROPERTIES.contains(&name.as_str()))
        {
            return Err(Error::Config(format!(
                "property `{name}` is set by the transport and cannot be overridden"
            )));
        }
        Ok(())
    }

    /// The topic events of `event_type` are published to.
    pub fn topic_for(&self, event_type: &str) -> &str {
        self.routes.get(event_type).unwrap_or(&self.topic)
    }

    /// Every event topic: [`topic`](Self::topic) and the routes' topics, without repeats.
    pub fn topics(&self) -> Vec<String> {
        let mut topics = vec![self.topic.clone()];
        for topic in self.routes.values() {
            if !topics.contains(topic) {
                topics.push(topic.clone());
            }
        }
        topics
    }

    /// The event topics subscription `event_types` reads (all of them for every type).
    pub fn topics_of(&self, event_types: &[String]) -> Vec<String> {
        if event_types.is_empty() {
            return self.topics();
        }
        let mut topics = Vec::new();
        for event_type in event_types {
            let topic = self.topic_for(event_type).to_owned();
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        topics
    }
}

/// The topics of one subscription besides the event topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionTopics {
    /// The consumer group (the subscription's name).
    pub group: String,
    /// Where its retried and deferred messages wait: `<topic>.<name>.retry`.
    pub retry: String,
    /// Its dead letters: `<topic>.<name>.dead-letter`.
    pub dead_letter: String,
}

impl SubscriptionTopics {
    /// The topics of subscription `name` under `config`.
    pub fn of(config: &KafkaConfig, name: &str) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::Config(
                "a subscription name must not be empty".into(),
            ));
        }
        let topics = SubscriptionTopics {
            group: name.to_owned(),
            retry: format!("{}.{name}.retry", config.topic),
            dead_letter: format!("{}.{name}.dead-letter", config.topic),
        };
        check_topic("retry topic", &topics.retry)?;
        check_topic("dead-letter topic", &topics.dead_letter)?;
        Ok(topics)
    }
}

/// A legal Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(what: &str, name: &str) -> Result<()> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::Config(format!(
            "{what} `{name}` is not a topic name"
        )));
    }
    if name.len() > MAX_TOPIC {
        return Err(Error::Config(format!(
            "{what} `{name}` is {} bytes, over Kafka's limit of {MAX_TOPIC}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| !legal(*c)) {
        return Err(Error::Config(format!(
            "{what} `{name}` holds `{c}`; topic names take letters, digits, `.`, `_` and `-`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        KafkaConfig::new("127.0.0.1:9092")
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_url_names_servers_and_topic() {
        let config = KafkaConfig::from_url("kafka://a:9092,b:9092/orders").expect("valid");
        assert_eq!(config.bootstrap_servers, "a:9092,b:9092");
        assert_eq!(config.topic, "orders");
        let config = KafkaConfig::from_url("kafka://a:9092").expect("valid");
        assert_eq!(config.topic, "herald.events");
        assert!(KafkaConfig::from_url("amqp://a").is_err());
    }

    #[test]
    fn invalid_settings_are_refused() {
        let base = KafkaConfig::new("127.0.0.1:9092");
        let cases = [
            KafkaConfig {
                topic: "has space".into(),
                ..base.clone()
            },
            KafkaConfig {
                topic: "x".repeat(MAX_TOPIC + 1),
                ..base.clone()
            },
            KafkaConfig {
                partitions: 0,
                ..base.clone()
            },
            KafkaConfig {
                replication_factor: 0,
                ..base.clone()
            },
            KafkaConfig {
                in_flight: 0,
                ..base.clone()
            },
            KafkaConfig {
                bootstrap_servers: " ".into(),
                ..base.clone()
            },
            KafkaConfig {
                properties: [("enable.idempotence".to_owned(), "false".to_owned())].into(),
                ..base.clone()
            },
        ];
        for config in cases {
            assert!(
                matches!(config.validate(), Err(Error::Config(_))),
                "{config:?} must be refused"
            );
        }
    }

    #[test]
    fn routes_pick_topics() {
        let mut config = KafkaConfig::new("k:9092");
        config.routes.insert("audit.logged".into(), "audit".into());
        assert_eq!(config.topic_for("orders.created"), "herald.events");
        assert_eq!(config.topic_for("audit.logged"), "audit");
        assert_eq!(config.topics(), vec!["herald.events", "audit"]);
        assert_eq!(config.topics_of(&["audit.logged".into()]), vec!["audit"]);
    }

    #[test]
    fn subscription_topics_are_named_after_it() {
        let config = KafkaConfig::new("k:9092");
        let topics = SubscriptionTopics::of(&config, "billing").expect("valid");
        assert_eq!(topics.retry, "herald.events.billing.retry");
        assert_eq!(topics.dead_letter, "herald.events.billing.dead-letter");
        assert!(SubscriptionTopics::of(&config, "bad/name").is_err());
    }
}
