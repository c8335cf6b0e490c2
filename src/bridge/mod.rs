//! Cross-thread messages and the bounded queues that carry them.
//!
//! Every shard has one [`Inbox`]: a bounded lock-free queue plus an eventfd
//! doorbell that the shard's event loop watches. Any thread may push; only
//! the owning shard pops. docs/THREADS.md lists each message kind, the
//! bound and what a sender does when the inbox is full.

use crate::engine::router::Msg;
pub use crate::engine::router::MsgKind as ShardMsgKind;

pub mod api;
mod inbox;
pub mod rpc;
pub mod story;
pub mod ticket;

pub use api::{ApiAnswer, ApiCall, ApiOp};
pub use inbox::Inbox;
pub use rpc::{CallKind, RpcAnswer, RpcOutcome};
pub use story::{
    LockRecord, SectionRecord, StoryChange, StoryLoad, StoryLoadAnswer, StoryRecord,
    StoryStoreError, StoryWrite,
};
pub use ticket::{TicketAnswer, TicketClaims, TicketError, TicketVerdict};

/// A message between threads.
#[derive(Debug)]
pub enum ShardMsg {
    /// From another shard's channel router.
    Router(Msg),
    /// From the server API sidecar.
    Api(Box<ApiCall>),
    /// From the ticket sidecar: the result of a `connect {ticket}`
    /// redemption for a connection waiting on this shard.
    Ticket(Box<TicketAnswer>),
    /// From the story sidecar: a story read back from Redis, for the
    /// shard that asked (`StoryClient::load`).
    StoryLoaded(Box<StoryLoadAnswer>),
    /// Control → shard: stop accepting and drain every client.
    Drain,
    /// From the NATS worker: a message from another node, for the
    /// channel's home shard on this node (its home or its relay).
    Cluster(Box<crate::engine::router::FromNode>),
    /// From the NATS worker: the live set or the link changed; the shard
    /// reads the new state (`shard::cluster::ShardCluster::changes`).
    ClusterChanged,
    /// From the RPC sidecar: how a connection's `rpc` or `send` ended.
    Rpc(Box<RpcAnswer>),
    /// From another shard, or from another node through the cluster sink:
    /// an SSE command post for a stream of this shard. The answer goes back
    /// as [`SsePost::reply`] says.
    SsePost(Box<SsePost>),
}

/// An SSE command post that reached a shard other than its stream's.
#[derive(Debug)]
pub struct SsePost {
    /// The stream session it names.
    pub target: crate::engine::sse::SessionId,
    /// The commands (one or more JSON objects, `\n`-separated).
    pub body: Vec<u8>,
    /// Where the answer goes.
    pub reply: PostReply,
}

/// Where the answer to an [`SsePost`] goes.
#[derive(Debug)]
pub enum PostReply {
    /// To a shard of this node, through its inbox
    /// ([`Inbox::sse_answered`]).
    Shard {
        /// The shard holding the post's connection.
        from: usize,
        /// The post's connection there.
        post: crate::engine::subs::ConnRef,
    },
    /// To another node, in an `AnswerFrame` on its `home.<name>` subject.
    Node {
        /// The node holding the post.
        node: std::sync::Arc<str>,
        /// Its shard holding the post's connection.
        shard: u16,
        /// The post's connection there.
        post: crate::engine::subs::ConnRef,
    },
}

impl ShardMsg {
    /// What kind of message this is, for metrics.
    pub fn kind(&self) -> ShardMsgKind {
        match self {
            ShardMsg::Router(m) => m.kind(),
            ShardMsg::Api(_) => ShardMsgKind::Api,
            ShardMsg::Ticket(_) => ShardMsgKind::Ticket,
            ShardMsg::StoryLoaded(_) => ShardMsgKind::StoryLoaded,
            ShardMsg::Drain => ShardMsgKind::Drain,
            ShardMsg::Cluster(_) => ShardMsgKind::Cluster,
            ShardMsg::ClusterChanged => ShardMsgKind::ClusterChanged,
            ShardMsg::Rpc(_) => ShardMsgKind::Rpc,
            ShardMsg::SsePost(_) => ShardMsgKind::SsePost,
        }
    }
}
