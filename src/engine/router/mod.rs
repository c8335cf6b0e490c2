//! The channel router of one shard, as a state machine with no I/O.
//!
//! A shard's router plays two parts. For the channels the shard is *home*
//! for (a hash of the name picks the home), it is the one authority: it
//! assigns offsets, keeps history, presence and idempotency keys, and fans
//! publications out to the shards that have subscribers. For the channels
//! its own connections subscribe to, it keeps the local subscription
//! table, asks the homes for deliveries (*interest*), and hands each
//! delivery to the local subscribers.
//!
//! Everything comes in through methods that take the time as an input
//! (`now`), and everything goes out through an [`Output`]: a reply to a
//! local connection, frames for local subscribers, a close, or a message to
//! another shard's router. The shard shell implements `Output` with sockets
//! and inboxes; the deterministic tests in `sim.rs` implement it with
//! in-memory queues and virtual time. A message for this shard's own home
//! side is handled at once, without a queue.
//!
//! Two ways to subscribe:
//! - *direct*: the shard answers from its own view of the channel (its
//!   position after the last delivery), asking the home only for the
//!   first local subscriber. The fast path, for plain channels.
//! - *through the home*: when the home must see the subscriber (presence,
//!   `max_subscribers`) or the client recovers. The shard holds the
//!   channel (so its interest stays on), sends `Subscribe` after its
//!   interest, and subscribes the connection when the answer comes. The
//!   home answers after every delivery it sent before, so the shard's
//!   position then equals the home's: the recovered publications and the
//!   live ones meet with no gap and no duplicate.
//!
//! Live stories (namespaces with `collaboration = true`) live at their
//! channel's home too: `collab_join` is a subscription through the home
//! that also joins the story; `lock`, `unlock` and `update` are requests to
//! the home; story events are publications on the channel, with offsets
//! and history, and the pushes for one member (`promoted`, `conflict`, `queue`) go
//! to that member's shard.
//!
//! Layout:
//! - `mod.rs`: the router, its settings and the [`Output`] it drives;
//!   commands of local connections.
//! - `home.rs`: the home side (publish, history, presence, subscribe
//!   through the home, timers).
//! - `story.rs`: the home side of live stories (joins, locks, updates,
//!   loading from the story store, their events and writes).
//! - `local.rs`: the local side (interest, deliveries, answers).
//! - [`msg`]: the messages routers send each other.
//! - `sim.rs` (tests): several routers wired by in-memory inboxes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::channel::is_valid_channel;
use crate::engine::cluster::members::MemberWrite;
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::collab::{CollabConfig, CollabEvent, DirectedEvent, Stories, Story};
use crate::engine::durable::DurableEvent;
use crate::engine::history::{HistoryQuery, HistoryStore, MemoryHistory, MemoryHistoryConfig};
use crate::engine::hub::{Hub, Position, home_shard};
use crate::engine::idempotency::IdempotencyWindow;
use crate::engine::namespace::{NamespaceOptions, Namespaces};
use crate::engine::presence::Presence;
use crate::engine::subs::{ConnRef, Subscriber, Subscriptions};
use crate::engine::wire::publication::{LocalPub, PubData, PubEncoder, SharedPub};
use crate::engine::wire::{ClientInfo, ReplyBody};
use crate::engine::ws::deflate::Compressor;

mod cluster;
mod durable_ack;
mod home;
mod local;
mod mirror;
pub mod msg;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_cluster;
#[cfg(test)]
mod sim_collab;
#[cfg(test)]
mod sim_features;
mod stats;
mod stored;
pub mod story;

pub use cluster::{Broadcast, ClusterStats, ClusterView, FromNode, REMOTE_BIT};
pub use mirror::MirrorStats;
pub(crate) use msg::PublishReq;
pub use msg::{Answer, CollabAsk, CollabOp, Msg, MsgKind, ReplyTo, StoryJoined, Who};
pub use stats::{RouterStats, StoryStats};
pub use stored::{STORE_TIMEOUT, StoredStats};

