//! The topics the transport declares: what to declare ([`plan`], [`plan_subscription`]) and
//! declaring it idempotently through the admin API.

use std::time::{Duration, Instant};

use herald_core::{Backoff, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::Shared;
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

impl std::fmt::Display for Declaration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topic {} ({} partition(s), replication factor {}{})",
            self.topic,
            self.partitions,
            self.replication_factor,
            if self.compacted { ", compacted" } else { "" }
        )
    }
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

/// Deletes subscription `topics`' retry and dead-letter topics (their messages with them) and
/// its consumer group's committed offsets. Topics or a group that do not exist are not an
/// error. The event topics stay.
pub(crate) async fn remove_subscription(
    admin: &AdminClient<DefaultClientContext>,
    topics: &SubscriptionTopics,
    secrets: &Secrets,
) -> Result<()> {
    let options = AdminOptions::new().operation_timeout(Some(DECLARE_TIMEOUT));
    let names = [topics.retry.as_str(), topics.dead_letter.as_str()];
    let results = admin
        .delete_topics(&names, &options)
        .await
        .map_err(|e| kafka("delete a subscription's topics", &e, secrets))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(other(
                    "delete a subscription's topics",
                    crate::error::is_transient(code),
                    format!("topic `{topic}`: {code}"),
                ));
            }
        }
    }
    // A member that just closed may take a moment to leave the group.
    let deadline = Instant::now() + DECLARE_TIMEOUT;
    loop {
        let results = admin
            .delete_groups(&[topics.group.as_str()], &options)
            .await
            .map_err(|e| kafka("delete a consumer group", &e, secrets))?;
        let failed = results.into_iter().find_map(|result| match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => None,
            Err((group, code)) => Some((group, code)),
        });
        match failed {
            None => break,
            Some((_, RDKafkaErrorCode::NonEmptyGroup)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some((group, code)) => {
                return Err(other(
                    "delete a consumer group",
                    crate::error::is_transient(code),
                    format!("group `{group}`: {code}"),
                ));
            }
        }
    }
    Ok(())
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

/// Commits, for consumer group `group`, the end offset of every event-topic partition it has
/// no offset for: the group starts where the topics end when it is declared, as a new queue
/// starts empty. A group with members already positioned itself (its first member declared
/// it): the broker refuses the commit, which is fine.
pub(crate) fn start_at_end(shared: &Shared, group: &str) -> Result<()> {
    until_ready(Instant::now() + DECLARE_TIMEOUT, std::thread::sleep, || {
        start_at_end_once(shared, group)
    })
}

/// Pauses between attempts of [`until_ready`]: 50 ms doubling to 1 s.
const NOT_READY_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_secs(1),
    multiplier: 2.0,
    jitter: 0.0,
};

/// Runs `attempt` until it succeeds, fails for good, or `deadline` is too close for another
/// pause; pauses with `sleep` between attempts ([`NOT_READY_BACKOFF`]). A broker that has not
/// created its group coordinator yet (a fresh broker's first consumer group: the offsets topic
/// is created on demand) or is still loading it (just started) answers group requests with
/// transient errors (`NotCoordinator`, `CoordinatorNotAvailable`, `CoordinatorLoadInProgress`)
/// for a few seconds; the Java consumer waits them out as well.
fn until_ready<T>(
    deadline: Instant,
    mut sleep: impl FnMut(Duration),
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut failed = 0;
    loop {
        match attempt() {
            Err(error) if error.is_transient() => {
                failed += 1;
                let pause = NOT_READY_BACKOFF.nominal(failed);
                if Instant::now() + pause >= deadline {
                    return Err(error);
                }
                tracing::debug!(error = %error.chain(), retry_in = ?pause, "the broker is not ready for the group yet");
                sleep(pause);
            }
            outcome => return outcome,
        }
    }
}

/// One attempt of [`start_at_end`].
fn start_at_end_once(shared: &Shared, group: &str) -> Result<()> {
    let secrets = &shared.secrets;
    let fail = |e: rdkafka::error::KafkaError| kafka("declare a subscription", &e, secrets);
    let mut client = crate::client_config(&shared.config);
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = client.create().map_err(fail)?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(fail)?;
    let mut partitions = TopicPartitionList::new();
    for topic in shared.config.topics() {
        if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
            for p in t.partitions() {
                partitions.add_partition(&topic, p.id());
            }
        }
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .map_err(fail)?;
    let mut start = TopicPartitionList::new();
    for elem in committed.elements() {
        if matches!(elem.offset(), Offset::Offset(_)) {
            continue;
        }
        let (_, high) = consumer
            .fetch_watermarks(elem.topic(), elem.partition(), Duration::from_secs(10))
            .map_err(fail)?;
        start
            .add_partition_offset(elem.topic(), elem.partition(), Offset::Offset(high))
            .map_err(fail)?;
    }
    if start.count() == 0 {
        return Ok(());
    }
    match consumer.commit(&start, CommitMode::Sync) {
        Ok(()) => Ok(()),
        Err(err)
            if matches!(
                err.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::UnknownMemberId
                        | RDKafkaErrorCode::IllegalGeneration
                        | RDKafkaErrorCode::RebalanceInProgress
                        | RDKafkaErrorCode::FencedMemberEpoch
                        | RDKafkaErrorCode::StaleMemberEpoch
                )
            ) =>
        {
            tracing::debug!(%group, error = %err, "the group is active: it keeps its own start");
            Ok(())
        }
        Err(err) => Err(fail(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Error;

    #[test]
    fn transient_errors_are_tried_again_until_the_deadline() {
        let mut attempts = 0;
        let mut slept = Vec::new();
        let outcome = until_ready(
            Instant::now() + DECLARE_TIMEOUT,
            |pause| slept.push(pause),
            || {
                attempts += 1;
                if attempts < 4 {
                    Err(Error::transport(
                        "declare a subscription",
                        true,
                        "NotCoordinator",
                    ))
                } else {
                    Ok(attempts)
                }
            },
        );
        assert_eq!(outcome.ok(), Some(4));
        assert_eq!(
            slept,
            [50, 100, 200].map(Duration::from_millis),
            "pauses double"
        );
    }

    #[test]
    fn permanent_errors_and_a_passed_deadline_end_at_once() {
        let mut attempts = 0;
        let outcome: Result<()> = until_ready(
            Instant::now() + DECLARE_TIMEOUT,
            |_| {},
            || {
                attempts += 1;
                Err(Error::transport(
                    "declare a subscription",
                    false,
                    "GroupAuthorizationFailed",
                ))
            },
        );
        assert!(outcome.is_err());
        assert_eq!(attempts, 1, "a permanent error is not tried again");

        let mut attempts = 0;
        let outcome: Result<()> = until_ready(
            Instant::now(),
            |_| {},
            || {
                attempts += 1;
                Err(Error::transport(
                    "declare a subscription",
                    true,
                    "NotCoordinator",
                ))
            },
        );
        assert!(outcome.is_err_and(|e| e.is_transient()));
        assert_eq!(attempts, 1, "no time left for another attempt");
    }
}
