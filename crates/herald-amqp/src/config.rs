//! What an [`AmqpTransport`](crate::AmqpTransport) connects to and how it lays out its
//! topology.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use herald_core::{Backoff, Error, Result};

/// The kind of the main exchange, which decides how event types route to queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing key = event type; a subscription binds one key per event type, or `#` for every
    /// type (the default).
    #[default]
    Topic,
    /// Routing key = event type, exact match; a subscription must list its event types.
    Direct,
    /// Every queue receives every message; a subscription must not list event types.
    Fanout,
    /// Routes on the `cloudEvents:type` header; routing keys are ignored.
    Headers,
}

impl ExchangeKind {
    /// The AMQP name of the kind (`topic`, `direct`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Topic => "topic",
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }

    /// Parses `topic`, `direct`, `fanout` or `headers`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "topic" => Ok(ExchangeKind::Topic),
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(Error::Config(format!(
                "unknown exchange kind `{other}` (expected topic, direct, fanout or headers)"
            ))),
        }
    }
}

/// The kind of the queues a subscription declares (its queue, dead-letter queue and delay
/// queues).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueKind {
    /// Classic durable queues (the default; one node holds them).
    #[default]
    Classic,
    /// Quorum queues: replicated with Raft across a cluster, for availability.
    Quorum,
}

impl QueueKind {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
        }
    }

    /// Parses `classic` or `quorum`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueKind::Classic),
            "quorum" => Ok(QueueKind::Quorum),
            other => Err(Error::Config(format!(
                "unknown queue kind `{other}` (expected classic or quorum)"
            ))),
        }
    }
}

/// TLS settings for `amqps://` URLs. The system's trust store is always used; these add to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmqpTls {
    /// Extra CA certificates (PEM) to trust, e.g. a private CA that signed the broker's
    /// certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs [`client_key_file`](Self::client_key_file).
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PKCS#8 PEM) for mutual TLS.
    pub client_key_file: Option<PathBuf>,
}

/// Configuration of an [`AmqpTransport`](crate::AmqpTransport).
///
/// Every subscription `name` declares, next to the main exchange: the durable queue `name`
/// bound to the exchange, the dead-letter exchange `name.dlx` and its queue `name.dlq`, and
/// one delay queue `name.retry.<delay>` per entry of [`retry_delays`](Self::retry_delays).
#[derive(Clone, PartialEq)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://…` (TLS). The vhost is
    /// percent-encoded (`%2f` is `/`, the default when the path is absent). The password is
    /// never printed.
    pub url: String,
    /// The exchange events are published to (default `herald`), declared durable.
    pub exchange: String,
    /// The exchange's kind (default topic).
    pub exchange_kind: ExchangeKind,
    /// Routing keys by event type, overriding the default (the event type itself).
    pub routing_keys: BTreeMap<String, String>,
    /// The kind of the queues subscriptions declare (default classic).
    pub queue_kind: QueueKind,
    /// For quorum queues: deliveries of one message (crashed consumers included) after which
    /// the broker dead-letters it. `None` leaves the broker's default.
    pub delivery_limit: Option<u32>,
    /// Acknowledgements gathered before they are sent as one `basic.ack` with `multiple`
    /// (default 64; at most half the subscription's prefetch is used).
    pub ack_batch: usize,
    /// Longest time an acknowledgement waits to be sent (default 10 ms).
    pub ack_interval: Duration,
    /// Publishes awaiting their broker confirmation at once, per connection (default 256).
    pub confirm_window: usize,
    /// The delays of the retry queues (default 1 s, 5 s, 30 s, 2 min, 10 min, 30 min). A retry
    /// waits in the shortest delay queue not shorter than asked for; longer waits go round the
    /// longest queue again until due. Never empty.
    pub retry_delays: Vec<Duration>,
    /// The connection name shown in the management UI (default `herald`); the publishing and
    /// consuming connections add ` publisher` and ` subscriber`.
    pub connection_name: String,
    /// The heartbeat interval asked of the broker (default 30 s); a `heartbeat=` in the URL
    /// wins. Zero disables heartbeats.
    pub heartbeat: Duration,
    /// How long one connection attempt may take (default 10 s).
    pub connect_timeout: Duration,
    /// Waits between reconnection attempts (default 100 ms doubling to 10 s, jittered).
    pub reconnect: Backoff,
    /// The CloudEvents `source` written on every message (default `/herald`).
    pub source: String,
    /// Largest payload published or accepted (default 16 MiB).
    pub max_message_bytes: usize,
    /// Largest total size of a message's header names and values (default 64 KiB; the broker's
    /// frame size bounds it too).
    pub max_header_bytes: usize,
    /// TLS settings for `amqps://`.
    pub tls: AmqpTls,
    /// Ephemeral topology, for tests and throw-away environments: queues are deleted by the
    /// broker after being unused this long, and exchanges once their last binding is gone.
    /// `None` (the default) for anything whose messages matter.
    pub expires: Option<Duration>,
    /// Declare consumer queues with `x-single-active-consumer`: of several consumers on a
    /// queue one receives at a time and another takes over when it goes, so that per-key
    /// order holds with standby instances (default `false`: competing consumers, which share
    /// the load but cannot keep per-key order). Fixed when the queue is first declared.
    pub single_active_consumer: bool,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            exchange: "herald".to_owned(),
            exchange_kind: ExchangeKind::Topic,
            routing_keys: BTreeMap::new(),
            queue_kind: QueueKind::Classic,
            delivery_limit: None,
            ack_batch: 64,
            ack_interval: Duration::from_millis(10),
            confirm_window: 256,
            retry_delays: [1, 5, 30, 120, 600, 1800]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            connection_name: "herald".to_owned(),
            heartbeat: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
                multiplier: 2.0,
                jitter: 0.5,
            },
            source: "/herald".to_owned(),
            max_message_bytes: 16 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            tls: AmqpTls::default(),
            expires: None,
            single_active_consumer: false,
        }
    }
}

