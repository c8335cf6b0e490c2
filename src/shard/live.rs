//! What other threads may change or watch on running shards: the limits
//! `SIGHUP` reloads ([`LiveLimits`]) and the per-shard loop-turn counters
//! the watchdog reads ([`TurnStamps`]).
//!
//! Both are plain atomics with relaxed ordering: a shard publishes its turn
//! count with one store per loop turn and reads the reloaded limits once
//! per tick (and the outbound budget where it queues), so neither costs the
//! hot path a lock, a read-modify-write or a shared cache line.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::core::Shard;
use super::{default_max_connections, sys};
use crate::config::Config;

/// The configuration keys that [`LiveLimits`] carries, each changed on a
/// running node by `SIGHUP` (`log_level` is the other live key; `main`
/// applies it to the log filter).
pub const LIVE_LIMIT_KEYS: [&str; 5] = [
    "max_connections",
    "max_memory",
    "max_message_size",
    "max_commands_per_second",
    "outbound_budget",
];

/// The limits a reload may change while connections stay open. Written by
/// `main` on `SIGHUP`, read by every shard.
///
/// What each change does to connections already open:
/// - `max_connections`, `max_memory`: admission only; lowering them
///   refuses new connections (503) and closes none.
/// - `max_message_size`: applies to the next frame read (each shard takes
///   it at its next tick, within a second); a message being assembled that
///   is already over the new limit is closed with 1009.
/// - `max_commands_per_second`: applies to the next command (next tick);
///   the current one-second window is not reset.
/// - `outbound_budget`: applies to the next frame queued; a connection with
///   more than the new budget queued is dropped as a slow consumer (3002)
///   on its next frame, as it would be had the budget always been that.
#[derive(Debug)]
pub struct LiveLimits {
    max_connections: AtomicUsize,
    max_memory: AtomicU64,
    max_message_size: AtomicUsize,
    max_commands_per_second: AtomicU32,
    outbound_budget: AtomicUsize,
}

impl LiveLimits {
    /// The limits `cfg` asks for.
    pub fn new(cfg: &Config) -> Self {
        let limits = Self {
            max_connections: AtomicUsize::new(0),
            max_memory: AtomicU64::new(0),
            max_message_size: AtomicUsize::new(0),
            max_commands_per_second: AtomicU32::new(0),
            outbound_budget: AtomicUsize::new(0),
        };
        limits.apply(cfg);
        limits
    }

    /// Takes every live limit from `cfg` (a validated configuration).
    /// `max_connections = 0` is derived from the descriptor limit again, so
    /// a limit raised with `prlimit` is picked up too.
    pub fn apply(&self, cfg: &Config) {
        self.max_connections
            .store(effective_max_connections(cfg), Ordering::Relaxed);
        self.max_memory.store(cfg.max_memory, Ordering::Relaxed);
        self.max_message_size
            .store(cfg.max_message_size, Ordering::Relaxed);
        self.max_commands_per_second
            .store(cfg.max_commands_per_second, Ordering::Relaxed);
        self.outbound_budget
            .store(cfg.outbound_budget, Ordering::Relaxed);
    }

    /// The node-wide connection cap in force.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// RSS in bytes above which connections are refused (0 = off).
    pub fn max_memory(&self) -> u64 {
        self.max_memory.load(Ordering::Relaxed)
    }

    /// The largest client message.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size.load(Ordering::Relaxed)
    }

    /// Commands per second per connection (0 = no limit).
    pub fn max_commands_per_second(&self) -> u32 {
        self.max_commands_per_second.load(Ordering::Relaxed)
    }

    /// Bytes of data a connection may have queued.
    pub fn outbound_budget(&self) -> usize {
        self.outbound_budget.load(Ordering::Relaxed)
    }
}

/// The connection cap `cfg` implies: `max_connections`, or the descriptor
/// limit less [`super::FD_RESERVE`] when it is 0.
pub fn effective_max_connections(cfg: &Config) -> usize {
    if cfg.max_connections > 0 {
        cfg.max_connections
    } else {
        default_max_connections(sys::nofile_limit())
    }
}

/// One shard's loop-turn count, alone on its cache line (128 bytes covers
/// the adjacent-line prefetch of x86), so shards storing their own never
/// contend for a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct TurnStamp(AtomicU64);

/// Every shard's loop-turn count: shard `i` stores its running count once
/// per loop turn; `main` reads them to tell a turning shard from a stuck
/// one (see `service::liveness`).
#[derive(Debug)]
pub struct TurnStamps(Box<[TurnStamp]>);

impl TurnStamps {
    /// Counters for `shards` shards, all at 0.
    pub fn new(shards: usize) -> Self {
        Self((0..shards).map(|_| TurnStamp::default()).collect())
    }

    /// Shards counted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no shards.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Shard `shard` has begun loop turn `turns` (its own running count: a
    /// plain store, no read-modify-write).
    #[inline]
    pub fn record(&self, shard: usize, turns: u64) {
        self.0[shard].0.store(turns, Ordering::Relaxed);
    }

