//! The home side of history kept in JetStream (`history_backend =
//! "jetstream"`, `crate::engine::cluster::stored`).
//!
//! - **Read back before use.** The first message about such a channel at
//!   its home (a subscribe, publish, interest, history call…) asks the
//!   NATS worker for the channel's stored tail ([`Output::load_stored`]);
//!   it and every message about the channel after it wait, in order, until
//!   the tail is here. The tail gives the epoch and the offset to continue
//!   from and fills the history cache, so a channel whose home died goes on
//!   where it was on its new home, and a client recovers there with
//!   `recovered: true`.
//! - **Written before delivered.** A publication gets its offset at once
//!   (the next after those delivered and those still being written) and is
//!   written ([`Output::persist`]); it is delivered, kept in the history
//!   cache and answered only when its acknowledgement and every earlier
//!   one's have come back, in offset order. Nothing a subscriber has seen
//!   can be missing from the stream.
//! - **A failed write** (NATS down, timeout, the worker's queue full)
//!   fails every write behind it too (error 100: the outcome is unknown,
//!   as for any timeout) and the channel reads its tail back: what was
//!   stored after all is delivered then if it follows on; otherwise the
//!   stream's state is adopted and the subscribers are told to recover.
//!
//! Only [`Router::handle`] and the answers of the worker
//! ([`Router::stored_answer`]) come here; the memory backend never does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Answer, Msg, Output, PublishReq, REMOTE_BIT, ReplyTo, Router, cluster};
use crate::engine::cluster::members::StoredMember;
use crate::engine::cluster::stored::{StoreAnswer, StoredPub, Tail};
use crate::engine::codes::ErrorCode;
use crate::engine::history::HistoryLimits;
use crate::engine::hub::Position;
use crate::engine::namespace::{HistoryBackend, Priority};
use crate::engine::wire::publication::{PubData, Publication, SharedPub};

/// How long a read-back or a write may take before the home gives up on
/// it (error 100): a backstop for an answer that never comes (the worker
/// gives up on NATS after `request_timeout`, 2 s by default).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages one shard parks while tails are read back, all channels
/// together; beyond it requests get error 112 (overloaded, retry).
pub const MAX_PARKED: usize = 65_536;

/// How often the ages of writes in flight are checked.
const SCAN_EVERY: Duration = Duration::from_millis(500);

/// A publication being written.
#[derive(Debug)]
struct Write {
    offset: u64,
    data: PubData,
    key: Option<Box<str>>,
    high: bool,
    from: usize,
    reply_to: ReplyTo,
    /// The publisher's durable wait (`durable_ack`), if any.
    ack: Option<u64>,
    acked: Option<bool>,
    asked: Instant,
}

/// The stored channels of one home shard.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// Channels whose tail is being read: when it was asked, and the
    /// messages waiting for it, in arrival order.
    loading: HashMap<Arc<str>, (Instant, Vec<Msg>)>,
    /// Messages parked in `loading`, all channels together.
    parked: usize,
    /// Channels read back, with their writes in flight, oldest first.
    ready: HashMap<Arc<str>, VecDeque<Write>>,
    /// When each load was asked, in order (one timeout for all, so this is
    /// also deadline order).
    deadlines: VecDeque<(Instant, Arc<str>)>,
    /// Writes in flight, all channels together.
    writing: usize,
    /// When the writes' ages are next checked (while any are in flight).
    next_scan: Option<Instant>,
    /// Channels whose history `history_remove` cut at this offset while
    /// writes at or below it were in flight: those are delivered but not
    /// kept in the history cache.
    floors: HashMap<Arc<str>, u64>,
    /// `history_remove` calls waiting for the stream's purge, by channel.
    removing: HashMap<Arc<str>, Vec<(usize, ReplyTo)>>,
    stats: StoredStats,
}

/// Counts of the stored channels, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoredStats {
    /// Tails read back.
    pub loads: u64,
    /// Reads that failed (their waiting requests got 100).
    pub load_failures: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// Writes that failed or were failed behind one that did.
    pub write_failures: u64,
    /// Channels that adopted a stored state different from the one their
    /// subscribers had (they were told to recover).
    pub resets: u64,
}

