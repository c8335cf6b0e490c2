//! The `[collab]` configuration section: node-wide settings of live story
//! collaboration. (Which namespaces are stories, and their per-story
//! limits, are `[[namespace]]` keys.)
//!
//! Every key is also settable as `WSEDGE_COLLAB_<KEY>`, e.g.
//! `WSEDGE_COLLAB_REDIS_URL`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

impl Default for CollabConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            story_ttl: Duration::from_secs(3600),
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
        Ok(())
    }
}
