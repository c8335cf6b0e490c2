//! The home side of channels: the one place a channel's offsets come from.
//!
//! Every channel has one home shard (a hash of its name picks it). The home
//! keeps the channel's epoch and last offset and the set of shards that
//! have subscribers; it assigns each publication the next offset and fans
//! it out to those shards. Offsets never come from two places.
//!
//! A channel nobody is interested in is forgotten after an idle period;
//! when it comes back it has a new epoch and starts again at offset 0,
//! which tells recovering clients that its history is gone.

use std::collections::HashMap;
use std::sync::Arc;

/// The home shard of a channel, by name hash (FNV-1a: stable across runs
/// and nodes, unlike `std`'s randomised hasher).
pub fn home_shard(name: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// A position in a channel's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Identifies one continuous history of the channel.
    pub epoch: u64,
    /// Offset of the last publication (0 before the first).
    pub offset: u64,
}

/// Result of accepting a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The channel position including this publication.
    pub position: Position,
    /// Bit `i` set: shard `i` has subscribers and must receive it.
    pub interested: u64,
}

#[derive(Debug)]
struct HomeChannel {
    position: Position,
    interested: u64,
    /// Tick of the last publish or interest change.
    touched: u32,
}

/// A shard's table of the channels it is home for.
#[derive(Debug)]
pub struct Hub {
    channels: HashMap<Arc<str>, HomeChannel>,
    epoch_state: u64,
}

/// splitmix64: a good 64-bit mixer for epoch values.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Hub {
    /// An empty hub; `seed` makes epochs unique per process and shard.
    pub fn new(seed: u64) -> Self {
        Self {
            channels: HashMap::new(),
            epoch_state: seed,
        }
    }

    fn entry(&mut self, name: &Arc<str>, now: u32) -> &mut HomeChannel {
        if !self.channels.contains_key(name) {
            let epoch = splitmix(&mut self.epoch_state);
            self.channels.insert(
                name.clone(),
                HomeChannel {
                    position: Position { epoch, offset: 0 },
                    interested: 0,
                    touched: now,
                },
            );
        }
        self.channels.get_mut(name).expect("inserted above")
    }

    /// Marks `shard` as having (or no longer having) subscribers. Returns
    /// the current position: a shard that starts listening receives every
    /// publication after it.
    pub fn set_interest(&mut self, name: &Arc<str>, shard: usize, on: bool, now: u32) -> Position {
        let ch = self.entry(name, now);
        if on {
            ch.interested |= 1 << shard;
        } else {
            ch.interested &= !(1 << shard);
        }
        ch.touched = now;
        ch.position
    }

    /// The channel's current position (creating it, with a fresh epoch, if
    /// the hub does not know it).
    pub fn position(&mut self, name: &Arc<str>, now: u32) -> Position {
        self.entry(name, now).position
    }

    /// The shards with subscribers of a channel the hub knows (bit `i` for
    /// shard `i`).
    pub fn interested(&self, name: &str) -> u64 {
        self.channels.get(name).map_or(0, |c| c.interested)
    }

    /// The channel's current position, if the hub knows it (never
    /// creates it).
    pub fn peek(&self, name: &str) -> Option<Position> {
        self.channels.get(name).map(|c| c.position)
    }

    /// Every channel the hub knows.
    pub fn channels(&self) -> impl Iterator<Item = &Arc<str>> {
        self.channels.keys()
    }

    /// Forgets a channel (its home moved to another node): if it comes
    /// back, it starts a new epoch.
    pub fn forget(&mut self, name: &str) {
        self.channels.remove(name);
    }

    /// Sets a channel's position (read back from a store), creating the
    /// channel if the hub does not know it; its interest stays.
    pub fn restore(&mut self, name: &Arc<str>, position: Position, now: u32) {
        let ch = self.entry(name, now);
        ch.position = position;
        ch.touched = now;
    }

    /// Assigns the next offset to a publication.
    pub fn publish(&mut self, name: &Arc<str>, now: u32) -> Accepted {
        let ch = self.entry(name, now);
        ch.position.offset += 1;
        ch.touched = now;
        Accepted {
            position: ch.position,
            interested: ch.interested,
        }
    }

    /// Forgets channels nobody listens to that have been idle for
    /// `idle_ticks`, unless `keep` says otherwise (a channel whose history
    /// still holds publications keeps its epoch, or recovery would fail).
    /// Appends the names forgotten to `forgotten`.
    pub fn sweep(
        &mut self,
        now: u32,
        idle_ticks: u32,
        keep: impl Fn(&str) -> bool,
        forgotten: &mut Vec<Arc<str>>,
    ) {
        self.channels.retain(|name, c| {
            let stay =
                c.interested != 0 || now.saturating_sub(c.touched) < idle_ticks || keep(name);
            if !stay {
                forgotten.push(name.clone());
            }
            stay
        });
    }

    /// Channels this shard is home for.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether the hub holds no channel.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_interest() {
        let mut hub = Hub::new(1);
        let c: Arc<str> = "chat:1".into();
        let p0 = hub.set_interest(&c, 1, true, 0);
        assert_eq!(p0.offset, 0);
        let a = hub.publish(&c, 1);
        assert_eq!(a.position.offset, 1);
        assert_eq!(a.position.epoch, p0.epoch);
        assert_eq!(a.interested, 0b10);
        hub.set_interest(&c, 0, true, 1);
        assert_eq!(hub.publish(&c, 1).interested, 0b11);
        hub.set_interest(&c, 1, false, 2);
        assert_eq!(hub.publish(&c, 2).interested, 0b01);
    }

    #[test]
    fn idle_channels_lose_their_epoch() {
        let mut hub = Hub::new(7);
        let c: Arc<str> = "feed".into();
        let e1 = hub.publish(&c, 0).position.epoch;
        let mut gone = Vec::new();
        hub.sweep(10, 300, |_| false, &mut gone);
        assert!(gone.is_empty());
        hub.sweep(300, 300, |n| n == "kept", &mut gone);
        assert_eq!(gone, vec![c.clone()]);
        let p = hub.publish(&c, 301).position;
        assert_ne!(p.epoch, e1);
        assert_eq!(p.offset, 1);
        // Interested channels are kept however idle.
        hub.set_interest(&c, 0, true, 302);
        let k: Arc<str> = "kept".into();
        hub.publish(&k, 302);
        gone.clear();
        hub.sweep(100_000, 300, |n| n == "kept", &mut gone);
        assert!(gone.is_empty(), "interested or kept: {gone:?}");
    }

    #[test]
    fn home_is_stable_and_spread() {
        assert_eq!(home_shard("chat:1", 4), home_shard("chat:1", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[home_shard(&format!("room:{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