impl Stored {
    /// Whether `channel` has writes in flight or a load pending (the idle
    /// sweep keeps it).
    pub(super) fn holds(&self, channel: &str) -> bool {
        self.loading.contains_key(channel) || self.ready.get(channel).is_some_and(|w| !w.is_empty())
    }
}

impl Router {
    /// Whether `channel` keeps its history in JetStream.
    pub fn is_stored(&self, channel: &str) -> bool {
        self.stored.is_some()
            && self
                .options(channel)
                .is_ok_and(|o| o.history_backend == HistoryBackend::Jetstream)
    }

    /// Parks `msg` (a message for the home of a stored channel) while the
    /// channel's tail is read back. Gives it back when the channel is
    /// ready (or not stored).
    pub(super) fn park_until_loaded(
        &mut self,
        now: Instant,
        msg: Msg,
        out: &mut impl Output,
    ) -> Option<Msg> {
        if self.stored.is_none() || !cluster::to_home(&msg) {
            return Some(msg);
        }
        let channel = cluster::channel_of(&msg).clone();
        if !self.is_stored(&channel) {
            return Some(msg);
        }
        let s = self.stored.as_mut().expect("checked above");
        if s.ready.contains_key(&channel) {
            return Some(msg);
        }
        if s.parked >= MAX_PARKED {
            self.refuse_waiting(now, msg, ErrorCode::Overloaded, out);
            return None;
        }
        s.parked += 1;
        let first = !s.loading.contains_key(&channel);
        s.loading
            .entry(channel.clone())
            .or_insert_with(|| (now, Vec::new()))
            .1
            .push(msg);
        if first {
            self.start_load(now, &channel, out);
        }
        None
    }

    fn start_load(&mut self, now: Instant, channel: &Arc<str>, out: &mut impl Output) {
        let ns = self.ns_index(channel);
        let s = self.stored.as_mut().expect("stored channels");
        s.loading
            .entry(channel.clone())
            .or_insert_with(|| (now, Vec::new()));
        s.deadlines
            .push_back((now + STORE_TIMEOUT, channel.clone()));
        if !out.load_stored(ns, channel) {
            self.loaded(now, channel, None, out);
        }
    }

    fn ns_index(&self, channel: &str) -> usize {
        self.namespaces
            .resolve(channel)
            .map_or(0, |(id, _)| id.index())
    }

