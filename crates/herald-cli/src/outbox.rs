//! `herald outbox …`: operator commands.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use herald_core::{DeadLetter, DeadLetters, OffsetDateTime, OutboxAdmin, Page, Selection, Uuid};

use crate::DatabaseArgs;
use crate::store::AnyStore;

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Counts by state and the age of the oldest pending event.
    Status,
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
        OutboxCommand::Status => {
            let stats = store.stats().await?;
            let age = stats
                .oldest_pending_at
                .map(|at| {
                    let age = OffsetDateTime::now_utc() - at;
                    format!("{:.1} s", age.as_seconds_f64())
                })
                .unwrap_or_else(|| "-".into());
            println!("{:<22}{:>12}", "pending", stats.pending);
            println!("{:<22}{:>12}", "  of which retrying", stats.retrying);
            println!("{:<22}{:>12}", "in flight", stats.in_flight);
            println!("{:<22}{:>12}", "dead letters", stats.dead_lettered);
            println!("{:<22}{:>12}", "archived", stats.archived);
            println!("{:<22}{:>12}", "oldest pending age", age);
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
