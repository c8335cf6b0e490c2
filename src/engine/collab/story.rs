//! One story session: its members and their roles, the editor queue, and
//! the snapshot a join answers with. Sections, locks and updates are in
//! `edit.rs`; this file owns the struct.
//!
//! Rules of membership:
//! - A join as editor gets a slot while fewer than `max_editors` hold one;
//!   otherwise [`CollabError::EditorsFull`], or with `queue` a place in
//!   line (at most `queue_max`, else [`CollabError::QueueFull`]). Viewers
//!   are unlimited. Queued members read like viewers.
//! - Joining again is a role change, not an error: the same role (or
//!   `editor` while queued) answers the snapshot again and changes nothing
//!   (a client retrying a lost reply); `viewer` from editor gives the slot
//!   up (its locks are released at once); `editor` from viewer is a new
//!   request for a slot. The `Join` event carries the new role.
//! - When a slot frees (leave, editor to viewer, a held slot lapsing) the
//!   first in line becomes an editor: a `Join` with the editor role for
//!   everyone and a `Promoted` push for it.
//! - Queued members whose place in line changed (someone ahead left the
//!   line or was promoted) get a `Queue` push with the new place, once per
//!   call; a member's own join answers its first place.
//! - Leave releases the member's locks at once. Disconnect of an editor
//!   puts its locks in grace and, for a named (non-anonymous) user, holds
//!   its editor slot too: for `lock_grace` neither goes to anyone else.
//!   The first connection of the same user to become an editor within it
//!   (a reconnect re-joining, whatever its client id: the protocol names
//!   the returning client by its user only) takes the held slot ahead of
//!   the line, and the locks, with a `Lock` event naming the new
//!   connection (the holder's client id changed, and everyone's view of
//!   the holder should stay exact). When the grace lapses without it, the
//!   locks are released and the slot goes to the first in line. An
//!   anonymous editor's slot is not held (nobody could claim it back). A
//!   connection of the same user already waiting in line (a second tab)
//!   takes the slot, and the locks, at once, ahead of the line.
//! - A story with a held slot is not empty: it is not evicted from memory
//!   (idle, or to make room) until the slot is taken or lapses, since a
//!   held slot is not part of what the store keeps.
//! - Every call first releases what has lapsed by `now_ms`, so no call
//!   ever sees an expired lock or held slot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::dedupe::OpWindow;
use super::locks::{Lock, LockTimers};
use super::{CollabConfig, CollabError, CollabEvent, DirectedEvent, JoinAs, MemberId, Role};
use crate::engine::wire::ClientInfo;

/// A member of the story.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub who: ClientInfo,
    pub role: Role,
}

/// Who wrote a section's current version.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    /// The writing member, to send it a conflict alert; `None` once
    /// imported (the connection is gone).
    pub member: Option<MemberId>,
    pub who: ClientInfo,
}

/// One section of the story. A section exists once written, or while
/// locked; a never-written section is dropped with its lock.
#[derive(Debug, Clone)]
pub(super) struct Section {
    pub id: Arc<str>,
    /// 0 = never written.
    pub version: u64,
    pub data: Bytes,
    pub writer: Option<Writer>,
    pub lock: Option<Lock>,
}

/// A section as a snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SectionView {
    /// Section id.
    pub id: Arc<str>,
    /// Its version (0: locked but never written).
    pub version: u64,
    /// Its data (JSON text; empty when never written).
    pub data: Bytes,
    /// Its lock, if held.
    pub lock: Option<LockView>,
}

/// A held lock as a snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockView {
    /// Who holds it (while in grace: the disconnected connection).
    pub holder: ClientInfo,
    /// When it lapses unless renewed, on the caller's clock (ms).
    pub expires_ms: u64,
}

/// The answer to a join: the member's role and what a client needs to
/// render the story at once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinOk {
    /// The member's role now.
    pub role: Role,
    /// Its place in line (1 = next), when queued.
    pub position: Option<usize>,
    /// The editors, in the order they got their slots.
    pub editors: Vec<ClientInfo>,
    /// How many members are viewers.
    pub viewers: usize,
    /// How many members wait in line.
    pub queued: usize,
    /// Every section (written or locked), by id.
    pub sections: Vec<SectionView>,
}

