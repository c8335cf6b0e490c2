//! Per-user limits: a publish rate per user on each shard
//! ([`UserLimits`], owned by one shard, no locks) and a cap on a user's
//! concurrent connections across the node ([`UserConnections`], shared
//! like the per-IP table).
//!
//! Both apply to authenticated users only. The anonymous user (empty
//! string) is never limited or counted here: anonymous connections have
//! no identity to share a budget, and the per-connection command rate
//! (`max_commands_per_second`) and the per-IP limits already bound them.
//!
//! The publish rate is per shard, as the issue asks ("across connections
//! on a shard"): a user whose connections land on `n` shards may publish
//! up to `n` times the rate in total. Counting node-wide would put a lock
//! or a cross-shard message on every publish.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::rate::{Gcra, ms_to_ns};

/// Smallest table size at which [`UserLimits`] sweeps itself.
const MIN_SELF_SWEEP: usize = 1024;

/// One shard's per-user publish rate (`per_user_publish_rate`).
#[derive(Debug)]
pub struct UserLimits {
    rate: Option<Gcra>,
    /// TAT per user with a bucket that is not full.
    users: HashMap<Box<str>, u64>,
    /// Table size that triggers the next self-sweep.
    sweep_at: usize,
}

impl UserLimits {
    /// `rate` publishes per second per user (0 = off), bursts of `burst`
    /// (0 = one second's worth).
    pub fn new(rate: f64, burst: u32) -> UserLimits {
        UserLimits {
            rate: Gcra::new(rate, burst),
            users: HashMap::new(),
            sweep_at: MIN_SELF_SWEEP,
        }
    }

    /// Whether the limit is on.
    pub fn is_active(&self) -> bool {
        self.rate.is_some()
    }

    /// Whether `user` may publish at `now_ms` (taking a token if so). A
    /// refused publish gets error 114 (too many requests, temporary) and
    /// costs nothing. Allocates only the first time a user publishes
    /// after its bucket was last full.
    pub fn publish(&mut self, user: &str, now_ms: u64) -> bool {
        let Some(g) = &self.rate else {
            return true;
        };
        if user.is_empty() {
            return true;
        }
        let now = ms_to_ns(now_ms);
        if let Some(tat) = self.users.get_mut(user) {
            return g.admit(tat, now);
        }
        // A user without an entry has a full bucket.
        let mut tat = 0;
        let admitted = g.admit(&mut tat, now);
        if self.users.len() >= self.sweep_at {
            self.sweep(now_ms);
            self.sweep_at = (self.users.len() * 2).max(MIN_SELF_SWEEP);
        }
        self.users.insert(user.into(), tat);
        admitted
    }

    /// Forgets users whose bucket is full at `now_ms`; returns how many.
    /// The table also sweeps itself when it doubles, so memory follows the
    /// users publishing now even if this is never called.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let now = ms_to_ns(now_ms);
        let before = self.users.len();
        self.users.retain(|_, tat| !Gcra::is_full(*tat, now));
        before - self.users.len()
    }

    /// Users remembered now.
    pub fn tracked(&self) -> usize {
        self.users.len()
    }
}

/// Parts of the [`UserConnections`] table.
const USER_PARTS: usize = 64;

/// One part of the [`UserConnections`] table: open connections per user.
type UserCounts = HashMap<Box<str>, u32>;

/// Node-wide count of each user's open connections
/// (`per_user_max_connections`); share it in an `Arc`. A user is in the
/// table only while it has a counted connection, so memory is bounded by
/// the node's connection limit.
#[derive(Debug)]
pub struct UserConnections {
    max: u32,
    hasher: RandomState,
    parts: Box<[Mutex<UserCounts>]>,
    unmatched_releases: AtomicU64,
}

impl UserConnections {
    /// At most `max` connections per user (0 = off).
    pub fn new(max: u32) -> UserConnections {
        let parts = if max == 0 { 1 } else { USER_PARTS };
        UserConnections {
            max,
            hasher: RandomState::new(),
            parts: (0..parts).map(|_| Mutex::new(HashMap::new())).collect(),
            unmatched_releases: AtomicU64::new(0),
        }
    }

    /// Whether the cap is on.
    pub fn is_active(&self) -> bool {
        self.max > 0
    }

