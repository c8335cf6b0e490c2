//! The router's part in a cluster of nodes (docs/ARCHITECTURE.md, "The
//! cluster"): one authority per channel across nodes.
//!
//! Each channel has a home node (rendezvous hashing over the live set,
//! [`Placement`]) and on every node one home shard (`home_shard`). On the
//! home node that shard is the channel's home, as on a single node. On
//! every other node it is the channel's **relay**: the node's shards talk
//! to it exactly as they talk to a home (interest, publish, subscribe
//! through the home, history, presence, story commands), and it
//! - keeps the node's interest: the first local interest subscribes the
//!   node to the channel's subject ([`Output::watch`]) and asks the home
//!   node for a *sync marker*; the marker, published on the channel's
//!   subject in order with the deliveries, gives the position the node's
//!   subscribers start after (the cluster's `InterestAck`);
//! - hands each delivery from the subject to the node's shards with
//!   subscribers, checking epoch and offsets (a jump or a new epoch makes
//!   them recover: 3004, never a silent gap);
//! - forwards requests to the home node and the answers back, in order with
//!   the deliveries, answering error 100 (temporary) when NATS is down or no
//!   answer comes within `request_timeout`.
//!
//! At the home, another node's relay is one more "shard" with interest
//! (the hub's [`REMOTE_BIT`]): a publication goes out once on the
//! channel's subject whatever the number of interested nodes, and NATS
//! delivers one copy to each of them and none to the others.
//!
//! When the live set changes, each relay re-asks its home for a marker (a
//! restarted home lost its interest and its epoch: the marker shows it,
//! and subscribers recover rather than wait). A channel whose home moved
//! makes its subscribers recover (3004) on every node, except a channel
//! whose history is in JetStream and that keeps no presence: the new home
//! continues its epoch from the stream, so its relays (and its old home,
//! which becomes a relay) keep their subscribers and position and ask the
//! new home for a marker; only a marker that does not follow on (or none
//! after [`CONFIRM_ATTEMPTS`] tries) makes them recover. A relay whose
//! node becomes the home turns into the home at its subscribers' position
//! and reads the stream back, which either follows on or makes them
//! recover.
//!
//! Layout: the relay's interest, deliveries, held answers and the moves of
//! a channel's home are in [`relay`]; requests and answers through the
//! relay, the home's view of other nodes, and the timers are here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Msg, Output, ReplyTo, Router};
use crate::engine::cluster::nodes::{HOME_SHARD, NodeTable, is_remote, remote_addr, remote_parts};
use crate::engine::cluster::placement::Placement;
use crate::engine::codes::ErrorCode;
use crate::engine::history::Recovery;
use crate::engine::hub::Position;
use crate::engine::subs::ConnRef;
use crate::engine::wire::publication::{Publication, PushBody, SharedPub};

use super::msg::Answer;

mod relay;

/// The hub interest bit that stands for "other nodes' relays": a
/// publication with it set goes out once on the channel's subject.
pub const REMOTE_BIT: usize = 63;

/// How soon a marker is tried again after the cluster queue refused one.
const LOST_RETRY: Duration = Duration::from_millis(50);

/// What a router needs to know about its cluster, fixed at start.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This node's name.
    pub self_node: Arc<str>,
    /// Node names by slot (shared with the NATS thread).
    pub nodes: Arc<NodeTable>,
    /// How long a request to another node waits for its answer.
    pub request_timeout: Duration,
}

/// What goes out once on a channel's subject, to every interested node.
#[derive(Debug, Clone, Copy)]
pub enum Broadcast<'a> {
    /// A publication (with its channel's epoch) or presence events.
    Push {
        /// The channel's epoch.
        epoch: u64,
        /// The push.
        push: &'a Arc<SharedPub>,
    },
    /// A sync marker: the channel stands at this position.
    Marker(Position),
}

/// A message from another node, decoded by the shell.
#[derive(Debug)]
pub enum FromNode {
    /// A router message, about `channel`; `to_shard`: the shard it is
    /// finally for (answers), or `None` for the channel's home shard. Its
    /// `from` fields already hold remote addresses.
    Msg {
        /// The channel it is about.
        channel: Arc<str>,
        /// The shard it is finally for, if not this one.
        to_shard: Option<usize>,
        /// The message.
        msg: Msg,
    },
    /// A delivery from a channel's subject.
    Delivery {
        /// The channel's epoch at its home.
        epoch: u64,
        /// The push.
        push: Arc<SharedPub>,
    },
    /// A sync marker from a channel's subject.
    Marker {
        /// Channel name.
        channel: Arc<str>,
        /// Where the channel stands at its home.
        position: Position,
    },
    /// The NATS worker's answer about a channel whose history is kept in
    /// JetStream (for the channel's home shard here).
    Stored(crate::engine::cluster::stored::StoreAnswer),
}

