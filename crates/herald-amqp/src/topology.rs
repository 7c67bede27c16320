//! The broker objects Herald declares, derived from the configuration and each subscription,
//! and declared idempotently (declaring what exists with the same arguments changes nothing).
//!
//! For a subscription `billing` on exchange `herald`:
//!
//! ```text
//! herald (topic) ──rk = event type──▶ billing ──reject / max attempts──▶ billing.dlx (fanout) ──▶ billing.dlq
//!                                       ▲   └──retry──▶ billing.retry.<delay>ms (x-message-ttl)
//!                                       └──────────── expires, dead-lettered via "" ─────┘
//! ```
//!
//! A message that comes back from a delay queue (a retry, or a deferral behind an earlier
//! message of its key) carries the priority [`RETURN_PRIORITY`], and a classic consumer queue is
//! declared with `x-max-priority` 1: it goes ahead of the queue's backlog, so it arrives when it
//! is due, not after everything published meanwhile, and the key it holds is held no longer
//! than needed. (Quorum queues take message priorities from RabbitMQ 3.12 on, two levels, of
//! which this one is the higher; before, the message waits behind the backlog.)

use std::fmt;
use std::time::Duration;

use herald_core::{Error, Result, SubscriptionSpec};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind as LapinKind};

use crate::config::{AmqpConfig, ExchangeKind, QueueKind, QueueNames};
use crate::error::{self, Secrets, is_precondition_failed};
use crate::mapping::header;

/// The priority of a message sent back to its queue through a delay queue: higher than that
/// of a message as published (none, 0), so that it goes ahead of the backlog. Above 4, which
/// quorum queues (RabbitMQ 3.12+) take as "high"; a classic queue caps it at its
/// `x-max-priority`.
pub const RETURN_PRIORITY: u8 = 5;

/// The `x-max-priority` of a classic consumer queue: two levels, as published and returned.
const MAX_PRIORITY: i64 = 1;

/// One broker object to declare.
#[derive(Debug, Clone, PartialEq)]
pub enum Declaration {
    /// A durable exchange.
    Exchange {
        /// Its name.
        name: String,
        /// Its kind (`topic`, `fanout` …).
        kind: ExchangeKind,
        /// Deleted once its last binding goes (ephemeral topology only).
        auto_delete: bool,
    },
    /// A durable queue.
    Queue {
        /// Its name.
        name: String,
        /// Its `x-…` arguments.
        arguments: FieldTable,
    },
    /// A binding of a queue to an exchange.
    Binding {
        /// The queue.
        queue: String,
        /// The exchange.
        exchange: String,
        /// The binding key.
        routing_key: String,
        /// Header-matching arguments (headers exchanges).
        arguments: FieldTable,
    },
}

impl fmt::Display for Declaration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Declaration::Exchange { name, kind, .. } => {
                write!(f, "exchange {name} ({}, durable)", kind.as_str())
            }
            Declaration::Queue { name, arguments } => {
                write!(f, "queue    {name} (durable{})", render(arguments))
            }
            Declaration::Binding {
                queue,
                exchange,
                routing_key,
                arguments,
            } => write!(
                f,
                "binding  {exchange} → {queue} (key `{routing_key}`{})",
                render(arguments)
            ),
        }
    }
}

fn render(arguments: &FieldTable) -> String {
    arguments
        .inner()
        .iter()
        .map(|(k, v)| match v {
            AMQPValue::LongString(s) => format!(", {k}={s}"),
            AMQPValue::LongLongInt(n) => format!(", {k}={n}"),
            other => format!(", {k}={other:?}"),
        })
        .collect()
}

/// The main exchange.
pub fn exchange(config: &AmqpConfig) -> Declaration {
    Declaration::Exchange {
        name: config.exchange.clone(),
        kind: config.exchange_kind,
        auto_delete: config.expires.is_some(),
    }
}

