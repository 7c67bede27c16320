//! `herald relay --metrics-addr / --health-addr` and `herald outbox status --json | check`,
//! against PostgreSQL (`HERALD_TEST_DATABASE_URL`) and RabbitMQ (`HERALD_TEST_AMQP_URL`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_core::{
    ClaimRequest, DeliveryStream, Disposition, Envelope, Failure, OutboxStore, Subscriber,
    SubscriptionSpec,
};
use herald_postgres::{PgOutbox, PgOutboxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::Instant;

const GOOD: &str = "metrics.good";
const UNROUTABLE: &str = "metrics.unroutable";

/// A fresh outbox schema with its tables.
async fn outbox(schema: &str) -> PgOutbox {
    let config = PgOutboxConfig::new(schema, "outbox").unwrap();
    let store = PgOutbox::connect(&herald_testkit::env::database_url(), config)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

async fn drop_schema(store: &PgOutbox) {
    let schema = store.config().schema.quoted();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(store.pool())
        .await
        .unwrap();
}

/// `n` envelopes of `event_type`, each with a key of its own (no event waits behind another).
fn events(event_type: &str, n: u64) -> Vec<Envelope> {
    (0..n)
        .map(|i| {
            let mut envelope = herald_testkit::envelope(&format!("{event_type}-{i}"), i);
            envelope.event_type = event_type.to_owned();
            envelope
        })
        .collect()
}

async fn record(store: &PgOutbox, envelopes: &[Envelope]) {
    let mut tx = store.begin().await.unwrap();
    tx.record_all(envelopes).await.unwrap();
    tx.commit().await.unwrap();
}

/// A `herald` process, killed when dropped; its output goes to a file, shown by `output()`.
struct Herald {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Herald {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Herald {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command.args(args);
        for name in [
            "HERALD_DATABASE_URL",
            "HERALD_SCHEMA",
            "HERALD_TABLE",
            "HERALD_TRANSPORT",
            "HERALD_AMQP_EXCHANGE",
            "HERALD_METRICS_ADDR",
            "HERALD_HEALTH_ADDR",
        ] {
            command.env_remove(name);
        }
        command.env("HERALD_LOG", "info");
        for (name, value) in env {
            command.env(name, value);
        }
        let append = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(log.path())
                .unwrap()
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(append()))
            .stderr(Stdio::from(append()))
            .spawn()
            .unwrap();
        Herald { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr`: the status and the body; `None` if nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Every sample of an exposition, by series (`name{labels}`), checked line by line against
/// the text format: comments are `# HELP` or `# TYPE`, samples `series value`.
fn parse(exposition: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in exposition.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "comment line: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// The value of a series (0 when absent: a counter not yet incremented).
fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// Runs `promtool check metrics` on an exposition, when promtool is installed (Debian's
/// `prometheus` package; `scripts/services` installs it).
fn promtool_check(exposition: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: only the test's own format check ran");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_metrics_match_what_was_published_and_what_failed() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("herald_cli_metrics_{id}");
    let exchange = format!("herald-cli-metrics-{id}");
    let queue = format!("herald-cli-metrics-{id}");
    let database = herald_testkit::env::database_url();
    let broker = herald_testkit::env::amqp_url();
    let store = outbox(&schema).await;
    // Only the good type has a queue: the broker returns every unroutable event, a publish
    // failure of its own, one per attempt.
    let transport = AmqpTransport::connect(AmqpConfig {
        exchange: exchange.clone(),
        ..AmqpConfig::new(&broker)
    })
    .await
    .unwrap();
    let spec = SubscriptionSpec::new(queue.clone(), [GOOD]);
    transport.declare(&spec).await.unwrap();
    let (good, failing) = (120u64, 5u64);
    record(&store, &events(GOOD, good)).await;
    record(&store, &events(UNROUTABLE, failing)).await;

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let addr_text = addr.to_string();
    let relay = Herald::spawn(
        &[
            "relay",
            "--database",
            &database,
            "--schema",
            &schema,
            "--transport",
            &broker,
            "--max-attempts",
            "2",
            "--metrics-addr",
            &addr_text,
            "--stats-interval",
            "200ms",
        ],
        &[("HERALD_AMQP_EXCHANGE", &exchange)],
    );

    // Scraped while it drains: counters never go back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = BTreeMap::new();
    let mut scrapes = 0;
    let samples = loop {
        assert!(
            Instant::now() < deadline,
            "the drain did not finish: {last:?}\n{}",
            relay.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some((200, body)) = get(addr, "/metrics").await else {
            continue;
        };
        scrapes += 1;
        let samples = parse(&body);
        for series in [
            "herald_relay_published_total",
            "herald_relay_failed_total",
            "herald_relay_dead_lettered_total",
        ] {
            assert!(
                value(&samples, series) >= value(&last, series),
                "{series} went back"
            );
        }
        last = samples.clone();
        if value(&samples, "herald_relay_published_total") >= good as f64
            && value(&samples, "herald_relay_dead_lettered_total") >= failing as f64
        {
            break samples;
        }
    };
    assert!(scrapes >= 1);
    assert_eq!(value(&samples, "herald_relay_published_total"), good as f64);
    // Two attempts each (max attempts 2), then a dead letter.
    assert_eq!(
        value(&samples, "herald_relay_failed_total"),
        (2 * failing) as f64
    );
    assert_eq!(
        value(&samples, "herald_relay_dead_lettered_total"),
        failing as f64
    );
    assert_eq!(
        value(&samples, "herald_relay_claimed_total"),
        value(&samples, "herald_relay_published_total")
            + value(&samples, "herald_relay_failed_total")
            + value(&samples, "herald_relay_released_total")
    );
    assert_eq!(
        value(&samples, "herald_relay_batch_rows_sum"),
        value(&samples, "herald_relay_claimed_total")
    );
    assert!(value(&samples, "herald_relay_publish_duration_seconds_count") >= 1.0);
    assert_eq!(value(&samples, "herald_relay_in_flight_rows"), 0.0);

    // The outbox monitor's next sample: empty but for the dead letters.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (_, body) = get(addr, "/metrics").await.unwrap();
        let samples = parse(&body);
        if value(&samples, "herald_outbox_dead_letter_rows") == failing as f64 {
            assert_eq!(
                value(&samples, "herald_outbox_pending_rows{state=\"due\"}"),
                0.0
            );
            assert_eq!(
                value(
                    &samples,
                    "herald_outbox_pending_rows{state=\"backing_off\"}"
                ),
                0.0
            );
            assert_eq!(value(&samples, "herald_outbox_oldest_due_age_seconds"), 0.0);
            break body;
        }
        assert!(Instant::now() < deadline, "no outbox sample:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for help in [
        "# HELP herald_relay_published_total",
        "# TYPE herald_relay_publish_duration_seconds histogram",
        "# TYPE herald_outbox_oldest_due_age_seconds gauge",
    ] {
        assert!(body.contains(help), "{help} missing:\n{body}");
    }
    promtool_check(&body);

    // Published = recorded, on the broker's side: every good event is in the queue, once.
    let mut stream = transport.subscribe(&spec).await.unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < good as usize && Instant::now() < deadline {
        if let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(1), stream.next()).await
        {
            assert!(seen.insert(delivery.envelope.id), "published twice");
            delivery.ack().await.unwrap();
        }
    }
    assert_eq!(seen.len(), good as usize);

    drop(relay);
    transport.delete_subscription(&queue).await.unwrap();
    transport.close().await;
    drop_schema(&store).await;
}

/// A TCP proxy to `upstream` that can be cut (every connection closed, the port refused) and
/// opened again on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: String,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        // Bound at once, on a port the system picks: a port found free and bound later may
        // be taken in between by a test running in parallel.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    /// Listens again on the same port after a [`cut`](Self::cut).
    async fn open(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if tries < 50 => {
                    tries += 1;
                    eprintln!(
                        "proxy port {} not free yet ({error}); trying again",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("proxy port {} not free: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// `host:port` of a URL's authority.
fn host_port(url: &str, default_port: u16) -> String {
    let url = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port().unwrap_or(default_port)
    )
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_host(Some(&addr.ip().to_string())).unwrap();
    url.set_port(Some(addr.port())).unwrap();
    url.to_string()
}

/// Polls `/readyz` until it answers `status`; the last body.
async fn ready_becomes(addr: SocketAddr, status: u16, within: Duration, relay: &Herald) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some((got, body)) = get(addr, "/readyz").await {
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "readiness stayed {got}, not {status}: {body}\n{}",
                relay.output()
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "no answer on {addr}\n{}",
                relay.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `/metrics` until `herald_dependency_up{dependency=…}` is `expected`.
async fn up_becomes(addr: SocketAddr, dependency: &str, expected: f64, relay: &Herald) {
    let series = format!("herald_dependency_up{{dependency=\"{dependency}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = get(addr, "/metrics").await
            && parse(&body).get(&series) == Some(&expected)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {expected}\n{}",
            relay.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_the_broker() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("herald_cli_health_{id}");
    let database = herald_testkit::env::database_url();
    let broker = herald_testkit::env::amqp_url();
    let store = outbox(&schema).await;
    let db_proxy = Proxy::start(host_port(&database, 5432)).await;
    let amqp_proxy = Proxy::start(host_port(&broker, 5672)).await;
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (database_url, broker_url) = (
        through(&database, db_proxy.addr),
        through(&broker, amqp_proxy.addr),
    );
    let health_text = health.to_string();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics_text = metrics.to_string();
    let exchange = format!("herald-cli-health-{id}");
    let relay = Herald::spawn(
        &[
            "relay",
            "--database",
            &database_url,
            "--schema",
            &schema,
            "--transport",
            &broker_url,
            "--health-addr",
            &health_text,
            "--metrics-addr",
            &metrics_text,
            "--stats-interval",
            "200ms",
        ],
        &[("HERALD_AMQP_EXCHANGE", &exchange)],
    );
    let long = Duration::from_secs(30);
    let body = ready_becomes(health, 200, long, &relay).await;
    assert!(body.contains("\"ready\":true"), "{body}");

    db_proxy.cut();
    let body = ready_becomes(health, 503, long, &relay).await;
    assert!(body.contains("\"database\":{\"ok\":false"), "{body}");
    assert!(body.contains("\"broker\":{\"ok\":true"), "{body}");
    assert_eq!(get(health, "/livez").await.unwrap().0, 200, "still alive");
    up_becomes(metrics, "database", 0.0, &relay).await;
    up_becomes(metrics, "broker", 1.0, &relay).await;
    db_proxy.open().await;
    ready_becomes(health, 200, long, &relay).await;

    amqp_proxy.cut();
    let body = ready_becomes(health, 503, long, &relay).await;
    assert!(body.contains("\"broker\":{\"ok\":false"), "{body}");
    assert!(body.contains("\"database\":{\"ok\":true"), "{body}");
    up_becomes(metrics, "broker", 0.0, &relay).await;
    amqp_proxy.open().await;
    ready_becomes(health, 200, long, &relay).await;
    up_becomes(metrics, "database", 1.0, &relay).await;
    up_becomes(metrics, "broker", 1.0, &relay).await;

    assert_eq!(get(health, "/nothing").await.unwrap().0, 404);
    drop(relay);
    db_proxy.cut();
    amqp_proxy.cut();
    drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_check_fails_on_an_old_due_event_or_dead_letters_and_status_prints_json() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("herald_cli_check_{id}");
    let database = herald_testkit::env::database_url();
    let store = outbox(&schema).await;
    let db = ["--database", database.as_str(), "--schema", schema.as_str()];
    let outbox_cmd = |rest: &[&str]| {
        let args: Vec<&str> = ["outbox"].iter().chain(&db).chain(rest).copied().collect();
        herald(&args)
    };

    let out = outbox_cmd(&["check", "--max-age", "60s", "--max-dead-letters", "0"]);
    assert!(
        out.status.success(),
        "an empty outbox is healthy:\n{}",
        text(&out)
    );

    // An event recorded two minutes ago and never published.
    record(&store, &events(GOOD, 1)).await;
    let table = format!("{}.\"outbox\"", store.config().schema.quoted());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET recorded_at = now() - interval '120 seconds'"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let out = outbox_cmd(&["check", "--max-age", "60s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL  oldest due event"),
        "{}",
        text(&out)
    );
    let out = outbox_cmd(&["check", "--max-age", "5m", "--max-dead-letters", "0"]);
    assert!(out.status.success(), "{}", text(&out));

    // Backing off after a failure, the same event is not due: it does not age the outbox.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET available_at = now() + interval '1 hour', attempts = 1"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let out = outbox_cmd(&["check", "--max-age", "60s"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = outbox_cmd(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pending"], 1);
    assert_eq!(status["backing_off"], 1);
    assert_eq!(status["due"], 0);
    assert!(status["oldest_due_age_seconds"].is_null(), "{status}");
    assert!(status["oldest_pending_age_seconds"].as_f64().unwrap() >= 119.0);

    // A dead letter: an event of another key, claimed and given up on.
    record(&store, &events(UNROUTABLE, 1)).await;
    let relay = uuid::Uuid::now_v7();
    let claimed = store
        .claim(&ClaimRequest {
            relay_id: relay,
            limit: 10,
            lease: Duration::from_secs(30),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "only the second event is available");
    store
        .fail(
            relay,
            &[Failure {
                seq: claimed[0].seq,
                error: "given up".into(),
                disposition: Disposition::DeadLetter,
            }],
        )
        .await
        .unwrap();
    let out = outbox_cmd(&["check", "--max-age", "60s", "--max-dead-letters", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("ok    oldest due event"), "{all}");
    assert!(all.contains("FAIL  1 dead letter(s) (max 0)"), "{all}");
    let out = outbox_cmd(&["check", "--max-dead-letters", "1"]);
    assert!(out.status.success(), "{}", text(&out));

    // --watch prints a sample per interval, one JSON object a line, until stopped.
    let watching = Herald::spawn(
        &[
            "outbox",
            "--database",
            &database,
            "--schema",
            &schema,
            "status",
            "--json",
            "--watch",
            "100ms",
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let samples = loop {
        let samples: Vec<serde_json::Value> = watching
            .output()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if samples.len() >= 3 {
            break samples;
        }
        assert!(Instant::now() < deadline, "{}", watching.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(watching);
    assert!(
        samples.iter().all(|s| s["dead_lettered"] == 1),
        "{samples:?}"
    );

    let out = outbox_cmd(&["check"]);
    assert_eq!(out.status.code(), Some(1), "nothing to check is an error");
    drop_schema(&store).await;
}
