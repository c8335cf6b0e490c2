//! The shell's side of live stories: writing the stories this shard is
//! home for behind to the story sidecar (`crate::sidecar::stories`),
//! asking it to read one back, turning its answer into the engine's, and
//! the durable-events sink.
//!
//! The router says *which* sections a change touched; the records are
//! built here from the story's current state (the sidecar keeps only the
//! last write per section anyway), with the router clock turned into Unix
//! time. Each story keeps a [`StorySync`] (so a write after a loss is
//! whole) and the `active` flag last written (so membership changes that
//! do not change it write nothing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::bridge::{
    LockRecord, SectionRecord, StoryChange, StoryLoad, StoryLoadAnswer, StoryRecord,
    StoryStoreError, StoryWrite,
};
use crate::engine::collab::{LockExport, SectionExport, StoryExport};
use crate::engine::durable::{DurableEvent, DurableSink, MemorySink};
use crate::engine::router::StoryWriteReq;
use crate::engine::router::story::{StoryLoadResult, StoryUnavailable};
use crate::sidecar::stories::{StoryClient, StorySync, StoryWriteOutcome};

use super::commands::shard_out;
use super::core::Shard;

/// Durable events a shard holds until a broker-backed sink drains them
/// (the durable events issue); beyond it the oldest go, counted.
pub(crate) const DURABLE_BUFFER: usize = 4096;

/// What a shard keeps for its stories' persistence.
pub(crate) struct ShardStories {
    /// The story sidecar, when a store is configured.
    client: Option<StoryClient>,
    /// Per story in memory: its sync epoch and the `active` flag last
    /// written (`None`: nothing written yet).
    sync: HashMap<Arc<str>, (StorySync, Option<bool>)>,
    next_request: u64,
    /// Loads the sidecar refused at once, answered once the router call
    /// that asked returns.
    pub(crate) refused: Vec<StoryLoadAnswer>,
    /// Events for the backend's permanent storage.
    pub(crate) durable: MemorySink,
}

impl ShardStories {
    /// Persistence through `client` (none: stories stay in memory).
    pub(crate) fn new(client: Option<StoryClient>) -> Self {
        Self {
            client,
            sync: HashMap::new(),
            next_request: 0,
            refused: Vec::new(),
            durable: MemorySink::new(DURABLE_BUFFER),
        }
    }

    /// Writes what a story change touched.
    pub(crate) fn write(&mut self, req: StoryWriteReq<'_>) {
        let Some(client) = &self.client else {
            return;
        };
        let (sync, last_active) = self
            .sync
            .entry(req.channel.clone())
            .or_insert((StorySync::DIRTY, None));
        if req.touched.is_empty() && *last_active == Some(req.active) && !client.is_behind(sync) {
            return;
        }
        let mut changes = Vec::with_capacity(req.touched.len() * 2);
        for (i, id) in req.touched.iter().enumerate() {
            if req.touched[..i].contains(id) {
                continue;
            }
            match req.story.export_section(id, req.now_ms) {
                Some(s) => push_section(&mut changes, s, req.unix_ms),
                None => changes.push(StoryChange::Unlock {
                    section: id.clone(),
                }),
            }
        }
        let delta = StoryWrite {
            channel: req.channel.clone(),
            changes,
            active: req.active,
        };
        let whole = || {
            record(
                req.channel,
                req.story.export(req.now_ms),
                req.active,
                req.unix_ms,
            )
        };
        match client.write(sync, delta, whole) {
            StoryWriteOutcome::Queued | StoryWriteOutcome::QueuedWhole => {
                *last_active = Some(req.active);
            }
            // Counted by the client; the loss epoch makes the next write
            // whole.
            StoryWriteOutcome::Dropped(_) => *last_active = None,
        }
    }

    /// Asks the sidecar to read `channel`'s story back.
    pub(crate) fn load(&mut self, shard: usize, channel: &Arc<str>) {
        let Some(client) = &self.client else {
            return;
        };
        self.next_request += 1;
        let load = StoryLoad {
            shard,
            request: self.next_request,
            channel: channel.clone(),
        };
        if let Err(refused) = client.load(load) {
            self.refused.push(refused.into_answer());
        }
    }

    /// `channel`'s story left memory.
    pub(crate) fn evicted(&mut self, channel: &str) {
        self.sync.remove(channel);
    }

    /// The engine's view of a load's answer; notes what Redis now holds.
    pub(crate) fn loaded(&mut self, answer: StoryLoadAnswer, unix_now: u64) -> StoryLoadResult {
        let synced = self
            .client
            .as_ref()
            .map_or(StorySync::DIRTY, |c| c.synced());
        match answer.result {
            Ok(found) => {
                self.sync.insert(answer.channel, (synced, None));
                Ok(found.map(|r| export(r, unix_now)))
            }
            Err(StoryStoreError::Malformed) => {
                // Unusable: start afresh, and rewrite it whole.
                tracing::warn!(channel = %answer.channel, "stored story is malformed; starting it afresh");
                self.sync.insert(answer.channel, (StorySync::DIRTY, None));
                Ok(None)
            }
            Err(StoryStoreError::Unavailable | StoryStoreError::Busy) => Err(StoryUnavailable),
        }
    }

