//! Reconnect delays: exponential backoff with full jitter.
//!
//! The delay before attempt `n` (0 = the first retry) is drawn uniformly
//! from `[0, min(max, min_delay * 2^n)]` (AWS's "full jitter", as
//! centrifuge-js): clients dropped together by one server restart spread
//! their reconnects over the whole window instead of arriving in waves.

use std::time::Duration;

use rand::Rng;

/// Backoff bounds: the first window's ceiling and the largest ceiling.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling of attempt `attempt`'s window: `min(max, min * 2^attempt)`,
    /// without overflow for any attempt.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let max = self.max.as_nanos();
        let grown = self.min.as_nanos().saturating_mul(1u128 << attempt.min(64));
        let nanos = grown.min(max).min(u64::MAX as u128) as u64;
        Duration::from_nanos(nanos)
    }

    /// A delay drawn uniformly from `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const B: Backoff = Backoff {
        min: Duration::from_millis(500),
        max: Duration::from_secs(20),
    };

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(B.ceiling(0), Duration::from_millis(500));
        assert_eq!(B.ceiling(1), Duration::from_millis(1000));
        assert_eq!(B.ceiling(5), Duration::from_millis(16_000));
        assert_eq!(B.ceiling(6), Duration::from_secs(20));
        for n in [7, 31, 63, 64, 65, 1000, u32::MAX] {
            assert_eq!(B.ceiling(n), Duration::from_secs(20), "attempt {n}");
        }
    }

    #[test]
    fn delays_stay_within_the_full_jitter_window() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in 0..40 {
            let ceiling = B.ceiling(n);
            let mut lo = Duration::MAX;
            let mut hi = Duration::ZERO;
            for _ in 0..2000 {
                let d = B.delay(n, &mut rng);
                assert!(d <= ceiling, "attempt {n}: {d:?} above {ceiling:?}");
                lo = lo.min(d);
                hi = hi.max(d);
            }
            // Full jitter uses the whole window, not just its top.
            assert!(lo < ceiling / 10, "attempt {n}: smallest {lo:?}");
            assert!(hi > ceiling * 9 / 10, "attempt {n}: largest {hi:?}");
        }
    }

    #[test]
    fn a_zero_window_gives_zero() {
        let b = Backoff {
            min: Duration::ZERO,
            max: Duration::from_secs(1),
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(b.delay(3, &mut rng), Duration::ZERO);
    }
}
