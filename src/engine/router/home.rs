//! The home side of the router: the one authority for the channels this
//! shard is home for. Offsets, history, idempotency keys, members and
//! presence live here, and every answer about them comes from here.

use std::sync::Arc;
use std::time::Instant;

use super::{
    CollabAsk, HOUSEKEEPING_EVERY, Msg, Output, PRESENCE_TICK, PublishReq, ReplyTo, Router,
    SWEEP_EVERY, counted,
};
use crate::engine::codes::ErrorCode;
use crate::engine::collab::MemberId;
use crate::engine::durable::{DurableEvent, LeaveReason, PresenceChange, PublicationEvent};
use crate::engine::history::{HistoryLimits, HistoryQuery, Recovery};
use crate::engine::hub::Position;
use crate::engine::namespace::Priority;
use crate::engine::presence::Origin;
use crate::engine::subs::ConnRef;
use crate::engine::wire::ClientInfo;
use crate::engine::wire::publication::{PubData, Publication, SharedPub};

use super::msg::Answer;

impl Router {
    /// Shard `from` has (or no longer has) subscribers of `channel`.
    pub(super) fn on_interest(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        from: usize,
        on: bool,
        out: &mut impl Output,
    ) {
        if crate::engine::cluster::nodes::is_remote(from) {
            return self.on_remote_interest(now, channel, from, on, out);
        }
        let p = self.hub.set_interest(&channel, from, on, self.tick(now));
        if on {
            let ack = Msg::InterestAck {
                channel,
                position: p,
            };
            // Never refused (not refusable): the asking shard waits for it.
            let _ = self.dispatch(now, from, ack, out);
        }
    }

    /// A publication at its home: drop a repeated idempotency key, else
    /// assign the offset, keep it in history, and send it to every shard
    /// with subscribers (this one directly). Frames are encoded only where
    /// and when a subscriber needs them.
    pub(super) fn publish_home(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        data: PubData,
        req: PublishReq<'_>,
        out: &mut impl Output,
    ) -> Answer {
        let Ok(opts) = self.options(&channel).cloned() else {
            return Answer::Error(ErrorCode::UnknownChannel);
        };
        let (idempotency_key, force_high) = (req.key, req.high);
        let ms = self.ms(now);
        if let Some(key) = idempotency_key
            && let Some(offset) = self.idempotency.check(&channel, key, ms)
        {
            self.stats.duplicates += 1;
            return Answer::Publish { offset };
        }
        if opts.durable {
            let next = self.hub.position(&channel, self.tick(now));
            let at = Position {
                epoch: next.epoch,
                offset: next.offset + 1,
            };
            if !self.emit_publication(now, &channel, at, &data, req, out) {
                return Answer::Error(ErrorCode::Overloaded);
            }
        }
        let acc = self.hub.publish(&channel, self.tick(now));
        self.stats.publications += 1;
        let offset = acc.position.offset;
        if let Some(key) = idempotency_key {
            self.idempotency.record(&channel, key, offset, ms);
        }
        let publication = Publication { offset, data };
        if opts.keeps_history() {
            let limits = HistoryLimits {
                size: opts.history_size,
                ttl_ms: opts.history_ttl_ms,
            };
            self.history.append(
                &channel,
                acc.position.epoch,
                publication.clone(),
                limits,
                ms,
            );
        }
        if acc.interested != 0 {
            let high = force_high || opts.priority == Priority::High;
            let p = Arc::new(SharedPub::new(channel, publication, high, now));
            self.fan_out(acc.interested, p, true, out);
        }
        Answer::Publish { offset }
    }

    /// Sends a push to every shard in `mask` (this one directly). A
    /// refused publication makes that shard's subscribers recover
    /// (`lost`); refused presence events are dropped (at most once).
    pub(super) fn fan_out(
        &mut self,
        mut mask: u64,
        p: Arc<SharedPub>,
        report_loss: bool,
        out: &mut impl Output,
    ) {
        while mask != 0 {
            let shard = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if shard == self.id {
                self.deliver_local(&p, out);
            } else if shard == super::REMOTE_BIT {
                self.broadcast_push(&p, out);
            } else if shard < self.shards
                && out.send(shard, Msg::Deliver(Arc::clone(&p))).is_err()
                && report_loss
                && !self.lost[shard].contains(&p.channel)
            {
                self.lost[shard].push(p.channel.clone());
            }
        }
    }