/// Where a router's decisions go. Implemented by the shard shell (sockets,
/// inboxes) and by the deterministic tests (in-memory queues).
pub trait Output {
    /// Answers command `id` of local connection `conn`. Answers to
    /// [`SERVER_INITIATED`] commands other than those sent through
    /// [`Output::server_push`] (errors) have no one to go to.
    fn reply(&mut self, conn: ConnRef, id: u32, body: ReplyBody<'_>);
    /// Queues a publication (or presence events) to local subscribers.
    /// `frames` hands out the frame for each connection's wire form
    /// (encoding it the first time a form is needed); a subscriber that
    /// cannot take it (over its byte budget) is the implementation's to
    /// close. `push.high_priority` frames go before normal data already
    /// queued.
    fn deliver(&mut self, subs: &[Subscriber], frames: &mut LocalPub<'_>, push: &SharedPub);
    /// Tells local connection `conn` about a subscription change the
    /// server made on its behalf ([`SERVER_INITIATED`]): `body` is the
    /// `Subscribe` or `Unsubscribe` result, sent as a push on `channel`.
    fn server_push(&mut self, conn: ConnRef, channel: &str, body: ReplyBody<'_>);
    /// Ends local connection `conn` with `reason`.
    fn close(&mut self, conn: ConnRef, reason: CloseReason);
    /// Sends `msg` to shard `to`, in order with the earlier messages to
    /// it. Gives the message back when it was refused, which only a
    /// [`Msg::refusable`] message may be (queues full).
    fn send(&mut self, to: usize, msg: Msg) -> Result<(), Msg>;
    /// Pushes `event` (`promoted`, `conflict`, `queue`) to local connection `conn`,
    /// a member of the story `channel`.
    fn collab_push(&mut self, conn: ConnRef, channel: &str, event: &DirectedEvent);
    /// A story this shard is home for changed (only called when the
    /// router has a story store): write its durable part behind.
    fn story_write(&mut self, write: StoryWriteReq<'_>);
    /// Reads `channel`'s story back from the store; the answer comes to
    /// [`Router::story_loaded`]. Only called when the router has a story
    /// store.
    fn story_load(&mut self, channel: &Arc<str>);
    /// `channel`'s story left memory (idle, or to make room): forget what
    /// was kept for writing it.
    fn story_evicted(&mut self, channel: &Arc<str>);
    /// An event for the backend's permanent storage; `false` when the
    /// sink cannot take it now (its queue and spill are full). A
    /// publication's event is made before the publication is accepted, so
    /// a refusal is answered 112 and nothing is lost.
    ///
    /// With `ack` (a publisher's `durable_ack` wait), the sink's outcome
    /// comes back to [`Router::durable_confirmed`] with that token, once,
    /// if it took the event.
    fn durable(&mut self, event: DurableEvent, ack: Option<u64>) -> bool;
    /// Whether `channel`'s story sink can take an event now (asked before
    /// a story update of a `durable_collab` namespace is accepted, so a
    /// full sink refuses the update with 112 rather than losing it).
    fn durable_room(&mut self, channel: &Arc<str>) -> bool;
    /// Sends `msg`, about `channel`, to shard or node address `to` of
    /// another node (`crate::engine::cluster::nodes::remote_addr`). Gives
    /// the message back when the cluster queue refused it. Only called in
    /// a cluster.
    fn send_remote(&mut self, to: usize, channel: &Arc<str>, msg: Msg) -> Result<(), Msg>;
    /// Publishes `what` once on `channel`'s subject, for every node
    /// interested in it; `false` when the cluster queue refused it. Only
    /// called in a cluster.
    fn broadcast(&mut self, channel: &Arc<str>, what: Broadcast<'_>) -> bool;
    /// This node starts (or stops) listening to `channel`'s subject. Only
    /// called in a cluster.
    fn watch(&mut self, channel: &Arc<str>, on: bool);
    /// Writes publication `offset` of `channel` (epoch `epoch`, namespace
    /// index `ns`, `body` a `StoredPub`) to the channel's JetStream stream;
    /// the acknowledgement comes to [`Router::stored_answer`]. `false`:
    /// the cluster queue refused it. Only called for stored channels.
    fn persist(
        &mut self,
        ns: usize,
        channel: &Arc<str>,
        epoch: u64,
        offset: u64,
        body: Vec<u8>,
    ) -> bool;
    /// Reads `channel`'s stored tail back; the answer comes to
    /// [`Router::stored_answer`]. `false`: the cluster queue refused it.
    /// Only called for stored channels.
    fn load_stored(&mut self, ns: usize, channel: &Arc<str>) -> bool;
    /// Writes the changes to a channel's members to the presence bucket
    /// (`crate::engine::cluster::members`); a write JetStream did not
    /// acknowledge comes back as [`StoreAnswer::MembersUnwritten`]. `false`:
    /// the cluster queue refused it. Only called for stored channels in a
    /// cluster.
    ///
    /// [`StoreAnswer::MembersUnwritten`]: crate::engine::cluster::stored::StoreAnswer::MembersUnwritten
    fn mirror_members(&mut self, write: MemberWrite) -> bool;
    /// `history_remove` of a stored channel: writes a floor marker at
    /// `floor` to its stream and purges everything before it; the answer
    /// comes to [`Router::stored_answer`]. `false`: the cluster queue
    /// refused it. Only called for stored channels.
    fn purge_stored(&mut self, ns: usize, channel: &Arc<str>, floor: Position) -> bool;
}

/// A story's change, for [`Output::story_write`].
#[derive(Debug, Clone, Copy)]
pub struct StoryWriteReq<'a> {
    /// The story's channel.
    pub channel: &'a Arc<str>,
    /// The story after the change.
    pub story: &'a Story,
    /// The sections whose data or lock changed (repeats possible): write
    /// each one's current state (a section without a lock: unlocked).
    pub touched: &'a [Arc<str>],
    /// Whether editors are present.
    pub active: bool,
    /// The router's clock (for [`Story::export`] and lock expiries).
    pub now_ms: u64,
    /// The same instant as Unix milliseconds.
    pub unix_ms: u64,
}

/// The settings a router needs.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This shard's index.
    pub shard: usize,
    /// Number of shards on the node.
    pub shards: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// A channel nobody listens to is forgotten (new epoch) after this,
    /// unless its history still holds publications.
    pub channel_idle_ttl: Duration,
    /// permessage-deflate for publications: (zlib level, smallest payload
    /// worth compressing); `None` when compression is off.
    pub compression: Option<(u32, usize)>,
    /// Room for this many local connection slots up front.
    pub expected_connections: usize,
    /// Channel namespaces and their options.
    pub namespaces: Arc<Namespaces>,
    /// Bytes of history this shard's channels may hold together.
    pub history_memory_limit: usize,
    /// Most publications one recovery returns; beyond it, not recovered.
    pub recovery_max_publications: usize,
    /// Most publications one `history` call returns.
    pub history_max_publications: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Idempotency keys this shard remembers at most.
    pub idempotency_max_keys: usize,
    /// The limits of this shard's story table (`max_stories`,
    /// `idle_evict`); each story takes its namespace's limits.
    pub story_table: CollabConfig,
    /// Whether stories are written behind to a store and read back on the
    /// first join ([`Output::story_write`], [`Output::story_load`]).
    pub story_store: bool,
    /// Unix time in milliseconds at the router's time origin (`now` of
    /// [`Router::new`]): lock expiries and durable events carry Unix time.
    pub unix_origin_ms: u64,
}

/// How often the home checks for idle channels to forget.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often expired history and idempotency keys are dropped.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Presence changes are pushed at most this often per channel: every
/// change within one window goes out in one frame per subscriber.
pub const PRESENCE_TICK: Duration = Duration::from_millis(50);

/// One shard's channel router.
pub struct Router {
    id: usize,
    shards: usize,
    namespaces: Arc<Namespaces>,
    hub: Hub,
    subs: Subscriptions,
    /// Where the channels this shard is home for keep their history: the
    /// in-memory rings by default, any [`HistoryStore`] otherwise.
    history: Box<dyn HistoryStore>,
    presence: Presence,
    idempotency: IdempotencyWindow,
    encoder: PubEncoder,
    compressor: Option<Compressor>,
    origin: Instant,
    idle_ttl: Duration,
    recovery_max: usize,
    history_max: usize,
    next_sweep: Instant,
    next_housekeeping: Instant,
    /// When the presence changes collected so far are pushed.
    presence_flush: Option<Instant>,
    /// Subscriptions through the home waiting for its answer, with their
    /// command ids and whether they recover.
    joining: HashMap<(ConnRef, Arc<str>), (u32, bool)>,
    /// The live stories this shard is home for.
    stories: Stories,
    /// Joins (and commands behind them) waiting for their story to be
    /// read back, by channel, with when the load was asked for.
    story_waiting: HashMap<Arc<str>, (Instant, Vec<Msg>)>,
    /// How many joins wait, all stories together.
    story_waiting_count: usize,
    /// Whether stories are written behind and read back.
    story_store: bool,
    /// Unix milliseconds at `origin`.
    unix_origin_ms: u64,
    /// Reused buffer for a story call's events.
    collab_events: Vec<CollabEvent>,
    /// Channels whose deliveries to a peer were refused; the peer is sent
    /// [`Msg::Lost`] for each once the messages owed to it have gone.
    lost: Vec<Vec<Arc<str>>>,
    /// Counts since the last [`Router::take_stats`].
    stats: RouterStats,
    /// Publishers waiting for their event's durable confirmation.
    durable_waits: durable_ack::DurableWaits,
    /// Presence events of `durable_presence` namespaces made so far (part
    /// of each event's id).
    presence_seq: u64,
    /// The cluster state, when the node is in one.
    cluster: Option<Box<cluster::Cluster>>,
    /// Channels whose history is kept in JetStream, when a namespace asks
    /// for it (set when the router joins a cluster).
    stored: Option<Box<stored::Stored>>,
    /// Members owed to the presence bucket (stored channels in a cluster).
    mirror: mirror::Mirror,
}

/// The command id of a subscription the server makes on a connection's
/// behalf (server API, personal channel): its answer is a `subscribe` (or
/// `unsubscribe`) push instead of a reply. Clients must not use this id.
pub const SERVER_INITIATED: u32 = u32::MAX;

/// A `subscribe` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeRequest<'a> {
    /// Channel name (not yet validated).
    pub channel: &'a str,
    /// Recover from this position, if the namespace allows it.
    pub recover_since: Option<Position>,
}

impl Router {
    /// A router with no channels, keeping history in memory (the embedded
    /// default). `seed` makes epochs unique per process and shard; `now` is
    /// the time origin.
    pub fn new(cfg: &RouterConfig, seed: u64, now: Instant) -> Self {
        let history = MemoryHistory::new(MemoryHistoryConfig {
            memory_limit: cfg.history_memory_limit,
            sweep_budget: crate::engine::history::DEFAULT_SWEEP_BUDGET,
        });
        Self::with_history(cfg, seed, now, Box::new(history))
    }

    /// A router whose history lives in `history` (the seam a replicated
    /// store fills; the session and the wire do not change).
    pub fn with_history(
        cfg: &RouterConfig,
        seed: u64,
        now: Instant,
        history: Box<dyn HistoryStore>,
    ) -> Self {
        Self {
            id: cfg.shard,
            shards: cfg.shards,
            namespaces: cfg.namespaces.clone(),
            hub: Hub::new(seed),
            subs: Subscriptions::with_capacity(cfg.max_subscriptions, cfg.expected_connections),
            history,
            presence: Presence::new(),
            idempotency: IdempotencyWindow::new(
                cfg.idempotency_window.as_millis() as u64,
                cfg.idempotency_max_keys,
            ),
            encoder: PubEncoder::default(),
            compressor: cfg
                .compression
                .map(|(level, min)| Compressor::new(level, min)),
            origin: now,
            idle_ttl: cfg.channel_idle_ttl,
            recovery_max: cfg.recovery_max_publications,
            history_max: cfg.history_max_publications,
            next_sweep: now + SWEEP_EVERY,
            next_housekeeping: now + HOUSEKEEPING_EVERY,
            presence_flush: None,
            joining: HashMap::new(),
            stories: Stories::new(cfg.story_table),
            story_waiting: HashMap::new(),
            story_waiting_count: 0,
            story_store: cfg.story_store,
            unix_origin_ms: cfg.unix_origin_ms,
            collab_events: Vec::new(),
            lost: vec![Vec::new(); cfg.shards],
            stats: RouterStats::default(),
            durable_waits: Default::default(),
            presence_seq: 0,
            cluster: None,
            stored: None,
            mirror: mirror::Mirror::default(),
        }
    }

    /// Whole seconds since the origin: the hub's clock.
    fn tick(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.origin).as_secs() as u32
    }

    /// Milliseconds since the origin: the clock of history, presence and
    /// idempotency.
    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn home(&self, channel: &str) -> usize {
        home_shard(channel, self.shards)
    }

    /// The options of a valid channel's namespace, or the error to answer
    /// (an unknown namespace when namespaces are strict).
    fn options(&self, channel: &str) -> Result<&NamespaceOptions, ErrorCode> {
        self.namespaces
            .resolve(channel)
            .map(|(_, o)| o)
            .ok_or(ErrorCode::UnknownChannel)
    }

    /// Checks a channel name from a client and resolves its namespace.
    fn check(&self, channel: &str) -> Result<NamespaceOptions, ErrorCode> {
        if !is_valid_channel(channel) {
            return Err(ErrorCode::InvalidChannel);
        }
        self.options(channel).cloned()
    }

    /// Checks a channel name from a client and that it is a story (else
    /// error 122).
    fn check_story(&self, channel: &str) -> Result<NamespaceOptions, ErrorCode> {
        match self.check(channel) {
            Ok(o) if o.collab.is_some() => Ok(o),
            Ok(_) => Err(ErrorCode::NotCollaborative),
            Err(code) => Err(code),
        }
    }

    /// Checks a channel name from a client and that its namespace allows
    /// what the command needs (else error 103).
    fn permit(
        &self,
        channel: &str,
        allows: impl FnOnce(&NamespaceOptions) -> bool,
    ) -> Result<(), ErrorCode> {
        match self.check(channel) {
            Ok(o) if allows(&o) => Ok(()),
            Ok(_) => Err(ErrorCode::PermissionDenied),
            Err(code) => Err(code),
        }
    }

    /// Sends `msg` to shard `to`; this shard's own messages are handled
    /// at once.
    fn dispatch(
        &mut self,
        now: Instant,
        to: usize,
        msg: Msg,
        out: &mut impl Output,
    ) -> Result<(), Msg> {
        if to == self.id {
            self.handle(now, msg, out);
            return Ok(());
        }
        if crate::engine::cluster::nodes::is_remote(to) {
            let channel = cluster::channel_of(&msg).clone();
            return out.send_remote(to, &channel, msg);
        }
        out.send(to, msg)
    }

    /// Sends a request for a local connection's command to the channel's
    /// home, answering "overloaded, retry" if it cannot be queued.
    fn ask_home(&mut self, now: Instant, channel: &str, msg: Msg, out: &mut impl Output) {
        let home = self.home(channel);
        if let Err(msg) = self.dispatch(now, home, msg, out)
            && let Some(r) = msg.reply_to()
        {
            out.reply(r.conn, r.cmd_id, ReplyBody::Error(ErrorCode::Overloaded));
        }
    }

    /// A request made on the server's behalf (the server API's
    /// pseudo-connection in `reply_to`): sent to the channel's home like a
    /// client's command, its answer coming to [`Output::reply`].
    pub fn request(&mut self, now: Instant, msg: Msg, out: &mut impl Output) {
        let Some(channel) = msg.channel().cloned() else {
            return;
        };
        self.ask_home(now, &channel, msg, out);
    }

    /// The options of `channel`'s namespace (`None`: an unknown namespace
    /// under strict namespaces).
    pub fn namespace_options(&self, channel: &str) -> Option<&NamespaceOptions> {
        self.options(channel).ok()
    }

    // ---- commands of local connections -------------------------------------

    /// `subscribe` from local connection `conn` (who it is: `who`).
    pub fn subscribe(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        req: SubscribeRequest<'_>,
        who: &Who<impl Fn() -> ClientInfo>,
        out: &mut impl Output,
    ) {
        let opts = match self.check(req.channel) {
            Ok(o) => o,
            Err(code) => return out.reply(conn, id, ReplyBody::Error(code)),
        };
        let channel = req.channel;
        if self.is_subscribed(conn, channel) {
            return out.reply(conn, id, ReplyBody::Error(ErrorCode::AlreadySubscribed));
        }
        let counted = counted(&opts);
        let since = req
            .recover_since
            .filter(|_| opts.recover && opts.keeps_history());
        if !counted && since.is_none() {
            return self.subscribe_direct(now, conn, id, channel, out);
        }
        let member = counted.then(|| Box::new(who.get().clone()));
        self.subscribe_home(now, conn, id, channel, since, member, None, out);
    }

    /// Subscribes `conn` through the channel's home: holds the channel
    /// (so its interest stays on) and asks the home, which answers with
    /// [`Msg::Subscribed`].
    #[allow(clippy::too_many_arguments)]
    fn subscribe_home(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        since: Option<Position>,
        member: Option<Box<ClientInfo>>,
        collab: Option<CollabAsk>,
        out: &mut impl Output,
    ) {
        if self.subs.count(conn) >= self.subs.max_per_conn() {
            return out.reply(conn, id, ReplyBody::Error(ErrorCode::LimitExceeded));
        }
        let channel: Arc<str> = Arc::from(channel);
        self.joining
            .insert((conn, channel.clone()), (id, since.is_some()));
        if let Some(name) = self.subs.hold(&channel) {
            self.request_interest(now, name, true, out);
        }
        let msg = Msg::Subscribe {
            channel: channel.clone(),
            since,
            member,
            collab,
            from: self.id,
            reply_to: ReplyTo { conn, cmd_id: id },
        };
        let home = self.home(&channel);
        if self.dispatch(now, home, msg, out).is_err() {
            self.joining.remove(&(conn, channel.clone()));
            if let Some(name) = self.subs.unhold(&channel) {
                self.request_interest(now, name, false, out);
            }
            out.reply(conn, id, ReplyBody::Error(ErrorCode::Overloaded));
        }
    }

    /// `unsubscribe {channel}` from local connection `conn`.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        who: &Who<impl Fn() -> ClientInfo>,
        out: &mut impl Output,
    ) {
        let opts = match self.check(channel) {
            Ok(o) => o,
            Err(code) => return out.reply(conn, id, ReplyBody::Error(code)),
        };
        self.leave_channel(
            now,
            conn,
            id,
            channel,
            &opts,
            ReplyBody::Unsubscribe,
            who,
            out,
        );
    }

