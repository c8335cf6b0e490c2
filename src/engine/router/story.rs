//! The home side of live stories: joins, leaves, locks and updates of the
//! stories this shard is home for, the events they make (publications on
//! the story's channel, pushes to one member, durable events), their
//! write-behind, and reading a story back from the store before its first
//! join.
//!
//! Every story call happens here, one at a time, in the order the home
//! receives them: the one serialisation point of a story.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::msg::{Answer, CollabAsk, CollabOp, StoryJoined};
use super::{Msg, Output, ReplyTo, Router, StoryWriteReq};
use crate::engine::codes::ErrorCode;
use crate::engine::collab::{
    CollabError, CollabEvent, DirectedEvent, JoinOk, MemberId, Role, Story, StoryExport,
};
use crate::engine::durable::{DurableEvent, StoryUpdate};
use crate::engine::namespace::NamespaceOptions;
use crate::engine::wire::ClientInfo;
use crate::engine::wire::collab::{
    MemberId as WireMember, lock_event, update_event, user_join_event, user_leave_event,
};
use crate::engine::wire::publication::PubData;

/// Joins that may wait for their stories to be read back, all stories of
/// a shard together; beyond it a join is answered "overloaded, retry".
/// Loads answer within the store's timeout (2 s), so this bounds a burst
/// of joins while the store is slow, not steady state.
pub const MAX_WAITING_JOINS: usize = 10_000;

/// A load not answered within this is given up: its joins get error 100.
/// The story worker answers every load within its timeout (2 s); this
/// covers an answer lost on the way (the shard's inbox full), so a story
/// never stays unjoinable.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the store answered for a story: its durable part (`None`: it holds
/// nothing for it), or that it could not be read.
pub type StoryLoadResult = Result<Option<StoryExport>, StoryUnavailable>;

/// The story store could not be read; the joins that waited get error
/// 100 (temporary) rather than an empty story that would hide the stored
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoryUnavailable;

impl Router {
    /// Unix milliseconds of the router clock's `ms`.
    pub(super) fn unix_ms(&self, ms: u64) -> u64 {
        self.unix_origin_ms.saturating_add(ms)
    }

    /// Whether a join of `channel` must wait for its story to be read back
    /// from the store (stored stories are loaded before their first join).
    pub(super) fn story_must_load(&self, channel: &str) -> bool {
        self.story_store && self.stories.get(channel).is_none()
    }

    /// Parks a join until `channel`'s story is read back; the first one
    /// asks for the load.
    pub(super) fn wait_for_story(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        msg: Msg,
        out: &mut impl Output,
    ) {
        if self.story_waiting_count >= MAX_WAITING_JOINS {
            return self.refuse_waiting(now, msg, ErrorCode::Overloaded, out);
        }
        self.story_waiting_count += 1;
        // Listed from the load request to its answer (even if everyone
        // waiting leaves meanwhile): one load per story at a time.
        let first = !self.story_waiting.contains_key(&channel);
        self.story_waiting
            .entry(channel.clone())
            .or_insert_with(|| (now, Vec::new()))
            .1
            .push(msg);
        if first {
            out.story_load(&channel);
        }
    }

    /// Answers a parked message with `code` (requests get the error,
    /// interest fails; leaves and interest-off run).
    pub(super) fn refuse_waiting(
        &mut self,
        now: Instant,
        msg: Msg,
        code: ErrorCode,
        out: &mut impl Output,
    ) {
        match msg {
            Msg::Subscribe {
                channel,
                from,
                reply_to,
                ..
            } => {
                let position = self.hub.position(&channel, self.tick(now));
                let msg = Msg::Subscribed {
                    channel,
                    position,
                    result: Err(code),
                    story: None,
                    reply_to,
                };
                // Never refused: the shard holds the channel until it arrives.
                let _ = self.dispatch(now, from, msg, out);
            }
            Msg::Interest {
                channel,
                from,
                on: true,
            } => {
                // Never refused (not refusable): the asking shard waits.
                let _ = self.dispatch(now, from, Msg::InterestFailed { channel }, out);
            }
            msg => match (msg.reply_to(), msg.sender(), msg.channel().cloned()) {
                (Some(reply_to), Some(from), Some(channel)) => {
                    self.answer(now, &channel, from, reply_to, Answer::Error(code), out);
                }
                // Not a request (a leave, interest off): it needs no
                // answer and no state that was refused; it runs.
                _ => self.handle_here(now, msg, out),
            },
        }
    }

