//! The shard: one thread's connections, subscriptions and home channels,
//! driven by one event loop. Everything here runs on the shard's thread
//! and nothing is shared mutably with other threads; other shards are
//! reached only through their inboxes.
//!
//! A loop turn: collect ready sockets from the shard's epoll set (without
//! blocking), accept, read and decode, run commands, drain the inbox, then
//! give every connection with pending output exactly one `writev`. With
//! `io = "uring"` the turn takes the ring's completions instead of ready
//! sockets (accepted connections, received bytes, finished sends), and the
//! write pass queues one send per connection, submitted once at the end.
//!
//! Layout: this file holds the shard's state, the loop turn, accepting and
//! closing; `read` the read path (bytes → session → commands), `timers` the
//! tick, deadlines and the drain, `tls_io` the TLS side table, `uring_io`
//! the io_uring side of the turn.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slab::Slab;
use tracing::{info, warn};

use super::ShardContext;
use super::accept::{Accept, Acceptor, refuse};
use super::access::ShardAccess;
use super::commands::shard_out;
use super::conn::{Conn, TOKEN_DOORBELL, TOKEN_LISTENER, conn_ref, token};
use super::drain::{DRAIN_STEP, Drain};
use super::peers::Peers;
use super::sys::{self, CONN_EVENTS, Epoll, LEVEL_IN};
use super::uring::{self, Cqe, RING_EVENTS, TOKEN_RING, Uring};
use super::write::{WriteQueue, write_pass, write_pass_uring};
use crate::bridge::Inbox;
use crate::engine::codes::CloseReason;
use crate::engine::heartbeat::HeartbeatConfig;
use crate::engine::router::{Router, RouterConfig};
use crate::engine::session::{Feed, Input, Phase, Request, SessionConfig, Timeout};
use crate::engine::subs::ConnRef;
use crate::engine::timer::TimerWheel;
use crate::engine::wire::FrameWriter;
use crate::engine::ws::deflate::{Compressor, DeflateConfig, Inflater, frame_for};
use crate::engine::ws::frame::{Event, Flow};
use crate::engine::ws::handshake::{Endpoint, HandshakeConfig, Reject, UpgradeRequest};
use crate::metrics::{HandshakeResult, Refusal, ShardMetrics, Stats};

mod read;
mod timers;
mod tls_io;
mod uring_io;
pub use tls_io::TlsServing;
use tls_io::TlsShard;

/// Bytes read per `read(2)`; the one read buffer of the shard.
const SCRATCH: usize = 64 * 1024;
/// Bytes read from one connection per turn before others get a go.
const READ_BUDGET: usize = 256 * 1024;
/// Connections accepted per turn.
const ACCEPT_BATCH: usize = 512;
/// Inbox messages handled per turn.
const INBOX_BATCH: usize = 8192;
/// epoll events collected per turn.
const EVENTS: usize = 1024;
/// Connection deadlines handled per loop turn. Connections that arrived
/// together come due together (every handshake deadline of a connect
/// burst in one tick, and their pings every `ping_interval` after); handled
/// a slice per turn, they hold up reading and writing for at most a few
/// hundred microseconds instead of for the whole burst at once.
const DEADLINE_BUDGET: usize = 512;

/// The connection `c` names in `conns`, if it still exists (shared).
pub(crate) fn slot_ref(conns: &Slab<Conn>, c: ConnRef) -> Option<&Conn> {
    conns
        .get(c.idx as usize)
        .filter(|conn| conn.generation == c.generation)
}

/// The connection `c` names in `conns`, if it still exists (a field-level
/// borrow, so other shard fields stay usable).
pub(crate) fn slot(conns: &mut Slab<Conn>, c: ConnRef) -> Option<&mut Conn> {
    conns
        .get_mut(c.idx as usize)
        .filter(|conn| conn.generation == c.generation)
}