impl FromNode {
    /// The channel it is about (its home shard on this node takes it).
    pub fn channel(&self) -> &Arc<str> {
        match self {
            FromNode::Msg { channel, .. } | FromNode::Marker { channel, .. } => channel,
            FromNode::Delivery { push, .. } => &push.channel,
            FromNode::Stored(a) => a.channel(),
        }
    }
}

/// Counts of the cluster paths, moved to metrics with the other stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStats {
    /// Requests forwarded to a home node.
    pub forwarded: u64,
    /// Requests answered 100 because NATS was down, the request could not
    /// be queued, or no answer came in time.
    pub failed: u64,
    /// Answers that came after their request had been answered 100.
    pub late: u64,
    /// Channels whose subscribers were told to recover because of the
    /// cluster (an offset jump or epoch change seen by a relay, a home
    /// that moved).
    pub resyncs: u64,
    /// Requests from other nodes for channels this node is not home for
    /// (live sets briefly disagreeing), answered 100.
    pub misrouted: u64,
    /// The stored channels' counts (`history_backend = "jetstream"`).
    pub stored: super::StoredStats,
    /// The presence bucket's counts.
    pub mirror: super::MirrorStats,
}

/// A channel this shard relays for its home on another node.
#[derive(Debug)]
struct Relay {
    home: Arc<str>,
    slot: u32,
    /// Local shards with subscribers.
    mask: u64,
    /// Local shards waiting for the first marker.
    waiting: u64,
    /// Where the node's subscribers stand; `None` until the first marker.
    position: Option<Position>,
    /// When the marker is given up on (`None` once synced).
    deadline: Option<Instant>,
    /// The last publications handed to the node's shards (at most
    /// [`RECENT`]), to extend a subscribe answer they overtook.
    recent: VecDeque<Arc<SharedPub>>,
    /// Markers asked of a new home since the channel moved with its
    /// position kept (0: not moved, or confirmed): until the new home's
    /// marker shows it continues from `position`, the relay re-asks, then
    /// makes the subscribers recover.
    confirming: u8,
    /// Subscribe answers that came ahead of deliveries the home sent
    /// before them (the answer and the deliveries travel on two NATS
    /// subscriptions): each waits, for its shard, until the relay's
    /// position reaches the answer's, or until the time given.
    held: Vec<(Instant, usize, Msg)>,
}

/// Markers a relay asks of a channel's new home before it gives up and
/// makes the subscribers recover (the new home may learn of the move a
/// heartbeat later and refuse the first as misrouted).
const CONFIRM_ATTEMPTS: u8 = 3;

/// Publications a relay keeps to extend overtaken subscribe answers: the
/// answer (on the home node's subject) and the deliveries (on the
/// channel's) travel on two NATS subscriptions, so a delivery sent after
/// an answer can reach the node first.
const RECENT: usize = 128;

type PendingKey = (usize, ConnRef, u32, Arc<str>);

/// A request forwarded to a home node, waiting for its answer.
#[derive(Debug)]
struct Pending {
    slot: u32,
    subscribe: bool,
}

/// A member that joined a channel of this home from another node: left
/// for it if its node leaves the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RemoteMember {
    channel: Arc<str>,
    client: Arc<str>,
    conn: ConnRef,
    from: usize,
}

/// The cluster state of one router.
pub(super) struct Cluster {
    view: ClusterView,
    placement: Option<Arc<Placement>>,
    link_up: bool,
    relays: HashMap<Arc<str>, Relay>,
    /// At home: the relays with subscribers, by channel.
    remote_interest: HashMap<Arc<str>, Vec<usize>>,
    /// At home: members that joined from other nodes, by node slot.
    remote_members: HashMap<u32, Vec<RemoteMember>>,
    pending: HashMap<PendingKey, Pending>,
    /// Pending keys by deadline (one timeout, so in order).
    deadlines: VecDeque<(Instant, PendingKey)>,
    /// Channels whose broadcast could not be queued: a marker goes out
    /// for each, so relays see the gap.
    lost_broadcasts: Vec<Arc<str>>,
    /// When lost broadcasts are retried (`None`: at once).
    lost_retry: Option<Instant>,
    /// Stored channels this shard has just become home for, and until
    /// when their publications go out on the channel's subject without a
    /// relay having asked (in deadline order: one window for all).
    assumed: VecDeque<(Instant, Arc<str>)>,
    stats: ClusterStats,
}

