//! One coarse timer wheel per shard, instead of a timer per connection.
//!
//! Time is an input: ticks are whole seconds since the shard started,
//! passed in by the caller. Each connection keeps its own next deadline
//! and sits in exactly one slot; entries are never removed early (a closed
//! connection's entry is skipped by the owner through a generation check),
//! and an entry whose deadline moved later is simply scheduled again when
//! its slot comes round. One entry costs 8 bytes.

/// A wheel of `n` one-second slots holding keys of type `K`.
#[derive(Debug)]
pub struct TimerWheel<K> {
    slots: Vec<Vec<K>>,
    /// The last tick processed.
    now: u32,
}

impl<K: Copy> TimerWheel<K> {
    /// A wheel with `slots` slots, starting at tick `now`.
    pub fn new(slots: usize, now: u32) -> Self {
        assert!(slots > 0);
        Self {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            now,
        }
    }

    /// The last tick processed.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// Schedules `key` to be returned when tick `at` is processed (or the
    /// next tick, if `at` is not in the future). Deadlines further away
    /// than the wheel's span come back early; the owner reschedules them.
    pub fn schedule(&mut self, at: u32, key: K) {
        let at = at.max(self.now + 1);
        let n = self.slots.len() as u32;
        let at = if at - self.now > n { self.now + n } else { at };
        self.slots[(at % n) as usize].push(key);
    }

    /// Processes every tick up to and including `now`, appending the keys
    /// found to `due`. The owner checks each key's real deadline.
    pub fn advance(&mut self, now: u32, due: &mut impl Extend<K>) {
        let n = self.slots.len() as u32;
        let steps = now.saturating_sub(self.now).min(n);
        for t in 1..=steps {
            let slot = ((self.now + t) % n) as usize;
            due.extend(self.slots[slot].drain(..));
        }
        self.now = self.now.max(now);
    }

    /// Keys currently scheduled (for metrics and tests).
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Vec::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_deadline() {
        let mut w = TimerWheel::new(8, 100);
        w.schedule(103, 'a');
        w.schedule(101, 'b');
        w.schedule(100, 'c'); // in the past: next tick
        let mut due = Vec::new();
        w.advance(101, &mut due);
        due.sort();
        assert_eq!(due, vec!['b', 'c']);
        due.clear();
        w.advance(102, &mut due);
        assert!(due.is_empty());
        w.advance(103, &mut due);
        assert_eq!(due, vec!['a']);
        assert!(w.is_empty());
    }

    #[test]
    fn far_deadlines_come_back_early_and_big_jumps_drain_all() {
        let mut w = TimerWheel::new(4, 0);
        w.schedule(100, 1u32);
        let mut due = Vec::new();
        w.advance(3, &mut due);
        assert!(due.is_empty());
        w.advance(4, &mut due);
        assert_eq!(
            due,
            vec![1],
            "returned at the end of the span for rescheduling"
        );
        due.clear();
        w.schedule(6, 2);
        w.schedule(7, 3);
        w.advance(1000, &mut due);
        due.sort();
        assert_eq!(due, vec![2, 3]);
        assert_eq!(w.now(), 1000);
    }
}
