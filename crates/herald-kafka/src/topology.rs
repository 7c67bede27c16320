//! The topics the transport declares: what to declare ([`plan`], [`plan_subscription`]) and
//! declaring it idempotently through the admin API.

use std::time::{Duration, Instant};

use herald_core::Result;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::{KafkaConfig, SubscriptionTopics};
use crate::error::{Secrets, kafka, other};

/// How long a declaration waits for the broker to create a topic and show it in metadata.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(30);

/// One topic to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// Its name.
    pub topic: String,
    /// Its partitions.
    pub partitions: i32,
    /// Replicas of each partition.
    pub replication_factor: i32,
    /// Whether it is compacted (dead-letter topics: a purge leaves a tombstone that
    /// compaction removes with the letters it purged) rather than deleted by age.
    pub compacted: bool,
}

/// The event topics of `config`: [`KafkaConfig::topic`] and the routes' topics.
pub fn plan(config: &KafkaConfig) -> Vec<Declaration> {
    config
        .topics()
        .into_iter()
        .map(|topic| Declaration {
            topic,
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            compacted: false,
        })
        .collect()
}

/// The topics of one subscription: its retry topic (as many partitions as the event topics)
/// and its dead-letter topic (one partition, so that letters are listed in the order they
/// came, and compacted).
pub fn plan_subscription(config: &KafkaConfig, topics: &SubscriptionTopics) -> Vec<Declaration> {
    vec![
        Declaration {
            topic: topics.retry.clone(),
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            compacted: false,
        },
        Declaration {
            topic: topics.dead_letter.clone(),
            partitions: 1,
            replication_factor: config.replication_factor,
            compacted: true,
        },
    ]
}

/// Creates the topics of `declarations` that do not exist (an existing topic is left as it
/// is), then waits until the cluster's metadata shows every one of them.
pub(crate) async fn apply(
    admin: &AdminClient<DefaultClientContext>,
    declarations: &[Declaration],
    secrets: &Secrets,
) -> Result<()> {
    if declarations.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> = declarations
        .iter()
        .map(|d| {
            let topic = NewTopic::new(
                &d.topic,
                d.partitions,
                TopicReplication::Fixed(d.replication_factor),
            );
            if d.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(DECLARE_TIMEOUT));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| kafka("declare topics", &e, secrets))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(other(
                    "declare topics",
                    crate::error::is_transient(code),
                    format!("topic `{topic}`: {code}"),
                ));
            }
        }
    }
    let names: Vec<String> = declarations.iter().map(|d| d.topic.clone()).collect();
    wait_for_metadata(admin, names, secrets).await
}

/// Waits until every topic of `names` has its partitions in the cluster's metadata.
async fn wait_for_metadata(
    admin: &AdminClient<DefaultClientContext>,
    names: Vec<String>,
    secrets: &Secrets,
) -> Result<()> {
    let deadline = Instant::now() + DECLARE_TIMEOUT;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(5))
            .map_err(|e| kafka("read metadata", &e, secrets))?;
        let missing = names.iter().find(|name| {
            !metadata.topics().iter().any(|t| {
                t.name() == name.as_str() && t.error().is_none() && !t.partitions().is_empty()
            })
        });
        match missing {
            None => return Ok(()),
            Some(name) if Instant::now() > deadline => {
                return Err(other(
                    "declare topics",
                    true,
                    format!("topic `{name}` not in the metadata after {DECLARE_TIMEOUT:?}"),
                ));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
