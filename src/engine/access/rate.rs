//! The token bucket behind every rate limit here, in its GCRA form (the
//! generic cell rate algorithm): a bucket of `burst` tokens refilled at
//! `rate` per second is one timestamp per key, the "theoretical arrival
//! time" (TAT), and a check is a compare and an add in integer
//! nanoseconds, so refill arithmetic is exact and deterministic.
//!
//! A key whose TAT is not after `now` has a full bucket: it carries no
//! state worth keeping, which is what lets the tables drop it.

/// Smallest rate accepted (per second): one event every ~17 minutes.
pub const MIN_RATE: f64 = 0.001;
/// Largest rate accepted (per second); above it a limit is pointless.
pub const MAX_RATE: f64 = 1_000_000.0;

const NANOS_PER_SEC: f64 = 1e9;
const NANOS_PER_MS: u64 = 1_000_000;

/// A rate and burst, turned into the two intervals GCRA works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds between two tokens (1 / rate).
    interval_ns: u64,
    /// How far the TAT may run ahead of now: `(burst - 1) × interval`.
    tolerance_ns: u64,
    /// Tokens the bucket holds when full.
    burst: u32,
}

impl Gcra {
    /// A bucket refilled at `rate` tokens per second holding `burst`
    /// tokens; `burst` 0 means one second's worth (`ceil(rate)`, at least
    /// 1). `None` when `rate` is 0 (the limit is off). The caller has
    /// checked `rate` is finite and within [`MIN_RATE`]..=[`MAX_RATE`];
    /// anything else is clamped into that range, never a panic.
    pub fn new(rate: f64, burst: u32) -> Option<Gcra> {
        if rate.is_nan() || rate <= 0.0 {
            return None;
        }
        let rate = rate.clamp(MIN_RATE, MAX_RATE);
        // Rounded to the nearest nanosecond: at most 1 ns of error per
        // token, and at least 1 ns so the bucket always drains.
        let interval_ns = ((NANOS_PER_SEC / rate).round() as u64).max(1);
        let burst = if burst == 0 {
            (rate.ceil() as u32).max(1)
        } else {
            burst
        };
        let tolerance_ns = interval_ns.saturating_mul(u64::from(burst - 1));
        Some(Gcra {
            interval_ns,
            tolerance_ns,
            burst,
        })
    }

    /// Tokens the bucket holds when full.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Nanoseconds between two tokens.
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// Whether a token is available at `now_ns` for the key whose TAT is
    /// `tat`, without taking it.
    pub fn would_admit(&self, tat: u64, now_ns: u64) -> bool {
        tat <= now_ns.saturating_add(self.tolerance_ns)
    }

    /// Takes a token at `now_ns` if one is available, advancing `tat`;
    /// a refused event leaves `tat` alone (it costs nothing).
    pub fn admit(&self, tat: &mut u64, now_ns: u64) -> bool {
        if !self.would_admit(*tat, now_ns) {
            return false;
        }
        *tat = (*tat).max(now_ns).saturating_add(self.interval_ns);
        true
    }

    /// Whether the bucket of a key with TAT `tat` is full at `now_ns`, so
    /// forgetting the key changes nothing.
    pub fn is_full(tat: u64, now_ns: u64) -> bool {
        tat <= now_ns
    }
}

/// Milliseconds (the shell's clock) to the nanoseconds GCRA counts in.
pub fn ms_to_ns(now_ms: u64) -> u64 {
    now_ms.saturating_mul(NANOS_PER_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events admitted at each of `times` (ms).
    fn run(g: &Gcra, times: &[u64]) -> Vec<bool> {
        let mut tat = 0;
        times
            .iter()
            .map(|&t| g.admit(&mut tat, ms_to_ns(t)))
            .collect()
    }

    #[test]
    fn burst_then_one_per_interval() {
        // 2 per second, burst 3: three at once, then one each 500 ms.
        let g = Gcra::new(2.0, 3).unwrap();
        assert_eq!(g.interval_ns(), 500_000_000);
        let got = run(&g, &[1000, 1000, 1000, 1000, 1499, 1500, 1500, 2000]);
        assert_eq!(got, [true, true, true, false, false, true, false, true]);
    }

    #[test]
    fn slow_rate_refills_exactly() {
        // 0.5 per second, burst 1: one every 2 s, not a millisecond sooner.
        let g = Gcra::new(0.5, 1).unwrap();
        let got = run(&g, &[10_000, 11_999, 12_000, 13_999, 14_000]);
        assert_eq!(got, [true, false, true, false, true]);
    }

    #[test]
    fn full_refill_after_idle_never_exceeds_burst() {
        let g = Gcra::new(10.0, 5).unwrap();
        let mut tat = 0;
        let n = (0..100).filter(|_| g.admit(&mut tat, ms_to_ns(0))).count();
        assert_eq!(n, 5);
        // A long idle gap refills to the burst, not beyond.
        let n = (0..100)
            .filter(|_| g.admit(&mut tat, ms_to_ns(3_600_000)))
            .count();
        assert_eq!(n, 5);
        // 250 ms later: 2.5 intervals → 2 tokens.
        let n = (0..100)
            .filter(|_| g.admit(&mut tat, ms_to_ns(3_600_250)))
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn sustained_rate_over_a_minute() {
        // Trying every millisecond for 60 s at 3/s burst 4 admits exactly
        // 4 + 3 × 60 (the refill over 60 s, plus the initial burst).
        let g = Gcra::new(3.0, 4).unwrap();
        let mut tat = 0;
        let n = (0..=60_000u64)
            .filter(|&t| g.admit(&mut tat, ms_to_ns(t)))
            .count();
        // 3 per second has a 333,333,333 ns interval (rounded), so 180
        // intervals end at 59,999.99994 ms, inside the run.
        assert_eq!(n, 4 + 180);
    }

    #[test]
    fn default_burst_is_one_second_and_off_is_none() {
        assert_eq!(Gcra::new(2.5, 0).unwrap().burst(), 3);
        assert_eq!(Gcra::new(0.01, 0).unwrap().burst(), 1);
        assert_eq!(Gcra::new(0.0, 10), None);
        assert_eq!(Gcra::new(f64::NAN, 10), None);
        assert_eq!(Gcra::new(-1.0, 10), None);
        // Out-of-range input is clamped, not a panic.
        let g = Gcra::new(f64::INFINITY, 1).unwrap();
        assert_eq!(g.interval_ns(), 1000);
        let g = Gcra::new(1e-30, u32::MAX).unwrap();
        assert_eq!(g.interval_ns(), 1_000_000_000_000);
    }

    #[test]
    fn fullness_and_time_going_backwards() {
        let g = Gcra::new(1.0, 2).unwrap();
        let mut tat = 0;
        assert!(g.admit(&mut tat, ms_to_ns(5000)));
        assert!(!Gcra::is_full(tat, ms_to_ns(5999)));
        assert!(Gcra::is_full(tat, ms_to_ns(6000)));
        // Another thread's slightly older clock reading sees the bucket as
        // it was then: no extra token, no underflow.
        assert!(!g.admit(&mut tat, ms_to_ns(4990)));
        assert!(g.admit(&mut tat, ms_to_ns(5000)));
        assert!(!g.admit(&mut tat, ms_to_ns(5000)));
        assert!(g.admit(&mut tat, ms_to_ns(6000)));
        // Far future does not overflow.
        assert!(g.admit(&mut tat, u64::MAX));
        assert!(g.admit(&mut tat, u64::MAX));
    }
}
