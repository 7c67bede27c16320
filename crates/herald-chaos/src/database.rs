//! Restarting PostgreSQL (`pg_ctlcluster <version> main restart`, the version read from
//! `/etc/postgresql`), with a guard that always starts it again, whatever happens to the run.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Where the database listens (checked after a start).
const PG_PORT: &str = "127.0.0.1:5432";

/// The cluster's version: the highest numbered directory of `/etc/postgresql`.
fn version() -> Result<String> {
    let mut versions: Vec<(u32, String)> = std::fs::read_dir("/etc/postgresql")
        .context("read /etc/postgresql")?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let number = name.split('.').next()?.parse().ok()?;
            Path::new("/etc/postgresql")
                .join(&name)
                .join("main")
                .is_dir()
                .then_some((number, name))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, name)| name)
        .context("no cluster under /etc/postgresql")
}

fn pg_ctlcluster(action: &str) -> Result<()> {
    let version = version()?;
    let status = Command::new("pg_ctlcluster")
        .args([version.as_str(), "main", action])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("run pg_ctlcluster")?;
    if !status.success() {
        bail!("pg_ctlcluster {version} main {action} failed: {status}");
    }
    Ok(())
}

/// Waits until the database's port accepts connections.
fn wait_for_port(within: Duration) -> Result<()> {
    let addr: SocketAddr = PG_PORT.parse()?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("postgresql did not listen on {PG_PORT} within {within:?}")
}

/// Restarts the cluster (every session ends) and waits for its port. Whatever the restart
/// did, the cluster is started again before this returns.
pub fn restart() -> Result<()> {
    let restarted = pg_ctlcluster("restart");
    let running = ensure_running();
    restarted.and(running)
}

/// Makes sure the cluster runs (after every restart and at the end of a run, pass or fail).
pub fn ensure_running() -> Result<()> {
    if wait_for_port(Duration::from_millis(500)).is_ok() {
        return Ok(());
    }
    let mut last = None;
    for _ in 0..5 {
        match pg_ctlcluster("start") {
            Ok(()) => return wait_for_port(Duration::from_secs(60)),
            Err(err) => {
                // `start` fails on a cluster that is already up (a restart racing us).
                if wait_for_port(Duration::from_secs(1)).is_ok() {
                    return Ok(());
                }
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("could not start postgresql")))
}

/// Starts the cluster again when dropped, if it is not running: held for the whole of a run.
pub struct RunningGuard;

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Err(err) = ensure_running() {
            eprintln!("herald-chaos: could not start postgresql again: {err:#}");
        }
    }
}