    /// Keeps a durable event (counted by the caller).
    pub(crate) fn durable(&mut self, event: DurableEvent) -> bool {
        self.durable.emit(event)
    }
}

/// A section's changes: its data when written, and its lock (or unlock).
fn push_section(changes: &mut Vec<StoryChange>, s: SectionExport, unix_ms: u64) {
    if s.version > 0 {
        changes.push(StoryChange::Section(SectionRecord {
            id: s.id.clone(),
            version: s.version,
            data: s.data,
            writer: s.writer.unwrap_or_else(|| Arc::from("")),
        }));
    }
    changes.push(match s.lock {
        Some(l) => StoryChange::Lock(lock_record(&s.id, l, unix_ms)),
        None => StoryChange::Unlock { section: s.id },
    });
}

fn lock_record(section: &Arc<str>, l: LockExport, unix_ms: u64) -> LockRecord {
    LockRecord {
        section: section.clone(),
        user: l.user,
        client: l.client,
        expires_ms: unix_ms.saturating_add(l.expires_in_ms),
    }
}

/// A whole story as the sidecar stores it.
fn record(channel: &Arc<str>, e: StoryExport, active: bool, unix_ms: u64) -> StoryRecord {
    let mut sections = Vec::with_capacity(e.sections.len());
    let mut locks = Vec::new();
    for s in e.sections {
        if let Some(l) = s.lock {
            locks.push(lock_record(&s.id, l, unix_ms));
        }
        if s.version > 0 {
            sections.push(SectionRecord {
                id: s.id,
                version: s.version,
                data: s.data,
                writer: s.writer.unwrap_or_else(|| Arc::from("")),
            });
        }
    }
    StoryRecord {
        channel: channel.clone(),
        sections,
        locks,
        active,
    }
}

/// A stored story as the engine imports it: lock expiries become time
/// remaining (a lapsed lock is left out).
fn export(r: StoryRecord, unix_now: u64) -> StoryExport {
    let mut sections: Vec<SectionExport> = r
        .sections
        .into_iter()
        .map(|s| SectionExport {
            id: s.id,
            version: s.version,
            data: s.data,
            writer: Some(s.writer).filter(|w| !w.is_empty()),
            lock: None,
        })
        .collect();
    for l in r.locks {
        let Some(expires_in_ms) = l.expires_ms.checked_sub(unix_now).filter(|&d| d > 0) else {
            continue;
        };
        let lock = Some(LockExport {
            user: l.user,
            client: l.client,
            expires_in_ms,
        });
        match sections.iter_mut().find(|s| s.id == l.section) {
            Some(s) => s.lock = lock,
            None => sections.push(SectionExport {
                id: l.section,
                version: 0,
                data: bytes::Bytes::new(),
                writer: None,
                lock,
            }),
        }
    }
    sections.sort_by(|a, b| a.id.cmp(&b.id));
    StoryExport { sections }
}

/// Unix time now, in milliseconds.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shard {
    /// The story sidecar's answer to a load this shard asked for: the
    /// joins waiting for the story run now (or are refused).
    pub(crate) fn on_story_loaded(&mut self, answer: StoryLoadAnswer) {
        let channel = answer.channel.clone();
        let result = self.stories.loaded(answer, unix_now_ms());
        let mut out = shard_out!(self);
        self.router
            .story_loaded(Instant::now(), channel, result, &mut out);
        self.apply_closes();
    }

    /// Answers the loads the sidecar refused at once (queue full, worker
    /// stopped) while the router ran.
    pub(crate) fn answer_refused_loads(&mut self) {
        while let Some(answer) = self.stories.refused.pop() {
            self.on_story_loaded(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_story_comes_back_with_lapsed_locks_left_out() {
        let r = StoryRecord {
            channel: "story:1".into(),
            sections: vec![SectionRecord {
                id: "b".into(),
                version: 2,
                data: bytes::Bytes::from_static(b"\"x\""),
                writer: "ann".into(),
            }],
            locks: vec![
                LockRecord {
                    section: "b".into(),
                    user: "ann".into(),
                    client: "c1".into(),
                    expires_ms: 1_500,
                },
                LockRecord {
                    section: "a".into(),
                    user: "bob".into(),
                    client: "c2".into(),
                    expires_ms: 2_000,
                },
                LockRecord {
                    section: "c".into(),
                    user: "cy".into(),
                    client: "c3".into(),
                    expires_ms: 900,
                },
            ],
            active: true,
        };
        let e = export(r, 1_000);
        let ids: Vec<&str> = e.sections.iter().map(|s| &*s.id).collect();
        assert_eq!(ids, vec!["a", "b"], "sorted; the lapsed lock of c is gone");
        assert_eq!(e.sections[0].version, 0);
        assert_eq!(e.sections[0].lock.as_ref().unwrap().expires_in_ms, 1_000);
        assert_eq!(e.sections[1].lock.as_ref().unwrap().expires_in_ms, 500);
        assert_eq!(e.sections[1].writer.as_deref(), Some("ann"));
        // And back: locks in Unix time again, the blank section's lock kept.
        let back = record(&"story:1".into(), e, false, 1_000);
        assert_eq!(back.sections.len(), 1);
        assert_eq!(
            back.locks.iter().map(|l| l.expires_ms).collect::<Vec<_>>(),
            vec![2_000, 1_500]
        );
    }
}
