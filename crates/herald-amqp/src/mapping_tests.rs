use super::*;
use herald_core::{Metadata, OffsetDateTime};

fn envelope() -> Envelope {
    let mut env = Envelope {
        id: Uuid::now_v7(),
        event_type: "ordering.order_created".into(),
        version: 3,
        occurred_at: OffsetDateTime::now_utc(),
        correlation_id: Uuid::now_v7(),
        causation_id: Some(Uuid::now_v7()),
        partition_key: Some("order-1".into()),
        content_type: "application/json".into(),
        trace: TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("vendor=abc".into()),
        },
        headers: Metadata::default()
            .with_header("tenant", "acme")
            .with_header("x-note", "ünicode; = \"quoted\"")
            .headers,
        payload: Bytes::from_static(b"{\"order\":1}"),
    };
    env.headers.insert("empty".into(), String::new());
    env
}

fn round_trip(env: &Envelope) -> Result<Envelope> {
    let config = AmqpConfig::default();
    let out = encode(env, &config)?;
    decode(&out.properties, &out.payload, &config)
}

fn headers_of(env: &Envelope) -> (BasicProperties, Bytes) {
    let out = encode(env, &AmqpConfig::default()).unwrap();
    (out.properties, out.payload)
}

fn set(props: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    with_header(props, name, value)
}

fn without(props: BasicProperties, name: &str) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    let kept: std::collections::BTreeMap<_, _> = table
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != name)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    table = kept.into();
    props.with_headers(table)
}

fn field_of(error: Error) -> String {
    match error {
        Error::InvalidEnvelope { field, .. } => field,
        other => panic!("expected an invalid-envelope error, got {other:?}"),
    }
}

#[test]
fn every_field_round_trips() {
    let env = envelope();
    assert_eq!(round_trip(&env).unwrap(), env);
    let minimal = Envelope {
        causation_id: None,
        partition_key: None,
        trace: TraceContext::default(),
        headers: Headers::new(),
        ..envelope()
    };
    assert_eq!(round_trip(&minimal).unwrap(), minimal);
}

#[test]
fn writes_properties_and_cloudevents_headers() {
    let env = envelope();
    let out = encode(&env, &AmqpConfig::default()).unwrap();
    let p = &out.properties;
    assert_eq!(out.routing_key.as_str(), "ordering.order_created");
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(
        p.message_id().as_ref().unwrap().as_str(),
        env.id.to_string()
    );
    assert_eq!(p.kind().as_ref().unwrap().as_str(), env.event_type);
    assert_eq!(
        p.correlation_id().as_ref().unwrap().as_str(),
        env.correlation_id.to_string()
    );
    assert_eq!(
        *p.timestamp(),
        Some(env.occurred_at.unix_timestamp() as u64)
    );
    let h = Lookup(p.headers().as_ref().unwrap());
    assert_eq!(h.string(header::SPECVERSION).unwrap().unwrap(), "1.0");
    assert_eq!(h.string(header::ID).unwrap().unwrap(), env.id.to_string());
    assert_eq!(h.string(header::SOURCE).unwrap().unwrap(), "/herald");
    assert_eq!(h.integer(header::EVENT_VERSION).unwrap(), Some(3));
    assert_eq!(h.string("tenant").unwrap().unwrap(), "acme");
    assert!(h.string(header::TRACEPARENT).unwrap().is_some());
}

#[test]
fn routing_key_follows_the_override() {
    let mut config = AmqpConfig::default();
    config
        .routing_keys
        .insert("ordering.order_created".into(), "orders.created.v3".into());
    let out = encode(&envelope(), &config).unwrap();
    assert_eq!(out.routing_key.as_str(), "orders.created.v3");
}

#[test]
fn missing_headers_are_typed_errors() {
    let (props, payload) = headers_of(&envelope());
    let config = AmqpConfig::default();
    let err = decode(
        &without(props.clone(), header::SPECVERSION),
        &payload,
        &config,
    );
    assert_eq!(field_of(err.unwrap_err()), header::SPECVERSION);
    let no_time = without(props.clone(), header::TIME);
    // The AMQP timestamp stands in for a missing `time` (at second precision).
    let env = decode(&no_time, &payload, &config).unwrap();
    assert_eq!(
        env.occurred_at.unix_timestamp(),
        envelope().occurred_at.unix_timestamp()
    );
    let bare = BasicProperties::default().with_headers({
        let mut t = FieldTable::default();
        t.insert(
            header::SPECVERSION.into(),
            AMQPValue::LongString("1.0".into()),
        );
        t
    });
    assert_eq!(
        field_of(decode(&bare, &payload, &config).unwrap_err()),
        header::ID
    );
    let no_content_type = BasicProperties::default().with_headers(props.headers().clone().unwrap());
    assert_eq!(
        field_of(decode(&no_content_type, &payload, &config).unwrap_err()),
        "content_type"
    );
}

#[test]
fn mistyped_headers_are_typed_errors() {
    let (props, payload) = headers_of(&envelope());
    let config = AmqpConfig::default();
    let cases = [
        (header::ID, AMQPValue::LongLongInt(7)),
        (header::ID, AMQPValue::LongString("not-a-uuid".into())),
        (header::TIME, AMQPValue::LongString("yesterday".into())),
        (header::EVENT_VERSION, AMQPValue::Boolean(true)),
        (header::EVENT_VERSION, AMQPValue::LongLongInt(-1)),
        (header::CORRELATION_ID, AMQPValue::LongString("x".into())),
        (
            header::PARTITION_KEY,
            AMQPValue::FieldTable(FieldTable::default()),
        ),
        (header::SPECVERSION, AMQPValue::LongString("0.3".into())),
        ("tenant", AMQPValue::FieldTable(FieldTable::default())),
        ("tenant", AMQPValue::LongString(vec![0xff, 0xfe].into())),
    ];
    for (name, value) in cases {
        let err = decode(&set(props.clone(), name, value.clone()), &payload, &config)
            .expect_err(&format!("{name} = {value:?} must be refused"));
        assert_eq!(field_of(err), name);
    }
}

