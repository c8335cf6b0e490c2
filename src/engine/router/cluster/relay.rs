//! The relay's side of a cluster channel: the node's interest (a sync
//! marker from the home, re-asked when the live set changes), deliveries
//! from the channel's subject checked for epoch and offsets, subscribe
//! answers held until the deliveries sent before them arrive, and the
//! moves of a channel's home (a relay re-pointed, turned into the home, or
//! a home turned into a relay). The model is in the parent module's doc.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::*;

impl Router {
    pub(in crate::engine::router) fn relay_interest(
        &mut self,
        now: Instant,
        channel: Arc<str>,
        home: Arc<str>,
        from: usize,
        on: bool,
        out: &mut impl Output,
    ) {
        let id = self.id;
        let c = self.cluster.as_mut().expect("relaying in a cluster");
        if !on {
            let Some(r) = c.relays.get_mut(&channel) else {
                return;
            };
            r.mask &= !bit(from);
            r.waiting &= !bit(from);
            if r.mask == 0 && r.waiting == 0 {
                self.drop_relay(now, &channel, false, out);
            }
            return;
        }
        let Some(slot) = c.view.nodes.slot(&home) else {
            return self.interest_failed(now, &channel, bit(from), out);
        };
        let timeout = c.view.request_timeout;
        let link_up = c.link_up;
        let created = !c.relays.contains_key(&channel);
        let r = c.relays.entry(channel.clone()).or_insert_with(|| Relay {
            home,
            slot,
            mask: 0,
            waiting: 0,
            position: None,
            deadline: Some(now + timeout),
            recent: VecDeque::new(),
            confirming: 0,
            held: Vec::new(),
        });
        match r.position {
            Some(p) => {
                r.mask |= bit(from);
                let ack = Msg::InterestAck {
                    channel,
                    position: p,
                };
                let _ = self.dispatch(now, from, ack, out);
            }
            None => {
                r.waiting |= bit(from);
                if created {
                    out.watch(&channel, true);
                    let asked = link_up && self.ask_marker(&channel, slot, id, out);
                    if !asked {
                        self.drop_relay(now, &channel, false, out);
                    }
                }
            }
        }
    }

    /// Sends the home node this relay's interest (its answer: a marker).
    pub(in crate::engine::router) fn ask_marker(
        &mut self,
        channel: &Arc<str>,
        slot: u32,
        id: usize,
        out: &mut impl Output,
    ) -> bool {
        let msg = Msg::Interest {
            channel: channel.clone(),
            from: id,
            on: true,
        };
        out.send_remote(remote_addr(slot, HOME_SHARD), channel, msg)
            .is_ok()
    }

    /// Whether `channel`'s subscribers can follow it to a new home without
    /// recovering: its history is in JetStream (the new home continues
    /// the same epoch from the stream) and its members, if it counts them,
    /// are in the presence bucket (the new home reads them back). Stories
    /// do not follow: a story's editors join its new home again.
    pub(in crate::engine::router) fn follows_its_home(&self, channel: &str) -> bool {
        self.is_stored(channel)
            && self
                .options(channel)
                .is_ok_and(|o| o.collab.is_none() && (!o.counts_members() || self.mirrors(channel)))
    }

    /// The new home of `channel`, if it is another node this relay can
    /// reach now and the channel's subscribers can follow it there.
    pub(in crate::engine::router) fn new_remote_home(
        &self,
        channel: &str,
    ) -> Option<(Arc<str>, u32)> {
        let c = self.cluster.as_ref()?;
        if !c.link_up || !self.follows_its_home(channel) {
            return None;
        }
        let home = c.remote_home(channel)?.clone();
        let slot = c.view.nodes.slot(&home)?;
        Some((home, slot))
    }

    /// The home of a relayed channel moved to another node: the relay
    /// keeps its subscribers and position and asks the new home for a
    /// marker (sent by [`Router::resync_relays`]), which shows whether
    /// anything was missed. `false` if the channel cannot follow (then
    /// the caller makes its subscribers recover).
    pub(in crate::engine::router) fn repoint_relay(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
    ) -> bool {
        let Some((home, slot)) = self.new_remote_home(channel) else {
            return false;
        };
        let c = self.cluster.as_mut().expect("relaying in a cluster");
        let timeout = c.view.request_timeout;
        let Some(r) = c.relays.get_mut(channel) else {
            return false;
        };
        if r.position.is_none() {
            return false;
        }
        r.home = home;
        r.slot = slot;
        r.deadline = Some(now + timeout);
        r.confirming = 1;
        true
    }

