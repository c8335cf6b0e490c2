//! Messages between the routers of different shards. They travel through
//! the shards' bounded inboxes (`crate::bridge`); docs/THREADS.md lists
//! each kind, its bound and what happens when the inbox is full.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::engine::codes::ErrorCode;
use crate::engine::collab::{CollabError, DirectedEvent, JoinAs, JoinOk, LockOk, UpdateOk};
use crate::engine::history::{HistoryQuery, Recovery};
use crate::engine::hub::Position;
use crate::engine::subs::ConnRef;
use crate::engine::wire::collab::{CollabJoinReply, ErrorDetail, MemberId};
use crate::engine::wire::publication::{PubData, Publication, SharedPub};
use crate::engine::wire::{ClientInfo, PresenceEntry, ReplyBody};

/// Where the answer to a command goes: a connection on the asking shard
/// and the command's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplyTo {
    /// The connection.
    pub conn: ConnRef,
    /// Its command id.
    pub cmd_id: u32,
}

/// The owned answer to a command that the channel's home computed, on
/// its way back to the asking shard.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Answer {
    /// `publish`: the offset assigned (or the original one, for a repeated
    /// idempotency key).
    Publish {
        /// Offset of the publication.
        offset: u64,
    },
    /// `history`.
    History {
        /// The channel's current position.
        position: Position,
        /// The publications selected.
        publications: Vec<Publication>,
    },
    /// `presence`.
    Presence {
        /// Every member.
        clients: Vec<PresenceEntry>,
    },
    /// `presence_stats`.
    PresenceStats {
        /// Connections present.
        num_clients: u64,
        /// Distinct users present.
        num_users: u64,
    },
    /// `presence_state`.
    PresenceState,
    /// `collab_join` of a connection already subscribed to the story's
    /// channel (a role change): the snapshot and the position it is at.
    CollabJoin(Box<StoryJoined>),
    /// `lock`: `expires_ms` is Unix time.
    Lock(Box<LockOk>),
    /// `unlock`.
    Unlock,
    /// `update`.
    Update(UpdateOk),
    /// A story refused the command (its detail goes on the wire for 118
    /// and 119).
    CollabError(Box<CollabError>),
    /// An error.
    Error(ErrorCode),
}

/// What `collab_join` asks of the story.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CollabAsk {
    /// Editor or viewer.
    pub role: JoinAs,
    /// An editor beyond the cap waits in line instead of error 117.
    pub queue: bool,
}

/// A story command on its way to the story's home; the member is the
/// asking connection (`from`, `reply_to.conn`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum CollabOp {
    /// `collab_join` from a connection already subscribed to the channel.
    Join {
        /// The role asked for.
        ask: CollabAsk,
        /// Who the connection is.
        who: ClientInfo,
    },
    /// `lock`.
    Lock {
        /// Section id.
        section: Box<str>,
        /// Time to live asked for.
        ttl: Option<Duration>,
    },
    /// `unlock`.
    Unlock {
        /// Section id.
        section: Box<str>,
    },
    /// `update`.
    Update {
        /// Section id.
        section: Box<str>,
        /// The version the change was made against.
        base_version: u64,
        /// The new data (JSON text).
        data: Bytes,
        /// Deduplicates resends.
        op_id: Box<str>,
    },
}

/// A story snapshot for a joining member and the channel position it is
/// at: story events after `position` follow it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoryJoined {
    /// Role, place in line, editors, viewers, sections.
    pub join: JoinOk,
    /// The story channel's position when the snapshot was taken.
    pub position: Position,
}

impl StoryJoined {
    /// The `collab_join` reply, with what recovery found.
    pub fn reply<'a>(&'a self, recovery: Option<&'a Recovery>) -> CollabJoinReply<'a> {
        joined_reply(&self.join, self.position, recovery)
    }
}

/// The `collab_join` reply for `join` at `position`, with what recovery
/// found (`None`: the client did not ask to recover).
pub fn joined_reply<'a>(
    join: &'a JoinOk,
    position: Position,
    recovery: Option<&'a Recovery>,
) -> CollabJoinReply<'a> {
    CollabJoinReply {
        role: join.role.into(),
        position: join.position.map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
        viewers: u32::try_from(join.viewers).unwrap_or(u32::MAX),
        queued: u32::try_from(join.queued).unwrap_or(u32::MAX),
        epoch: position.epoch,
        offset: position.offset,
        story: join,
        recovering: recovery.is_some(),
        recovered: recovery.is_some_and(|r| r.recovered),
        publications: recovery.map_or(&[][..], |r| &r.publications[..]),
    }
}

