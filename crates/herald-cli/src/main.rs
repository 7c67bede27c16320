//! `herald`: the operator's command for Herald.
//!
//! ```text
//! herald demo                       ordering → outbox → relay → broker → inventory, on SQLite
//! herald migrate  --database URL    create or upgrade the outbox tables
//! herald config   check FILE [--print]   validate a relay configuration file
//! herald relay    --database URL    run the outbox relay
//! herald outbox   status [--json] [--watch 2s] | check [--max-age 60s] [--max-dead-letters 0]
//!                 | dead-letters | replay <ID>|--all | purge --dead-letters [--id ID]
//! herald amqp     declare | dead-letters | replay <ID>|--all | purge <ID>|--all
//! herald kafka    declare                 topics of the outbox and of its subscriptions
//! herald bench relay                drain a pre-filled outbox and report events per second
//! herald schema   diff OLD NEW [--json]   compare two snapshot folders (exit 2: breaking)
//!                 | asyncapi [--transport URL] [--config FILE]   the demo's AsyncAPI document
//! ```

mod amqp;
mod bench;
mod config;
mod demo;
mod kafka;
mod ops;
mod outbox;
mod relay;
mod schema;
mod store;
mod transport;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use herald_core::Completion;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::store::StoreOptions;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Integration events: transactional outbox, relay, broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the end-to-end demo: an ordering context records events in its own transactions, a
    /// relay publishes them, an inventory context consumes them (SQLite + in-memory broker by
    /// default; no server needed).
    Demo(demo::DemoArgs),
    /// Create or upgrade the outbox tables.
    Migrate(DatabaseArgs),
    /// Run the outbox relay until interrupted (Ctrl-C finishes the batch in flight).
    Relay(relay::RelayArgs),
    /// Inspect and repair the outbox.
    Outbox {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: outbox::OutboxCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Configuration files (`herald relay --config`).
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// RabbitMQ administration: declare the topology from configuration.
    Amqp {
        #[command(subcommand)]
        command: amqp::AmqpCommand,
    },
    /// Kafka administration: declare the topics from configuration.
    Kafka {
        #[command(subcommand)]
        command: kafka::KafkaCommand,
    },
    /// Event schemas: compare snapshot folders (CI outside Rust), print an AsyncAPI document.
    Schema {
        #[command(subcommand)]
        command: schema::SchemaCommand,
    },
}

/// Where the outbox is.
#[derive(Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// Database URL: `postgres://user@host/db` or `sqlite://path/to/file.db`.
    #[arg(long, env = "HERALD_DATABASE_URL")]
    pub database: String,
    /// PostgreSQL schema of the outbox tables.
    #[arg(long, env = "HERALD_SCHEMA", default_value = "herald")]
    pub schema: String,
    /// Outbox table name (default `outbox` on PostgreSQL, `herald_outbox` on SQLite).
    #[arg(long, env = "HERALD_TABLE")]
    pub table: Option<String>,
    /// Keep published events in an archive table instead of deleting them.
    #[arg(long)]
    pub archive: bool,
}

impl DatabaseArgs {
    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            url: self.database.clone(),
            schema: self.schema.clone(),
            table: self.table.clone(),
            completion: if self.archive {
                Completion::Archive
            } else {
                Completion::Delete
            },
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Bench { .. } => "warn",
        _ => "info",
    };
    // With the feature `otel`: spans also go to an OTLP collector (see the `otel` module).
    #[cfg(feature = "otel")]
    let (otel_layer, tracer_provider) = match otel::layer() {
        Ok(Some((layer, provider))) => (Some(layer), Some(provider)),
        Ok(None) => (None, None),
        Err(error) => {
            eprintln!("error: cannot set up OpenTelemetry: {error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    #[cfg(not(feature = "otel"))]
    let otel_layer: Option<tracing_subscriber::layer::Identity> = None;
    // `HERALD_LOG` filters the log lines only: spans go to OpenTelemetry from INFO up.
    let logs =
        EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(logs),
        )
        .with(otel_layer)
        .init();
    let code = run_main(cli);
    #[cfg(feature = "otel")]
    if let Some(provider) = tracer_provider {
        // Exports the spans still queued.
        if let Err(error) = provider.shutdown() {
            eprintln!("warning: OpenTelemetry shutdown: {error}");
        }
    }
    code
}

fn run_main(cli: Cli) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.is::<outbox::CheckFailed>() || error.is::<schema::Breaking>() {
                // Distinct from 1 (the outbox or the schemas could not be read), for alerting
                // scripts and CI.
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// The OTLP exporter of the `herald` binary (feature `otel`), configured the standard way, by
/// the `OTEL_*` variables: `OTEL_SDK_DISABLED=true` turns it off; `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (or `…_TRACES_ENDPOINT`, default `http://localhost:4318`), `…_HEADERS` and `…_TIMEOUT`
/// say where spans go, over HTTP with protobuf; `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES` name the process (default service name `herald`);
/// `OTEL_TRACES_SAMPLER` (and `…_ARG`) sample; `OTEL_BSP_*` tune the batch processor.
#[cfg(feature = "otel")]
mod otel {
    use anyhow::{Context, Result};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::LevelFilter;

    /// The layer that sends spans (INFO and above) to the exporter, and the provider to shut
    /// down at exit; `None` when `OTEL_SDK_DISABLED` is `true`.
    pub(crate) fn layer<S>() -> Result<Option<(impl Layer<S>, SdkTracerProvider)>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let disabled = std::env::var("OTEL_SDK_DISABLED")
            .is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"));
        if disabled {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("cannot build the OTLP span exporter")?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("herald");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("herald");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(LevelFilter::INFO);
        Ok(Some((layer, provider)))
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Migrate(database) => {
            let store = store::AnyStore::connect(&database.store_options()).await?;
            store.migrate().await?;
            println!(
                "outbox tables are up to date ({}, {})",
                store.backend(),
                herald_core::redact::redact_url(&database.database)
            );
            Ok(())
        }
        Command::Relay(args) => relay::run(args).await,
        Command::Outbox { database, command } => outbox::run(&database, command).await,
        Command::Bench { command } => bench::run(command).await,
        Command::Amqp { command } => amqp::run(command).await,
        Command::Kafka { command } => kafka::run(command).await,
        Command::Config { command } => config::run(command),
        Command::Schema { command } => schema::run(command),
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

/// `250ms`, `5s`, `2m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a duration such as 500ms, 5s, 2m or 1h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => bail!("`{text}`: unknown unit `{unit}` (ms, s, m, h or d)"),
    })
}

/// Formats a duration for tables (`1.23 ms`).
pub fn fmt_ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
