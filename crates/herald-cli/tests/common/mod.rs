//! Running the `herald` binary as an operator would, with none of the caller's `HERALD_*`
//! settings leaking in.

#![allow(dead_code)] // each test binary uses what it needs

use std::process::{Command, Output};

/// Runs `herald args` with no `HERALD_*` setting from the environment (default logging).
pub fn herald(args: &[&str]) -> Output {
    run(args, None)
}

/// Runs `herald args` like [`herald`], logging at `level` (`HERALD_LOG`).
pub fn herald_logging(level: &str, args: &[&str]) -> Output {
    run(args, Some(level))
}

fn run(args: &[&str], log: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(args);
    for name in [
        "HERALD_DATABASE_URL",
        "HERALD_SCHEMA",
        "HERALD_TABLE",
        "HERALD_TRANSPORT",
        "HERALD_AMQP_EXCHANGE",
        "HERALD_LOG",
    ] {
        command.env_remove(name);
    }
    if let Some(level) = log {
        command.env("HERALD_LOG", level);
    }
    command.output().expect("the herald binary runs")
}

/// Standard output and standard error, one after the other.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a local port");
    listener.local_addr().expect("its address").port()
}

/// `GET /metrics` from `addr` (`host:port`): the whole HTTP response, or `None` while nothing
/// answers there.
pub fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// A SQLite outbox in `dir` with `n` committed test events (keys `k0`, `k1` …); its URL.
pub fn sqlite_outbox_with_events(dir: &tempfile::TempDir, n: u64) -> String {
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store = herald_sqlite::SqliteOutbox::connect(&url, Default::default())
            .await
            .expect("the SQLite outbox opens");
        store.migrate().await.expect("migrated");
        let events: Vec<_> = (0..n)
            .map(|i| herald_testkit::envelope(&format!("k{i}"), i))
            .collect();
        let mut tx = store.begin().await.expect("a transaction");
        tx.record_all(&events).await.expect("recorded");
        tx.commit().await.expect("committed");
    });
    url
}
