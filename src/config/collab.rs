//! The `[collab]` configuration section: node-wide settings of live story
//! collaboration. (Which namespaces are stories, and their per-story
//! limits, are `[[namespace]]` keys.)
//!
//! Every key is also settable as `WSEDGE_COLLAB_<KEY>`, e.g.
//! `WSEDGE_COLLAB_REDIS_URL`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::collab::{CollabConfig as StoryLimits, ConflictPolicy};

/// Longest accepted `story_ttl`: past a month a "temporary" copy is
/// permanent storage, which belongs to the backend.
pub const MAX_STORY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The `[collab]` section. `Debug` hides a `redis_url` with credentials.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollabConfig {
    /// Redis that story state is written behind to
    /// (`redis://[:password@]host:port[/db]`). Default unset: `[auth]
    /// redis_url` is used if set (one Redis for tickets and stories is the
    /// common case); with neither, stories live in memory only and do not
    /// survive a restart of their home.
    pub redis_url: Option<String>,
    /// How long a story stays in Redis after its last editor left.
    /// Default 1h: a story reopened within the hour (a break, a restart,
    /// a deploy) reloads at once; an abandoned one leaves Redis, whose
    /// copy is temporary (the backend keeps every update). 1s – 30 days.
    #[serde(with = "humantime_serde")]
    pub story_ttl: Duration,
    /// Members waiting in line for an editor slot per story. Default 100:
    /// ten times the editor cap; a longer line is a crowd, not a queue.
    pub queue_max: usize,
    /// Sections per story. Default 1000: a long story of paragraphs and
    /// photos, and still one snapshot frame.
    pub max_sections: usize,
    /// Bytes of data per section. Default 64 KiB: a long paragraph with
    /// markup, or a photo reference with metadata (not the photo). An
    /// `update` must also fit in `max_message_size`.
    pub max_section_bytes: usize,
    /// Bytes of data per story, all sections together. Default 4 MiB:
    /// bounds the snapshot a join sends and the Redis hash.
    pub max_story_bytes: usize,
    /// A lock's time to live when `lock` gives none. Default 30s: long
    /// enough to type a paragraph between renewals, short enough that a
    /// vanished editor does not block a section for long.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// Longest `ttl` a `lock` may ask for; longer ones are cut to it.
    /// Default 5m.
    #[serde(with = "humantime_serde")]
    pub lock_ttl_max: Duration,
    /// How long the locks and the editor slot of an editor whose
    /// connection dropped stay its own, for a reconnect of the same user.
    /// Default 10s: a network switch or a page reload.
    #[serde(with = "humantime_serde")]
    pub lock_grace: Duration,
    /// `op_id`s remembered per story to deduplicate resends. Default
    /// 1024: ten editors' last hundred updates each.
    pub op_id_window: usize,
    /// Stories held in memory on the node (split evenly between shards);
    /// beyond it a story with no members is evicted to make room, else
    /// the join gets error 121. Default 20,000: a story's session is a
    /// few KiB plus its sections (bounded by `max_story_bytes`).
    pub max_stories: usize,
    /// A story with no members for this long leaves memory (its state is
    /// in Redis when one is configured). Default 10m.
    #[serde(with = "humantime_serde")]
    pub idle_evict: Duration,
}

impl Default for CollabConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            story_ttl: Duration::from_secs(3600),
            queue_max: 100,
            max_sections: 1000,
            max_section_bytes: 64 * 1024,
            max_story_bytes: 4 * 1024 * 1024,
            lock_ttl: Duration::from_secs(30),
            lock_ttl_max: Duration::from_secs(300),
            lock_grace: Duration::from_secs(10),
            op_id_window: 1024,
            max_stories: 20_000,
            idle_evict: Duration::from_secs(600),
        }
    }
}

impl std::fmt::Debug for CollabConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redis = match &self.redis_url {
            Some(url) if url.contains('@') => Some("<hidden: has credentials>"),
            other => other.as_deref(),
        };
        f.debug_struct("CollabConfig")
            .field("redis_url", &redis)
            .field("story_ttl", &self.story_ttl)
            .field("queue_max", &self.queue_max)
            .field("max_sections", &self.max_sections)
            .field("max_section_bytes", &self.max_section_bytes)
            .field("max_story_bytes", &self.max_story_bytes)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_ttl_max", &self.lock_ttl_max)
            .field("lock_grace", &self.lock_grace)
            .field("op_id_window", &self.op_id_window)
            .field("max_stories", &self.max_stories)
            .field("idle_evict", &self.idle_evict)
            .finish()
    }
}

impl CollabConfig {
    /// Checks what types cannot. Errors name the `collab.` key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.redis_url {
            if url.is_empty() {
                return Err("collab.redis_url is empty; remove it or give a URL".into());
            }
            // Parsing only: nothing connects here.
            redis::Client::open(url.as_str()).map_err(|e| {
                let shown = if url.contains('@') { "<hidden>" } else { url };
                format!("collab.redis_url = {shown:?} is not a Redis URL: {e}")
            })?;
        }
        if self.story_ttl < Duration::from_secs(1) || self.story_ttl > MAX_STORY_TTL {
            return Err("collab.story_ttl must be between 1s and 30 days".into());
        }
        self.story_limits(ConflictPolicy::Lww, 1)
            .validate()
            .map_err(|e| e.replace("collab ", "collab."))
    }

    /// The engine's limits of one story, with a namespace's conflict
    /// policy and editor cap. `max_stories` here is the node's; the shell
    /// splits it between shards ([`CollabConfig::story_table`]).
    pub fn story_limits(&self, conflict: ConflictPolicy, max_editors: usize) -> StoryLimits {
        StoryLimits {
            max_editors,
            queue_max: self.queue_max,
            max_sections: self.max_sections,
            max_section_bytes: self.max_section_bytes,
            max_story_bytes: self.max_story_bytes,
            lock_ttl: self.lock_ttl,
            lock_ttl_max: self.lock_ttl_max,
            lock_grace: self.lock_grace,
            conflict,
            op_id_window: self.op_id_window,
            max_stories: self.max_stories,
            idle_evict: self.idle_evict,
        }
    }

    /// The limits of one shard's story table: `max_stories` split evenly
    /// between `shards` (at least 1 each).
    pub fn story_table(&self, shards: usize) -> StoryLimits {
        StoryLimits {
            max_stories: self.max_stories.div_ceil(shards.max(1)).max(1),
            ..self.story_limits(ConflictPolicy::Lww, 10)
        }
    }
}
