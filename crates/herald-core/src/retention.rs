//! Retention: how long finished records are kept, and how they are pruned.
//!
//! One type for every table that grows with finished work: the relay prunes the outbox's
//! archive of published rows with it (`RelayConfig::retention`), the consumer its inbox
//! records (`ConsumerConfig::retention`). It has no `Default`: each of those configs holds its
//! own default, documented on its field, so that no third set of values exists.

use std::time::Duration;

/// Removal of old records, off the hot path: every `every`, records older than `keep` are
/// deleted in statements of at most `batch` rows, so that pruning never holds long locks.
///
/// ```
/// use std::time::Duration;
/// use herald_core::Retention;
///
/// let month = Retention {
///     keep: Duration::from_secs(30 * 24 * 3600),
///     every: Duration::from_secs(600),
///     batch: 5_000,
/// };
/// assert!(month.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Keep records this long after they were finished (published, handled).
    pub keep: Duration,
    /// Prune this often.
    pub every: Duration,
    /// Most records deleted per statement; a prune that deletes a full batch has more to do.
    pub batch: usize,
}

impl Retention {
    /// Checks that the settings make sense: a positive interval and batch.
    pub fn validate(&self) -> Result<(), InvalidRetention> {
        if self.every.is_zero() {
            return Err(InvalidRetention::Interval);
        }
        if self.batch == 0 {
            return Err(InvalidRetention::Batch);
        }
        Ok(())
    }
}

/// Why a [`Retention`] was refused by [`Retention::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRetention {
    /// The pruning interval is zero.
    #[error("retention interval must be positive")]
    Interval,
    /// The batch is zero: no statement could delete anything.
    #[error("retention batch must be at least 1")]
    Batch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention() -> Retention {
        Retention {
            keep: Duration::from_secs(3600),
            every: Duration::from_secs(60),
            batch: 100,
        }
    }

    #[test]
    fn refuses_a_zero_interval_or_batch() {
        assert_eq!(retention().validate(), Ok(()));
        let never = Retention {
            every: Duration::ZERO,
            ..retention()
        };
        assert_eq!(never.validate(), Err(InvalidRetention::Interval));
        let nothing = Retention {
            batch: 0,
            ..retention()
        };
        assert_eq!(nothing.validate(), Err(InvalidRetention::Batch));
        let keep_nothing = Retention {
            keep: Duration::ZERO,
            ..retention()
        };
        assert_eq!(
            keep_nothing.validate(),
            Ok(()),
            "keeping nothing is a choice"
        );
    }
}