/// The error reply for a story's refusal: 118 and 119 carry their detail.
pub fn collab_error_body(e: &CollabError) -> ReplyBody<'_> {
    match e {
        CollabError::SectionLocked { holder } | CollabError::NotHolder { holder } => {
            ReplyBody::ErrorDetail(ErrorDetail::SectionLocked {
                holder: MemberId::from(holder),
            })
        }
        CollabError::VersionConflict { version, data }
        | CollabError::BadVersion { version, data } => {
            ReplyBody::ErrorDetail(ErrorDetail::VersionConflict {
                version: *version,
                data: if data.is_empty() { b"null" } else { data },
            })
        }
        other => ReplyBody::Error(other.code()),
    }
}

impl Answer {
    /// The reply body on the wire.
    pub fn body(&self) -> ReplyBody<'_> {
        match self {
            Answer::Publish { offset } => ReplyBody::Publish { offset: *offset },
            Answer::History {
                position,
                publications,
            } => ReplyBody::History {
                epoch: position.epoch,
                offset: position.offset,
                publications,
            },
            Answer::Presence { clients } => ReplyBody::Presence { clients },
            Answer::PresenceStats {
                num_clients,
                num_users,
            } => ReplyBody::PresenceStats {
                num_clients: *num_clients,
                num_users: *num_users,
            },
            Answer::PresenceState => ReplyBody::PresenceState,
            Answer::CollabJoin(j) => ReplyBody::CollabJoin(j.reply(None)),
            Answer::Lock(l) => ReplyBody::Lock {
                section: &l.section,
                holder: MemberId::from(&l.holder),
                expires: l.expires_ms,
            },
            Answer::Unlock => ReplyBody::Unlock,
            Answer::Update(u) => ReplyBody::Update {
                version: u.version,
                duplicate: u.duplicate,
            },
            Answer::CollabError(e) => collab_error_body(e),
            Answer::Error(code) => ReplyBody::Error(*code),
        }
    }
}