/// Everything subscription `spec` needs, in declaration order: the main exchange, the
/// dead-letter exchange and queue, the consumer queue and its bindings, the delay queues.
pub fn plan(config: &AmqpConfig, spec: &SubscriptionSpec) -> Result<Vec<Declaration>> {
    let names = QueueNames::of(&spec.name)?;
    let mut out = vec![
        exchange(config),
        Declaration::Exchange {
            name: names.dead_letter_exchange.clone(),
            kind: ExchangeKind::Fanout,
            auto_delete: config.expires.is_some(),
        },
        Declaration::Queue {
            name: names.dead_letter_queue.clone(),
            arguments: queue_arguments(config, None),
        },
        Declaration::Binding {
            queue: names.dead_letter_queue.clone(),
            exchange: names.dead_letter_exchange.clone(),
            routing_key: String::new(),
            arguments: FieldTable::default(),
        },
    ];
    let mut main = queue_arguments(config, None);
    put(
        &mut main,
        "x-dead-letter-exchange",
        &names.dead_letter_exchange,
    );
    if let Some(limit) = config.delivery_limit {
        main.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(limit.into()),
        );
    }
    if config.single_active_consumer {
        main.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    if config.queue_kind == QueueKind::Classic {
        main.insert(
            "x-max-priority".into(),
            AMQPValue::LongLongInt(MAX_PRIORITY),
        );
    }
    out.push(Declaration::Queue {
        name: names.queue.clone(),
        arguments: main,
    });
    out.extend(bindings(config, spec)?);
    for delay in config.delays() {
        let mut arguments = queue_arguments(config, Some(delay));
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        put(&mut arguments, "x-dead-letter-exchange", "");
        put(&mut arguments, "x-dead-letter-routing-key", &names.queue);
        out.push(Declaration::Queue {
            name: names.delay_queue(delay),
            arguments,
        });
    }
    Ok(out)
}

/// The consumer queue's bindings to the main exchange, by exchange kind.
fn bindings(config: &AmqpConfig, spec: &SubscriptionSpec) -> Result<Vec<Declaration>> {
    let binding = |routing_key: &str, arguments: FieldTable| Declaration::Binding {
        queue: spec.name.clone(),
        exchange: config.exchange.clone(),
        routing_key: routing_key.to_owned(),
        arguments,
    };
    let types = &spec.event_types;
    Ok(match (config.exchange_kind, types.is_empty()) {
        (ExchangeKind::Topic, true) => vec![binding("#", FieldTable::default())],
        (ExchangeKind::Topic | ExchangeKind::Direct, false) => types
            .iter()
            .map(|t| binding(config.routing_key(t), FieldTable::default()))
            .collect(),
        (ExchangeKind::Direct, true) => {
            return Err(Error::Config(format!(
                "subscription `{}` lists no event types, which a direct exchange cannot route \
                 (use a topic exchange to receive every type)",
                spec.name
            )));
        }
        (ExchangeKind::Fanout, true) => vec![binding("", FieldTable::default())],
        (ExchangeKind::Fanout, false) => {
            return Err(Error::Config(format!(
                "subscription `{}` lists event types, which a fanout exchange cannot filter",
                spec.name
            )));
        }
        (ExchangeKind::Headers, true) => {
            let mut all = FieldTable::default();
            put(&mut all, "x-match", "all");
            vec![binding("", all)]
        }
        (ExchangeKind::Headers, false) => types
            .iter()
            .map(|t| {
                let mut args = FieldTable::default();
                put(&mut args, "x-match", "all");
                put(&mut args, header::TYPE, t);
                binding("", args)
            })
            .collect(),
    })
}

