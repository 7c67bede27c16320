//! The `herald` binary on Kafka (`HERALD_TEST_KAFKA`, default the local broker).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

#[test]
fn kafka_declare_creates_the_topics_idempotently() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("herald-cli-test-{id}");
    let url = format!("kafka://{}", herald_testkit::env::kafka());
    let args = [
        "kafka",
        "declare",
        "--transport",
        &url,
        "--topic",
        &topic,
        "--partitions",
        "3",
        "--subscription",
        "billing",
    ];
    let dry: Vec<&str> = args.iter().copied().chain(["--dry-run"]).collect();
    let out = herald(&dry);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("would declare"), "{}", text(&out));

    for _ in 0..2 {
        let out = herald(&args);
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(
            all.contains(&format!(
                "topic {topic} (3 partition(s), replication factor 1)"
            )),
            "{all}"
        );
        assert!(
            all.contains(&format!(
                "topic {topic}.billing.dead-letter (1 partition(s), replication factor 1, compacted)"
            )),
            "{all}"
        );
    }

    // What was declared is there, as a plain client sees it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", herald_testkit::env::kafka())
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(None, std::time::Duration::from_secs(10))
            .unwrap();
        let partitions = |name: &str| {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .map(|t| t.partitions().len())
        };
        assert_eq!(partitions(&topic), Some(3));
        assert_eq!(partitions(&format!("{topic}.billing.retry")), Some(3));
        assert_eq!(partitions(&format!("{topic}.billing.dead-letter")), Some(1));
    });
}

#[test]
fn kafka_declare_refuses_a_url_that_is_not_kafka() {
    let out = herald(&[
        "kafka",
        "declare",
        "--transport",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not a kafka:// URL"),
        "{}",
        text(&out)
    );
}