    /// Server API `publish` at the channel's home (allowed where clients
    /// may not publish); `high` raises its priority.
    pub fn api_publish(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        data: PubData,
        idempotency_key: Option<&str>,
        high: bool,
        out: &mut impl Output,
    ) -> Answer {
        let req = PublishReq {
            key: idempotency_key,
            publisher: None,
            high,
            ack: None,
        };
        self.publish_home(now, channel, data, req, out)
    }

    /// Hands the durable event of the publication about to be accepted at
    /// `at` to the sink; `false` (counted) when the sink cannot take it:
    /// the publication must then not be accepted.
    pub(super) fn emit_publication(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        at: Position,
        data: &PubData,
        req: PublishReq<'_>,
        out: &mut impl Output,
    ) -> bool {
        let empty = || Arc::<str>::from("");
        let (user, client) = match req.publisher {
            Some(p) => (p.user.clone(), p.client.clone()),
            None => (empty(), empty()),
        };
        let event = PublicationEvent {
            channel: channel.clone(),
            epoch: at.epoch,
            offset: at.offset,
            user,
            client,
            at_ms: self.unix_ms(self.ms(now)),
            data: data.clone(),
            idempotency_key: req.key.map(Box::from),
        };
        let taken = out.durable(DurableEvent::Publication(Box::new(event)), req.ack);
        if taken {
            self.stats.durable_events += 1;
            if let Some(t) = req.ack {
                self.durable_waits.emitted(t);
            }
        } else {
            self.stats.durable_refused += 1;
        }
        taken
    }

    /// A member of a `durable_presence` channel joined (`left: None`) or
    /// left: its durable event. The join or leave stands either way; a
    /// sink that cannot take the event counts it (the shell's metric).
    fn emit_presence(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        info: ClientInfo,
        left: Option<LeaveReason>,
        out: &mut impl Output,
    ) {
        self.presence_seq += 1;
        let event = PresenceChange {
            channel: channel.clone(),
            joined: left.is_none(),
            reason: left,
            user: info.user,
            client: info.client,
            info: info.info,
            at_ms: self.unix_ms(self.ms(now)),
            seq: self.presence_seq,
        };
        if out.durable(DurableEvent::Presence(Box::new(event)), None) {
            self.stats.durable_events += 1;
        } else {
            self.stats.durable_events_lost += 1;
        }
    }

    /// Server API `history` at the channel's home.
    pub fn api_history(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        query: &HistoryQuery,
    ) -> Answer {
        match self.options(channel) {
            Ok(o) if o.keeps_history() => self.history_home(now, channel, query),
            Ok(_) => Answer::Error(ErrorCode::PermissionDenied),
            Err(code) => Answer::Error(code),
        }
    }

    /// Server API `history_remove` at the channel's home: the publications
    /// go; the position (epoch, offset) stays.
    pub fn api_history_remove(&mut self, channel: &str) -> Answer {
        self.history.remove(channel);
        Answer::PresenceState
    }

    /// `history_remove` asked through the channel's home (from another
    /// shard or node, or for a stored channel).
    pub(super) fn history_remove_home(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        from: usize,
        reply_to: ReplyTo,
        out: &mut impl Output,
    ) {
        if self.is_stored(channel) {
            return self.remove_stored_history(now, channel, from, reply_to, out);
        }
        let answer = self.api_history_remove(channel);
        self.answer(now, channel, from, reply_to, answer, out);
    }

    /// Server API `presence` / `presence_stats` at the channel's home.
    pub fn api_presence(&mut self, now: Instant, channel: &str, stats: bool) -> Answer {
        match self.options(channel) {
            Ok(o) if o.presence => self.presence_home(now, channel, stats),
            Ok(_) => Answer::Error(ErrorCode::PermissionDenied),
            Err(code) => Answer::Error(code),
        }
    }

    /// `history` at the home.
    pub(super) fn history_home(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        query: &HistoryQuery,
    ) -> Answer {
        let position = self.hub.position(channel, self.tick(now));
        if let Some(since) = query.since
            && (since.epoch != position.epoch || since.offset > position.offset)
        {
            return Answer::Error(ErrorCode::UnrecoverablePosition);
        }
        // The contract: after `since` when given (the first `limit` after
        // it), else the newest `limit`; oldest first, or newest first with
        // `reverse`. The store reads from either end.
        let from_newest = query.since.is_none();
        let q = HistoryQuery {
            reverse: from_newest,
            ..*query
        };
        let ms = self.ms(now);
        let mut publications = self.history.read(channel, position.epoch, &q, ms);
        if from_newest != query.reverse {
            publications.reverse();
        }
        Answer::History {
            position,
            publications,
        }
    }