/// The editor slot of an editor whose connection closed, kept for the
/// same user until `until` (its disconnect plus `lock_grace`).
#[derive(Debug, Clone)]
pub(super) struct HeldSlot {
    pub user: Arc<str>,
    pub until: u64,
}

/// One live story: members, sections, locks. See the module docs for the
/// rules; time is the `now_ms` argument of each call.
#[derive(Debug)]
pub struct Story {
    pub(super) cfg: CollabConfig,
    pub(super) members: HashMap<MemberId, Member>,
    /// Editors in the order they got their slots.
    pub(super) editors: Vec<MemberId>,
    /// Slots of disconnected editors, held for their users: they count
    /// against `max_editors` like the editors. At most `max_editors`.
    pub(super) held: Vec<HeldSlot>,
    pub(super) queue: VecDeque<MemberId>,
    /// The first index in `queue` whose member moved up during the current
    /// call (`Queue` pushes for it and everyone behind at the end).
    pub(super) queue_moved: Option<usize>,
    pub(super) viewers: usize,
    pub(super) sections: BTreeMap<Arc<str>, Section>,
    /// Bytes of section data in all.
    pub(super) bytes: usize,
    /// Sections with a lock.
    pub(super) locks: usize,
    /// Locks in grace (no member).
    pub(super) grace_locks: usize,
    pub(super) timers: LockTimers,
    pub(super) ops: OpWindow,
    /// Since when the story has had no members.
    pub(super) empty_since: Option<u64>,
}

impl Story {
    /// An empty story, created at `now_ms`.
    pub fn new(cfg: CollabConfig, now_ms: u64) -> Self {
        Self {
            cfg,
            members: HashMap::new(),
            editors: Vec::new(),
            held: Vec::new(),
            queue: VecDeque::new(),
            queue_moved: None,
            viewers: 0,
            sections: BTreeMap::new(),
            bytes: 0,
            locks: 0,
            grace_locks: 0,
            timers: LockTimers::default(),
            ops: OpWindow::new(cfg.op_id_window),
            empty_since: Some(now_ms),
        }
    }

    /// `collab_join`: `member` (a connection that is `who`) joins as
    /// `role`, or changes its role (module docs). `queue` asks for a place
    /// in line when the editor slots are full.
    pub fn join(
        &mut self,
        member: MemberId,
        who: &ClientInfo,
        role: JoinAs,
        queue: bool,
        now_ms: u64,
        events: &mut Vec<CollabEvent>,
    ) -> Result<JoinOk, CollabError> {
        self.lapse(now_ms, events);
        let joined = self.join_now(member, who, role, queue, now_ms, events);
        // Moves in line are told once, at the end of the call (also when
        // the join is refused: the leading lapse may have moved the line).
        self.announce_queue(events);
        self.settle();
        joined?;
        Ok(self.snapshot(member).expect("the member just joined"))
    }

    /// The membership change of [`Story::join`], after the lapse.
    fn join_now(
        &mut self,
        member: MemberId,
        who: &ClientInfo,
        role: JoinAs,
        queue: bool,
        now_ms: u64,
        events: &mut Vec<CollabEvent>,
    ) -> Result<(), CollabError> {
        let current = self.members.get(&member).map(|m| m.role);
        match (current, role) {
            (None, JoinAs::Viewer) => {
                self.members.insert(
                    member,
                    Member {
                        who: who.clone(),
                        role: Role::Viewer,
                    },
                );
                self.viewers += 1;
                self.empty_since = None;
                events.push(CollabEvent::Join {
                    who: who.clone(),
                    role: Role::Viewer,
                });
            }
            (None, JoinAs::Editor) => {
                let role = self.editor_role_for(who, queue)?;
                self.members.insert(
                    member,
                    Member {
                        who: who.clone(),
                        role,
                    },
                );
                self.empty_since = None;
                self.seat(member, role, now_ms, events);
            }
            (Some(Role::Editor), JoinAs::Editor)
            | (Some(Role::Viewer), JoinAs::Viewer)
            | (Some(Role::Queued), JoinAs::Editor) => {}
            (Some(Role::Queued), JoinAs::Viewer) => {
                self.unqueue(member);
                self.become_viewer(member, events);
            }
            (Some(Role::Editor), JoinAs::Viewer) => {
                self.editors.retain(|e| *e != member);
                self.release_member_locks(member, events);
                self.become_viewer(member, events);
                self.promote(now_ms, events);
            }
            (Some(Role::Viewer), JoinAs::Editor) => {
                let role = self.editor_role_for(who, queue)?;
                self.viewers -= 1;
                self.set_role(member, role);
                self.seat(member, role, now_ms, events);
            }
        }
        Ok(())
    }

