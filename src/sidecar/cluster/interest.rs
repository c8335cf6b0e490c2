//! Which channel subjects the node should be subscribed to, from the
//! shards' `Watch` requests (no I/O, time is an input).
//!
//! Each shard says `on` when it gains its first local subscriber of a
//! channel and `off` when it loses its last; the counts add up across
//! shards. Changes are taken in batches (one drain of the queue) and only
//! the net result of a batch reaches NATS ([`Interest::settle`]): a storm
//! of on/off pairs within one batch is no operation at all.
//!
//! A `SUB` is sent at once (it must reach NATS before the requests queued
//! after it). An `UNSUB` waits for `linger`: a channel whose count comes
//! back above zero within it (a reconnecting client, a storm spread over
//! several batches) keeps its subscription and costs nothing. Messages
//! that arrive for a lingering channel still reach the sink, which drops
//! what no shard listens to.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to do at NATS after a batch or a timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// Subscribe to the channel's subject.
    Sub(Arc<str>),
    /// Unsubscribe from it.
    Unsub(Arc<str>),
}

#[derive(Debug, Default)]
struct Channel {
    /// Shards with local subscribers (sum of on − off).
    count: u32,
    /// Whether NATS has (or has been sent) a subscription.
    subscribed: bool,
    /// Whether the channel changed in the current batch.
    touched: bool,
    /// Since when the count has been 0 while subscribed (lingering).
    idle_since: Option<Instant>,
}

/// The channel counts and the subscriptions they call for.
#[derive(Debug)]
pub(super) struct Interest {
    channels: HashMap<Arc<str>, Channel>,
    /// Channels changed in the current batch, each once.
    touched: Vec<Arc<str>>,
    /// Lingering channels in the order they went idle (deadlines are
    /// monotonic); an entry whose channel has since changed is skipped.
    lingering: VecDeque<(Instant, Arc<str>)>,
    linger: Duration,
    subscribed: usize,
    unbalanced: u64,
}

impl Interest {
    /// No channel; unsubscribes wait `linger`.
    pub(super) fn new(linger: Duration) -> Self {
        Interest {
            channels: HashMap::new(),
            touched: Vec::new(),
            lingering: VecDeque::new(),
            linger,
            subscribed: 0,
            unbalanced: 0,
        }
    }

    /// Takes one `Watch` of the current batch.
    pub(super) fn change(&mut self, channel: &Arc<str>, on: bool) {
        let ch = match self.channels.entry(channel.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if on => e.insert(Channel::default()),
            Entry::Vacant(_) => {
                self.unbalanced += 1;
                return;
            }
        };
        if on {
            ch.count = ch.count.saturating_add(1);
        } else if ch.count == 0 {
            self.unbalanced += 1;
            return;
        } else {
            ch.count -= 1;
        }
        if !ch.touched {
            ch.touched = true;
            self.touched.push(channel.clone());
        }
    }

    /// Ends a batch at `now`: a `Sub` for every channel wanted and not
    /// subscribed, an `Unsub` for every channel no longer wanted if
    /// `linger` is zero (else it starts lingering).
    pub(super) fn settle(&mut self, now: Instant) -> Vec<Op> {
        let mut ops = Vec::new();
        for name in std::mem::take(&mut self.touched) {
            let Some(ch) = self.channels.get_mut(&name) else {
                continue;
            };
            ch.touched = false;
            match (ch.count > 0, ch.subscribed) {
                (true, false) => {
                    ch.subscribed = true;
                    self.subscribed += 1;
                    ops.push(Op::Sub(name));
                }
                (true, true) => ch.idle_since = None,
                (false, false) => {
                    self.channels.remove(&name);
                }
                (false, true) if self.linger.is_zero() => {
                    self.channels.remove(&name);
                    self.subscribed -= 1;
                    ops.push(Op::Unsub(name));
                }
                (false, true) => {
                    if ch.idle_since.is_none() {
                        ch.idle_since = Some(now);
                        self.lingering.push_back((now + self.linger, name));
                    }
                }
            }
        }
        ops
    }

