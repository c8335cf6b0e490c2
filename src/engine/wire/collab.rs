//! The wire forms of story collaboration (issue 9): the protocol-neutral
//! types of the `collab_join`, `collab_leave`, `lock`, `unlock` and
//! `update` commands, their replies, the errors that carry extra fields
//! (118 section locked, 119 version conflict), the `promoted`, `conflict`
//! and `queue` pushes, and the broadcast story events.
//!
//! Story events (`update`, `lock`, `story.user.join`, `story.user.leave`)
//! are ordinary channel publications, so they get offsets, history and
//! recovery: [`update_event`] and its siblings build their `data` — a JSON
//! object with one key naming the event — once, as bytes that go unchanged
//! into both forms' publications (`PubData { bytes, is_json: true }`).
//!
//! The JSON form is in `json/collab.rs`, the FlatBuffers form in
//! `binary/collab.rs`; docs/PROTOCOL.md (Story collaboration) is the prose
//! contract.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::publication::Publication;
use super::{ClientInfo, FrameWriter, Method, json};
use crate::engine::codes::ErrorCode;
use crate::engine::ws::handshake::WireFormat;

/// Longest section id accepted, in bytes (ids are 1..=128 bytes). The one
/// definition of the limit: the story model (`engine::collab`) checks ids
/// against it too.
pub const MAX_SECTION_ID: usize = 128;

/// Longest `op_id` accepted, in bytes (ids are 1..=64 bytes). The one
/// definition of the limit: the story model (`engine::collab`) checks
/// `op_id`s against it too.
pub const MAX_OP_ID: usize = 64;

/// Event key of an accepted update (the seed's `story.content.update`).
pub const EVENT_UPDATE: &str = "update";
/// Event key of a lock taken, renewed or released.
pub const EVENT_LOCK: &str = "lock";
/// Event key of a member joining a story.
pub const EVENT_USER_JOIN: &str = "story.user.join";
/// Event key of a member leaving a story.
pub const EVENT_USER_LEAVE: &str = "story.user.leave";

/// The role a `collab_join` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CollabRole {
    /// May lock sections and send updates (at most `max_editors`).
    Editor,
    /// Reads the story (unlimited).
    Viewer,
}

/// The role a story member has: what the `collab_join` reply and the
/// `story.user.join` event report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberRole {
    /// An editor.
    Editor,
    /// A viewer.
    Viewer,
    /// Asked to edit with `queue: true` while the editors were full: waits
    /// for a slot (`queue` pushes say when its place changes, a `promoted`
    /// push when it has one).
    Queued,
}

impl MemberRole {
    /// The role's name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            MemberRole::Editor => "editor",
            MemberRole::Viewer => "viewer",
            MemberRole::Queued => "queued",
        }
    }
}

impl From<CollabRole> for MemberRole {
    fn from(role: CollabRole) -> Self {
        match role {
            CollabRole::Editor => MemberRole::Editor,
            CollabRole::Viewer => MemberRole::Viewer,
        }
    }
}

/// A connection named without its `info`: a lock holder, or a member
/// leaving. On the wire `{"user": …, "client": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId<'a> {
    /// User id (empty when anonymous).
    pub user: &'a str,
    /// Client id.
    pub client: &'a str,
}

impl<'a> From<&'a ClientInfo> for MemberId<'a> {
    fn from(info: &'a ClientInfo) -> Self {
        MemberId {
            user: &info.user,
            client: &info.client,
        }
    }
}

/// A [`MemberId`], owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberBuf {
    /// User id (empty when anonymous).
    pub user: Arc<str>,
    /// Client id.
    pub client: Arc<str>,
}

impl MemberBuf {
    /// Borrowed.
    pub fn as_id(&self) -> MemberId<'_> {
        MemberId {
            user: &self.user,
            client: &self.client,
        }
    }
}

/// One section of a story as a `collab_join` snapshot shows it, borrowed
/// from wherever the story keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionView<'a> {
    /// Section id (1..=128 bytes).
    pub id: &'a str,
    /// Current version (0 before the first update).
    pub version: u64,
    /// Current data: JSON text (validated when it came in).
    pub data: &'a [u8],
    /// Who holds the section's lock, if anyone.
    pub holder: Option<MemberId<'a>>,
}

/// A story's editors and sections, as the `collab_join` reply shows them.
/// The story model implements it on its own state, so a snapshot is
/// encoded straight from there (no copy per section); [`StorySnapshotBuf`]
/// is the owned form for answers that cross shards.
pub trait StorySnapshot {
    /// Calls `f` with each editor, in the order they became editors.
    fn each_editor(&self, f: &mut dyn FnMut(&ClientInfo));
    /// Calls `f` with each section once, in any order (JSON keeps it; the
    /// binary form sorts by id).
    fn each_section<'s>(&'s self, f: &mut dyn FnMut(SectionView<'s>));
}

/// The editors and sections of a snapshot, collected (tests, `Debug`,
/// equality).
fn collect(s: &dyn StorySnapshot) -> (Vec<ClientInfo>, Vec<SectionView<'_>>) {
    let mut editors = Vec::new();
    s.each_editor(&mut |e| editors.push(e.clone()));
    let mut sections = Vec::new();
    s.each_section(&mut |v| sections.push(v));
    (editors, sections)
}

impl fmt::Debug for dyn StorySnapshot + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (editors, sections) = collect(self);
        f.debug_struct("StorySnapshot")
            .field("editors", &editors)
            .field("sections", &sections)
            .finish()
    }
}

