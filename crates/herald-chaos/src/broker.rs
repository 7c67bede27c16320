//! Stopping and starting RabbitMQ's application (`rabbitmqctl stop_app` / `start_app`), with a
//! guard that always starts it again, whatever happens to the run.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Where the broker listens (checked after a start).
const AMQP_PORT: &str = "127.0.0.1:5672";

fn rabbitmqctl(action: &str) -> Result<()> {
    rabbitmqctl_args(&[action])
}

/// Runs `rabbitmqctl -q <args>`.
pub fn rabbitmqctl_args(args: &[&str]) -> Result<()> {
    // Debian installs it in /usr/sbin, which a CI shell may not have on its PATH.
    let program = if Path::new("/usr/sbin/rabbitmqctl").exists() {
        "/usr/sbin/rabbitmqctl"
    } else {
        "rabbitmqctl"
    };
    let status = Command::new(program)
        .arg("-q")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("rabbitmqctl {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Waits until the AMQP port accepts connections.
pub fn wait_for_port(within: Duration) -> Result<()> {
    let addr: SocketAddr = AMQP_PORT.parse()?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("rabbitmq did not listen on {AMQP_PORT} within {within:?}")
}

/// The broker's application, stopped while this guard lives.
pub struct Stopped {
    started: bool,
}

impl Stopped {
    /// Stops the broker's application.
    pub fn stop() -> Result<Self> {
        // Armed before stopping: a stop that fails half-way is still undone.
        let mut guard = Self { started: false };
        if let Err(err) = rabbitmqctl("stop_app") {
            guard.start()?;
            return Err(err);
        }
        Ok(guard)
    }

    /// Starts it again and waits for its port.
    pub fn start(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            match rabbitmqctl("start_app") {
                Ok(()) => {
                    self.started = true;
                    return wait_for_port(Duration::from_secs(60));
                }
                Err(err) => {
                    last = Some(err);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        self.started = true;
        Err(last.unwrap_or_else(|| anyhow::anyhow!("rabbitmqctl start_app failed")))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started
            && let Err(err) = self.start()
        {
            eprintln!("herald-chaos: could not restart rabbitmq: {err:#}");
        }
    }
}

/// Bounds `queue` to `max_length` ready messages and makes the broker nack publishes while it
/// is full (`x-overflow: reject-publish`), as a policy named `name`.
pub fn bound_queue(name: &str, queue: &str, max_length: u32) -> Result<()> {
    let pattern = format!("^{}$", queue.replace('.', "\\."));
    let definition = format!(r#"{{"max-length":{max_length},"overflow":"reject-publish"}}"#);
    rabbitmqctl_args(&[
        "set_policy",
        "--apply-to",
        "queues",
        name,
        &pattern,
        &definition,
    ])
}

/// Removes the policy `name`.
pub fn clear_policy(name: &str) -> Result<()> {
    rabbitmqctl_args(&["clear_policy", name])
}

/// Makes sure the broker's application runs (at the end of a run, whatever happened).
pub fn ensure_running() -> Result<()> {
    if wait_for_port(Duration::from_millis(500)).is_ok() {
        return Ok(());
    }
    Stopped { started: false }.start()
}
