//! An AsyncAPI 3.0 document of what a service publishes: from the catalog (messages and their
//! payload schemas) and the transport's configuration (channels).
//!
//! * RabbitMQ: one channel per event type, its address the routing key (the event type unless
//!   overridden), with an AMQP channel binding naming the exchange and its kind;
//! * Kafka: one channel per topic, carrying the event types published to it (the outbox's
//!   topic, and the routes' topics);
//! * in-memory: one channel per event type, its address the type.
//!
//! Each message is one (type, version), named `<type>.v<version>`: its payload schema (the
//! JSON Schema, its `$defs` moved to `components/schemas`; or, for Protobuf, the message in
//! `.proto` form with schema format `application/vnd.google.protobuf;version=3`) and the
//! CloudEvents headers of the transport's binding (`cloudEvents:*` on RabbitMQ, `ce_*` on
//! Kafka). An operation `send.<channel>` per channel says that the service sends them.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::catalog::Catalog;
use crate::protobuf::ProtoSchema;
use crate::snapshot::{Format, Snapshot};

/// The AsyncAPI version written.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The schema format of Protobuf payloads.
pub const PROTOBUF_FORMAT: &str = "application/vnd.google.protobuf;version=3";

/// What the document says about the service, and where it publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncApiConfig {
    /// The service's name (`info.title`).
    pub title: String,
    /// The version of the service's API (`info.version`).
    pub version: String,
    /// A longer description (`info.description`).
    pub description: Option<String>,
    /// The transport, for the channels.
    pub transport: Transport,
}

impl Default for AsyncApiConfig {
    fn default() -> Self {
        AsyncApiConfig {
            title: "herald".to_owned(),
            version: "1.0.0".to_owned(),
            description: None,
            transport: Transport::Memory,
        }
    }
}

/// The channels of a transport, as the transport's configuration lays them out.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// RabbitMQ: `From<&AmqpConfig>` with the feature `amqp`.
    Amqp(AmqpChannels),
    /// Kafka: `From<&KafkaConfig>` with the feature `kafka`.
    Kafka(KafkaChannels),
    /// The in-memory transport: one channel per event type.
    Memory,
}

/// What RabbitMQ's channels are made of (`AmqpConfig`'s fields of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpChannels {
    /// The exchange events are published to.
    pub exchange: String,
    /// Its kind: `topic`, `direct`, `fanout` or `headers`.
    pub exchange_kind: String,
    /// Routing keys by event type, overriding the default (the event type itself).
    pub routing_keys: BTreeMap<String, String>,
}

/// What Kafka's channels are made of (`KafkaConfig`'s fields of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaChannels {
    /// The topic of every event type that `routes` does not name.
    pub topic: String,
    /// Event types published to another topic: type → topic.
    pub routes: BTreeMap<String, String>,
    /// Partitions of the topics, when known.
    pub partitions: Option<i32>,
    /// Replicas of each partition, when known.
    pub replicas: Option<i32>,
}

#[cfg(feature = "amqp")]
impl From<&herald_amqp::AmqpConfig> for Transport {
    fn from(config: &herald_amqp::AmqpConfig) -> Self {
        Transport::Amqp(AmqpChannels {
            exchange: config.exchange.clone(),
            exchange_kind: config.exchange_kind.as_str().to_owned(),
            routing_keys: config.routing_keys.clone(),
        })
    }
}

#[cfg(feature = "kafka")]
impl From<&herald_kafka::KafkaConfig> for Transport {
    fn from(config: &herald_kafka::KafkaConfig) -> Self {
        Transport::Kafka(KafkaChannels {
            topic: config.topic.clone(),
            routes: config.routes.clone(),
            partitions: Some(config.partitions),
            replicas: Some(config.replication_factor),
        })
    }
}

/// One channel: its id, address, description, binding and messages.
struct Channel {
    address: String,
    description: String,
    bindings: Option<Value>,
    messages: Vec<String>,
}

