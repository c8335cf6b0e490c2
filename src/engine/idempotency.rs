//! Idempotent publishing: remembers, per channel, which idempotency keys
//! were published and at which offset, for a window of time, so that a
//! publisher retrying after a lost reply gets the original offset instead
//! of a second publication.
//!
//! Memory is bounded two ways: keys are forgotten `window_ms` after they
//! were recorded (in insertion order, which with one window for all keys
//! is expiry order), and at most `max_keys` are held, the oldest forgotten
//! first (counted, since a publisher retrying that late may publish twice).
//! A FIFO of `(expires_at, seq, channel, key)` gives the order; a record
//! whose key was re-recorded or already forgotten is skipped when met and
//! compacted away when such records outnumber live keys.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
struct Remembered {
    offset: u64,
    expires_at: u64,
    /// Matches the FIFO record that will forget this key.
    seq: u64,
}

#[derive(Debug)]
struct Record {
    expires_at: u64,
    seq: u64,
    channel: Arc<str>,
    key: Arc<str>,
}

/// Recently published idempotency keys, per channel.
#[derive(Debug)]
pub struct IdempotencyWindow {
    window_ms: u64,
    max_keys: usize,
    keys: HashMap<Arc<str>, HashMap<Arc<str>, Remembered>>,
    order: VecDeque<Record>,
    len: usize,
    next_seq: u64,
    evicted: u64,
    expired: u64,
}

impl IdempotencyWindow {
    /// An empty window remembering each key for `window_ms` and at most
    /// `max_keys` keys in all.
    pub fn new(window_ms: u64, max_keys: usize) -> Self {
        Self {
            window_ms,
            max_keys,
            keys: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            next_seq: 0,
            evicted: 0,
            expired: 0,
        }
    }

    /// The offset `key` was published at in `channel`, if that was less
    /// than `window_ms` ago and it is still remembered.
    pub fn check(&mut self, channel: &str, key: &str, now_ms: u64) -> Option<u64> {
        let keys = self.keys.get_mut(channel)?;
        let r = *keys.get(key)?;
        if now_ms < r.expires_at {
            return Some(r.offset);
        }
        // Past its window: forget it now rather than at the next sweep.
        keys.remove(key);
        if keys.is_empty() {
            self.keys.remove(channel);
        }
        self.len -= 1;
        self.expired += 1;
        None
    }

