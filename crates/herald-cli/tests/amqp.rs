//! The `herald` binary on RabbitMQ (`HERALD_TEST_AMQP_URL`, default the local broker).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use std::process::Output;

fn amqp_url() -> String {
    herald_testkit::env::amqp_url()
}

#[test]
fn amqp_declare_lays_out_the_topology_idempotently() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let exchange = format!("herald-cli-test-{id}");
    let queue = format!("herald-cli-test-billing-{id}");
    let url = amqp_url();
    let subscription = format!("{queue}=ordering.order_created,ordering.order_cancelled");
    let args = [
        "amqp",
        "declare",
        "--transport",
        &url,
        "--exchange",
        &exchange,
        "--retry-delays",
        "1s,30s",
        "--subscription",
        &subscription,
    ];
    let dry: Vec<&str> = args.iter().copied().chain(["--dry-run"]).collect();
    let out = herald(&dry);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{queue}.retry.30000ms")),
        "{}",
        text(&out)
    );

    for _ in 0..2 {
        let out = herald(&args);
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(
            all.contains(&format!(
                "binding  {exchange} → {queue} (key `ordering.order_created`)"
            )),
            "{all}"
        );
        assert!(all.contains(&format!("queue    {queue}.dlq")), "{all}");
        assert!(!all.contains(":guest@"), "password printed:\n{all}");
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = herald_amqp::AmqpConfig {
            exchange: exchange.clone(),
            retry_delays: vec![
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(30),
            ],
            ..herald_amqp::AmqpConfig::new(&url)
        };
        let transport = herald_amqp::AmqpTransport::connect(config).await.unwrap();
        transport.delete_subscription(&queue).await.unwrap();
        transport.close().await;
    });
}

#[test]
fn a_conflicting_declaration_is_a_clear_error() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let exchange = format!("herald-cli-test-{id}");
    let url = amqp_url();
    let out = herald(&[
        "amqp",
        "declare",
        "--transport",
        &url,
        "--exchange",
        &exchange,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = herald(&[
        "amqp",
        "declare",
        "--transport",
        &url,
        "--exchange",
        &exchange,
        "--exchange-kind",
        "fanout",
    ]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("exists with other settings"), "{all}");
}

#[test]
fn demo_runs_end_to_end_on_rabbitmq() {
    let url = amqp_url();
    let out = herald(&[
        "demo",
        "--orders",
        "300",
        "--rate",
        "0",
        "--transport",
        &url,
    ]);
    let all = text(&out);
    assert!(out.status.success(), "demo failed:\n{all}");
    assert!(all.contains("RabbitMQ"), "{all}");
    assert!(all.contains("check:"), "consistency check printed:\n{all}");
    assert!(
        all.contains("unknown sku"),
        "the poison order is dead-lettered:\n{all}"
    );
    assert!(!all.contains(":guest@"), "password printed:\n{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_dead_letters_are_listed_replayed_and_purged() {
    use herald_core::{DeliveryStream, Publisher, Subscriber, SubscriptionSpec};

    let id = uuid::Uuid::now_v7().simple().to_string();
    let url = amqp_url();
    let mut config = herald_amqp::AmqpConfig::new(url.clone());
    config.exchange = format!("herald-cli-test-{id}");
    let transport = herald_amqp::AmqpTransport::connect(config).await.unwrap();
    let name = format!("herald-cli-test-dead-{id}");
    let mut stream = transport
        .subscribe(&SubscriptionSpec::new(name.clone(), Vec::<String>::new()))
        .await
        .unwrap();
    let envelope = herald_testkit::envelope("cli", 0);
    transport.publish(std::slice::from_ref(&envelope)).await[0]
        .as_ref()
        .unwrap();
    let delivery = stream.next().await.unwrap().unwrap();
    delivery.reject("no such account").await.unwrap();
    let queue = ["--transport", url.as_str(), "--subscription", name.as_str()];
    let amqp = |command: &str, rest: &[&str]| -> Output {
        let args: Vec<&str> = ["amqp", command]
            .iter()
            .chain(&queue)
            .chain(rest)
            .copied()
            .collect();
        herald(&args)
    };

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let out = amqp("dead-letters", &[]);
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        if !all.contains("no dead letters") || std::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(listed.contains(&envelope.id.to_string()), "{listed}");
    assert!(listed.contains("no such account"), "{listed}");

    let out = amqp("replay", &["--all"]);
    assert!(text(&out).contains("replayed 1"), "{}", text(&out));
    let again = stream.next().await.unwrap().unwrap();
    assert_eq!((again.envelope.id, again.attempt), (envelope.id, 1));
    again.reject("still no such account").await.unwrap();

    let id_text = envelope.id.to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = amqp("purge", &[&id_text]);
        if out.status.success() || std::time::Instant::now() > deadline {
            assert!(text(&out).contains("purged 1"), "{}", text(&out));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = amqp("dead-letters", &[]);
    assert!(text(&out).contains("no dead letters"), "{}", text(&out));
    transport.delete_subscription(&name).await.unwrap();
}
