//! The offline outbox: publishes waiting for a connection, bounded.
//!
//! Publishes made while the client is not connected (or faster than the
//! command rate allows) wait here, in order, and go out once connected,
//! each with its idempotency key. A publish whose connection dropped before
//! its answer came goes back to the front ([`Outbox::requeue_front`]):
//! its outcome is unknown, and resending it with the same key is safe (the
//! server accepts a key once within its `idempotency_window`).

use std::collections::VecDeque;

/// What a full outbox does with one more publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboxPolicy {
    /// Refuse the new publish ([`Error::OutboxFull`](crate::Error::OutboxFull)):
    /// what was queued first goes first, and the caller learns at once.
    #[default]
    RejectNew,
    /// Evict the oldest queued publish
    /// ([`Error::OutboxDropped`](crate::Error::OutboxDropped)) to make room:
    /// for state where only the latest values matter.
    DropOldest,
}

/// The result of offering an item to the outbox.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission<T> {
    /// Queued.
    Queued,
    /// Queued, and this (oldest) item was evicted to make room.
    QueuedEvicting(T),
    /// Not queued: the outbox is full (or has no room at all).
    Rejected(T),
}

/// A bounded FIFO with a drop policy.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    items: VecDeque<T>,
    capacity: usize,
    policy: OutboxPolicy,
}

impl<T> Outbox<T> {
    /// An empty outbox for at most `capacity` new items (0: every item is
    /// rejected, whatever the policy).
    pub fn new(capacity: usize, policy: OutboxPolicy) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
            policy,
        }
    }

    /// Offers `item` at the back.
    pub fn push(&mut self, item: T) -> Admission<T> {
        if self.capacity == 0 {
            return Admission::Rejected(item);
        }
        if self.items.len() < self.capacity {
            self.items.push_back(item);
            return Admission::Queued;
        }
        match self.policy {
            OutboxPolicy::RejectNew => Admission::Rejected(item),
            OutboxPolicy::DropOldest => {
                let oldest = self.items.pop_front().expect("full outbox is not empty");
                self.items.push_back(item);
                Admission::QueuedEvicting(oldest)
            }
        }
    }

    /// Puts items that were already accepted (sent, then their connection
    /// dropped) back at the front, keeping their order, whatever the bound:
    /// they were admitted once and must not be lost for a later one. A
    /// push afterwards sees the outbox as full until it drains below
    /// capacity (or, with [`OutboxPolicy::DropOldest`], evicts from them).
    pub fn requeue_front(&mut self, items: Vec<T>) {
        for item in items.into_iter().rev() {
            self.items.push_front(item);
        }
    }

    /// The oldest item.
    pub fn pop_front(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Takes every item, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..)
    }

    /// Items queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(o: &mut Outbox<u32>) -> Vec<u32> {
        o.drain().collect()
    }

    #[test]
    fn reject_new_keeps_the_first_ones() {
        let mut o = Outbox::new(3, OutboxPolicy::RejectNew);
        for i in 1..=3 {
            assert_eq!(o.push(i), Admission::Queued);
        }
        assert_eq!(o.push(4), Admission::Rejected(4));
        assert_eq!(o.len(), 3);
        assert_eq!(o.pop_front(), Some(1));
        assert_eq!(o.push(5), Admission::Queued);
        assert_eq!(contents(&mut o), [2, 3, 5]);
    }

    #[test]
    fn drop_oldest_keeps_the_last_ones() {
        let mut o = Outbox::new(3, OutboxPolicy::DropOldest);
        for i in 1..=3 {
            assert_eq!(o.push(i), Admission::Queued);
        }
        assert_eq!(o.push(4), Admission::QueuedEvicting(1));
        assert_eq!(o.push(5), Admission::QueuedEvicting(2));
        assert_eq!(o.len(), 3);
        assert_eq!(contents(&mut o), [3, 4, 5]);
    }

    #[test]
    fn zero_capacity_rejects_everything() {
        for policy in [OutboxPolicy::RejectNew, OutboxPolicy::DropOldest] {
            let mut o = Outbox::new(0, policy);
            assert_eq!(o.push(1), Admission::Rejected(1));
            assert!(o.is_empty());
        }
    }

    #[test]
    fn requeued_items_go_first_in_order_and_beyond_the_bound() {
        let mut o = Outbox::new(2, OutboxPolicy::RejectNew);
        assert_eq!(o.push(10), Admission::Queued);
        assert_eq!(o.push(11), Admission::Queued);
        // 1, 2, 3 were in flight when the connection dropped.
        o.requeue_front(vec![1, 2, 3]);
        assert_eq!(o.len(), 5);
        assert_eq!(o.push(12), Admission::Rejected(12));
        assert_eq!(contents(&mut o), [1, 2, 3, 10, 11]);

        let mut o = Outbox::new(2, OutboxPolicy::DropOldest);
        o.requeue_front(vec![1, 2, 3]);
        // Full beyond its bound: each push evicts one, oldest first.
        assert_eq!(o.push(4), Admission::QueuedEvicting(1));
        assert_eq!(contents(&mut o), [2, 3, 4]);
    }
}