/// A message from one shard's router to another's.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
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
        /// Drop the publication if this key was seen on the channel within
        /// the idempotency window.
        idempotency_key: Option<Box<str>>,
        /// Who publishes (its user and client id), for a `durable`
        /// namespace's event; `None` elsewhere and for the server API.
        publisher: Option<Box<ClientInfo>>,
        /// Answer only once the durable sink confirmed the event (a
        /// `durable` namespace; ignored elsewhere).
        durable_ack: bool,
        /// Sending shard.
        from: usize,
        /// Who gets the reply.
        reply_to: ReplyTo,
    },
    /// Home → asking shard: the answer to a command.
    Reply {
        /// Who gets it.
        reply_to: ReplyTo,
        /// The answer.
        answer: Answer,
    },
    /// Home → shard with subscribers: a publication, or presence events.
    /// Between nodes without its encoded frames and with the receiver's
    /// clock (`crate::engine::cluster::envelope::shared_pub`).
    Deliver(#[serde(with = "crate::engine::cluster::envelope::shared_pub")] Arc<SharedPub>),
    /// Home → shard: a `Deliver` for this channel could not be queued;
    /// its subscribers on the shard must recover.
    Lost {
        /// Channel name.
        channel: Arc<str>,
    },
    /// To a channel's home: a subscription the home must see — counted
    /// (presence, or a namespace with `max_subscribers`) and/or recovering.
    /// Sent after the shard's interest, so the answer comes after every
    /// delivery the home sent before it.
    Subscribe {
        /// Channel name.
        channel: Arc<str>,
        /// The client's last position, when it recovers.
        since: Option<Position>,
        /// Who subscribes, when the home counts members.
        member: Option<Box<ClientInfo>>,
        /// `collab_join`: the story membership asked for.
        collab: Option<CollabAsk>,
        /// Sending shard.
        from: usize,
        /// The subscribing connection.
        reply_to: ReplyTo,
    },
    /// Home → shard: the answer to `Subscribe`.
    Subscribed {
        /// Channel name.
        channel: Arc<str>,
        /// The channel's position when the home answered.
        position: Position,
        /// Admitted, with what recovery found (nothing when not
        /// recovering), or refused.
        result: Result<Box<Recovery>, ErrorCode>,
        /// `collab_join`: the member's snapshot, taken at `position`.
        story: Option<Box<JoinOk>>,
        /// The subscribing connection.
        reply_to: ReplyTo,
    },
    /// To a channel's home: `history`.
    History {
        /// Channel name.
        channel: Arc<str>,
        /// What to read.
        query: Box<HistoryQuery>,
        /// Sending shard.
        from: usize,
        /// Who gets the reply.
        reply_to: ReplyTo,
    },
    /// To a channel's home: a counted member left (unsubscribed, closed,
    /// or gave up while its `Subscribe` was in flight).
    Leave {
        /// Channel name.
        channel: Arc<str>,
        /// Its client id.
        client: Arc<str>,
        /// The connection, on shard `from` (a story member's id).
        conn: ConnRef,
        /// Sending shard.
        from: usize,
        /// The connection closed (a story editor's locks wait out their
        /// grace) rather than unsubscribed.
        disconnect: bool,
    },
    /// To a story's home: `lock`, `unlock`, `update`, or a member's
    /// `collab_join` that changes its role.
    Collab {
        /// Channel name.
        channel: Arc<str>,
        /// The command.
        op: Box<CollabOp>,
        /// Sending shard.
        from: usize,
        /// Who gets the reply.
        reply_to: ReplyTo,
    },
    /// Story home → a member's shard: a push for that member alone
    /// (`promoted`, `conflict`, `queue`).
    CollabPush {
        /// The member's connection.
        conn: ConnRef,
        /// The story's channel.
        channel: Arc<str>,
        /// What it says.
        event: Box<DirectedEvent>,
    },
    /// To a channel's home: `presence_state`.
    SetState {
        /// Channel name.
        channel: Arc<str>,
        /// Whose state.
        client: Arc<str>,
        /// The state ("" clears it).
        state: Arc<str>,
        /// Expiry, if any.
        ttl_ms: Option<u64>,
        /// Sending shard.
        from: usize,
        /// Who gets the reply.
        reply_to: ReplyTo,
    },
    /// To a channel's home: `presence` (`stats: false`) or
    /// `presence_stats` (`stats: true`).
    PresenceQuery {
        /// Channel name.
        channel: Arc<str>,
        /// Counts only.
        stats: bool,
        /// Sending shard.
        from: usize,
        /// Who gets the reply.
        reply_to: ReplyTo,
    },
    /// Relay → shard: the channel's home node did not answer this shard's
    /// interest; the subscriptions waiting for it fail with error 100.
    InterestFailed {
        /// Channel name.
        channel: Arc<str>,
    },
    /// To a channel's home: the server API's `history_remove` (the
    /// publications go, the position stays). Last, so the variants before
    /// it keep their index on the wire between nodes.
    HistoryRemove {
        /// Channel name.
        channel: Arc<str>,
        /// Sending shard.
        from: usize,
        /// Who gets the reply.
        reply_to: ReplyTo,
    },
}

impl Msg {
    /// What kind of message this is, for metrics.
    pub fn kind(&self) -> MsgKind {
        match self {
            Msg::Interest { .. } => MsgKind::Interest,
            Msg::InterestAck { .. } => MsgKind::InterestAck,
            Msg::InterestFailed { .. } => MsgKind::InterestFailed,
            Msg::Publish { .. } => MsgKind::Publish,
            Msg::Reply { .. } => MsgKind::Reply,
            Msg::Deliver(_) => MsgKind::Deliver,
            Msg::Lost { .. } => MsgKind::Lost,
            Msg::Subscribe { .. } => MsgKind::Subscribe,
            Msg::Subscribed { .. } => MsgKind::Subscribed,
            Msg::History { .. } => MsgKind::History,
            Msg::Leave { .. } => MsgKind::Leave,
            Msg::SetState { .. } => MsgKind::SetState,
            Msg::PresenceQuery { .. } => MsgKind::PresenceQuery,
            Msg::Collab { .. } => MsgKind::Collab,
            Msg::CollabPush { .. } => MsgKind::CollabPush,
            Msg::HistoryRemove { .. } => MsgKind::HistoryRemove,
        }
    }

    /// The connection waiting for this request's answer, if it is one.
    pub fn reply_to(&self) -> Option<ReplyTo> {
        match self {
            Msg::Publish { reply_to, .. }
            | Msg::Subscribe { reply_to, .. }
            | Msg::History { reply_to, .. }
            | Msg::SetState { reply_to, .. }
            | Msg::PresenceQuery { reply_to, .. }
            | Msg::HistoryRemove { reply_to, .. }
            | Msg::Collab { reply_to, .. } => Some(*reply_to),
            _ => None,
        }
    }

