//! The router's counts for the shell's metrics: moved out once per loop
//! turn ([`RouterStats`]) or read on a scrape ([`StoryStats`]).

/// Counts the shell moves to its metrics once per loop turn.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouterStats {
    /// Publications accepted at home.
    pub publications: u64,
    /// Publication frames handed to local subscribers.
    pub deliveries: u64,
    /// Delivery gaps found (subscribers told to recover).
    pub gaps: u64,
    /// Publishes dropped as repeats of an idempotency key.
    pub duplicates: u64,
    /// Subscriptions that recovered every missed publication.
    pub recovered: u64,
    /// Subscriptions that asked to recover and could not.
    pub not_recovered: u64,
    /// Presence event frames sent to shards with subscribers.
    pub presence_pushes: u64,
    /// Story updates accepted at home.
    pub story_updates: u64,
    /// `conflict` pushes (an update overwrote another editor's version).
    pub story_conflicts: u64,
    /// Story joins (and role changes) accepted at home.
    pub story_joins: u64,
    /// Stories read back from the store.
    pub story_loads: u64,
    /// Stories that could not be read back (their joins got error 100).
    pub story_load_failures: u64,
    /// Sections of loaded stories skipped for breaking the limits.
    pub story_import_skipped: u64,
    /// Durable events of publications the sink took.
    pub durable_events: u64,
    /// Publications refused (112) because the durable sink could not take
    /// their event.
    pub durable_refused: u64,
    /// Durable events the sink did not confirm to a waiting publisher
    /// (answered 123).
    pub durable_unconfirmed: u64,
    /// Presence events of `durable_presence` namespaces, and story updates
    /// of `durable_collab` ones that passed the room check, the sink could
    /// not take (the change stood; the event is lost, counted).
    pub durable_events_lost: u64,
    /// Story updates of `durable_collab` namespaces refused (112) because
    /// their sink could not take events.
    pub durable_collab_refused: u64,
}

/// The stories a shard is home for, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoryStats {
    /// Stories in memory.
    pub stories: usize,
    /// Their members.
    pub members: usize,
    /// Their locks (including those in grace).
    pub locks: usize,
    /// Bytes of section data.
    pub bytes: usize,
    /// Stories evicted so far (idle, or to make room).
    pub evictions: u64,
    /// New stories refused so far (`max_stories`, none evictable).
    pub refused: u64,
    /// Joins waiting for their story to be read back.
    pub waiting: usize,
}
