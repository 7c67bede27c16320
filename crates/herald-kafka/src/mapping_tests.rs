#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

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

fn config() -> KafkaConfig {
    KafkaConfig::new("127.0.0.1:9092")
}

fn round_trip(env: &Envelope) -> Result<Envelope> {
    let out = encode(env, &config())?;
    decode(
        &out.headers,
        out.key.as_deref().map(str::as_bytes),
        &out.payload,
        &config(),
    )
}

fn without(headers: &RecordHeaders, name: &str) -> RecordHeaders {
    headers.iter().filter(|(n, _)| n != name).cloned().collect()
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
    let mut minimal = envelope();
    minimal.causation_id = None;
    minimal.partition_key = None;
    minimal.trace = TraceContext::default();
    minimal.headers.clear();
    minimal.payload = Bytes::new();
    assert_eq!(round_trip(&minimal).unwrap(), minimal);
}

#[test]
fn the_record_speaks_the_cloudevents_kafka_binding() {
    let env = envelope();
    let out = encode(&env, &config()).unwrap();
    let h = Lookup(&out.headers);
    let text = |name| h.string(name).unwrap().unwrap();
    assert_eq!(text("ce_specversion"), "1.0");
    assert_eq!(text("ce_id"), env.id.to_string());
    assert_eq!(text("ce_type"), env.event_type);
    assert_eq!(text("ce_source"), "herald");
    assert_eq!(
        OffsetDateTime::parse(&text("ce_time"), &Rfc3339).unwrap(),
        env.occurred_at
    );
    assert_eq!(text("content-type"), "application/json");
    assert_eq!(text("ce_eventversion"), "3");
    assert_eq!(text("ce_partitionkey"), "order-1");
    assert_eq!(text("traceparent"), env.trace.traceparent.unwrap());
    assert_eq!(
        out.key.as_deref(),
        Some("order-1"),
        "the record key is the partition key"
    );
    assert_eq!(out.topic, "herald.events");
    assert_eq!(
        out.timestamp_ms,
        i64::try_from(env.occurred_at.unix_timestamp_nanos() / 1_000_000).unwrap()
    );
}

#[test]
fn no_partition_key_is_a_null_record_key() {
    let mut env = envelope();
    env.partition_key = None;
    let out = encode(&env, &config()).unwrap();
    assert_eq!(out.key, None);
    assert!(Lookup(&out.headers).bytes(header::PARTITION_KEY).is_none());
}

#[test]
fn the_record_key_stands_for_a_missing_partition_key_header() {
    let env = envelope();
    let out = encode(&env, &config()).unwrap();
    let headers = without(&out.headers, header::PARTITION_KEY);
    let back = decode(&headers, Some(b"order-1"), &out.payload, &config()).unwrap();
    assert_eq!(back.partition_key.as_deref(), Some("order-1"));
}

#[test]
fn reserved_header_names_are_refused() {
    for name in [
        "ce_id",
        "ce_other",
        "x-herald-attempt",
        "content-type",
        "traceparent",
    ] {
        let mut env = envelope();
        env.headers.insert(name.into(), "x".into());
        let err = encode(&env, &config()).unwrap_err();
        assert_eq!(field_of(err), format!("headers.{name}"));
    }
}

#[test]
fn missing_or_malformed_fields_are_named() {
    let out = encode(&envelope(), &config()).unwrap();
    for name in [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_time",
        "content-type",
    ] {
        let err = decode(&without(&out.headers, name), None, &out.payload, &config()).unwrap_err();
        assert_eq!(field_of(err), name);
    }
    for (name, value) in [
        ("ce_id", "not-a-uuid"),
        ("ce_time", "yesterday"),
        ("ce_eventversion", "-1"),
        ("ce_specversion", "0.3"),
        ("ce_correlationid", "x"),
    ] {
        let mut headers = out.headers.clone();
        set(&mut headers, name, value);
        let err = decode(&headers, None, &out.payload, &config()).unwrap_err();
        assert_eq!(field_of(err), name);
    }
    let mut headers = out.headers.clone();
    set(&mut headers, "tenant", vec![0xff, 0xfe]);
    assert_eq!(
        field_of(decode(&headers, None, &out.payload, &config()).unwrap_err()),
        "tenant"
    );
}

#[test]
fn an_invalid_traceparent_is_dropped() {
    let out = encode(&envelope(), &config()).unwrap();
    let mut headers = out.headers.clone();
    set(&mut headers, header::TRACEPARENT, "garbage");
    let back = decode(&headers, None, &out.payload, &config()).unwrap();
    assert_eq!(back.trace, TraceContext::default());
}

#[test]
fn oversized_payloads_are_refused_both_ways() {
    let config = KafkaConfig {
        max_message_bytes: 8,
        ..config()
    };
    let env = envelope();
    assert!(matches!(encode(&env, &config), Err(Error::TooLarge { .. })));
    assert!(matches!(
        decode(&[], None, &[0; 9], &config),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn routed_types_go_to_their_topic() {
    let mut config = config();
    config
        .routes
        .insert("ordering.order_created".into(), "orders".into());
    assert_eq!(encode(&envelope(), &config).unwrap().topic, "orders");
}

#[test]
fn attempts_read_from_the_header() {
    let mut headers = RecordHeaders::new();
    assert_eq!(attempt(&headers), 1);
    set(&mut headers, header::ATTEMPT, "4");
    assert_eq!(attempt(&headers), 4);
    set(&mut headers, header::ATTEMPT, "0");
    assert_eq!(attempt(&headers), 1);
    assert_eq!(cut("ünicode", 1), "");
    assert_eq!(cut("abc", 2), "ab");
}

#[test]
fn a_protobuf_payloads_dataschema_is_the_cloudevents_attribute() {
    let mut env = envelope();
    env.content_type = "application/protobuf".into();
    env.headers.insert(
        herald_core::envelope::DATASCHEMA.into(),
        "shipping.v2.OrderShipped".into(),
    );
    let out = encode(&env, &config()).unwrap();
    let h = Lookup(&out.headers);
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
        h.string(header::CONTENT_TYPE).unwrap().as_deref(),
        Some("application/protobuf")
    );
    let back = round_trip(&env).unwrap();
    assert_eq!(back, env);
    assert_eq!(back.dataschema(), Some("shipping.v2.OrderShipped"));
}
