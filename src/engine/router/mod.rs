//! The channel router of one shard, as a state machine with no I/O.
//!
//! A shard's router plays two parts. For the channels the shard is *home*
//! for (a hash of the name picks the home), it is the one authority: it
//! assigns offsets and fans publications out to the shards that have
//! subscribers. For the channels its own connections subscribe to, it keeps
//! the local subscription table, asks the homes for deliveries
//! (*interest*), and hands each delivery to the local subscribers.
//!
//! Everything comes in through `handle_*`-style methods that take the time
//! as an input (`now`), and everything goes out through an [`Output`]: a
//! reply to a local connection, frames for local subscribers, a close, or a
//! message to another shard's router. The shard shell implements `Output`
//! with sockets and inboxes; the deterministic tests in `sim.rs` implement
//! it with in-memory queues and virtual time.
//!
//! Layout:
//! - `mod.rs`: the router and the [`Output`] it drives.
//! - [`msg`]: the messages routers send each other.
//! - `sim.rs` (tests): several routers wired by in-memory inboxes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::channel::is_valid_channel;
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::hub::{Hub, Position, home_shard};
use crate::engine::subs::{Acked, ConnRef, Delivery, Subscribed, Subscriber, Subscriptions};
use crate::engine::wire::ReplyBody;
use crate::engine::wire::publication::{LocalPub, PubData, PubEncoder, Publication, SharedPub};
use crate::engine::ws::deflate::Compressor;

pub mod msg;
#[cfg(test)]
mod sim;

pub use msg::{Msg, MsgKind, ReplyTo};

/// Where a router's decisions go. Implemented by the shard shell (sockets,
/// inboxes) and by the deterministic tests (in-memory queues).
pub trait Output {
    /// Answers command `id` of local connection `conn`.
    fn reply(&mut self, conn: ConnRef, id: u32, body: ReplyBody<'_>);
    /// Queues a publication to local subscribers. `frames` hands out the
    /// frame for each connection's wire form (encoding it the first time a
    /// form is needed); a subscriber that cannot take it (over its byte
    /// budget) is the implementation's to close.
    fn deliver(&mut self, subs: &[Subscriber], frames: &mut LocalPub<'_>, publication: &SharedPub);
    /// Ends local connection `conn` with `reason`.
    fn close(&mut self, conn: ConnRef, reason: CloseReason);
    /// Sends `msg` to shard `to`, in order with the earlier messages to
    /// it. Gives the message back when it was refused, which only a
    /// [`Msg::refusable`] message may be (queues full).
    fn send(&mut self, to: usize, msg: Msg) -> Result<(), Msg>;
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
    /// A channel nobody listens to is forgotten (new epoch) after this.
    pub channel_idle_ttl: Duration,
    /// permessage-deflate for publications: (zlib level, smallest payload
    /// worth compressing); `None` when compression is off.
    pub compression: Option<(u32, usize)>,
    /// Room for this many local connection slots up front.
    pub expected_connections: usize,
}

/// Counts the shell moves to its metrics once per loop turn.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouterStats {
    /// Publications accepted at home.
    pub publications: u64,
    /// Publication frames handed to local subscribers.
    pub deliveries: u64,
    /// Delivery gaps found (subscribers told to recover).
    pub gaps: u64,
}

/// How often the home checks for idle channels to forget.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One shard's channel router.
pub struct Router {
    id: usize,
    shards: usize,
    hub: Hub,
    subs: Subscriptions,
    encoder: PubEncoder,
    compressor: Option<Compressor>,
    origin: Instant,
    idle_ttl: Duration,
    next_sweep: Instant,
    /// Channels whose deliveries to a peer were refused; the peer is sent
    /// [`Msg::Lost`] for each once the messages owed to it have gone.
    lost: Vec<Vec<Arc<str>>>,
    /// Counts since the last [`Router::take_stats`].
    stats: RouterStats,
}

impl Router {
    /// A router with no channels. `seed` makes epochs unique per process
    /// and shard; `now` is the time origin.
    pub fn new(cfg: &RouterConfig, seed: u64, now: Instant) -> Self {
        Self {
            id: cfg.shard,
            shards: cfg.shards,
            hub: Hub::new(seed),
            subs: Subscriptions::with_capacity(cfg.max_subscriptions, cfg.expected_connections),
            encoder: PubEncoder::default(),
            compressor: cfg
                .compression
                .map(|(level, min)| Compressor::new(level, min)),
            origin: now,
            idle_ttl: cfg.channel_idle_ttl,
            next_sweep: now + SWEEP_EVERY,
            lost: vec![Vec::new(); cfg.shards],
            stats: RouterStats::default(),
        }
    }