    /// The last count shard `shard` stored.
    pub fn read(&self, shard: usize) -> u64 {
        self.0[shard].0.load(Ordering::Relaxed)
    }
}

impl Shard {
    /// Takes the reloaded limits that live in the shard's session
    /// configuration (once per tick).
    pub(crate) fn refresh_live_limits(&mut self) {
        let limits = &self.ctx.shared.limits;
        self.session_cfg.max_message_size = limits.max_message_size();
        self.session_cfg.max_commands_per_second = limits.max_commands_per_second();
    }
}

/// Test-only (feature `test-hooks`, never in a shipped build):
/// `EDGE_TEST_START_DELAY=<shard>:<ms>` makes shard `<shard>` wait that
/// long before it counts as started, so a test can see that readiness
/// (and `READY=1`) waits for every shard.
#[cfg(feature = "test-hooks")]
pub(crate) fn test_start_delay(shard: usize) {
    let Some(spec) = std::env::var("EDGE_TEST_START_DELAY").ok() else {
        return;
    };
    match spec
        .split_once(':')
        .map(|(s, ms)| (s.parse::<usize>(), ms.parse::<u64>()))
    {
        Some((Ok(s), Ok(ms))) if s == shard => {
            tracing::warn!(shard, ms, "test hook: delaying this shard's start");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        Some((Ok(_), Ok(_))) => {}
        _ => tracing::error!(spec, "EDGE_TEST_START_DELAY: expected <shard>:<ms>"),
    }
}

/// A test-only stall of one shard's loop (feature `test-hooks`, never in a
/// shipped build): `EDGE_TEST_STALL_SHARD=<shard>:<after_ms>:<for_ms>`
/// makes shard `<shard>` block its own thread for `<for_ms>` once,
/// `<after_ms>` after its loop started, so a test can watch the watchdog
/// notice a shard that stopped turning.
#[cfg(feature = "test-hooks")]
pub(crate) struct TestStall {
    at: std::time::Instant,
    length: std::time::Duration,
}

#[cfg(feature = "test-hooks")]
impl TestStall {
    /// The stall asked for shard `shard`, if any.
    pub(crate) fn for_shard(shard: usize) -> Option<Self> {
        let spec = std::env::var("EDGE_TEST_STALL_SHARD").ok()?;
        let mut parts = spec.split(':').map(|p| p.parse::<u64>().ok());
        let (Some(Some(which)), Some(Some(after)), Some(Some(length))) =
            (parts.next(), parts.next(), parts.next())
        else {
            tracing::error!(
                spec,
                "EDGE_TEST_STALL_SHARD: expected <shard>:<after_ms>:<for_ms>"
            );
            return None;
        };
        (which == shard as u64).then(|| Self {
            at: std::time::Instant::now() + std::time::Duration::from_millis(after),
            length: std::time::Duration::from_millis(length),
        })
    }

    /// Blocks the calling shard thread once, when the time has come; true
    /// once spent.
    pub(crate) fn maybe_stall(&self) -> bool {
        if std::time::Instant::now() < self.at {
            return false;
        }
        tracing::warn!(
            ms = self.length.as_millis() as u64,
            "test hook: stalling this shard"
        );
        std::thread::sleep(self.length);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_limits_follow_the_configuration() {
        let mut cfg = Config {
            max_connections: 10,
            max_memory: 1 << 30,
            ..Config::default()
        };
        let limits = LiveLimits::new(&cfg);
        assert_eq!(limits.max_connections(), 10);
        assert_eq!(limits.max_memory(), 1 << 30);
        assert_eq!(limits.max_message_size(), cfg.max_message_size);
        assert_eq!(limits.outbound_budget(), cfg.outbound_budget);
        cfg.max_connections = 0;
        cfg.max_memory = 0;
        cfg.max_message_size = 1000;
        cfg.max_commands_per_second = 7;
        cfg.outbound_budget = 4096;
        limits.apply(&cfg);
        assert_eq!(
            limits.max_connections(),
            default_max_connections(sys::nofile_limit())
        );
        assert_eq!(limits.max_memory(), 0);
        assert_eq!(limits.max_message_size(), 1000);
        assert_eq!(limits.max_commands_per_second(), 7);
        assert_eq!(limits.outbound_budget(), 4096);
    }

    #[test]
    fn turn_stamps_are_per_shard_and_on_their_own_lines() {
        let stamps = TurnStamps::new(3);
        stamps.record(1, 42);
        assert_eq!(
            (0..3).map(|i| stamps.read(i)).collect::<Vec<_>>(),
            [0, 42, 0]
        );
        assert_eq!(std::mem::align_of::<TurnStamp>(), 128);
        let a = &stamps.0[0] as *const TurnStamp as usize;
        let b = &stamps.0[1] as *const TurnStamp as usize;
        assert!(b - a >= 128);
    }
}
