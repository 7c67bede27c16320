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
