//! The home's side of presence kept beside stored history
//! ([`crate::engine::cluster::members`]): which members changed, the
//! writes that carry them to the bucket, and the members a new home reads
//! back.
//!
//! - **Which channels.** In a cluster, a channel whose history is in
//!   JetStream and whose namespace counts members (`presence`,
//!   `max_subscribers`), stories aside (they stay where they are loaded).
//! - **Written behind, coalesced per tick.** Each join, leave or state
//!   marks the client; with the presence tick (50 ms) the home writes one
//!   [`MemberWrite`] per channel: the record of each marked client still a
//!   member, a removal for the others. Nothing waits for it.
//! - **A lost write** (the cluster queue refused it, or JetStream did not
//!   acknowledge it: [`Router::members_unwritten`]) makes the channel's
//!   next write whole: every key of the channel is deleted and every
//!   member written again. Whole writes are retried on the housekeeping
//!   tick (1 s) until one is taken.
//! - **Refreshed** every [`REFRESH_EVERY`], so records outlive the
//!   bucket's `max_age` only while a home holds them.
//! - **Read back** with the stored tail when a channel becomes this
//!   shard's (a first load, no member held): each record whose node and
//!   incarnation are live is put back without an event (local ones as
//!   local members, others as remote members of their node, so they leave
//!   when it does); the others are removed from the bucket.
//!
//! What a home decided in its last tick before it died is not in the
//! bucket: a join made then is missing until the client subscribes again,
//! and a leave made then leaves a member counted until its connection
//! closes or its node leaves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::{Output, Router};
use crate::engine::cluster::members::{MemberChange, MemberWrite, REFRESH_EVERY, StoredMember};
use crate::engine::presence::Origin;

/// What a home shard owes the presence bucket.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    /// Clients whose record changed since the last flush, per channel.
    dirty: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// Channels whose next write is whole (a write was lost).
    whole: HashSet<Arc<str>>,
    /// Channels this shard mirrors, and when their members were last all
    /// written (or read back).
    written: HashMap<Arc<str>, Instant>,
    /// Counts since the last [`Router::take_mirror_stats`].
    stats: MirrorStats,
}

/// Counts of the presence mirror since the last take.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MirrorStats {
    /// Channel writes the cluster queue took.
    pub writes: u64,
    /// Of those, whole rewrites (and refreshes).
    pub whole: u64,
    /// Writes the cluster queue refused, or JetStream did not acknowledge.
    pub lost: u64,
    /// Members put back from the bucket.
    pub restored: u64,
    /// Records read back whose node (or incarnation) is gone: removed.
    pub stale: u64,
}

impl Router {
    /// Whether `channel`'s members are kept in the presence bucket.
    pub(super) fn mirrors(&self, channel: &str) -> bool {
        self.cluster.is_some()
            && self.stored.is_some()
            && self.options(channel).is_ok_and(|o| o.mirrors_members())
    }

    /// `client`'s membership of `channel` changed: its record is written
    /// with the next presence tick.
    pub(super) fn mirror_touch(&mut self, now: Instant, channel: &str, client: &str) {
        if !self.mirrors(channel) {
            return;
        }
        let channel: Arc<str> = Arc::from(channel);
        self.mirror
            .dirty
            .entry(channel.clone())
            .or_default()
            .insert(Arc::from(client));
        self.mirror.written.entry(channel).or_insert(now);
        self.schedule_presence(now);
    }

    /// The idle sweep forgot `channel` (no member is left in it).
    pub(super) fn mirror_forget(&mut self, channel: &str) {
        if self.mirror.dirty.contains_key(channel) {
            return; // its last removals are still to be written
        }
        self.mirror.written.remove(channel);
        self.mirror.whole.remove(channel);
    }

