//! Presence: who is in a channel and what each of them is doing, kept by
//! the channel's home shard for channels whose namespace enables presence.
//!
//! Each channel holds its members (client id → [`ClientInfo`] and an
//! optional state such as `typing`, which may expire) and a count of
//! distinct users kept exact per change. Changes are not pushed one by
//! one: they are recorded per client and coalesced, and the shard drains
//! them once per tick with [`Presence::take_events`], so a flapping
//! connection costs subscribers nothing.
//!
//! Coalescing, per channel and client, between two `take_events` calls:
//! - a join followed by its leave produces nothing;
//! - a leave followed by a re-join produces `Leave` then `Join` (the leave
//!   cleared the state and the new join may carry different info, so
//!   observers must see both; proving the pair a no-op is not worth it);
//! - several states produce only the last; a state followed by a leave
//!   produces only the `Leave` (a leave clears the state implicitly);
//! - a leave recorded without `emit` (join/leave pushes off, or too many
//!   members) by a client whose state observers may know produces
//!   `State("")` instead: with no `Leave` to imply it, a "typing" would
//!   otherwise stick (it may be redundant when the state was set and
//!   left within the tick);
//! - a client's events come out as `Leave` (or that `State("")`), `Join`,
//!   `State`, in that order; clients come out in the order they were
//!   first touched.
//!
//! Join and leave events are recorded only when the caller says `emit`
//! (it passes `join_leave && members <= join_leave_max_subscribers`);
//! state events are always recorded. A state with a TTL expires when
//! `now_ms >= set_at + ttl`: [`Presence::expire`] clears it and records a
//! `State("")` event, so "typing" never sticks after a client goes quiet.
//!
//! Time is an input (`now_ms`, a monotonic shard clock). Expiries sit in a
//! binary heap with lazy deletion: an overwritten or departed state leaves
//! its entry behind, recognised by a generation number. Stale entries are
//! popped as soon as they reach the top, so [`Presence::next_deadline`] is
//! exact, and the heap is compacted once it has doubled since the last
//! compaction, so a client refreshing its `typing` keeps it small.
//!
//! Memory: a channel is freed as soon as it has no members and no events
//! left to take (at the leave, or at the next `take_events`).

use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::engine::subs::ConnRef;
use crate::engine::wire::{ClientInfo, PresenceEntry};

/// A presence change, as join, leave and state pushes carry it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PresenceEvent {
    /// The client became a member.
    Join(ClientInfo),
    /// The client stopped being a member (its state went with it).
    Leave(ClientInfo),
    /// The client's state changed; an empty state means "cleared".
    State(ClientInfo, Arc<str>),
}

/// `set_state` named a client that is not a member of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPresent;

impl fmt::Display for NotPresent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client is not present in the channel")
    }
}

impl std::error::Error for NotPresent {}

/// A member's current state.
#[derive(Debug)]
struct State {
    /// Never empty: an empty state is stored as no state.
    value: Arc<str>,
    /// When it stops holding (`now_ms >= expires_at`), if it has a TTL.
    expires_at: Option<u64>,
    /// Matches the heap entry that expires this state (unique per set).
    generation: u64,
}

impl State {
    fn holds_at(&self, now_ms: u64) -> bool {
        self.expires_at.is_none_or(|at| now_ms < at)
    }
}

#[derive(Debug)]
struct Member {
    info: ClientInfo,
    state: Option<State>,
    origin: Option<Origin>,
}

/// Where a member's connection is, as the home's router names it: the
/// shard (or another node's address) it joined from, and the connection
/// there. Kept so the member can be written to a store and found again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The shard index, or a remote address (`engine::cluster::nodes`).
    pub from: usize,
    /// The connection on that shard.
    pub conn: ConnRef,
}

/// One member as [`Presence::member`] shows it.
#[derive(Debug, Clone, Copy)]
pub struct MemberView<'a> {
    /// Who it is.
    pub info: &'a ClientInfo,
    /// Its state and when that expires (`now_ms` clock), if it has one.
    pub state: Option<(&'a Arc<str>, Option<u64>)>,
    /// Where its connection is, if the join said.
    pub origin: Option<Origin>,
}

/// What one client did in a channel since the last `take_events`.
#[derive(Debug, Default)]
struct Pending {
    /// A `Leave` for the membership the client had when the tick began.
    leave: Option<ClientInfo>,
    /// That membership left without `emit` while observers may know a
    /// state for it: a `State("")` is owed unless a later state replaces it.
    cleared: Option<ClientInfo>,
    /// Emit a `Join` (with the member's current info).
    join: bool,
    /// The current membership began this tick: its leave cancels the join
    /// rather than emitting a `Leave`.
    joined_in_tick: bool,
    /// The last state set (empty: cleared) since the current membership
    /// began or the tick began.
    state: Option<Arc<str>>,
}