    /// The home of a relayed channel moved to this node: when its
    /// subscribers can follow it, the shard becomes its home at their
    /// position and reads the stored tail back
    /// ([`Router::take_stored_home`]). `false` if they must recover.
    pub(in crate::engine::router) fn relay_to_home(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        out: &mut impl Output,
    ) -> bool {
        let Some(c) = self.cluster.as_ref() else {
            return false;
        };
        let ready = c.link_up
            && c.relays
                .get(channel)
                .is_some_and(|r| r.position.is_some() && r.waiting == 0);
        if !ready || !self.follows_its_home(channel) {
            return false;
        }
        let c = self.cluster.as_mut().expect("checked above");
        let r = c.relays.remove(channel).expect("checked above");
        out.watch(channel, false);
        let position = r.position.expect("checked above");
        self.take_stored_home(now, channel, position, r.mask, out);
        true
    }

    /// This shard stopped being `channel`'s home for another node: when
    /// the channel's subscribers here can follow it, the shard becomes its
    /// relay at the position they have (confirmed by the new home's
    /// marker, as for a moved relay). `false` if they must recover.
    pub(in crate::engine::router) fn relay_instead(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        mask: u64,
        position: Position,
        out: &mut impl Output,
    ) -> bool {
        let Some((home, slot)) = self.new_remote_home(channel) else {
            return false;
        };
        let c = self.cluster.as_mut().expect("in a cluster");
        let timeout = c.view.request_timeout;
        c.relays.insert(
            channel.clone(),
            Relay {
                home,
                slot,
                mask,
                waiting: 0,
                position: Some(position),
                deadline: Some(now + timeout),
                recent: VecDeque::new(),
                confirming: 1,
                held: Vec::new(),
            },
        );
        out.watch(channel, true);
        true
    }

    /// Every relay asks its home for a marker again (after a reconnect or
    /// a change of the live set).
    pub(in crate::engine::router) fn resync_relays(&mut self, now: Instant, out: &mut impl Output) {
        let id = self.id;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if !c.link_up {
            return;
        }
        let timeout = c.view.request_timeout;
        let list: Vec<(Arc<str>, u32)> = c
            .relays
            .iter_mut()
            .map(|(ch, r)| {
                if r.position.is_none() {
                    r.deadline = Some(now + timeout);
                }
                (ch.clone(), r.slot)
            })
            .collect();
        for (ch, slot) in list {
            self.ask_marker(&ch, slot, id, out);
        }
    }

    /// Stops relaying `channel`: the waiting shards' interest fails, and
    /// when `recover`, its subscribers here recover (their home moved).
    pub(in crate::engine::router) fn drop_relay(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        recover: bool,
        out: &mut impl Output,
    ) {
        let id = self.id;
        self.release_held(now, channel, true, out);
        let c = self.cluster.as_mut().expect("relaying in a cluster");
        let Some(r) = c.relays.remove(channel) else {
            return;
        };
        out.watch(channel, false);
        if !recover && c.link_up {
            let msg = Msg::Interest {
                channel: channel.clone(),
                from: id,
                on: false,
            };
            let _ = out.send_remote(remote_addr(r.slot, HOME_SHARD), channel, msg);
        }
        if recover && r.mask != 0 {
            c.stats.resyncs += 1;
        }
        self.interest_failed(now, channel, r.waiting, out);
        if recover {
            self.tell_lost(now, channel, r.mask, out);
        }
    }

