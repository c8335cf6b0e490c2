//! Live story collaboration: the no-I/O model of one story session (a
//! channel of a namespace with `collaboration = true`) and the per-shard
//! table of the stories a shard is home for.
//!
//! A [`Story`] holds its members (editors up to `max_editors`, viewers
//! without limit, a bounded line of queued would-be editors), its sections
//! (each a version number and the JSON text last written), the section
//! locks, and a window of recent `op_id`s for deduplicating resends. Every
//! call takes the time (`now_ms`, a monotonic shard clock) and returns its
//! answer; what others must learn is appended to a caller-owned
//! `Vec<CollabEvent>`: broadcast events for everyone in the story, and
//! [`CollabEvent::Directed`] ones for one member. The caller (the channel's
//! home in the router) turns them into publications and pushes; nothing
//! here encodes, sends or stores.
//!
//! Every decision about a story is made by one call at its home, one call
//! at a time, so "two editors in the same tick" means two calls in order:
//! the first wins.
//!
//! Layout:
//! - [`config`]: [`CollabConfig`] and the conflict policy.
//! - [`error`]: [`CollabError`], each with its wire [`ErrorCode`](crate::engine::codes::ErrorCode).
//! - `story`: [`Story`] membership (join, leave, disconnect, the queue,
//!   editor slots held through a disconnect).
//! - `edit`: locks and versioned updates on a [`Story`], and its timers.
//! - `locks`: a lock and the heap of lock deadlines.
//! - `dedupe`: the per-story window of recent `op_id`s.
//! - [`export`]: [`StoryExport`] for writing a story behind to Redis and
//!   reloading it.
//! - [`table`]: [`Stories`], a shard's stories with a cap, idle eviction
//!   and a due-time index.
//! - `snapshot`: a [`JoinOk`] as the wire's `collab_join` snapshot.

use std::sync::Arc;

use bytes::Bytes;

use crate::engine::subs::ConnRef;
use crate::engine::wire::ClientInfo;

pub mod config;
mod dedupe;
mod edit;
pub mod error;
pub mod export;
mod locks;
mod snapshot;
mod story;
pub mod table;

#[cfg(test)]
mod tests;

pub use config::{CollabConfig, ConflictPolicy};
pub use edit::{LockOk, UpdateOk};
pub use error::CollabError;
pub use export::{Imported, LockExport, SectionExport, StoryExport};
pub use story::{JoinOk, LockView, SectionView, Story};
pub use table::{Stories, StoryMut};

/// A member of a story: one connection, named by the shard it lives on
/// and its slot there. A story lives at its channel's home but its members
/// connect through any shard, so the slot alone ([`ConnRef`]) is not
/// unique at the home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId {
    /// The shard the connection lives on.
    pub shard: usize,
    /// The connection on that shard.
    pub conn: ConnRef,
}

/// The role a client asks for in `collab_join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum JoinAs {
    /// May lock and update sections (at most `max_editors` at once).
    Editor,
    /// Reads only; unlimited.
    Viewer,
}

/// A member's role in a story.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// May lock and update sections.
    Editor,
    /// Reads only.
    Viewer,
    /// Waits in line for an editor slot and reads meanwhile.
    Queued,
}

impl Role {
    /// The wire name (`"editor"`, `"viewer"`, `"queued"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Queued => "queued",
        }
    }
}

/// Something a story's members must learn. Broadcast variants go to
/// everyone in the story (the channel); [`CollabEvent::Directed`] goes to
/// one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollabEvent {
    /// A member joined, or its role changed (the latest `Join` for a
    /// client is its role): `story.user.join`.
    Join {
        /// Who.
        who: ClientInfo,
        /// Its role now.
        role: Role,
    },
    /// A member left or disconnected: `story.user.leave`.
    Leave {
        /// Who.
        who: ClientInfo,
        /// The role it had.
        role: Role,
    },
    /// A section's lock changed hands: taken (`Some`), or released,
    /// expired or lapsed after a disconnect (`None`). Renewals are silent.
    Lock {
        /// Section id.
        section: Arc<str>,
        /// The holder now, if any.
        holder: Option<ClientInfo>,
    },
    /// A section was written: `story.content.update`.
    Update {
        /// Section id.
        section: Arc<str>,
        /// Its new version.
        version: u64,
        /// The data written (JSON text, as the client sent it).
        data: Bytes,
        /// Who wrote it.
        by: ClientInfo,
    },
    /// An event for one member only.
    Directed {
        /// The member it is for.
        to: MemberId,
        /// What it says.
        event: DirectedEvent,
    },
}

/// An event for one member.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DirectedEvent {
    /// The member left the queue and now has `role` (always
    /// [`Role::Editor`]): the `promoted` push.
    Promoted {
        /// Its role now.
        role: Role,
    },
    /// Under last-write-wins, someone wrote over the version this member
    /// wrote, from a stale base: the `conflict` push, with what was lost.
    Conflict {
        /// Section id.
        section: Arc<str>,
        /// The version that replaced the member's.
        version: u64,
        /// The member's data that was replaced.
        overwritten: Bytes,
        /// Who replaced it.
        by: ClientInfo,
    },
    /// The member waits in line and its place changed (someone ahead left
    /// the line or was promoted): the `queue` push.
    Queue {
        /// Its place now (1 = next), as in the join's answer.
        position: usize,
    },
}