#[test]
fn oversized_messages_are_refused_both_ways() {
    let config = AmqpConfig {
        max_message_bytes: 8,
        max_header_bytes: 4096,
        ..AmqpConfig::default()
    };
    let env = envelope();
    assert!(matches!(
        encode(&env, &config),
        Err(Error::TooLarge {
            what: "payload",
            ..
        })
    ));
    let (props, payload) = headers_of(&env);
    assert!(matches!(
        decode(&props, &payload, &config),
        Err(Error::TooLarge {
            what: "payload",
            ..
        })
    ));
    let big = set(
        props,
        "tenant",
        AMQPValue::LongString("x".repeat(5000).into()),
    );
    assert!(matches!(
        decode(&big, b"{}", &config),
        Err(Error::TooLarge {
            what: "headers",
            ..
        })
    ));
    let mut wide = envelope();
    wide.headers.insert("blob".into(), "x".repeat(5000));
    let roomy = AmqpConfig {
        max_message_bytes: 1024,
        ..config
    };
    assert!(matches!(
        encode(&wide, &roomy),
        Err(Error::TooLarge {
            what: "headers",
            ..
        })
    ));
}

#[test]
fn reserved_and_overlong_names_cannot_be_published() {
    for name in [
        "cloudEvents:id",
        "x-herald-attempt",
        "traceparent",
        "x-death",
    ] {
        let mut env = envelope();
        env.headers.insert(name.into(), "spoof".into());
        assert!(
            matches!(
                encode(&env, &AmqpConfig::default()),
                Err(Error::InvalidEnvelope { .. })
            ),
            "{name}"
        );
    }
    let mut env = envelope();
    env.event_type = "t".repeat(300);
    assert!(encode(&env, &AmqpConfig::default()).is_err());
}

#[test]
fn reads_a_foreign_producers_message_from_properties() {
    let id = Uuid::now_v7();
    let props = BasicProperties::default()
        .with_message_id(id.to_string().as_str().into())
        .with_type("billing.paid".into())
        .with_timestamp(1_700_000_000)
        .with_content_type("application/json".into())
        .with_headers({
            let mut t = FieldTable::default();
            t.insert(
                header::SPECVERSION.into(),
                AMQPValue::LongString("1.0".into()),
            );
            t.insert("priority".into(), AMQPValue::LongInt(5));
            t.insert(
                "x-plugin".into(),
                AMQPValue::FieldTable(FieldTable::default()),
            );
            t
        });
    let env = decode(&props, b"{}", &AmqpConfig::default()).unwrap();
    assert_eq!(env.id, id);
    assert_eq!(env.correlation_id, id, "defaults to the id");
    assert_eq!(env.event_type, "billing.paid");
    assert_eq!(env.version, 1);
    assert_eq!(env.occurred_at.unix_timestamp(), 1_700_000_000);
    assert_eq!(env.headers["priority"], "5");
    assert!(!env.headers.contains_key("x-plugin"));
}

#[test]
fn an_invalid_traceparent_is_dropped_not_fatal() {
    let (props, payload) = headers_of(&envelope());
    let props = set(
        props,
        header::TRACEPARENT,
        AMQPValue::LongString("garbage".into()),
    );
    let env = decode(&props, &payload, &AmqpConfig::default()).unwrap();
    assert_eq!(env.trace, TraceContext::default());
}

#[test]
fn attempts_count_retries_and_quorum_redeliveries() {
    let (props, _) = headers_of(&envelope());
    assert_eq!(attempt(&props).unwrap(), 1);
    let retried = set(props, header::ATTEMPT, AMQPValue::LongLongInt(3));
    assert_eq!(attempt(&retried).unwrap(), 3);
    let redelivered = set(retried, header::DELIVERY_COUNT, AMQPValue::LongLongInt(2));
    assert_eq!(attempt(&redelivered).unwrap(), 5);
    let broken = set(redelivered, header::ATTEMPT, AMQPValue::Boolean(false));
    assert!(attempt(&broken).is_err());
}

#[test]
fn text_values_are_cut_on_char_boundaries() {
    match text("ééé", 3) {
        AMQPValue::LongString(s) => assert_eq!(s.as_bytes(), "é".as_bytes()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_protobuf_payloads_dataschema_is_the_cloudevents_attribute() {
    let mut env = envelope();
    env.content_type = "application/protobuf".into();
    env.headers.insert(
        herald_core::envelope::DATASCHEMA.into(),
        "shipping.v2.OrderShipped".into(),
    );
    let (props, _) = headers_of(&env);
    let h = Lookup(props.headers().as_ref().unwrap());
    assert_eq!(
        h.string(header::DATASCHEMA).unwrap().as_deref(),
        Some("shipping.v2.OrderShipped")
    );
    assert_eq!(
        h.string("dataschema").unwrap(),
        None,
        "not a free-form header"
    );
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/protobuf"
    );
    let back = round_trip(&env).unwrap();
    assert_eq!(back, env);
    assert_eq!(back.dataschema(), Some("shipping.v2.OrderShipped"));
}
