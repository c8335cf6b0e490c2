//! The story worker's counters. Standalone by default (tests); the node
//! takes registered ones from `crate::metrics::Metrics::stories`, exported
//! as `wsedge_story_*` (docs/OPERATIONS.md, "Story state in Redis").

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::bridge::StoryStoreError;

/// Why story changes were lost before reaching Redis
/// (`wsedge_story_writes_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoryDrop {
    /// The request queue was full: the shard's write was dropped.
    QueueFull,
    /// More stories (or bytes) waited for Redis than the bounds allow:
    /// the oldest story's buffered changes were dropped.
    PendingOverflow,
    /// Redis refused a story's commands (e.g. the key is not a hash).
    Refused,
    /// A section's data was not one JSON value: that change was dropped.
    Invalid,
    /// The worker had stopped (or stopped with changes unwritten).
    Stopped,
}

impl StoryDrop {
    /// Every reason, in label order.
    pub const ALL: [StoryDrop; 5] = [
        StoryDrop::QueueFull,
        StoryDrop::PendingOverflow,
        StoryDrop::Refused,
        StoryDrop::Invalid,
        StoryDrop::Stopped,
    ];

    /// The `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            StoryDrop::QueueFull => "queue_full",
            StoryDrop::PendingOverflow => "pending_overflow",
            StoryDrop::Refused => "refused",
            StoryDrop::Invalid => "invalid",
            StoryDrop::Stopped => "stopped",
        }
    }

    const fn slot(self) -> usize {
        match self {
            StoryDrop::QueueFull => 0,
            StoryDrop::PendingOverflow => 1,
            StoryDrop::Refused => 2,
            StoryDrop::Invalid => 3,
            StoryDrop::Stopped => 4,
        }
    }
}

/// How a write attempt failed (`wsedge_story_write_errors_total{error}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoryWriteError {
    /// A batch did not reach Redis, or got no answer within the timeout;
    /// its changes wait for the next attempt.
    Unavailable,
    /// Redis answered one story's commands with an error; that story's
    /// changes were dropped.
    Refused,
}

impl StoryWriteError {
    /// Every error, in label order.
    pub const ALL: [StoryWriteError; 2] = [StoryWriteError::Unavailable, StoryWriteError::Refused];

    /// The `error` label.
    pub const fn label(self) -> &'static str {
        match self {
            StoryWriteError::Unavailable => "unavailable",
            StoryWriteError::Refused => "refused",
        }
    }
}

/// The histogram of batch round trips: 100 µs … ~3.3 s, doubling.
pub fn batch_histogram() -> Histogram {
    Histogram::new((0..16).map(|i| 100e-6 * 2f64.powi(i)))
}

/// The worker's counters.
#[derive(Debug, Clone)]
pub struct StoryMetrics {
    writes: Counter,
    write_errors: [Counter; 2],
    dropped: [Counter; 5],
    pending: Gauge<i64, AtomicI64>,
    loads: [Counter; 5],
    malformed_fields: Counter,
    answers_dropped: Counter,
    batch_seconds: Histogram,
}

impl Default for StoryMetrics {
    fn default() -> Self {
        Self {
            writes: Counter::default(),
            write_errors: Default::default(),
            dropped: Default::default(),
            pending: Gauge::default(),
            loads: Default::default(),
            malformed_fields: Counter::default(),
            answers_dropped: Counter::default(),
            batch_seconds: batch_histogram(),
        }
    }
}

/// Registered series for [`StoryMetrics::from_parts`].
#[derive(Debug, Clone)]
pub struct StoryMetricParts {
    /// `writes_total`.
    pub writes: Counter,
    /// `write_errors_total{error}`, in [`StoryWriteError::ALL`] order.
    pub write_errors: [Counter; 2],
    /// `writes_dropped_total{reason}`, in [`StoryDrop::ALL`] order.
    pub dropped: [Counter; 5],
    /// `pending` gauge.
    pub pending: Gauge<i64, AtomicI64>,
    /// `loads_total{result}`, in [`StoryMetrics::LOAD_RESULTS`] order.
    pub loads: [Counter; 5],
    /// `malformed_fields_total`.
    pub malformed_fields: Counter,
    /// `load_answers_dropped_total`.
    pub answers_dropped: Counter,
    /// `batch_seconds`.
    pub batch_seconds: Histogram,
}

