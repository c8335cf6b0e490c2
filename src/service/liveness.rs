//! Deciding from the shards' loop-turn counters whether every shard is
//! turning, and when to ping the watchdog. No I/O and no clock: the caller
//! passes the time and the counters it read (`shard::live::TurnStamps`),
//! so the decisions are tested with fake counters.
//!
//! A shard is *stalled* when its counter has not moved for longer than the
//! stall threshold. An idle shard still turns at least once a second (its
//! tick), so the threshold is never below [`MIN_STALL`]; under a watchdog
//! it is half the watchdog timeout, the period systemd recommends for the
//! pings. Pings are withheld while any watched shard is stalled, so a stuck
//! shard lets the watchdog expire and systemd restarts the node.

use std::time::{Duration, Instant};

/// The shortest stall threshold: two of an idle shard's one-second ticks.
pub const MIN_STALL: Duration = Duration::from_secs(2);

/// The stall threshold: half the watchdog timeout, at least [`MIN_STALL`]
/// (and exactly that without a watchdog).
pub fn stall_threshold(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(MIN_STALL, |w| (w / 2).max(MIN_STALL))
}

/// A shard's state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The shard's counter has not moved for `idle`.
    Stalled {
        /// Shard index.
        shard: usize,
        /// Time since its counter last moved.
        idle: Duration,
    },
    /// A stalled shard's counter moved again after `idle`.
    Recovered {
        /// Shard index.
        shard: usize,
        /// How long its counter had not moved.
        idle: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    turns: u64,
    /// When `turns` was first seen.
    since: Instant,
    stalled: bool,
    /// Finished (drained): no longer watched.
    done: bool,
}

/// What the watcher last saw of each shard.
#[derive(Debug)]
pub struct Liveness {
    seen: Vec<Seen>,
    stall_after: Duration,
}

impl Liveness {
    /// Watches `shards` shards from `now`, calling one stalled after
    /// `stall_after` without a turn.
    pub fn new(shards: usize, stall_after: Duration, now: Instant) -> Self {
        let seen = Seen {
            turns: 0,
            since: now,
            stalled: false,
            done: false,
        };
        Self {
            seen: vec![seen; shards],
            stall_after,
        }
    }

    /// The threshold in use.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// Shard `shard`'s counter read `turns` at `now`.
    pub fn observe(&mut self, now: Instant, shard: usize, turns: u64) -> Option<Change> {
        let s = &mut self.seen[shard];
        if s.done {
            return None;
        }
        let idle = now.saturating_duration_since(s.since);
        if turns != s.turns {
            s.turns = turns;
            s.since = now;
            return std::mem::take(&mut s.stalled).then_some(Change::Recovered { shard, idle });
        }
        if !s.stalled && idle > self.stall_after {
            s.stalled = true;
            return Some(Change::Stalled { shard, idle });
        }
        None
    }

    /// Shard `shard` has finished (drained); it is no longer watched.
    pub fn finished(&mut self, shard: usize) {
        let s = &mut self.seen[shard];
        s.done = true;
        s.stalled = false;
    }

    /// Time since shard `shard`'s counter was last seen to move.
    pub fn idle(&self, shard: usize, now: Instant) -> Duration {
        now.saturating_duration_since(self.seen[shard].since)
    }

    /// The watched shards that are stalled.
    pub fn stalled(&self) -> impl Iterator<Item = usize> + '_ {
        self.seen
            .iter()
            .enumerate()
            .filter(|(_, s)| s.stalled && !s.done)
            .map(|(i, _)| i)
    }

    /// Whether no watched shard is stalled.
    pub fn all_turning(&self) -> bool {
        self.stalled().next().is_none()
    }
}

/// When to send `WATCHDOG=1`: every half watchdog timeout while every
/// shard turns; at once when a withheld ping may go again.
#[derive(Debug)]
pub struct Pinger {
    every: Duration,
    next: Instant,
}