/// Same editors and same sections, in the same order.
impl PartialEq for dyn StorySnapshot + '_ {
    fn eq(&self, other: &Self) -> bool {
        collect(self) == collect(other)
    }
}

impl Eq for dyn StorySnapshot + '_ {}

/// One section, owned (see [`StorySnapshotBuf`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionBuf {
    /// Section id.
    pub id: Arc<str>,
    /// Current version.
    pub version: u64,
    /// Current data: JSON text.
    pub data: Bytes,
    /// Who holds the section's lock, if anyone.
    pub holder: Option<MemberBuf>,
}

/// A story snapshot, owned: what a channel's home sends back to the shard
/// of a connection that joined from another shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorySnapshotBuf {
    /// The editors, in the order they became editors.
    pub editors: Vec<ClientInfo>,
    /// The sections.
    pub sections: Vec<SectionBuf>,
}

impl StorySnapshot for StorySnapshotBuf {
    fn each_editor(&self, f: &mut dyn FnMut(&ClientInfo)) {
        self.editors.iter().for_each(f);
    }

    fn each_section<'s>(&'s self, f: &mut dyn FnMut(SectionView<'s>)) {
        for s in &self.sections {
            f(SectionView {
                id: &s.id,
                version: s.version,
                data: &s.data,
                holder: s.holder.as_ref().map(MemberBuf::as_id),
            });
        }
    }
}

/// The result of `collab_join` (see [`ReplyBody::CollabJoin`](super::ReplyBody)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollabJoinReply<'a> {
    /// The role the connection got.
    pub role: MemberRole,
    /// Place in line (1 = next) — `Some` only with [`MemberRole::Queued`].
    pub position: Option<u32>,
    /// How many viewers the story has.
    pub viewers: u32,
    /// How many members wait in line for an editor slot.
    pub queued: u32,
    /// The story channel's position: publications (story events) after
    /// `offset` in `epoch` follow the reply, as after `subscribe`.
    pub epoch: u64,
    /// See `epoch`.
    pub offset: u64,
    /// The editors and sections.
    pub story: &'a dyn StorySnapshot,
    /// The join asked to recover (`recover: true`): only then do
    /// `recovered` and `publications` go on the wire (JSON keys present;
    /// FlatBuffers `publications` set, possibly empty).
    pub recovering: bool,
    /// `recovered`: every event after the client's position is in
    /// `publications` (sent only when the join asked to recover); the
    /// snapshot is always the state at `offset`.
    pub recovered: bool,
    /// The story events the client missed, oldest first, encoded as in
    /// the `subscribe` reply (empty unless `recovering`).
    pub publications: &'a [Publication],
}

/// An error reply that carries more than its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDetail<'a> {
    /// 118: the section is locked by `holder`.
    SectionLocked {
        /// The lock's holder.
        holder: MemberId<'a>,
    },
    /// 119: the update's `base_version` is stale (`conflict = "reject"`):
    /// the section's current version and data, to rebase on.
    VersionConflict {
        /// Current version.
        version: u64,
        /// Current data: JSON text.
        data: &'a [u8],
    },
}

impl ErrorDetail<'_> {
    /// The error's code.
    pub const fn code(&self) -> ErrorCode {
        match self {
            ErrorDetail::SectionLocked { .. } => ErrorCode::SectionLocked,
            ErrorDetail::VersionConflict { .. } => ErrorCode::VersionConflict,
        }
    }
}

// Parameter rules shared by both forms.

/// A section id: 1..=[`MAX_SECTION_ID`] bytes.
fn section(s: Cow<'_, str>) -> Result<Cow<'_, str>, ErrorCode> {
    if (1..=MAX_SECTION_ID).contains(&s.len()) {
        Ok(s)
    } else {
        Err(ErrorCode::BadRequest)
    }
}

/// `collab_join`: `epoch`/`offset`/`recover` as in `subscribe`.
pub(super) fn collab_join<'a>(
    channel: Cow<'a, str>,
    role: CollabRole,
    queue: bool,
    recover: bool,
    epoch: Option<&str>,
    offset: Option<u64>,
) -> Result<Method<'a>, ErrorCode> {
    let since = super::position(epoch, offset)?;
    if recover && since.is_none() {
        return Err(ErrorCode::BadRequest);
    }
    Ok(Method::CollabJoin {
        channel,
        role,
        queue,
        recover,
        since,
    })
}