impl Catalog {
    /// The AsyncAPI 3.0 document of the catalog's events on `config`'s transport.
    pub fn asyncapi(&self, config: &AsyncApiConfig) -> Value {
        let mut schemas = Map::new();
        let mut messages = Map::new();
        let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
        for snapshot in self.snapshots() {
            let id = message_id(snapshot);
            messages.insert(
                id.clone(),
                message(snapshot, &id, &config.transport, &mut schemas),
            );
            let (channel_id, channel) = channel_of(&snapshot.event_type, &config.transport);
            channels
                .entry(channel_id)
                .or_insert(channel)
                .messages
                .push(id);
        }
        let mut channel_docs = Map::new();
        let mut operations = Map::new();
        for (id, channel) in channels {
            let pointer = escape(&id);
            let refs: Map<String, Value> = channel
                .messages
                .iter()
                .map(|m| {
                    (
                        m.clone(),
                        json!({ "$ref": format!("#/components/messages/{}", escape(m)) }),
                    )
                })
                .collect();
            let mut doc = json!({
                "address": channel.address,
                "description": channel.description,
                "messages": refs,
            });
            if let Some(bindings) = channel.bindings {
                doc["bindings"] = bindings;
            }
            channel_docs.insert(id.clone(), doc);
            let sent: Vec<Value> = channel
                .messages
                .iter()
                .map(|m| json!({ "$ref": format!("#/channels/{pointer}/messages/{}", escape(m)) }))
                .collect();
            operations.insert(
                format!("send.{id}"),
                json!({
                    "action": "send",
                    "summary": format!("The service publishes to {}.", channel.address),
                    "channel": { "$ref": format!("#/channels/{pointer}") },
                    "messages": sent,
                }),
            );
        }
        let mut info = json!({ "title": config.title, "version": config.version });
        if let Some(description) = &config.description {
            info["description"] = json!(description);
        }
        json!({
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "defaultContentType": "application/json",
            "channels": channel_docs,
            "operations": operations,
            "components": { "messages": messages, "schemas": schemas },
        })
    }
}

fn message_id(snapshot: &Snapshot) -> String {
    format!("{}.v{}", snapshot.event_type, snapshot.version)
}

/// A JSON pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A component name AsyncAPI accepts (`[\w.-]+`).
fn component_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn channel_of(event_type: &str, transport: &Transport) -> (String, Channel) {
    match transport {
        Transport::Amqp(amqp) => {
            let key = amqp
                .routing_keys
                .get(event_type)
                .map_or(event_type, String::as_str);
            let routed = matches!(amqp.exchange_kind.as_str(), "topic" | "direct");
            let description = if routed {
                format!(
                    "Events of type `{event_type}`, published to the {} exchange `{}` with routing key `{key}`.",
                    amqp.exchange_kind, amqp.exchange
                )
            } else {
                format!(
                    "Events of type `{event_type}`, published to the {} exchange `{}` (routed on the `cloudEvents:type` header, not on the routing key `{key}`).",
                    amqp.exchange_kind, amqp.exchange
                )
            };
            let bindings = json!({ "amqp": {
                "is": "routingKey",
                "exchange": { "name": amqp.exchange, "type": amqp.exchange_kind, "durable": true, "autoDelete": false },
                "bindingVersion": "0.3.0",
            }});
            (
                event_type.to_owned(),
                Channel {
                    address: key.to_owned(),
                    description,
                    bindings: Some(bindings),
                    messages: Vec::new(),
                },
            )
        }
        Transport::Kafka(kafka) => {
            let topic = kafka
                .routes
                .get(event_type)
                .map_or(kafka.topic.as_str(), String::as_str);
            let mut binding = json!({ "topic": topic, "bindingVersion": "0.5.0" });
            if let Some(partitions) = kafka.partitions.filter(|p| *p >= 1) {
                binding["partitions"] = json!(partitions);
            }
            if let Some(replicas) = kafka.replicas.filter(|r| *r >= 1) {
                binding["replicas"] = json!(replicas);
            }
            (
                topic.to_owned(),
                Channel {
                    address: topic.to_owned(),
                    description: format!(
                        "The Kafka topic `{topic}`; the record key is the event's partition key, so that events of one key stay in order."
                    ),
                    bindings: Some(json!({ "kafka": binding })),
                    messages: Vec::new(),
                },
            )
        }
        Transport::Memory => (
            event_type.to_owned(),
            Channel {
                address: event_type.to_owned(),
                description: format!("Events of type `{event_type}` (in-memory transport)."),
                bindings: None,
                messages: Vec::new(),
            },
        ),
    }
}