    /// `collab_leave {channel}`: leaves the story (its locks go at once)
    /// and unsubscribes from its channel.
    pub fn collab_leave(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        who: &Who<impl Fn() -> ClientInfo>,
        out: &mut impl Output,
    ) {
        let opts = match self.check_story(channel) {
            Ok(o) => o,
            Err(code) => return out.reply(conn, id, ReplyBody::Error(code)),
        };
        self.leave_channel(
            now,
            conn,
            id,
            channel,
            &opts,
            ReplyBody::CollabLeave,
            who,
            out,
        );
    }

    /// Ends `conn`'s subscription to `channel` (answering `body`), or the
    /// one waiting for its home.
    #[allow(clippy::too_many_arguments)]
    fn leave_channel(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        opts: &NamespaceOptions,
        body: ReplyBody<'_>,
        who: &Who<impl Fn() -> ClientInfo>,
        out: &mut impl Output,
    ) {
        if self.take_joining(conn, channel).is_some() {
            // Its answer is still to come: forget it now (the answer is then
            // ignored) and release the hold it had.
            answer_conn(out, conn, id, channel, body);
            self.leave_home(now, conn, channel, opts, false, who, out);
            if let Some(name) = self.subs.unhold(channel) {
                self.request_interest(now, name, false, out);
            }
            return;
        }
        match self.subs.unsubscribe(conn, channel) {
            Ok(released) => {
                answer_conn(out, conn, id, channel, body);
                self.leave_home(now, conn, channel, opts, false, who, out);
                if let Some(name) = released {
                    self.request_interest(now, name, false, out);
                }
            }
            Err(code) => out.reply(conn, id, ReplyBody::Error(code)),
        }
    }