/// One shard's whole state.
pub struct Shard {
    pub(crate) id: usize,
    pub(crate) ctx: ShardContext,
    epoll: Epoll,
    /// The listener and what keeps accepting graceful at the limits.
    acceptor: Acceptor,
    pub(crate) conns: Slab<Conn>,
    next_generation: u32,
    /// Channels: the home side and the local subscriptions.
    pub(crate) router: Router,
    /// Closes decided while the router ran, carried out right after.
    pub(crate) closes: Vec<(ConnRef, CloseReason)>,
    /// History evictions counted so far (the metrics take the increase).
    evicted_before: [u64; 3],
    /// The open connections of each user that said who it is (server API
    /// calls by user).
    pub(crate) users: HashMap<Arc<str>, Vec<ConnRef>>,
    /// Expiries of subscriptions granted by subscription tokens.
    pub(crate) sub_expiries: super::auth::SubExpiries,
    /// Commands held while a `connect` waits for its ticket.
    pub(crate) held: super::held::Held,
    wheel: TimerWheel<ConnRef>,
    started: Instant,
    pub(crate) now_tick: u32,
    next_tick: Instant,
    pub(crate) scratch: Vec<u8>,
    events: Vec<libc::epoll_event>,
    pub(crate) dirty: WriteQueue,
    /// Connections whose wheel slot came due, handled `DEADLINE_BUDGET`
    /// per turn.
    due: VecDeque<ConnRef>,
    read_backlog: Vec<ConnRef>,
    inbox_pending: bool,
    pub(crate) writer: FrameWriter,
    pub(crate) push_writer: FrameWriter,
    /// Compresses replies and pushes (None when compression is off).
    /// Publications are compressed once by the router.
    pub(crate) compressor: Option<Compressor>,
    /// Inflates compressed client messages (taken while in use).
    inflater: Option<Inflater>,
    /// The other shards' inboxes and what is owed to them.
    pub(crate) peers: Peers,
    /// The connection whose message is being handled (its replies are
    /// batched into `writer`).
    pub(crate) current: Option<ConnRef>,
    /// Publication acceptance times with the write-queue position of the
    /// last subscriber they were queued for (latency histogram).
    pub(crate) sent_stamps: VecDeque<(Instant, u64)>,
    pub(crate) stats: Stats,
    pub(crate) metrics: ShardMetrics,
    /// What every connection's session shares (limits, timeouts).
    pub(crate) session_cfg: SessionConfig,
    /// Closing connections whose close deadline found output still on its
    /// way to the peer, with the bytes left then (see `close_deadline`).
    delivering: HashMap<ConnRef, usize>,
    drain: Option<Drain>,
    stopped: bool,
    pub(crate) node_nonce: u32,
    /// The `[access]` rules' per-connection and per-shard state.
    pub(crate) access: ShardAccess,
    /// TLS connections' state, handshake budget and backlog (`[tls]` on).
    tls: Option<TlsShard>,
    /// Story persistence and durable events.
    pub(crate) stories: super::story::ShardStories,
    /// The cluster, when the node is in one.
    pub(crate) cluster: Option<super::cluster::ShardCluster>,
    /// Server API calls answered later (a channel homed on another node,
    /// or kept in JetStream), by their id on the API's pseudo-connection.
    pub(crate) api_waiting: super::api::ApiWaiting,
    /// SSE fallback streams and the posts passed to other shards.
    pub(crate) sse: super::sse::ShardSse,
    /// The io_uring data path (`io = "uring"`, plain connections only).
    uring: Option<Uring>,
    /// The turn's completions, copied out of the ring.
    cqes: Vec<Cqe>,
    /// The ring's metric handles (with `uring`).
    uring_metrics: Option<crate::metrics::UringShardMetrics>,
    /// The `[access]` rules look at the peer's address (the multishot
    /// accept does not give it; `getpeername` does when needed).
    needs_peer: bool,
}

