//! Section locks and versioned updates on a [`Story`], and its timers.
//!
//! Locks: only editors lock. A free section (or one whose lock lapsed) is
//! granted; the holder locking again renews it (a new `ttl` from now, no
//! event); anyone else gets [`CollabError::SectionLocked`] with the holder.
//! A lock in grace belongs to nobody until its user's next editor takes it
//! over, so even another connection of the same user is refused meanwhile.
//!
//! Updates: only editors update, and not a section someone else has
//! locked (holding the lock is not required). Checks run in this order,
//! and a refusal changes nothing: member, editor, section id, `op_id`
//! (a remembered one answers its original version with `duplicate` and
//! sends nothing), the lock, the version, then the bounds. `base_version`
//! equal to the section's version is accepted as version + 1; behind it,
//! the policy decides (LWW accepts and alerts the member whose version was
//! replaced, if it is another member still in the story; reject refuses
//! with the current version and data); ahead of it is refused with the
//! current version and data. Versions stay below 2^53 so that JavaScript
//! clients read them exactly.
//!
//! Ids are bounded by the wire's constants, the one definition of each
//! limit ([`MAX_SECTION_ID`], [`MAX_OP_ID`]): the wire refuses longer ones
//! first (107), and the story checks again because it keeps them in
//! memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::dedupe::Applied;
use super::locks::Lock;
use super::story::{Section, Writer};
use super::{CollabError, CollabEvent, ConflictPolicy, DirectedEvent, MemberId, Role, Story};
use crate::engine::wire::ClientInfo;
use crate::engine::wire::collab::{MAX_OP_ID, MAX_SECTION_ID};

/// The largest version a section reaches (2^53 - 1, exact in JavaScript).
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// A granted or renewed lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockOk {
    /// Section id.
    pub section: Arc<str>,
    /// The holder (the caller).
    pub holder: ClientInfo,
    /// When it lapses unless renewed, on the caller's clock (ms).
    pub expires_ms: u64,
}

/// An accepted update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpdateOk {
    /// The section's version written by this update.
    pub version: u64,
    /// The `op_id` was seen before: this is the original answer and the
    /// update was not applied again.
    pub duplicate: bool,
}

/// Whether `id` is a valid section id: 1..=[`MAX_SECTION_ID`] bytes, no
/// control characters.
pub fn valid_section_id(id: &str) -> bool {
    (1..=MAX_SECTION_ID).contains(&id.len()) && !id.chars().any(char::is_control)
}

/// Whether `op_id` is a valid `op_id`: 1..=[`MAX_OP_ID`] bytes.
pub fn valid_op_id(op_id: &str) -> bool {
    (1..=MAX_OP_ID).contains(&op_id.len())
}

impl Story {
    /// `lock`: `member` takes or renews the lock of `section` for `ttl`
    /// (`lock_ttl` when `None`, at most `lock_ttl_max`).
    pub fn lock(
        &mut self,
        member: MemberId,
        section: &str,
        ttl: Option<Duration>,
        now_ms: u64,
        events: &mut Vec<CollabEvent>,
    ) -> Result<LockOk, CollabError> {
        self.tick(now_ms, events);
        let who = self.editor(member)?.clone();
        if !valid_section_id(section) {
            return Err(CollabError::BadSection);
        }
        let ttl_ms = match ttl {
            None => self.cfg.lock_ttl_ms(),
            Some(d) if d.is_zero() => return Err(CollabError::BadTtl),
            Some(d) => (d.as_millis().min(u128::from(self.cfg.lock_ttl_max_ms())) as u64).max(1),
        };
        let expires_at = now_ms.saturating_add(ttl_ms);
        if !self.sections.contains_key(section) {
            if self.sections.len() >= self.cfg.max_sections {
                return Err(CollabError::TooManySections);
            }
            let id: Arc<str> = section.into();
            self.sections.insert(id.clone(), Section::empty(id));
        }
        let s = self.sections.get_mut(section).expect("present or inserted");
        match s.lock.as_mut() {
            Some(l) if l.member == Some(member) => {
                l.expires_at = expires_at;
                self.timers.schedule(&s.id, l);
            }
            Some(l) => {
                return Err(CollabError::SectionLocked {
                    holder: l.holder.clone(),
                });
            }
            None => {
                let l = s.lock.insert(Lock {
                    holder: who.clone(),
                    member: Some(member),
                    expires_at,
                    grace_until: None,
                    generation: 0,
                });
                self.timers.schedule(&s.id, l);
                self.locks += 1;
                events.push(CollabEvent::Lock {
                    section: s.id.clone(),
                    holder: Some(who.clone()),
                });
            }
        }
        let section = s.id.clone();
        self.settle();
        Ok(LockOk {
            section,
            holder: who,
            expires_ms: expires_at,
        })
    }

    /// `unlock`: `member` releases its lock of `section`. Unlocking a
    /// section nobody holds answers `Ok(false)` (a retry after a lost
    /// reply); one another member holds is refused.
    pub fn unlock(
        &mut self,
        member: MemberId,
        section: &str,
        now_ms: u64,
        events: &mut Vec<CollabEvent>,
    ) -> Result<bool, CollabError> {
        self.tick(now_ms, events);
        self.editor(member)?;
        if !valid_section_id(section) {
            return Err(CollabError::BadSection);
        }
        let Some(lock) = self.sections.get(section).and_then(|s| s.lock.as_ref()) else {
            return Ok(false);
        };
        if lock.member != Some(member) {
            return Err(CollabError::NotHolder {
                holder: lock.holder.clone(),
            });
        }
        self.release(section, events);
        self.settle();
        Ok(true)
    }