/// Longest AMQP short string: exchange, queue and header names, routing keys.
pub(crate) const MAX_NAME: usize = 255;

impl AmqpConfig {
    /// The defaults, connecting to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            ..AmqpConfig::default()
        }
    }

    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err(Error::Config(format!(
                "`{}` is not an amqp:// or amqps:// URL",
                herald_core::redact::redact_url(&self.url)
            )));
        }
        check_name("exchange", &self.exchange)?;
        // `name.dlx` and friends must fit too; the longest suffix is checked per subscription.
        for (event_type, key) in &self.routing_keys {
            check_name(&format!("routing key of `{event_type}`"), key)?;
        }
        if self.retry_delays.is_empty() {
            return Err(Error::Config("retry delays must not be empty".into()));
        }
        if self.retry_delays.iter().any(|d| d.is_zero()) {
            return Err(Error::Config("retry delays must be positive".into()));
        }
        if self.confirm_window == 0 {
            return Err(Error::Config("confirm window must be at least 1".into()));
        }
        if self.ack_batch == 0 {
            return Err(Error::Config("ack batch must be at least 1".into()));
        }
        self.reconnect
            .validate()
            .map_err(|error| Error::Config(format!("reconnect {error}")))?;
        if self.tls.client_cert_file.is_some() != self.tls.client_key_file.is_some() {
            return Err(Error::Config(
                "a TLS client certificate needs its key, and a key its certificate".into(),
            ));
        }
        if self.delivery_limit.is_some() && self.queue_kind != QueueKind::Quorum {
            return Err(Error::Config(
                "a delivery limit needs quorum queues (queue kind quorum)".into(),
            ));
        }
        Ok(())
    }

    /// The routing key of `event_type`: its override, or the type itself.
    pub fn routing_key<'a>(&'a self, event_type: &'a str) -> &'a str {
        self.routing_keys
            .get(event_type)
            .map_or(event_type, String::as_str)
    }

    /// The retry delays, shortest first, without duplicates.
    pub(crate) fn delays(&self) -> Vec<Duration> {
        let mut delays = self.retry_delays.clone();
        delays.sort();
        delays.dedup();
        delays
    }

    /// The delay queue a retry of `delay` waits in: the shortest not shorter than `delay`,
    /// else the longest.
    pub(crate) fn delay_level(&self, delay: Duration) -> Duration {
        let delays = self.delays();
        delays
            .iter()
            .copied()
            .find(|d| *d >= delay)
            .or_else(|| delays.last().copied())
            .unwrap_or(delay)
    }
}

