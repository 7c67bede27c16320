//! Relay settings.

use std::time::Duration;

use herald_core::{Backoff, Error, Result, Retention};

/// How a relay claims, publishes, retries and cleans up. Every default is a production value.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most rows claimed at once (default 512: claims and write-backs cost per statement, so
    /// larger batches leave more of the machine to the broker; B2 measured 256 against 512).
    pub batch_size: usize,
    /// How long a claim holds before another relay may take the rows over (default 30 s).
    /// A relay that is killed mid-batch delays its rows by at most this much.
    pub lease: Duration,
    /// Longest wait for the broker to confirm one publish round (default 10 s); must be shorter
    /// than the lease.
    pub publish_timeout: Duration,
    /// Fallback poll interval when no wake-up arrives (default 1 s). Wake-ups from the writer
    /// (`commit`/`notify` on the store) make the relay react at once.
    pub poll_interval: Duration,
    /// Attempts (claims) before a row is dead-lettered (default 10).
    pub max_attempts: u32,
    /// Backoff between failed attempts of one row (default 1 s doubling to 5 min, jittered).
    pub backoff: Backoff,
    /// Backoff of the relay itself when the store is unreachable (default 100 ms to 30 s).
    pub store_backoff: Backoff,
    /// Archive retention: how long published rows are kept when the store archives them
    /// (`Completion::Archive`), how often the relay prunes and how many rows one statement
    /// deletes (default: 7 days kept, pruned every 60 s, 10,000 rows per statement). `None`
    /// leaves the archive alone. Stores that delete published rows have nothing to prune.
    pub retention: Option<Retention>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 512,
            lease: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            max_attempts: 10,
            backoff: Backoff::default(),
            store_backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(30),
                multiplier: 2.0,
                jitter: 0.5,
            },
            retention: Some(Retention {
                keep: Duration::from_secs(7 * 24 * 3600),
                every: Duration::from_secs(60),
                batch: 10_000,
            }),
        }
    }
}

impl RelayConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("relay batch size must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config(
                "relay max attempts must be at least 1".into(),
            ));
        }
        if self.publish_timeout >= self.lease {
            return Err(Error::Config(format!(
                "relay publish timeout ({:?}) must be shorter than the lease ({:?})",
                self.publish_timeout, self.lease
            )));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::Config("relay poll interval must be positive".into()));
        }
        for (name, backoff) in [
            ("backoff", &self.backoff),
            ("store backoff", &self.store_backoff),
        ] {
            backoff
                .validate()
                .map_err(|error| Error::Config(format!("relay {name}: {error}")))?;
        }
        if let Some(retention) = &self.retention {
            retention
                .validate()
                .map_err(|error| Error::Config(format!("relay archive {error}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RelayConfig::default().validate().unwrap();
    }

    #[test]
    fn refuses_a_backoff_that_would_not_do_what_was_meant() {
        for backoff in [
            Backoff {
                jitter: f64::NAN,
                ..Backoff::default()
            },
            Backoff {
                multiplier: 0.0,
                ..Backoff::default()
            },
            Backoff {
                initial: Duration::from_secs(60),
                max: Duration::from_secs(1),
                ..Backoff::default()
            },
        ] {
            let config = RelayConfig {
                backoff: backoff.clone(),
                ..RelayConfig::default()
            };
            assert!(
                matches!(config.validate(), Err(Error::Config(ref m)) if m.starts_with("relay backoff: ")),
                "{backoff:?}"
            );
            let config = RelayConfig {
                store_backoff: backoff,
                ..RelayConfig::default()
            };
            assert!(
                matches!(config.validate(), Err(Error::Config(ref m)) if m.starts_with("relay store backoff: "))
            );
        }
        let unbounded = RelayConfig {
            backoff: Backoff {
                max: Duration::MAX,
                ..Backoff::default()
            },
            ..RelayConfig::default()
        };
        assert!(unbounded.validate().is_ok(), "saturates instead");
    }

    #[test]
    fn refuses_a_retention_that_could_never_prune() {
        let config = RelayConfig {
            retention: Some(Retention {
                batch: 0,
                ..RelayConfig::default()
                    .retention
                    .expect("archived by default")
            }),
            ..RelayConfig::default()
        };
        assert!(
            matches!(config.validate(), Err(Error::Config(ref m)) if m.starts_with("relay archive retention")),
            "{:?}",
            config.validate()
        );
    }

    #[test]
    fn refuses_a_publish_timeout_beyond_the_lease() {
        let config = RelayConfig {
            lease: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(2),
            ..RelayConfig::default()
        };
        assert!(matches!(config.validate(), Err(Error::Config(_))));
    }
}