    /// A subscription through the home: admit it against
    /// `max_subscribers`, join its story (`collab_join`), record the member
    /// (presence), and recover what it missed. The answer follows every
    /// delivery sent before it, story events of the join included, so the
    /// snapshot is the state at the position the answer gives.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_subscribe(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        since: Option<Position>,
        member: Option<Box<ClientInfo>>,
        collab: Option<CollabAsk>,
        from: usize,
        reply_to: ReplyTo,
        out: &mut impl Output,
    ) {
        let opts = self.options(&channel).cloned();
        if collab.is_some()
            && opts.as_ref().is_ok_and(|o| o.collab.is_some())
            && self.story_must_load(&channel)
        {
            let msg = Msg::Subscribe {
                channel: channel.clone(),
                since,
                member,
                collab,
                from,
                reply_to,
            };
            return self.wait_for_story(now, channel, msg, out);
        }
        let mut story = None;
        let admitted = match opts {
            Err(code) => Err(code),
            Ok(opts) => {
                let members = self.presence.members(&channel);
                match member {
                    Some(_) if !opts.admits_subscriber(members) => Err(ErrorCode::LimitExceeded),
                    Some(info) => {
                        let client = info.client.clone();
                        let joined = match collab {
                            None => Ok(()),
                            Some(_) if opts.collab.is_none() => Err(ErrorCode::NotCollaborative),
                            Some(ask) => {
                                let id = MemberId {
                                    shard: from,
                                    conn: reply_to.conn,
                                };
                                self.story_join(now, &channel, &opts, id, &info, ask, out)
                                    .map(|j| story = Some(Box::new(j)))
                                    .map_err(|e| e.code())
                            }
                        };
                        joined.map(|()| {
                            let emit = opts.presence && opts.sends_join_leave(members + 1);
                            let origin = Origin {
                                from,
                                conn: reply_to.conn,
                            };
                            let durable = opts.durable_presence.then(|| (*info).clone());
                            let added =
                                self.presence.join_from(&channel, *info, emit, Some(origin));
                            if added && emit {
                                self.schedule_presence(now);
                            }
                            if let (true, Some(info)) = (added, durable) {
                                self.emit_presence(now, &channel, info, None, out);
                            }
                            self.mirror_touch(now, &channel, &client);
                            self.note_remote_member(&channel, &client, reply_to.conn, from, true);
                        })
                    }
                    None => Ok(()),
                }
                .map(|()| opts)
            }
        };
        // After the join's story events: they precede the answer.
        let position = self.hub.position(&channel, self.tick(now));
        let result = admitted.map(|_| match since {
            Some(since) => {
                let ms = self.ms(now);
                let r = self
                    .history
                    .recover(&channel, position, since, self.recovery_max, ms);
                if r.recovered {
                    self.stats.recovered += 1;
                } else {
                    self.stats.not_recovered += 1;
                }
                Box::new(r)
            }
            None => Box::new(Recovery::unrecoverable()),
        });
        let msg = Msg::Subscribed {
            channel,
            position,
            result,
            story,
            reply_to,
        };
        // Never refused: the shard holds the channel until it arrives.
        let _ = self.dispatch(now, from, msg, out);
    }

    /// A counted member left: from presence, and from its story (a
    /// disconnected editor's locks wait out their grace).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_leave(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        client: &str,
        conn: ConnRef,
        from: usize,
        disconnect: bool,
        out: &mut impl Output,
    ) {
        let Ok(opts) = self.options(channel).cloned() else {
            return;
        };
        if !counted(&opts) {
            return;
        }
        if crate::engine::cluster::nodes::is_remote(from) {
            let client: Arc<str> = Arc::from(client);
            self.note_remote_member(channel, &client, conn, from, false);
        }
        let members = self.presence.members(channel);
        let emit = opts.presence && opts.sends_join_leave(members);
        if let Some(info) = self.presence.leave(channel, client, emit) {
            if opts.presence {
                self.schedule_presence(now);
            }
            self.mirror_touch(now, channel, &info.client);
            if opts.durable_presence {
                let reason = if disconnect {
                    LeaveReason::Disconnect
                } else {
                    LeaveReason::Unsubscribe
                };
                self.emit_presence(now, channel, info, Some(reason), out);
            }
        }
        if opts.collab.is_some() {
            let member = MemberId { shard: from, conn };
            self.story_leave(now, channel, &opts, member, disconnect, out);
        }
    }

    /// `presence_state` at the home.
    pub(super) fn set_state_home(
        &mut self,
        now: Instant,
        channel: &str,
        client: &str,
        state: Arc<str>,
        ttl_ms: Option<u64>,
    ) -> Answer {
        let ms = self.ms(now);
        match self.presence.set_state(channel, client, state, ttl_ms, ms) {
            Ok(()) => {
                self.schedule_presence(now);
                self.mirror_touch(now, channel, client);
                Answer::PresenceState
            }
            Err(_) => Answer::Error(ErrorCode::NotSubscribed),
        }
    }

    /// `presence` or `presence_stats` at the home.
    pub(super) fn presence_home(&mut self, now: Instant, channel: &str, stats: bool) -> Answer {
        if stats {
            let (num_clients, num_users) = self.presence.stats(channel);
            return Answer::PresenceStats {
                num_clients: num_clients as u64,
                num_users: num_users as u64,
            };
        }
        Answer::Presence {
            clients: self.presence.snapshot(channel, self.ms(now)),
        }
    }

    /// A member from a node that left the cluster leaves (as if its
    /// connection closed).
    pub(super) fn leave_for_departed(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        client: &str,
        conn: ConnRef,
        from: usize,
        out: &mut impl Output,
    ) {
        self.on_leave(now, channel, client, conn, from, true, out);
    }

    /// Forgets what this shard kept as `channel`'s home (its home moved to
    /// another node): position, history, presence.
    pub(super) fn forget_home_channel(&mut self, channel: &str) {
        self.hub.forget(channel);
        self.history.remove(channel);
        self.presence.remove_channel(channel);
    }

    pub(super) fn schedule_presence(&mut self, now: Instant) {
        if self.presence_flush.is_none() {
            self.presence_flush = Some(now + PRESENCE_TICK);
        }
    }

    // ---- time ---------------------------------------------------------------

    /// When [`Router::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_sweep.min(self.next_housekeeping);
        if let Some(f) = self.presence_flush {
            at = at.min(f);
        }
        if let Some(ms) = self.presence.next_deadline() {
            at = at.min(self.origin + std::time::Duration::from_millis(ms));
        }
        if let Some(ms) = self.stories.next_deadline() {
            at = at.min(self.origin + std::time::Duration::from_millis(ms));
        }
        if let Some(load) = self.story_load_deadline() {
            at = at.min(load);
        }
        if let Some(c) = self.cluster_deadline() {
            at = at.min(c);
        }
        if let Some(s) = self.stored_deadline() {
            at = at.min(s);
        }
        at
    }

    /// Work that is due: presence expiries and pushes, history and
    /// idempotency expiry, forgetting idle channels.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Output) {
        let ms = self.ms(now);
        if self.presence.next_deadline().is_some_and(|d| d <= ms) && self.presence.expire(ms) > 0 {
            self.schedule_presence(now);
        }
        if self.stories.next_deadline().is_some_and(|d| d <= ms) {
            self.story_timers(now, out);
        }
        if self.story_load_deadline().is_some_and(|d| d <= now) {
            self.story_load_timeouts(now, out);
        }
        if self.cluster_deadline().is_some_and(|d| d <= now) {
            self.cluster_timeouts(now, out);
        }
        if self.stored_deadline().is_some_and(|d| d <= now) {
            self.stored_timeouts(now, out);
        }
        if self.presence_flush.is_some_and(|f| now >= f) {
            self.presence_flush = None;
            self.flush_presence(now, out);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_EVERY;
            self.history.expire(ms);
            self.idempotency.expire(ms);
            self.mirror_housekeeping(now, out);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            let ttl = self.idle_ttl.as_secs() as u32;
            let mut forgotten = Vec::new();
            let history = &self.history;
            let stored = self.stored.as_deref();
            // A stored channel is read back when it comes again, so only
            // its writes and load in flight keep it.
            let keep = |c: &str| match stored {
                Some(s) if s.holds(c) => true,
                _ => history.holds(c),
            };
            self.hub.sweep(self.tick(now), ttl, keep, &mut forgotten);
            for c in forgotten {
                self.history.remove(&c);
                self.presence.remove_channel(&c);
                self.stored_swept(&c);
                self.mirror_forget(&c);
            }
        }
    }

    /// Pushes the presence changes collected since the last flush: one
    /// frame per channel, shared by every subscriber on every shard.
    fn flush_presence(&mut self, now: Instant, out: &mut impl Output) {
        for (channel, events) in self.presence.take_events() {
            if events.is_empty() {
                continue;
            }
            let mask = self.hub.interested(&channel);
            if mask == 0 {
                continue;
            }
            self.stats.presence_pushes += u64::from(mask.count_ones());
            let p = Arc::new(SharedPub::presence(channel, events, now));
            self.fan_out(mask, p, false, out);
        }
        self.flush_mirror(now, out);
    }
}