/// Arguments every queue of a subscription shares: its kind and, for ephemeral topology, its
/// expiry (a delay queue's outlives its own delay).
fn queue_arguments(config: &AmqpConfig, delay: Option<Duration>) -> FieldTable {
    let mut arguments = FieldTable::default();
    put(&mut arguments, "x-queue-type", config.queue_kind.as_str());
    if let Some(expires) = config.expires {
        let expires = expires + delay.unwrap_or_default() * 2;
        let ms = i64::try_from(expires.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    }
    arguments
}

fn put(table: &mut FieldTable, name: &str, value: &str) {
    table.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
}

/// Declares `declarations` in order on `channel`. A declaration that contradicts an existing
/// object (other kind or arguments) is a permanent error naming it.
pub(crate) async fn apply(
    channel: &Channel,
    declarations: &[Declaration],
    secrets: &Secrets,
) -> Result<()> {
    for declaration in declarations {
        let result = match declaration {
            Declaration::Exchange {
                name,
                kind,
                auto_delete,
            } => {
                let kind = match kind {
                    ExchangeKind::Topic => LapinKind::Topic,
                    ExchangeKind::Direct => LapinKind::Direct,
                    ExchangeKind::Fanout => LapinKind::Fanout,
                    ExchangeKind::Headers => LapinKind::Headers,
                };
                let options = ExchangeDeclareOptions {
                    durable: true,
                    auto_delete: *auto_delete,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(name_of(name)?, kind, options, FieldTable::default())
                    .await
            }
            Declaration::Queue { name, arguments } => {
                let options = QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(name_of(name)?, options, arguments.clone())
                    .await
                    .map(|_| ())
            }
            Declaration::Binding {
                queue,
                exchange,
                routing_key,
                arguments,
            } => {
                channel
                    .queue_bind(
                        name_of(queue)?,
                        name_of(exchange)?,
                        name_of(routing_key)?,
                        QueueBindOptions::default(),
                        arguments.clone(),
                    )
                    .await
            }
        };
        if let Err(err) = result {
            if is_precondition_failed(&err) {
                return Err(Error::Config(format!(
                    "cannot declare {declaration}: it exists with other settings; delete it or \
                     align the configuration ({})",
                    secrets.scrub(&err.to_string())
                )));
            }
            return Err(error::transport("declare topology", &err, secrets));
        }
    }
    Ok(())
}

fn name_of(name: &str) -> Result<ShortString> {
    ShortString::try_new(name).map_err(|e| Error::Config(format!("name `{name}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(types: &[&str]) -> SubscriptionSpec {
        SubscriptionSpec::new("billing", types.iter().copied())
    }

    #[test]
    fn plans_queues_dead_letters_and_delay_queues() {
        let config = AmqpConfig {
            retry_delays: vec![Duration::from_secs(5), Duration::from_secs(1)],
            ..AmqpConfig::default()
        };
        let plan = plan(&config, &spec(&["ordering.order_created"])).unwrap();
        let text: Vec<String> = plan.iter().map(ToString::to_string).collect();
        assert_eq!(text[0], "exchange herald (topic, durable)");
        assert!(text.contains(&"exchange billing.dlx (fanout, durable)".to_owned()));
        assert!(text.iter().any(|t| t.starts_with("queue    billing.dlq")));
        assert!(
            text.iter().any(|t| t.contains("billing (durable")
                && t.contains("x-dead-letter-exchange=billing.dlx")),
            "{text:#?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("queue    billing (") && t.contains("x-max-priority=1")),
            "returns go ahead of the backlog: {text:#?}"
        );
        assert!(
            text.contains(&"binding  herald → billing (key `ordering.order_created`)".to_owned())
        );
        let delay = text
            .iter()
            .find(|t| t.starts_with("queue    billing.retry.1000ms"))
            .unwrap();
        assert!(delay.contains("x-message-ttl=1000"), "{delay}");
        assert!(
            delay.contains("x-dead-letter-routing-key=billing"),
            "{delay}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("queue    billing.retry.5000ms"))
        );
    }

    #[test]
    fn bindings_follow_the_exchange_kind() {
        let mut config = AmqpConfig::default();
        let keys = |config: &AmqpConfig, types: &[&str]| -> Result<Vec<String>> {
            Ok(bindings(config, &spec(types))?
                .into_iter()
                .map(|d| d.to_string())
                .collect())
        };
        assert!(keys(&config, &[]).unwrap()[0].contains("key `#`"));
        config.exchange_kind = ExchangeKind::Direct;
        assert!(keys(&config, &[]).is_err());
        assert!(keys(&config, &["a.b"]).unwrap()[0].contains("key `a.b`"));
        config.exchange_kind = ExchangeKind::Fanout;
        assert!(keys(&config, &["a.b"]).is_err());
        config.exchange_kind = ExchangeKind::Headers;
        let headers = keys(&config, &["a.b"]).unwrap();
        assert!(headers[0].contains("cloudEvents:type=a.b"), "{headers:?}");
    }

    #[test]
    fn quorum_and_ephemeral_settings_reach_every_queue() {
        let config = AmqpConfig {
            queue_kind: QueueKind::Quorum,
            delivery_limit: Some(5),
            expires: Some(Duration::from_secs(60)),
            ..AmqpConfig::default()
        };
        let plan = plan(&config, &spec(&[])).unwrap();
        for d in &plan {
            if let Declaration::Queue { name, arguments } = d {
                assert!(arguments.contains_key("x-expires"), "{name}");
                assert_eq!(
                    arguments.inner().get("x-queue-type"),
                    Some(&AMQPValue::LongString("quorum".into())),
                    "{name}"
                );
            }
        }
        assert!(
            plan.iter()
                .any(|d| d.to_string().contains("x-delivery-limit=5"))
        );
        assert!(
            !plan
                .iter()
                .any(|d| d.to_string().contains("x-max-priority")),
            "quorum queues refuse x-max-priority"
        );
    }
}
