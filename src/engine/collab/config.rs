//! The limits and policies of live stories, with the reason for each
//! default. One value serves a shard's table ([`Stories`](super::Stories))
//! and every story in it.

use std::time::Duration;

/// What an update from a stale `base_version` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ConflictPolicy {
    /// Last write wins (`conflict = "lww"`): the update is accepted and the
    /// editor whose version it replaced gets a `conflict` push with the
    /// data it lost. The default: the seed asks for last-write-wins with
    /// conflict alerts.
    #[default]
    Lww,
    /// `conflict = "reject"`: the update is refused with the current
    /// version and data, and the client rebases (as ShareDB does).
    Reject,
}

/// Limits and policies of live stories. Plain values; check them once with
/// [`CollabConfig::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollabConfig {
    /// Editors per story at once (default 10: the seed's cap).
    pub max_editors: usize,
    /// Members waiting in line for an editor slot per story (default 100:
    /// ten times the editor cap; a longer line is a crowd, not a queue).
    pub queue_max: usize,
    /// Sections per story (default 1000: a long story of paragraphs and
    /// photos; a snapshot of 1000 small sections is still one frame).
    pub max_sections: usize,
    /// Bytes of data per section (default 64 KiB: a long paragraph with
    /// markup, or a photo reference with metadata; not the photo).
    pub max_section_bytes: usize,
    /// Bytes of data per story, all sections together (default 4 MiB:
    /// bounds the snapshot a join sends and the Redis hash).
    pub max_story_bytes: usize,
    /// A lock's time to live when `lock` gives none (default 30 s: long
    /// enough to type a paragraph between renewals, short enough that a
    /// vanished editor does not block a section for long).
    pub lock_ttl: Duration,
    /// The longest `ttl` a `lock` may ask for; longer ones are cut to this
    /// (default 300 s).
    pub lock_ttl_max: Duration,
    /// How long a disconnected editor's locks, and its editor slot, stay
    /// its own for a reconnect of the same user (default 10 s: a network
    /// switch or a page reload, like Ably Spaces' 15 s before an abrupt
    /// disconnect becomes a leave). The slot is held so the user returns
    /// to its locks as an editor, not to the back of the line.
    pub lock_grace: Duration,
    /// What an update from a stale `base_version` does (default LWW).
    pub conflict: ConflictPolicy,
    /// `op_id`s remembered per story for deduplicating resends (default
    /// 1024: ten editors' last hundred updates each).
    pub op_id_window: usize,
    /// Stories per shard (default 10,000).
    pub max_stories: usize,
    /// A story with no members for this long is evicted from memory
    /// (default 10 min; its state is in Redis and comes back on the next
    /// join).
    pub idle_evict: Duration,
}

impl Default for CollabConfig {
    fn default() -> Self {
        Self {
            max_editors: 10,
            queue_max: 100,
            max_sections: 1000,
            max_section_bytes: 64 * 1024,
            max_story_bytes: 4 * 1024 * 1024,
            lock_ttl: Duration::from_secs(30),
            lock_ttl_max: Duration::from_secs(300),
            lock_grace: Duration::from_secs(10),
            conflict: ConflictPolicy::Lww,
            op_id_window: 1024,
            max_stories: 10_000,
            idle_evict: Duration::from_secs(600),
        }
    }
}

/// The longest duration accepted anywhere here (a day): keeps every
/// deadline far from `u64` overflow and catches unit mistakes.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

impl CollabConfig {
    /// Checks the values make sense together; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_editors", self.max_editors),
            ("max_sections", self.max_sections),
            ("max_section_bytes", self.max_section_bytes),
            ("max_story_bytes", self.max_story_bytes),
            ("max_stories", self.max_stories),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("collab {key} must be at least 1"));
            }
        }
        if self.max_section_bytes > self.max_story_bytes {
            return Err(format!(
                "collab max_section_bytes ({}) exceeds max_story_bytes ({})",
                self.max_section_bytes, self.max_story_bytes
            ));
        }
        let durations = [
            ("lock_ttl", self.lock_ttl),
            ("lock_ttl_max", self.lock_ttl_max),
            ("lock_grace", self.lock_grace),
            ("idle_evict", self.idle_evict),
        ];
        for (key, d) in durations {
            if d.as_millis() == 0 {
                return Err(format!("collab {key} must be at least 1 ms"));
            }
            if d > MAX_DURATION {
                return Err(format!("collab {key} must be at most 24 h"));
            }
        }
        if self.lock_ttl > self.lock_ttl_max {
            return Err(format!(
                "collab lock_ttl ({:?}) exceeds lock_ttl_max ({:?})",
                self.lock_ttl, self.lock_ttl_max
            ));
        }
        Ok(())
    }

    pub(super) fn lock_ttl_ms(&self) -> u64 {
        self.lock_ttl.as_millis() as u64
    }

    pub(super) fn lock_ttl_max_ms(&self) -> u64 {
        self.lock_ttl_max.as_millis() as u64
    }

    pub(super) fn lock_grace_ms(&self) -> u64 {
        self.lock_grace.as_millis() as u64
    }

    pub(super) fn idle_evict_ms(&self) -> u64 {
        self.idle_evict.as_millis() as u64
    }
}
