//! The local side of the router: this shard's subscriptions, its
//! interest in other homes' channels, and the deliveries and answers that
//! come back.

use std::sync::Arc;
use std::time::Instant;

use super::msg::joined_reply;
use super::{Msg, Output, ReplyTo, Router, answer_conn, hand_out};
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::collab::JoinOk;
use crate::engine::history::Recovery;
use crate::engine::hub::Position;
use crate::engine::subs::{Acked, ConnRef, Delivery, Subscribed};
use crate::engine::wire::ReplyBody;
use crate::engine::wire::publication::{PushBody, SharedPub};

impl Router {
    /// Subscribes `conn` from this shard's own view of the channel.
    pub(super) fn subscribe_direct(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: u32,
        channel: &str,
        out: &mut impl Output,
    ) {
        match self.subs.subscribe(conn, channel, id) {
            Ok(Subscribed::Now(p)) => self.reply_subscribed(conn, id, channel, p, None, out),
            Ok(Subscribed::Waiting) => {}
            Ok(Subscribed::NeedInterest(name)) => self.request_interest(now, name, true, out),
            Err(code) => out.reply(conn, id, ReplyBody::Error(code)),
        }
    }

    /// The `subscribe` reply: the position after which the client receives
    /// every publication, and what recovery found (when it recovered).
    fn reply_subscribed(
        &self,
        conn: ConnRef,
        id: u32,
        channel: &str,
        p: Position,
        recovery: Option<&Recovery>,
        out: &mut impl Output,
    ) {
        let recoverable = self
            .options(channel)
            .is_ok_and(|o| o.recover && o.keeps_history());
        let (recovered, publications) = match recovery {
            Some(r) => (r.recovered, &r.publications[..]),
            None => (false, &[][..]),
        };
        let body = ReplyBody::Subscribe {
            epoch: p.epoch,
            offset: p.offset,
            recoverable,
            recovered,
            publications,
        };
        answer_conn(out, conn, id, channel, body);
    }

    /// Tells `name`'s home that this shard has (or no longer has)
    /// subscribers.
    pub(super) fn request_interest(
        &mut self,
        now: Instant,
        name: Arc<str>,
        on: bool,
        out: &mut impl Output,
    ) {
        let home = self.home(&name);
        let msg = Msg::Interest {
            channel: name.clone(),
            from: self.id,
            on,
        };
        if self.dispatch(now, home, msg, out).is_err() {
            let mut failed = Vec::new();
            self.subs.on_interest_failed(&name, &mut failed);
            for (c, id) in failed {
                out.reply(c, id, ReplyBody::Error(ErrorCode::Overloaded));
            }
        }
    }

    /// The channel's home node did not answer this shard's interest: the
    /// subscriptions waiting for it fail with 100 (temporary).
    pub(super) fn on_interest_failed(&mut self, name: &str, out: &mut impl Output) {
        let mut failed = Vec::new();
        self.subs.on_interest_failed(name, &mut failed);
        for (c, id) in failed {
            out.reply(c, id, ReplyBody::Error(ErrorCode::Internal));
        }
    }

    /// The home answered this shard's interest: waiting subscribers join.
    pub(super) fn on_interest_ack(
        &mut self,
        now: Instant,
        name: &str,
        p: Position,
        out: &mut impl Output,
    ) {
        let mut replies = Vec::new();
        match self.subs.on_interest_ack(name, p, &mut replies) {
            Acked::Active => {
                for (c, id) in replies {
                    self.reply_subscribed(c, id, name, p, None, out);
                }
            }
            Acked::Release(name) => self.request_interest(now, name, false, out),
            Acked::Unknown => {}
        }
    }

    /// The home answered a subscription through it. The shard held the
    /// channel meanwhile, so its position is the home's, and the recovered
    /// publications end exactly where the live ones begin.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_subscribed(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        position: Position,
        result: Result<Box<Recovery>, ErrorCode>,
        story: Option<Box<JoinOk>>,
        reply_to: ReplyTo,
        out: &mut impl Output,
    ) {
        let conn = reply_to.conn;
        let Some((id, recovering)) = self.joining.remove(&(conn, channel.clone())) else {
            // Unsubscribed or closed while waiting; that released the hold
            // and told the home it left.
            return;
        };
        match result {
            Err(code) => out.reply(conn, id, ReplyBody::Error(code)),
            Ok(recovery) => match self.subs.subscribe(conn, &channel, id) {
                Ok(Subscribed::Now(p)) => {
                    // Deliveries lost on the way (the shard is told to
                    // recover separately): never claim a recovery across
                    // them.
                    let recovery = (p == position).then_some(&*recovery);
                    match &story {
                        Some(join) => {
                            let empty = Recovery::unrecoverable();
                            let r = recovering.then(|| recovery.unwrap_or(&empty));
                            let body = ReplyBody::CollabJoin(joined_reply(join, p, r));
                            out.reply(conn, id, body);
                        }
                        None => self.reply_subscribed(conn, id, &channel, p, recovery, out),
                    }
                }
                Ok(Subscribed::Waiting) => {}
                Ok(Subscribed::NeedInterest(name)) => self.request_interest(now, name, true, out),
                Err(code) => out.reply(conn, id, ReplyBody::Error(code)),
            },
        }
        if let Some(name) = self.subs.unhold(&channel) {
            self.request_interest(now, name, false, out);
        }
    }

    /// Hands a push to every local subscriber: the same frames for all, no
    /// per-subscriber encoding. A publication must carry the next offset;
    /// a jump means deliveries were lost and the subscribers must recover.
    pub(super) fn deliver_local(&mut self, p: &SharedPub, out: &mut impl Output) {
        let subs = match &p.body {
            PushBody::Pub(publication) => match self.subs.deliver(&p.channel, publication.offset) {
                Delivery::Ignore => return,
                Delivery::Deliver(subs) => {
                    self.stats.deliveries += subs.len() as u64;
                    subs
                }
                Delivery::Gap(subs) => {
                    self.stats.gaps += 1;
                    let conns: Vec<ConnRef> = subs.iter().map(|s| s.conn).collect();
                    for c in conns {
                        out.close(c, CloseReason::InsufficientState);
                    }
                    return;
                }
            },
            PushBody::Presence(_) => self.subs.subscribers(&p.channel),
        };
        if !subs.is_empty() {
            hand_out(subs, p, &mut self.encoder, self.compressor.as_mut(), out);
        }
    }

    /// The home could not queue a delivery for this shard: the channel's
    /// subscribers here missed it and must recover.
    pub(super) fn on_lost(&mut self, channel: &str, out: &mut impl Output) {
        let conns: Vec<ConnRef> = self
            .subs
            .subscribers(channel)
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
