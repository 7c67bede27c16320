//! The processes of one run: spawned from this binary in their role, killed with SIGKILL and
//! restarted by the orchestrator, and watched for exits nobody asked for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::roles::CRASH_EXIT;

/// One long-running role process (relay or consumer).
pub struct Proc {
    /// `relay-0`, `consumer-1` …
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    restart_at: Option<Instant>,
}

/// What a look at the processes found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exits {
    /// Exits the harness caused (its SIGKILLs, and consumers ending themselves on purpose
    /// between commit and ack).
    pub induced: u64,
    /// Any other exit: a process that would have needed a manual restart.
    pub unexpected: u64,
}

impl Proc {
    /// Spawns `herald-chaos <args>` with stderr into `dir/<name>.log`.
    pub fn spawn(name: String, args: Vec<String>, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let mut proc = Self {
            name,
            args,
            log,
            child: None,
            restart_at: None,
        };
        proc.start()?;
        Ok(proc)
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(std::env::current_exe()?)
            .args(&self.args)
            .env("RUST_LOG", child_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        self.restart_at = None;
        Ok(())
    }

    /// SIGKILLs the process and schedules its restart after `pause`.
    pub async fn kill(&mut self, pause: Duration) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        self.restart_at = Some(Instant::now() + pause);
        Ok(())
    }

    /// Restarts a process that is due, and counts exits since the last look.
    pub fn tend(&mut self, exits: &mut Exits) -> Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            if status.code() == Some(CRASH_EXIT) {
                exits.induced += 1;
            } else {
                exits.unexpected += 1;
                eprintln!(
                    "herald-chaos: {} exited by itself ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            self.child = None;
            self.restart_at = Some(Instant::now());
        }
        if self.restart_at.is_some_and(|at| at <= Instant::now()) {
            self.start()?;
        }
        Ok(())
    }

    /// Kills the process for good at the end of the run.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.restart_at = None;
    }
}

/// A producer process, run to its end.
pub fn spawn_producer(args: Vec<String>, log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(Command::new(std::env::current_exe()?)
        .args(args)
        .env("RUST_LOG", child_log_filter())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

/// The log filter of the processes a run starts: `HERALD_CHAOS_LOG` (an `EnvFilter`, such as
/// `warn,herald_consumer=debug`), else `warn`.
fn child_log_filter() -> String {
    std::env::var("HERALD_CHAOS_LOG").unwrap_or_else(|_| "warn".to_owned())
}