    /// `collab_leave`: `member` leaves; its locks are released at once and
    /// its editor slot goes to the first in line. Returns whether it was a
    /// member (leaving twice is harmless).
    pub fn leave(&mut self, member: MemberId, now_ms: u64, events: &mut Vec<CollabEvent>) -> bool {
        self.depart(member, false, now_ms, events)
    }

    /// `member`'s connection closed: like [`Story::leave`], but an editor's
    /// locks, and (for a named user) its slot, stay for `lock_grace` in
    /// case the same user comes back as an editor.
    pub fn disconnect(
        &mut self,
        member: MemberId,
        now_ms: u64,
        events: &mut Vec<CollabEvent>,
    ) -> bool {
        self.depart(member, true, now_ms, events)
    }

    /// The snapshot `member` would get from a join now, if it is a member
    /// (e.g. for a recovering client whose missed updates are gone).
    pub fn snapshot(&self, member: MemberId) -> Option<JoinOk> {
        let role = self.members.get(&member)?.role;
        let position = (role == Role::Queued)
            .then(|| self.queue.iter().position(|m| *m == member).map(|i| i + 1))
            .flatten();
        Some(JoinOk {
            role,
            position,
            editors: self
                .editors
                .iter()
                .map(|e| self.members[e].who.clone())
                .collect(),
            viewers: self.viewers,
            queued: self.queue.len(),
            sections: self.sections.values().map(Section::view).collect(),
        })
    }

    // ---- what the table and metrics read -------------------------------------

    /// The configuration the story was made with.
    pub fn config(&self) -> &CollabConfig {
        &self.cfg
    }

    /// `member`'s role, if it is a member.
    pub fn role(&self, member: MemberId) -> Option<Role> {
        self.members.get(&member).map(|m| m.role)
    }

    /// Members (editors, viewers and queued).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Editors.
    pub fn editor_count(&self) -> usize {
        self.editors.len()
    }

    /// Viewers.
    pub fn viewer_count(&self) -> usize {
        self.viewers
    }

    /// Members waiting in line.
    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    /// Editor slots held for disconnected editors (in grace).
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Sections (written or locked).
    pub fn section_count(&self) -> usize {
        self.sections.len()
    }

    /// Locks held, including those in grace.
    pub fn lock_count(&self) -> usize {
        self.locks
    }

    /// Bytes of section data.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When `section`'s lock lapses unless renewed (ms, the caller's
    /// clock), if it is locked.
    pub fn lock_deadline(&self, section: &str) -> Option<u64> {
        self.sections
            .get(section)?
            .lock
            .as_ref()
            .map(Lock::deadline)
    }

    /// The version of `section` (0 if never written or unknown).
    pub fn version(&self, section: &str) -> u64 {
        self.sections.get(section).map_or(0, |s| s.version)
    }

    /// Since when the story has had no members, if it has none.
    pub fn empty_since(&self) -> Option<u64> {
        self.empty_since
    }

    /// Whether the story has had no members for `idle_evict` at `now_ms`
    /// and may be dropped from memory.
    pub fn is_idle(&self, now_ms: u64) -> bool {
        self.empty_since
            .is_some_and(|t| now_ms >= t.saturating_add(self.cfg.idle_evict_ms()))
    }

    /// When [`Story::tick`] next has work (a lock or a held slot
    /// lapsing), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        let lock = self.timers.peek().map(|(at, _, _)| at);
        let slot = self.held.iter().map(|h| h.until).min();
        match (lock, slot) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- membership internals ---------------------------------------------

    /// Whether an editor slot is free: neither an editor's nor held.
    fn slot_free(&self) -> bool {
        self.editors.len() + self.held.len() < self.cfg.max_editors
    }

