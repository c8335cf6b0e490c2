//! A shard's local subscription table: which of its connections listen to
//! which channel, and where each channel's stream stands on this shard.
//!
//! Both directions are kept, with positions, so that removing any one
//! subscription is O(1) (swap-remove plus one fix-up) even in a channel
//! with a million subscribers, and closing a connection costs only its own
//! subscriptions.
//!
//! The first local subscriber of a channel makes the shard ask the
//! channel's home for deliveries (*interest*). Until the home answers with
//! the channel's position, the channel is *pending* and subscribers wait;
//! deliveries that arrive meanwhile are older than that position and are
//! ignored. Afterwards every delivery must carry the next offset; a jump
//! means this shard lost messages (a full queue) and the channel's
//! subscribers must be told to recover.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use crate::engine::codes::ErrorCode;
use crate::engine::hub::Position;

/// A connection slot and its generation (slots are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConnRef {
    /// Slot index in the shard's connection table.
    pub idx: u32,
    /// Generation of the slot's occupant.
    pub generation: u32,
}

/// One subscriber of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber {
    /// The connection.
    pub conn: ConnRef,
    /// Index of this subscription in the connection's own list.
    k: u32,
}

const PENDING: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct SubEntry {
    chan: u32,
    /// Index in the channel's `subs`, or `PENDING` while waiting.
    pos: u32,
}

#[derive(Debug)]
enum ChanState {
    Pending { waiters: Vec<(ConnRef, u32)> },
    Active(Position),
}

#[derive(Debug)]
struct LocalChannel {
    name: Arc<str>,
    state: ChanState,
    subs: Vec<Subscriber>,
    /// Recoveries in flight: a recovering subscriber joins only when its
    /// home answers, and until then it holds the channel (and the shard's
    /// interest) as a subscriber would.
    holds: u32,
}

/// What `subscribe` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscribed {
    /// Subscribed; reply with this position now.
    Now(Position),
    /// Waiting for the home's answer, already requested.
    Waiting,
    /// Waiting; the caller must send an interest request for this channel
    /// to its home.
    NeedInterest(Arc<str>),
}

