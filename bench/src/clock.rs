//! `CLOCK_MONOTONIC` time in nanoseconds.
//!
//! `std::time::Instant` cannot be sent to another process, but the raw
//! `CLOCK_MONOTONIC` value is system-wide: the publisher stamps it into each
//! message and the subscribers (in other processes) subtract it from their
//! own reading.

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds on `CLOCK_MONOTONIC` (vDSO, no syscall).
pub fn mono_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Converts a monotonic deadline in nanoseconds to a tokio [`Instant`]
/// (relative to now; deadlines in the past map to now).
///
/// [`Instant`]: tokio::time::Instant
pub fn to_instant(deadline_ns: u64) -> tokio::time::Instant {
    let now_i = tokio::time::Instant::now();
    let now_ns = mono_ns();
    now_i + std::time::Duration::from_nanos(deadline_ns.saturating_sub(now_ns))
}
