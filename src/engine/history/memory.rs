//! The embedded history store: a bounded ring of publications per channel
//! in process memory, one store per shard (the channel's home keeps it).
//!
//! Three limits bound it:
//! - per channel, the ring holds at most `size` publications (oldest
//!   dropped first) for at most `ttl_ms` each;
//! - store-wide, the accounted bytes stay under `memory_limit`, dropping
//!   the oldest publications across all channels first.
//!
//! The store-wide order is a FIFO of `(channel, seq)` records, one per
//! publication appended (`seq` is unique store-wide). Publications that
//! leave a ring some other way leave their record behind; such records are
//! skipped when met and compacted away when they outnumber live ones, so
//! the FIFO stays within twice the publications held.
//!
//! Ttl is checked on every read, so an expired publication is never
//! returned; [`expire`](HistoryStore::expire) frees them with bounded work
//! per call, driven by a heap holding one deadline per channel.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use super::{HistoryLimits, HistoryQuery, HistoryStats, HistoryStore, Recovery, RecoveryPlan};
use crate::engine::hub::Position;
use crate::engine::wire::publication::Publication;

/// Bytes accounted to each publication on top of its payload: its ring
/// slot (offset, payload handle, append time, seq: 64 bytes), its FIFO
/// record (channel handle and seq: 24 bytes) and the payload buffer's
/// shared header and allocator rounding (about 40 bytes).
pub const ENTRY_OVERHEAD: usize = 128;

/// Default [`MemoryHistoryConfig::sweep_budget`]: a sweep this size takes
/// tens of microseconds, small enough to run on every shard tick without
/// delaying connections, and at ten ticks a second still frees 10k
/// publications a second.
pub const DEFAULT_SWEEP_BUDGET: usize = 1024;

/// Settings of a [`MemoryHistory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryHistoryConfig {
    /// Most bytes (payloads plus [`ENTRY_OVERHEAD`] each) the store holds;
    /// 0 for no store-wide limit (the per-channel limits still apply).
    pub memory_limit: usize,
    /// Most units of work (a channel deadline looked at, or a publication
    /// dropped) one [`expire`](HistoryStore::expire) call does.
    pub sweep_budget: usize,
}

#[derive(Debug)]
struct Entry {
    /// Store-wide sequence number, matching the FIFO record.
    seq: u64,
    appended_at: u64,
    publication: Publication,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.publication.data.bytes.len() + ENTRY_OVERHEAD
    }
}

#[derive(Debug)]
struct Ring {
    /// Identifies this ring among all the channel's rings over time, so
    /// that deadlines of a removed ring are not mistaken for this one's.
    id: u64,
    epoch: u64,
    size: usize,
    ttl_ms: u64,
    /// The deadline this ring has in the sweep heap, if any.
    sweep_at: Option<u64>,
    /// Oldest first; offsets strictly increase, append times never
    /// decrease, so expired entries are always a prefix.
    entries: VecDeque<Entry>,
}

impl Ring {
    fn deadline(&self, e: &Entry) -> u64 {
        e.appended_at.saturating_add(self.ttl_ms)
    }

    fn front_expired(&self, now: u64) -> bool {
        self.entries
            .front()
            .is_some_and(|e| self.deadline(e) <= now)
    }

    fn index_of(&self, offset: u64) -> Option<usize> {
        self.entries
            .binary_search_by_key(&offset, |e| e.publication.offset)
            .ok()
    }
}

/// Bounded per-channel rings in memory: the embedded [`HistoryStore`].
#[derive(Debug)]
pub struct MemoryHistory {
    config: MemoryHistoryConfig,
    rings: HashMap<Arc<str>, Ring>,
    /// One record per publication appended, oldest first.
    fifo: VecDeque<(Arc<str>, u64)>,
    /// `(deadline, ring id, channel)`, earliest first.
    sweeps: BinaryHeap<Reverse<(u64, u64, Arc<str>)>>,
    next_seq: u64,
    next_ring: u64,
    stats: HistoryStats,
}

/// Removes the oldest entry of `ring`, keeping the counters right.
fn pop_front(ring: &mut Ring, stats: &mut HistoryStats) -> Option<Entry> {
    let e = ring.entries.pop_front()?;
    stats.publications -= 1;
    stats.bytes -= e.bytes();
    Some(e)
}

/// Drops up to `budget` expired entries from the front of `ring`.
fn trim_expired(ring: &mut Ring, now: u64, budget: usize, stats: &mut HistoryStats) -> usize {
    let mut n = 0;
    while n < budget && ring.front_expired(now) {
        pop_front(ring, stats);
        stats.evicted_by_ttl += 1;
        n += 1;
    }
    n
}