impl Pending {
    fn has_events(&self) -> bool {
        self.leave.is_some() || self.cleared.is_some() || self.join || self.state.is_some()
    }
}

#[derive(Debug)]
struct Channel {
    name: Arc<str>,
    members: HashMap<Arc<str>, Member>,
    /// Connections per user id (anonymous `""` is one user).
    users: HashMap<Arc<str>, u32>,
    /// Per-client records in the order clients were first touched.
    pending: Vec<(Arc<str>, Pending)>,
    /// Client id → index in `pending`.
    pending_index: HashMap<Arc<str>, usize>,
    /// How many `pending` records hold at least one event.
    with_events: usize,
    /// Listed in [`Presence::dirty`] since the last `take_events`.
    dirty: bool,
}

impl Channel {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            members: HashMap::new(),
            users: HashMap::new(),
            pending: Vec::new(),
            pending_index: HashMap::new(),
            with_events: 0,
            dirty: false,
        }
    }

    /// Applies `f` to `client`'s record for this tick. Returns true when
    /// the channel just became dirty (the caller lists it).
    fn record(&mut self, client: &Arc<str>, f: impl FnOnce(&mut Pending)) -> bool {
        let i = match self.pending_index.get(client) {
            Some(&i) => i,
            None => {
                let i = self.pending.len();
                self.pending.push((client.clone(), Pending::default()));
                self.pending_index.insert(client.clone(), i);
                i
            }
        };
        let p = &mut self.pending[i].1;
        let before = p.has_events();
        f(p);
        match (before, p.has_events()) {
            (false, true) => self.with_events += 1,
            (true, false) => self.with_events -= 1,
            _ => {}
        }
        !std::mem::replace(&mut self.dirty, true)
    }

    fn add_user(&mut self, user: &Arc<str>) {
        *self.users.entry(user.clone()).or_insert(0) += 1;
    }

    fn remove_user(&mut self, user: &str) {
        if let Some(n) = self.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(user);
            }
        }
    }

    /// No members and nothing left to emit: the channel can be freed.
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.with_events == 0
    }

    /// The coalesced events since the last call; clears the records.
    fn drain_events(&mut self, cleared: &Arc<str>) -> Vec<PresenceEvent> {
        let mut out = Vec::with_capacity(self.with_events);
        for (client, p) in self.pending.drain(..) {
            if let Some(info) = p.leave {
                out.push(PresenceEvent::Leave(info));
            }
            if let (Some(info), None) = (p.cleared, &p.state) {
                out.push(PresenceEvent::State(info, cleared.clone()));
            }
            // A pending join or state implies the client is still a member:
            // a leave clears both.
            let Some(m) = self.members.get(&client) else {
                continue;
            };
            if p.join {
                out.push(PresenceEvent::Join(m.info.clone()));
            }
            if let Some(state) = p.state {
                out.push(PresenceEvent::State(m.info.clone(), state));
            }
        }
        self.pending_index.clear();
        self.with_events = 0;
        self.dirty = false;
        out
    }
}

/// A heap entry: the state of `client` in `channel` set with `generation`
/// expires at `at`. Ordered by `(at, generation)`.
#[derive(Debug)]
struct Deadline {
    at: u64,
    generation: u64,
    channel: Arc<str>,
    client: Arc<str>,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.generation).cmp(&(other.at, other.generation))
    }
}

/// Whether `d` still expires a live state (not overwritten, cleared or
/// gone with its member or channel).
fn is_live(channels: &HashMap<Arc<str>, Channel>, d: &Deadline) -> bool {
    channels
        .get(&d.channel)
        .and_then(|c| c.members.get(&d.client))
        .and_then(|m| m.state.as_ref())
        .is_some_and(|s| s.generation == d.generation)
}

/// Heap size below which stale entries are left alone.
const COMPACT_MIN: usize = 64;

/// The presence of every channel a shard is home for (and that has
/// presence enabled).
#[derive(Debug)]
pub struct Presence {
    channels: HashMap<Arc<str>, Channel>,
    /// State expiries, earliest on top; the top is always live.
    deadlines: BinaryHeap<Reverse<Deadline>>,
    /// Compact `deadlines` when it grows past this.
    compact_above: usize,
    /// Last generation handed to a state.
    generation: u64,
    /// Channels with records since the last `take_events` (a name may
    /// appear twice if its channel was freed and created again).
    dirty: Vec<Arc<str>>,
    /// The empty state carried by expiry events (one allocation).
    cleared: Arc<str>,
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    /// No channels.
    pub fn new() -> Self {
        Self {
            channels: HashMap::new(),
            deadlines: BinaryHeap::new(),
            compact_above: COMPACT_MIN,
            generation: 0,
            dirty: Vec::new(),
            cleared: Arc::from(""),
        }
    }

