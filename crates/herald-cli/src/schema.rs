//! `herald schema …`: event schemas for pipelines outside Rust.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use herald_schema::{AsyncApiConfig, Transport};

use crate::config::FileConfig;
use crate::transport::{amqp_config, is_amqp, is_kafka, kafka_config};

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Compare two snapshot folders (`<dir>/<type>/v<version>.json`, as `catalog.check`
    /// records them), say the old one from the main branch and the new one from a change.
    /// Exits 0 when every change is compatible, 2 when one breaks (in either direction) or a
    /// version was removed, 1 when a folder cannot be read.
    Diff {
        /// The old snapshot folder.
        old: PathBuf,
        /// The new snapshot folder.
        new: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the AsyncAPI 3.0 document of the demo's events (its catalog, whose snapshots are
    /// in `crates/herald-cli/schemas/`) on a transport.
    Asyncapi {
        /// `amqp://…` or `kafka://…` (with the `HERALD_AMQP_*` / `HERALD_KAFKA_*` overrides);
        /// without it, the in-memory transport.
        #[arg(long, env = "HERALD_TRANSPORT")]
        transport: Option<String>,
        /// A relay configuration file whose `[amqp]` or `[kafka]` section (routing keys,
        /// routes, topic …) shapes the channels.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `herald schema diff` found a breaking change: the command exits with status 2.
#[derive(Debug)]
pub struct Breaking;

impl std::fmt::Display for Breaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("schema diff: breaking changes (see the report)")
    }
}

impl std::error::Error for Breaking {}

pub fn run(command: SchemaCommand) -> Result<()> {
    match command {
        SchemaCommand::Diff { old, new, json } => {
            let report = herald_schema::diff(&old, &new)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            if report.failed() {
                return Err(Breaking.into());
            }
            Ok(())
        }
        SchemaCommand::Asyncapi { transport, config } => {
            let file = config.as_deref().map(FileConfig::load).transpose()?;
            let transport = match transport.as_deref() {
                Some(url) if is_amqp(url) => {
                    let mut amqp = amqp_config(url)?;
                    if let Some(file) = &file {
                        file.apply_amqp(&mut amqp)?;
                    }
                    Transport::from(&amqp)
                }
                Some(url) if is_kafka(url) => {
                    let mut kafka = kafka_config(url)?;
                    if let Some(file) = &file {
                        file.apply_kafka(&mut kafka)?;
                    }
                    Transport::from(&kafka)
                }
                Some(other) if other != "memory" => {
                    anyhow::bail!("`{other}`: expected amqp://…, kafka://… or memory")
                }
                _ => Transport::Memory,
            };
            let document = crate::demo::events::catalog().asyncapi(&AsyncApiConfig {
                title: "herald demo: ordering".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                description: Some(
                    "The integration events the demo's ordering context publishes.".to_owned(),
                ),
                transport,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&document).context("cannot write the document")?
            );
            Ok(())
        }
    }
}