    /// `publish {channel, data, idempotency_key?, durable_ack?}` from
    /// local connection `conn` (who it is: `who`, read only for a
    /// `durable` namespace).
    #[allow(clippy::too_many_arguments)]
    pub fn publish<F: Fn() -> ClientInfo>(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        data: PubData,
        idempotency_key: Option<&str>,
        durable_ack: bool,
        who: &Who<F>,
        out: &mut impl Output,
    ) {
        if let Err(code) = self.permit(channel, |o| o.client_publish) {
            return out.reply(conn, id, ReplyBody::Error(code));
        }
        let publisher = self.options(channel).is_ok_and(|o| o.durable).then(|| {
            let w = who.get();
            Box::new(ClientInfo {
                client: w.client.clone(),
                user: w.user.clone(),
                info: None,
            })
        });
        let msg = Msg::Publish {
            channel: Arc::from(channel),
            data,
            idempotency_key: idempotency_key.map(Box::from),
            publisher,
            durable_ack,
            from: self.id,
            reply_to: ReplyTo { conn, cmd_id: id },
        };
        self.ask_home(now, channel, msg, out);
    }

    /// `history {channel, limit?, since?, reverse?}`.
    #[allow(clippy::too_many_arguments)]
    pub fn history(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        limit: Option<u32>,
        since: Option<Position>,
        reverse: bool,
        out: &mut impl Output,
    ) {
        if let Err(code) = self.permit(channel, |o| o.keeps_history()) {
            return out.reply(conn, id, ReplyBody::Error(code));
        }
        let msg = Msg::History {
            channel: Arc::from(channel),
            query: Box::new(HistoryQuery {
                limit: limit.map(|l| l as usize),
                since,
                reverse,
                max: self.history_max,
            }),
            from: self.id,
            reply_to: ReplyTo { conn, cmd_id: id },
        };
        self.ask_home(now, channel, msg, out);
    }