/// `lock`.
pub(super) fn lock<'a>(
    channel: Cow<'a, str>,
    section_id: Cow<'a, str>,
    ttl: Option<u32>,
) -> Result<Method<'a>, ErrorCode> {
    Ok(Method::Lock {
        channel,
        section: section(section_id)?,
        ttl,
    })
}

/// `unlock`.
pub(super) fn unlock<'a>(
    channel: Cow<'a, str>,
    section_id: Cow<'a, str>,
) -> Result<Method<'a>, ErrorCode> {
    Ok(Method::Unlock {
        channel,
        section: section(section_id)?,
    })
}

/// `update`: `data` is JSON text (each form checks that); `op_id` is
/// 1..=[`MAX_OP_ID`] bytes.
pub(super) fn update<'a>(
    channel: Cow<'a, str>,
    section_id: Cow<'a, str>,
    base_version: u64,
    data: &'a [u8],
    op_id: Cow<'a, str>,
) -> Result<Method<'a>, ErrorCode> {
    if !(1..=MAX_OP_ID).contains(&op_id.len()) {
        return Err(ErrorCode::BadRequest);
    }
    Ok(Method::Update {
        channel,
        section: section(section_id)?,
        base_version,
        data,
        op_id,
    })
}

// Story events: the `data` of story channel publications.

/// `{"update":{"section":…,"version":N,"data":<json>,"by":{"user":…,
/// "client":…,"info"?:…}}}`: an accepted update. `data` is JSON text.
pub fn update_event(section: &str, version: u64, data: &[u8], by: &ClientInfo) -> Bytes {
    let mut out = Vec::with_capacity(96 + section.len() + data.len() + info_len(by));
    json::collab::write_update_event(&mut out, section, version, data, by);
    Bytes::from(out)
}

/// `{"lock":{"section":…,"holder":{"user":…,"client":…}|null,
/// "expires"?:N}}`: a lock taken or renewed (`holder` and `expires`, Unix
/// milliseconds), or released (`holder` `None`, no `expires`).
pub fn lock_event(section: &str, holder: Option<MemberId<'_>>, expires: Option<u64>) -> Bytes {
    let mut out = Vec::with_capacity(96 + section.len() + holder.map_or(0, id_len));
    json::collab::write_lock_event(&mut out, section, holder, expires);
    Bytes::from(out)
}

/// `{"story.user.join":{"user":…,"client":…,"info"?:…,"role":…}}`: `who`
/// joined the story as `role`.
pub fn user_join_event(who: &ClientInfo, role: MemberRole) -> Bytes {
    let mut out = Vec::with_capacity(64 + info_len(who));
    json::collab::write_user_join_event(&mut out, who, role);
    Bytes::from(out)
}

/// `{"story.user.leave":{"user":…,"client":…}}`: `who` left the story.
pub fn user_leave_event(who: MemberId<'_>) -> Bytes {
    let mut out = Vec::with_capacity(48 + id_len(who));
    json::collab::write_user_leave_event(&mut out, who);
    Bytes::from(out)
}

/// Roughly the bytes a client info takes (a capacity hint).
fn info_len(info: &ClientInfo) -> usize {
    info.user.len() + info.client.len() + info.info.as_ref().map_or(0, |i| i.len())
}

fn id_len(id: MemberId<'_>) -> usize {
    id.user.len() + id.client.len()
}

// The pushes to one connection.

impl FrameWriter {
    /// Adds a `promoted` push: this connection, queued for an editor slot
    /// of the story `channel`, is now an editor.
    pub fn promoted(&mut self, channel: &str) {
        self.count += 1;
        match self.format {
            WireFormat::Json => json::collab::write_promoted(self.json.next_object(), channel),
            WireFormat::Binary => self.binary.promoted(channel),
        }
    }

    /// Adds a `queue` push: this connection waits in line for an editor
    /// slot of the story `channel`, now at `position` (1 = next).
    pub fn queue_position(&mut self, channel: &str, position: u32) {
        self.count += 1;
        match self.format {
            WireFormat::Json => {
                json::collab::write_queue(self.json.next_object(), channel, position)
            }
            WireFormat::Binary => self.binary.queue_position(channel, position),
        }
    }

    /// Adds a `conflict` push: `by`'s update made `section` of the story
    /// `channel` version `version`, overwriting this connection's accepted
    /// data `overwritten` (JSON text).
    pub fn conflict(
        &mut self,
        channel: &str,
        section: &str,
        version: u64,
        overwritten: &[u8],
        by: &ClientInfo,
    ) {
        self.count += 1;
        match self.format {
            WireFormat::Json => json::collab::write_conflict(
                self.json.next_object(),
                channel,
                section,
                version,
                overwritten,
                by,
            ),
            WireFormat::Binary => self
                .binary
                .conflict(channel, section, version, overwritten, by),
        }
    }
}

#[cfg(test)]
mod encode_tests;
#[cfg(test)]
mod tests;