    /// `update`: `member` writes `data` to `section` on top of
    /// `base_version`. `op_id` (1..=[`MAX_OP_ID`] bytes, required as on
    /// the wire) makes a resend harmless.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        member: MemberId,
        section: &str,
        base_version: u64,
        data: Bytes,
        op_id: &str,
        now_ms: u64,
        events: &mut Vec<CollabEvent>,
    ) -> Result<UpdateOk, CollabError> {
        self.tick(now_ms, events);
        let who = self.editor(member)?.clone();
        if !valid_section_id(section) {
            return Err(CollabError::BadSection);
        }
        if !valid_op_id(op_id) {
            return Err(CollabError::BadOpId);
        }
        if let Some(a) = self.ops.get(&who, op_id) {
            return if &*a.section == section {
                Ok(UpdateOk {
                    version: a.version,
                    duplicate: true,
                })
            } else {
                Err(CollabError::OpIdReused)
            };
        }
        let current = self.sections.get(section);
        if let Some(l) = current.and_then(|s| s.lock.as_ref())
            && l.member != Some(member)
        {
            return Err(CollabError::SectionLocked {
                holder: l.holder.clone(),
            });
        }
        let (version, old_len) = current.map_or((0, 0), |s| (s.version, s.data.len()));
        let current_data = || current.map_or_else(Bytes::new, |s| s.data.clone());
        if base_version > version {
            return Err(CollabError::BadVersion {
                version,
                data: current_data(),
            });
        }
        let stale = base_version < version;
        if stale && self.cfg.conflict == ConflictPolicy::Reject {
            return Err(CollabError::VersionConflict {
                version,
                data: current_data(),
            });
        }
        if current.is_none() && self.sections.len() >= self.cfg.max_sections {
            return Err(CollabError::TooManySections);
        }
        if data.len() > self.cfg.max_section_bytes
            || self.bytes - old_len + data.len() > self.cfg.max_story_bytes
            || version >= MAX_VERSION
        {
            return Err(CollabError::TooLarge);
        }

        // Accepted.
        let s = match self.sections.get_mut(section) {
            Some(s) => s,
            None => {
                let id: Arc<str> = section.into();
                self.sections
                    .entry(id.clone())
                    .or_insert_with(|| Section::empty(id))
            }
        };
        let version = s.version + 1;
        s.version = version;
        let overwritten = std::mem::replace(&mut s.data, data.clone());
        let writer = s.writer.replace(Writer {
            member: Some(member),
            who: who.clone(),
        });
        let id = s.id.clone();
        self.bytes = self.bytes - old_len + data.len();
        events.push(CollabEvent::Update {
            section: id.clone(),
            version,
            data,
            by: who.clone(),
        });
        if stale
            && let Some(to) = writer.and_then(|w| w.member)
            && to != member
            && self.members.contains_key(&to)
        {
            events.push(CollabEvent::Directed {
                to,
                event: DirectedEvent::Conflict {
                    section: id.clone(),
                    version,
                    overwritten,
                    by: who.clone(),
                },
            });
        }
        self.ops.record(
            &who,
            op_id,
            Applied {
                section: id,
                version,
            },
        );
        Ok(UpdateOk {
            version,
            duplicate: false,
        })
    }

    /// Releases the locks that lapsed by `now_ms` (ttl or grace), with a
    /// `Lock` event each, then the editor slots held past their grace
    /// (promoting the first in line). Returns how many locks. Every other
    /// call does this first, so the caller needs it only at
    /// [`Story::next_deadline`].
    pub fn tick(&mut self, now_ms: u64, events: &mut Vec<CollabEvent>) -> usize {
        let released = self.lapse(now_ms, events);
        self.announce_queue(events);
        self.settle();
        released
    }

    /// [`Story::tick`] without telling the line of its moves: for calls
    /// that change membership after it and tell the line at their end.
    pub(super) fn lapse(&mut self, now_ms: u64, events: &mut Vec<CollabEvent>) -> usize {
        let mut released = 0;
        while let Some((at, generation, _)) = self.timers.peek() {
            if at > now_ms {
                break;
            }
            let (_, _, section) = self.timers.pop().expect("peeked");
            let current = self
                .sections
                .get(&section)
                .and_then(|s| s.lock.as_ref())
                .map(|l| l.generation);
            if current == Some(generation) {
                self.release(&section, events);
                released += 1;
            }
        }
        self.release_held(now_ms, events);
        self.settle();
        released
    }

    /// The member's identity if it is an editor, else why not.
    fn editor(&self, member: MemberId) -> Result<&ClientInfo, CollabError> {
        match self.members.get(&member) {
            None => Err(CollabError::NotMember),
            Some(m) if m.role != Role::Editor => Err(CollabError::NotEditor),
            Some(m) => Ok(&m.who),
        }
    }

    /// Drops `section`'s lock (if any) and tells everyone; a section never
    /// written goes with it.
    fn release(&mut self, section: &str, events: &mut Vec<CollabEvent>) {
        let Some(s) = self.sections.get_mut(section) else {
            return;
        };
        let Some(lock) = s.lock.take() else {
            return;
        };
        self.locks -= 1;
        if lock.member.is_none() {
            self.grace_locks -= 1;
        }
        events.push(CollabEvent::Lock {
            section: s.id.clone(),
            holder: None,
        });
        if !s.is_kept() {
            self.sections.remove(section);
        }
    }

    /// Keeps the lock timers exact and bounded (see `locks.rs`).
    pub(super) fn settle(&mut self) {
        let sections = &self.sections;
        self.timers.settle(self.locks, |id| {
            sections
                .get(id)
                .and_then(|s| s.lock.as_ref())
                .map(|l| l.generation)
        });
    }
}