    /// When the next lingering channel is due ([`Interest::expire`]).
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some((at, name)) = self.lingering.front() {
            if self.is_lingering(name, *at) {
                return Some(*at);
            }
            self.lingering.pop_front();
        }
        None
    }

    /// The `Unsub`s of the channels whose linger ended by `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Op> {
        let mut ops = Vec::new();
        while let Some((at, _)) = self.lingering.front() {
            if *at > now {
                break;
            }
            let (at, name) = self.lingering.pop_front().expect("front exists");
            if self.is_lingering(&name, at) {
                self.channels.remove(&name);
                self.subscribed -= 1;
                ops.push(Op::Unsub(name));
            }
        }
        ops
    }

    /// Whether `name` is still idle since the time its entry `at` was made
    /// for.
    fn is_lingering(&self, name: &str, at: Instant) -> bool {
        self.channels
            .get(name)
            .and_then(|c| c.idle_since)
            .is_some_and(|since| since + self.linger == at)
    }

    /// Channels subscribed (wanted or lingering).
    #[cfg(test)]
    pub(super) fn subscribed(&self) -> usize {
        self.subscribed
    }

    /// The count of `channel`, if it is known (tests).
    #[cfg(test)]
    pub(super) fn count(&self, channel: &str) -> Option<u32> {
        self.channels.get(channel).map(|c| c.count)
    }

    /// `off`s that had no matching `on` (a shard's bug; ignored).
    pub(super) fn unbalanced(&self) -> u64 {
        self.unbalanced
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn ch(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn a_storm_within_a_batch_is_no_op_and_counts_add_up_across_shards() {
        let t0 = Instant::now();
        let mut i = Interest::new(Duration::ZERO);
        let a = ch("a");
        for _ in 0..10_000 {
            i.change(&a, true);
            i.change(&a, false);
        }
        assert!(i.settle(t0).is_empty());
        assert_eq!(i.count("a"), None, "nothing kept for an idle channel");
        // Two shards on, one off: still wanted.
        i.change(&a, true);
        i.change(&a, true);
        assert_eq!(i.settle(t0), vec![Op::Sub(a.clone())]);
        i.change(&a, false);
        assert!(i.settle(t0).is_empty());
        assert_eq!(i.subscribed(), 1);
        i.change(&a, false);
        assert_eq!(i.settle(t0), vec![Op::Unsub(a.clone())]);
        assert_eq!(i.subscribed(), 0);
        // An off without an on is ignored and counted.
        i.change(&a, false);
        assert!(i.settle(t0).is_empty());
        assert_eq!(i.unbalanced(), 1);
    }

    #[test]
    fn unsubscribes_linger_and_a_return_within_it_costs_nothing() {
        let t0 = Instant::now();
        let linger = Duration::from_secs(1);
        let mut i = Interest::new(linger);
        let (a, b) = (ch("a"), ch("b"));
        i.change(&a, true);
        i.change(&b, true);
        assert_eq!(i.settle(t0).len(), 2);
        assert_eq!(i.next_deadline(), None);
        // Storm spread over many batches: a goes off and on again.
        for k in 0..100 {
            let now = t0 + Duration::from_millis(k);
            i.change(&a, false);
            assert!(i.settle(now).is_empty());
            i.change(&a, true);
            assert!(i.settle(now).is_empty());
        }
        i.change(&b, false);
        assert!(i.settle(t0 + Duration::from_millis(200)).is_empty());
        let due = t0 + Duration::from_millis(200) + linger;
        assert_eq!(i.next_deadline(), Some(due));
        assert!(i.expire(due - Duration::from_millis(1)).is_empty());
        assert_eq!(i.expire(due), vec![Op::Unsub(b.clone())]);
        assert_eq!(i.subscribed(), 1);
        // a's stale linger entries were skipped: a stays.
        assert_eq!(i.next_deadline(), None);
        assert_eq!(i.count("a"), Some(1));
        // b comes back: a new Sub.
        i.change(&b, true);
        assert_eq!(i.settle(due), vec![Op::Sub(b)]);
    }

    /// Random batches: after each settle (and expiry), the channels
    /// subscribed are exactly those with a positive count plus those
    /// lingering for less than `linger`, and the ops are the difference.
    #[test]
    fn random_batches_keep_subscriptions_equal_to_interest() {
        let mut rng = StdRng::seed_from_u64(10);
        let linger = Duration::from_millis(50);
        let mut i = Interest::new(linger);
        let names: Vec<Arc<str>> = (0..6).map(|k| ch(&format!("c{k}"))).collect();
        let mut counts = [0u32; 6];
        let mut subscribed = [false; 6];
        let t0 = Instant::now();
        let mut now = t0;
        for _ in 0..5_000 {
            for _ in 0..rng.random_range(0..20) {
                let k = rng.random_range(0..6);
                let on = counts[k] == 0 || rng.random_bool(0.5);
                counts[k] = if on { counts[k] + 1 } else { counts[k] - 1 };
                i.change(&names[k], on);
            }
            now += Duration::from_millis(rng.random_range(0..30));
            let mut ops = i.settle(now);
            ops.extend(i.expire(now));
            for op in ops {
                let (name, sub) = match op {
                    Op::Sub(n) => (n, true),
                    Op::Unsub(n) => (n, false),
                };
                let k = names.iter().position(|n| *n == name).unwrap();
                assert_ne!(subscribed[k], sub, "an op that changes nothing");
                subscribed[k] = sub;
            }
            for k in 0..6 {
                if counts[k] > 0 {
                    assert!(subscribed[k], "wanted channel {k} not subscribed");
                }
                assert_eq!(i.count(&names[k]).unwrap_or(0), counts[k]);
            }
            assert_eq!(i.subscribed(), subscribed.iter().filter(|s| **s).count());
            if let Some(d) = i.next_deadline() {
                assert!(d > now && d <= now + linger);
            }
        }
        assert_eq!(i.unbalanced(), 0);
    }
}
