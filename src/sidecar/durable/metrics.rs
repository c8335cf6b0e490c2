//! The durable-events worker's counters and gauges: plain atomics, shared
//! by the clients (which count what they queue and refuse) and the worker
//! (everything else). The metrics registry exports them later; tests and
//! the admin read a [`DurableMetricsSnapshot`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The live counters (relaxed atomics: each is exact on its own; a
/// snapshot is not one instant across them).
#[derive(Debug, Default)]
pub struct DurableMetrics {
    /// Gauge: records accepted and held in memory (the queue, a batch
    /// being collected or sent, records waiting for room in the spill),
    /// not yet acknowledged by the sink nor written to the spill.
    pub(super) queued: AtomicU64,
    /// Gauge: unacknowledged records in the spill.
    pub(super) in_spill_records: AtomicU64,
    /// Gauge: the spill's segment bytes on disk.
    pub(super) spill_bytes: AtomicU64,
    /// Gauge: age of the oldest record not yet acknowledged by the sink
    /// (0 when there is none), as of the worker's last look (about every
    /// 20 ms).
    pub(super) oldest_unsent_age_ms: AtomicU64,
    /// Counter: records the sink acknowledged (duplicates included).
    pub(super) sent: AtomicU64,
    /// Counter: acknowledgements marked duplicate (a record sent again
    /// after a lost acknowledgement, stored once).
    pub(super) duplicates: AtomicU64,
    /// Counter: records written to the spill.
    pub(super) spilled: AtomicU64,
    /// Counter: attempts that failed and will be retried after a backoff:
    /// a batch that timed out, was refused for now or lost its
    /// connection, and a connection attempt that failed.
    pub(super) retries: AtomicU64,
    /// Counter: records the sink refused for good, sent to the
    /// dead-letter subject.
    pub(super) dead_lettered: AtomicU64,
    /// Counter: records the clients refused (queue full, spill full,
    /// too large, worker stopped).
    pub(super) refused: AtomicU64,
    /// Counter: accepted records that were lost after all (the spill
    /// still full when the worker stopped, a record damaged on disk);
    /// each is logged.
    pub(super) lost: AtomicU64,
    /// Gauge: whether the worker has a connection to the broker.
    pub(super) up: AtomicBool,
}

/// The counters at one moment (see [`DurableMetrics`] for each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurableMetricsSnapshot {
    /// Records held in memory, not yet with the sink nor in the spill.
    pub queued: u64,
    /// Unacknowledged records in the spill.
    pub in_spill_records: u64,
    /// The spill's bytes on disk.
    pub spill_bytes: u64,
    /// Age of the oldest unsent record, ms.
    pub oldest_unsent_age_ms: u64,
    /// Records the sink acknowledged.
    pub sent: u64,
    /// Of those, acknowledgements marked duplicate.
    pub duplicates: u64,
    /// Records written to the spill.
    pub spilled: u64,
    /// Failed attempts, retried.
    pub retries: u64,
    /// Records sent to the dead-letter subject.
    pub dead_lettered: u64,
    /// Records the clients refused.
    pub refused: u64,
    /// Accepted records lost after all.
    pub lost: u64,
    /// Whether the broker connection is up.
    pub up: bool,
}

impl DurableMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> DurableMetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DurableMetricsSnapshot {
            queued: get(&self.queued),
            in_spill_records: get(&self.in_spill_records),
            spill_bytes: get(&self.spill_bytes),
            oldest_unsent_age_ms: get(&self.oldest_unsent_age_ms),
            sent: get(&self.sent),
            duplicates: get(&self.duplicates),
            spilled: get(&self.spilled),
            retries: get(&self.retries),
            dead_lettered: get(&self.dead_lettered),
            refused: get(&self.refused),
            lost: get(&self.lost),
            up: self.up.load(Ordering::Relaxed),
        }
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// Takes `n` off the `queued` gauge (never below zero).
    pub(super) fn dequeued(&self, n: u64) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
    }
}