/// Drops every entry of `ring` as `cleared`.
fn clear(ring: &mut Ring, stats: &mut HistoryStats) {
    stats.cleared += ring.entries.len() as u64;
    while pop_front(ring, stats).is_some() {}
}

impl MemoryHistory {
    /// An empty store.
    pub fn new(config: MemoryHistoryConfig) -> Self {
        Self {
            config,
            rings: HashMap::new(),
            fifo: VecDeque::new(),
            sweeps: BinaryHeap::new(),
            next_seq: 0,
            next_ring: 0,
            stats: HistoryStats::default(),
        }
    }

    /// The ring of `channel` in `epoch` with expired entries dropped, or
    /// `None` when it holds nothing of that epoch (an emptied ring is
    /// freed).
    fn live_ring(&mut self, channel: &str, epoch: u64, now: u64) -> Option<&Ring> {
        let ring = self.rings.get_mut(channel)?;
        if ring.epoch != epoch {
            return None;
        }
        trim_expired(ring, now, usize::MAX, &mut self.stats);
        if ring.entries.is_empty() {
            self.rings.remove(channel);
            return None;
        }
        self.rings.get(channel)
    }

    /// Gives `ring` a sweep deadline no later than its oldest entry's.
    fn schedule(
        sweeps: &mut BinaryHeap<Reverse<(u64, u64, Arc<str>)>>,
        name: &Arc<str>,
        ring: &mut Ring,
    ) {
        let Some(front) = ring.entries.front() else {
            return;
        };
        let deadline = ring.deadline(front);
        if ring.sweep_at.is_none_or(|at| deadline < at) {
            sweeps.push(Reverse((deadline, ring.id, name.clone())));
            ring.sweep_at = Some(deadline);
        }
    }

    /// Drops the oldest publications across channels until the store is
    /// within its memory limit.
    fn enforce_memory_limit(&mut self) {
        let limit = self.config.memory_limit;
        if limit == 0 {
            return;
        }
        while self.stats.bytes > limit {
            let Some((name, seq)) = self.fifo.pop_front() else {
                break;
            };
            let Some(ring) = self.rings.get_mut(&name) else {
                continue;
            };
            // Records of one channel are in its ring's order, and records
            // before this one are gone: a live record is its ring's front.
            if ring.entries.front().is_none_or(|e| e.seq != seq) {
                continue;
            }
            pop_front(ring, &mut self.stats);
            self.stats.evicted_by_memory += 1;
            if ring.entries.is_empty() {
                self.rings.remove(&name);
            }
        }
    }

    /// Keeps the FIFO and the sweep heap within about twice what is live.
    fn compact(&mut self) {
        if self.fifo.len() > 2 * self.stats.publications + 64 {
            let rings = &self.rings;
            self.fifo.retain(|(name, seq)| {
                rings
                    .get(name)
                    .is_some_and(|r| r.entries.binary_search_by_key(seq, |e| e.seq).is_ok())
            });
        }
        if self.sweeps.len() > 2 * self.rings.len() + 64 {
            let rings = &self.rings;
            self.sweeps.retain(|Reverse((at, id, name))| {
                rings
                    .get(name)
                    .is_some_and(|r| r.id == *id && r.sweep_at == Some(*at))
            });
        }
    }

    /// Records (FIFO and sweep heap) kept, live or not: for tests of the
    /// memory bound.
    #[cfg(test)]
    fn records(&self) -> (usize, usize) {
        (self.fifo.len(), self.sweeps.len())
    }
}

impl HistoryStore for MemoryHistory {
    fn append(
        &mut self,
        channel: &Arc<str>,
        epoch: u64,
        publication: Publication,
        limits: HistoryLimits,
        now_ms: u64,
    ) {
        if !limits.keeps_history() {
            // Keeping the old ring would serve reads with a silent gap where
            // the unkept publications belong.
            self.remove(channel);
            return;
        }
        let ring = self.rings.entry(channel.clone()).or_insert_with(|| {
            self.next_ring += 1;
            Ring {
                id: self.next_ring,
                epoch,
                size: limits.size,
                ttl_ms: limits.ttl_ms,
                sweep_at: None,
                entries: VecDeque::new(),
            }
        });
        if ring.epoch != epoch {
            clear(ring, &mut self.stats);
            ring.epoch = epoch;
        }
        if ring
            .entries
            .back()
            .is_some_and(|last| publication.offset <= last.publication.offset)
        {
            self.stats.rejected += 1;
            return;
        }
        ring.size = limits.size;
        ring.ttl_ms = limits.ttl_ms;
        // Append times never decrease within a ring, even if the clock did.
        let appended_at = ring
            .entries
            .back()
            .map_or(now_ms, |e| e.appended_at.max(now_ms));
        trim_expired(ring, now_ms, usize::MAX, &mut self.stats);
        self.next_seq += 1;
        let entry = Entry {
            seq: self.next_seq,
            appended_at,
            publication,
        };
        self.stats.publications += 1;
        self.stats.bytes += entry.bytes();
        ring.entries.push_back(entry);
        self.fifo.push_back((channel.clone(), self.next_seq));
        while ring.entries.len() > ring.size {
            pop_front(ring, &mut self.stats);
            self.stats.evicted_by_size += 1;
        }
        Self::schedule(&mut self.sweeps, channel, ring);
        self.enforce_memory_limit();
        self.compact();
    }