    /// `presence {channel}` (`stats: false`) or `presence_stats {channel}`.
    pub fn presence_query(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        stats: bool,
        out: &mut impl Output,
    ) {
        if let Err(code) = self.permit(channel, |o| o.presence) {
            return out.reply(conn, id, ReplyBody::Error(code));
        }
        let msg = Msg::PresenceQuery {
            channel: Arc::from(channel),
            stats,
            from: self.id,
            reply_to: ReplyTo { conn, cmd_id: id },
        };
        self.ask_home(now, channel, msg, out);
    }

    /// `presence_state {channel, state, ttl?}`: the connection must be
    /// subscribed to the channel.
    #[allow(clippy::too_many_arguments)]
    pub fn presence_state(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        state: &str,
        ttl: Option<Duration>,
        who: &Who<impl Fn() -> ClientInfo>,
        out: &mut impl Output,
    ) {
        if let Err(code) = self.permit(channel, |o| o.presence) {
            return out.reply(conn, id, ReplyBody::Error(code));
        }
        if !self.subs.is_subscribed(conn, channel) {
            return out.reply(conn, id, ReplyBody::Error(ErrorCode::NotSubscribed));
        }
        let msg = Msg::SetState {
            channel: Arc::from(channel),
            client: who.get().client.clone(),
            state: Arc::from(state),
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
            from: self.id,
            reply_to: ReplyTo { conn, cmd_id: id },
        };
        self.ask_home(now, channel, msg, out);
    }