    /// The store's answer for `channel`'s story: the joins that waited for
    /// it run now, in order, or are refused (error 100) when it could not
    /// be read. An answer no join waits for is ignored.
    pub fn story_loaded(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        result: StoryLoadResult,
        out: &mut impl Output,
    ) {
        let Some((_, waiting)) = self.story_waiting.remove(&channel) else {
            return;
        };
        self.story_waiting_count -= waiting.len();
        let refuse = match result {
            Err(StoryUnavailable) => {
                self.stats.story_load_failures += 1;
                Some(ErrorCode::Internal)
            }
            Ok(_) if self.stories.get(&channel).is_some() => None,
            Ok(export) => self.admit_loaded(now, &channel, export).err(),
        };
        for msg in waiting {
            match refuse {
                Some(code) => self.refuse_waiting(now, msg, code, out),
                None => self.handle(now, msg, out),
            }
        }
        self.forget_evicted(out);
    }

    /// Puts a story read back from the store (or a new one) in the table.
    fn admit_loaded(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        export: Option<StoryExport>,
    ) -> Result<(), ErrorCode> {
        let Some(cfg) = self.options(channel).ok().and_then(|o| o.collab) else {
            return Err(ErrorCode::NotCollaborative);
        };
        let ms = self.ms(now);
        self.stats.story_loads += 1;
        let story = match export {
            Some(e) => {
                let imported = Story::import(cfg, e, ms);
                self.stats.story_import_skipped += imported.skipped as u64;
                imported.story
            }
            None => Story::new(cfg, ms),
        };
        self.stories
            .insert(channel.clone(), story)
            .map(drop)
            .map_err(|e| e.code())
    }

