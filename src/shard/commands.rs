//! The wire protocol on a shard: client commands, and the cross-shard
//! messages that complete them (interest, publish, delivery).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::conn::Phase;
use super::core::Shard;
use crate::bridge::{Delivery, ReplyTo, ShardMsg};
use crate::engine::channel::is_valid_channel;
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::hub::{Position, home_shard};
use crate::engine::limits::Admit;
use crate::engine::outbox::Frame;
use crate::engine::subs::{Acked, ConnRef, Delivery as Local, Subscribed};
use crate::engine::wire::publication::{LocalPub, PubData};
use crate::engine::wire::{self, Command, Method, ReplyBody};
use crate::engine::ws::deflate::frame_for;
use crate::engine::ws::handshake::WireFormat;

impl Shard {
    /// A complete data message from a client connection.
    pub(crate) fn on_client_message(&mut self, c: ConnRef, text: bool, payload: &[u8]) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let format = conn.format;
        if text != (format == WireFormat::Json) {
            self.close_conn(c, CloseReason::UnsupportedData);
            return;
        }
        self.writer.begin(format);
        self.current = Some(c);
        let result = wire::decode_commands(format, text, payload, |cmd| self.exec(c, cmd));
        self.current = None;
        match result {
            Ok(()) => self.flush_replies(c),
            Err(_) => {
                self.writer.begin(format);
                self.close_conn(c, CloseReason::BadRequest);
            }
        }
    }

    /// Queues the replies batched so far for `c` (the connection being
    /// served) as one frame.
    fn flush_replies(&mut self, c: ConnRef) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let deflate = conn.deflate;
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
        if let ReplyBody::Error(code) = body {
            self.metrics.error_reply(code.code());
        }
        if self.current == Some(c) {
            self.writer.reply(id, body);
            return;
        }
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let (format, deflate) = (conn.format, conn.deflate);
        self.push_writer.begin(format);
        self.push_writer.reply(id, body);
        let comp = &mut self.compressor;
        if let Some(frame) = self
            .push_writer
            .finish_with(|text, p| frame_for(comp, deflate, text, p))
        {
            self.queue_data(c, frame);
        }
    }

    fn exec(&mut self, c: ConnRef, cmd: Command<'_>) {
        let id = cmd.id;
        let (now, limit) = (self.now_tick, self.ctx.config.max_commands_per_second);
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        if conn.phase != Phase::Open {
            return; // closed by an earlier command of the same frame
        }
        match conn.rate.admit(now, limit) {
            Admit::Run => {}
            Admit::Refuse => {
                return self.reply(c, id, ReplyBody::Error(ErrorCode::TooManyRequests));
            }
            Admit::Disconnect => {
                // Replies already batched for this frame go out first.
                self.flush_replies(c);
                return self.close_conn(c, CloseReason::Flood);
            }
        }
        let connected = conn.connected;
        let method = match cmd.method {
            Ok(m) => m,
            Err(code) => return self.reply(c, id, ReplyBody::Error(code)),
        };
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        match method {
            Method::Connect(_) if connected => {
                self.reply(c, id, ReplyBody::Error(ErrorCode::AlreadyConnected))
            }
            Method::Connect(_) => {
                conn.connected = true;
                let client = self.client_id(c);
                let node = self.ctx.config.node_name.clone();
                let ping = self.heartbeat.ping_interval;
                self.reply(
                    c,
                    id,
                    ReplyBody::Connect {
                        client: &client,
                        node: &node,
                        ping,
                    },
                );
            }
            _ if !connected => self.reply(c, id, ReplyBody::Error(ErrorCode::NotConnected)),
            Method::Ping => self.reply(c, id, ReplyBody::Ping),
            Method::Subscribe { channel } if !is_valid_channel(&channel) => {
                self.reply(c, id, ReplyBody::Error(ErrorCode::InvalidChannel))
            }
            Method::Unsubscribe { channel } if !is_valid_channel(&channel) => {
                self.reply(c, id, ReplyBody::Error(ErrorCode::InvalidChannel))
            }
            Method::Publish { channel, .. } if !is_valid_channel(&channel) => {
                self.reply(c, id, ReplyBody::Error(ErrorCode::InvalidChannel))
            }
            Method::Subscribe { channel } => match self.subs.subscribe(c, &channel, id) {
                Ok(Subscribed::Now(p)) => self.reply_position(c, id, p),
                Ok(Subscribed::Waiting) => {}
                Ok(Subscribed::NeedInterest(name)) => self.request_interest(name, true),
                Err(code) => self.reply(c, id, ReplyBody::Error(code)),
            },
            Method::Unsubscribe { channel } => match self.subs.unsubscribe(c, &channel) {
                Ok(released) => {
                    self.reply(c, id, ReplyBody::Unsubscribe);
                    if let Some(name) = released {
                        self.request_interest(name, false);
                    }
                }
                Err(code) => self.reply(c, id, ReplyBody::Error(code)),
            },
            Method::Publish { channel, data } => {
                let data = PubData::from_data(data);
                let channel: Arc<str> = Arc::from(&*channel);
                let home = home_shard(&channel, self.ctx.inboxes.len());
                let reply_to = ReplyTo {
                    conn: c,
                    cmd_id: id,
                };
                if home == self.id {
                    let offset = self.publish_home(channel, data);
                    self.reply(c, id, ReplyBody::Publish { offset });
                } else {
                    let msg = ShardMsg::Publish {
                        channel,
                        data,
                        from: self.id,
                        reply_to,
                    };
                    if self.send_to(home, msg).is_err() {
                        self.reply(c, id, ReplyBody::Error(ErrorCode::Overloaded));
                    }
                }
            }
        }
    }

    fn reply_position(&mut self, c: ConnRef, id: u32, p: Position) {
        self.reply(
            c,
            id,
            ReplyBody::Subscribe {
                epoch: p.epoch,
                offset: p.offset,
            },
        );
    }

    /// Tells `name`'s home that this shard has (or no longer has)
    /// subscribers.
    pub(crate) fn request_interest(&mut self, name: Arc<str>, on: bool) {
        let home = home_shard(&name, self.ctx.inboxes.len());
        if home == self.id {
            let p = self.hub.set_interest(&name, self.id, on, self.now_tick);
            if on {
                self.on_interest_ack(&name, p);
            }
            return;
        }
        let msg = ShardMsg::Interest {
            channel: name.clone(),
            from: self.id,
            on,
        };
        if self.send_to(home, msg).is_err() {
            let mut failed = Vec::new();
            self.subs.on_interest_failed(&name, &mut failed);
            for (c, id) in failed {
                self.reply(c, id, ReplyBody::Error(ErrorCode::Overloaded));
            }
        }
    }

    fn on_interest_ack(&mut self, name: &str, p: Position) {
        let mut replies = Vec::new();
        match self.subs.on_interest_ack(name, p, &mut replies) {
            Acked::Active => {
                for (c, id) in replies {
                    self.reply_position(c, id, p);
                }
            }
            Acked::Release(name) => self.request_interest(name, false),
            Acked::Unknown => {}
        }
    }

    /// Home side of a publication: assign the offset, encode once, send to
    /// every shard with subscribers (this one directly).
    pub(crate) fn publish_home(&mut self, channel: Arc<str>, data: PubData) -> u64 {
        let acc = self.hub.publish(&channel, self.now_tick);
        self.stats.publications += 1;
        let offset = acc.position.offset;
        if acc.interested == 0 {
            return offset; // nobody listens: not even encoded
        }
        let frames = self
            .encoder
            .encode(&channel, offset, &data, self.compressor.as_mut());
        self.stats.encodes[0] += 1;
        self.stats.encodes[1] += 1;
        self.stats.encodes[2] += u64::from(frames.json_deflate.is_some());
        self.stats.encodes[3] += u64::from(frames.binary_deflate.is_some());
        let d = Arc::new(Delivery {
            channel,
            offset,
            frames,
            accepted_at: Instant::now(),
        });
        let mut mask = acc.interested;
        while mask != 0 {
            let shard = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if shard == self.id {
                self.deliver_local(&d);
            } else if shard < self.ctx.inboxes.len()
                && self.send_to(shard, ShardMsg::Deliver(d.clone())).is_err()
            {
                // Dropped: that shard's subscribers must recover.
                if !self.lost[shard].contains(&d.channel) {
                    self.lost[shard].push(d.channel.clone());
                }
            }
        }
        offset
    }

    /// Queues a publication to every local subscriber: the same bytes for
    /// all, no per-subscriber encoding.
    pub(crate) fn deliver_local(&mut self, d: &Delivery) {
        let budget = self.ctx.config.outbound_budget;
        let mut slow = Vec::new();
        let gap_conns: Vec<ConnRef>;
        match self.subs.deliver(&d.channel, d.offset) {
            Local::Ignore => return,
            Local::Deliver(subs) => {
                let frames: LocalPub = d.frames.map(|b| Rc::new(b.clone()));
                for s in subs {
                    let Some(conn) = self
                        .conns
                        .get_mut(s.conn.idx as usize)
                        .filter(|x| x.generation == s.conn.generation && x.phase == Phase::Open)
                    else {
                        // Gone, or closing: nothing may follow its close.
                        continue;
                    };
                    let frame = Frame::Shared(Rc::clone(
                        frames.for_conn(conn.format, conn.takes_shared_deflate()),
                    ));
                    if conn.outbox.push_data(frame, budget).is_err() {
                        slow.push(s.conn);
                        continue;
                    }
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(s.conn);
                    }
                }
                self.stats.deliveries += subs.len() as u64;
                self.sent_stamps
                    .push_back((d.accepted_at, self.dirty.pushed));
                gap_conns = Vec::new();
            }
            Local::Gap(subs) => {
                gap_conns = subs.iter().map(|s| s.conn).collect();
            }
        }
        for c in slow {
            self.close_conn(c, CloseReason::SlowConsumer);
        }
        if !gap_conns.is_empty() {
            self.metrics.gap();
            for c in gap_conns {
                self.close_conn(c, CloseReason::InsufficientState);
            }
        }
    }

    /// A message from another thread.
    pub(crate) fn handle_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Interest { channel, from, on } => {
                let p = self.hub.set_interest(&channel, from, on, self.now_tick);
                if on {
                    let _ = self.send_to(
                        from,
                        ShardMsg::InterestAck {
                            channel,
                            position: p,
                        },
                    );
                }
            }
            ShardMsg::InterestAck { channel, position } => self.on_interest_ack(&channel, position),
            ShardMsg::Publish {
                channel,
                data,
                from,
                reply_to,
            } => {
                let offset = self.publish_home(channel, data);
                let ack = ShardMsg::PublishAck {
                    reply_to,
                    result: Ok(offset),
                };
                let _ = self.send_to(from, ack);
            }
            ShardMsg::PublishAck { reply_to, result } => {
                let body = match result {
                    Ok(offset) => ReplyBody::Publish { offset },
                    Err(code) => ReplyBody::Error(code),
                };
                self.reply(reply_to.conn, reply_to.cmd_id, body);
            }
            ShardMsg::Deliver(d) => self.deliver_local(&d),
            ShardMsg::Lost { channel } => {
                let conns: Vec<ConnRef> = self
                    .subs
                    .subscribers(&channel)
                    .iter()
                    .map(|s| s.conn)
                    .collect();
                if !conns.is_empty() {
                    self.metrics.gap();
                }
                for c in conns {
                    self.close_conn(c, CloseReason::InsufficientState);
                }
            }
            ShardMsg::Drain => self.start_drain(),
        }
    }
}
