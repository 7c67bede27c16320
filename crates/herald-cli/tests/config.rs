//! `herald config check` and `herald relay --config`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

/// Every key a configuration file knows.
const EVERY_OPTION: &str = r#"
[relay]
instances = 2
batch_size = 200
lease = "45s"
publish_timeout = "15s"
poll_interval = "500ms"
max_attempts = 7
backoff = { initial = "2s", max = "10m", multiplier = 3.0, jitter = 0.25 }
store_backoff = { initial = "200ms", max = "1m", multiplier = 2.0, jitter = 0.5 }
retention = { enabled = true, keep = "3d", every = "2m", batch = 5000 }

[amqp]
exchange = "orders"
exchange_kind = "direct"
routing_keys = { "ordering.order_created" = "orders.created" }
connection_name = "orders relay"
confirm_window = 128
heartbeat = "20s"
connect_timeout = "5s"
source = "/ordering"

[kafka]
topic = "ordering.events"
routes = { "ordering.audit_logged" = "ordering.audit" }
partitions = 12
replication_factor = 3
source = "/ordering"
client_id = "orders-relay"
in_flight = 5000
delivery_timeout = "2m"
max_message_bytes = 500000
session_timeout = "30s"
properties = { "security.protocol" = "sasl_ssl", "sasl.mechanism" = "PLAIN", "sasl.username" = "relay", "sasl.password" = "hunter2" }

[operations]
metrics_addr = "127.0.0.1:9464"
health_addr = "0.0.0.0:8080"
stats_interval = "30s"
"#;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_file_with_every_option_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(&dir, "herald.toml", EVERY_OPTION);
    let out = herald(&["config", "check", &first]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(": ok"), "{}", text(&out));

    let out = herald(&["config", "check", "--print", &first]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    for key in [
        "instances = 2",
        "batch_size = 200",
        "lease = \"45s\"",
        "poll_interval = \"500ms\"",
        "max_attempts = 7",
        "keep = \"3d\"",
        "exchange = \"orders\"",
        "\"ordering.order_created\" = \"orders.created\"",
        "source = \"/ordering\"",
        "topic = \"ordering.events\"",
        "\"ordering.audit_logged\" = \"ordering.audit\"",
        "partitions = 12",
        "delivery_timeout = \"2m\"",
        "\"sasl.mechanism\" = \"PLAIN\"",
        "\"sasl.password\" = \"***\"",
        "metrics_addr = \"127.0.0.1:9464\"",
        "stats_interval = \"30s\"",
    ] {
        assert!(printed.contains(key), "{key} missing:\n{printed}");
    }
    assert!(
        !printed.contains("hunter2"),
        "a password printed:\n{printed}"
    );
    let second = write(&dir, "printed.toml", &printed);
    let out = herald(&["config", "check", "--print", &second]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), printed);
}

#[test]
fn an_invalid_file_is_a_clear_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (file, expected) in [
        ("[relay]\nbatch_sise = 5\n", "batch_sise"),
        ("[relay]\nlease = \"30 parsecs\"\n", "lease"),
        ("[amqp]\nexchange_kind = \"sideways\"\n", "exchange_kind"),
        ("[kafka]\npartitionz = 3\n", "partitionz"),
        ("[kafka]\npartitions = 0\n", "[kafka]"),
        (
            "[kafka]\nproperties = { \"enable.idempotence\" = \"false\" }\n",
            "enable.idempotence",
        ),
        (
            "[relay]\nlease = \"5s\"\npublish_timeout = \"10s\"\n",
            "publish timeout",
        ),
        (
            "[operations]\nmetrics_addr = \"not an address\"\n",
            "metrics_addr",
        ),
    ] {
        let path = write(&dir, "bad.toml", file);
        let out = herald(&["config", "check", &path]);
        let all = text(&out);
        assert!(!out.status.success(), "{file} accepted:\n{all}");
        assert!(
            all.contains(expected),
            "{file}: {expected} not named:\n{all}"
        );
        assert!(!all.contains("panicked"), "{all}");
    }
}

#[test]
fn the_relay_takes_its_settings_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_outbox_with_events(&dir, 20);
    let port = free_port();
    let config = write(
        &dir,
        "herald.toml",
        &format!(
            "[relay]\nbatch_size = 7\n[operations]\nmetrics_addr = \"127.0.0.1:{port}\"\n\
             stats_interval = \"100ms\"\n"
        ),
    );
    let mut relay = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["relay", "--config", &config, "--database", &url])
        .env_remove("HERALD_TRANSPORT")
        .env_remove("HERALD_METRICS_ADDR")
        .env_remove("HERALD_BATCH_SIZE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let value = |body: &str, series: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Some(body) = scrape(&addr)
            && value(&body, "herald_relay_published_total") == 20.0
        {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not publish through its configured metrics address"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = relay.kill();
    let _ = relay.wait();
    // 20 events in batches of at most 7 (the default would take them in one).
    assert_eq!(value(&body, "herald_relay_batch_rows_sum"), 20.0);
    assert!(
        value(&body, "herald_relay_batch_rows_count") >= 3.0,
        "{body}"
    );
    assert_eq!(
        value(&body, "herald_relay_batch_rows_bucket{le=\"5\"}"),
        0.0,
        "{body}"
    );
}

#[test]
fn the_readmes_example_file_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find("# herald.toml").expect("the example file");
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "herald.toml", example);
    let out = herald(&["config", "check", &path]);
    assert!(out.status.success(), "{}\n{example}", text(&out));
}

#[test]
fn the_relay_takes_its_kafka_settings_from_the_file() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};

    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_outbox_with_events(&dir, 20);
    let servers = herald_testkit::env::kafka();
    let topic = format!(
        "herald-test-config-{}",
        herald_core::Uuid::now_v7().simple()
    );
    let config = write(
        &dir,
        "herald.toml",
        &format!(
            "[kafka]\ntopic = \"{topic}\"\npartitions = 3\nsource = \"/config-test\"\n\
             delivery_timeout = \"20s\"\n"
        ),
    );
    let mut relay = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["relay", "--config", &config, "--database", &url])
        .args(["--transport", &format!("kafka://{servers}")])
        .env_remove("HERALD_TRANSPORT")
        .env_remove("HERALD_KAFKA_TOPIC")
        .env_remove("HERALD_KAFKA_PARTITIONS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    reader.subscribe(&[&topic]).unwrap();
    let mut sources = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sources.len() < 20 && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) {
            let source = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == "ce_source")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            });
            sources.push(source);
        }
    }
    let partitions = reader
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap()
        .topics()
        .first()
        .map(|t| t.partitions().len());
    let _ = relay.kill();
    let _ = relay.wait();
    assert_eq!(sources.len(), 20, "the events reached the file's topic");
    assert!(
        sources.iter().all(|s| s.as_deref() == Some("/config-test")),
        "{sources:?}"
    );
    assert_eq!(partitions, Some(3), "declared with the file's partitions");
}
