//! A section lock and the heap of lock deadlines.
//!
//! A lock is held by a member until `expires_at` (its `ttl`, renewed by
//! locking again). When its holder disconnects the lock loses its member
//! and gets a `grace_until`: it lapses at the earlier of the two unless the
//! same user becomes an editor again first. The lock's deadline sits in a
//! min-heap with lazy deletion: every change of deadline gives the lock a
//! new generation, and heap entries of an older generation (or of a lock
//! since released) are skipped when they reach the top and compacted away
//! once they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::MemberId;
use crate::engine::wire::ClientInfo;

/// A held section lock.
#[derive(Debug, Clone)]
pub(super) struct Lock {
    /// Who holds it (the connection that took it, or that re-claimed it).
    pub holder: ClientInfo,
    /// The holding member; `None` while in grace (disconnected holder, or
    /// imported from Redis).
    pub member: Option<MemberId>,
    /// When the `ttl` lapses.
    pub expires_at: u64,
    /// When the grace lapses, while in grace.
    pub grace_until: Option<u64>,
    /// Matches the heap entry for the current deadline.
    pub generation: u64,
}

impl Lock {
    /// When the lock is released unless something changes.
    pub fn deadline(&self) -> u64 {
        self.grace_until
            .map_or(self.expires_at, |g| g.min(self.expires_at))
    }

    /// Whether the lock still holds at `now_ms`.
    pub fn holds_at(&self, now_ms: u64) -> bool {
        now_ms < self.deadline()
    }
}

/// One heap entry: the lock of `section` with `generation` lapses at `at`.
type Entry = Reverse<(u64, u64, Arc<str>)>;

/// Deadlines of a story's locks.
#[derive(Debug, Default)]
pub(super) struct LockTimers {
    heap: BinaryHeap<Entry>,
    next_generation: u64,
}

impl LockTimers {
    /// Schedules `lock` at its current deadline under a fresh generation;
    /// earlier entries for it become stale.
    pub fn schedule(&mut self, section: &Arc<str>, lock: &mut Lock) {
        self.next_generation += 1;
        lock.generation = self.next_generation;
        self.heap
            .push(Reverse((lock.deadline(), lock.generation, section.clone())));
    }

    /// The earliest entry, which may be stale (see [`LockTimers::settle`]).
    pub fn peek(&self) -> Option<(u64, u64, &Arc<str>)> {
        self.heap.peek().map(|Reverse((at, g, s))| (*at, *g, s))
    }

    /// Removes the earliest entry.
    pub fn pop(&mut self) -> Option<(u64, u64, Arc<str>)> {
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// Drops stale entries from the top (so [`LockTimers::peek`] is the
    /// true next deadline) and compacts the heap once stale entries
    /// outnumber `live` (the story's lock count). `current(section)` is
    /// the generation of the section's lock, if it has one.
    pub fn settle(&mut self, live: usize, current: impl Fn(&str) -> Option<u64>) {
        while let Some(Reverse((_, g, s))) = self.heap.peek() {
            if current(s) == Some(*g) {
                break;
            }
            self.heap.pop();
        }
        if self.heap.len() > 2 * live + 64 {
            self.heap
                .retain(|Reverse((_, g, s))| current(s) == Some(*g));
        }
    }

    /// Entries held (live and stale), for tests of boundedness.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}
