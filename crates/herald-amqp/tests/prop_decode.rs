//! Property tests of envelope decoding from broker messages: whatever a message carries
//! (missing or mistyped headers, invalid UTF-8, structured values, oversized payloads and
//! headers, unknown spec versions, random bytes), decoding never panics and a message that is
//! not a valid envelope yields a typed, permanent error.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use herald_amqp::AmqpConfig;
use herald_amqp::mapping::{decode, header};
use herald_core::Error;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use proptest::prelude::*;

/// A configuration with small limits, so that oversized cases are cheap to generate.
fn config() -> AmqpConfig {
    AmqpConfig {
        max_message_bytes: 4096,
        max_header_bytes: 2048,
        ..AmqpConfig::new("amqp://127.0.0.1:5672/%2f")
    }
}

/// The headers of a valid message, as another CloudEvents producer would write them.
fn valid_headers() -> Vec<(String, AMQPValue)> {
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    vec![
        (header::SPECVERSION.into(), s("1.0")),
        (header::ID.into(), s("0192e7c6-3f2a-7cc1-9a8e-2f1f5b9d6a11")),
        (header::TYPE.into(), s("ordering.order_created")),
        (header::TIME.into(), s("2026-11-27T03:30:00Z")),
        (header::EVENT_VERSION.into(), AMQPValue::LongInt(2)),
        (header::PARTITION_KEY.into(), s("order-1")),
        ("tenant".into(), s("acme")),
    ]
}

fn properties(headers: Vec<(String, AMQPValue)>, content_type: Option<&str>) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(name.into(), value);
    }
    let props = BasicProperties::default().with_headers(table);
    match content_type {
        Some(ct) => props.with_content_type(ct.into()),
        None => props,
    }
}

/// Any AMQP value, nested a little, with strings that may not be UTF-8.
fn any_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        "[a-z0-9 ]{0,20}".prop_map(|s| AMQPValue::ShortString(s.into())),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        "\\PC{0,40}".prop_map(|s| AMQPValue::LongString(LongString::from(s.into_bytes()))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            proptest::collection::vec(("[a-z]{1,8}", inner), 0..4).prop_map(|kv| {
                let mut t = FieldTable::default();
                for (k, v) in kv {
                    t.insert(k.into(), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

/// A header name: one of the mapping's, an infrastructure one, or free-form.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            header::SPECVERSION,
            header::ID,
            header::TYPE,
            header::TIME,
            header::EVENT_VERSION,
            header::CORRELATION_ID,
            header::CAUSATION_ID,
            header::PARTITION_KEY,
            header::TRACEPARENT,
            header::TRACESTATE,
            header::ATTEMPT,
            header::DELIVERY_COUNT,
            "x-death",
            "cloudEvents_id",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z:_-]{1,24}",
    ]
}

/// A decoding failure must be one of the typed envelope errors, and never worth a retry.
fn assert_typed(error: &Error) {
    assert!(
        matches!(
            error,
            Error::InvalidEnvelope { .. } | Error::TooLarge { .. }
        ),
        "untyped decoding error: {error:?}"
    );
    assert!(
        !error.is_transient(),
        "a malformed message is not transient"
    );
}

#[test]
fn the_valid_base_message_decodes() {
    let props = properties(valid_headers(), Some("application/json"));
    let env = decode(&props, b"{\"order\":1}", &config()).unwrap();
    assert_eq!(env.event_type, "ordering.order_created");
    assert_eq!(env.version, 2);
    assert_eq!(env.partition_key.as_deref(), Some("order-1"));
    assert_eq!(env.headers.get("tenant").map(String::as_str), Some("acme"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random headers, random properties, random payload: never a panic, always typed.
    #[test]
    fn random_messages_never_panic(
        headers in proptest::collection::vec((any_name(), any_value()), 0..12),
        content_type in proptest::option::of("[a-z/+.-]{0,30}"),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let props = properties(headers, content_type.as_deref());
        if let Err(error) = decode(&props, &payload, &config()) {
            assert_typed(&error);
        }
    }

    /// A valid message with one header dropped, one replaced by any value, and one extra
    /// header: never a panic; a failure names a typed reason.
    #[test]
    fn mutated_valid_messages_never_panic(
        drop in 0usize..8,
        replace in 0usize..8,
        value in any_value(),
        extra in (any_name(), any_value()),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut headers = valid_headers();
        if replace < headers.len() {
            headers[replace].1 = value;
        }
        if drop < headers.len() {
            headers.remove(drop);
        }
        headers.push(extra);
        let props = properties(headers, Some("application/json"));
        if let Err(error) = decode(&props, &payload, &config()) {
            assert_typed(&error);
        }
    }

    /// Any required header that is missing is reported under its own name.
    #[test]
    fn a_missing_required_header_is_named(index in 0usize..4) {
        let mut headers = valid_headers();
        let (name, _) = headers.remove(index);
        let props = properties(headers, Some("application/json"));
        match decode(&props, b"{}", &config()) {
            Err(Error::InvalidEnvelope { field, .. }) => prop_assert_eq!(field, name),
            other => prop_assert!(false, "expected a missing {name}, got {other:?}"),
        }
    }

    /// Invalid UTF-8 in a string header is an invalid envelope, not a panic or a lossy string.
    #[test]
    fn invalid_utf8_in_a_header_is_refused(
        name in prop::sample::select(vec![header::ID, header::TYPE, header::PARTITION_KEY, "tenant"]),
        prefix in "[a-z]{0,8}",
    ) {
        let mut bytes = prefix.into_bytes();
        bytes.extend_from_slice(&[0xff, 0xfe, 0x80]);
        let mut headers = valid_headers();
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_owned(), AMQPValue::LongString(LongString::from(bytes))));
        let props = properties(headers, Some("application/json"));
        let error = decode(&props, b"{}", &config()).unwrap_err();
        assert_typed(&error);
    }

    /// Unknown CloudEvents spec versions are refused.
    #[test]
    fn unknown_spec_versions_are_refused(version in "[0-9.a-z]{0,6}") {
        prop_assume!(version != "1.0");
        let mut headers = valid_headers();
        headers[0].1 = AMQPValue::LongString(LongString::from(version.into_bytes()));
        let props = properties(headers, Some("application/json"));
        match decode(&props, b"{}", &config()) {
            Err(Error::InvalidEnvelope { field, .. }) => prop_assert_eq!(field, header::SPECVERSION),
            other => prop_assert!(false, "expected a refused specversion, got {other:?}"),
        }
    }

    /// Payloads and headers over the configured limits are refused as too large.
    #[test]
    fn oversized_payloads_and_headers_are_too_large(
        over in 1usize..2000,
        in_headers in any::<bool>(),
    ) {
        let config = config();
        let mut headers = valid_headers();
        let payload = if in_headers {
            let big = "h".repeat(config.max_header_bytes + over);
            headers.push(("big".into(), AMQPValue::LongString(LongString::from(big.into_bytes()))));
            Vec::new()
        } else {
            vec![b'x'; config.max_message_bytes + over]
        };
        let props = properties(headers, Some("application/json"));
        match decode(&props, &payload, &config) {
            Err(Error::TooLarge { what, limit, .. }) => {
                let expected = if in_headers { "headers" } else { "payload" };
                prop_assert_eq!(what, expected);
                let limit_of = if in_headers { config.max_header_bytes } else { config.max_message_bytes };
                prop_assert_eq!(limit, limit_of);
            }
            other => prop_assert!(false, "expected too large, got {other:?}"),
        }
    }
}