    /// Joins `member` to `channel`'s story (created if not in memory) and
    /// sends what the join makes others learn.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn story_join(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        opts: &NamespaceOptions,
        member: MemberId,
        who: &ClientInfo,
        ask: CollabAsk,
        out: &mut impl Output,
    ) -> Result<JoinOk, CollabError> {
        let cfg = opts.collab.ok_or(CollabError::NotMember)?;
        let ms = self.ms(now);
        if self.stories.get(channel).is_none() {
            self.stories.insert(channel.clone(), Story::new(cfg, ms))?;
        }
        let mut events = std::mem::take(&mut self.collab_events);
        let joined = match self.stories.get_mut(channel) {
            Some(mut story) => story.join(member, who, ask.role, ask.queue, ms, &mut events),
            None => Err(CollabError::TooManyStories),
        };
        if joined.is_ok() {
            self.stats.story_joins += 1;
        }
        self.after_story(now, channel, opts, &mut events, None, out);
        self.collab_events = events;
        joined
    }

    /// `member` left `channel`'s story, or its connection closed
    /// (`disconnect`); a join of it still waiting for the story is
    /// dropped.
    pub(super) fn story_leave(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        opts: &NamespaceOptions,
        member: MemberId,
        disconnect: bool,
        out: &mut impl Output,
    ) {
        if let Some((_, waiting)) = self.story_waiting.get_mut(channel) {
            let before = waiting.len();
            waiting.retain(|m| !is_from(m, member));
            self.story_waiting_count -= before - waiting.len();
        }
        let ms = self.ms(now);
        let mut events = std::mem::take(&mut self.collab_events);
        let left = match self.stories.get_mut(channel) {
            Some(mut story) if disconnect => story.disconnect(member, ms, &mut events),
            Some(mut story) => story.leave(member, ms, &mut events),
            None => false,
        };
        if left {
            self.after_story(now, channel, opts, &mut events, None, out);
        }
        self.collab_events = events;
    }

    /// `lock`, `unlock`, `update` or a member's role change, at the
    /// story's home.
    pub(super) fn on_collab(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        op: CollabOp,
        from: usize,
        reply_to: ReplyTo,
        out: &mut impl Output,
    ) {
        let opts = match self.options(&channel) {
            Ok(o) if o.collab.is_some() => o.clone(),
            Ok(_) => {
                let answer = Answer::Error(ErrorCode::NotCollaborative);
                return self.answer(now, &channel, from, reply_to, answer, out);
            }
            Err(code) => {
                return self.answer(now, &channel, from, reply_to, Answer::Error(code), out);
            }
        };
        let member = MemberId {
            shard: from,
            conn: reply_to.conn,
        };
        if let CollabOp::Join { ask, who } = op {
            if self.story_must_load(&channel) {
                let msg = Msg::Collab {
                    channel: channel.clone(),
                    op: Box::new(CollabOp::Join { ask, who }),
                    from,
                    reply_to,
                };
                return self.wait_for_story(now, channel, msg, out);
            }
            let answer = match self.story_join(now, &channel, &opts, member, &who, ask, out) {
                Ok(join) => Answer::CollabJoin(Box::new(StoryJoined {
                    join,
                    position: self.hub.position(&channel, self.tick(now)),
                })),
                Err(e) => Answer::CollabError(Box::new(e)),
            };
            return self.answer(now, &channel, from, reply_to, answer, out);
        }
        if self.story_waiting.contains_key(&channel) {
            // The story is being read back: a command pipelined behind the
            // member's join waits behind it, in order.
            let msg = Msg::Collab {
                channel: channel.clone(),
                op: Box::new(op),
                from,
                reply_to,
            };
            return self.wait_for_story(now, channel, msg, out);
        }
        if matches!(op, CollabOp::Update { .. })
            && opts.durable_collab
            && !out.durable_room(&channel)
        {
            // Its sink could not keep the update: refuse it (temporary)
            // rather than apply what would not be kept.
            self.stats.durable_collab_refused += 1;
            let answer = Answer::Error(ErrorCode::Overloaded);
            return self.answer(now, &channel, from, reply_to, answer, out);
        }
        let ms = self.ms(now);
        let unix = self.unix_ms(ms);
        let mut events = std::mem::take(&mut self.collab_events);
        let mut renewed = None;
        let result = match self.stories.get_mut(&channel) {
            None => Err(CollabError::NotMember),
            Some(mut story) => match op {
                CollabOp::Join { .. } => unreachable!("joins are answered above"),
                CollabOp::Lock { section, ttl } => story
                    .lock(member, &section, ttl, ms, &mut events)
                    .map(|mut l| {
                        renewed = Some(l.section.clone());
                        l.expires_ms = unix.saturating_add(l.expires_ms.saturating_sub(ms));
                        Answer::Lock(Box::new(l))
                    }),
                CollabOp::Unlock { section } => story
                    .unlock(member, &section, ms, &mut events)
                    .map(|_| Answer::Unlock),
                CollabOp::Update {
                    section,
                    base_version,
                    data,
                    op_id,
                } => story
                    .update(
                        member,
                        &section,
                        base_version,
                        data,
                        &op_id,
                        ms,
                        &mut events,
                    )
                    .map(Answer::Update),
            },
        };
        self.after_story(now, &channel, &opts, &mut events, renewed, out);
        self.collab_events = events;
        let answer = result.unwrap_or_else(|e| Answer::CollabError(Box::new(e)));
        self.answer(now, &channel, from, reply_to, answer, out);
    }

    /// When the oldest load waiting for its answer times out.
    pub(super) fn story_load_deadline(&self) -> Option<Instant> {
        self.story_waiting
            .values()
            .map(|(since, _)| *since + LOAD_TIMEOUT)
            .min()
    }

    /// Gives up the loads not answered within [`LOAD_TIMEOUT`].
    pub(super) fn story_load_timeouts(&mut self, now: Instant, out: &mut impl Output) {
        let late: Vec<Arc<str>> = self
            .story_waiting
            .iter()
            .filter(|(_, (since, _))| now >= *since + LOAD_TIMEOUT)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in late {
            self.story_loaded(now, channel, Err(StoryUnavailable), out);
        }
    }

    /// Lapsed locks and idle stories.
    pub(super) fn story_timers(&mut self, now: Instant, out: &mut impl Output) {
        let ms = self.ms(now);
        let mut due = Vec::new();
        self.stories.tick(ms, &mut due);
        let mut events = std::mem::take(&mut self.collab_events);
        // The events come grouped by story: hand each story's over as one.
        let mut due = due.into_iter().peekable();
        while let Some((channel, first)) = due.next() {
            events.push(first);
            while let Some((_, e)) = due.next_if(|(c, _)| *c == channel) {
                events.push(e);
            }
            if let Ok(opts) = self.options(&channel).cloned() {
                self.after_story(now, &channel, &opts, &mut events, None, out);
            }
            events.clear();
        }
        self.collab_events = events;
        self.forget_evicted(out);
    }

    /// Tells the shell about stories that left memory.
    fn forget_evicted(&mut self, out: &mut impl Output) {
        for channel in self.stories.take_evicted() {
            out.story_evicted(&channel);
        }
    }

    /// Sends what a story call made others learn: its broadcast events as
    /// publications on the channel (viewer joins and leaves only while the
    /// story has at most `join_leave_max_subscribers` members), pushes to
    /// single members, durable events for accepted updates; then writes
    /// the story behind (with `renewed`, a lock renewed without an event).
    fn after_story(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        opts: &NamespaceOptions,
        events: &mut Vec<CollabEvent>,
        renewed: Option<Arc<str>>,
        out: &mut impl Output,
    ) {
        let ms = self.ms(now);
        let unix = self.unix_ms(ms);
        let members = self.stories.get(channel).map_or(0, Story::member_count);
        let viewer_events =
            opts.join_leave_max_subscribers == 0 || members <= opts.join_leave_max_subscribers;
        let mut touched: Vec<Arc<str>> = renewed.into_iter().collect();
        for event in events.drain(..) {
            let data = match event {
                CollabEvent::Join { who, role } => {
                    if role == Role::Viewer && !viewer_events {
                        continue;
                    }
                    user_join_event(&who, role.into())
                }
                CollabEvent::Leave { who, role } => {
                    if role == Role::Viewer && !viewer_events {
                        continue;
                    }
                    user_leave_event(WireMember::from(&who))
                }
                CollabEvent::Lock { section, holder } => {
                    let expires = holder.as_ref().and_then(|_| {
                        let expires_ms = self.stories.get(channel)?.lock_deadline(&section)?;
                        Some(unix.saturating_add(expires_ms.saturating_sub(ms)))
                    });
                    let data = lock_event(&section, holder.as_ref().map(WireMember::from), expires);
                    touched.push(section);
                    data
                }
                CollabEvent::Update {
                    section,
                    version,
                    data,
                    by,
                } => {
                    self.stats.story_updates += 1;
                    let event = update_event(&section, version, &data, &by);
                    // Counted by the shell. The embedded buffer always
                    // takes it; a `durable_collab` sink had room a moment
                    // ago (checked before the update), so a refusal here
                    // is another shard's burst filling it in between.
                    let taken = out.durable(
                        DurableEvent::StoryContentUpdate(StoryUpdate {
                            story: channel.clone(),
                            section: section.clone(),
                            version,
                            user: by.user.clone(),
                            client: by.client.clone(),
                            data,
                            at_ms: unix,
                        }),
                        None,
                    );
                    if !taken {
                        self.stats.durable_events_lost += 1;
                    }
                    touched.push(section);
                    event
                }
                CollabEvent::Directed { to, event } => {
                    if matches!(event, DirectedEvent::Conflict { .. }) {
                        self.stats.story_conflicts += 1;
                    }
                    let msg = Msg::CollabPush {
                        conn: to.conn,
                        channel: channel.clone(),
                        event: Box::new(event),
                    };
                    // Never refused (not refusable).
                    let _ = self.dispatch(now, to.shard, msg, out);
                    continue;
                }
            };
            self.publish_story_event(now, channel, data, out);
        }
        if self.story_store
            && let Some(story) = self.stories.get(channel)
        {
            out.story_write(StoryWriteReq {
                channel,
                story,
                touched: &touched,
                active: story.editor_count() > 0,
                now_ms: ms,
                unix_ms: unix,
            });
        }
        self.forget_evicted(out);
    }

    /// A story event as a publication on the story's channel: an offset,
    /// history, every subscriber on every shard.
    fn publish_story_event(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        bytes: Bytes,
        out: &mut impl Output,
    ) {
        let data = PubData {
            bytes,
            is_json: true,
        };
        self.publish_home(
            now,
            channel.clone(),
            data,
            super::PublishReq::default(),
            out,
        );
    }
}

/// Whether a parked join came from `member`.
fn is_from(msg: &Msg, member: MemberId) -> bool {
    match msg {
        Msg::Subscribe { from, reply_to, .. } | Msg::Collab { from, reply_to, .. } => {
            *from == member.shard && reply_to.conn == member.conn
        }
        _ => false,
    }
}