impl Cluster {
    pub(super) fn new(view: ClusterView) -> Self {
        Cluster {
            view,
            placement: None,
            link_up: false,
            relays: HashMap::new(),
            remote_interest: HashMap::new(),
            remote_members: HashMap::new(),
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            lost_broadcasts: Vec::new(),
            lost_retry: None,
            assumed: VecDeque::new(),
            stats: ClusterStats::default(),
        }
    }

    /// The home node of `channel` when it is another node.
    fn remote_home(&self, channel: &str) -> Option<&Arc<str>> {
        let p = self.placement.as_ref()?;
        (!p.is_home(channel)).then(|| p.home(channel))
    }
}

fn bit(shard: usize) -> u64 {
    1u64 << shard
}

/// The channel a message is about (every message but a reply, which
/// travels with its request's channel).
pub(super) fn channel_of(msg: &Msg) -> &Arc<str> {
    msg.channel()
        .expect("a reply travels with its request's channel")
}

/// Whether a message goes to a channel's home (and so, on a node that is
/// not the home, to the relay that forwards it).
/// A subscribe answer that deliveries overtook on the way (the relay has
/// handed its node's shards publications after the answer's position):
/// its recovery is extended with them and it is moved to the relay's
/// position, so the shard, which is there, sees the answer follow on. A
/// recovery the relay cannot extend (publications no longer kept) stays
/// as it was; the shard then refuses to claim it.
fn catch_up(
    r: &Relay,
    position: Position,
    result: Result<Box<Recovery>, ErrorCode>,
) -> (Position, Result<Box<Recovery>, ErrorCode>) {
    let Some(at) = r.position else {
        return (position, result);
    };
    if at.epoch != position.epoch || at.offset <= position.offset {
        return (position, result);
    }
    let Ok(mut recovery) = result else {
        return (position, result);
    };
    let missing: Vec<Publication> = r
        .recent
        .iter()
        .filter_map(|p| match &p.body {
            PushBody::Pub(publication) if publication.offset > position.offset => {
                Some(publication.clone())
            }
            _ => None,
        })
        .collect();
    let complete = missing.len() as u64 == at.offset - position.offset
        && missing
            .first()
            .is_some_and(|p| p.offset == position.offset + 1);
    if !complete {
        return (position, Ok(recovery));
    }
    if recovery.recovered {
        recovery.publications.extend(missing);
    }
    (at, Ok(recovery))
}

/// Whether a relay at `at` has not yet handed its shards what the home
/// had sent when it answered at `answer` (same epoch, lower offset, or no
/// position yet).
fn behind(at: Option<Position>, answer: Position) -> bool {
    at.is_none_or(|at| at.epoch == answer.epoch && at.offset < answer.offset)
}

/// A subscribe answer, extended by [`catch_up`] with what the relay has
/// handed its shards since.
fn caught_up(r: &Relay, mut msg: Msg) -> Msg {
    if let Msg::Subscribed {
        position, result, ..
    } = &mut msg
    {
        let taken = std::mem::replace(result, Err(ErrorCode::Internal));
        (*position, *result) = catch_up(r, *position, taken);
    }
    msg
}

pub(super) fn to_home(msg: &Msg) -> bool {
    matches!(
        msg,
        Msg::Interest { .. }
            | Msg::Publish { .. }
            | Msg::Subscribe { .. }
            | Msg::History { .. }
            | Msg::Leave { .. }
            | Msg::Collab { .. }
            | Msg::SetState { .. }
            | Msg::PresenceQuery { .. }
            | Msg::HistoryRemove { .. }
    )
}

impl Router {
    /// Joins a cluster: from now on channels whose home is another node
    /// are relayed ([`Router::set_placement`] tells which).
    pub fn join_cluster(&mut self, view: ClusterView) {
        self.cluster = Some(Box::new(Cluster::new(view)));
        let stored = self.namespaces.iter().any(|(_, _, o)| {
            o.history_backend == crate::engine::namespace::HistoryBackend::Jetstream
        });
        if stored {
            self.stored = Some(Box::default());
        }
    }