    /// Remembers that `key` was published in `channel` at `offset`. A key
    /// recorded again starts a new window with the new offset. When more
    /// than `max_keys` are held, the oldest are forgotten.
    pub fn record(&mut self, channel: &Arc<str>, key: &str, offset: u64, now_ms: u64) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let expires_at = now_ms.saturating_add(self.window_ms);
        let keys = self.keys.entry(channel.clone()).or_default();
        let key: Arc<str> = match keys.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => {
                self.len += 1;
                key.into()
            }
        };
        keys.insert(
            key.clone(),
            Remembered {
                offset,
                expires_at,
                seq,
            },
        );
        self.order.push_back(Record {
            expires_at,
            seq,
            channel: channel.clone(),
            key,
        });
        while self.len > self.max_keys {
            let Some(rec) = self.order.pop_front() else {
                break;
            };
            if self.forget(&rec) {
                self.evicted += 1;
            }
        }
        self.compact();
    }

    /// Forgets `key` of `channel` (its publication failed: a retry must
    /// publish). Its FIFO record is skipped when met.
    pub fn remove(&mut self, channel: &str, key: &str) {
        let Some(keys) = self.keys.get_mut(channel) else {
            return;
        };
        if keys.remove(key).is_some() {
            self.len -= 1;
        }
        if keys.is_empty() {
            self.keys.remove(channel);
        }
    }

    /// Forgets keys whose window has passed. Returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while self.order.front().is_some_and(|r| r.expires_at <= now_ms) {
            let rec = self.order.pop_front().expect("front checked");
            if self.forget(&rec) {
                n += 1;
            }
        }
        self.expired += n as u64;
        n
    }

    /// Keys remembered (some may be past their window until the next
    /// [`expire`](Self::expire)).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys forgotten before their window passed because of `max_keys`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Keys forgotten because their window passed.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Removes the key `rec` stands for if `rec` is its current record.
    fn forget(&mut self, rec: &Record) -> bool {
        let Some(keys) = self.keys.get_mut(&rec.channel) else {
            return false;
        };
        if keys.get(&rec.key).is_none_or(|r| r.seq != rec.seq) {
            return false;
        }
        keys.remove(&rec.key);
        if keys.is_empty() {
            self.keys.remove(&rec.channel);
        }
        self.len -= 1;
        true
    }

    /// Drops stale records once they outnumber live keys.
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.len + 64 {
            return;
        }
        let keys = &self.keys;
        self.order.retain(|rec| {
            keys.get(&rec.channel)
                .and_then(|k| k.get(&rec.key))
                .is_some_and(|r| r.seq == rec.seq)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = 300_000;

    fn ch(name: &str) -> Arc<str> {
        name.into()
    }

    #[test]
    fn duplicate_within_window_returns_the_original() {
        let mut w = IdempotencyWindow::new(WINDOW, 100);
        let c = ch("orders");
        assert_eq!(w.check("orders", "k1", 0), None);
        w.record(&c, "k1", 41, 0);
        assert_eq!(w.check("orders", "k1", 1), Some(41));
        assert_eq!(w.check("orders", "k1", WINDOW - 1), Some(41));
        // At exactly the window it is forgotten.
        assert_eq!(w.check("orders", "k1", WINDOW), None);
        assert_eq!((w.len(), w.expired()), (0, 1));
        assert_eq!(w.check("orders", "k2", 1), None);
    }

    #[test]
    fn per_channel_keys_are_independent() {
        let mut w = IdempotencyWindow::new(WINDOW, 100);
        w.record(&ch("a"), "k", 1, 0);
        w.record(&ch("b"), "k", 9, 0);
        assert_eq!(w.check("a", "k", 5), Some(1));
        assert_eq!(w.check("b", "k", 5), Some(9));
        assert_eq!(w.check("c", "k", 5), None);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn expire_in_insertion_order() {
        let mut w = IdempotencyWindow::new(1000, 100);
        let c = ch("c");
        w.record(&c, "a", 1, 0);
        w.record(&c, "b", 2, 400);
        w.record(&ch("d"), "a", 3, 400);
        assert_eq!(w.expire(999), 0);
        assert_eq!(w.expire(1000), 1);
        assert_eq!(w.check("c", "a", 1000), None);
        assert_eq!(w.check("c", "b", 1000), Some(2));
        assert_eq!(w.expire(1400), 2);
        assert!(w.is_empty());
        assert_eq!(w.expired(), 3);
        // Per-channel maps are freed with their last key.
        assert!(w.keys.is_empty());
    }

    #[test]
    fn cap_forgets_oldest_first() {
        let mut w = IdempotencyWindow::new(WINDOW, 3);
        let c = ch("c");
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            w.record(&c, k, i as u64 + 1, i as u64);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.evicted(), 1);
        assert_eq!(w.check("c", "a", 10), None);
        assert_eq!(w.check("c", "b", 10), Some(2));
        assert_eq!(w.check("c", "d", 10), Some(4));
        // Re-recording moves a key to the back: "b" now outlives "c".
        w.record(&c, "b", 7, 20);
        w.record(&c, "e", 5, 21);
        assert_eq!(w.check("c", "c", 22), None);
        assert_eq!(w.check("c", "b", 22), Some(7));
        assert_eq!((w.len(), w.evicted()), (3, 2));
    }

    #[test]
    fn recording_again_starts_a_new_window() {
        let mut w = IdempotencyWindow::new(1000, 10);
        let c = ch("c");
        w.record(&c, "k", 1, 0);
        w.record(&c, "k", 2, 100);
        assert_eq!(w.len(), 1);
        // The first record's expiry does not forget the second window.
        assert_eq!(w.expire(1000), 0);
        assert_eq!(w.check("c", "k", 1099), Some(2));
        assert_eq!(w.expire(1100), 1);
        assert_eq!(w.check("c", "k", 1100), None);
        assert!(w.is_empty());
    }

    #[test]
    fn zero_cap_remembers_nothing() {
        let mut w = IdempotencyWindow::new(WINDOW, 0);
        w.record(&ch("c"), "k", 1, 0);
        assert_eq!(w.check("c", "k", 0), None);
        assert_eq!((w.len(), w.evicted()), (0, 1));
    }

    #[test]
    fn records_stay_bounded() {
        let mut w = IdempotencyWindow::new(WINDOW, 10);
        let c = ch("c");
        // One key re-recorded many times, and keys forgotten by check.
        for i in 0..10_000u64 {
            w.record(&c, "hot", i, i);
        }
        assert!(w.order.len() <= 2 * w.len() + 64, "{}", w.order.len());
        assert_eq!(w.check("c", "hot", 10_000), Some(9_999));
        for i in 0..10_000u64 {
            let t = 20_000 + i * WINDOW;
            w.record(&c, &format!("k{i}"), i, t);
            assert_eq!(w.check("c", &format!("k{i}"), t + WINDOW), None);
        }
        assert!(w.order.len() <= 2 * w.len() + 64, "{}", w.order.len());
        assert!(w.len() <= 10);
    }
}