    /// Whole seconds since the origin: the hub's clock.
    fn tick(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.origin).as_secs() as u32
    }

    fn home(&self, channel: &str) -> usize {
        home_shard(channel, self.shards)
    }

    // ---- commands of local connections -------------------------------------

    /// `subscribe {channel}` from local connection `conn`.
    pub fn subscribe(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        out: &mut impl Output,
    ) {
        if !is_valid_channel(channel) {
            return out.reply(conn, id, ReplyBody::Error(ErrorCode::InvalidChannel));
        }
        match self.subs.subscribe(conn, channel, id) {
            Ok(Subscribed::Now(p)) => reply_position(out, conn, id, p),
            Ok(Subscribed::Waiting) => {}
            Ok(Subscribed::NeedInterest(name)) => self.request_interest(now, name, true, out),
            Err(code) => out.reply(conn, id, ReplyBody::Error(code)),
        }
    }

    /// `unsubscribe {channel}` from local connection `conn`.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        out: &mut impl Output,
    ) {
        if !is_valid_channel(channel) {
            return out.reply(conn, id, ReplyBody::Error(ErrorCode::InvalidChannel));
        }
        match self.subs.unsubscribe(conn, channel) {
            Ok(released) => {
                out.reply(conn, id, ReplyBody::Unsubscribe);
                if let Some(name) = released {
                    self.request_interest(now, name, false, out);
                }
            }
            Err(code) => out.reply(conn, id, ReplyBody::Error(code)),
        }
    }

    /// `publish {channel, data}` from local connection `conn`.
    pub fn publish(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        data: PubData,
        out: &mut impl Output,
    ) {
        if !is_valid_channel(channel) {
            return out.reply(conn, id, ReplyBody::Error(ErrorCode::InvalidChannel));
        }
        let channel: Arc<str> = Arc::from(channel);
        let home = self.home(&channel);
        if home == self.id {
            let offset = self.publish_home(now, channel, data, out);
            return out.reply(conn, id, ReplyBody::Publish { offset });
        }
        let msg = Msg::Publish {
            channel,
            data,
            from: self.id,
            reply_to: ReplyTo { conn, cmd_id: id },
        };
        if out.send(home, msg).is_err() {
            out.reply(conn, id, ReplyBody::Error(ErrorCode::Overloaded));
        }
    }

    /// Local connection `conn` is gone: drop its subscriptions and tell the
    /// homes of channels that lost their last local subscriber.
    pub fn conn_closed(&mut self, now: Instant, conn: ConnRef, out: &mut impl Output) {
        let mut released = Vec::new();
        self.subs.remove_conn(conn, &mut released);
        for name in released {
            self.request_interest(now, name, false, out);
        }
    }

    // ---- messages from other shards ----------------------------------------

    /// A message from another shard's router.
    pub fn handle(&mut self, now: Instant, msg: Msg, out: &mut impl Output) {
        match msg {
            Msg::Interest { channel, from, on } => {
                let p = self.hub.set_interest(&channel, from, on, self.tick(now));
                if on {
                    // Never refused (not refusable): the asking shard waits
                    // for it.
                    let _ = out.send(
                        from,
                        Msg::InterestAck {
                            channel,
                            position: p,
                        },
                    );
                }
            }
            Msg::InterestAck { channel, position } => {
                self.on_interest_ack(now, &channel, position, out)
            }
            Msg::Publish {
                channel,
                data,
                from,
                reply_to,
            } => {
                let offset = self.publish_home(now, channel, data, out);
                let ack = Msg::PublishAck {
                    reply_to,
                    result: Ok(offset),
                };
                let _ = out.send(from, ack);
            }
            Msg::PublishAck { reply_to, result } => {
                let body = match result {
                    Ok(offset) => ReplyBody::Publish { offset },
                    Err(code) => ReplyBody::Error(code),
                };
                out.reply(reply_to.conn, reply_to.cmd_id, body);
            }
            Msg::Deliver(p) => self.deliver_local(&p, out),
            Msg::Lost { channel } => {
                let conns: Vec<ConnRef> = self
                    .subs
                    .subscribers(&channel)
                    .iter()
                    .map(|s| s.conn)
                    .collect();
                if !conns.is_empty() {
                    self.stats.gaps += 1;
                }
                for c in conns {
                    out.close(c, CloseReason::InsufficientState);
                }
            }
        }
    }

    /// The loss notices owed to shard `to`, to send once every message
    /// queued for it before has gone.
    pub fn take_lost(&mut self, to: usize) -> Vec<Arc<str>> {
        std::mem::take(&mut self.lost[to])
    }

    // ---- time ---------------------------------------------------------------

    /// When [`Router::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// Periodic work that is due: forgetting idle channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            let ttl = self.idle_ttl.as_secs() as u32;
            self.hub.sweep(self.tick(now), ttl);
        }
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

    // ---- internals -------------------------------------------------------------

    /// Tells `name`'s home that this shard has (or no longer has)
    /// subscribers.
    fn request_interest(&mut self, now: Instant, name: Arc<str>, on: bool, out: &mut impl Output) {
        let home = self.home(&name);
        if home == self.id {
            let p = self.hub.set_interest(&name, self.id, on, self.tick(now));
            if on {
                self.on_interest_ack(now, &name, p, out);
            }
            return;
        }
        let msg = Msg::Interest {
            channel: name.clone(),
            from: self.id,
            on,
        };
        if out.send(home, msg).is_err() {
            let mut failed = Vec::new();
            self.subs.on_interest_failed(&name, &mut failed);
            for (c, id) in failed {
                out.reply(c, id, ReplyBody::Error(ErrorCode::Overloaded));
            }
        }
    }

    fn on_interest_ack(&mut self, now: Instant, name: &str, p: Position, out: &mut impl Output) {
        let mut replies = Vec::new();
        match self.subs.on_interest_ack(name, p, &mut replies) {
            Acked::Active => {
                for (c, id) in replies {
                    reply_position(out, c, id, p);
                }
            }
            Acked::Release(name) => self.request_interest(now, name, false, out),
            Acked::Unknown => {}
        }
    }

    /// Home side of a publication: assign the offset, then send it to every
    /// shard with subscribers (this one directly). Frames are encoded only
    /// where and when a subscriber needs them.
    fn publish_home(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        data: PubData,
        out: &mut impl Output,
    ) -> u64 {
        let acc = self.hub.publish(&channel, self.tick(now));
        self.stats.publications += 1;
        let offset = acc.position.offset;
        if acc.interested == 0 {
            return offset; // nobody listens: not even encoded
        }
        let p = Arc::new(SharedPub::new(
            channel,
            Publication { offset, data },
            false,
            now,
        ));
        let mut mask = acc.interested;
        while mask != 0 {
            let shard = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if shard == self.id {
                self.deliver_local(&p, out);
            } else if shard < self.shards && out.send(shard, Msg::Deliver(Arc::clone(&p))).is_err()
            {
                // Dropped: that shard's subscribers must recover.
                if !self.lost[shard].contains(&p.channel) {
                    self.lost[shard].push(p.channel.clone());
                }
            }
        }
        offset
    }

    /// Hands a publication to every local subscriber: the same frames for
    /// all, no per-subscriber encoding.
    fn deliver_local(&mut self, p: &SharedPub, out: &mut impl Output) {
        match self.subs.deliver(&p.channel, p.publication.offset) {
            Delivery::Ignore => {}
            Delivery::Deliver(subs) => {
                let mut frames = LocalPub::new(p, &mut self.encoder, self.compressor.as_mut());
                out.deliver(subs, &mut frames, p);
                self.stats.deliveries += subs.len() as u64;
            }
            Delivery::Gap(subs) => {
                self.stats.gaps += 1;
                let conns: Vec<ConnRef> = subs.iter().map(|s| s.conn).collect();
                for c in conns {
                    out.close(c, CloseReason::InsufficientState);
                }
            }
        }
    }
}

fn reply_position(out: &mut impl Output, conn: ConnRef, id: u32, p: Position) {
    out.reply(
        conn,
        id,
        ReplyBody::Subscribe {
            epoch: p.epoch,
            offset: p.offset,
        },
    );
}
