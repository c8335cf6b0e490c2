//! The wire protocol on a shard: connection-level commands (connect, ping,
//! the rate limit), and the shell's side of the channel router — the
//! [`Output`] that turns its decisions into queued frames, closes and
//! inbox messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use super::conn::Conn;
use super::core::{Shard, client_id, slot, slot_ref};
use super::peers::Peers;
use super::story::ShardStories;
use super::write::WriteQueue;
use crate::bridge::ShardMsg;
use crate::config::DurableEvents;
use crate::engine::cluster::members::MemberWrite;
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::collab::{DirectedEvent, JoinAs};
use crate::engine::durable::DurableEvent;
use crate::engine::hub::Position;
use crate::engine::outbox::{Frame, OverBudget};
use crate::engine::router::{
    Broadcast, CollabAsk, CollabOp, Msg, Output, SERVER_INITIATED, StoryWriteReq, SubscribeRequest,
    Who,
};
use crate::engine::session::Step;
use crate::engine::subs::{ConnRef, Subscriber};
use crate::engine::wire::publication::{LocalPub, PubData, SharedPub};
use crate::engine::wire::{self, ClientInfo, Command, FrameWriter, Method, ReplyBody};
use crate::engine::ws::deflate::{Compressor, frame_for};
use crate::metrics::ShardMetrics;
use crate::sidecar::durable::worker::Refused;

/// Queues a frame of `c`'s own (a reply, a push: no publication overtakes
/// it) and lists `c` for the write pass. `Err`: the
/// frame would exceed the connection's budget (a slow consumer).
pub(crate) fn queue_frame(
    conns: &mut Slab<Conn>,
    dirty: &mut WriteQueue,
    c: ConnRef,
    frame: Frame,
    budget: usize,
) -> Result<(), OverBudget> {
    let Some(conn) = slot(conns, c) else {
        return Ok(());
    };
    if !conn.session.is_open() {
        return Ok(());
    }
    conn.session.outbox.push_own(frame, budget)?;
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(c);
    }
    Ok(())
}

/// The shard's half of everything the router decides: borrows every shard
/// field except the router itself, so the router can run against it.
/// Closes are collected and carried out by the shard afterwards.
pub(crate) struct ShardOut<'a> {
    pub(crate) conns: &'a mut Slab<Conn>,
    pub(crate) dirty: &'a mut WriteQueue,
    pub(crate) writer: &'a mut FrameWriter,
    pub(crate) push_writer: &'a mut FrameWriter,
    pub(crate) compressor: &'a mut Option<Compressor>,
    /// The connection whose message is being handled: its replies are
    /// batched into `writer`.
    pub(crate) current: Option<ConnRef>,
    pub(crate) budget: usize,
    pub(crate) metrics: &'a ShardMetrics,
    pub(crate) sent_stamps: &'a mut VecDeque<(Instant, u64)>,
    pub(crate) peers: &'a mut Peers,
    pub(crate) closes: &'a mut Vec<(ConnRef, CloseReason)>,
    /// Story persistence and durable events.
    pub(crate) stories: &'a mut ShardStories,
    /// This shard's index.
    pub(crate) shard: usize,
    /// The cluster, when the node is in one.
    pub(crate) cluster: Option<&'a super::cluster::ShardCluster>,
    /// Server API calls waiting for their answer.
    pub(crate) api_waiting: &'a mut super::api::ApiWaiting,
    /// The durable namespaces' sinks, and the namespaces to find them.
    pub(crate) durable: Option<&'a super::durable::DurableRoutes>,
    pub(crate) namespaces: &'a crate::engine::namespace::Namespaces,
    /// This shard's inbox (durable confirmations come back through it).
    pub(crate) inbox: &'a std::sync::Arc<crate::bridge::Inbox>,
}