    /// Adds `info.client` to `channel`. Returns false (and changes
    /// nothing) if it is already a member. `emit` records a `Join` event.
    pub fn join(&mut self, channel: &Arc<str>, info: ClientInfo, emit: bool) -> bool {
        self.join_from(channel, info, emit, None)
    }

    /// [`join`](Self::join), remembering where the connection is.
    pub fn join_from(
        &mut self,
        channel: &Arc<str>,
        info: ClientInfo,
        emit: bool,
        origin: Option<Origin>,
    ) -> bool {
        let Some(client) = self.insert_member(channel, info, origin) else {
            return false;
        };
        let ch = self.channels.get_mut(channel).expect("just inserted");
        let newly_dirty = ch.record(&client, |p| {
            p.joined_in_tick = true;
            p.join = emit;
        });
        if newly_dirty {
            self.dirty.push(channel.clone());
        }
        true
    }

    /// Adds a member without a state or an event; `None` if `info.client`
    /// is a member already.
    fn insert_member(
        &mut self,
        channel: &Arc<str>,
        info: ClientInfo,
        origin: Option<Origin>,
    ) -> Option<Arc<str>> {
        let ch = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| Channel::new(channel.clone()));
        if ch.members.contains_key(&info.client) {
            return None;
        }
        ch.add_user(&info.user);
        let client = info.client.clone();
        let member = Member {
            info,
            state: None,
            origin,
        };
        ch.members.insert(client.clone(), member);
        Some(client)
    }

    /// Removes `client` from `channel`, with its state. Returns its info,
    /// or `None` if it was not a member. `emit` records a `Leave` event
    /// (and no state event); without it, a client that had a state records
    /// `State("")` so the state does not stick for observers.
    pub fn leave(&mut self, channel: &str, client: &str, emit: bool) -> Option<ClientInfo> {
        let ch = self.channels.get_mut(channel)?;
        let (key, member) = ch.members.remove_entry(client)?;
        ch.remove_user(&member.info.user);
        let had_state = member.state.is_some();
        let had_deadline = member.state.is_some_and(|s| s.expires_at.is_some());
        let info = member.info;
        let newly_dirty = ch.record(&key, |p| {
            if p.joined_in_tick {
                // Joined this tick: the pair cancels out (a silent leave
                // of the earlier membership keeps its owed `State("")`).
                p.joined_in_tick = false;
                p.join = false;
            } else if emit {
                p.leave = Some(info.clone());
            } else if had_state || p.state.is_some() {
                p.cleared = Some(info.clone());
            }
            p.state = None;
        });
        if newly_dirty {
            self.dirty.push(ch.name.clone());
        }
        if ch.is_idle() {
            self.channels.remove(channel);
        }
        if had_deadline {
            self.settle();
        }
        Some(info)
    }

    /// Sets `client`'s state in `channel`; an empty `state` clears it.
    /// With `ttl_ms` the state expires at `now_ms + ttl_ms`. Always
    /// records a `State` event.
    pub fn set_state(
        &mut self,
        channel: &str,
        client: &str,
        state: Arc<str>,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), NotPresent> {
        let ch = self.channels.get_mut(channel).ok_or(NotPresent)?;
        let member = ch.members.get_mut(client).ok_or(NotPresent)?;
        let replaced_deadline = member
            .state
            .as_ref()
            .is_some_and(|s| s.expires_at.is_some());
        let key = member.info.client.clone();
        if state.is_empty() {
            member.state = None;
        } else {
            self.generation += 1;
            let expires_at = ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
            member.state = Some(State {
                value: state.clone(),
                expires_at,
                generation: self.generation,
            });
            if let Some(at) = expires_at {
                self.deadlines.push(Reverse(Deadline {
                    at,
                    generation: self.generation,
                    channel: ch.name.clone(),
                    client: key.clone(),
                }));
            }
        }
        if ch.record(&key, |p| p.state = Some(state)) {
            self.dirty.push(ch.name.clone());
        }
        if replaced_deadline {
            self.settle();
        }
        self.maybe_compact();
        Ok(())
    }

    /// Clears every state whose expiry is at or before `now_ms`, recording
    /// a `State("")` event for each. Returns how many expired.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut expired = 0;
        while let Some(top) = self.deadlines.peek_mut() {
            if top.0.at > now_ms {
                break;
            }
            let Reverse(d) = PeekMut::pop(top);
            let Some(ch) = self.channels.get_mut(&d.channel) else {
                continue;
            };
            let Some(m) = ch.members.get_mut(&d.client) else {
                continue;
            };
            if m.state
                .as_ref()
                .is_none_or(|s| s.generation != d.generation)
            {
                continue;
            }
            m.state = None;
            expired += 1;
            let cleared = self.cleared.clone();
            if ch.record(&d.client, |p| p.state = Some(cleared)) {
                self.dirty.push(d.channel);
            }
        }
        self.settle();
        expired
    }

    /// The earliest instant a state expires, if any state has a TTL: call
    /// [`expire`](Self::expire) then.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.peek().map(|Reverse(d)| d.at)
    }

    /// Drains the coalesced events recorded since the last call, per
    /// channel (channels with nothing to say are left out), and frees
    /// channels left without members.
    pub fn take_events(&mut self) -> Vec<(Arc<str>, Vec<PresenceEvent>)> {
        let mut out = Vec::new();
        for name in self.dirty.drain(..) {
            let Some(ch) = self.channels.get_mut(&name) else {
                continue;
            };
            if !ch.dirty {
                continue;
            }
            let events = ch.drain_events(&self.cleared);
            if ch.members.is_empty() {
                self.channels.remove(&name);
            }
            if !events.is_empty() {
                out.push((name, events));
            }
        }
        out
    }

    /// Puts back a member read from a store (the channel moved here):
    /// with its state, expiring at `state_expires` (`now_ms` clock), and
    /// no event (observers knew it already). Returns false (and changes
    /// nothing) if it is already a member.
    pub fn restore(
        &mut self,
        channel: &Arc<str>,
        info: ClientInfo,
        origin: Origin,
        state: Option<(Arc<str>, Option<u64>)>,
    ) -> bool {
        let Some(client) = self.insert_member(channel, info, Some(origin)) else {
            return false;
        };
        let Some((value, expires_at)) = state.filter(|(v, _)| !v.is_empty()) else {
            return true;
        };
        self.generation += 1;
        if let Some(at) = expires_at {
            self.deadlines.push(Reverse(Deadline {
                at,
                generation: self.generation,
                channel: channel.clone(),
                client: client.clone(),
            }));
        }
        let member = self
            .channels
            .get_mut(channel)
            .and_then(|ch| ch.members.get_mut(&client))
            .expect("just inserted");
        member.state = Some(State {
            value,
            expires_at,
            generation: self.generation,
        });
        true
    }

    /// One member of `channel`.
    pub fn member(&self, channel: &str, client: &str) -> Option<MemberView<'_>> {
        let m = self.channels.get(channel)?.members.get(client)?;
        Some(MemberView {
            info: &m.info,
            state: m.state.as_ref().map(|s| (&s.value, s.expires_at)),
            origin: m.origin,
        })
    }

    /// The client ids of `channel`'s members, in no particular order.
    pub fn clients(&self, channel: &str) -> Vec<Arc<str>> {
        self.channels
            .get(channel)
            .map(|c| c.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The members of `channel` and their states, in no particular order.
    /// A state past its expiry at `now_ms` is left out even if
    /// [`expire`](Self::expire) has not run yet.
    pub fn snapshot(&self, channel: &str, now_ms: u64) -> Vec<PresenceEntry> {
        let Some(ch) = self.channels.get(channel) else {
            return Vec::new();
        };
        ch.members
            .values()
            .map(|m| PresenceEntry {
                info: m.info.clone(),
                state: m
                    .state
                    .as_ref()
                    .filter(|s| s.holds_at(now_ms))
                    .map(|s| s.value.clone()),
            })
            .collect()
    }

    /// `(num_clients, num_users)` of `channel`; an anonymous user counts
    /// once however many connections it has.
    pub fn stats(&self, channel: &str) -> (usize, usize) {
        self.channels
            .get(channel)
            .map_or((0, 0), |c| (c.members.len(), c.users.len()))
    }

    /// Number of clients in `channel` (what decides `emit` against
    /// `join_leave_max_subscribers`).
    pub fn members(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |c| c.members.len())
    }

    /// Forgets `channel`, its members and any events not yet taken (no
    /// leave events: used when nobody is left to tell). Returns whether
    /// it was held.
    pub fn remove_channel(&mut self, channel: &str) -> bool {
        let removed = self.channels.remove(channel).is_some();
        if removed {
            self.settle();
        }
        removed
    }

    /// Channels held (with members, or with events not yet taken).
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether no channel is held.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Pops stale entries off the top of the heap, so the top is live.
    fn settle(&mut self) {
        while let Some(top) = self.deadlines.peek_mut() {
            if is_live(&self.channels, &top.0) {
                break;
            }
            PeekMut::pop(top);
        }
    }

    /// Drops every stale entry once the heap has grown to twice its size
    /// after the last compaction: amortised O(1) per push, and memory
    /// bounded when a client keeps refreshing a TTL state.
    fn maybe_compact(&mut self) {
        if self.deadlines.len() <= self.compact_above {
            return;
        }
        let channels = &self.channels;
        self.deadlines.retain(|Reverse(d)| is_live(channels, d));
        self.compact_above = (2 * self.deadlines.len()).max(COMPACT_MIN);
    }
}

#[cfg(test)]
mod tests;