    /// `collab_join {channel, role, queue?, recover?}` from local connection
    /// `conn`: a subscription through the home that also joins the story;
    /// from a connection already subscribed, a change of role.
    #[allow(clippy::too_many_arguments)]
    pub fn collab_join(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        ask: CollabAsk,
        recover_since: Option<Position>,
        who: &Who<impl Fn() -> ClientInfo>,
        out: &mut impl Output,
    ) {
        let opts = match self.check_story(channel) {
            Ok(o) => o,
            Err(code) => return out.reply(conn, id, ReplyBody::Error(code)),
        };
        if self.subs.is_subscribed(conn, channel) {
            let msg = Msg::Collab {
                channel: Arc::from(channel),
                op: Box::new(CollabOp::Join {
                    ask,
                    who: who.get().clone(),
                }),
                from: self.id,
                reply_to: ReplyTo { conn, cmd_id: id },
            };
            return self.ask_home(now, channel, msg, out);
        }
        if self.is_subscribed(conn, channel) {
            // Its subscription is still on its way to the home.
            return out.reply(conn, id, ReplyBody::Error(ErrorCode::AlreadySubscribed));
        }
        let since = recover_since.filter(|_| opts.recover && opts.keeps_history());
        let member = Some(Box::new(who.get().clone()));
        self.subscribe_home(now, conn, id, channel, since, member, Some(ask), out);
    }

