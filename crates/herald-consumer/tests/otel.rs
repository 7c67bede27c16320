//! One OpenTelemetry trace across the outbox (feature `otel`, enabled for this crate's tests):
//! a request records an event in PostgreSQL, a relay publishes it to RabbitMQ
//! (`HERALD_TEST_AMQP_URL`), a consumer handles it and records a follow-up event in its own
//! transaction. The spans go to an in-memory exporter; the test checks the trace's shape (the
//! process span is a child of the request's context, the send span links to it, the follow-up
//! carries the handling's context) and the spans' attributes, and that the handler's log
//! lines carry the correlation and causation ids.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_consumer::{Consumer, HandlerError, Router, TxContext};
use herald_core::{ClaimRequest, Envelope, Metadata, OutboxStore, TraceContext, Uuid};
use herald_postgres::PgOutbox;
use herald_relay::{Relay, RelayConfig};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The handler: logs a line and records a follow-up event in its transaction.
async fn credit(d: Deposited, ctx: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> {
    tracing::info!(account = %d.account, "crediting");
    ctx.record(&Credited {
        account: d.account,
        cents: d.cents,
    })
    .await?;
    Ok(())
}

/// Log lines written by a fmt layer, kept for the test to read.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn the_span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one span named `{name}` expected; spans: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// The trace and span ids of a W3C `traceparent`.
fn ids(trace: &TraceContext) -> (TraceId, SpanId) {
    let context = trace.span_context().expect("a valid traceparent");
    (context.trace_id(), context.span_id())
}

// Current-thread runtime: the relay, the consumer and the group commit's workers all run on
// this thread, under the subscriber set as its default below.
#[tokio::test]
async fn one_trace_runs_from_the_request_through_the_broker_to_the_follow_up_event() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("herald-test")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
    let _default = tracing::subscriber::set_default(subscriber);

    let producer = pg_store().await;
    let handling = pg_store().await;
    let exchange = format!("herald-otel-test-{}", Uuid::now_v7().simple());
    let transport = AmqpTransport::connect(AmqpConfig {
        exchange: exchange.clone(),
        expires: Some(Duration::from_secs(120)),
        ..AmqpConfig::new(herald_testkit::env::amqp_url())
    })
    .await
    .unwrap();

    let queue = queue();
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().transactional(&handling, "bank.credit", credit),
        config(),
    )
    .unwrap();
    transport.declare(consumer.subscription()).await.unwrap();
    let consumer_stop = CancellationToken::new();
    let token = consumer_stop.clone();
    let consuming = tokio::spawn(async move { consumer.run(token).await });
    let relay = Relay::new(producer.clone(), transport.clone(), RelayConfig::default()).unwrap();
    let relay_stop = CancellationToken::new();
    let token = relay_stop.clone();
    let relaying = tokio::spawn(async move { relay.run(token).await });

    // The request: records an event in its transaction, passing no trace context.
    let request = tracing::info_span!("request");
    let cause = Uuid::now_v7();
    let recorded = async {
        let mut tx = producer.begin().await.unwrap();
        let id = tx
            .record_with(
                &Deposited {
                    account: "amy".into(),
                    n: 0,
                    cents: 100,
                },
                Metadata::default().with_causation_id(cause),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        id
    }
    .instrument(request.clone())
    .await;
    let request_context = request.context().span().span_context().clone();
    let (trace_id, request_span) = (request_context.trace_id(), request_context.span_id());
    drop(request);

    // The follow-up the handler recorded, in the consumer's outbox.
    let deadline = tokio::time::Instant::now() + WAIT;
    let follow_up: Envelope = loop {
        let claimed = OutboxStore::claim(
            &handling,
            &ClaimRequest {
                relay_id: Uuid::now_v7(),
                limit: 10,
                lease: Duration::from_secs(60),
            },
        )
        .await
        .unwrap();
        if let Some(event) = claimed.into_iter().next() {
            break event.envelope;
        }
        assert!(tokio::time::Instant::now() < deadline, "no follow-up event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    consumer_stop.cancel();
    relay_stop.cancel();
    consuming.await.unwrap().unwrap();
    relaying.await.unwrap().unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // The relay's send span: its own trace, a link to the recording context.
    let send = the_span(&spans, &format!("send {exchange}"));
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(
        attribute(send, "messaging.system").as_deref(),
        Some("rabbitmq")
    );
    assert_eq!(
        attribute(send, "messaging.destination.name").as_deref(),
        Some(exchange.as_str())
    );
    assert_eq!(
        attribute(send, "messaging.message.id"),
        Some(recorded.to_string())
    );
    assert_eq!(
        attribute(send, "messaging.batch.message_count").as_deref(),
        Some("1")
    );
    let links: Vec<(TraceId, SpanId)> = send
        .links
        .links
        .iter()
        .map(|link| (link.span_context.trace_id(), link.span_context.span_id()))
        .collect();
    assert_eq!(links, vec![(trace_id, request_span)]);
    assert_ne!(send.span_context.trace_id(), trace_id);

    // The consumer's process span: a child of the request's context, across the broker.
    let process = the_span(&spans, &format!("process {queue}"));
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(process.span_context.trace_id(), trace_id);
    assert_eq!(process.parent_span_id, request_span);
    assert!(process.parent_span_is_remote);
    for (key, value) in [
        ("messaging.system", "rabbitmq".to_owned()),
        ("messaging.destination.name", queue.clone()),
        ("messaging.message.id", recorded.to_string()),
        ("event_type", "bank.deposited".to_owned()),
        ("correlation_id", recorded.to_string()),
        ("causation_id", cause.to_string()),
    ] {
        assert_eq!(attribute(process, key), Some(value), "{key}");
    }
    let handle = the_span(&spans, "handle");
    assert_eq!(handle.span_context.trace_id(), trace_id);
    assert_eq!(handle.parent_span_id, process.span_context.span_id());

    // The follow-up continues the trace from inside the handling, and the conversation.
    assert_eq!(
        ids(&follow_up.trace),
        (trace_id, handle.span_context.span_id())
    );
    assert_eq!(follow_up.correlation_id, recorded);
    assert_eq!(follow_up.causation_id, Some(recorded));

    // One trace: the request, its handling, nothing else.
    let mut in_trace: Vec<&str> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .map(|s| &*s.name)
        .collect();
    in_trace.sort_unstable();
    let process_name = format!("process {queue}");
    assert_eq!(in_trace, vec!["handle", process_name.as_str(), "request"]);

    // The handler's log line carries the conversation's ids.
    let text = lines.text();
    let line = text
        .lines()
        .find(|line| line.contains("crediting"))
        .expect("the handler's log line");
    assert!(
        line.contains(&format!("correlation_id={recorded}")),
        "{line}"
    );
    assert!(line.contains(&format!("causation_id={cause}")), "{line}");

    transport.delete_subscription(&queue).await.unwrap();
    pg_drop(&producer).await;
    pg_drop(&handling).await;
}
