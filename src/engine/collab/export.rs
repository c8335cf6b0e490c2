//! A story's durable part (sections, versions, writers, locks) as plain
//! values, for writing it behind to Redis and reloading it after the home
//! restarts or moves.
//!
//! Members (and the editor slots held for disconnected ones) and the
//! `op_id` window are not exported: connections do not survive a restart,
//! and resends after one are not deduplicated. Lock
//! expiries are exported as time remaining, since the shard clock starts
//! again with the process. An imported lock has no member: it is in grace
//! (until `now + lock_grace`, or its own expiry if sooner) and goes to the
//! first editor of the same user, like the lock of a disconnected holder.
//!
//! Import trusts nothing: sections that break the configured bounds (id,
//! size, count, total bytes, versions beyond 2^53 - 1, a second copy of an
//! id, data at version 0) are skipped and counted, in the order given.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::edit::{MAX_VERSION, valid_section_id};
use super::locks::Lock;
use super::story::{Section, Writer};
use super::{CollabConfig, Story};
use crate::engine::wire::ClientInfo;

/// A story's sections, for Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoryExport {
    /// Sections in id order: every written section, and never-written ones
    /// that are locked.
    pub sections: Vec<SectionExport>,
}

/// One section of a [`StoryExport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionExport {
    /// Section id.
    pub id: Arc<str>,
    /// Version (0: never written, locked).
    pub version: u64,
    /// Data (JSON text).
    pub data: Bytes,
    /// The user who wrote the current version, if written.
    pub writer: Option<Arc<str>>,
    /// The lock, if held.
    pub lock: Option<LockExport>,
}

/// A held lock in a [`StoryExport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockExport {
    /// The holder's user id.
    pub user: Arc<str>,
    /// The holder's client id.
    pub client: Arc<str>,
    /// Milliseconds until it lapses (ttl or grace, whichever is first).
    pub expires_in_ms: u64,
}

/// A story rebuilt from an export.
#[derive(Debug)]
pub struct Imported {
    /// The story, with no members.
    pub story: Story,
    /// Sections left out for breaking the bounds.
    pub skipped: usize,
}

impl Story {
    /// The story's durable part at `now_ms`.
    pub fn export(&self, now_ms: u64) -> StoryExport {
        StoryExport {
            sections: self.sections.values().map(|s| s.export(now_ms)).collect(),
        }
    }

    /// One section's durable part at `now_ms`, if the section exists
    /// (written or locked): what a write-behind of a changed section sends.
    pub fn export_section(&self, id: &str, now_ms: u64) -> Option<SectionExport> {
        self.sections.get(id).map(|s| s.export(now_ms))
    }

    /// A story with `export`'s sections and locks, reloaded at `now_ms`.
    pub fn import(cfg: CollabConfig, export: StoryExport, now_ms: u64) -> Imported {
        let mut story = Story::new(cfg, now_ms);
        let mut skipped = 0;
        let grace_until = now_ms.saturating_add(cfg.lock_grace_ms());
        let mut sections = BTreeMap::new();
        for e in export.sections {
            let lock = e.lock.filter(|l| l.expires_in_ms > 0);
            if e.version == 0 && lock.is_none() && e.data.is_empty() {
                continue; // nothing to keep
            }
            let fits = valid_section_id(&e.id)
                && e.version <= MAX_VERSION
                && (e.version > 0 || e.data.is_empty())
                && e.data.len() <= cfg.max_section_bytes
                && story.bytes + e.data.len() <= cfg.max_story_bytes
                && sections.len() < cfg.max_sections
                && !sections.contains_key(&e.id);
            if !fits {
                skipped += 1;
                continue;
            }
            let mut s = Section::empty(e.id.clone());
            s.version = e.version;
            story.bytes += e.data.len();
            s.data = e.data;
            s.writer = e.writer.filter(|_| e.version > 0).map(|user| Writer {
                member: None,
                who: ClientInfo {
                    client: "".into(),
                    user,
                    info: None,
                },
            });
            if let Some(l) = lock {
                let expires_in = l.expires_in_ms.min(cfg.lock_ttl_max_ms());
                let lock = s.lock.insert(Lock {
                    holder: ClientInfo {
                        client: l.client,
                        user: l.user,
                        info: None,
                    },
                    member: None,
                    expires_at: now_ms.saturating_add(expires_in),
                    grace_until: Some(grace_until),
                    generation: 0,
                });
                story.timers.schedule(&s.id, lock);
                story.locks += 1;
                story.grace_locks += 1;
            }
            sections.insert(e.id, s);
        }
        story.sections = sections;
        story.settle();
        Imported { story, skipped }
    }
}

impl Section {
    fn export(&self, now_ms: u64) -> SectionExport {
        SectionExport {
            id: self.id.clone(),
            version: self.version,
            data: self.data.clone(),
            writer: self.writer.as_ref().map(|w| w.who.user.clone()),
            lock: self.lock.as_ref().map(|l| LockExport {
                user: l.holder.user.clone(),
                client: l.holder.client.clone(),
                expires_in_ms: l.deadline().saturating_sub(now_ms),
            }),
        }
    }
}