    /// Whether a sender may give up on this message when the receiver's
    /// inbox and the sender's overflow queue are both full: requests that
    /// can be answered "overloaded, retry", and deliveries (whose loss is
    /// reported). Everything else (answers, interest-off, joins and
    /// leaves, loss notices) must arrive, or two shards would disagree
    /// about a channel's state or a client would wait forever.
    pub fn refusable(&self) -> bool {
        matches!(
            self,
            Msg::Publish { .. }
                | Msg::Deliver(_)
                | Msg::Interest { on: true, .. }
                | Msg::Subscribe { .. }
                | Msg::History { .. }
                | Msg::SetState { .. }
                | Msg::PresenceQuery { .. }
                | Msg::HistoryRemove { .. }
                | Msg::Collab { .. }
        )
    }
}

// Helpers for the cluster (engine::cluster::envelope): which channel a
// message is about and which field names the sending shard.
impl Msg {
    /// The channel this message is about; `None` for [`Msg::Reply`], which
    /// goes to a connection rather than a channel's home.
    pub fn channel(&self) -> Option<&Arc<str>> {
        match self {
            Msg::Interest { channel, .. }
            | Msg::InterestAck { channel, .. }
            | Msg::Publish { channel, .. }
            | Msg::Lost { channel }
            | Msg::Subscribe { channel, .. }
            | Msg::Subscribed { channel, .. }
            | Msg::History { channel, .. }
            | Msg::Leave { channel, .. }
            | Msg::Collab { channel, .. }
            | Msg::CollabPush { channel, .. }
            | Msg::SetState { channel, .. }
            | Msg::PresenceQuery { channel, .. }
            | Msg::HistoryRemove { channel, .. }
            | Msg::InterestFailed { channel } => Some(channel),
            Msg::Deliver(p) => Some(&p.channel),
            Msg::Reply { .. } => None,
        }
    }

    /// The sending shard's index, in the messages that carry one (those to
    /// a channel's home); a node rewrites it when a message crosses nodes.
    pub fn from_mut(&mut self) -> Option<&mut usize> {
        match self {
            Msg::Interest { from, .. }
            | Msg::Publish { from, .. }
            | Msg::Subscribe { from, .. }
            | Msg::History { from, .. }
            | Msg::Leave { from, .. }
            | Msg::Collab { from, .. }
            | Msg::SetState { from, .. }
            | Msg::PresenceQuery { from, .. }
            | Msg::HistoryRemove { from, .. } => Some(from),
            Msg::InterestAck { .. }
            | Msg::Reply { .. }
            | Msg::Deliver(_)
            | Msg::Lost { .. }
            | Msg::Subscribed { .. }
            | Msg::CollabPush { .. }
            | Msg::InterestFailed { .. } => None,
        }
    }

    /// The sending shard's index (see [`Msg::from_mut`]).
    pub fn sender(&self) -> Option<usize> {
        match self {
            Msg::Interest { from, .. }
            | Msg::Publish { from, .. }
            | Msg::Subscribe { from, .. }
            | Msg::History { from, .. }
            | Msg::Leave { from, .. }
            | Msg::Collab { from, .. }
            | Msg::SetState { from, .. }
            | Msg::PresenceQuery { from, .. }
            | Msg::HistoryRemove { from, .. } => Some(*from),
            _ => None,
        }
    }

    /// [`Msg::kind`]'s metric label.
    pub fn kind_label(&self) -> &'static str {
        self.kind().label()
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
    /// [`Msg::InterestFailed`].
    InterestFailed,
    /// [`Msg::Publish`].
    Publish,
    /// [`Msg::Reply`].
    Reply,
    /// [`Msg::Deliver`].
    Deliver,
    /// [`Msg::Lost`].
    Lost,
    /// [`Msg::Subscribe`].
    Subscribe,
    /// [`Msg::Subscribed`].
    Subscribed,
    /// [`Msg::History`].
    History,
    /// [`Msg::Leave`].
    Leave,
    /// [`Msg::SetState`].
    SetState,
    /// [`Msg::PresenceQuery`].
    PresenceQuery,
    /// [`Msg::Collab`].
    Collab,
    /// [`Msg::CollabPush`].
    CollabPush,
    /// [`Msg::HistoryRemove`].
    HistoryRemove,
    /// A server API call (the shell's, from the API sidecar).
    Api,
    /// A ticket redemption's answer (the shell's, from the ticket sidecar).
    Ticket,
    /// A story read back from Redis (the shell's, from the story sidecar).
    StoryLoaded,
    /// The shell's control message that starts a drain.
    Drain,
    /// A message from another node (the shell's, from the NATS worker).
    Cluster,
    /// The live set or the NATS link changed (the shell's).
    ClusterChanged,
    /// A backend call's answer (the shell's, from the RPC sidecar).
    Rpc,
    /// An SSE command post for a stream on the receiving shard (the
    /// shell's, from the shard that read the post).
    SsePost,
}

