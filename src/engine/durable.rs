//! The durable-events seam: events the backend must keep for good (the
//! seed's "backend database for permanent storage"), handed to a sink
//! that a sidecar worker drains to NATS JetStream or Kafka
//! (`crate::sidecar::durable`, routed per namespace by
//! `crate::shard::durable`). Story updates of a namespace without a
//! `durable_collab` sink go to [`MemorySink`], a bounded in-memory buffer
//! that counts what it holds and drops.
//!
//! The engine only produces events (publications of `durable`
//! namespaces, presence joins and leaves of `durable_presence` ones,
//! accepted story updates); it never waits on a sink.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

/// One event for permanent storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurableEvent {
    /// `story.content.update`: an accepted update of a story section.
    StoryContentUpdate(StoryUpdate),
    /// `publication`: a publication of a `durable` namespace, made by its
    /// home before it accepted it.
    Publication(Box<PublicationEvent>),
    /// `presence.join` / `presence.leave`: a member of a
    /// `durable_presence` namespace's channel joined or left, made by its
    /// home.
    Presence(Box<PresenceChange>),
}

impl DurableEvent {
    /// The event's type name, as the backend sees it.
    pub const fn kind(&self) -> &'static str {
        match self {
            DurableEvent::StoryContentUpdate(_) => "story.content.update",
            DurableEvent::Publication(_) => "publication",
            DurableEvent::Presence(p) if p.joined => "presence.join",
            DurableEvent::Presence(_) => "presence.leave",
        }
    }

    /// The channel the event belongs to (a story's channel for an update).
    pub fn channel(&self) -> &Arc<str> {
        match self {
            DurableEvent::StoryContentUpdate(u) => &u.story,
            DurableEvent::Publication(p) => &p.channel,
            DurableEvent::Presence(p) => &p.channel,
        }
    }
}

/// A publication of a `durable` namespace. Its id, unique for good, is
/// `(channel, epoch, offset)`: a sink deduplicates on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationEvent {
    /// The channel.
    pub channel: Arc<str>,
    /// The channel's epoch.
    pub epoch: u64,
    /// The publication's offset in that epoch.
    pub offset: u64,
    /// The publisher's user id (empty: anonymous, or the server API).
    pub user: Arc<str>,
    /// The publishing connection's client id (empty: the server API).
    pub client: Arc<str>,
    /// When the home made it, Unix milliseconds.
    pub at_ms: u64,
    /// The payload, as published.
    pub data: crate::engine::wire::publication::PubData,
    /// The publisher's idempotency key, if it gave one.
    pub idempotency_key: Option<Box<str>>,
}

impl PublicationEvent {
    /// The event's id as one string: `<channel>:<epoch, 16 hex>:<offset>`
    /// (a channel name may hold `:`, but the last two fields are fixed, so
    /// the id reads back unambiguously from the right).
    pub fn id(&self) -> String {
        format!("{}:{:016x}:{}", self.channel, self.epoch, self.offset)
    }
}

/// Why a member left a channel's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It unsubscribed (or was unsubscribed by the server API).
    Unsubscribe,
    /// Its connection closed (or its node left the cluster).
    Disconnect,
}

impl LeaveReason {
    /// The reason's name in the event.
    pub const fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Unsubscribe => "unsubscribe",
            LeaveReason::Disconnect => "disconnect",
        }
    }
}

/// A member joined or left a channel's presence. Its id, unique for
/// good, is `(channel, client, time, seq)`: a client id names one
/// connection of one node run, and `seq` counts the home's presence
/// events, so a client that leaves and joins again within a millisecond
/// still gets two ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The channel.
    pub channel: Arc<str>,
    /// Joined (true) or left.
    pub joined: bool,
    /// Why it left (`None` for a join).
    pub reason: Option<LeaveReason>,
    /// The member's user id (empty: anonymous).
    pub user: Arc<str>,
    /// The member's client id.
    pub client: Arc<str>,
    /// Its connection's application data (JSON text), if any.
    pub info: Option<Bytes>,
    /// When the home saw it, Unix milliseconds.
    pub at_ms: u64,
    /// The home's count of presence events so far.
    pub seq: u64,
}

impl PresenceChange {
    /// The event's id: `<channel>:<client>:<time>:<seq>`.
    pub fn id(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.channel, self.client, self.at_ms, self.seq
        )
    }
}

/// An accepted story update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryUpdate {
    /// The story's channel.
    pub story: Arc<str>,
    /// The section written.
    pub section: Arc<str>,
    /// Its new version.
    pub version: u64,
    /// Who wrote it (user id; empty when anonymous).
    pub user: Arc<str>,
    /// The writing connection's client id.
    pub client: Arc<str>,
    /// The data written (JSON text).
    pub data: Bytes,
    /// When the home accepted it, Unix milliseconds.
    pub at_ms: u64,
}

impl StoryUpdate {
    /// The event's id, unique for good: `<story>:<section>:<version>`.
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.story, self.section, self.version)
    }
}

/// Where durable events go. Never blocks: a sink that cannot take an
/// event says so, and the caller counts it.
pub trait DurableSink {
    /// Takes `event`; false when it was dropped (the sink is full).
    fn emit(&mut self, event: DurableEvent) -> bool;
}

/// A bounded buffer of the most recent events: the embedded default
/// until a broker-backed sink exists, and the sink tests read.
#[derive(Debug)]
pub struct MemorySink {
    events: VecDeque<DurableEvent>,
    capacity: usize,
    emitted: u64,
    dropped: u64,
}

impl MemorySink {
    /// A sink keeping at most `capacity` events (the oldest is dropped,
    /// counted, to make room).
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            emitted: 0,
            dropped: 0,
        }
    }

    /// The events held, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &DurableEvent> {
        self.events.iter()
    }

    /// Takes every event held, oldest first.
    pub fn drain(&mut self) -> Vec<DurableEvent> {
        self.events.drain(..).collect()
    }

    /// Events taken so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Events dropped so far to stay within the capacity.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl DurableSink for MemorySink {
    fn emit(&mut self, event: DurableEvent) -> bool {
        self.emitted += 1;
        let kept = self.events.len() < self.capacity;
        if !kept {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(version: u64) -> DurableEvent {
        DurableEvent::StoryContentUpdate(StoryUpdate {
            story: "story:1".into(),
            section: "p1".into(),
            version,
            user: "ann".into(),
            client: "c1".into(),
            data: Bytes::from_static(b"\"x\""),
            at_ms: 1,
        })
    }

    #[test]
    fn the_memory_sink_keeps_the_newest_and_counts_the_dropped() {
        let mut sink = MemorySink::new(2);
        assert!(sink.emit(update(1)));
        assert!(sink.emit(update(2)));
        assert!(!sink.emit(update(3)));
        assert_eq!((sink.emitted(), sink.dropped()), (3, 1));
        let versions: Vec<u64> = sink
            .events()
            .map(|e| match e {
                DurableEvent::StoryContentUpdate(u) => u.version,
                DurableEvent::Publication(p) => p.offset,
                DurableEvent::Presence(p) => p.seq,
            })
            .collect();
        assert_eq!(versions, vec![2, 3]);
        assert_eq!(sink.drain().len(), 2);
        assert_eq!(sink.events().count(), 0);
        assert_eq!(update(1).kind(), "story.content.update");
    }
}