    /// The role `who`, asking for an editor slot, gets, or why not. A slot
    /// held for its user is its own (taken here), ahead of the line.
    fn editor_role_for(&mut self, who: &ClientInfo, queue: bool) -> Result<Role, CollabError> {
        if !who.user.is_empty()
            && let Some(i) = self.held.iter().position(|h| h.user == who.user)
        {
            self.held.swap_remove(i);
            Ok(Role::Editor)
        } else if self.slot_free() {
            Ok(Role::Editor)
        } else if !queue {
            Err(CollabError::EditorsFull)
        } else if self.queue.len() >= self.cfg.queue_max {
            Err(CollabError::QueueFull)
        } else {
            Ok(Role::Queued)
        }
    }

    /// Seats `member` (already in `members` with `role`) as an editor or in
    /// line, and tells everyone.
    fn seat(&mut self, member: MemberId, role: Role, now_ms: u64, events: &mut Vec<CollabEvent>) {
        let who = self.members[&member].who.clone();
        match role {
            Role::Editor => {
                self.editors.push(member);
                events.push(CollabEvent::Join { who, role });
                self.reclaim(member, now_ms, events);
            }
            _ => {
                // Moves announced first: the newcomer's place is in its
                // answer, not in a push.
                self.announce_queue(events);
                self.queue.push_back(member);
                events.push(CollabEvent::Join { who, role });
            }
        }
    }

    fn set_role(&mut self, member: MemberId, role: Role) {
        if let Some(m) = self.members.get_mut(&member) {
            m.role = role;
        }
    }

    fn become_viewer(&mut self, member: MemberId, events: &mut Vec<CollabEvent>) {
        self.set_role(member, Role::Viewer);
        self.viewers += 1;
        events.push(CollabEvent::Join {
            who: self.members[&member].who.clone(),
            role: Role::Viewer,
        });
    }

    fn unqueue(&mut self, member: MemberId) {
        if let Some(i) = self.queue.iter().position(|m| *m == member) {
            self.queue.remove(i);
            self.queue_moved_from(i);
        }
    }

    /// Everyone in line from index `i` on moved up.
    fn queue_moved_from(&mut self, i: usize) {
        self.queue_moved = Some(self.queue_moved.map_or(i, |m| m.min(i)));
    }

    /// A `Queue` push to each member in line whose place changed since the
    /// last announcement. Every public call ends with it (after its last
    /// change to the line), so a push goes only to a member still in line,
    /// with its final place.
    pub(super) fn announce_queue(&mut self, events: &mut Vec<CollabEvent>) {
        let Some(from) = self.queue_moved.take() else {
            return;
        };
        for (i, m) in self.queue.iter().enumerate().skip(from) {
            events.push(CollabEvent::Directed {
                to: *m,
                event: DirectedEvent::Queue { position: i + 1 },
            });
        }
    }

    fn depart(
        &mut self,
        member: MemberId,
        grace: bool,
        now_ms: u64,
        events: &mut Vec<CollabEvent>,
    ) -> bool {
        self.lapse(now_ms, events);
        let Some(m) = self.members.remove(&member) else {
            self.announce_queue(events);
            self.settle();
            return false;
        };
        // A connection of the same user in line, to take the held slot.
        let mut heir = None;
        match m.role {
            Role::Editor => {
                self.editors.retain(|e| *e != member);
                if grace {
                    self.grace_member_locks(member, now_ms);
                    // The heir is seated after the departure's own events
                    // (below), so the line reads leave, then join as editor.
                    heir = self.heir_in_line(&m.who.user);
                    if heir.is_none() && !m.who.user.is_empty() {
                        self.held.push(HeldSlot {
                            user: m.who.user.clone(),
                            until: now_ms.saturating_add(self.cfg.lock_grace_ms()),
                        });
                    }
                } else {
                    self.release_member_locks(member, events);
                }
            }
            Role::Viewer => self.viewers -= 1,
            Role::Queued => self.unqueue(member),
        }
        events.push(CollabEvent::Leave {
            who: m.who,
            role: m.role,
        });
        if let Some(heir) = heir {
            self.unqueue(heir);
            self.make_editor(heir, now_ms, events);
        }
        if m.role == Role::Editor {
            self.promote(now_ms, events);
        }
        self.mark_if_empty(now_ms);
        self.announce_queue(events);
        self.settle();
        true
    }

    /// Gives up the held slots that lapsed by `now_ms` (their users did
    /// not come back within the grace) and fills them from the line.
    pub(super) fn release_held(&mut self, now_ms: u64, events: &mut Vec<CollabEvent>) {
        let before = self.held.len();
        self.held.retain(|h| h.until > now_ms);
        if self.held.len() < before {
            self.promote(now_ms, events);
            self.mark_if_empty(now_ms);
        }
    }