/// A [`ShardOut`] over `$s`'s fields (a macro, so the borrows stay
/// field-by-field and `$s.router` remains free).
macro_rules! shard_out {
    ($s:ident) => {
        $crate::shard::commands::ShardOut {
            conns: &mut $s.conns,
            dirty: &mut $s.dirty,
            writer: &mut $s.writer,
            push_writer: &mut $s.push_writer,
            compressor: &mut $s.compressor,
            current: $s.current,
            budget: $s.ctx.shared.limits.outbound_budget(),
            metrics: &$s.metrics,
            sent_stamps: &mut $s.sent_stamps,
            peers: &mut $s.peers,
            closes: &mut $s.closes,
            stories: &mut $s.stories,
            shard: $s.id,
            cluster: $s.cluster.as_ref(),
            api_waiting: &mut $s.api_waiting,
            durable: $s.ctx.durable.as_deref(),
            namespaces: &$s.ctx.namespaces,
            inbox: &$s.ctx.inboxes[$s.id],
        }
    };
}
pub(crate) use shard_out;

impl ShardOut<'_> {
    /// Queues `frame` for `c`, or schedules the slow consumer's close.
    fn queue(&mut self, c: ConnRef, frame: Frame) {
        if queue_frame(self.conns, self.dirty, c, frame, self.budget).is_err() {
            // Counted once, by the close.
            self.closes.push((c, CloseReason::SlowConsumer));
        }
    }

    /// When `c` is the connection being served, queues the replies batched
    /// for it so far, so they go out ahead of what is queued for it next.
    /// A command's effects on this shard are immediate when this shard is
    /// its channel's home: a publication of the second command of a frame
    /// (`collab_join` then `update`, `subscribe` then `publish`) would
    /// otherwise reach the client before the first command's reply, which
    /// says where the subscription starts.
    fn flush_current(&mut self, c: ConnRef) {
        if self.current != Some(c) || self.writer.is_empty() {
            return;
        }
        let Some(conn) = slot(self.conns, c) else {
            return;
        };
        let deflate = conn.session.deflate();
        let comp = &mut *self.compressor;
        if let Some(frame) = self
            .writer
            .finish_with(|text, p| frame_for(comp, deflate, text, p))
        {
            self.queue(c, frame.into());
        }
    }
}

impl ShardOut<'_> {
    /// Queues a presence or story event with its namespace's sink;
    /// `Err(None)` when the namespace has no sink for it.
    fn emit_to_sink(&self, event: &DurableEvent) -> Result<(), Option<Refused>> {
        let ns = self
            .namespaces
            .resolve(event.channel())
            .map(|(id, _)| id.index());
        match (self.durable, ns) {
            (Some(routes), Some(ns)) => routes.emit_event(ns, event),
            _ => Err(None),
        }
    }
}

