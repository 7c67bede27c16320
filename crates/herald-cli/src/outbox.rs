//! `herald outbox …`: operator commands.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use herald_core::{OffsetDateTime, OutboxAdmin, Replay, Uuid};

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
        /// Delete every dead letter.
        #[arg(long)]
        dead_letters: bool,
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
        OutboxCommand::DeadLetters { limit } => {
            let dead = store.dead_letters(limit).await?;
            if dead.is_empty() {
                println!("no dead letters");
            }
            for d in dead {
                println!(
                    "{}  {}  v{}  key={}  attempts={}  at={}\n    error: {}",
                    d.envelope.id,
                    d.envelope.event_type,
                    d.envelope.version,
                    d.envelope.partition_key.as_deref().unwrap_or("-"),
                    d.attempts,
                    d.dead_lettered_at,
                    d.last_error
                );
            }
        }
        OutboxCommand::Replay { id, all } => {
            let which = match (id, all) {
                (Some(id), false) => Replay::One(id),
                (None, true) => Replay::All,
                _ => bail!("name a dead letter's id, or pass --all"),
            };
            let n = store.replay(which).await.context("replay failed")?;
            if let (Replay::One(id), 0) = (which, n) {
                bail!("no dead letter with id {id}");
            }
            println!("replayed {n} dead letter(s)");
        }
        OutboxCommand::Purge { dead_letters } => {
            if !dead_letters {
                bail!("say what to purge: --dead-letters");
            }
            let n = store.purge_dead_letters().await?;
            println!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}
