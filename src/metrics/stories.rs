//! Story write-behind metrics (`wsedge_story_*`): node-wide, no `shard`
//! label; the `wsedge-stories` worker counts them
//! (`crate::sidecar::stories`). Every labelled series is created in
//! [`Metrics::stories`], so each is exported at 0 from the start.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Metrics, ResultLabel};
use crate::sidecar::stories::metrics::batch_histogram;
use crate::sidecar::stories::{StoryDrop, StoryMetricParts, StoryMetrics, StoryWriteError};

/// `{reason}` of dropped story changes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// [`StoryDrop::label`].
    pub reason: String,
}

/// `{error}` of failed story writes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// [`StoryWriteError::label`].
    pub error: String,
}

/// The registered story families.
pub(super) struct StoryFamilies {
    writes: Counter,
    write_errors: Family<ErrorLabel, Counter>,
    dropped: Family<ReasonLabel, Counter>,
    pending: Gauge<i64, AtomicI64>,
    loads: Family<ResultLabel, Counter>,
    malformed_fields: Counter,
    answers_dropped: Counter,
    batch_seconds: Histogram,
}

impl StoryFamilies {
    pub(super) fn register(r: &mut Registry) -> Self {
        let f = Self {
            writes: Counter::default(),
            write_errors: Family::default(),
            dropped: Family::default(),
            pending: Gauge::default(),
            loads: Family::default(),
            malformed_fields: Counter::default(),
            answers_dropped: Counter::default(),
            batch_seconds: batch_histogram(),
        };
        r.register(
            "story_writes",
            "Story writes Redis accepted (one per story per batch; many changes coalesce into one)",
            f.writes.clone(),
        );
        r.register(
            "story_write_errors",
            "Story write failures: unavailable (a batch got no answer; retried), refused (Redis answered a story's write with an error; dropped)",
            f.write_errors.clone(),
        );
        r.register(
            "story_writes_dropped",
            "Story changes lost before Redis, by reason (queue_full, pending_overflow, refused, invalid, stopped); stories are rewritten whole on their next change",
            f.dropped.clone(),
        );
        r.register(
            "story_pending",
            "Stories with changes not yet in Redis (waiting or in flight)",
            f.pending.clone(),
        );
        r.register(
            "story_loads",
            "Story loads from Redis by result (found, absent, unavailable, busy, malformed)",
            f.loads.clone(),
        );
        r.register(
            "story_malformed_fields",
            "Story hash fields skipped on load because they could not be read",
            f.malformed_fields.clone(),
        );
        r.register(
            "story_load_answers_dropped",
            "Story load answers dropped because the shard's inbox stayed full",
            f.answers_dropped.clone(),
        );
        r.register(
            "story_batch_seconds",
            "Round trip of one story batch (MULTI..EXEC) to Redis, failures included",
            f.batch_seconds.clone(),
        );
        f
    }
}

impl Metrics {
    /// Handles for the story worker; every labelled series is created now
    /// (exported at 0 from the start).
    pub fn stories(&self) -> StoryMetrics {
        let f = &self.stories;
        StoryMetrics::from_parts(StoryMetricParts {
            writes: f.writes.clone(),
            write_errors: StoryWriteError::ALL.map(|e| {
                f.write_errors
                    .get_or_create(&ErrorLabel {
                        error: e.label().into(),
                    })
                    .clone()
            }),
            dropped: StoryDrop::ALL.map(|d| {
                f.dropped
                    .get_or_create(&ReasonLabel {
                        reason: d.label().into(),
                    })
                    .clone()
            }),
            pending: f.pending.clone(),
            loads: StoryMetrics::LOAD_RESULTS.map(|r| {
                f.loads
                    .get_or_create(&ResultLabel { result: r.into() })
                    .clone()
            }),
            malformed_fields: f.malformed_fields.clone(),
            answers_dropped: f.answers_dropped.clone(),
            batch_seconds: f.batch_seconds.clone(),
        })
    }
}