impl AmqpConfig {
    /// How long a message asked to come back after `requested` really stays away: the delay
    /// queue it waits in is the shortest not shorter than asked for, and a longer wait goes
    /// round the longest queue until what is left fits a queue (see [`delay_hop`]). Saturates
    /// at [`Duration::MAX`].
    ///
    /// [`delay_hop`]: Self::delay_hop
    pub fn effective_delay(&self, requested: Duration) -> Duration {
        if requested.is_zero() {
            return Duration::ZERO;
        }
        let Some(longest) = self.delays().last().copied().filter(|d| !d.is_zero()) else {
            return requested;
        };
        if requested <= longest {
            return self.delay_level(requested);
        }
        // Whole rounds of the longest queue while more than it is left, then one hop.
        let (asked, round) = (requested.as_nanos(), longest.as_nanos());
        let rounds = (asked - round).div_ceil(round);
        let left = asked - rounds * round;
        let last = self.delay_level(Duration::from_nanos(
            u64::try_from(left).unwrap_or(u64::MAX),
        ));
        let total = rounds.saturating_mul(round).saturating_add(last.as_nanos());
        u64::try_from(total / 1_000_000_000).map_or(Duration::MAX, |secs| {
            Duration::new(secs, u32::try_from(total % 1_000_000_000).unwrap_or(0))
        })
    }

    /// Where a message that must stay away `requested` waits first: the delay queue's delay,
    /// and what will be left to wait once it comes out of it.
    pub(crate) fn delay_hop(&self, requested: Duration) -> (Duration, Duration) {
        let level = self.delay_level(requested);
        (level, requested.saturating_sub(level))
    }
}

/// The names of a subscription's queues and exchanges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// The consumer queue (the subscription's name).
    pub queue: String,
    /// Its dead-letter exchange.
    pub dead_letter_exchange: String,
    /// Its dead-letter queue.
    pub dead_letter_queue: String,
}

impl QueueNames {
    /// The names for subscription `name`, checked against AMQP's length limit.
    pub fn of(name: &str) -> Result<Self> {
        let names = QueueNames {
            queue: name.to_owned(),
            dead_letter_exchange: format!("{name}.dlx"),
            dead_letter_queue: format!("{name}.dlq"),
        };
        check_name("subscription", name)?;
        // The longest derived name is a delay queue's: `name.retry.` plus up to 20 digits + `ms`.
        check_name("subscription", &format!("{name}.retry.{:022}", 0))?;
        Ok(names)
    }

    /// The delay queue for retries of `delay`.
    pub fn delay_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.queue, delay.as_millis())
    }
}

