//! Live story metrics, per shard: the stories a shard is home for (count,
//! members, locks, bytes, joins waiting for a load), what happened to them
//! (joins, updates, conflicts, loads, evictions, refusals), and the
//! durable events handed to the in-memory sink. The sidecar's Redis
//! metrics are `story_*` in `stories.rs`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Counters, Gauges, KindCounters, ShardLabel, kind_counter};
use crate::engine::router::{RouterStats, StoryStats};

type IntGauge = Gauge<i64, std::sync::atomic::AtomicI64>;

/// The node-wide families (registered with the others).
pub(super) struct CollabFamilies {
    stories: Gauges,
    members: Gauges,
    locks: Gauges,
    bytes: Gauges,
    waiting: Gauges,
    joins: Counters,
    updates: Counters,
    conflicts: Counters,
    loads: KindCounters,
    import_skipped: Counters,
    evictions: Counters,
    refused: Counters,
    durable: KindCounters,
}

impl CollabFamilies {
    /// Registers the families in `r`.
    pub(super) fn register(r: &mut Registry) -> Self {
        macro_rules! reg {
            ($name:literal, $help:literal, $t:ty) => {{
                let f = <$t>::default();
                r.register($name, $help, f.clone());
                f
            }};
        }
        Self {
            stories: reg!(
                "collab_stories",
                "Live stories in memory at their home shard",
                Gauges
            ),
            members: reg!(
                "collab_members",
                "Members (editors, viewers, queued) of the live stories",
                Gauges
            ),
            locks: reg!(
                "collab_locks",
                "Section locks held in the live stories, including those in grace",
                Gauges
            ),
            bytes: reg!(
                "collab_bytes",
                "Bytes of section data in the live stories",
                Gauges
            ),
            waiting: reg!(
                "collab_joins_waiting",
                "Joins waiting for their story to be read back from Redis",
                Gauges
            ),
            joins: reg!(
                "collab_joins",
                "Story joins and role changes accepted",
                Counters
            ),
            updates: reg!(
                "collab_updates",
                "Story updates accepted (each is also a durable event)",
                Counters
            ),
            conflicts: reg!(
                "collab_conflicts",
                "conflict pushes: an update from a stale base replaced another editor's version (lww)",
                Counters
            ),
            loads: reg!(
                "collab_loads",
                "Stories read back before their first join, by result (ok, failed: the joins got error 100)",
                KindCounters
            ),
            import_skipped: reg!(
                "collab_import_skipped",
                "Sections of stories read back that broke the limits and were left out",
                Counters
            ),
            evictions: reg!(
                "collab_evictions",
                "Stories that left memory (idle for idle_evict, or to make room)",
                Counters
            ),
            refused: reg!(
                "collab_refused",
                "New stories refused for max_stories (error 121)",
                Counters
            ),
            durable: reg!(
                "durable_events",
                "Durable events (story.content.update) handed to the in-memory sink, by kind: kept, or dropped (oldest, sink full)",
                KindCounters
            ),
        }
    }

    /// One shard's handles; every series is created now.
    pub(super) fn shard(&self, l: &ShardLabel) -> CollabShardMetrics {
        let s = l.shard.as_str();
        CollabShardMetrics {
            stories: self.stories.get_or_create(l).clone(),
            members: self.members.get_or_create(l).clone(),
            locks: self.locks.get_or_create(l).clone(),
            bytes: self.bytes.get_or_create(l).clone(),
            waiting: self.waiting.get_or_create(l).clone(),
            joins: self.joins.get_or_create(l).clone(),
            updates: self.updates.get_or_create(l).clone(),
            conflicts: self.conflicts.get_or_create(l).clone(),
            loads: ["ok", "failed"].map(|k| kind_counter(&self.loads, s, k)),
            import_skipped: self.import_skipped.get_or_create(l).clone(),
            evictions: self.evictions.get_or_create(l).clone(),
            refused: self.refused.get_or_create(l).clone(),
            durable: ["kept", "dropped"].map(|k| kind_counter(&self.durable, s, k)),
            evictions_before: 0,
            refused_before: 0,
        }
    }
}

/// One shard's story metrics.
pub struct CollabShardMetrics {
    stories: IntGauge,
    members: IntGauge,
    locks: IntGauge,
    bytes: IntGauge,
    waiting: IntGauge,
    joins: Counter,
    updates: Counter,
    conflicts: Counter,
    loads: [Counter; 2],
    import_skipped: Counter,
    evictions: Counter,
    refused: Counter,
    durable: [Counter; 2],
    evictions_before: u64,
    refused_before: u64,
}

impl CollabShardMetrics {
    /// Moves a turn's router counts.
    pub fn flush(&self, r: &RouterStats) {
        self.joins.inc_by(r.story_joins);
        self.updates.inc_by(r.story_updates);
        self.conflicts.inc_by(r.story_conflicts);
        self.loads[0].inc_by(r.story_loads);
        self.loads[1].inc_by(r.story_load_failures);
        self.import_skipped.inc_by(r.story_import_skipped);
    }

    /// Sets the gauges from the story table (once a tick).
    pub fn set(&mut self, s: &StoryStats) {
        self.stories.set(s.stories as i64);
        self.members.set(s.members as i64);
        self.locks.set(s.locks as i64);
        self.bytes.set(s.bytes as i64);
        self.waiting.set(s.waiting as i64);
        self.evictions
            .inc_by(s.evictions.saturating_sub(self.evictions_before));
        self.evictions_before = s.evictions;
        self.refused
            .inc_by(s.refused.saturating_sub(self.refused_before));
        self.refused_before = s.refused;
    }

    /// A durable event went to the sink (`kept`), or pushed out the oldest.
    pub fn durable_event(&self, kept: bool) {
        self.durable[usize::from(!kept)].inc();
    }
}
