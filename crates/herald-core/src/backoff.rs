//! Bounded, jittered exponential backoff.

use std::time::Duration;

/// Exponential backoff with full-range jitter around the nominal delay, capped.
///
/// The nominal delay of attempt `n` (1-based) is `initial * multiplier^(n-1)`, capped at `max`;
/// the actual delay is drawn uniformly from `[nominal * (1 - jitter), nominal]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Share of the delay that is randomised, from 0 (none) to 1 (all).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The nominal (un-jittered) delay after failed attempt `attempt` (1-based). Never panics:
    /// it saturates at `max` (also when `max` is [`Duration::MAX`]), a multiplier below 1 or
    /// not a number counts as 1, and `max` wins over a larger `initial`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let multiplier = if self.multiplier.is_nan() {
            1.0
        } else {
            self.multiplier.max(1.0)
        };
        let initial = self.initial.min(self.max);
        if initial.is_zero() {
            return Duration::ZERO;
        }
        let secs = initial.as_secs_f64() * multiplier.powi(exp);
        match Duration::try_from_secs_f64(secs) {
            Ok(delay) => delay.clamp(initial, self.max),
            // Too large for a `Duration`: past any cap.
            Err(_) => self.max,
        }
    }

    /// The delay to wait after failed attempt `attempt` (1-based), jittered: drawn from
    /// `[nominal * (1 - jitter), nominal]`. Never panics: a jitter outside `[0, 1]` is clamped
    /// into it, and one that is not a number counts as 0.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        if jitter == 0.0 {
            return nominal;
        }
        let factor = 1.0 - jitter * fastrand::f64();
        Duration::try_from_secs_f64(nominal.as_secs_f64() * factor)
            .map_or(nominal, |d| d.min(nominal))
    }

    /// Checks that the settings make sense: a finite multiplier of at least 1, a jitter
    /// between 0 and 1, and `max` not below `initial`. [`delay`](Self::delay) never panics
    /// whatever the settings; this tells a user that theirs would not do what they meant.
    pub fn validate(&self) -> Result<(), InvalidBackoff> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(InvalidBackoff::Multiplier(self.multiplier));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(InvalidBackoff::Jitter(self.jitter));
        }
        if self.max < self.initial {
            return Err(InvalidBackoff::MaxBelowInitial {
                initial: self.initial,
                max: self.max,
            });
        }
        Ok(())
    }
}

/// Why a [`Backoff`] was refused by [`Backoff::validate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBackoff {
    /// The multiplier is not a finite number of at least 1.
    #[error("backoff multiplier must be a finite number of at least 1, not {0}")]
    Multiplier(f64),
    /// The jitter is not a number between 0 and 1.
    #[error("backoff jitter must be between 0 and 1, not {0}")]
    Jitter(f64),
    /// The cap is below the first delay.
    #[error("backoff max ({max:?}) must not be below its initial delay ({initial:?})")]
    MaxBelowInitial {
        /// The first delay.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(1000), Duration::from_secs(1));
    }

    #[test]
    fn extreme_values_saturate_instead_of_panicking() {
        let huge = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
            multiplier: 2.0,
            jitter: 0.5,
        };
        for attempt in [1, 2, 63, 64, 65, 1000, u32::MAX] {
            assert!(huge.delay(attempt) <= Duration::MAX);
        }
        assert_eq!(huge.nominal(u32::MAX), Duration::MAX, "grows up to the cap");
        let no_jitter = Backoff {
            jitter: 0.0,
            ..huge.clone()
        };
        assert_eq!(no_jitter.delay(u32::MAX), Duration::MAX);
        for jitter in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 2.0] {
            let b = Backoff {
                jitter,
                ..Backoff::default()
            };
            let d = b.delay(3);
            assert!(d <= b.nominal(3), "{jitter}: {d:?}");
        }
        for multiplier in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -3.0,
            f64::MAX,
        ] {
            let b = Backoff {
                multiplier,
                ..Backoff::default()
            };
            for attempt in [1, 2, 100] {
                assert!(b.delay(attempt) <= b.max, "{multiplier}");
            }
        }
        let zero = Backoff {
            initial: Duration::ZERO,
            multiplier: f64::INFINITY,
            ..Backoff::default()
        };
        assert_eq!(zero.nominal(5), Duration::ZERO);
        let inverted = Backoff {
            initial: Duration::MAX,
            max: Duration::from_secs(1),
            ..Backoff::default()
        };
        assert_eq!(inverted.nominal(1), Duration::from_secs(1), "max caps");
    }

    #[test]
    fn validation_names_what_is_wrong() {
        assert_eq!(Backoff::default().validate(), Ok(()));
        let bad = |b: Backoff| b.validate().expect_err("refused");
        assert!(matches!(
            bad(Backoff {
                multiplier: f64::NAN,
                ..Backoff::default()
            }),
            InvalidBackoff::Multiplier(_)
        ));
        assert!(matches!(
            bad(Backoff {
                multiplier: 0.5,
                ..Backoff::default()
            }),
            InvalidBackoff::Multiplier(_)
        ));
        assert!(matches!(
            bad(Backoff {
                jitter: f64::NAN,
                ..Backoff::default()
            }),
            InvalidBackoff::Jitter(_)
        ));
        assert!(matches!(
            bad(Backoff {
                jitter: 1.5,
                ..Backoff::default()
            }),
            InvalidBackoff::Jitter(_)
        ));
        let inverted = bad(Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(1),
            ..Backoff::default()
        });
        assert!(matches!(inverted, InvalidBackoff::MaxBelowInitial { .. }));
        assert_eq!(
            inverted.to_string(),
            "backoff max (1s) must not be below its initial delay (10s)"
        );
        assert_eq!(
            Backoff {
                max: Duration::MAX,
                ..Backoff::default()
            }
            .validate(),
            Ok(()),
            "an unbounded cap is a choice, and saturates"
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::default();
        for attempt in 1..20 {
            let d = b.delay(attempt);
            assert!(d <= b.nominal(attempt));
            assert!(d >= b.nominal(attempt).mul_f64(0.5));
        }
    }
}