impl Shard {
    /// Builds shard `id` around its listener.
    pub(crate) fn new(id: usize, ctx: ShardContext, listener: OwnedFd) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let uring = uring_io::ring_for(id, &ctx)?;
        match &uring {
            // The ring accepts; its completions wake the shard.
            Some(u) => epoll.add(u.eventfd(), RING_EVENTS, TOKEN_RING)?,
            None => epoll.add(listener.as_raw_fd(), LEVEL_IN, TOKEN_LISTENER)?,
        }
        epoll.add(ctx.inboxes[id].doorbell_fd(), LEVEL_IN, TOKEN_DOORBELL)?;
        let cfg = &ctx.config;
        let session_cfg = SessionConfig {
            handshake: HandshakeConfig {
                client_path: cfg.ws_path.clone(),
                echo_path: cfg.echo_path.clone(),
                max_head_bytes: cfg.max_handshake_bytes,
                deflate: DeflateConfig {
                    enabled: cfg.compression,
                },
                sse: cfg.sse,
                max_post_body: cfg.max_message_size,
            },
            heartbeat: HeartbeatConfig {
                ping_interval: cfg.ping_interval.as_secs() as u32,
                pong_timeout: cfg.pong_timeout.as_secs() as u32,
            },
            max_message_size: cfg.max_message_size,
            handshake_timeout: cfg.handshake_timeout.as_secs() as u32,
            connect_timeout: cfg.auth.connect_timeout.as_secs() as u32,
            close_timeout: cfg.close_timeout.as_secs() as u32,
            max_commands_per_second: cfg.max_commands_per_second,
        };
        let peers = ctx.inboxes.len();
        let metrics = ctx.metrics.shard(id);
        let per_shard = ctx.shared.max_connections().div_ceil(peers) + 64;
        let seed = rand::random::<u64>() ^ ((id as u64) << 56);
        let tls = (ctx.tls.clone()).map(|t| TlsShard::new(t, ctx.metrics.tls_shard(id)));
        Ok(Self {
            id,
            compressor: cfg
                .compression
                .then(|| Compressor::new(cfg.compression_level, cfg.compression_min_size)),
            inflater: cfg.compression.then(Inflater::default),
            router: in_cluster(
                &ctx,
                Router::new(
                    &RouterConfig {
                        shard: id,
                        shards: peers,
                        max_subscriptions: cfg.max_subscriptions,
                        channel_idle_ttl: cfg.channel_idle_ttl,
                        compression: cfg
                            .compression
                            .then_some((cfg.compression_level, cfg.compression_min_size)),
                        expected_connections: per_shard,
                        namespaces: ctx.namespaces.clone(),
                        // Node-wide bounds, split evenly between the shards.
                        history_memory_limit: (cfg.history_memory_limit / peers as u64) as usize,
                        recovery_max_publications: cfg.recovery_max_publications,
                        history_max_publications: cfg.history_max_publications,
                        idempotency_window: cfg.idempotency_window,
                        idempotency_max_keys: cfg.idempotency_max_keys.div_ceil(peers),
                        story_table: cfg.collab.story_table(peers),
                        story_store: ctx.stories.is_some(),
                        unix_origin_ms: super::story::unix_now_ms(),
                    },
                    seed,
                    Instant::now(),
                ),
            ),
            cluster: ctx.cluster.as_ref().map(|(shared, client)| {
                super::cluster::ShardCluster::new(
                    shared.clone(),
                    client.clone(),
                    ctx.metrics.cluster(),
                )
            }),
            stories: super::story::ShardStories::new(ctx.stories.clone()),
            api_waiting: Default::default(),
            sse: super::sse::ShardSse::new(
                match &ctx.cluster {
                    Some((shared, _)) => shared.self_node.clone(),
                    None => super::sse::id_node_name(&cfg.node_name),
                },
                ctx.metrics.sse(),
            ),
            closes: Vec::new(),
            users: HashMap::new(),
            sub_expiries: Default::default(),
            held: Default::default(),
            evicted_before: [0; 3],
            session_cfg,
            delivering: HashMap::new(),
            epoll,
            acceptor: if uring.is_some() {
                Acceptor::in_ring(listener, tls.is_some())
            } else {
                Acceptor::new(listener, tls.is_some())
            },
            needs_peer: uring_io::needs_peer(&ctx.config.access),
            uring_metrics: uring.as_ref().map(|_| ctx.metrics.uring_shard(id)),
            uring,
            cqes: Vec::with_capacity(uring::CQE_BATCH),
            // Sized up front (address space only: pages are touched as
            // slots are used), so growth never copies a million slots.
            conns: Slab::with_capacity(per_shard),
            next_generation: 1,
            wheel: TimerWheel::new(64, 0),
            started: Instant::now(),
            now_tick: 0,
            next_tick: Instant::now() + Duration::from_secs(1),
            scratch: vec![0; SCRATCH],
            events: Vec::with_capacity(EVENTS),
            dirty: WriteQueue::default(),
            due: VecDeque::new(),
            read_backlog: Vec::new(),
            inbox_pending: true,
            writer: FrameWriter::new(),
            push_writer: FrameWriter::new(),
            peers: Peers::new(ctx.inboxes.clone()),
            current: None,
            sent_stamps: VecDeque::new(),
            stats: Stats::default(),
            metrics,
            drain: None,
            stopped: false,
            node_nonce: ctx.shared.node_nonce,
            access: ShardAccess::new(ctx.access.clone()),
            tls,
            ctx,
        })
    }

    /// How the shard does its socket I/O (for the log).
    pub(crate) fn io_name(&self) -> &'static str {
        if self.uring.is_some() {
            "uring"
        } else {
            "epoll"
        }
    }

    /// The epoll descriptor the runtime waits on.
    pub(crate) fn epoll_fd(&self) -> std::os::fd::RawFd {
        self.epoll.raw_fd()
    }

    /// Whether the shard has finished (drained).
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// When the next tick is due.
    pub(crate) fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// When the loop must wake at the latest: the next tick or the
    /// router's next deadline (presence pushes and expiries).
    pub(crate) fn next_wake(&self) -> Instant {
        self.next_tick.min(self.router.poll_timeout())
    }

    pub(crate) fn inbox(&self) -> &Inbox {
        &self.ctx.inboxes[self.id]
    }

    /// The connection `c` names, if it still exists.
    pub(crate) fn conn_mut(&mut self, c: ConnRef) -> Option<&mut Conn> {
        slot(&mut self.conns, c)
    }

    /// Queues `c` for the write pass.
    pub(crate) fn mark_dirty(&mut self, c: ConnRef) {
        if let Some(conn) = self.conn_mut(c)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(c);
        }
    }

    /// One loop turn. Returns true if work is left over (do not sleep).
    pub(crate) fn turn(&mut self) -> bool {
        self.tls_start_turn();
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.epoll.poll(&mut events) {
            warn!(shard = self.id, error = %e, "epoll_wait failed");
        }
        let full = events.len() == events.capacity();
        for ev in &events {
            let (tok, bits) = (ev.u64, ev.events);
            match tok {
                TOKEN_LISTENER => self.accept_ready(),
                TOKEN_DOORBELL => self.inbox_pending = true,
                // Completions are looked at every turn (below).
                TOKEN_RING => {}
                t => {
                    let c = conn_ref(t);
                    let readable =
                        (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                    if bits & readable != 0 {
                        self.read_conn(c);
                    }
                    if bits & libc::EPOLLOUT as u32 != 0 {
                        self.mark_dirty(c);
                    }
                }
            }
        }
        self.events = events;
        let cq_full = self.uring.is_some() && self.uring_complete();
        if self.inbox_pending {
            self.drain_inbox();
        }
        if !self.read_backlog.is_empty() {
            let backlog = std::mem::take(&mut self.read_backlog);
            for c in backlog {
                if let Some(conn) = self.conn_mut(c) {
                    conn.in_backlog = false;
                    self.read_conn(c);
                }
            }
        }
        if !self.due.is_empty() {
            self.run_deadlines();
        }
        let now = Instant::now();
        self.cluster_changes(now);
        self.router_timers(now);
        self.flush();
        self.retry_owed();
        self.flush_metrics();
        full || cq_full
            || self.inbox_pending
            || self.uring.as_mut().is_some_and(Uring::has_completions)
            || !self.read_backlog.is_empty()
            || self.tls.as_ref().is_some_and(TlsShard::has_backlog)
            || !self.dirty.is_empty()
            || !self.due.is_empty()
    }

    fn drain_inbox(&mut self) {
        self.inbox().clear_doorbell();
        self.inbox_pending = false;
        // Few (one per waiting publisher), and each only answers one.
        while let Some((token, ok)) = self.inbox().pop_confirmation() {
            let mut out = shard_out!(self);
            self.router
                .durable_confirmed(Instant::now(), token, ok, &mut out);
            self.apply_closes();
        }
        // At most one per backend call the node holds.
        while let Some((c, id, kind)) = self.inbox().pop_rpc_lost() {
            self.on_rpc_lost(c, id, kind);
        }
        // At most one per post this shard passed to another's stream.
        while let Some((c, answer)) = self.inbox().pop_sse_answer() {
            self.on_sse_answer(c, answer);
        }
        for _ in 0..INBOX_BATCH {
            let Some(msg) = self.inbox().pop() else {
                return;
            };
            self.handle_msg(msg);
        }
        // More waiting: come back next turn without sleeping.
        self.inbox_pending = true;
    }

    // ---- accepting --------------------------------------------------------

    fn accept_ready(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.acceptor.accept() {
                Accept::Conn(fd, peer) => self.admit(fd, peer),
                Accept::Empty => return,
                Accept::OutOfFds => {
                    self.metrics.refused(Refusal::FdLimit);
                    self.limit_log("out of file descriptors: refusing new connections with 503");
                    if self.acceptor.refuse_one_with_spare(&self.epoll) {
                        self.metrics.handshake(Reject::Unavailable);
                    }
                    return;
                }
                Accept::OutOfMemory => {
                    self.limit_log("accept: out of kernel memory; pausing accepts");
                    self.acceptor.pause(&self.epoll);
                    return;
                }
                Accept::Failed(e) => {
                    warn!(shard = self.id, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, fd: OwnedFd, peer: Option<std::net::IpAddr>) {
        self.stats.accepted += 1;
        let Some(admitted) = self.screen_peer(&fd, peer) else {
            return;
        };
        let shared = &self.ctx.shared;
        let refusal = if self.drain.is_some() {
            Some(Refusal::Draining)
        } else if shared.memory_exceeded.load(Ordering::Relaxed) {
            Some(Refusal::Memory)
        } else if !shared.try_admit() {
            Some(Refusal::MaxConnections)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.metrics.refused(reason);
            self.metrics.handshake(Reject::Unavailable);
            if reason != Refusal::Draining {
                self.limit_log(&format!("refusing connections: {reason}"));
            }
            self.access.forget(admitted);
            refuse(&fd, self.tls.is_some());
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let conn = Conn::new(fd, generation, self.now_tick, &self.session_cfg);
        let deadline = conn.session.deadline();
        let raw = conn.raw_fd();
        let idx = self.conns.insert(conn) as u32;
        let c = ConnRef { idx, generation };
        self.access.insert(idx, admitted);
        if !self.tls_admit(idx) {
            self.access.on_free(idx, None);
            self.conns.remove(idx as usize);
            self.ctx.shared.release();
            return;
        }
        if let Some(u) = &mut self.uring {
            u.attach(c, raw);
        } else if let Err(e) = self.epoll.add(raw, CONN_EVENTS, token(c)) {
            warn!(shard = self.id, error = %e, "epoll_ctl add failed");
            self.access.on_free(idx, None);
            self.conns.remove(idx as usize);
            self.ctx.shared.release();
            return;
        }
        self.metrics.connections.inc();
        self.wheel.schedule(deadline, c);
    }

    /// Logs a resource-limit warning at most once per 10 s per shard.
    fn limit_log(&mut self, what: &str) {
        if self.acceptor.may_log(Instant::now()) {
            warn!(
                shard = self.id,
                open = self.ctx.shared.open_connections(),
                "{what}"
            );
        }
    }

    // ---- closing ----------------------------------------------------------

    /// The session of `c` has moved to `Closing`: look at it again at its
    /// close deadline, and write what it queued.
    pub(crate) fn closing(&mut self, c: ConnRef) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let deadline = conn.session.deadline();
        self.wheel.schedule(deadline, c);
        self.mark_dirty(c);
    }

    /// Server-initiated close (see [`Session::close`]): a `disconnect`
    /// push for application reasons, then a close frame. A slow consumer's
    /// queued data is dropped first (counted here, so a connection is
    /// counted as dropped once).
    ///
    /// [`Session::close`]: crate::engine::session::Session::close
    pub(crate) fn close_conn(&mut self, c: ConnRef, reason: CloseReason) {
        self.close_conn_text(c, reason, reason.reason());
    }

    /// [`Shard::close_conn`] with `text` as the reason in the `disconnect`
    /// push and the close frame (at most 123 bytes, checked by the caller).
    pub(crate) fn close_conn_text(&mut self, c: ConnRef, reason: CloseReason, text: &str) {
        let now = self.now_tick;
        let Some(conn) = slot(&mut self.conns, c) else {
            return;
        };
        if !conn
            .session
            .close(now, reason, text, &mut self.push_writer, &self.session_cfg)
        {
            return;
        }
        if reason == CloseReason::SlowConsumer {
            self.metrics.slow_drop();
        }
        self.metrics.close(reason.close_code());
        self.closing(c);
    }

    /// Releases a connection: closes the socket, drops its subscriptions
    /// and tells homes of channels that lost their last local subscriber.
    pub(crate) fn free_conn(&mut self, c: ConnRef) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let phase = conn.session.phase();
        let user = conn.session.identity().map(|i| i.user.clone());
        let who = self.who(c);
        self.access.on_free(c.idx, user.as_deref());
        if let Some(user) = user.filter(|u| !u.is_empty()) {
            self.unindex_user(&user, c);
        }
        let gone = self.conns.remove(c.idx as usize);
        if let Some(u) = &mut self.uring {
            // Kept open by the ring until its operations have completed.
            u.detach(c, gone.fd);
        }
        self.tls_free(c.idx);
        if !self.held.is_empty() {
            self.held.forget(c);
        }
        if !self.delivering.is_empty() {
            self.delivering.remove(&c);
        }
        if !self.sse.is_idle() {
            self.sse_forget(c);
        }
        if phase == Phase::Open {
            self.metrics.close(1006); // gone without a close handshake
        }
        let mut out = shard_out!(self);
        self.router.conn_closed(Instant::now(), c, &who, &mut out);
        self.apply_closes();
        self.ctx.shared.release();
        self.metrics.connections.dec();
    }

    // ---- writing ----------------------------------------------------------

    /// The write pass (see [`write_pass`]), then the latency of the
    /// publications whose every local subscriber has now been written.
    pub(crate) fn flush(&mut self) {
        let dead = if self.tls.is_some() {
            self.write_pass_tls()
        } else if let Some(u) = &mut self.uring {
            write_pass_uring(&mut self.conns, &mut self.dirty, &mut self.stats, u)
        } else {
            write_pass(&mut self.conns, &mut self.dirty, &mut self.stats)
        };
        for c in dead {
            self.free_conn(c);
        }
        if self.uring.is_some() {
            self.uring_submit();
        }
        if let Some(&(_, upto)) = self.sent_stamps.front()
            && upto <= self.dirty.popped
        {
            let now = Instant::now();
            while let Some(&(t, upto)) = self.sent_stamps.front() {
                if upto > self.dirty.popped {
                    break;
                }
                self.sent_stamps.pop_front();
                self.metrics.latency(now.duration_since(t).as_secs_f64());
            }
        }
    }

    // ---- cross-shard sends -------------------------------------------------

    /// Retries owed messages, oldest first, then `Lost` notices.
    pub(crate) fn retry_owed(&mut self) {
        let router = &mut self.router;
        self.peers.retry(|to| router.take_lost(to));
    }
}

/// The client id of a connection (in the `connect` reply and presence):
/// unique per process run, shard and connection.
pub(crate) fn client_id(node_nonce: u32, shard: usize, generation: u32) -> String {
    format!("{node_nonce:08x}.{shard}.{generation}")
}

/// The router, joined to the node's cluster when there is one.
fn in_cluster(ctx: &ShardContext, mut router: Router) -> Router {
    if let Some((shared, _)) = &ctx.cluster {
        router.join_cluster(shared.view());
    }
    router
}
