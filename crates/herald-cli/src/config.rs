//! `herald relay --config herald.toml` and `herald config check`: the relay's settings for
//! deployments, in a file.
//!
//! The file holds what the library's configurations hold (the relay's batches, lease, attempts,
//! backoff and retention; RabbitMQ's exchange and routing keys; Kafka's topics, routes,
//! partitions and producer settings) and the operations endpoints.
//! Connection URLs are not in it: they carry passwords, and come from `--database` /
//! `--transport` or `HERALD_DATABASE_URL` / `HERALD_TRANSPORT`. A flag given on the command
//! line wins over the file. Unknown keys are errors that name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use herald_core::{Backoff, Retention};
use herald_relay::RelayConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration file. Every key is optional; what is left out keeps its default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The relay's settings.
    #[serde(default)]
    pub relay: RelaySection,
    /// RabbitMQ's settings (used with an `amqp://` transport).
    #[serde(default)]
    pub amqp: AmqpSection,
    /// Kafka's settings (used with a `kafka://` transport).
    #[serde(default)]
    pub kafka: KafkaSection,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub operations: OperationsSection,
}

/// `[relay]`: [`RelayConfig`]'s fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    pub instances: Option<usize>,
    pub batch_size: Option<usize>,
    pub lease: Option<Secs>,
    pub publish_timeout: Option<Secs>,
    pub poll_interval: Option<Secs>,
    pub max_attempts: Option<u32>,
    pub backoff: Option<BackoffSection>,
    pub store_backoff: Option<BackoffSection>,
    pub retention: Option<RetentionSection>,
}

/// A [`Backoff`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSection {
    pub initial: Secs,
    pub max: Secs,
    pub multiplier: f64,
    pub jitter: f64,
}

/// A [`Retention`]; `enabled = false` leaves the archive alone.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub keep: Option<Secs>,
    pub every: Option<Secs>,
    pub batch: Option<usize>,
}

fn yes() -> bool {
    true
}

/// `[amqp]`: the publishing side of `herald_amqp::AmqpConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    pub exchange: Option<String>,
    pub exchange_kind: Option<String>,
    pub routing_keys: Option<BTreeMap<String, String>>,
    pub connection_name: Option<String>,
    pub confirm_window: Option<usize>,
    pub heartbeat: Option<Secs>,
    pub connect_timeout: Option<Secs>,
    pub source: Option<String>,
}

/// `[kafka]`: `herald_kafka::KafkaConfig`'s fields but the bootstrap servers (they come with
/// the transport's URL). `properties` are further librdkafka properties; those the transport
/// owns (idempotence, acks, partitioner …) are refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    pub topic: Option<String>,
    pub routes: Option<BTreeMap<String, String>>,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    pub source: Option<String>,
    pub client_id: Option<String>,
    pub in_flight: Option<usize>,
    pub delivery_timeout: Option<Secs>,
    pub max_message_bytes: Option<usize>,
    pub session_timeout: Option<Secs>,
    pub properties: Option<BTreeMap<String, String>>,
}

/// `[operations]`: what `herald relay` serves.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperationsSection {
    pub metrics_addr: Option<SocketAddr>,
    pub health_addr: Option<SocketAddr>,
    pub stats_interval: Option<Secs>,
}

/// A duration written as `500ms`, `30s`, `5m`, `2h` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::parse_duration(&text)
            .map(Secs)
            .map_err(|error| serde::de::Error::custom(format!("{error:#}")))
    }
}

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let text = if d.subsec_millis() != 0 || d.is_zero() {
            format!("{}ms", d.as_millis())
        } else if d.as_secs().is_multiple_of(86_400) {
            format!("{}d", d.as_secs() / 86_400)
        } else if d.as_secs().is_multiple_of(3600) {
            format!("{}h", d.as_secs() / 3600)
        } else if d.as_secs().is_multiple_of(60) {
            format!("{}m", d.as_secs() / 60)
        } else {
            format!("{}s", d.as_secs())
        };
        serializer.serialize_str(&text)
    }
}

impl From<&BackoffSection> for Backoff {
    fn from(b: &BackoffSection) -> Self {
        Backoff {
            initial: b.initial.0,
            max: b.max.0,
            multiplier: b.multiplier,
            jitter: b.jitter,
        }
    }
}