impl StoryMetrics {
    /// The `result` labels of loads, in the order
    /// [`StoryMetricParts::loads`] holds them: `found`, `absent`, then
    /// [`StoryStoreError::ALL`]'s.
    pub const LOAD_RESULTS: [&'static str; 5] = [
        "found",
        "absent",
        StoryStoreError::ALL[0].label(),
        StoryStoreError::ALL[1].label(),
        StoryStoreError::ALL[2].label(),
    ];

    /// Metrics over existing (registered) series.
    pub fn from_parts(p: StoryMetricParts) -> Self {
        Self {
            writes: p.writes,
            write_errors: p.write_errors,
            dropped: p.dropped,
            pending: p.pending,
            loads: p.loads,
            malformed_fields: p.malformed_fields,
            answers_dropped: p.answers_dropped,
            batch_seconds: p.batch_seconds,
        }
    }

    const fn load_slot(result: Result<bool, StoryStoreError>) -> usize {
        match result {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(StoryStoreError::Unavailable) => 2,
            Err(StoryStoreError::Busy) => 3,
            Err(StoryStoreError::Malformed) => 4,
        }
    }

    pub(super) fn count_load(&self, result: Result<bool, StoryStoreError>) {
        self.loads[Self::load_slot(result)].inc();
    }

    pub(super) fn count_drop(&self, reason: StoryDrop, n: u64) {
        if n > 0 {
            self.dropped[reason.slot()].inc_by(n);
        }
    }

    pub(super) fn count_write_error(&self, e: StoryWriteError) {
        self.write_errors[e as usize].inc();
    }

    pub(super) fn count_writes(&self, n: u64) {
        self.writes.inc_by(n);
    }

    pub(super) fn count_malformed(&self, n: u64) {
        self.malformed_fields.inc_by(n);
    }

    pub(super) fn count_answer_dropped(&self) {
        self.answers_dropped.inc();
    }

    pub(super) fn set_pending(&self, n: usize) {
        self.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(super) fn observe_batch(&self, seconds: f64) {
        self.batch_seconds.observe(seconds);
    }

    /// Story writes Redis accepted (one per story per batch: many changes
    /// coalesce into one).
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Write failures of kind `e`.
    pub fn write_errors(&self, e: StoryWriteError) -> u64 {
        self.write_errors[e as usize].get()
    }

    /// Writes (queue full, invalid) or stories (overflow, refused,
    /// stopped) dropped for `reason`.
    pub fn dropped(&self, reason: StoryDrop) -> u64 {
        self.dropped[reason.slot()].get()
    }

    /// Stories with changes not yet in Redis (waiting or in flight).
    pub fn pending(&self) -> i64 {
        self.pending.get()
    }

    /// Loads answered with the story (`Ok(true)`), with nothing stored
    /// (`Ok(false)`), or with an error.
    pub fn loads(&self, result: Result<bool, StoryStoreError>) -> u64 {
        self.loads[Self::load_slot(result)].get()
    }

    /// Hash fields skipped on load because they could not be read.
    pub fn malformed_fields(&self) -> u64 {
        self.malformed_fields.get()
    }

    /// Load answers dropped because the shard's inbox stayed full.
    pub fn answers_dropped(&self) -> u64 {
        self.answers_dropped.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_line_up_with_slots() {
        for (i, d) in StoryDrop::ALL.into_iter().enumerate() {
            assert_eq!(d.slot(), i);
        }
        for (i, e) in StoryWriteError::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i);
        }
        let m = StoryMetrics::default();
        m.count_load(Ok(true));
        m.count_load(Ok(false));
        m.count_load(Ok(false));
        for (i, e) in StoryStoreError::ALL.into_iter().enumerate() {
            for _ in 0..i + 3 {
                m.count_load(Err(e));
            }
            assert_eq!(
                StoryMetrics::LOAD_RESULTS[StoryMetrics::load_slot(Err(e))],
                e.label()
            );
        }
        assert_eq!(m.loads(Ok(true)), 1);
        assert_eq!(m.loads(Ok(false)), 2);
        for (i, e) in StoryStoreError::ALL.into_iter().enumerate() {
            assert_eq!(m.loads(Err(e)), i as u64 + 3);
        }
        m.count_drop(StoryDrop::Invalid, 2);
        m.count_drop(StoryDrop::Refused, 0);
        assert_eq!(m.dropped(StoryDrop::Invalid), 2);
        assert_eq!(m.dropped(StoryDrop::Refused), 0);
        let labels: std::collections::HashSet<_> = StoryMetrics::LOAD_RESULTS.into();
        assert_eq!(labels.len(), 5);
    }
}