fn message(
    snapshot: &Snapshot,
    id: &str,
    transport: &Transport,
    schemas: &mut Map<String, Value>,
) -> Value {
    let (content_type, payload, summary) = match snapshot.format {
        Format::JsonSchema => {
            let summary = snapshot
                .schema
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let root = add_json_schema(&snapshot.schema, id, schemas);
            (
                "application/json",
                json!({ "$ref": format!("#/components/schemas/{}", escape(&root)) }),
                summary,
            )
        }
        Format::Protobuf => {
            let text = serde_json::from_value::<ProtoSchema>(snapshot.schema.clone())
                .map(|proto| proto.to_proto_text())
                .unwrap_or_default();
            (
                "application/protobuf",
                json!({ "schemaFormat": PROTOBUF_FORMAT, "schema": text }),
                snapshot
                    .schema
                    .get("message")
                    .and_then(Value::as_str)
                    .map(|m| format!("Protobuf message `{m}`.")),
            )
        }
    };
    let mut message = json!({
        "name": snapshot.event_type,
        "title": format!("{} v{}", snapshot.event_type, snapshot.version),
        "contentType": content_type,
        "headers": headers(snapshot, transport, content_type),
        "payload": payload,
    });
    if let Some(summary) = summary {
        message["summary"] = json!(summary);
    }
    message
}

/// The CloudEvents headers of the transport's binding (the names of `herald_amqp::mapping`'s
/// and `herald_kafka::mapping`'s `header` modules).
fn headers(snapshot: &Snapshot, transport: &Transport, content_type: &str) -> Value {
    let prefix = match transport {
        Transport::Amqp(_) => "cloudEvents:",
        Transport::Kafka(_) | Transport::Memory => "ce_",
    };
    let string = |description: &str| json!({ "type": "string", "description": description });
    let mut properties = Map::new();
    let mut put = |name: &str, schema: Value| {
        properties.insert(format!("{prefix}{name}"), schema);
    };
    put(
        "specversion",
        json!({ "type": "string", "const": "1.0", "description": "CloudEvents spec version." }),
    );
    put(
        "id",
        json!({ "type": "string", "format": "uuid", "description": "The event's id (UUIDv7): the inbox deduplicates on it." }),
    );
    put(
        "type",
        json!({ "type": "string", "const": snapshot.event_type, "description": "The event type." }),
    );
    put("source", string("The producing service (configured)."));
    put(
        "time",
        json!({ "type": "string", "format": "date-time", "description": "When the event occurred (RFC 3339)." }),
    );
    // An AMQP header holds the integer; a Kafka header holds text, the version in decimal.
    let version = match transport {
        Transport::Amqp(_) => json!(snapshot.version),
        Transport::Kafka(_) | Transport::Memory => json!(snapshot.version.to_string()),
    };
    let version_type = if version.is_number() {
        "integer"
    } else {
        "string"
    };
    put(
        "eventversion",
        json!({ "type": version_type, "const": version, "description": "The payload's schema version (extension)." }),
    );
    put("correlationid", string("Correlation id (extension)."));
    put("causationid", string("Causation id (extension)."));
    put(
        "partitionkey",
        string("The ordering key (Partitioning extension)."),
    );
    let mut required = vec!["specversion", "id", "type", "source", "eventversion"];
    if snapshot.format == Format::Protobuf {
        // A Protobuf payload names its message (the envelope's `dataschema` header).
        let message = snapshot
            .schema
            .get("message")
            .cloned()
            .unwrap_or(Value::Null);
        put(
            "dataschema",
            json!({ "type": "string", "const": message, "description": "The Protobuf message's full name." }),
        );
        required.push("dataschema");
    }
    properties.insert(
        "traceparent".to_owned(),
        string("W3C trace context of the recording span."),
    );
    properties.insert("tracestate".to_owned(), string("W3C vendor trace state."));
    if matches!(transport, Transport::Kafka(_)) {
        properties.insert(
            "content-type".to_owned(),
            json!({ "type": "string", "const": content_type, "description": "The payload's media type (CloudEvents datacontenttype)." }),
        );
    }
    let required: Vec<String> = required
        .iter()
        .map(|name| format!("{prefix}{name}"))
        .collect();
    json!({
        "type": "object",
        "description": "CloudEvents 1.0 attributes in the transport's binary-mode binding.",
        "properties": properties,
        "required": required,
    })
}

