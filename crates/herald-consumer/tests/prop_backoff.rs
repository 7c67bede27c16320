//! The backoff of retries (the consumer's `RetryPolicy`, the relay's, the transports'
//! reconnects) never panics, whatever its settings: any durations, any floats, any attempt.

use std::time::Duration;

use herald_core::Backoff;
use proptest::prelude::*;

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..1_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(1.0),
        -10.0..10.0,
        any::<f64>(),
    ]
}

proptest! {
    #[test]
    fn a_delay_never_panics_and_stays_under_the_cap(
        initial in any_duration(),
        max in any_duration(),
        multiplier in any_float(),
        jitter in any_float(),
        attempt in any::<u32>(),
    ) {
        let backoff = Backoff { initial, max, multiplier, jitter };
        let nominal = backoff.nominal(attempt);
        let delay = backoff.delay(attempt);
        prop_assert!(nominal <= max);
        prop_assert!(delay <= nominal);
        if backoff.validate().is_ok() {
            prop_assert!(nominal >= initial.min(max));
            let jitter = jitter.clamp(0.0, 1.0);
            prop_assert!(
                delay.as_secs_f64() >= nominal.as_secs_f64() * (1.0 - jitter) * (1.0 - 1e-9),
                "{delay:?} below the jitter's range of {nominal:?}"
            );
        }
    }
}