    /// Writes what changed since the last flush (the presence tick).
    pub(super) fn flush_mirror(&mut self, now: Instant, out: &mut impl Output) {
        if self.mirror.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.mirror.dirty);
        for (channel, clients) in dirty {
            self.write_members(now, &channel, Some(clients.into_iter().collect()), out);
        }
    }

    /// Writes `channel`'s pending changes now (its home is moving away,
    /// or it is being forgotten), then forgets it.
    pub(super) fn mirror_release(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        out: &mut impl Output,
    ) {
        if let Some(clients) = self.mirror.dirty.remove(channel) {
            self.write_members(now, channel, Some(clients.into_iter().collect()), out);
        }
        self.mirror.written.remove(channel);
        self.mirror.whole.remove(channel);
    }

    /// Writes the records of `clients` of `channel` (`None`: of every
    /// member, a refresh), or the whole channel if a write was lost.
    fn write_members(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        clients: Option<Vec<Arc<str>>>,
        out: &mut impl Output,
    ) {
        let whole = self.mirror.whole.contains(channel);
        let all = whole || clients.is_none();
        let clients = match clients {
            Some(c) if !whole => c,
            _ => self.presence.clients(channel),
        };
        let ms = self.ms(now);
        let changes = clients
            .into_iter()
            .map(|c| match self.member_record(channel, &c, ms) {
                Some(m) => MemberChange::Put(m),
                None => MemberChange::Remove(c),
            })
            .collect();
        let write = MemberWrite {
            channel: channel.clone(),
            whole,
            changes,
        };
        if !out.mirror_members(write) {
            return self.members_unwritten(channel);
        }
        self.mirror.stats.writes += 1;
        if all {
            self.mirror.stats.whole += 1;
        }
        if whole {
            self.mirror.whole.remove(channel);
        }
        if self.presence.members(channel) == 0 {
            // Nothing left to refresh: a later join starts again.
            self.mirror.written.remove(channel);
        } else if all {
            self.mirror.written.insert(channel.clone(), now);
        }
    }

    /// A write of `channel`'s members was refused or not acknowledged:
    /// its next write is whole (deleting what the bucket holds first).
    pub fn members_unwritten(&mut self, channel: &Arc<str>) {
        self.mirror.stats.lost += 1;
        if self.mirrors(channel) {
            self.mirror.whole.insert(channel.clone());
            self.mirror
                .written
                .entry(channel.clone())
                .or_insert(self.origin);
        }
    }

    /// The housekeeping tick: whole writes owed, and channels due for
    /// their refresh.
    pub(super) fn mirror_housekeeping(&mut self, now: Instant, out: &mut impl Output) {
        let due: Vec<Arc<str>> = self
            .mirror
            .written
            .iter()
            .filter(|(c, at)| {
                self.mirror.whole.contains(*c)
                    || now.saturating_duration_since(**at) >= REFRESH_EVERY
            })
            .map(|(c, _)| c.clone())
            .collect();
        for channel in due {
            if !self.mirrors(&channel) {
                self.mirror.written.remove(&channel);
                self.mirror.whole.remove(&channel);
                continue;
            }
            self.write_members(now, &channel, None, out);
        }
    }

    /// The record of `client` in `channel`, if it is a member.
    fn member_record(&self, channel: &str, client: &str, ms: u64) -> Option<StoredMember> {
        let m = self.presence.member(channel, client)?;
        let origin = m.origin?;
        let (node, incarnation, shard) = self.origin_node(origin.from)?;
        let (state, state_ttl_ms) = match m.state {
            Some((value, expires)) => {
                (Some(value.clone()), expires.map(|at| at.saturating_sub(ms)))
            }
            None => (None, None),
        };
        Some(StoredMember {
            client: m.info.client.clone(),
            user: m.info.user.clone(),
            info: m.info.info.clone(),
            state,
            state_ttl_ms,
            node,
            incarnation,
            shard,
            conn: origin.conn,
        })
    }

    /// Whether members read back for `channel` are to be put back: the
    /// shard holds none and has not mirrored it since it last took it.
    pub(super) fn restores_members(&self, channel: &str) -> bool {
        self.mirrors(channel)
            && self.presence.members(channel) == 0
            && !self.mirror.written.contains_key(channel)
    }

    /// Puts back the members read with `channel`'s tail: those whose node
    /// and incarnation are live, without events; the others are removed
    /// from the bucket.
    pub(super) fn restore_members(
        &mut self,
        now: Instant,
        channel: &Arc<str>,
        members: Vec<StoredMember>,
        out: &mut impl Output,
    ) {
        let ms = self.ms(now);
        let mut stale = Vec::new();
        for m in members {
            let Some(from) = self.member_origin(&m.node, m.incarnation, m.shard) else {
                stale.push(m.client);
                continue;
            };
            let origin = Origin { from, conn: m.conn };
            let info = m.client_info();
            let client = info.client.clone();
            let state = m
                .state
                .map(|s| (s, m.state_ttl_ms.map(|ttl| ms.saturating_add(ttl))));
            if self.presence.restore(channel, info, origin, state) {
                self.mirror.stats.restored += 1;
                self.note_remote_member(channel, &client, origin.conn, from, true);
            }
        }
        self.mirror.written.insert(channel.clone(), now);
        if !stale.is_empty() {
            self.mirror.stats.stale += stale.len() as u64;
            let write = MemberWrite {
                channel: channel.clone(),
                whole: false,
                changes: stale.into_iter().map(MemberChange::Remove).collect(),
            };
            if !out.mirror_members(write) {
                self.mirror.stats.lost += 1;
            }
        }
    }

    /// Counts since the last call.
    pub fn take_mirror_stats(&mut self) -> MirrorStats {
        std::mem::take(&mut self.mirror.stats)
    }
}
