//! Cross-thread messages and the bounded queues that carry them.
//!
//! Every shard has one [`Inbox`]: a bounded lock-free queue plus an eventfd
//! doorbell that the shard's event loop watches. Any thread may push; only
//! the owning shard pops. docs/THREADS.md lists each message kind, the
//! bound and what a sender does when the inbox is full.

use std::sync::Arc;
use std::time::Instant;

use crate::engine::codes::ErrorCode;
use crate::engine::hub::Position;
use crate::engine::subs::ConnRef;
use crate::engine::wire::publication::{EncodedPub, PubData};

mod inbox;

pub use inbox::Inbox;

/// Where a publish reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The publishing connection.
    pub conn: ConnRef,
    /// Its command id.
    pub cmd_id: u32,
}

/// A publication encoded once, on its way to the shards with subscribers.
#[derive(Debug)]
pub struct Delivery {
    /// Channel name.
    pub channel: Arc<str>,
    /// Offset assigned by the home.
    pub offset: u64,
    /// The frames, shared by every subscriber.
    pub frames: EncodedPub,
    /// When the home accepted it (for the latency histogram).
    pub accepted_at: Instant,
}

/// A message between threads.
#[derive(Debug)]
pub enum ShardMsg {
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
    Deliver(Arc<Delivery>),
    /// Home → shard: a `Deliver` for this channel could not be queued;
    /// its subscribers on the shard must recover.
    Lost {
        /// Channel name.
        channel: Arc<str>,
    },
    /// Control → shard: stop accepting and drain every client.
    Drain,
}

impl ShardMsg {
    /// What kind of message this is, for metrics.
    pub fn kind(&self) -> ShardMsgKind {
        match self {
            ShardMsg::Interest { .. } => ShardMsgKind::Interest,
            ShardMsg::InterestAck { .. } => ShardMsgKind::InterestAck,
            ShardMsg::Publish { .. } => ShardMsgKind::Publish,
            ShardMsg::PublishAck { .. } => ShardMsgKind::PublishAck,
            ShardMsg::Deliver(_) => ShardMsgKind::Deliver,
            ShardMsg::Lost { .. } => ShardMsgKind::Lost,
            ShardMsg::Drain => ShardMsgKind::Drain,
        }
    }
}

/// The kind of a [`ShardMsg`], without its data (`queue_full{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMsgKind {
    /// [`ShardMsg::Interest`].
    Interest,
    /// [`ShardMsg::InterestAck`].
    InterestAck,
    /// [`ShardMsg::Publish`].
    Publish,
    /// [`ShardMsg::PublishAck`].
    PublishAck,
    /// [`ShardMsg::Deliver`].
    Deliver,
    /// [`ShardMsg::Lost`].
    Lost,
    /// [`ShardMsg::Drain`].
    Drain,
}

impl ShardMsgKind {
    /// Every kind; each has a `queue_full` series from the start.
    pub const ALL: [ShardMsgKind; 7] = [
        ShardMsgKind::Interest,
        ShardMsgKind::InterestAck,
        ShardMsgKind::Publish,
        ShardMsgKind::PublishAck,
        ShardMsgKind::Deliver,
        ShardMsgKind::Lost,
        ShardMsgKind::Drain,
    ];

    /// Short name for metrics (the `kind` label).
    pub const fn label(self) -> &'static str {
        match self {
            ShardMsgKind::Interest => "interest",
            ShardMsgKind::InterestAck => "interest_ack",
            ShardMsgKind::Publish => "publish",
            ShardMsgKind::PublishAck => "publish_ack",
            ShardMsgKind::Deliver => "deliver",
            ShardMsgKind::Lost => "lost",
            ShardMsgKind::Drain => "drain",
        }
    }
}