    fn part(&self, user: &str) -> MutexGuard<'_, UserCounts> {
        let i = (self.hasher.hash_one(user) % self.parts.len() as u64) as usize;
        self.parts[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection authenticated as `user`: counts it and returns true, or
    /// returns false (counting nothing) when the user is at the cap; the
    /// shell then refuses with [`super::Refusal::UserConnections`]. Always
    /// true for the anonymous user or with the cap off. Call
    /// [`UserConnections::release_user`] once for every true.
    pub fn on_user_connect(&self, user: &str) -> bool {
        if self.max == 0 || user.is_empty() {
            return true;
        }
        let mut part = self.part(user);
        match part.get_mut(user) {
            Some(n) if *n >= self.max => false,
            Some(n) => {
                *n += 1;
                true
            }
            None => {
                part.insert(user.into(), 1);
                true
            }
        }
    }

    /// A connection counted by [`UserConnections::on_user_connect`] ended.
    pub fn release_user(&self, user: &str) {
        if self.max == 0 || user.is_empty() {
            return;
        }
        let mut part = self.part(user);
        match part.get_mut(user) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                part.remove(user);
            }
            None => {
                self.unmatched_releases.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Connections counted for `user` now.
    pub fn count(&self, user: &str) -> u32 {
        self.part(user).get(user).copied().unwrap_or(0)
    }

    /// Users with a counted connection now (a gauge for metrics).
    pub fn tracked(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Releases of a user with nothing counted: 0 unless the shell
    /// releases without a matching successful connect (a bug).
    pub fn unmatched_releases(&self) -> u64 {
        self.unmatched_releases.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_rate_per_user() {
        // 5 per second, burst 2.
        let mut u = UserLimits::new(5.0, 2);
        let got: Vec<bool> = (0..4).map(|_| u.publish("alice", 1000)).collect();
        assert_eq!(got, [true, true, false, false]);
        // Bob has his own bucket.
        assert!(u.publish("bob", 1000));
        // One token every 200 ms.
        assert!(!u.publish("alice", 1199));
        assert!(u.publish("alice", 1200));
        assert!(!u.publish("alice", 1200));
        // Anonymous is never limited.
        assert!((0..1000).all(|_| u.publish("", 1000)));
        // Off: everything passes, nothing is kept.
        let mut off = UserLimits::new(0.0, 0);
        assert!(!off.is_active());
        assert!((0..1000).all(|_| off.publish("alice", 0)));
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn publish_table_follows_live_users() {
        let mut u = UserLimits::new(1.0, 1);
        for i in 0..10_000 {
            assert!(u.publish(&format!("user{i}"), 0));
        }
        // Every bucket is empty for a second: all remembered.
        assert_eq!(u.tracked(), 10_000);
        assert!(!u.publish("user7", 999));
        assert_eq!(u.sweep(999), 0);
        assert_eq!(u.sweep(1000), 10_000);
        // Without explicit sweeps the table sweeps itself as it grows.
        let mut u = UserLimits::new(1.0, 1);
        for second in 0..50u64 {
            for i in 0..1000 {
                u.publish(&format!("s{second}u{i}"), second * 1000);
            }
        }
        assert!(u.tracked() <= 3 * 1000 + MIN_SELF_SWEEP, "{}", u.tracked());
    }

    #[test]
    fn connection_cap_and_release_symmetry() {
        let c = UserConnections::new(2);
        assert!(c.on_user_connect("alice"));
        assert!(c.on_user_connect("alice"));
        assert!(!c.on_user_connect("alice"));
        assert!(c.on_user_connect("bob"));
        assert_eq!(c.count("alice"), 2);
        c.release_user("alice");
        assert!(c.on_user_connect("alice"));
        c.release_user("alice");
        c.release_user("alice");
        c.release_user("bob");
        assert_eq!(c.tracked(), 0);
        assert_eq!(c.unmatched_releases(), 0);
        // A release without a connect is counted, never a panic or an
        // underflow.
        c.release_user("carol");
        assert_eq!(c.unmatched_releases(), 1);
        assert!(c.on_user_connect("carol"));
        assert_eq!(c.count("carol"), 1);
        // Anonymous and off: never counted.
        assert!((0..100).all(|_| c.on_user_connect("")));
        c.release_user("");
        let off = UserConnections::new(0);
        assert!((0..100).all(|_| off.on_user_connect("alice")));
        off.release_user("alice");
        assert_eq!(off.tracked(), 0);
        assert_eq!(off.unmatched_releases(), 0);
    }

    #[test]
    fn user_connections_are_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<UserConnections>();
    }
}
