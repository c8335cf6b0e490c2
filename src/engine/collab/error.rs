//! Why a story refused a command, and the wire code for each reason.

use std::fmt;

use bytes::Bytes;

use crate::engine::codes::ErrorCode;
use crate::engine::wire::ClientInfo;

/// A refused story command. Refusals change nothing in the story.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CollabError {
    /// The connection has not joined the story (lock, unlock, update).
    NotMember,
    /// The member is a viewer or queued: only editors lock and update.
    NotEditor,
    /// A section id is empty, longer than
    /// [`MAX_SECTION_ID`](crate::engine::wire::collab::MAX_SECTION_ID)
    /// bytes, or holds a control character.
    BadSection,
    /// An `op_id` is empty or longer than
    /// [`MAX_OP_ID`](crate::engine::wire::collab::MAX_OP_ID) bytes.
    BadOpId,
    /// A lock `ttl` of zero.
    BadTtl,
    /// The user sent this `op_id` before (within the window) for another
    /// section: `op_id`s must be unique per user.
    OpIdReused,
    /// The story has `max_editors` editors; retry later or join with
    /// `queue: true` (temporary).
    EditorsFull,
    /// The line for editor slots holds `queue_max` members.
    QueueFull,
    /// Another member holds the section's lock.
    SectionLocked {
        /// Who holds it.
        holder: ClientInfo,
    },
    /// `unlock` of a section whose lock another member holds.
    NotHolder {
        /// Who holds it.
        holder: ClientInfo,
    },
    /// Policy `reject`: `base_version` is behind the section; rebase on the
    /// current version and data and resend.
    VersionConflict {
        /// The section's current version.
        version: u64,
        /// The section's current data.
        data: Bytes,
    },
    /// `base_version` is ahead of the section (the client saw versions
    /// this story never had, e.g. ones lost with a node before they were
    /// written behind): rebase on the current version and data.
    BadVersion {
        /// The section's current version.
        version: u64,
        /// The section's current data.
        data: Bytes,
    },
    /// A new section beyond `max_sections`.
    TooManySections,
    /// Data beyond `max_section_bytes`, or a story beyond `max_story_bytes`.
    TooLarge,
    /// The shard holds `max_stories` stories and none is empty to evict.
    TooManyStories,
}

impl CollabError {
    /// The wire code of the error reply.
    pub const fn code(&self) -> ErrorCode {
        match self {
            CollabError::NotMember | CollabError::NotEditor => ErrorCode::NotEditor,
            CollabError::BadSection
            | CollabError::BadOpId
            | CollabError::BadTtl
            | CollabError::OpIdReused => ErrorCode::BadRequest,
            CollabError::EditorsFull => ErrorCode::EditorsFull,
            CollabError::SectionLocked { .. } | CollabError::NotHolder { .. } => {
                ErrorCode::SectionLocked
            }
            CollabError::VersionConflict { .. } | CollabError::BadVersion { .. } => {
                ErrorCode::VersionConflict
            }
            CollabError::QueueFull
            | CollabError::TooManySections
            | CollabError::TooLarge
            | CollabError::TooManyStories => ErrorCode::StoryLimit,
        }
    }

    /// A short label for metrics and logs.
    pub const fn label(&self) -> &'static str {
        match self {
            CollabError::NotMember => "not_member",
            CollabError::NotEditor => "not_editor",
            CollabError::BadSection => "bad_section",
            CollabError::BadOpId => "bad_op_id",
            CollabError::BadTtl => "bad_ttl",
            CollabError::OpIdReused => "op_id_reused",
            CollabError::EditorsFull => "editors_full",
            CollabError::QueueFull => "queue_full",
            CollabError::SectionLocked { .. } => "section_locked",
            CollabError::NotHolder { .. } => "not_holder",
            CollabError::VersionConflict { .. } => "version_conflict",
            CollabError::BadVersion { .. } => "bad_version",
            CollabError::TooManySections => "too_many_sections",
            CollabError::TooLarge => "too_large",
            CollabError::TooManyStories => "too_many_stories",
        }
    }
}

impl fmt::Display for CollabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollabError::SectionLocked { holder } | CollabError::NotHolder { holder } => {
                write!(f, "section locked by user {:?}", &*holder.user)
            }
            CollabError::VersionConflict { version, .. } => {
                write!(f, "version conflict: the section is at version {version}")
            }
            CollabError::BadVersion { version, .. } => {
                write!(f, "base_version ahead: the section is at version {version}")
            }
            other => f.write_str(other.label()),
        }
    }
}

impl std::error::Error for CollabError {}