/// Adds a JSON Schema (and its `$defs`) to `components/schemas`; returns the root's name.
fn add_json_schema(schema: &Value, id: &str, schemas: &mut Map<String, Value>) -> String {
    let mut names = BTreeMap::new();
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object);
    let root_name = component_name(id);
    if let Some(defs) = defs {
        for (name, def) in defs {
            let mut chosen = component_name(name);
            if schemas.get(&chosen).is_some_and(|taken| taken != def) || chosen == root_name {
                chosen = format!("{root_name}.{chosen}");
            }
            names.insert(name.clone(), chosen);
        }
        for (name, def) in defs {
            let rewritten = rewrite(def, &names, &root_name);
            schemas.insert(names[name].clone(), rewritten);
        }
    }
    let mut root = rewrite(schema, &names, &root_name);
    if let Some(map) = root.as_object_mut() {
        map.remove("$defs");
        map.remove("definitions");
        map.remove("$schema");
    }
    schemas.insert(root_name.clone(), root);
    root_name
}

/// Points `$ref`s at `components/schemas`, and writes tuples the draft-07 way AsyncAPI
/// schemas use (`items` as an array).
fn rewrite(schema: &Value, names: &BTreeMap<String, String>, root: &str) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                let value = if key == "$ref" {
                    match value.as_str() {
                        Some("#") => json!(format!("#/components/schemas/{}", escape(root))),
                        Some(reference) => {
                            let name = reference
                                .strip_prefix("#/$defs/")
                                .or_else(|| reference.strip_prefix("#/definitions/"));
                            match name.and_then(|n| names.get(n)) {
                                Some(chosen) => {
                                    json!(format!("#/components/schemas/{}", escape(chosen)))
                                }
                                None => value.clone(),
                            }
                        }
                        None => value.clone(),
                    }
                } else {
                    rewrite(value, names, root)
                };
                match key.as_str() {
                    "prefixItems" => {
                        out.insert("items".to_owned(), value);
                    }
                    "items" if map.contains_key("prefixItems") => {
                        out.insert("additionalItems".to_owned(), value);
                    }
                    _ => {
                        out.insert(key.clone(), value);
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| rewrite(item, names, root))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(all(test, feature = "amqp", feature = "kafka"))]
mod tests {
    use super::*;

    /// The document's header names are the ones the transports write.
    #[test]
    fn header_names_are_the_transports_own() {
        let snapshot = Snapshot {
            event_type: "a.b".to_owned(),
            version: 1,
            format: Format::JsonSchema,
            schema: json!({}),
        };
        let amqp = Transport::from(&herald_amqp::AmqpConfig::default());
        let kafka = Transport::from(&herald_kafka::KafkaConfig::new("localhost:9092"));
        use herald_amqp::mapping::header as a;
        use herald_kafka::mapping::header as k;
        for (transport, names) in [
            (
                amqp,
                vec![
                    a::SPECVERSION,
                    a::ID,
                    a::TYPE,
                    a::SOURCE,
                    a::TIME,
                    a::EVENT_VERSION,
                    a::CORRELATION_ID,
                    a::CAUSATION_ID,
                    a::PARTITION_KEY,
                    a::TRACEPARENT,
                    a::TRACESTATE,
                ],
            ),
            (
                kafka,
                vec![
                    k::SPECVERSION,
                    k::ID,
                    k::TYPE,
                    k::SOURCE,
                    k::TIME,
                    k::EVENT_VERSION,
                    k::CORRELATION_ID,
                    k::CAUSATION_ID,
                    k::PARTITION_KEY,
                    k::TRACEPARENT,
                    k::TRACESTATE,
                    k::CONTENT_TYPE,
                ],
            ),
        ] {
            let headers = headers(&snapshot, &transport, "application/json");
            let properties = headers["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut expected: Vec<&str> = names;
            expected.sort_unstable();
            let mut found: Vec<&str> = properties.keys().map(String::as_str).collect();
            found.sort_unstable();
            assert_eq!(found, expected);
        }
        let proto = Snapshot {
            format: Format::Protobuf,
            schema: json!({ "message": "a.B" }),
            ..snapshot
        };
        for (transport, name) in [
            (
                Transport::from(&herald_amqp::AmqpConfig::default()),
                a::DATASCHEMA,
            ),
            (
                Transport::from(&herald_kafka::KafkaConfig::new("localhost:9092")),
                k::DATASCHEMA,
            ),
        ] {
            let headers = headers(&proto, &transport, "application/protobuf");
            assert_eq!(headers["properties"][name]["const"], "a.B");
        }
    }
}