    /// A publication at the home of a stored channel (ready: its tail is
    /// here): answered now only for a repeated idempotency key or a full
    /// worker queue; otherwise when its write is acknowledged.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish_stored(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        data: PubData,
        req: PublishReq<'_>,
        from: usize,
        reply_to: ReplyTo,
        out: &mut impl Output,
    ) {
        let (key, high, ack) = (req.key, req.high, req.ack);
        let ms = self.ms(now);
        if let Some(k) = key
            && let Some(offset) = self.idempotency.check(&channel, k, ms)
        {
            self.stats.duplicates += 1;
            let answer = Answer::Publish { offset };
            return self.answer_publish(now, &channel, from, reply_to, ack, answer, out);
        }
        let position = self.hub.position(&channel, self.tick(now));
        let ns = self.ns_index(&channel);
        let s = self.stored.as_mut().expect("stored channels");
        let writes = s.ready.get(&channel).map_or(0, VecDeque::len);
        let offset = position.offset + writes as u64 + 1;
        let durable = self.options(&channel).is_ok_and(|o| o.durable);
        let at = Position {
            epoch: position.epoch,
            offset,
        };
        // The event is made with the write (docs/drafts/durable-events.md):
        // a write that then fails leaves an event whose publisher got 100.
        if durable && !self.emit_publication(now, &channel, at, &data, req, out) {
            let answer = Answer::Error(ErrorCode::Overloaded);
            return self.answer_publish(now, &channel, from, reply_to, ack, answer, out);
        }
        let stored = StoredPub {
            epoch: position.epoch,
            offset,
            data,
            key: key.map(Box::from),
        };
        if !out.persist(ns, &channel, position.epoch, offset, stored.encode()) {
            let answer = Answer::Error(ErrorCode::Overloaded);
            return self.answer_publish(now, &channel, from, reply_to, ack, answer, out);
        }
        if let Some(k) = key {
            self.idempotency.record(&channel, k, offset, ms);
        }
        let s = self.stored.as_mut().expect("stored channels");
        s.writing += 1;
        s.next_scan.get_or_insert(now + SCAN_EVERY);
        s.ready.entry(channel).or_default().push_back(Write {
            offset,
            data: stored.data,
            key: stored.key,
            high,
            from,
            reply_to,
            ack,
            acked: None,
            asked: now,
        });
    }

    /// What the NATS worker answers about a stored channel.
    pub fn stored_answer(&mut self, now: Instant, answer: StoreAnswer, out: &mut impl Output) {
        if self.stored.is_none() {
            return;
        }
        match answer {
            StoreAnswer::Persisted {
                channel,
                offset,
                ok,
            } => self.persisted(now, &channel, offset, ok, out),
            StoreAnswer::Loaded {
                channel,
                result,
                floor,
                members,
            } => {
                let tail = result.ok().map(|t| (Tail::with_floor(t, floor), members));
                self.loaded(now, &channel, tail, out)
            }
            StoreAnswer::MembersUnwritten { channel } => self.members_unwritten(&channel),
            StoreAnswer::Purged { channel, ok } => self.purged(now, &channel, ok, out),
        }
    }

    fn persisted(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        offset: u64,
        ok: bool,
        out: &mut impl Output,
    ) {
        let s = self.stored.as_mut().expect("stored channels");
        let Some(writes) = s.ready.get_mut(channel) else {
            return; // the channel failed or moved since: stale
        };
        let Some(front) = writes.front() else {
            return;
        };
        let Some(i) = offset
            .checked_sub(front.offset)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < writes.len())
        else {
            return;
        };
        writes[i].acked.get_or_insert(ok);
        self.release(now, channel, out);
    }

    /// Delivers the acknowledged writes at the front of `channel`'s queue;
    /// a failed one fails the channel.
    fn release(&mut self, now: Instant, channel: &Arc<str>, out: &mut impl Output) {
        loop {
            let s = self.stored.as_mut().expect("stored channels");
            let Some(writes) = s.ready.get_mut(channel) else {
                return;
            };
            match writes.front().and_then(|w| w.acked) {
                None => return,
                Some(false) => return self.fail_writes(now, channel, out),
                Some(true) => {
                    let w = writes.pop_front().expect("front checked");
                    s.writing -= 1;
                    s.stats.writes += 1;
                    self.take_stored(now, channel, w.offset, w.data, w.high, out);
                    let answer = Answer::Publish { offset: w.offset };
                    self.answer_publish(now, channel, w.from, w.reply_to, w.ack, answer, out);
                }
            }
        }
    }

    /// Takes a stored publication into the channel's position and history
    /// cache and sends it to every shard and node with subscribers.
    fn take_stored(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        offset: u64,
        data: PubData,
        high: bool,
        out: &mut impl Output,
    ) {
        let acc = self.hub.publish(channel, self.tick(now));
        debug_assert_eq!(acc.position.offset, offset, "writes are released in order");
        self.stats.publications += 1;
        let Ok(opts) = self.options(channel).cloned() else {
            return;
        };
        let publication = Publication { offset, data };
        let limits = HistoryLimits {
            size: opts.history_size,
            ttl_ms: opts.history_ttl_ms,
        };
        let ms = self.ms(now);
        let s = self.stored.as_mut().expect("stored channels");
        let removed = match s.floors.get(channel) {
            Some(&floor) if offset <= floor => {
                if offset == floor {
                    s.floors.remove(channel);
                }
                true
            }
            _ => false,
        };
        if !removed {
            self.history
                .append(channel, acc.position.epoch, publication.clone(), limits, ms);
        }
        if acc.interested != 0 {
            let high = high || opts.priority == Priority::High;
            let p = Arc::new(SharedPub::new(channel.clone(), publication, high, now));
            self.fan_out(acc.interested, p, true, out);
        }
    }

    /// A write of `channel` failed: it and every write behind it get 100
    /// (their keys are forgotten, so a retry publishes), and the channel
    /// reads its tail back.
    fn fail_writes(&mut self, now: Instant, channel: &Arc<str>, out: &mut impl Output) {
        if !self.drop_writes(now, channel, out) {
            return;
        }
        tracing::debug!(%channel, "stored history: a write failed; reading the tail back");
        self.start_load(now, channel, out);
    }

    /// Ends `channel`'s writes in flight: each gets 100 and its idempotency
    /// key is forgotten (a retry must publish). Whether it had a queue.
    fn drop_writes(&mut self, now: Instant, channel: &Arc<str>, out: &mut impl Output) -> bool {
        let Some(s) = self.stored.as_mut() else {
            return false;
        };
        let Some(writes) = s.ready.remove(channel) else {
            return false;
        };
        s.stats.write_failures += writes.len() as u64;
        s.writing -= writes.len();
        for w in writes {
            if let Some(k) = &w.key {
                self.idempotency.remove(channel, k);
            }
            let answer = Answer::Error(ErrorCode::Internal);
            self.answer_publish(now, channel, w.from, w.reply_to, w.ack, answer, out);
        }
        true
    }

    /// `channel`'s tail is here (`Some`; `Some(None)`: nothing stored) or
    /// could not be read (`None`): the parked messages run, or get 100.
    fn loaded(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        tail: Option<(Option<Tail>, Vec<StoredMember>)>,
        out: &mut impl Output,
    ) {
        let s = self.stored.as_mut().expect("stored channels");
        let Some((_, parked)) = s.loading.remove(channel) else {
            return; // answered already (timed out), or stale
        };
        s.parked -= parked.len();
        let Some((tail, members)) = tail else {
            s.stats.load_failures += 1;
            tracing::debug!(%channel, "stored history: the tail could not be read");
            for msg in parked {
                self.refuse_waiting(now, msg, ErrorCode::Internal, out);
            }
            return;
        };
        s.stats.loads += 1;
        s.ready.insert(channel.clone(), VecDeque::new());
        let fresh = self.hub.peek(channel).is_none();
        if self.restores_members(channel) {
            self.restore_members(now, channel, members, out);
        }
        self.adopt(now, channel, tail, out);
        if fresh {
            self.assume_remote_interest(now, channel);
        }
        for msg in parked {
            self.handle_here(now, msg, out);
        }
    }

    /// Makes the stored tail the channel's state here. A home that had
    /// none (a first load: a new home) takes it as it is. A home that had
    /// delivered up to some offset (a reload after a failed write) delivers
    /// what was stored after it, if it follows on; otherwise it adopts the
    /// stream's state and tells its subscribers to recover.
    fn adopt(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        tail: Option<Tail>,
        out: &mut impl Output,
    ) {
        let held = self.hub.peek(channel);
        if let (Some(p), Some(t)) = (held, &tail)
            && p.epoch == t.epoch
            && t.top() >= p.offset
            && t.first().is_some_and(|f| f <= p.offset + 1)
        {
            // A home that starts at its subscribers' position (it relayed
            // the channel before) has no cache yet: what they had goes in
            // first, so a recovery from before the position is served.
            if !self.history.holds(channel)
                && let Ok(opts) = self.options(channel).cloned()
            {
                let limits = HistoryLimits {
                    size: opts.history_size,
                    ttl_ms: opts.history_ttl_ms,
                };
                let ms = self.ms(now);
                for sp in t.publications.iter().filter(|sp| sp.offset <= p.offset) {
                    self.remember_key(now, channel, sp);
                    let publication = Publication {
                        offset: sp.offset,
                        data: sp.data.clone(),
                    };
                    self.history
                        .append(channel, t.epoch, publication, limits, ms);
                }
            }
            let next: Vec<StoredPub> = t
                .publications
                .iter()
                .filter(|sp| sp.offset > p.offset)
                .cloned()
                .collect();
            for sp in next {
                self.remember_key(now, channel, &sp);
                self.take_stored(now, channel, sp.offset, sp.data, false, out);
            }
            return;
        }
        if held.is_some_and(|p| p.offset == 0) && tail.is_none() {
            return; // nothing was ever published, nothing is stored
        }
        let mask = if held.is_some() {
            self.hub.interested(channel)
        } else {
            0
        };
        let tick = self.tick(now);
        self.history.remove(channel);
        match tail {
            None => {
                // The stream lost what the subscribers had: a new epoch.
                self.hub.forget(channel);
                self.hub.position(channel, tick);
                for shard in bits(mask) {
                    self.hub.set_interest(channel, shard, true, tick);
                }
            }
            Some(t) => {
                let position = Position {
                    epoch: t.epoch,
                    offset: t.top(),
                };
                self.hub.restore(channel, position, tick);
                let Ok(opts) = self.options(channel).cloned() else {
                    return;
                };
                let limits = HistoryLimits {
                    size: opts.history_size,
                    ttl_ms: opts.history_ttl_ms,
                };
                let ms = self.ms(now);
                for sp in t.publications {
                    self.remember_key(now, channel, &sp);
                    let publication = Publication {
                        offset: sp.offset,
                        data: sp.data,
                    };
                    self.history
                        .append(channel, t.epoch, publication, limits, ms);
                }
            }
        }
        if mask != 0 {
            if let Some(s) = self.stored.as_mut() {
                s.stats.resets += 1;
            }
            self.tell_lost(now, channel, mask & !(1 << REMOTE_BIT), out);
            if mask & (1 << REMOTE_BIT) != 0
                && let Some(p) = self.hub.peek(channel)
            {
                self.broadcast_marker(channel, p, out);
            }
        }
    }

    fn remember_key(&mut self, now: Instant, channel: &Arc<str>, sp: &StoredPub) {
        if let Some(k) = &sp.key {
            let ms = self.ms(now);
            self.idempotency.record(channel, k, sp.offset, ms);
        }
    }

    /// `history_remove` at a stored channel's home: the history cache is
    /// emptied now, and the stream gets a floor marker at the last offset
    /// given out (writes in flight included) with everything before it
    /// purged; the caller is answered when the worker has done it. The
    /// position stays, and a home that reads the stream back later
    /// continues from the floor.
    pub(super) fn remove_stored_history(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        from: usize,
        reply_to: ReplyTo,
        out: &mut impl Output,
    ) {
        let Some(position) = self.hub.peek(channel) else {
            // Nothing was ever published.
            return self.answer(now, channel, from, reply_to, Answer::PresenceState, out);
        };
        let ns = self.ns_index(channel);
        let s = self.stored.as_mut().expect("stored channels");
        let in_flight = s
            .ready
            .get(channel)
            .and_then(|w| w.back())
            .map(|w| w.offset);
        let floor = Position {
            epoch: position.epoch,
            offset: in_flight.unwrap_or(position.offset),
        };
        if floor.offset == 0 {
            return self.answer(now, channel, from, reply_to, Answer::PresenceState, out);
        }
        if !out.purge_stored(ns, channel, floor) {
            let answer = Answer::Error(ErrorCode::Overloaded);
            return self.answer(now, channel, from, reply_to, answer, out);
        }
        let s = self.stored.as_mut().expect("stored channels");
        if in_flight.is_some() {
            s.floors.insert(channel.clone(), floor.offset);
        }
        s.removing
            .entry(channel.clone())
            .or_default()
            .push((from, reply_to));
        self.history.remove(channel);
    }

    /// The worker purged `channel`'s stream below its floor (`ok`), or
    /// could not (the callers get 100: some of the history may remain).
    fn purged(&mut self, now: Instant, channel: &Arc<str>, ok: bool, out: &mut impl Output) {
        let s = self.stored.as_mut().expect("stored channels");
        let Some(waiting) = s.removing.remove(channel) else {
            return;
        };
        for (from, reply_to) in waiting {
            let answer = if ok {
                Answer::PresenceState
            } else {
                Answer::Error(ErrorCode::Internal)
            };
            self.answer(now, channel, from, reply_to, answer, out);
        }
    }

    /// The channel is no longer this shard's (its home moved, or it was
    /// forgotten): its state goes. Writes in flight get 100; messages
    /// waiting for its tail are handed back to be routed again.
    pub(super) fn forget_stored(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        out: &mut impl Output,
    ) -> Vec<Msg> {
        let Some(s) = self.stored.as_mut() else {
            return Vec::new();
        };
        let parked = match s.loading.remove(channel) {
            Some((_, parked)) => {
                s.parked -= parked.len();
                parked
            }
            None => Vec::new(),
        };
        s.floors.remove(channel);
        // Whether the purge happened is not known here: 100, repeat it.
        self.purged(now, channel, false, out);
        self.drop_writes(now, channel, out);
        parked
    }

    /// This shard becomes the home of `channel`, which it relayed with its
    /// subscribers (shards in `mask`) at `position`: it starts there and
    /// reads the stored tail back, which either follows on (what was
    /// stored after `position` is delivered) or makes them recover.
    pub(super) fn take_stored_home(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        position: Position,
        mask: u64,
        out: &mut impl Output,
    ) {
        let tick = self.tick(now);
        self.hub.restore(channel, position, tick);
        for shard in bits(mask) {
            self.hub.set_interest(channel, shard, true, tick);
        }
        self.assume_remote_interest(now, channel);
        self.start_load(now, channel, out);
    }

    /// The idle sweep forgot `channel`: it reads its tail again next time.
    pub(super) fn stored_swept(&mut self, channel: &str) {
        if let Some(s) = self.stored.as_mut() {
            s.ready.remove(channel);
        }
    }

    /// When a load or a write may next have timed out.
    pub(super) fn stored_deadline(&self) -> Option<Instant> {
        let s = self.stored.as_ref()?;
        let load = s.deadlines.front().map(|(d, _)| *d);
        match (load, s.next_scan) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Loads and writes that took longer than [`STORE_TIMEOUT`] fail.
    pub(super) fn stored_timeouts(&mut self, now: Instant, out: &mut impl Output) {
        loop {
            let Some(s) = self.stored.as_mut() else {
                return;
            };
            if s.deadlines.front().is_none_or(|(d, _)| *d > now) {
                break;
            }
            let (deadline, channel) = s.deadlines.pop_front().expect("front checked");
            let asked = deadline - STORE_TIMEOUT;
            if s.loading.get(&channel).is_some_and(|(at, _)| *at == asked) {
                self.loaded(now, &channel, None, out);
            }
        }
        let Some(s) = self.stored.as_mut() else {
            return;
        };
        if s.next_scan.is_none_or(|at| at > now) {
            return;
        }
        s.next_scan = (s.writing > 0).then(|| now + SCAN_EVERY);
        let overdue: Vec<(Arc<str>, u64)> = s
            .ready
            .iter()
            .filter_map(|(c, w)| w.front().map(|f| (c, f)))
            .filter(|(_, f)| f.acked.is_none() && f.asked + STORE_TIMEOUT <= now)
            .map(|(c, f)| (c.clone(), f.offset))
            .collect();
        for (channel, offset) in overdue {
            self.persisted(now, &channel, offset, false, out);
        }
    }

    /// The stored channels' counts since the last call (also part of
    /// [`Router::take_cluster_stats`]).
    pub fn take_stored_stats(&mut self) -> StoredStats {
        self.stored
            .as_mut()
            .map(|s| std::mem::take(&mut s.stats))
            .unwrap_or_default()
    }
}

/// The set bits of `mask`.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let b = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            b
        })
    })
}
