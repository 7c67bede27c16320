//! `herald kafka …`: Kafka administration.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use herald_kafka::{Declaration, KafkaTransport, SubscriptionTopics};

use crate::transport::{is_kafka, kafka_config};

#[derive(Subcommand)]
pub enum KafkaCommand {
    /// Declare the event topic(s) and, for each `--subscription`, its retry and dead-letter
    /// topics, with the configured partitions and replication factor. Idempotent: a topic
    /// that exists is left as it is.
    Declare(DeclareArgs),
}

#[derive(Args)]
pub struct DeclareArgs {
    /// The cluster: `kafka://host:9092[,host:9092…][/topic]`.
    #[arg(long, env = "HERALD_TRANSPORT")]
    transport: String,
    /// The topic events are published to (default: the URL's, else `herald.events`).
    #[arg(long, env = "HERALD_KAFKA_TOPIC")]
    topic: Option<String>,
    /// Partitions of each declared topic (dead-letter topics have one).
    #[arg(long, env = "HERALD_KAFKA_PARTITIONS")]
    partitions: Option<i32>,
    /// Replicas of each partition.
    #[arg(long, env = "HERALD_KAFKA_REPLICATION_FACTOR")]
    replication_factor: Option<i32>,
    /// A route: `EVENT_TYPE=TOPIC`, events of that type go to that topic. Repeatable.
    #[arg(long = "route", value_name = "TYPE=TOPIC")]
    routes: Vec<String>,
    /// A subscription (consumer group) name. Repeatable.
    #[arg(long = "subscription", value_name = "NAME")]
    subscriptions: Vec<String>,
    /// Print the declarations without connecting.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(command: KafkaCommand) -> Result<()> {
    match command {
        KafkaCommand::Declare(args) => declare(args).await,
    }
}

async fn declare(args: DeclareArgs) -> Result<()> {
    if !is_kafka(&args.transport) {
        bail!("`--transport {}` is not a kafka:// URL", args.transport);
    }
    let mut config = kafka_config(&args.transport)?;
    if let Some(topic) = args.topic {
        config.topic = topic;
    }
    if let Some(n) = args.partitions {
        config.partitions = n;
    }
    if let Some(n) = args.replication_factor {
        config.replication_factor = n;
    }
    for pair in &args.routes {
        let (event_type, topic) = pair
            .split_once('=')
            .with_context(|| format!("`--route {pair}`: expected TYPE=TOPIC"))?;
        config
            .routes
            .insert(event_type.to_owned(), topic.to_owned());
    }
    config.validate()?;
    let mut plan: Vec<Declaration> = herald_kafka::topology::plan(&config);
    for name in &args.subscriptions {
        let topics = SubscriptionTopics::of(&config, name)?;
        plan.extend(herald_kafka::topology::plan_subscription(&config, &topics));
    }
    let target = config.bootstrap_servers.clone();
    if args.dry_run {
        println!("would declare on {target}:");
        for declaration in &plan {
            println!("  {declaration}");
        }
        return Ok(());
    }
    let transport = KafkaTransport::connect(config)
        .await
        .with_context(|| format!("cannot declare the event topics on {target}"))?;
    for name in &args.subscriptions {
        transport
            .declare_subscription(name)
            .await
            .with_context(|| format!("cannot declare subscription `{name}`"))?;
    }
    println!("declared on {target}:");
    for declaration in &plan {
        println!("  {declaration}");
    }
    Ok(())
}