    /// Starts the empty clock if nobody is a member and no slot is held.
    fn mark_if_empty(&mut self, now_ms: u64) {
        if self.members.is_empty() && self.held.is_empty() && self.empty_since.is_none() {
            self.empty_since = Some(now_ms);
        }
    }

    /// The first member in line whose user is `user` (named users only).
    fn heir_in_line(&self, user: &str) -> Option<MemberId> {
        if user.is_empty() {
            return None;
        }
        self.queue
            .iter()
            .copied()
            .find(|m| &*self.members[m].who.user == user)
    }

    /// Fills free editor slots from the front of the line.
    fn promote(&mut self, now_ms: u64, events: &mut Vec<CollabEvent>) {
        while self.slot_free() {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            self.queue_moved_from(0);
            self.make_editor(next, now_ms, events);
        }
    }

    /// `member`, just taken out of the line, becomes an editor: a `Join`
    /// for everyone, `Promoted` for it, and its user's locks in grace.
    fn make_editor(&mut self, member: MemberId, now_ms: u64, events: &mut Vec<CollabEvent>) {
        self.set_role(member, Role::Editor);
        self.editors.push(member);
        events.push(CollabEvent::Join {
            who: self.members[&member].who.clone(),
            role: Role::Editor,
        });
        events.push(CollabEvent::Directed {
            to: member,
            event: DirectedEvent::Promoted { role: Role::Editor },
        });
        self.reclaim(member, now_ms, events);
    }

    /// Releases every lock `member` holds (it left or became a viewer).
    fn release_member_locks(&mut self, member: MemberId, events: &mut Vec<CollabEvent>) {
        if self.locks == self.grace_locks {
            return;
        }
        let mut released = 0;
        self.sections.retain(|id, s| {
            if s.lock.as_ref().is_some_and(|l| l.member == Some(member)) {
                s.lock = None;
                released += 1;
                events.push(CollabEvent::Lock {
                    section: id.clone(),
                    holder: None,
                });
            }
            s.is_kept()
        });
        self.locks -= released;
    }

    /// Puts every lock `member` holds in grace (its connection closed).
    fn grace_member_locks(&mut self, member: MemberId, now_ms: u64) {
        if self.locks == self.grace_locks {
            return;
        }
        let until = now_ms.saturating_add(self.cfg.lock_grace_ms());
        for s in self.sections.values_mut() {
            if let Some(l) = s.lock.as_mut().filter(|l| l.member == Some(member)) {
                l.member = None;
                l.grace_until = Some(until);
                self.grace_locks += 1;
                self.timers.schedule(&s.id, l);
            }
        }
    }

    /// `member` just became an editor: it takes over the locks in grace of
    /// its user (not for anonymous users, who are all `""`).
    fn reclaim(&mut self, member: MemberId, now_ms: u64, events: &mut Vec<CollabEvent>) {
        if self.grace_locks == 0 {
            return;
        }
        let who = &self.members[&member].who;
        if who.user.is_empty() {
            return;
        }
        for s in self.sections.values_mut() {
            let Some(l) = s.lock.as_mut() else { continue };
            if l.member.is_some() || l.holder.user != who.user || !l.holds_at(now_ms) {
                continue;
            }
            l.member = Some(member);
            l.holder = who.clone();
            l.grace_until = None;
            self.grace_locks -= 1;
            self.timers.schedule(&s.id, l);
            events.push(CollabEvent::Lock {
                section: s.id.clone(),
                holder: Some(who.clone()),
            });
        }
    }
}

impl Section {
    /// A section with nothing written and no lock yet.
    pub(super) fn empty(id: Arc<str>) -> Self {
        Self {
            id,
            version: 0,
            data: Bytes::new(),
            writer: None,
            lock: None,
        }
    }

    /// Whether the section is worth keeping (written, or locked).
    pub(super) fn is_kept(&self) -> bool {
        self.version > 0 || self.lock.is_some()
    }

    fn view(&self) -> SectionView {
        SectionView {
            id: self.id.clone(),
            version: self.version,
            data: self.data.clone(),
            lock: self.lock.as_ref().map(|l| LockView {
                holder: l.holder.clone(),
                expires_ms: l.deadline(),
            }),
        }
    }
}