    /// The cluster's counts since the last call.
    pub fn take_cluster_stats(&mut self) -> ClusterStats {
        let mut stats = self
            .cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.stats))
            .unwrap_or_default();
        stats.stored = self.take_stored_stats();
        stats.mirror = self.take_mirror_stats();
        stats
    }

    /// Channels this shard relays for a home on another node.
    pub fn relayed_channels(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.relays.len())
    }

    /// Requests forwarded to other nodes still waiting for their answer.
    pub fn pending_remote(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.pending.len())
    }

    /// The home node of `channel` when it is another node (`None`: this
    /// node, or no cluster).
    pub fn remote_home(&self, channel: &str) -> Option<&Arc<str>> {
        self.cluster.as_ref()?.remote_home(channel)
    }

    /// The NATS connection came up or went down. Down: requests to other
    /// nodes are answered 100 at once. Up again: every relay asks its home
    /// for a marker, which shows whether deliveries were lost meanwhile.
    pub fn set_link(&mut self, now: Instant, up: bool, out: &mut impl Output) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let was = std::mem::replace(&mut c.link_up, up);
        if up && !was {
            self.resync_relays(now, out);
        }
    }

    /// The live set changed. Channels whose home moved make their
    /// subscribers here recover; relays whose home stayed re-ask it for a
    /// marker (it may have restarted); members and interest of nodes that
    /// left are dropped.
    pub fn set_placement(
        &mut self,
        now: Instant,
        placement: Arc<Placement>,
        out: &mut impl Output,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let old = c.placement.replace(placement.clone());
        // Relays whose home moved (to another node or to this one).
        let moved: Vec<Arc<str>> = c
            .relays
            .iter()
            .filter(|(ch, r)| placement.is_home(ch) || placement.home(ch) != &r.home)
            .map(|(ch, _)| ch.clone())
            .collect();
        for ch in moved {
            if !self.repoint_relay(now, &ch) && !self.relay_to_home(now, &ch, out) {
                self.drop_relay(now, &ch, true, out);
            }
        }
        // Channels this shard was home for that moved away.
        if old.is_some() {
            let gone: Vec<Arc<str>> = self
                .hub
                .channels()
                .filter(|ch| !placement.is_home(ch))
                .cloned()
                .collect();
            for ch in gone {
                self.give_up_home(now, &ch, out);
            }
        }
        // Nodes that left: their interest and members.
        let live: Vec<u32> = placement
            .nodes()
            .filter_map(|n| self.cluster.as_ref()?.view.nodes.slot(n))
            .collect();
        self.forget_departed(now, &live, out);
        self.resync_relays(now, out);
    }

    /// A message from another node.
    pub fn handle_remote(&mut self, now: Instant, from_node: FromNode, out: &mut impl Output) {
        if self.cluster.is_none() {
            return;
        }
        match from_node {
            FromNode::Stored(answer) => self.stored_answer(now, answer, out),
            FromNode::Delivery { epoch, push } => {
                let channel = push.channel.clone();
                self.relay_delivery(now, epoch, push, out);
                self.release_held(now, &channel, false, out);
            }
            FromNode::Marker { channel, position } => {
                self.relay_marker(now, &channel, position, out);
                self.release_held(now, &channel, false, out);
            }
            FromNode::Msg {
                channel,
                to_shard,
                msg,
            } => match msg {
                Msg::Reply { .. } | Msg::Subscribed { .. } => {
                    let to = to_shard.unwrap_or(self.id);
                    self.answer_arrived(now, to, channel, msg, out)
                }
                msg if to_home(&msg) => {
                    let here = self
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.remote_home(&channel).is_none());
                    if here {
                        if let Some(msg) = self.park_until_loaded(now, msg, out) {
                            self.handle_here(now, msg, out);
                        }
                    } else {
                        self.misrouted(now, channel, msg, out);
                    }
                }
                msg => {
                    let to = to_shard.unwrap_or(self.id);
                    if to < self.shards {
                        let _ = self.dispatch(now, to, msg, out);
                    }
                }
            },
        }
    }

    /// Whether `msg` (to a channel's home) must go to another node; if
    /// so, forwards it and returns `None`.
    pub(super) fn relay_if_remote(
        &mut self,
        now: Instant,
        msg: Msg,
        out: &mut impl Output,
    ) -> Option<Msg> {
        let Some(c) = self.cluster.as_ref() else {
            return Some(msg);
        };
        if !to_home(&msg) {
            return Some(msg);
        }
        let Some(home) = c.remote_home(channel_of(&msg)).cloned() else {
            return Some(msg);
        };
        match msg {
            Msg::Interest { channel, from, on } => {
                self.relay_interest(now, channel, home, from, on, out)
            }
            msg => self.forward(now, home, msg, out),
        }
        None
    }

    // ---- the relay: requests and answers ------------------------------------

    /// Forwards a request to the channel's home node and remembers it, or
    /// answers it at once (100 with NATS down, 112 with the queue full).
    fn forward(&mut self, now: Instant, home: Arc<str>, msg: Msg, out: &mut impl Output) {
        let c = self.cluster.as_mut().expect("relaying in a cluster");
        let channel = channel_of(&msg).clone();
        let slot = c.view.nodes.slot(&home);
        let (Some(slot), true) = (slot, c.link_up) else {
            c.stats.failed += 1;
            return self.fail(now, msg, ErrorCode::Internal, out);
        };
        let key = match (msg.sender(), msg.reply_to()) {
            (Some(from), Some(r)) => Some((from, r.conn, r.cmd_id, channel.clone())),
            _ => None,
        };
        let subscribe = matches!(msg, Msg::Subscribe { .. });
        match out.send_remote(remote_addr(slot, HOME_SHARD), &channel, msg) {
            Ok(()) => {
                let c = self.cluster.as_mut().expect("relaying in a cluster");
                c.stats.forwarded += 1;
                if let Some(key) = key {
                    let deadline = now + c.view.request_timeout;
                    c.deadlines.push_back((deadline, key.clone()));
                    c.pending.insert(key, Pending { slot, subscribe });
                }
            }
            Err(msg) => {
                let c = self.cluster.as_mut().expect("relaying in a cluster");
                c.stats.failed += 1;
                self.fail(now, msg, ErrorCode::Overloaded, out);
            }
        }
    }

    /// Answers a request that cannot reach its home with `code`.
    fn fail(&mut self, now: Instant, msg: Msg, code: ErrorCode, out: &mut impl Output) {
        let (Some(from), Some(reply_to)) = (msg.sender(), msg.reply_to()) else {
            return; // a leave: its home drops the member when the node leaves
        };
        let channel = channel_of(&msg).clone();
        self.fail_request(
            now,
            from,
            channel,
            reply_to,
            matches!(msg, Msg::Subscribe { .. }),
            code,
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn fail_request(
        &mut self,
        now: Instant,
        from: usize,
        channel: Arc<str>,
        reply_to: ReplyTo,
        subscribe: bool,
        code: ErrorCode,
        out: &mut impl Output,
    ) {
        let msg = if subscribe {
            Msg::Subscribed {
                channel: channel.clone(),
                position: Position {
                    epoch: 0,
                    offset: 0,
                },
                result: Err(code),
                story: None,
                reply_to,
            }
        } else {
            Msg::Reply {
                reply_to,
                answer: Answer::Error(code),
            }
        };
        if is_remote(from) {
            // A node asked this one for a channel it is not home for.
            let _ = out.send_remote(from, &channel, msg);
        } else {
            let _ = self.dispatch(now, from, msg, out);
        }
    }

    /// An answer from a home node for local shard `to`: passed on if its
    /// request still waits (in order with the deliveries this relay sent
    /// before), dropped if it was already answered 100.
    fn answer_arrived(
        &mut self,
        now: Instant,
        to: usize,
        channel: Arc<str>,
        msg: Msg,
        out: &mut impl Output,
    ) {
        let reply_to = match &msg {
            Msg::Reply { reply_to, .. } | Msg::Subscribed { reply_to, .. } => *reply_to,
            _ => return,
        };
        let c = self.cluster.as_mut().expect("in a cluster");
        let key = (to, reply_to.conn, reply_to.cmd_id, channel);
        if c.pending.remove(&key).is_none() {
            c.stats.late += 1;
            return;
        }
        let timeout = c.view.request_timeout;
        let subscribed = match &msg {
            Msg::Subscribed {
                channel,
                position,
                story: None,
                ..
            } => Some((channel.clone(), *position)),
            _ => None,
        };
        let msg = match subscribed.and_then(|(ch, p)| Some((c.relays.get_mut(&ch)?, p))) {
            // Deliveries the home sent before this answer are still on
            // their way: it waits for them, so the shard sees them first
            // and the answer follow on.
            Some((r, position)) if behind(r.position, position) => {
                r.held.push((now + timeout, to, msg));
                return;
            }
            Some((r, _)) => caught_up(r, msg),
            None => msg,
        };
        if to < self.shards {
            let _ = self.dispatch(now, to, msg, out);
        }
    }

    /// A request from another node for a channel this node is not home
    /// for (live sets briefly disagree): answered 100; a relay's interest
    /// gets no marker and its waiters retry.
    fn misrouted(&mut self, now: Instant, channel: Arc<str>, msg: Msg, out: &mut impl Output) {
        if let Some(c) = self.cluster.as_mut() {
            c.stats.misrouted += 1;
        }
        if let (Some(from), Some(reply_to)) = (msg.sender(), msg.reply_to()) {
            let subscribe = matches!(msg, Msg::Subscribe { .. });
            self.fail_request(
                now,
                from,
                channel,
                reply_to,
                subscribe,
                ErrorCode::Internal,
                out,
            );
        }
    }

    // ---- the home: other nodes' interest and members ------------------------

    /// At home: another node's relay has (or no longer has) subscribers.
    /// Its answer is a marker on the channel's subject, in order with the
    /// deliveries.
    pub(super) fn on_remote_interest(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        from: usize,
        on: bool,
        out: &mut impl Output,
    ) {
        let tick = self.tick(now);
        let c = self.cluster.as_mut().expect("remote interest in a cluster");
        let list = c.remote_interest.entry(channel.clone()).or_default();
        if on {
            if !list.contains(&from) {
                list.push(from);
            }
        } else {
            list.retain(|&a| a != from);
        }
        let any = !list.is_empty();
        if !any {
            c.remote_interest.remove(&channel);
        }
        let p = self.hub.set_interest(&channel, REMOTE_BIT, any, tick);
        if on {
            self.broadcast_marker(&channel, p, out);
        }
    }

    pub(super) fn broadcast_marker(
        &mut self,
        channel: &Arc<str>,
        p: Position,
        out: &mut impl Output,
    ) {
        if !out.broadcast(channel, Broadcast::Marker(p))
            && let Some(c) = self.cluster.as_mut()
            && !c.lost_broadcasts.contains(channel)
        {
            c.lost_broadcasts.push(channel.clone());
        }
    }

    /// At home: sends a push once on the channel's subject for every
    /// interested node. A publication that cannot be queued is followed by
    /// a marker, so the relays see the gap.
    pub(super) fn broadcast_push(&mut self, push: &Arc<SharedPub>, out: &mut impl Output) {
        let Some(epoch) = self.hub.peek(&push.channel).map(|p| p.epoch) else {
            return;
        };
        let sent = out.broadcast(&push.channel, Broadcast::Push { epoch, push });
        if !sent
            && matches!(push.body, PushBody::Pub(_))
            && let Some(c) = self.cluster.as_mut()
            && !c.lost_broadcasts.contains(&push.channel)
        {
            c.lost_broadcasts.push(push.channel.clone());
        }
    }

    /// At home: remembers (or forgets) a member that joined from another
    /// node, to leave for it if its node leaves.
    pub(super) fn note_remote_member(
        &mut self,
        channel: &Arc<str>,
        client: &Arc<str>,
        conn: ConnRef,
        from: usize,
        joined: bool,
    ) {
        let Some((slot, _)) = remote_parts(from) else {
            return;
        };
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let m = RemoteMember {
            channel: channel.clone(),
            client: client.clone(),
            conn,
            from,
        };
        let list = c.remote_members.entry(slot).or_default();
        if joined {
            list.push(m);
        } else if let Some(i) = list.iter().position(|x| *x == m) {
            list.swap_remove(i);
        }
    }

    /// The node, its incarnation and the shard of a member that joined
    /// from `from` (a local shard or another node's address), as the
    /// presence bucket names them.
    pub(super) fn origin_node(&self, from: usize) -> Option<(Arc<str>, u64, u32)> {
        let c = self.cluster.as_ref()?;
        let p = c.placement.as_ref()?;
        match remote_parts(from) {
            Some((slot, shard)) => {
                let node = c.view.nodes.name(slot)?;
                let incarnation = p.incarnation(&node)?;
                Some((node, incarnation, u32::from(shard)))
            }
            None => Some((
                c.view.self_node.clone(),
                p.self_incarnation(),
                u32::try_from(from).ok()?,
            )),
        }
    }

    /// Where a member read from the presence bucket is now, if its node
    /// (that incarnation of it) is live: a local shard, or a remote
    /// address.
    pub(super) fn member_origin(&self, node: &str, incarnation: u64, shard: u32) -> Option<usize> {
        let c = self.cluster.as_ref()?;
        let p = c.placement.as_ref()?;
        if p.incarnation(node) != Some(incarnation) {
            return None;
        }
        if node == &*c.view.self_node {
            let shard = usize::try_from(shard).ok()?;
            return (shard < self.shards).then_some(shard);
        }
        let slot = c.view.nodes.slot(node)?;
        Some(remote_addr(slot, u16::try_from(shard).ok()?))
    }

    /// Drops the interest and members of nodes not in `live` (slots), and
    /// answers 100 the requests that waited for them.
    fn forget_departed(&mut self, now: Instant, live: &[u32], out: &mut impl Output) {
        let tick = self.tick(now);
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mut emptied = Vec::new();
        for (ch, list) in c.remote_interest.iter_mut() {
            list.retain(|&a| remote_parts(a).is_some_and(|(s, _)| live.contains(&s)));
            if list.is_empty() {
                emptied.push(ch.clone());
            }
        }
        for ch in &emptied {
            c.remote_interest.remove(ch);
        }
        let gone_slots: Vec<u32> = c
            .remote_members
            .keys()
            .filter(|s| !live.contains(s))
            .copied()
            .collect();
        let mut members = Vec::new();
        for s in gone_slots {
            members.extend(c.remote_members.remove(&s).unwrap_or_default());
        }
        let stale: Vec<PendingKey> = c
            .pending
            .iter()
            .filter(|(_, p)| !live.contains(&p.slot))
            .map(|(k, _)| k.clone())
            .collect();
        for ch in emptied {
            self.hub.set_interest(&ch, REMOTE_BIT, false, tick);
        }
        for m in members {
            self.leave_for_departed(now, &m.channel, &m.client, m.conn, m.from, out);
        }
        for key in stale {
            self.expire_pending(now, key, out);
        }
    }

    fn expire_pending(&mut self, now: Instant, key: PendingKey, out: &mut impl Output) {
        let c = self.cluster.as_mut().expect("in a cluster");
        let Some(p) = c.pending.remove(&key) else {
            return;
        };
        c.stats.failed += 1;
        let (from, conn, cmd_id, channel) = key;
        let reply_to = ReplyTo { conn, cmd_id };
        self.fail_request(
            now,
            from,
            channel,
            reply_to,
            p.subscribe,
            ErrorCode::Internal,
            out,
        );
    }

    /// This node stopped being `channel`'s home: its subscribers here
    /// recover from the new home, and what the channel kept here goes.
    fn give_up_home(&mut self, now: Instant, channel: &Arc<str>, out: &mut impl Output) {
        let mask = self.hub.interested(channel) & !bit(REMOTE_BIT);
        let position = self.hub.peek(channel);
        if let Some(c) = self.cluster.as_mut() {
            c.remote_interest.remove(channel);
        }
        // Its last member changes go out before the new home reads them.
        self.mirror_release(now, channel, out);
        self.forget_home_channel(channel);
        let follows =
            mask != 0 && position.is_some_and(|p| self.relay_instead(now, channel, mask, p, out));
        if !follows {
            if mask != 0
                && let Some(c) = self.cluster.as_mut()
            {
                c.stats.resyncs += 1;
            }
            self.tell_lost(now, channel, mask, out);
        }
        // What waited for the channel's stored tail goes to its new home.
        for msg in self.forget_stored(now, channel, out) {
            self.handle(now, msg, out);
        }
    }

    /// A relay's marker did not come in time. Never synced: the waiting
    /// shards' interest fails. A moved channel not yet confirmed by its
    /// new home: asked again, up to [`CONFIRM_ATTEMPTS`] times, then its
    /// subscribers recover.
    fn relay_overdue(&mut self, now: Instant, channel: &Arc<str>, out: &mut impl Output) {
        let id = self.id;
        let c = self.cluster.as_mut().expect("relaying in a cluster");
        let timeout = c.view.request_timeout;
        let link_up = c.link_up;
        let Some(r) = c.relays.get_mut(channel) else {
            return;
        };
        if r.confirming == 0 {
            return self.drop_relay(now, channel, false, out);
        }
        if r.confirming >= CONFIRM_ATTEMPTS || !link_up {
            return self.drop_relay(now, channel, true, out);
        }
        r.confirming += 1;
        r.deadline = Some(now + timeout);
        let slot = r.slot;
        self.ask_marker(channel, slot, id, out);
    }

    // ---- time ---------------------------------------------------------------

    /// When the cluster paths next have work.
    pub(super) fn cluster_deadline(&self) -> Option<Instant> {
        let c = self.cluster.as_ref()?;
        let mut at = c.deadlines.front().map(|(d, _)| *d);
        for r in c.relays.values() {
            if let Some(d) = r.deadline {
                at = Some(at.map_or(d, |a| a.min(d)));
            }
        }
        if !c.lost_broadcasts.is_empty() {
            let d = c.lost_retry.unwrap_or(self.origin);
            at = Some(at.map_or(d, |a| a.min(d)));
        }
        if let Some((d, _)) = c.assumed.front() {
            at = Some(at.map_or(*d, |a| a.min(*d)));
        }
        for r in c.relays.values() {
            if let Some(d) = r.held.iter().map(|(d, _, _)| *d).min() {
                at = Some(at.map_or(d, |a| a.min(d)));
            }
        }
        at
    }

    /// This shard has just become the home of stored `channel` (its tail
    /// was read back): relays of its old home on other nodes may still be
    /// on their way (a node that learns of the move before this one has
    /// its marker request refused as misrouted, and asks again only after
    /// `request_timeout`). So that they miss nothing meanwhile, the
    /// channel's publications go out on its subject, which those relays
    /// still watch, for as long as they may take to ask
    /// ([`CONFIRM_ATTEMPTS`] + 1 request timeouts) even if none has asked.
    pub(super) fn assume_remote_interest(&mut self, now: Instant, channel: &Arc<str>) {
        let tick = self.tick(now);
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let until = now + c.view.request_timeout * (u32::from(CONFIRM_ATTEMPTS) + 1);
        c.assumed.push_back((until, channel.clone()));
        self.hub.set_interest(channel, REMOTE_BIT, true, tick);
    }

    /// Requests whose answer is overdue get 100; relays still without a
    /// marker give up (their waiters' interest fails); lost broadcasts
    /// are followed by a marker.
    pub(super) fn cluster_timeouts(&mut self, now: Instant, out: &mut impl Output) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mut due = Vec::new();
        while c.deadlines.front().is_some_and(|(d, _)| *d <= now) {
            let (_, key) = c.deadlines.pop_front().expect("front exists");
            if c.pending.contains_key(&key) {
                due.push(key);
            }
        }
        let stuck: Vec<Arc<str>> = c
            .relays
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|d| d <= now))
            .map(|(ch, _)| ch.clone())
            .collect();
        let lost = if c.lost_retry.is_none_or(|r| r <= now) {
            std::mem::take(&mut c.lost_broadcasts)
        } else {
            Vec::new()
        };
        for key in due {
            self.expire_pending(now, key, out);
        }
        for ch in stuck {
            self.relay_overdue(now, &ch, out);
        }
        // Answers whose deliveries never came (lost on the way): the shard
        // gets them as they are and tells the client what it can claim.
        let overdue: Vec<Arc<str>> = self.cluster.as_ref().map_or(Vec::new(), |c| {
            c.relays
                .iter()
                .filter(|(_, r)| r.held.iter().any(|(d, _, _)| *d <= now))
                .map(|(ch, _)| ch.clone())
                .collect()
        });
        for ch in overdue {
            self.release_held(now, &ch, false, out);
        }
        for ch in lost {
            if let Some(p) = self.hub.peek(&ch) {
                self.broadcast_marker(&ch, p, out);
            }
        }
        // Assumed interest no relay confirmed: the channel stops going out
        // on its subject.
        let tick = self.tick(now);
        if let Some(c) = self.cluster.as_mut() {
            while c.assumed.front().is_some_and(|(d, _)| *d <= now) {
                let (_, ch) = c.assumed.pop_front().expect("front exists");
                if !c.remote_interest.contains_key(&ch) && self.hub.peek(&ch).is_some() {
                    self.hub.set_interest(&ch, REMOTE_BIT, false, tick);
                }
            }
        }
        if let Some(c) = self.cluster.as_mut() {
            // Still full: try again a little later, not every turn.
            c.lost_retry = (!c.lost_broadcasts.is_empty()).then(|| now + LOST_RETRY);
        }
    }
}
