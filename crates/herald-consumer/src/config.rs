//! Consumer settings. Every default is a production value.

use std::time::Duration;

use herald_core::{Error, Result, Retention};

use crate::RetryPolicy;

/// What to do with a message no handler can take: an unknown event type, an unknown version of
/// a known type, or a payload that does not decode. Never a crash, never a silent loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnhandledPolicy {
    /// Move it to the dead letters with the reason (the default): nothing is lost, and it can
    /// be replayed once a consumer that understands it is deployed.
    #[default]
    DeadLetter,
    /// Acknowledge it and log a warning with its id and the reason (counted in
    /// [`ConsumerSnapshot::unhandled`](crate::ConsumerSnapshot::unhandled)).
    Acknowledge,
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Most messages handled at the same time (default 64). Messages of one partition key are
    /// handled one after another whatever this is. A message of a transactional handler counts
    /// until its transaction committed; those wait mostly for the database's flush, and the more
    /// of them wait together, the more one commit covers (see `transaction_batch`), so the
    /// default is generous. It is not the number of database connections: transactional
    /// handlers use a few per handler, one per group.
    pub concurrency: usize,
    /// Most deliveries held unsettled: running, waiting for a free slot, or waiting behind an
    /// earlier message of their key (default 256). The transport's prefetch is derived from it
    /// (the subscription's [`SubscriptionSpec::prefetch`](herald_core::SubscriptionSpec)): set
    /// it here, nowhere else.
    pub prefetch: usize,
    /// Most deliveries held back behind an earlier message of their key that is waiting for a
    /// delayed redelivery (default 64). Beyond that, later messages of such keys are given back
    /// to the transport to come back after it, so that held messages never fill the prefetch
    /// and stall unrelated keys. Must be below `prefetch`.
    pub max_held: usize,
    /// How long after its delay (as the transport applies it: RabbitMQ's delay queues round
    /// it up to the next queue's) a message sent for redelivery may take to come back before
    /// later messages of its key go ahead without it (default 5 min): it may have to travel
    /// through the queue's backlog again, or a competing consumer may have taken it. Set it
    /// above the time a message spends in your queue's backlog.
    pub redelivery_grace: Duration,
    /// Retries of failed handler runs. The transport's cap on attempts is derived from it:
    /// the subscription's [`max_attempts`](herald_core::SubscriptionSpec::max_attempts) is
    /// `1 + retry.delayed`, so the transport never dead-letters a message the policy would
    /// still retry.
    pub retry: RetryPolicy,
    /// Deadline of one handler run (default 30 s); `None` for none.
    pub handler_timeout: Option<Duration>,
    /// How long in-flight handlers may run on after shutdown began (default 30 s); those still
    /// running then are dropped, their transactions roll back, and their messages are
    /// redelivered.
    pub shutdown_timeout: Duration,
    /// Messages of an event type no handler is registered for.
    pub on_unknown_type: UnhandledPolicy,
    /// Messages of a known type in a version no handler is registered for.
    pub on_unknown_version: UnhandledPolicy,
    /// Messages whose payload cannot be decoded (malformed, wrong content type).
    pub on_malformed: UnhandledPolicy,
    /// Most messages the transactional inbox commits in one database transaction (default 32;
    /// 1 gives every message a transaction of its own). Messages running at the same time are
    /// grouped as they arrive, without waiting for more: one commit (one fsync) then stands
    /// for many messages. Each message is acknowledged only after its group committed. Each
    /// handler runs under a savepoint: when one fails (or swallows a database error, which
    /// leaves a PostgreSQL transaction unable to commit), only its own writes are rolled back,
    /// its outcome stands, and the others commit.
    pub transaction_batch: usize,
    /// Removal of old inbox records, off the hot path (default: 7 days kept, pruned every 5 min,
    /// 1,000 records per statement, with a pause between statements); `None` leaves them
    /// alone. A message redelivered or replayed after its record was removed runs its handler
    /// again, so keep records longer than any redelivery or dead-letter replay you expect.
    pub retention: Option<Retention>,
}

impl ConsumerConfig {
    /// How long past its due time a key hold (a message away for a delayed retry, recorded in
    /// a transactional inbox) stops holding its key: four times `redelivery_grace`, at least
    /// 10 min. Generous on purpose: a hold outlives its message only if the message was lost
    /// (purged from a delay queue by an operator, say).
    pub(crate) fn hold_stale_after(&self) -> Duration {
        self.redelivery_grace
            .saturating_mul(4)
            .max(Duration::from_secs(600))
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            concurrency: 64,
            prefetch: 256,
            max_held: 64,
            redelivery_grace: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            handler_timeout: Some(Duration::from_secs(30)),
            shutdown_timeout: Duration::from_secs(30),
            on_unknown_type: UnhandledPolicy::default(),
            on_unknown_version: UnhandledPolicy::default(),
            on_malformed: UnhandledPolicy::default(),
            transaction_batch: 32,
            retention: Some(Retention {
                keep: Duration::from_secs(7 * 24 * 3600),
                every: Duration::from_secs(300),
                batch: 1_000,
            }),
        }
    }
}

impl ConsumerConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            return Err(Error::Config(
                "consumer concurrency must be at least 1".into(),
            ));
        }
        if self.prefetch < self.concurrency {
            return Err(Error::Config(format!(
                "consumer prefetch ({}) must be at least the concurrency ({})",
                self.prefetch, self.concurrency
            )));
        }
        if self.max_held >= self.prefetch {
            return Err(Error::Config(format!(
                "consumer max_held ({}) must be below the prefetch ({})",
                self.max_held, self.prefetch
            )));
        }
        if self.transaction_batch == 0 {
            return Err(Error::Config(
                "consumer transaction batch must be at least 1".into(),
            ));
        }
        self.retry
            .backoff
            .validate()
            .map_err(|error| Error::Config(format!("consumer retry {error}")))?;
        if self.handler_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config(
                "handler timeout must be positive (or None)".into(),
            ));
        }
        if let Some(retention) = &self.retention {
            retention
                .validate()
                .map_err(|error| Error::Config(format!("consumer inbox {error}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ConsumerConfig::default().validate().expect("valid");
    }

    #[test]
    fn refuses_inconsistent_settings() {
        for config in [
            ConsumerConfig {
                concurrency: 0,
                ..ConsumerConfig::default()
            },
            ConsumerConfig {
                prefetch: 8,
                ..ConsumerConfig::default()
            },
            ConsumerConfig {
                max_held: 256,
                ..ConsumerConfig::default()
            },
            ConsumerConfig {
                handler_timeout: Some(Duration::ZERO),
                ..ConsumerConfig::default()
            },
            ConsumerConfig {
                retention: Some(Retention {
                    every: Duration::ZERO,
                    ..ConsumerConfig::default()
                        .retention
                        .expect("pruned by default")
                }),
                ..ConsumerConfig::default()
            },
            ConsumerConfig {
                retry: RetryPolicy {
                    backoff: herald_core::Backoff {
                        jitter: f64::NAN,
                        ..herald_core::Backoff::default()
                    },
                    ..RetryPolicy::default()
                },
                ..ConsumerConfig::default()
            },
        ] {
            assert!(matches!(config.validate(), Err(Error::Config(_))));
        }
    }
}