    /// Hands on the held subscribe answers of `channel`'s relay that its
    /// position has reached (or, `all`, every one: its time is up or the
    /// relay is going), each extended with what overtook it.
    pub(in crate::engine::router) fn release_held(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        all: bool,
        out: &mut impl Output,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(r) = c.relays.get_mut(channel) else {
            return;
        };
        if r.held.is_empty() {
            return;
        }
        let at = r.position;
        let (ready, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut r.held)
                .into_iter()
                .partition(|(until, _, msg)| {
                    all || *until <= now
                        || !matches!(msg, Msg::Subscribed { position, .. } if behind(at, *position))
                });
        r.held = wait;
        let ready: Vec<(usize, Msg)> = ready
            .into_iter()
            .map(|(_, to, msg)| (to, caught_up(r, msg)))
            .collect();
        for (to, msg) in ready {
            let _ = self.dispatch(now, to, msg, out);
        }
    }

    /// Sends the message `make` builds to each shard in `mask`.
    pub(in crate::engine::router) fn send_each(
        &mut self,
        now: Instant,
        mut mask: u64,
        make: impl Fn() -> Msg,
        out: &mut impl Output,
    ) {
        while mask != 0 {
            let shard = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let _ = self.dispatch(now, shard, make(), out);
        }
    }

    pub(in crate::engine::router) fn interest_failed(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        mask: u64,
        out: &mut impl Output,
    ) {
        let make = || Msg::InterestFailed {
            channel: channel.clone(),
        };
        self.send_each(now, mask, make, out);
    }

    /// Tells the shards in `mask` that their subscribers of `channel` must
    /// recover.
    pub(in crate::engine::router) fn tell_lost(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        mask: u64,
        out: &mut impl Output,
    ) {
        let make = || Msg::Lost {
            channel: channel.clone(),
        };
        self.send_each(now, mask, make, out);
    }

    pub(in crate::engine::router) fn relay_marker(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        p: Position,
        out: &mut impl Output,
    ) {
        let c = self.cluster.as_mut().expect("relaying in a cluster");
        let Some(r) = c.relays.get_mut(channel) else {
            return;
        };
        match r.position {
            None => {
                r.position = Some(p);
                r.deadline = None;
                let waiting = std::mem::take(&mut r.waiting);
                r.mask |= waiting;
                let ack = || Msg::InterestAck {
                    channel: channel.clone(),
                    position: p,
                };
                self.send_each(now, waiting, ack, out);
            }
            // A new home behind the position its subscribers have would
            // number its next publications as ones they already saw.
            Some(at)
                if at.epoch != p.epoch
                    || at.offset < p.offset
                    || (r.confirming > 0 && at.offset > p.offset) =>
            {
                // Deliveries were lost (or the home restarted): the node's
                // subscribers recover from the home, starting over here.
                r.position = Some(p);
                r.confirming = 0;
                r.deadline = None;
                let mask = r.mask;
                c.stats.resyncs += 1;
                self.tell_lost(now, channel, mask, out);
            }
            Some(_) => {
                // A moved channel's new home continues where its
                // subscribers are: nothing to recover.
                if r.confirming > 0 {
                    r.confirming = 0;
                    r.deadline = None;
                }
            }
        }
    }

    pub(in crate::engine::router) fn relay_delivery(
        &mut self,
        now: Instant,
        epoch: u64,
        push: Arc<SharedPub>,
        out: &mut impl Output,
    ) {
        let c = self.cluster.as_mut().expect("relaying in a cluster");
        let Some(r) = c.relays.get_mut(&push.channel) else {
            return;
        };
        // Before the first marker, deliveries are not this node's yet.
        let Some(at) = r.position else {
            return;
        };
        let mask = r.mask;
        if let PushBody::Pub(publication) = &push.body {
            if at.epoch != epoch {
                r.position = Some(Position {
                    epoch,
                    offset: publication.offset,
                });
                r.recent.clear();
                c.stats.resyncs += 1;
                let channel = push.channel.clone();
                return self.tell_lost(now, &channel, mask, out);
            }
            if publication.offset <= at.offset {
                return;
            }
            r.position = Some(Position {
                epoch,
                offset: publication.offset,
            });
            if r.recent.len() == RECENT {
                r.recent.pop_front();
            }
            r.recent.push_back(push.clone());
        }
        // A jump in offsets reaches the shards as it is: each sees the gap
        // and makes its subscribers recover.
        self.fan_out(mask, push, true, out);
    }
}
