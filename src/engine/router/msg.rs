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
    /// Short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Interest { .. } => "interest",
            Msg::InterestAck { .. } => "interest_ack",
            Msg::Publish { .. } => "publish",
            Msg::PublishAck { .. } => "publish_ack",
            Msg::Deliver(_) => "deliver",
            Msg::Lost { .. } => "lost",
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
