//! The consumer's metrics through the `metrics` facade, rendered by the Prometheus exporter,
//! against PostgreSQL (the inbox) and RabbitMQ (`HERALD_TEST_DATABASE_URL`,
//! `HERALD_TEST_AMQP_URL`). The recorder is global to this test binary: one test only.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_consumer::{Consumer, HandlerError, Router, TxContext};
use herald_core::{Publisher, Uuid};
use herald_postgres::PgOutbox;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

async fn credit(d: Deposited, ctx: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> {
    let store = ctx.outbox().clone();
    credit_pg_account(&store, ctx.db(), &d).await?;
    Ok(())
}

/// Every sample of an exposition by series (`name{labels}`).
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The sum of the series of `name` whose labels contain every one of `labels`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_metrics_count_handled_messages_and_the_duplicates_the_inbox_skipped() {
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .unwrap()
        .install_recorder()
        .unwrap();
    herald_consumer::metrics::describe();
    let store = pg_store().await;
    let transport = AmqpTransport::connect(AmqpConfig {
        exchange: format!("herald-consumer-metrics-{}", Uuid::now_v7().simple()),
        expires: Some(Duration::from_secs(120)),
        ..AmqpConfig::new(herald_testkit::env::amqp_url())
    })
    .await
    .unwrap();
    let queue = queue();
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().transactional(&store, "bank.credit", credit),
        config(),
    )
    .unwrap();
    let snapshot = consumer.metrics();
    transport.declare(consumer.subscription()).await.unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { consumer.run(token).await });

    // 30 messages, then 7 of them again: the broker delivers them twice, as after a relay
    // crashed between publishing and completing.
    let (distinct, duplicated) = (30usize, 7usize);
    let messages: Vec<_> = (0..distinct)
        .map(|i| deposit(&format!("acct-{}", i % 5), i as u64))
        .collect();
    for result in transport.publish(&messages).await {
        result.unwrap();
    }
    eventually("the first deliveries acknowledged", || async {
        snapshot.snapshot().acked == distinct as u64
    })
    .await;
    for result in transport.publish(&messages[..duplicated]).await {
        result.unwrap();
    }
    eventually("every delivery acknowledged", || async {
        snapshot.snapshot().acked == (distinct + duplicated) as u64
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let body = prometheus.render();
    let all = samples(&body);
    let consumer_label = format!("consumer=\"{queue}\"");
    let of = |name: &str, labels: &[&str]| {
        let mut labels = labels.to_vec();
        labels.push(&consumer_label);
        sum(&all, name, &labels)
    };
    assert_eq!(
        of("herald_consumer_duplicates_total", &[]),
        duplicated as f64,
        "{body}"
    );
    assert_eq!(
        of("herald_consumer_received_total", &[]),
        (distinct + duplicated) as f64
    );
    assert_eq!(
        of("herald_consumer_acked_total", &[]),
        (distinct + duplicated) as f64
    );
    let handled = |outcome: &str| {
        of(
            "herald_consumer_handled_total",
            &["handler=\"bank.credit\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(handled("done"), distinct as f64, "{body}");
    assert_eq!(handled("duplicate"), duplicated as f64, "{body}");
    assert_eq!(handled("retry") + handled("dead_letter"), 0.0);
    assert_eq!(
        of("herald_consumer_handling_duration_seconds_count", &[]),
        (distinct + duplicated) as f64
    );
    // The lag of what was handled, not of what the inbox skipped.
    assert_eq!(
        of("herald_consumer_lag_seconds_count", &[]),
        distinct as f64
    );
    assert!(of("herald_consumer_lag_seconds_sum", &[]) > 0.0);
    assert!(
        !body.contains(&messages[0].id.to_string()),
        "no message id in a label"
    );
    let (deposits,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT sum(deposits)::bigint FROM {}",
        pg_accounts(&store)
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(deposits, distinct as i64, "effects once per message");

    transport.delete_subscription(&queue).await.unwrap();
    pg_drop(&store).await;
}