impl Output for ShardOut<'_> {
    fn reply(&mut self, c: ConnRef, id: u32, body: ReplyBody<'_>) {
        match &body {
            ReplyBody::Error(code) => self.metrics.error_reply(*code),
            ReplyBody::ErrorDetail(d) => self.metrics.error_reply(d.code()),
            _ => {}
        }
        if id == SERVER_INITIATED {
            return; // the server's own subscription: no one asked
        }
        if c == super::api::API_CONN {
            return self.api_waiting.answer(id, body);
        }
        if self.current == Some(c) {
            self.writer.reply(id, body);
            return;
        }
        let Some(conn) = slot(self.conns, c) else {
            return;
        };
        let (format, deflate) = (conn.session.format(), conn.session.deflate());
        self.push_writer.begin(format);
        self.push_writer.reply(id, body);
        let comp = &mut *self.compressor;
        if let Some(frame) = self
            .push_writer
            .finish_with(|text, p| frame_for(comp, deflate, text, p))
        {
            self.queue(c, frame.into());
        }
    }

    fn deliver(&mut self, subs: &[Subscriber], frames: &mut LocalPub<'_>, p: &SharedPub) {
        let high = p.high_priority;
        for s in subs {
            if self.current == Some(s.conn) {
                self.flush_current(s.conn);
            }
            // Closing connections get nothing more after their close frame.
            let Some(conn) = slot(self.conns, s.conn).filter(|c| c.session.is_open()) else {
                continue;
            };
            let frame = Frame::Shared(
                frames.frame(conn.session.format(), conn.session.takes_shared_deflate()),
            );
            let queued = if high {
                conn.session.outbox.push_high(frame, self.budget)
            } else {
                conn.session.outbox.push_data(frame, self.budget)
            };
            if queued.is_err() {
                // Counted once, by the close.
                self.closes.push((s.conn, CloseReason::SlowConsumer));
                continue;
            }
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(s.conn);
            }
        }
        if p.offset().is_some() {
            self.sent_stamps
                .push_back((p.accepted_at, self.dirty.pushed));
        }
    }

    fn server_push(&mut self, c: ConnRef, channel: &str, body: ReplyBody<'_>) {
        self.flush_current(c);
        let Some(conn) = slot(self.conns, c) else {
            return;
        };
        let (format, deflate) = (conn.session.format(), conn.session.deflate());
        self.push_writer.begin(format);
        match body {
            ReplyBody::Subscribe {
                epoch,
                offset,
                recoverable,
                ..
            } => self
                .push_writer
                .subscribe_push(channel, epoch, offset, recoverable),
            ReplyBody::Unsubscribe => self.push_writer.unsubscribe_push(channel),
            _ => return,
        }
        let comp = &mut *self.compressor;
        if let Some(frame) = self
            .push_writer
            .finish_with(|text, p| frame_for(comp, deflate, text, p))
        {
            self.queue(c, frame.into());
        }
    }

    fn close(&mut self, c: ConnRef, reason: CloseReason) {
        self.closes.push((c, reason));
    }

    fn send(&mut self, to: usize, msg: Msg) -> Result<(), Msg> {
        self.peers.send(self.metrics, to, msg)
    }

    fn collab_push(&mut self, c: ConnRef, channel: &str, event: &DirectedEvent) {
        self.flush_current(c);
        let Some(conn) = slot(self.conns, c).filter(|c| c.session.is_open()) else {
            return;
        };
        let (format, deflate) = (conn.session.format(), conn.session.deflate());
        self.push_writer.begin(format);
        match event {
            DirectedEvent::Promoted { .. } => self.push_writer.promoted(channel),
            DirectedEvent::Conflict {
                section,
                version,
                overwritten,
                by,
            } => self
                .push_writer
                .conflict(channel, section, *version, overwritten, by),
            DirectedEvent::Queue { position } => self
                .push_writer
                .queue_position(channel, u32::try_from(*position).unwrap_or(u32::MAX)),
        }
        let comp = &mut *self.compressor;
        if let Some(frame) = self
            .push_writer
            .finish_with(|text, p| frame_for(comp, deflate, text, p))
        {
            self.queue(c, frame.into());
        }
    }

    fn story_write(&mut self, write: StoryWriteReq<'_>) {
        self.stories.write(write);
    }

    fn story_load(&mut self, channel: &Arc<str>) {
        self.stories.load(self.shard, channel);
    }

    fn story_evicted(&mut self, channel: &Arc<str>) {
        self.stories.evicted(channel);
    }

    fn durable(&mut self, event: DurableEvent, ack: Option<u64>) -> bool {
        match event {
            DurableEvent::Publication(p) => {
                // A durable namespace always has a route (the node does
                // not start without its worker); none refuses, visibly.
                let ns = self
                    .namespaces
                    .resolve(&p.channel)
                    .map(|(id, _)| id.index());
                let done = ack.map(|token| super::durable::confirmation(self.inbox.clone(), token));
                let taken = match (self.durable, ns) {
                    (Some(routes), Some(ns)) => routes.emit(ns, &p, done).is_ok(),
                    _ => false,
                };
                self.metrics.durable_publication(taken);
                taken
            }
            DurableEvent::Presence(_) => {
                let taken = self.emit_to_sink(&event).is_ok();
                self.metrics.durable_presence(taken);
                taken
            }
            DurableEvent::StoryContentUpdate(_) => match self.emit_to_sink(&event) {
                Ok(()) => {
                    self.metrics.durable_story(true);
                    true
                }
                Err(Some(_)) => {
                    self.metrics.durable_story(false);
                    false
                }
                Err(None) => {
                    // No `durable_collab` sink: the embedded buffer always
                    // takes it (it drops the oldest when full, counted).
                    let kept = self.stories.durable(event);
                    self.metrics.durable_event(kept);
                    true
                }
            },
        }
    }

    fn durable_room(&mut self, channel: &Arc<str>) -> bool {
        let ns = self.namespaces.resolve(channel).map(|(id, _)| id.index());
        match (self.durable, ns) {
            (Some(routes), Some(ns)) => routes.has_room(ns, DurableEvents::Collab),
            _ => false,
        }
    }

    fn send_remote(&mut self, to: usize, channel: &Arc<str>, msg: Msg) -> Result<(), Msg> {
        match self.cluster {
            Some(c) => c.send_remote(to, channel, msg),
            None => Err(msg),
        }
    }

    fn broadcast(&mut self, channel: &Arc<str>, what: Broadcast<'_>) -> bool {
        self.cluster.is_some_and(|c| c.broadcast(channel, what))
    }

    fn watch(&mut self, channel: &Arc<str>, on: bool) {
        if let Some(c) = self.cluster {
            c.watch(channel, on);
        }
    }

    fn persist(
        &mut self,
        ns: usize,
        channel: &Arc<str>,
        epoch: u64,
        offset: u64,
        body: Vec<u8>,
    ) -> bool {
        self.cluster
            .is_some_and(|c| c.persist(ns, channel, epoch, offset, body))
    }

    fn load_stored(&mut self, ns: usize, channel: &Arc<str>) -> bool {
        self.cluster.is_some_and(|c| c.load_stored(ns, channel))
    }

    fn purge_stored(&mut self, ns: usize, channel: &Arc<str>, floor: Position) -> bool {
        self.cluster
            .is_some_and(|c| c.purge_stored(ns, channel, floor))
    }

    fn mirror_members(&mut self, write: MemberWrite) -> bool {
        self.cluster.is_some_and(|c| c.mirror_members(write))
    }
}