/// What a delivery should reach.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// Not listening (yet): drop it.
    Ignore,
    /// The next publication: send it to these subscribers.
    Deliver(&'a [Subscriber]),
    /// Offsets jumped: these subscribers missed publications.
    Gap(&'a [Subscriber]),
}

/// What an interest acknowledgement did.
#[derive(Debug, PartialEq, Eq)]
pub enum Acked {
    /// The channel is now active; reply to the waiters collected.
    Active,
    /// Everyone left while waiting: send interest-off to the home.
    Release(Arc<str>),
    /// No such pending channel (a stale answer): ignore.
    Unknown,
}

/// The shard-local subscription table.
#[derive(Debug)]
pub struct Subscriptions {
    names: HashMap<Arc<str>, u32>,
    chans: Slab<LocalChannel>,
    /// Per connection slot: its subscriptions.
    conns: Vec<Vec<SubEntry>>,
    max_per_conn: usize,
}

impl Subscriptions {
    /// An empty table; a connection may hold at most `max_per_conn`
    /// subscriptions.
    pub fn new(max_per_conn: usize) -> Self {
        Self::with_capacity(max_per_conn, 0)
    }

    /// An empty table with room for `conns` connection slots.
    pub fn with_capacity(max_per_conn: usize, conns: usize) -> Self {
        Self {
            names: HashMap::new(),
            chans: Slab::new(),
            conns: Vec::with_capacity(conns),
            max_per_conn,
        }
    }

    fn conn_list(&mut self, conn: ConnRef) -> &mut Vec<SubEntry> {
        let i = conn.idx as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, Vec::new);
        }
        &mut self.conns[i]
    }

    fn find(&self, conn: ConnRef, chan: u32) -> Option<usize> {
        self.conns
            .get(conn.idx as usize)?
            .iter()
            .position(|e| e.chan == chan)
    }

    /// Subscribes `conn` to channel `name` for command `cmd_id`.
    pub fn subscribe(
        &mut self,
        conn: ConnRef,
        name: &str,
        cmd_id: u32,
    ) -> Result<Subscribed, ErrorCode> {
        let existing = self.names.get(name).copied();
        if let Some(ci) = existing
            && self.find(conn, ci).is_some()
        {
            return Err(ErrorCode::AlreadySubscribed);
        }
        if self.conns.get(conn.idx as usize).map_or(0, Vec::len) >= self.max_per_conn {
            return Err(ErrorCode::LimitExceeded);
        }
        let (ci, outcome) = match existing {
            Some(ci) => {
                let ch = &mut self.chans[ci as usize];
                match &mut ch.state {
                    ChanState::Pending { waiters } => {
                        waiters.push((conn, cmd_id));
                        (ci, Subscribed::Waiting)
                    }
                    ChanState::Active(pos) => (ci, Subscribed::Now(*pos)),
                }
            }
            None => {
                let name: Arc<str> = name.into();
                let ci = self.chans.insert(LocalChannel {
                    name: name.clone(),
                    state: ChanState::Pending {
                        waiters: vec![(conn, cmd_id)],
                    },
                    subs: Vec::new(),
                    holds: 0,
                }) as u32;
                self.names.insert(name.clone(), ci);
                (ci, Subscribed::NeedInterest(name))
            }
        };
        let k = self.conn_list(conn).len() as u32;
        let pos = if let Subscribed::Now(_) = outcome {
            let ch = &mut self.chans[ci as usize];
            ch.subs.push(Subscriber { conn, k });
            (ch.subs.len() - 1) as u32
        } else {
            PENDING
        };
        self.conn_list(conn).push(SubEntry { chan: ci, pos });
        Ok(outcome)
    }

    /// Removes subscription number `k` of `conn` (both sides). Returns the
    /// channel name if the channel became empty and active, so the caller
    /// tells the home it is no longer interested.
    fn remove_entry(&mut self, conn: ConnRef, k: usize) -> Option<Arc<str>> {
        let list = &mut self.conns[conn.idx as usize];
        let e = list.swap_remove(k);
        if let Some(moved) = list.get(k).copied()
            && moved.pos != PENDING
        {
            self.chans[moved.chan as usize].subs[moved.pos as usize].k = k as u32;
        }
        let ch = &mut self.chans[e.chan as usize];
        if e.pos == PENDING {
            if let ChanState::Pending { waiters } = &mut ch.state
                && let Some(i) = waiters.iter().position(|(c, _)| *c == conn)
            {
                waiters.swap_remove(i);
            }
            // An empty pending channel stays until the home answers.
            return None;
        }
        let pos = e.pos as usize;
        ch.subs.swap_remove(pos);
        if let Some(moved) = ch.subs.get(pos).copied() {
            self.conns[moved.conn.idx as usize][moved.k as usize].pos = pos as u32;
        }
        if ch.subs.is_empty() && ch.holds == 0 {
            let ch = self.chans.remove(e.chan as usize);
            self.names.remove(&ch.name);
            return Some(ch.name);
        }
        None
    }

    /// Unsubscribes `conn` from `name`. `Ok(Some(name))`: the channel has no
    /// local subscriber left; send interest-off to its home.
    pub fn unsubscribe(
        &mut self,
        conn: ConnRef,
        name: &str,
    ) -> Result<Option<Arc<str>>, ErrorCode> {
        let ci = *self.names.get(name).ok_or(ErrorCode::NotSubscribed)?;
        let k = self.find(conn, ci).ok_or(ErrorCode::NotSubscribed)?;
        Ok(self.remove_entry(conn, k))
    }

    /// Removes every subscription of a closing connection, appending the
    /// channels that lost their last local subscriber to `released`.
    pub fn remove_conn(&mut self, conn: ConnRef, released: &mut Vec<Arc<str>>) {
        let Some(list) = self.conns.get(conn.idx as usize) else {
            return;
        };
        for k in (0..list.len()).rev() {
            if let Some(name) = self.remove_entry(conn, k) {
                released.push(name);
            }
        }
        self.conns[conn.idx as usize] = Vec::new();
    }

    /// Subscriptions one connection may hold.
    pub fn max_per_conn(&self) -> usize {
        self.max_per_conn
    }

    /// Number of subscriptions `conn` holds (pending ones included).
    pub fn count(&self, conn: ConnRef) -> usize {
        self.conns.get(conn.idx as usize).map_or(0, Vec::len)
    }

    /// The home answered an interest request: the channel is active from
    /// `pos`. Waiters become subscribers and are appended to `replies`.
    pub fn on_interest_ack(
        &mut self,
        name: &str,
        pos: Position,
        replies: &mut Vec<(ConnRef, u32)>,
    ) -> Acked {
        let Some(&ci) = self.names.get(name) else {
            return Acked::Unknown;
        };
        let ch = &mut self.chans[ci as usize];
        let waiters = match &mut ch.state {
            ChanState::Pending { waiters } => std::mem::take(waiters),
            ChanState::Active(_) => return Acked::Unknown,
        };
        if waiters.is_empty() && ch.holds == 0 {
            let ch = self.chans.remove(ci as usize);
            self.names.remove(&ch.name);
            return Acked::Release(ch.name);
        }
        ch.state = ChanState::Active(pos);
        for (conn, cmd_id) in waiters {
            let k = self
                .find(conn, ci)
                .expect("waiter is listed on its connection");
            let ch = &mut self.chans[ci as usize];
            ch.subs.push(Subscriber { conn, k: k as u32 });
            self.conns[conn.idx as usize][k].pos = (ch.subs.len() - 1) as u32;
            replies.push((conn, cmd_id));
        }
        Acked::Active
    }

    /// Holds channel `name` for a recovery in flight. `Some(name)`: the
    /// channel is new here; send interest to its home.
    pub fn hold(&mut self, name: &str) -> Option<Arc<str>> {
        if let Some(&ci) = self.names.get(name) {
            self.chans[ci as usize].holds += 1;
            return None;
        }
        let name: Arc<str> = name.into();
        let ci = self.chans.insert(LocalChannel {
            name: name.clone(),
            state: ChanState::Pending {
                waiters: Vec::new(),
            },
            subs: Vec::new(),
            holds: 1,
        }) as u32;
        self.names.insert(name.clone(), ci);
        Some(name)
    }

    /// Releases a hold. `Some(name)`: nothing keeps the channel any more;
    /// send interest-off to its home.
    pub fn unhold(&mut self, name: &str) -> Option<Arc<str>> {
        let ci = *self.names.get(name)?;
        let ch = &mut self.chans[ci as usize];
        ch.holds = ch.holds.saturating_sub(1);
        if ch.holds == 0 && ch.subs.is_empty() && matches!(ch.state, ChanState::Active(_)) {
            let ch = self.chans.remove(ci as usize);
            self.names.remove(&ch.name);
            return Some(ch.name);
        }
        None
    }

    /// Whether `conn` is subscribed to `name` (or waiting for it).
    pub fn is_subscribed(&self, conn: ConnRef, name: &str) -> bool {
        self.names
            .get(name)
            .is_some_and(|&ci| self.find(conn, ci).is_some())
    }

    /// The channels `conn` is subscribed to (or waiting for).
    pub fn channels_of(&self, conn: ConnRef) -> impl Iterator<Item = &Arc<str>> {
        self.conns
            .get(conn.idx as usize)
            .into_iter()
            .flatten()
            .map(|e| &self.chans[e.chan as usize].name)
    }

    /// The interest request could not be sent: forget the pending channel
    /// and hand back its waiters (they get an error reply).
    pub fn on_interest_failed(&mut self, name: &str, failed: &mut Vec<(ConnRef, u32)>) {
        let Some(&ci) = self.names.get(name) else {
            return;
        };
        let ChanState::Pending { waiters } = &mut self.chans[ci as usize].state else {
            return;
        };
        let waiters = std::mem::take(waiters);
        for &(conn, _) in &waiters {
            if let Some(k) = self.find(conn, ci) {
                let list = &mut self.conns[conn.idx as usize];
                list.swap_remove(k);
                if let Some(moved) = list.get(k).copied()
                    && moved.pos != PENDING
                {
                    self.chans[moved.chan as usize].subs[moved.pos as usize].k = k as u32;
                }
            }
        }
        let ch = self.chans.remove(ci as usize);
        self.names.remove(&ch.name);
        failed.extend(waiters);
    }

    /// A publication with `offset` arrived from the channel's home.
    pub fn deliver(&mut self, name: &str, offset: u64) -> Delivery<'_> {
        let Some(&ci) = self.names.get(name) else {
            return Delivery::Ignore;
        };
        let ch = &mut self.chans[ci as usize];
        match &mut ch.state {
            ChanState::Pending { .. } => Delivery::Ignore,
            ChanState::Active(pos) if offset <= pos.offset => Delivery::Ignore,
            ChanState::Active(pos) => {
                let gap = offset != pos.offset + 1;
                pos.offset = offset;
                if gap {
                    Delivery::Gap(&ch.subs)
                } else {
                    Delivery::Deliver(&ch.subs)
                }
            }
        }
    }

    /// The channel's current local position, if active.
    pub fn position(&self, name: &str) -> Option<Position> {
        let ci = *self.names.get(name)?;
        match self.chans[ci as usize].state {
            ChanState::Active(p) => Some(p),
            ChanState::Pending { .. } => None,
        }
    }

    /// Subscribers of a channel (empty if unknown or pending).
    pub fn subscribers(&self, name: &str) -> &[Subscriber] {
        self.names
            .get(name)
            .map_or(&[], |&ci| &self.chans[ci as usize].subs)
    }

    /// Every active channel with its number of local subscribers.
    pub fn channels(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.chans
            .iter()
            .filter(|(_, ch)| matches!(ch.state, ChanState::Active(_)))
            .map(|(_, ch)| (&ch.name, ch.subs.len()))
    }

    /// Channels with local subscribers or waiters.
    pub fn channel_count(&self) -> usize {
        self.chans.len()
    }

    /// Checks both directions agree (tests and debug builds).
    #[cfg(test)]
    fn check(&self) {
        for (ci, ch) in &self.chans {
            for (pos, s) in ch.subs.iter().enumerate() {
                let e = self.conns[s.conn.idx as usize][s.k as usize];
                assert_eq!(e.chan as usize, ci);
                assert_eq!(e.pos as usize, pos);
            }
        }
        for list in &self.conns {
            for e in list {
                let ch = &self.chans[e.chan as usize];
                if e.pos != PENDING {
                    assert!(ch.subs.len() > e.pos as usize);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(i: u32) -> ConnRef {
        ConnRef {
            idx: i,
            generation: 1,
        }
    }

    const P: Position = Position {
        epoch: 9,
        offset: 4,
    };

    #[test]
    fn first_subscriber_asks_home_then_others_wait_or_join() {
        let mut s = Subscriptions::new(10);
        assert_eq!(
            s.subscribe(c(1), "a", 11),
            Ok(Subscribed::NeedInterest("a".into()))
        );
        assert_eq!(s.subscribe(c(2), "a", 12), Ok(Subscribed::Waiting));
        assert_eq!(
            s.subscribe(c(1), "a", 13),
            Err(ErrorCode::AlreadySubscribed)
        );
        assert_eq!(
            s.deliver("a", 4),
            Delivery::Ignore,
            "pending ignores older pubs"
        );
        let mut replies = Vec::new();
        assert_eq!(s.on_interest_ack("a", P, &mut replies), Acked::Active);
        assert_eq!(replies, vec![(c(1), 11), (c(2), 12)]);
        assert_eq!(s.subscribe(c(3), "a", 14), Ok(Subscribed::Now(P)));
        match s.deliver("a", 5) {
            Delivery::Deliver(subs) => assert_eq!(subs.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.position("a").unwrap().offset, 5);
        s.check();
    }

    #[test]
    fn gap_is_reported() {
        let mut s = Subscriptions::new(10);
        s.subscribe(c(1), "a", 1).unwrap();
        s.on_interest_ack("a", P, &mut Vec::new());
        assert!(matches!(s.deliver("a", 5), Delivery::Deliver(_)));
        assert!(matches!(s.deliver("a", 7), Delivery::Gap(_)));
        assert!(matches!(s.deliver("a", 8), Delivery::Deliver(_)));
        assert_eq!(s.deliver("a", 8), Delivery::Ignore);
    }

    #[test]
    fn unsubscribe_and_close_release_channels() {
        let mut s = Subscriptions::new(10);
        for i in 0..50 {
            s.subscribe(c(i), "x", 0).unwrap();
            s.subscribe(c(i), &format!("own{i}"), 0).unwrap();
        }
        let mut acks = Vec::new();
        s.on_interest_ack("x", P, &mut acks);
        for i in 0..50 {
            s.on_interest_ack(&format!("own{i}"), P, &mut acks);
        }
        s.check();
        assert_eq!(s.unsubscribe(c(7), "x"), Ok(None));
        assert_eq!(s.unsubscribe(c(7), "x"), Err(ErrorCode::NotSubscribed));
        assert_eq!(s.unsubscribe(c(7), "own7"), Ok(Some("own7".into())));
        s.check();
        let mut released = Vec::new();
        for i in (0..50).filter(|&i| i != 7) {
            s.remove_conn(c(i), &mut released);
            s.check();
        }
        released.sort();
        assert_eq!(released.len(), 50, "49 own channels and x");
        assert!(released.contains(&"x".into()));
        assert_eq!(s.channel_count(), 0);
    }

    #[test]
    fn everyone_leaves_while_pending() {
        let mut s = Subscriptions::new(10);
        s.subscribe(c(1), "a", 1).unwrap();
        assert_eq!(s.unsubscribe(c(1), "a"), Ok(None));
        let mut replies = Vec::new();
        assert_eq!(
            s.on_interest_ack("a", P, &mut replies),
            Acked::Release("a".into())
        );
        assert!(replies.is_empty());
        assert_eq!(s.on_interest_ack("a", P, &mut replies), Acked::Unknown);
    }

    #[test]
    fn a_hold_keeps_the_channel_and_interest() {
        let mut s = Subscriptions::new(10);
        assert_eq!(s.hold("a"), Some("a".into()));
        let mut replies = Vec::new();
        // No waiter, but held: the ack activates instead of releasing.
        assert_eq!(s.on_interest_ack("a", P, &mut replies), Acked::Active);
        assert_eq!(s.subscribe(c(1), "a", 1), Ok(Subscribed::Now(P)));
        assert_eq!(s.hold("a"), None);
        assert_eq!(s.unsubscribe(c(1), "a"), Ok(None), "still held twice");
        assert_eq!(s.unhold("a"), None);
        assert_eq!(s.unhold("a"), Some("a".into()));
        assert_eq!(s.channel_count(), 0);
        assert_eq!(s.unhold("a"), None, "unknown channel: nothing to do");
        s.check();
    }

    #[test]
    fn limit_and_failed_interest() {
        let mut s = Subscriptions::new(2);
        s.subscribe(c(1), "a", 1).unwrap();
        s.subscribe(c(1), "b", 2).unwrap();
        assert_eq!(s.subscribe(c(1), "c", 3), Err(ErrorCode::LimitExceeded));
        let mut failed = Vec::new();
        s.on_interest_failed("a", &mut failed);
        assert_eq!(failed, vec![(c(1), 1)]);
        assert_eq!(s.count(c(1)), 1);
        s.subscribe(c(1), "c", 3).unwrap();
        s.check();
    }
}