impl FileConfig {
    /// Reads and parses `path` (a TOML file).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("{} is not a valid configuration", path.display()))
    }

    /// Parses a configuration file's text.
    pub fn parse(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The relay's configuration: the defaults, with what the file sets.
    pub fn relay_config(&self) -> Result<RelayConfig> {
        let r = &self.relay;
        let mut config = RelayConfig::default();
        if let Some(n) = r.batch_size {
            config.batch_size = n;
        }
        if let Some(d) = r.lease {
            config.lease = d.0;
        }
        if let Some(d) = r.publish_timeout {
            config.publish_timeout = d.0;
        }
        if let Some(d) = r.poll_interval {
            config.poll_interval = d.0;
        }
        if let Some(n) = r.max_attempts {
            config.max_attempts = n;
        }
        if let Some(b) = &r.backoff {
            config.backoff = b.into();
        }
        if let Some(b) = &r.store_backoff {
            config.store_backoff = b.into();
        }
        if let Some(section) = &r.retention {
            config.retention = if section.enabled {
                let default = RelayConfig::default().retention.unwrap_or(Retention {
                    keep: Duration::from_secs(7 * 86_400),
                    every: Duration::from_secs(60),
                    batch: 10_000,
                });
                Some(Retention {
                    keep: section.keep.map_or(default.keep, |d| d.0),
                    every: section.every.map_or(default.every, |d| d.0),
                    batch: section.batch.unwrap_or(default.batch),
                })
            } else {
                None
            };
        }
        config.validate().context("[relay]")?;
        Ok(config)
    }

    /// `config` with what the file's `[amqp]` section sets.
    pub fn apply_amqp(&self, config: &mut herald_amqp::AmqpConfig) -> Result<()> {
        let a = &self.amqp;
        if let Some(exchange) = &a.exchange {
            config.exchange = exchange.clone();
        }
        if let Some(kind) = &a.exchange_kind {
            config.exchange_kind =
                herald_amqp::ExchangeKind::parse(kind).context("[amqp] exchange_kind")?;
        }
        if let Some(keys) = &a.routing_keys {
            config.routing_keys = keys.clone();
        }
        if let Some(name) = &a.connection_name {
            config.connection_name = name.clone();
        }
        if let Some(n) = a.confirm_window {
            config.confirm_window = n;
        }
        if let Some(d) = a.heartbeat {
            config.heartbeat = d.0;
        }
        if let Some(d) = a.connect_timeout {
            config.connect_timeout = d.0;
        }
        if let Some(source) = &a.source {
            config.source = source.clone();
        }
        config.validate().context("[amqp]")?;
        Ok(())
    }

    /// The file with the values of secret-looking Kafka properties (`…password…`,
    /// `…secret…`, `….pem`) replaced by `***`, to print.
    pub fn redacted(&self) -> Self {
        let mut out = self.clone();
        if let Some(properties) = &mut out.kafka.properties {
            for (name, value) in properties.iter_mut() {
                if name.contains("password") || name.contains("secret") || name.ends_with(".pem") {
                    *value = "***".to_owned();
                }
            }
        }
        out
    }

    /// `config` with what the file's `[kafka]` section sets.
    pub fn apply_kafka(&self, config: &mut herald_kafka::KafkaConfig) -> Result<()> {
        let k = &self.kafka;
        if let Some(topic) = &k.topic {
            config.topic = topic.clone();
        }
        if let Some(routes) = &k.routes {
            config.routes = routes.clone();
        }
        if let Some(n) = k.partitions {
            config.partitions = n;
        }
        if let Some(n) = k.replication_factor {
            config.replication_factor = n;
        }
        if let Some(source) = &k.source {
            config.source = source.clone();
        }
        if let Some(id) = &k.client_id {
            config.client_id = id.clone();
        }
        if let Some(n) = k.in_flight {
            config.in_flight = n;
        }
        if let Some(d) = k.delivery_timeout {
            config.delivery_timeout = d.0;
        }
        if let Some(n) = k.max_message_bytes {
            config.max_message_bytes = n;
        }
        if let Some(d) = k.session_timeout {
            config.session_timeout = d.0;
        }
        if let Some(properties) = &k.properties {
            config.properties.extend(properties.clone());
        }
        config.validate().context("[kafka]")?;
        Ok(())
    }

    /// Checks every section, as the relay would use it.
    pub fn check(&self) -> Result<()> {
        self.relay_config()?;
        self.apply_amqp(&mut herald_amqp::AmqpConfig::new("amqp://localhost"))?;
        self.apply_kafka(&mut herald_kafka::KafkaConfig::new("localhost:9092"))?;
        if self.relay.instances == Some(0) {
            anyhow::bail!("[relay] instances must be at least 1");
        }
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file; with `--print`, print it as the relay reads it.
    Check {
        /// The file (TOML).
        file: PathBuf,
        /// Print the file back, normalised (durations in their largest whole unit; the values
        /// of secret-looking Kafka properties as `***`).
        #[arg(long)]
        print: bool,
    },
}

pub fn run(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Check { file, print } => {
            let config = FileConfig::load(&file)?;
            config
                .check()
                .with_context(|| format!("{} is not a valid configuration", file.display()))?;
            if print {
                print!("{}", toml::to_string(&config.redacted())?);
            } else {
                println!("{}: ok", file.display());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let error = FileConfig::parse("[relay]\nbatch_sise = 5\n").unwrap_err();
        assert!(format!("{error:#}").contains("batch_sise"), "{error:#}");
    }

    #[test]
    fn a_bad_duration_names_its_key_and_value() {
        let error = FileConfig::parse("[relay]\nlease = \"30 parsecs\"\n").unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("lease") && text.contains("30 parsecs"),
            "{text}"
        );
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        for (text, secs) in [
            ("500ms", 0.5),
            ("30s", 30.0),
            ("5m", 300.0),
            ("7d", 604_800.0),
        ] {
            let d = crate::parse_duration(text).unwrap();
            assert_eq!(d.as_secs_f64(), secs);
            let printed = toml::to_string(&OperationsSection {
                stats_interval: Some(Secs(d)),
                ..OperationsSection::default()
            })
            .unwrap();
            assert_eq!(printed.trim(), format!("stats_interval = \"{text}\""));
        }
    }
}