    fn read(
        &mut self,
        channel: &str,
        epoch: u64,
        query: &HistoryQuery,
        now_ms: u64,
    ) -> Vec<Publication> {
        let limit = query.effective_limit();
        if limit == 0 {
            return Vec::new();
        }
        if query.since.is_some_and(|s| s.epoch != epoch) {
            return Vec::new();
        }
        let Some(ring) = self.live_ring(channel, epoch, now_ms) else {
            return Vec::new();
        };
        let entries = &ring.entries;
        // Offsets strictly increase: the entries after (or before) `since`
        // are a suffix (or prefix) found by binary search.
        let (lo, hi) = match query.since {
            None => (0, entries.len()),
            Some(s) if query.reverse => (
                0,
                entries.partition_point(|e| e.publication.offset < s.offset),
            ),
            Some(s) => (
                entries.partition_point(|e| e.publication.offset <= s.offset),
                entries.len(),
            ),
        };
        let picked = entries.range(lo..hi);
        if query.reverse {
            picked
                .rev()
                .take(limit)
                .map(|e| e.publication.clone())
                .collect()
        } else {
            picked.take(limit).map(|e| e.publication.clone()).collect()
        }
    }

    fn recover(
        &mut self,
        channel: &str,
        current: Position,
        since: Position,
        max: usize,
        now_ms: u64,
    ) -> Recovery {
        let (from, to) = match super::plan_recovery(current, since, max) {
            RecoveryPlan::Unrecoverable => return Recovery::unrecoverable(),
            RecoveryPlan::UpToDate => return Recovery::up_to_date(),
            RecoveryPlan::Fetch { from, to } => (from, to),
        };
        let Some(ring) = self.live_ring(channel, current.epoch, now_ms) else {
            return Recovery::unrecoverable();
        };
        let Some(first) = ring.index_of(from) else {
            return Recovery::unrecoverable();
        };
        // `to - from < max`, so this fits; the run is checked exactly by
        // `from_run`, without copying more than it needs.
        let want = (to - from + 1) as usize;
        let run: Vec<Publication> = ring
            .entries
            .range(first..)
            .take(want)
            .map(|e| e.publication.clone())
            .collect();
        Recovery::from_run(from, to, run)
    }

    fn holds(&self, channel: &str) -> bool {
        self.rings.contains_key(channel)
    }

    fn remove(&mut self, channel: &str) -> bool {
        match self.rings.remove(channel) {
            Some(mut ring) => {
                clear(&mut ring, &mut self.stats);
                true
            }
            None => false,
        }
    }

    fn expire(&mut self, now_ms: u64) -> usize {
        let budget = self.config.sweep_budget;
        let mut work = 0;
        let mut dropped = 0;
        while work < budget {
            match self.sweeps.peek() {
                Some(Reverse((at, _, _))) if *at <= now_ms => {}
                _ => break,
            }
            let Some(Reverse((at, id, name))) = self.sweeps.pop() else {
                break;
            };
            work += 1;
            let Some(ring) = self.rings.get_mut(&name) else {
                continue;
            };
            if ring.id != id || ring.sweep_at != Some(at) {
                continue;
            }
            ring.sweep_at = None;
            let n = trim_expired(ring, now_ms, budget - work, &mut self.stats);
            work += n;
            dropped += n;
            if ring.entries.is_empty() {
                self.rings.remove(&name);
            } else {
                // Still-expired entries (budget ran out) are due again at
                // once; otherwise this is the next entry's deadline.
                Self::schedule(&mut self.sweeps, &name, ring);
            }
        }
        self.compact();
        dropped
    }

    fn stats(&self) -> HistoryStats {
        HistoryStats {
            channels: self.rings.len(),
            ..self.stats
        }
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
