//! `herald outbox …`: operator commands.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use herald_core::{
    DeadLetter, DeadLetters, OffsetDateTime, OutboxAdmin, OutboxStats, Page, Selection, Uuid,
};
use serde::Serialize;

use crate::DatabaseArgs;
use crate::store::AnyStore;

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Counts by state and the ages of the oldest pending and oldest due events.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Print again every INTERVAL (`2s`, `500ms`) until interrupted.
        #[arg(long, value_name = "INTERVAL", value_parser = crate::parse_duration)]
        watch: Option<Duration>,
    },
    /// Exit non-zero (2) when the outbox is unhealthy, for cron-style alerting: its oldest due
    /// event is older than `--max-age`, or it holds more dead letters than
    /// `--max-dead-letters`. Prints each check; 1 means the outbox could not be read.
    Check {
        /// Oldest due event allowed (`60s`, `5m`); events backing off after a failure do
        /// not count.
        #[arg(long, value_parser = crate::parse_duration)]
        max_age: Option<Duration>,
        /// Most dead letters allowed.
        #[arg(long)]
        max_dead_letters: Option<u64>,
    },
    /// List dead letters with their errors, newest first.
    DeadLetters {
        /// Most rows to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Rows to skip (the next page: `--offset` = the previous page's limit).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Put dead letters back into the outbox.
    Replay {
        /// The event id to replay.
        id: Option<Uuid>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete data for good.
    Purge {
        /// Delete dead letters: every one, or only those of `--id`.
        #[arg(long)]
        dead_letters: bool,
        /// Delete only the dead letter of this event id.
        #[arg(long, requires = "dead_letters")]
        id: Option<Uuid>,
    },
}

pub async fn run(database: &DatabaseArgs, command: OutboxCommand) -> Result<()> {
    let store = AnyStore::connect(&database.store_options()).await?;
    match command {
        OutboxCommand::Status { json, watch } => {
            let stop = tokio_util::sync::CancellationToken::new();
            crate::cancel_on_signal(stop.clone());
            loop {
                let status = Status::of(&store.stats().await?, OffsetDateTime::now_utc());
                if json {
                    // One object per line when watching, so that each sample parses alone.
                    let text = match watch {
                        Some(_) => serde_json::to_string(&status)?,
                        None => serde_json::to_string_pretty(&status)?,
                    };
                    println!("{text}");
                } else {
                    if watch.is_some() {
                        println!("{}", OffsetDateTime::now_utc());
                    }
                    status.print();
                }
                let Some(every) = watch else { break };
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
        }
        OutboxCommand::Check {
            max_age,
            max_dead_letters,
        } => {
            if max_age.is_none() && max_dead_letters.is_none() {
                bail!("say what to check: --max-age, --max-dead-letters or both");
            }
            let status = Status::of(&store.stats().await?, OffsetDateTime::now_utc());
            let mut failed = Vec::new();
            if let Some(max) = max_age {
                let age = status.oldest_due_age_seconds.unwrap_or(0.0);
                let ok = age <= max.as_secs_f64();
                println!(
                    "{}  oldest due event {age:.1} s old (max {:.1} s)",
                    verdict(ok),
                    max.as_secs_f64()
                );
                if !ok {
                    failed.push("oldest due event too old");
                }
            }
            if let Some(max) = max_dead_letters {
                let ok = status.dead_lettered <= max;
                println!(
                    "{}  {} dead letter(s) (max {max})",
                    verdict(ok),
                    status.dead_lettered
                );
                if !ok {
                    failed.push("too many dead letters");
                }
            }
            if !failed.is_empty() {
                return Err(CheckFailed(failed.join(", ")).into());
            }
        }
        OutboxCommand::DeadLetters { limit, offset } => {
            let dead = store.dead_letters(Page { offset, limit }).await?;
            if dead.is_empty() {
                println!("no dead letters");
            }
            for d in &dead {
                println!("{}", describe(d));
            }
        }
        OutboxCommand::Replay { id, all } => {
            let which = match (id, all) {
                (Some(id), false) => Selection::One(id),
                (None, true) => Selection::All,
                _ => bail!("name a dead letter's id, or pass --all"),
            };
            let n = store.replay(which).await.context("replay failed")?;
            if let (Selection::One(id), 0) = (which, n) {
                bail!("no dead letter with id {id}");
            }
            println!("replayed {n} dead letter(s)");
        }
        OutboxCommand::Purge { dead_letters, id } => {
            if !dead_letters {
                bail!("say what to purge: --dead-letters");
            }
            let which = id.map_or(Selection::All, Selection::One);
            let n = store.purge(which).await?;
            if let (Selection::One(id), 0) = (which, n) {
                bail!("no dead letter with id {id}");
            }
            println!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}

/// `herald outbox check` found the outbox unhealthy: the command exits with status 2.
#[derive(Debug)]
pub struct CheckFailed(String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "outbox check failed: {}", self.0)
    }
}

impl std::error::Error for CheckFailed {}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok  " } else { "FAIL" }
}

/// What `herald outbox status` shows (and prints as JSON with `--json`).
#[derive(Debug, Serialize)]
struct Status {
    pending: u64,
    due: u64,
    backing_off: u64,
    in_flight: u64,
    dead_lettered: u64,
    archived: u64,
    oldest_pending_age_seconds: Option<f64>,
    oldest_due_age_seconds: Option<f64>,
}

impl Status {
    fn of(stats: &OutboxStats, now: OffsetDateTime) -> Self {
        let age = |at: Option<OffsetDateTime>| at.map(|at| (now - at).as_seconds_f64().max(0.0));
        Status {
            pending: stats.pending,
            due: stats.pending.saturating_sub(stats.retrying),
            backing_off: stats.retrying,
            in_flight: stats.in_flight,
            dead_lettered: stats.dead_lettered,
            archived: stats.archived,
            oldest_pending_age_seconds: age(stats.oldest_pending_at),
            oldest_due_age_seconds: age(stats.oldest_due_at),
        }
    }

    fn print(&self) {
        let age = |a: Option<f64>| a.map_or_else(|| "-".into(), |a| format!("{a:.1} s"));
        println!("{:<22}{:>12}", "pending", self.pending);
        println!("{:<22}{:>12}", "  due", self.due);
        println!("{:<22}{:>12}", "  backing off", self.backing_off);
        println!("{:<22}{:>12}", "in flight", self.in_flight);
        println!("{:<22}{:>12}", "dead letters", self.dead_lettered);
        println!("{:<22}{:>12}", "archived", self.archived);
        println!(
            "{:<22}{:>12}",
            "oldest pending age",
            age(self.oldest_pending_age_seconds)
        );
        println!(
            "{:<22}{:>12}",
            "oldest due age",
            age(self.oldest_due_age_seconds)
        );
    }
}

/// Two lines about a dead letter: what, when and after how many attempts; then why. One that no
/// longer decodes shows its raw columns instead of the envelope's.
pub(crate) fn describe(d: &DeadLetter) -> String {
    let id = d.id.map_or_else(|| "-".to_owned(), |id| id.to_string());
    let at = d
        .dead_lettered_at
        .map_or_else(|| "-".to_owned(), |at| at.to_string());
    let what = match &d.envelope {
        Some(e) => format!(
            "{}  v{}  key={}",
            e.event_type,
            e.version,
            e.partition_key.as_deref().unwrap_or("-")
        ),
        None => {
            let raw: Vec<String> = d
                .raw
                .headers
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            format!(
                "(does not decode)  {}  payload={} bytes",
                raw.join("  "),
                d.raw.payload.len()
            )
        }
    };
    format!(
        "{id}  {what}  attempts={}  at={at}\n    error: {}",
        d.attempts, d.reason
    )
}