impl Shard {
    /// A complete data message from a client connection.
    pub(crate) fn on_client_message(&mut self, c: ConnRef, text: bool, payload: &[u8]) {
        self.run_message(c, text, payload, 0);
    }

    /// Runs the commands of one message from its command `skip` on. While
    /// the connection's `connect` waits for its credentials (a ticket),
    /// the commands after it are held (`shard::held`) and run here again
    /// once it is answered.
    pub(crate) fn run_message(&mut self, c: ConnRef, text: bool, payload: &[u8], skip: usize) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let format = conn.session.format();
        if !conn.session.accepts(text) {
            self.close_conn(c, CloseReason::UnsupportedData);
            return;
        }
        if conn.session.connect_pending() {
            return self.hold(c, text, skip, payload);
        }
        self.writer.begin(format);
        self.current = Some(c);
        let now = Instant::now();
        let (mut index, mut held_from) = (0, None);
        let result = wire::decode_commands(format, text, payload, |cmd| {
            if index >= skip && held_from.is_none() {
                self.exec(now, c, cmd);
                if slot_ref(&self.conns, c).is_some_and(|conn| conn.session.connect_pending()) {
                    held_from = Some(index + 1);
                }
            }
            index += 1;
        });
        self.current = None;
        match result {
            Ok(()) => {
                self.flush_replies(c);
                if let Some(from) = held_from.filter(|&from| from < index) {
                    self.hold(c, text, from, payload);
                }
            }
            Err(_) => {
                self.writer.begin(format);
                self.close_conn(c, CloseReason::BadRequest);
            }
        }
        self.apply_closes();
    }

    /// Queues the replies batched so far for `c` (the connection being
    /// served) as one frame.
    pub(crate) fn flush_replies(&mut self, c: ConnRef) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let deflate = conn.session.deflate();
        let comp = &mut self.compressor;
        if let Some(frame) = self
            .writer
            .finish_with(|text, p| frame_for(comp, deflate, text, p))
        {
            self.queue_data(c, frame);
        }
    }

    /// Sends a reply to `c`: batched into the current frame when `c` is
    /// the connection being served, else as a frame of its own.
    pub(crate) fn reply(&mut self, c: ConnRef, id: u32, body: ReplyBody<'_>) {
        shard_out!(self).reply(c, id, body);
    }

    /// Carries out the closes the router (or a delivery) asked for.
    pub(crate) fn apply_closes(&mut self) {
        while let Some((c, reason)) = self.closes.pop() {
            self.close_conn(c, reason);
        }
        if !self.stories.refused.is_empty() {
            self.answer_refused_loads();
        }
    }

    fn exec(&mut self, now: Instant, c: ConnRef, cmd: Command<'_>) {
        let id = cmd.id;
        let tick = self.now_tick;
        let Some(conn) = slot(&mut self.conns, c) else {
            return;
        };
        // None: closed by an earlier command of the same message.
        let Some(step) = conn.session.command(tick, cmd.method, &self.session_cfg) else {
            return;
        };
        let method = match step {
            Step::Reply(body) => return self.reply(c, id, body),
            Step::Connect(params) => return self.connect(c, id, params),
            Step::Flood => {
                // Replies already batched for this frame go out first.
                self.flush_replies(c);
                return self.close_conn(c, CloseReason::Flood);
            }
            Step::Channel(method) => method,
        };
        if matches!(method, Method::Publish { .. }) && !self.publish_allowed(c, now) {
            // Over the user's publish rate on this shard (counted).
            return self.reply(c, id, ReplyBody::Error(ErrorCode::TooManyRequests));
        }
        // Who may subscribe: the namespace's `subscribe` (and its token).
        let mut token_expiry = None;
        if let Method::Subscribe { channel, token, .. } = &method {
            match self.subscribe_permission(c, channel, token.as_deref()) {
                Ok(expiry) => token_expiry = expiry,
                Err(code) => return self.reply(c, id, ReplyBody::Error(code)),
            }
        }
        // Joining a story subscribes to its channel: the same rule, with no
        // token to show (a story namespace with `subscribe = "token"` is
        // joined through server-side subscriptions).
        if let Method::CollabJoin { channel, .. } = &method
            && let Err(code) = self.subscribe_permission(c, channel, None)
        {
            return self.reply(c, id, ReplyBody::Error(code));
        }
        if let Method::SubRefresh { channel, token } = &method {
            return self.sub_refresh(c, id, channel, token);
        }
        if let Method::Rpc { .. } | Method::Send { .. } = method {
            return self.backend_call(c, id, method);
        }
        let who = self.who(c);
        let mut out = shard_out!(self);
        let r = &mut self.router;
        match method {
            Method::Subscribe {
                channel,
                recover,
                since,
                token: _,
            } => {
                let req = SubscribeRequest {
                    channel: &channel,
                    recover_since: since.filter(|_| recover),
                };
                r.subscribe(now, c, id, req, &who, &mut out);
                if let Some(at) = token_expiry {
                    self.sub_expiries.set(c, channel.as_ref().into(), at);
                }
            }
            Method::Unsubscribe { channel } => r.unsubscribe(now, c, id, &channel, &who, &mut out),
            Method::Publish {
                channel,
                data,
                idempotency_key,
                durable_ack,
            } => r.publish(
                now,
                c,
                id,
                &channel,
                PubData::from_data(data),
                idempotency_key.as_deref(),
                durable_ack,
                &who,
                &mut out,
            ),
            Method::History {
                channel,
                limit,
                since,
                reverse,
            } => r.history(now, c, id, &channel, limit, since, reverse, &mut out),
            Method::Presence { channel } => r.presence_query(now, c, id, &channel, false, &mut out),
            Method::PresenceStats { channel } => {
                r.presence_query(now, c, id, &channel, true, &mut out)
            }
            Method::PresenceState {
                channel,
                state,
                ttl,
            } => {
                let ttl = ttl.map(|s| Duration::from_secs(u64::from(s)));
                r.presence_state(now, c, id, &channel, &state, ttl, &who, &mut out)
            }
            Method::Refresh { token } => self.refresh(c, id, &token),
            Method::SubRefresh { .. } | Method::Rpc { .. } | Method::Send { .. } => {
                unreachable!("answered before routing")
            }
            Method::Connect(_) | Method::Ping => {
                unreachable!("the session answers connect and ping itself")
            }
            Method::CollabJoin {
                channel,
                role,
                queue,
                recover,
                since,
            } => {
                let ask = CollabAsk {
                    role: match role {
                        wire::collab::CollabRole::Editor => JoinAs::Editor,
                        wire::collab::CollabRole::Viewer => JoinAs::Viewer,
                    },
                    queue,
                };
                let since = since.filter(|_| recover);
                r.collab_join(now, c, id, &channel, ask, since, &who, &mut out);
            }
            Method::CollabLeave { channel } => r.collab_leave(now, c, id, &channel, &who, &mut out),
            Method::Lock {
                channel,
                section,
                ttl,
            } => {
                let op = CollabOp::Lock {
                    section: section.as_ref().into(),
                    ttl: ttl.map(|s| Duration::from_secs(u64::from(s))),
                };
                r.collab_command(now, c, id, &channel, op, &mut out);
            }
            Method::Unlock { channel, section } => {
                let op = CollabOp::Unlock {
                    section: section.as_ref().into(),
                };
                r.collab_command(now, c, id, &channel, op, &mut out);
            }
            Method::Update {
                channel,
                section,
                base_version,
                data,
                op_id,
            } => {
                let op = CollabOp::Update {
                    section: section.as_ref().into(),
                    base_version,
                    data: Bytes::copy_from_slice(data),
                    op_id: op_id.as_ref().into(),
                };
                r.collab_command(now, c, id, &channel, op, &mut out);
            }
        }
    }

    /// Who connection `c` is, as presence shows it: built (client id
    /// formatted, strings allocated) only if a channel asks. Holds no
    /// borrow of the shard.
    pub(crate) fn who(&self, c: ConnRef) -> Who<impl Fn() -> ClientInfo + use<>> {
        let identity = slot_ref(&self.conns, c)
            .and_then(|conn| conn.session.identity())
            .map(|i| (i.user.clone(), i.info.clone()));
        let (nonce, shard, generation) = (self.node_nonce, self.id, c.generation);
        Who::new(move || {
            let (user, info) = identity.clone().unwrap_or_else(|| (Arc::from(""), None));
            ClientInfo {
                client: client_id(nonce, shard, generation).into(),
                user,
                info,
            }
        })
    }

    /// Runs the router's timers when they are due.
    pub(crate) fn router_timers(&mut self, now: Instant) {
        if now >= self.router.poll_timeout() {
            let mut out = shard_out!(self);
            self.router.handle_timeout(now, &mut out);
            self.apply_closes();
        }
    }

    /// A message from another thread.
    pub(crate) fn handle_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Router(m) => {
                let mut out = shard_out!(self);
                self.router.handle(Instant::now(), m, &mut out);
                self.apply_closes();
            }
            ShardMsg::Api(call) => self.handle_api(*call),
            ShardMsg::Ticket(answer) => self.on_ticket(*answer),
            ShardMsg::Rpc(answer) => self.on_rpc_answer(*answer),
            ShardMsg::StoryLoaded(answer) => self.on_story_loaded(*answer),
            ShardMsg::Drain => self.start_drain(),
            ShardMsg::Cluster(m) => {
                let mut out = shard_out!(self);
                self.router.handle_remote(Instant::now(), *m, &mut out);
                self.apply_closes();
            }
            // The turn reads the new state (`cluster_changes`).
            ShardMsg::ClusterChanged => {}
            ShardMsg::SsePost(post) => self.on_sse_post(*post),
        }
    }

    /// Hands the router the live set and link state when they changed.
    pub(crate) fn cluster_changes(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let (placement, link) = c.changes();
        if placement.is_none() && link.is_none() {
            return;
        }
        let mut out = shard_out!(self);
        if let Some(up) = link {
            self.router.set_link(now, up, &mut out);
        }
        if let Some(p) = placement {
            self.router.set_placement(now, p, &mut out);
        }
        self.apply_closes();
    }

    /// Queues a data frame for `c`, dropping the connection as a slow
    /// consumer if that would exceed its budget.
    pub(crate) fn queue_data(&mut self, c: ConnRef, frame: Bytes) {
        let budget = self.ctx.shared.limits.outbound_budget();
        if queue_frame(&mut self.conns, &mut self.dirty, c, frame.into(), budget).is_err() {
            self.close_conn(c, CloseReason::SlowConsumer);
        }
    }
}