impl MsgKind {
    /// Every kind; each has a `queue_full` series from the start.
    pub const ALL: [MsgKind; 24] = [
        MsgKind::Interest,
        MsgKind::InterestAck,
        MsgKind::InterestFailed,
        MsgKind::Publish,
        MsgKind::Reply,
        MsgKind::Deliver,
        MsgKind::Lost,
        MsgKind::Subscribe,
        MsgKind::Subscribed,
        MsgKind::History,
        MsgKind::Leave,
        MsgKind::SetState,
        MsgKind::PresenceQuery,
        MsgKind::Collab,
        MsgKind::CollabPush,
        MsgKind::HistoryRemove,
        MsgKind::Api,
        MsgKind::Ticket,
        MsgKind::StoryLoaded,
        MsgKind::Drain,
        MsgKind::Cluster,
        MsgKind::ClusterChanged,
        MsgKind::Rpc,
        MsgKind::SsePost,
    ];

    /// Short name for metrics (the `kind` label).
    pub const fn label(self) -> &'static str {
        match self {
            MsgKind::Interest => "interest",
            MsgKind::InterestAck => "interest_ack",
            MsgKind::InterestFailed => "interest_failed",
            MsgKind::Publish => "publish",
            MsgKind::Reply => "reply",
            MsgKind::Deliver => "deliver",
            MsgKind::Lost => "lost",
            MsgKind::Subscribe => "subscribe",
            MsgKind::Subscribed => "subscribed",
            MsgKind::History => "history",
            MsgKind::Leave => "leave",
            MsgKind::SetState => "set_state",
            MsgKind::PresenceQuery => "presence_query",
            MsgKind::Collab => "collab",
            MsgKind::CollabPush => "collab_push",
            MsgKind::HistoryRemove => "history_remove",
            MsgKind::Api => "api",
            MsgKind::Ticket => "ticket",
            MsgKind::StoryLoaded => "story_loaded",
            MsgKind::Drain => "drain",
            MsgKind::Cluster => "cluster",
            MsgKind::ClusterChanged => "cluster_changed",
            MsgKind::Rpc => "rpc",
            MsgKind::SsePost => "sse_post",
        }
    }
}

/// Who a local connection is, built only when a channel needs it (presence
/// and member counts): most subscribes and closes never do, so they pay no
/// client id formatting or allocation.
pub struct Who<F> {
    make: F,
    made: std::cell::OnceCell<ClientInfo>,
}

impl<F: Fn() -> ClientInfo> Who<F> {
    /// Builds the identity with `make`, at most once, when first asked.
    pub fn new(make: F) -> Self {
        Self {
            make,
            made: std::cell::OnceCell::new(),
        }
    }

    /// The identity.
    pub fn get(&self) -> &ClientInfo {
        self.made.get_or_init(&self.make)
    }
}

/// What a publication carries to its home besides its channel and data.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PublishReq<'a> {
    /// The publisher's idempotency key.
    pub key: Option<&'a str>,
    /// Who publishes (a `durable` namespace's event); `None`: the server.
    pub publisher: Option<&'a ClientInfo>,
    /// Deliver ahead of normal data (the server API's `priority`).
    pub high: bool,
    /// The publisher's durable wait (`durable_ack`), if any.
    pub ack: Option<u64>,
}

#[cfg(test)]
mod size {
    /// Every inbox slot is one message: keep it small (the big parts of
    /// rare messages are boxed).
    #[test]
    fn messages_stay_small() {
        let size = std::mem::size_of::<super::Msg>();
        assert!(size <= 104, "Msg grew to {size} bytes");
    }
}
