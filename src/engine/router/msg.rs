//! Messages between the routers of different shards. They travel through
//! the shards' bounded inboxes (`crate::bridge`); docs/THREADS.md lists
//! each kind, its bound and what happens when the inbox is full.

use std::sync::Arc;

use crate::engine::codes::ErrorCode;
use crate::engine::hub::Position;
use crate::engine::subs::ConnRef;
use crate::engine::wire::publication::{PubData, SharedPub};

/// Where the answer to a command goes: a connection on the asking shard
/// and the command's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The connection.
    pub conn: ConnRef,
    /// Its command id.
    pub cmd_id: u32,
}

/// A message from one shard's router to another's.
#[derive(Debug)]
pub enum Msg {
    /// To a channel's home: shard `from` has (`on`) or no longer has
    /// subscribers for `channel`.
    Interest {
        /// Channel name.
        channel: Arc<str>,
        /// Sending shard.
        from: usize,
        /// Listening or not.
        on: bool,
    },
    /// Home → shard: answer to `Interest { on: true }`.
    InterestAck {
        /// Channel name.
        channel: Arc<str>,
        /// Position after which the shard receives every publication.
        position: Position,
    },
    /// To a channel's home: publish.
    Publish {
        /// Channel name.
        channel: Arc<str>,
        /// Payload.
        data: PubData,
        /// Sending shard.
        from: usize,
        /// Who gets the reply.
        reply_to: ReplyTo,
    },
    /// Home → publishing shard: the result of a publish.
    PublishAck {
        /// Who gets the reply.
        reply_to: ReplyTo,
        /// Offset assigned, or the error.
        result: Result<u64, ErrorCode>,
    },
    /// Home → shard with subscribers: a publication.
    Deliver(Arc<SharedPub>),
    /// Home → shard: a `Deliver` for this channel could not be queued;
    /// its subscribers on the shard must recover.
    Lost {
        /// Channel name.
        channel: Arc<str>,
    },
}

impl Msg {
    /// What kind of message this is, for metrics.
    pub fn kind(&self) -> MsgKind {
        match self {
            Msg::Interest { .. } => MsgKind::Interest,
            Msg::InterestAck { .. } => MsgKind::InterestAck,
            Msg::Publish { .. } => MsgKind::Publish,
            Msg::PublishAck { .. } => MsgKind::PublishAck,
            Msg::Deliver(_) => MsgKind::Deliver,
            Msg::Lost { .. } => MsgKind::Lost,
        }
    }

    /// Whether a sender may give up on this message when the receiver's
    /// inbox and the sender's overflow queue are both full. Everything
    /// else (acks, interest-off, loss notices) must arrive, or the two
    /// shards would disagree about a channel's state.
    pub fn refusable(&self) -> bool {
        matches!(
            self,
            Msg::Publish { .. } | Msg::Deliver(_) | Msg::Interest { on: true, .. }
        )
    }
}

/// The kind of a message between threads, without its data
/// (`queue_full{kind}`): every [`Msg`] kind, and the shell's `Drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    /// [`Msg::Interest`].
    Interest,
    /// [`Msg::InterestAck`].
    InterestAck,
    /// [`Msg::Publish`].
    Publish,
    /// [`Msg::PublishAck`].
    PublishAck,
    /// [`Msg::Deliver`].
    Deliver,
    /// [`Msg::Lost`].
    Lost,
    /// The shell's control message that starts a drain.
    Drain,
}

impl MsgKind {
    /// Every kind; each has a `queue_full` series from the start.
    pub const ALL: [MsgKind; 7] = [
        MsgKind::Interest,
        MsgKind::InterestAck,
        MsgKind::Publish,
        MsgKind::PublishAck,
        MsgKind::Deliver,
        MsgKind::Lost,
        MsgKind::Drain,
    ];

    /// Short name for metrics (the `kind` label).
    pub const fn label(self) -> &'static str {
        match self {
            MsgKind::Interest => "interest",
            MsgKind::InterestAck => "interest_ack",
            MsgKind::Publish => "publish",
            MsgKind::PublishAck => "publish_ack",
            MsgKind::Deliver => "deliver",
            MsgKind::Lost => "lost",
            MsgKind::Drain => "drain",
        }
    }
}