/// `Debug` with the URL's password replaced by `***`: configurations end up in logs.
impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &herald_core::redact::redact_url(&self.url))
            .field("exchange", &self.exchange)
            .field("exchange_kind", &self.exchange_kind)
            .field("routing_keys", &self.routing_keys)
            .field("queue_kind", &self.queue_kind)
            .field("delivery_limit", &self.delivery_limit)
            .field("ack_batch", &self.ack_batch)
            .field("ack_interval", &self.ack_interval)
            .field("confirm_window", &self.confirm_window)
            .field("retry_delays", &self.retry_delays)
            .field("connection_name", &self.connection_name)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("source", &self.source)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("tls", &self.tls)
            .field("expires", &self.expires)
            .field("single_active_consumer", &self.single_active_consumer)
            .finish()
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Config(format!("{what} name must not be empty")));
    }
    if name.len() > MAX_NAME {
        return Err(Error::Config(format!(
            "{what} name `{name}` (with its derived names) is longer than {MAX_NAME} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::Config(format!(
            "{what} name {name:?} has a control character"
        )));
    }
    if name.starts_with("amq.") {
        return Err(Error::Config(format!(
            "{what} name `{name}` uses the broker-reserved prefix `amq.`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        AmqpConfig::default().validate().unwrap();
    }

    #[test]
    fn refuses_inconsistent_settings() {
        let bad = |f: fn(&mut AmqpConfig)| {
            let mut config = AmqpConfig::default();
            f(&mut config);
            assert!(matches!(config.validate(), Err(Error::Config(_))));
        };
        bad(|c| c.url = "http://example".into());
        bad(|c| c.retry_delays.clear());
        bad(|c| c.retry_delays = vec![Duration::ZERO]);
        bad(|c| c.reconnect.jitter = f64::NAN);
        bad(|c| c.confirm_window = 0);
        bad(|c| c.exchange = "amq.topic".into());
        bad(|c| c.exchange = "x".repeat(256));
        bad(|c| c.delivery_limit = Some(3));
        bad(|c| c.tls.client_key_file = Some("key.pem".into()));
    }

    #[test]
    fn the_url_password_stays_out_of_config_errors() {
        let config = AmqpConfig::new("ampq://app:hunter2@host/");
        let err = config.validate().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn retries_wait_in_the_shortest_long_enough_queue() {
        let config = AmqpConfig {
            retry_delays: vec![Duration::from_secs(5), Duration::from_secs(1)],
            ..AmqpConfig::default()
        };
        assert_eq!(
            config.delay_level(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            config.delay_level(Duration::from_secs(2)),
            Duration::from_secs(5)
        );
        assert_eq!(
            config.delay_level(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_effective_delay_is_the_time_spent_in_the_delay_queues() {
        let config = AmqpConfig {
            retry_delays: vec![Duration::from_secs(5), Duration::from_secs(1)],
            ..AmqpConfig::default()
        };
        let secs = Duration::from_secs;
        assert_eq!(config.effective_delay(Duration::ZERO), Duration::ZERO);
        assert_eq!(config.effective_delay(Duration::from_millis(10)), secs(1));
        assert_eq!(config.effective_delay(secs(2)), secs(5));
        assert_eq!(config.effective_delay(secs(5)), secs(5));
        assert_eq!(config.effective_delay(secs(6)), secs(6), "5 s, then 1 s");
        assert_eq!(config.effective_delay(secs(7)), secs(10), "5 s, then 5 s");
        assert_eq!(config.effective_delay(secs(10)), secs(10));
        assert_eq!(config.effective_delay(secs(11)), secs(11));
        assert_eq!(config.effective_delay(Duration::MAX), Duration::MAX);
        assert_eq!(config.delay_hop(secs(7)), (secs(5), secs(2)));
        assert_eq!(config.delay_hop(secs(2)), (secs(5), Duration::ZERO));
        // The defaults' fourth retry: 270 s asked waits in the 600 s queue.
        let defaults = AmqpConfig::default();
        assert_eq!(defaults.effective_delay(secs(270)), secs(600));
    }

    #[test]
    fn routing_keys_default_to_the_event_type() {
        let mut config = AmqpConfig::default();
        config
            .routing_keys
            .insert("ordering.order_created".into(), "orders.created".into());
        assert_eq!(
            config.routing_key("ordering.order_created"),
            "orders.created"
        );
        assert_eq!(config.routing_key("billing.paid"), "billing.paid");
    }

    #[test]
    fn derived_names_are_checked() {
        let names = QueueNames::of("billing").unwrap();
        assert_eq!(names.dead_letter_queue, "billing.dlq");
        assert_eq!(
            names.delay_queue(Duration::from_secs(5)),
            "billing.retry.5000ms"
        );
        assert!(QueueNames::of(&"q".repeat(240)).is_err());
        assert!(QueueNames::of("").is_err());
    }
}
