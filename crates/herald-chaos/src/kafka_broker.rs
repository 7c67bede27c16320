//! Stopping and starting the Kafka broker of `scripts/services kafka` (SIGTERM through its pid
//! file; `scripts/services kafka` starts it again), with a guard that always starts it again,
//! whatever happens to the run.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The repository's `scripts/` (this crate is `crates/herald-chaos`).
fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// The first bootstrap server's socket address.
fn address(servers: &str) -> Result<SocketAddr> {
    let first = servers.split(',').next().unwrap_or(servers).trim();
    first
        .to_socket_addrs()
        .with_context(|| format!("resolve the Kafka server {first}"))?
        .next()
        .with_context(|| format!("Kafka server {first} has no address"))
}

/// Whether the broker accepts connections.
fn listens(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Checks that `servers` is the broker `scripts/services kafka` runs (`127.0.0.1:9092`):
/// the only one the harness may stop.
pub fn check_local(servers: &str) -> Result<()> {
    if servers.trim() != herald_testkit::env::KAFKA {
        bail!(
            "a Kafka broker restart stops the broker of `scripts/services kafka` ({}); \
             --kafka names {servers}",
            herald_testkit::env::KAFKA
        );
    }
    Ok(())
}

/// `scripts/services kafka`: starts the broker if it is not running and waits until it is up.
fn start_broker() -> Result<()> {
    let out = Command::new(scripts().join("services"))
        .arg("kafka")
        .stdin(Stdio::null())
        .output()
        .context("run scripts/services kafka")?;
    if !out.status.success() {
        bail!(
            "scripts/services kafka failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// SIGTERMs the broker through the pid file of `scripts/services kafka` and waits (up to a
/// minute) until it has exited.
fn stop_broker() -> Result<()> {
    let script = format!(
        ". '{}/kafka/layout' && pid=$(cat \"$kafka_pid\") && kill \"$pid\" && \
         for _ in $(seq 300); do kill -0 \"$pid\" 2>/dev/null || exit 0; sleep 0.2; done; exit 1",
        scripts().display()
    );
    let status = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()
        .context("stop the Kafka broker")?;
    if !status.success() {
        bail!("the Kafka broker did not stop ({status})");
    }
    Ok(())
}

/// The broker, stopped while this guard lives.
pub struct Stopped {
    started: bool,
}

impl Stopped {
    /// Stops the broker.
    pub fn stop() -> Result<Self> {
        // Armed before stopping: a stop that fails half-way is still undone.
        let mut guard = Self { started: false };
        if let Err(err) = stop_broker() {
            guard.start()?;
            return Err(err);
        }
        Ok(guard)
    }

    /// Starts it again (`scripts/services kafka` waits until it is up).
    pub fn start(&mut self) -> Result<()> {
        self.started = true;
        let mut last = None;
        for _ in 0..3 {
            match start_broker() {
                Ok(()) => return Ok(()),
                Err(err) => {
                    last = Some(err);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("could not start the Kafka broker")))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started
            && let Err(err) = self.start()
        {
            eprintln!("herald-chaos: could not start the Kafka broker again: {err:#}");
        }
    }
}

/// Makes sure the broker at `servers` runs (at the end of a Kafka run, whatever happened):
/// starts `scripts/services kafka`'s broker if it does not listen within a few seconds.
pub fn ensure_running(servers: &str) -> Result<()> {
    let addr = address(servers)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if listens(addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Only the broker of `scripts/services` is ours to start.
    check_local(servers).with_context(|| format!("the Kafka broker {servers} does not listen"))?;
    Stopped { started: false }.start()
}
