//! `herald amqp …`: RabbitMQ administration.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use herald_amqp::{AmqpDeadLetterQueue, AmqpTransport, Declaration, ExchangeKind, QueueKind};
use herald_core::{DeadLetters, Page, Selection, SubscriptionSpec, Uuid};

use crate::outbox::describe;
use crate::parse_duration;
use crate::transport::{amqp_config, is_amqp};

#[derive(Subcommand)]
pub enum AmqpCommand {
    /// Declare the exchange and, for each `--subscription`, its queue and bindings, its
    /// dead-letter exchange and queue and its delay queues. Idempotent; a declaration that
    /// contradicts what exists is an error naming it.
    Declare(DeclareArgs),
    /// List a subscription's dead letters (its `NAME.dlq`), oldest first, without consuming
    /// them.
    DeadLetters {
        #[command(flatten)]
        queue: DeadLetterQueueArgs,
        /// Most messages to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Messages to skip (the next page: `--offset` = the previous page's limit).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Publish a subscription's dead letters back to its queue, as first attempts.
    Replay {
        #[command(flatten)]
        queue: DeadLetterQueueArgs,
        /// The event id to replay.
        id: Option<Uuid>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete a subscription's dead letters for good.
    Purge {
        #[command(flatten)]
        queue: DeadLetterQueueArgs,
        /// The event id to delete.
        id: Option<Uuid>,
        /// Delete every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

/// Which subscription's dead letters.
#[derive(Args)]
pub struct DeadLetterQueueArgs {
    /// Broker URL: `amqp://user:password@host:5672/vhost` or `amqps://…`.
    #[arg(long, env = "HERALD_TRANSPORT")]
    transport: String,
    /// The subscription (queue) name.
    #[arg(long)]
    subscription: String,
}

impl DeadLetterQueueArgs {
    async fn open(&self) -> Result<AmqpDeadLetterQueue> {
        if !is_amqp(&self.transport) {
            bail!(
                "`--transport {}` is not an amqp:// or amqps:// URL",
                herald_core::redact::redact_url(&self.transport)
            );
        }
        let transport = AmqpTransport::lazy(amqp_config(&self.transport)?)?;
        Ok(transport.dead_letter_queue(&self.subscription)?)
    }
}

/// One dead letter or all of them.
fn selection(id: Option<Uuid>, all: bool) -> Result<Selection> {
    match (id, all) {
        (Some(id), false) => Ok(Selection::One(id)),
        (None, true) => Ok(Selection::All),
        _ => bail!("name a dead letter's id, or pass --all"),
    }
}

pub async fn run(command: AmqpCommand) -> Result<()> {
    match command {
        AmqpCommand::Declare(args) => declare(args).await,
        AmqpCommand::DeadLetters {
            queue,
            limit,
            offset,
        } => {
            let dead = queue
                .open()
                .await?
                .dead_letters(Page { offset, limit })
                .await?;
            if dead.is_empty() {
                println!("no dead letters");
            }
            for d in &dead {
                println!("{}", describe(d));
            }
            Ok(())
        }
        AmqpCommand::Replay { queue, id, all } => {
            let which = selection(id, all)?;
            let n = queue
                .open()
                .await?
                .replay(which)
                .await
                .context("replay failed")?;
            if let (Selection::One(id), 0) = (which, n) {
                bail!("no dead letter with id {id}");
            }
            println!("replayed {n} dead letter(s)");
            Ok(())
        }
        AmqpCommand::Purge { queue, id, all } => {
            let which = selection(id, all)?;
            let n = queue.open().await?.purge(which).await?;
            if let (Selection::One(id), 0) = (which, n) {
                bail!("no dead letter with id {id}");
            }
            println!("purged {n} dead letter(s)");
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct DeclareArgs {
    /// Broker URL: `amqp://user:password@host:5672/vhost` or `amqps://…`.
    #[arg(long, env = "HERALD_TRANSPORT")]
    transport: String,
    /// The exchange events are published to.
    #[arg(long, env = "HERALD_AMQP_EXCHANGE", default_value = "herald")]
    exchange: String,
    /// The exchange's kind: topic, direct, fanout or headers.
    #[arg(long, env = "HERALD_AMQP_EXCHANGE_KIND", default_value = "topic")]
    exchange_kind: String,
    /// The queues' kind: classic or quorum.
    #[arg(long, env = "HERALD_AMQP_QUEUE_KIND", default_value = "classic")]
    queue_kind: String,
    /// For quorum queues: deliveries after which the broker dead-letters a message.
    #[arg(long)]
    delivery_limit: Option<u32>,
    /// Delays of the retry queues, comma-separated (`1s,5s,30s,2m,10m,30m`).
    #[arg(long, value_delimiter = ',')]
    retry_delays: Vec<String>,
    /// A subscription: `NAME` (every event type) or `NAME=TYPE,TYPE…`. Repeatable.
    #[arg(long = "subscription", value_name = "NAME[=TYPES]")]
    subscriptions: Vec<String>,
    /// A routing key override: `EVENT_TYPE=ROUTING_KEY`. Repeatable.
    #[arg(long = "routing-key", value_name = "TYPE=KEY")]
    routing_keys: Vec<String>,
    /// Print the declarations without connecting.
    #[arg(long)]
    dry_run: bool,
}

async fn declare(args: DeclareArgs) -> Result<()> {
    if !is_amqp(&args.transport) {
        bail!(
            "`--transport {}` is not an amqp:// or amqps:// URL",
            herald_core::redact::redact_url(&args.transport)
        );
    }
    let mut config = amqp_config(&args.transport)?;
    config.exchange = args.exchange.clone();
    config.exchange_kind = ExchangeKind::parse(&args.exchange_kind)?;
    config.queue_kind = QueueKind::parse(&args.queue_kind)?;
    config.delivery_limit = args.delivery_limit;
    if !args.retry_delays.is_empty() {
        config.retry_delays = args
            .retry_delays
            .iter()
            .map(|d| parse_duration(d))
            .collect::<Result<_>>()?;
    }
    for pair in &args.routing_keys {
        let (event_type, key) = pair
            .split_once('=')
            .with_context(|| format!("`--routing-key {pair}`: expected TYPE=KEY"))?;
        config
            .routing_keys
            .insert(event_type.to_owned(), key.to_owned());
    }
    config.validate()?;
    let specs: Vec<SubscriptionSpec> = args.subscriptions.iter().map(|s| subscription(s)).collect();

    let mut plan: Vec<Declaration> = vec![herald_amqp::topology::exchange(&config)];
    for spec in &specs {
        plan.extend(
            herald_amqp::topology::plan(&config, spec)?
                .into_iter()
                .skip(1),
        );
    }
    let target = herald_core::redact::redact_url(&config.url);
    if args.dry_run {
        println!("would declare on {target}:");
        for declaration in &plan {
            println!("  {declaration}");
        }
        return Ok(());
    }
    let transport = AmqpTransport::connect(config)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    for spec in &specs {
        transport
            .declare(spec)
            .await
            .with_context(|| format!("cannot declare subscription `{}`", spec.name))?;
    }
    transport.close().await;
    println!("declared on {target}:");
    for declaration in &plan {
        println!("  {declaration}");
    }
    Ok(())
}

/// `NAME` or `NAME=TYPE,TYPE…`.
fn subscription(text: &str) -> SubscriptionSpec {
    match text.split_once('=') {
        Some((name, types)) => SubscriptionSpec::new(
            name,
            types.split(',').map(str::trim).filter(|t| !t.is_empty()),
        ),
        None => SubscriptionSpec::new(text, Vec::<String>::new()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn parses_subscriptions_and_durations() {
        let spec = subscription("billing=ordering.order_created, ordering.order_cancelled");
        assert_eq!(spec.name, "billing");
        assert_eq!(spec.event_types.len(), 2);
        assert!(subscription("audit").event_types.is_empty());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