impl Pinger {
    /// Pings for a watchdog timeout of `timeout`, the first at `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            every: timeout / 2,
            next: now,
        }
    }

    /// Whether to ping at `now`, given whether every shard is turning.
    /// A withheld ping stays due, so it goes out as soon as the shards turn
    /// again.
    pub fn should_ping(&mut self, now: Instant, all_turning: bool) -> bool {
        if !all_turning || now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `counters` at `t` and returns the changes.
    fn feed(l: &mut Liveness, t: Instant, counters: &[u64]) -> Vec<Change> {
        counters
            .iter()
            .enumerate()
            .filter_map(|(i, &c)| l.observe(t, i, c))
            .collect()
    }

    #[test]
    fn threshold_is_half_the_watchdog_but_never_below_two_ticks() {
        assert_eq!(stall_threshold(None), MIN_STALL);
        assert_eq!(
            stall_threshold(Some(Duration::from_secs(10))),
            Duration::from_secs(5)
        );
        assert_eq!(stall_threshold(Some(Duration::from_secs(1))), MIN_STALL);
    }

    #[test]
    fn a_shard_whose_counter_stops_is_stalled_then_recovers() {
        let t0 = Instant::now();
        let mut l = Liveness::new(2, 2000 * MS, t0);
        // Both turn every 50 ms for a second.
        let mut c = [0u64, 0];
        for step in 1..=20u32 {
            c = [step.into(), u64::from(step) * 3];
            assert!(feed(&mut l, t0 + step * 50 * MS, &c).is_empty());
        }
        assert!(l.all_turning());
        // Shard 1 stops at t = 1 s; shard 0 goes on.
        let stop = t0 + 1000 * MS;
        let mut changes = Vec::new();
        let mut stalled_at = None;
        for step in 1..=60u32 {
            let t = stop + step * 50 * MS;
            c[0] += 1;
            let ch = feed(&mut l, t, &c);
            if !ch.is_empty() && stalled_at.is_none() {
                stalled_at = Some(t);
            }
            changes.extend(ch);
        }
        // Stalled once, just past the threshold, and only shard 1.
        assert_eq!(changes.len(), 1, "{changes:?}");
        let Change::Stalled { shard, idle } = changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(shard, 1);
        assert_eq!(idle, 2050 * MS);
        assert_eq!(stalled_at, Some(stop + 2050 * MS));
        assert!(!l.all_turning());
        assert_eq!(l.stalled().collect::<Vec<_>>(), [1]);
        assert_eq!(l.idle(1, stop + 3000 * MS), 3000 * MS);
        // It turns again: recovered, with how long it was idle.
        let t = stop + 3050 * MS;
        c[1] += 1;
        c[0] += 1;
        assert_eq!(
            feed(&mut l, t, &c),
            [Change::Recovered {
                shard: 1,
                idle: 3050 * MS
            }]
        );
        assert!(l.all_turning());
        assert_eq!(l.idle(1, t), Duration::ZERO);
    }

    #[test]
    fn any_counter_change_counts_as_a_turn_even_a_wrap() {
        let t0 = Instant::now();
        let mut l = Liveness::new(1, 100 * MS, t0);
        assert!(l.observe(t0 + 50 * MS, 0, u64::MAX).is_none());
        assert!(l.observe(t0 + 140 * MS, 0, 0).is_none());
        assert!(l.all_turning());
        assert!(matches!(
            l.observe(t0 + 250 * MS, 0, 0),
            Some(Change::Stalled { shard: 0, .. })
        ));
    }

    #[test]
    fn a_shard_that_never_starts_is_stalled() {
        let t0 = Instant::now();
        let mut l = Liveness::new(2, 2000 * MS, t0);
        assert!(feed(&mut l, t0 + 1500 * MS, &[5, 0]).is_empty());
        assert_eq!(
            feed(&mut l, t0 + 2100 * MS, &[6, 0]),
            [Change::Stalled {
                shard: 1,
                idle: 2100 * MS
            }]
        );
    }

    #[test]
    fn finished_shards_are_not_watched() {
        let t0 = Instant::now();
        let mut l = Liveness::new(2, 100 * MS, t0);
        assert_eq!(feed(&mut l, t0 + 200 * MS, &[0, 1]).len(), 1);
        assert!(!l.all_turning());
        // Shard 0 drained and exited: it is no longer a stall.
        l.finished(0);
        assert!(l.all_turning());
        assert!(l.observe(t0 + 900 * MS, 0, 0).is_none());
        assert!(l.all_turning());
    }

    #[test]
    fn pings_every_half_timeout_only_while_all_turn() {
        let t0 = Instant::now();
        let mut p = Pinger::new(1000 * MS, t0);
        let mut sent = Vec::new();
        for step in 0..=40u32 {
            let t = t0 + step * 50 * MS;
            // Every shard turns, except from 600 ms to 1300 ms.
            let turning = !(600..1300).contains(&(step * 50));
            if p.should_ping(t, turning) {
                sent.push(step * 50);
            }
        }
        // 0, 500; withheld at 1000 (stalled); at once when turning again
        // (1300), then every 500 ms.
        assert_eq!(sent, [0, 500, 1300, 1800]);
    }
}
