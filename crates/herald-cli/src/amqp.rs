//! `herald amqp …`: RabbitMQ administration.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use herald_amqp::{AmqpTransport, Declaration, ExchangeKind, QueueKind};
use herald_core::SubscriptionSpec;

use crate::transport::{amqp_config, is_amqp};

#[derive(Subcommand)]
pub enum AmqpCommand {
    /// Declare the exchange and, for each `--subscription`, its queue and bindings, its
    /// dead-letter exchange and queue and its delay queues. Idempotent; a declaration that
    /// contradicts what exists is an error naming it.
    Declare(DeclareArgs),
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

pub async fn run(command: AmqpCommand) -> Result<()> {
    let AmqpCommand::Declare(args) = command;
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

/// `250ms`, `5s`, `2m`, `1h` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<Duration> {
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
        _ => bail!("`{text}`: unknown unit `{unit}` (ms, s, m or h)"),
    })
}

#[cfg(test)]
mod tests {
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