    /// `lock`, `unlock` or `update` from local connection `conn`: asks the
    /// story's home. A connection neither subscribed to the channel nor
    /// joining it is no member (error 120) without asking.
    pub fn collab_command(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        op: CollabOp,
        out: &mut impl Output,
    ) {
        if let Err(code) = self.check_story(channel) {
            return out.reply(conn, id, ReplyBody::Error(code));
        }
        // A join still on its way to the home goes first (messages to one
        // shard keep their order), so a command pipelined behind its
        // `collab_join` is decided after it.
        if !self.is_subscribed(conn, channel) {
            return out.reply(conn, id, ReplyBody::Error(ErrorCode::NotEditor));
        }
        let msg = Msg::Collab {
            channel: Arc::from(channel),
            op: Box::new(op),
            from: self.id,
            reply_to: ReplyTo { conn, cmd_id: id },
        };
        self.ask_home(now, channel, msg, out);
    }

    /// Local connection `conn` (who it was: `who`) is gone: drop its
    /// subscriptions, leave the channels whose home counts members, and
    /// tell the homes of channels that lost their last local subscriber.
    pub fn conn_closed(
        &mut self,
        now: Instant,
        conn: ConnRef,
        who: &Who<impl Fn() -> ClientInfo>,
        out: &mut impl Output,
    ) {
        let mut leaving: Vec<Arc<str>> = self.subs.channels_of(conn).cloned().collect();
        let joining: Vec<Arc<str>> = self
            .joining
            .keys()
            .filter(|(c, _)| *c == conn)
            .map(|(_, ch)| ch.clone())
            .collect();
        for ch in &joining {
            self.joining.remove(&(conn, ch.clone()));
        }
        let mut released = Vec::new();
        self.subs.remove_conn(conn, &mut released);
        for ch in &joining {
            if let Some(name) = self.subs.unhold(ch) {
                released.push(name);
            }
        }
        leaving.extend(joining);
        for ch in leaving {
            if let Ok(opts) = self.options(&ch).cloned() {
                self.leave_home(now, conn, &ch, &opts, true, who, out);
            }
        }
        for name in released {
            self.request_interest(now, name, false, out);
        }
    }

    /// Tells the home that a counted member left (`disconnect`: its
    /// connection closed).
    #[allow(clippy::too_many_arguments)]
    fn leave_home(
        &mut self,
        now: Instant,
        conn: ConnRef,
        channel: &str,
        opts: &NamespaceOptions,
        disconnect: bool,
        who: &Who<impl Fn() -> ClientInfo>,
        out: &mut impl Output,
    ) {
        if !counted(opts) {
            return;
        }
        let msg = Msg::Leave {
            channel: Arc::from(channel),
            client: who.get().client.clone(),
            conn,
            from: self.id,
            disconnect,
        };
        let home = self.home(channel);
        // Never refused (not refusable).
        let _ = self.dispatch(now, home, msg, out);
    }

    // ---- messages from other shards ----------------------------------------

    /// A message from another shard's router (or from this one's). In a
    /// cluster, a message for a channel whose home is another node goes
    /// on to it (this shard is the channel's relay on this node).
    pub fn handle(&mut self, now: Instant, msg: Msg, out: &mut impl Output) {
        let msg = if self.cluster.is_some() {
            match self.relay_if_remote(now, msg, out) {
                Some(msg) => msg,
                None => return,
            }
        } else {
            msg
        };
        let Some(msg) = self.park_until_loaded(now, msg, out) else {
            return;
        };
        self.handle_here(now, msg, out);
    }

    /// A message this shard acts on itself (as the channel's home, or as
    /// a shard with subscribers).
    fn handle_here(&mut self, now: Instant, msg: Msg, out: &mut impl Output) {
        match msg {
            Msg::Interest { channel, from, on } => self.on_interest(now, channel, from, on, out),
            Msg::InterestAck { channel, position } => {
                self.on_interest_ack(now, &channel, position, out)
            }
            Msg::InterestFailed { channel } => self.on_interest_failed(&channel, out),
            Msg::Publish {
                channel,
                data,
                idempotency_key,
                publisher,
                durable_ack,
                from,
                reply_to,
            } => {
                let ack = (durable_ack && self.options(&channel).is_ok_and(|o| o.durable))
                    .then(|| self.durable_waits.open(channel.clone(), from, reply_to));
                let req = PublishReq {
                    key: idempotency_key.as_deref(),
                    publisher: publisher.as_deref(),
                    high: false,
                    ack,
                };
                if self.is_stored(&channel) {
                    return self.publish_stored(now, channel, data, req, from, reply_to, out);
                }
                let via = channel.clone();
                let answer = self.publish_home(now, channel, data, req, out);
                self.answer_publish(now, &via, from, reply_to, ack, answer, out);
            }
            Msg::Reply { reply_to, answer } => {
                out.reply(reply_to.conn, reply_to.cmd_id, answer.body())
            }
            Msg::Deliver(p) => self.deliver_local(&p, out),
            Msg::Lost { channel } => self.on_lost(&channel, out),
            Msg::Subscribe {
                channel,
                since,
                member,
                collab,
                from,
                reply_to,
            } => self.on_subscribe(now, channel, since, member, collab, from, reply_to, out),
            Msg::Subscribed {
                channel,
                position,
                result,
                story,
                reply_to,
            } => self.on_subscribed(now, channel, position, result, story, reply_to, out),
            Msg::History {
                channel,
                query,
                from,
                reply_to,
            } => {
                let answer = self.history_home(now, &channel, &query);
                self.answer(now, &channel, from, reply_to, answer, out);
            }
            Msg::Leave {
                channel,
                client,
                conn,
                from,
                disconnect,
            } => self.on_leave(now, &channel, &client, conn, from, disconnect, out),
            Msg::Collab {
                channel,
                op,
                from,
                reply_to,
            } => self.on_collab(now, channel, *op, from, reply_to, out),
            Msg::CollabPush {
                conn,
                channel,
                event,
            } => out.collab_push(conn, &channel, &event),
            Msg::SetState {
                channel,
                client,
                state,
                ttl_ms,
                from,
                reply_to,
            } => {
                let answer = self.set_state_home(now, &channel, &client, state, ttl_ms);
                self.answer(now, &channel, from, reply_to, answer, out);
            }
            Msg::PresenceQuery {
                channel,
                stats,
                from,
                reply_to,
            } => {
                let answer = self.presence_home(now, &channel, stats);
                self.answer(now, &channel, from, reply_to, answer, out);
            }
            Msg::HistoryRemove {
                channel,
                from,
                reply_to,
            } => self.history_remove_home(now, &channel, from, reply_to, out),
        }
    }

