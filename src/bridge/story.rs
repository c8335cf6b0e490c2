//! Story state as it is persisted, on its way between a channel's home
//! shard and the story sidecar (`crate::sidecar::stories`), which writes
//! it behind to Redis and reads it back.
//!
//! These types are the persistence format, independent of the engine's
//! in-memory story session: the shard converts. A shard sends a
//! [`StoryWrite`] (a delta: the changes since its last write) after each
//! accepted change, and a [`StoryLoad`] when a story it does not hold is
//! joined; the load's answer comes back as a
//! [`ShardMsg::StoryLoaded`](super::ShardMsg::StoryLoaded) carrying a
//! [`StoryLoadAnswer`].

use std::sync::Arc;

use bytes::Bytes;

/// A whole story: what a load returns, and what a full rewrite sends
/// ([`StoryWrite::whole`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryRecord {
    /// The story's channel.
    pub channel: Arc<str>,
    /// Every section, in section id order when loaded.
    pub sections: Vec<SectionRecord>,
    /// Every section lock, in section id order when loaded. A lock may
    /// have expired by the time it is loaded: `expires_ms` says.
    pub locks: Vec<LockRecord>,
    /// Whether editors were present. When writing: decides the key's TTL
    /// (none while active, `story_ttl` once not). When loaded: whether the
    /// key had no TTL, i.e. the last write saw editors present (the node
    /// holding the story stopped without their leaving).
    pub active: bool,
}

/// One section of a story at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionRecord {
    /// The section id.
    pub id: Arc<str>,
    /// Its version (each accepted update adds 1).
    pub version: u64,
    /// Its content: JSON text (any JSON value). Whitespace around the
    /// value is not kept.
    pub data: Bytes,
    /// The user id whose update made this version.
    pub writer: Arc<str>,
}

/// A section lock and its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// The locked section's id.
    pub section: Arc<str>,
    /// The holder's user id.
    pub user: Arc<str>,
    /// The holder's client id (the connection that took the lock).
    pub client: Arc<str>,
    /// When the lock lapses unless renewed, Unix milliseconds.
    pub expires_ms: u64,
}

/// One change to a story, in the order the home accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoryChange {
    /// The section now has this version (replaces the stored one).
    Section(SectionRecord),
    /// The section is locked by this holder (replaces any stored lock).
    Lock(LockRecord),
    /// The section's lock is released.
    Unlock {
        /// The section id.
        section: Arc<str>,
    },
    /// Drop the whole story (every section and lock). Followed by
    /// sections and locks, it is a full rewrite.
    Clear,
}

/// The changes a home made to one story since its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryWrite {
    /// The story's channel.
    pub channel: Arc<str>,
    /// The changes, oldest first. May be empty: the write then only says
    /// whether editors are present (`active`).
    pub changes: Vec<StoryChange>,
    /// Whether editors are present after these changes: no TTL while
    /// true; the key expires `story_ttl` after the write that says false.
    pub active: bool,
}

impl StoryWrite {
    /// A full rewrite: [`StoryChange::Clear`], then every section and lock
    /// of `record`.
    pub fn whole(record: StoryRecord) -> StoryWrite {
        let StoryRecord {
            channel,
            sections,
            locks,
            active,
        } = record;
        let mut changes = Vec::with_capacity(1 + sections.len() + locks.len());
        changes.push(StoryChange::Clear);
        changes.extend(sections.into_iter().map(StoryChange::Section));
        changes.extend(locks.into_iter().map(StoryChange::Lock));
        StoryWrite {
            channel,
            changes,
            active,
        }
    }

    /// Whether this write rewrites the story whole (starts with
    /// [`StoryChange::Clear`]).
    pub fn is_whole(&self) -> bool {
        matches!(self.changes.first(), Some(StoryChange::Clear))
    }
}

/// A request to read a story back from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryLoad {
    /// The asking shard (its inbox gets the answer).
    pub shard: usize,
    /// The shard's own id for this request, given back in the answer.
    pub request: u64,
    /// The story's channel.
    pub channel: Arc<str>,
}

/// Why a story could not be read (or a write could not be made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoryStoreError {
    /// Redis could not be reached or did not answer within the timeout
    /// (2 s), or the sidecar has stopped. Temporary.
    Unavailable,
    /// The sidecar's queue (or its list of loads waiting) was full;
    /// nothing was asked of Redis. Temporary.
    Busy,
    /// The key is not a hash, or has more fields than a story may have;
    /// someone other than this node wrote it. Not temporary: the stored
    /// state is unusable (a full rewrite replaces it).
    Malformed,
}

impl StoryStoreError {
    /// Every error, for metrics.
    pub const ALL: [StoryStoreError; 3] = [
        StoryStoreError::Unavailable,
        StoryStoreError::Busy,
        StoryStoreError::Malformed,
    ];

    /// The `result` label in metrics.
    pub const fn label(self) -> &'static str {
        match self {
            StoryStoreError::Unavailable => "unavailable",
            StoryStoreError::Busy => "busy",
            StoryStoreError::Malformed => "malformed",
        }
    }

    /// Whether asking again later may succeed.
    pub const fn temporary(self) -> bool {
        matches!(self, StoryStoreError::Unavailable | StoryStoreError::Busy)
    }
}

impl std::fmt::Display for StoryStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoryStoreError::Unavailable => "story store unavailable",
            StoryStoreError::Busy => "story store busy",
            StoryStoreError::Malformed => "stored story is malformed",
        })
    }
}

impl std::error::Error for StoryStoreError {}

/// The result of one [`StoryLoad`], for the shard that asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryLoadAnswer {
    /// The request id the shard gave.
    pub request: u64,
    /// The story's channel.
    pub channel: Arc<str>,
    /// The story (`None`: Redis holds nothing for it, e.g. never written
    /// or expired), or why it could not be read.
    pub result: Result<Option<StoryRecord>, StoryStoreError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_starts_with_clear_and_keeps_everything() {
        let rec = StoryRecord {
            channel: "story:1".into(),
            sections: vec![SectionRecord {
                id: "intro".into(),
                version: 3,
                data: Bytes::from_static(b"{\"t\":1}"),
                writer: "u1".into(),
            }],
            locks: vec![LockRecord {
                section: "intro".into(),
                user: "u1".into(),
                client: "c1".into(),
                expires_ms: 9,
            }],
            active: true,
        };
        let w = StoryWrite::whole(rec.clone());
        assert!(w.is_whole());
        assert_eq!(w.channel, rec.channel);
        assert!(w.active);
        assert_eq!(
            w.changes,
            vec![
                StoryChange::Clear,
                StoryChange::Section(rec.sections[0].clone()),
                StoryChange::Lock(rec.locks[0].clone()),
            ]
        );
        let delta = StoryWrite {
            channel: "story:1".into(),
            changes: vec![StoryChange::Unlock {
                section: "intro".into(),
            }],
            active: false,
        };
        assert!(!delta.is_whole());
    }

    #[test]
    fn error_labels_are_unique() {
        let labels: std::collections::HashSet<_> =
            StoryStoreError::ALL.map(StoryStoreError::label).into();
        assert_eq!(labels.len(), StoryStoreError::ALL.len());
        assert!(!labels.contains("found") && !labels.contains("absent"));
        assert!(StoryStoreError::Unavailable.temporary());
        assert!(StoryStoreError::Busy.temporary());
        assert!(!StoryStoreError::Malformed.temporary());
    }
}
