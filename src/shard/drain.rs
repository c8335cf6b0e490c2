//! The drain schedule: after SIGTERM a shard tells its clients to
//! reconnect in equal slices over the first 80% of `drain_timeout` (so they
//! do not all come back at once), leaving the rest for close handshakes.

use std::time::{Duration, Instant};

/// How often the shard takes a slice while draining.
pub(crate) const DRAIN_STEP: Duration = Duration::from_millis(100);

/// A drain in progress.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    started: Instant,
    spread_until: Instant,
    deadline: Instant,
}

impl Drain {
    /// A drain starting at `now` that must end within `total`.
    pub(crate) fn new(now: Instant, total: Duration) -> Self {
        Self {
            started: now,
            // Spread disconnects over the first 80%, leaving time for the
            // close handshakes to finish.
            spread_until: now + total.mul_f64(0.8),
            deadline: now + total,
        }
    }

    /// Whether the time is up: whatever is left is cut.
    pub(crate) fn over(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Time since the drain started.
    pub(crate) fn elapsed(&self, now: Instant) -> Duration {
        now.duration_since(self.started)
    }

    /// How many of the `open` connections to tell now: an equal share of
    /// the steps left until the spread ends (all of them once it has).
    pub(crate) fn quota(&self, now: Instant, open: usize) -> usize {
        let steps_left = self
            .spread_until
            .saturating_duration_since(now)
            .as_millis()
            .div_ceil(DRAIN_STEP.as_millis())
            .max(1) as usize;
        open.div_ceil(steps_left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_spread_over_eighty_percent() {
        let t0 = Instant::now();
        let d = Drain::new(t0, Duration::from_secs(10));
        // 8 s of spreading in 100 ms steps: 80 slices.
        assert_eq!(d.quota(t0, 8000), 100);
        assert_eq!(d.quota(t0 + Duration::from_secs(4), 4000), 100);
        // Past the spread, everyone left at once.
        assert_eq!(d.quota(t0 + Duration::from_secs(9), 123), 123);
        assert!(!d.over(t0 + Duration::from_millis(9_999)));
        assert!(d.over(t0 + Duration::from_secs(10)));
        assert_eq!(d.quota(t0, 0), 0);
    }
}