    /// Sends a home's answer to a request about `channel` back to the
    /// asking shard (on another node: with the channel, which routes it
    /// through that node's relay).
    fn answer(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        from: usize,
        reply_to: ReplyTo,
        answer: Answer,
        out: &mut impl Output,
    ) {
        let msg = Msg::Reply { reply_to, answer };
        if crate::engine::cluster::nodes::is_remote(from) {
            let _ = out.send_remote(from, channel, msg);
            return;
        }
        // Never refused (not refusable): the client waits for it.
        let _ = self.dispatch(now, from, msg, out);
    }

    /// The loss notices owed to shard `to`, to send once every message
    /// queued for it before has gone.
    pub fn take_lost(&mut self, to: usize) -> Vec<Arc<str>> {
        std::mem::take(&mut self.lost[to])
    }

    // ---- counts ---------------------------------------------------------------

    /// Counts since the last call, and the frames encoded per form.
    pub fn take_stats(&mut self) -> (RouterStats, [u64; 4]) {
        let encodes = std::mem::take(&mut self.encoder.encodes);
        (std::mem::take(&mut self.stats), encodes)
    }

    /// Channels with local subscribers (or waiting for their home).
    pub fn local_channels(&self) -> usize {
        self.subs.channel_count()
    }

    /// Channels this shard is home for.
    pub fn home_channels(&self) -> usize {
        self.hub.len()
    }

    /// Every channel with local subscribers, with their number.
    pub fn channels(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.subs.channels()
    }

    /// Whether local connection `conn` is subscribed to `channel` (or
    /// waiting for the home's answer).
    pub fn is_subscribed(&self, conn: ConnRef, channel: &str) -> bool {
        self.subs.is_subscribed(conn, channel)
            || (!self.joining.is_empty() && self.joining.contains_key(&(conn, Arc::from(channel))))
    }

    /// Forgets `conn`'s subscription to `channel` waiting for its home, if
    /// there is one; its command id. (No allocation when none is waiting,
    /// the usual case.)
    fn take_joining(&mut self, conn: ConnRef, channel: &str) -> Option<(u32, bool)> {
        if self.joining.is_empty() {
            return None;
        }
        self.joining.remove(&(conn, Arc::from(channel)))
    }

    /// The stories this shard is home for: their number and totals.
    pub fn story_stats(&self) -> StoryStats {
        StoryStats {
            stories: self.stories.len(),
            members: self.stories.members(),
            locks: self.stories.locks(),
            bytes: self.stories.bytes(),
            evictions: self.stories.evictions(),
            refused: self.stories.refused(),
            waiting: self.story_waiting_count,
        }
    }

    /// The history store's sizes and eviction counts.
    pub fn history_stats(&self) -> crate::engine::history::HistoryStats {
        self.history.stats()
    }
}

/// Answers a local connection: a reply to its command, or a push when
/// the server acted on its behalf.
fn answer_conn(out: &mut impl Output, conn: ConnRef, id: u32, channel: &str, body: ReplyBody<'_>) {
    if id == SERVER_INITIATED {
        out.server_push(conn, channel, body);
    } else {
        out.reply(conn, id, body);
    }
}

/// Whether the home keeps a channel's members: for presence, to enforce
/// `max_subscribers`, and for stories (a member must leave its story).
fn counted(opts: &NamespaceOptions) -> bool {
    opts.counts_members()
}

/// Sends a frame to every local subscriber of a push.
fn hand_out(
    subs: &[Subscriber],
    push: &SharedPub,
    encoder: &mut PubEncoder,
    compressor: Option<&mut Compressor>,
    out: &mut impl Output,
) {
    let mut frames = LocalPub::new(push, encoder, compressor);
    out.deliver(subs, &mut frames, push);
}
