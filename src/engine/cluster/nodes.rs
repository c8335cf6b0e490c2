//! Router addresses of other nodes' shards, and the table of node names
//! they refer to.
//!
//! A router sends messages to a `usize` address: below
//! [`REMOTE_BASE`] a shard of this node, at or above it a shard of
//! another node ([`remote_addr`]), named by a *slot* of the
//! [`NodeTable`] rather than by its name, so a message carries no string
//! for its address and an address is `Copy`. The NATS shell interns a
//! sender's name when a message arrives and looks it up when one leaves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The first address of another node's shard.
pub const REMOTE_BASE: usize = 1 << 40;
/// The shard part of an address meaning "the channel's home shard there"
/// (the receiving node picks it from the channel, by its own shard count).
pub const HOME_SHARD: u16 = u16::MAX;
/// Distinct node names a table takes at most (a cluster has at most
/// `membership::MAX_NODES` live nodes; renamed and departed ones stay).
pub const MAX_NAMES: usize = 16 * 1024;

/// The address of shard `shard` (or [`HOME_SHARD`]) of the node in slot
/// `slot`.
pub const fn remote_addr(slot: u32, shard: u16) -> usize {
    REMOTE_BASE | ((slot as usize) << 16) | shard as usize
}

/// The node slot and shard of a remote address; `None` for a shard of
/// this node.
pub const fn remote_parts(addr: usize) -> Option<(u32, u16)> {
    if addr < REMOTE_BASE {
        return None;
    }
    let rest = addr & !REMOTE_BASE;
    Some(((rest >> 16) as u32, (rest & 0xffff) as u16))
}

/// Whether `addr` is a shard of another node.
pub const fn is_remote(addr: usize) -> bool {
    addr >= REMOTE_BASE
}

/// Node names and their slots, shared by the shards and the NATS thread.
/// Slots are never reused, so an address stays valid for as long as a
/// message holding it lives.
#[derive(Debug, Default)]
pub struct NodeTable {
    inner: RwLock<Names>,
}

#[derive(Debug, Default)]
struct Names {
    by_slot: Vec<Arc<str>>,
    by_name: HashMap<Arc<str>, u32>,
}

impl NodeTable {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The slot of `name`, giving it one if it has none; `None` once the
    /// table holds [`MAX_NAMES`] names.
    pub fn slot(&self, name: &str) -> Option<u32> {
        if let Some(&s) = self.read().by_name.get(name) {
            return Some(s);
        }
        let mut names = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&s) = names.by_name.get(name) {
            return Some(s);
        }
        if names.by_slot.len() >= MAX_NAMES {
            return None;
        }
        let slot = names.by_slot.len() as u32;
        let name: Arc<str> = Arc::from(name);
        names.by_slot.push(name.clone());
        names.by_name.insert(name, slot);
        Some(slot)
    }

    /// The name in `slot`.
    pub fn name(&self, slot: u32) -> Option<Arc<str>> {
        self.read().by_slot.get(slot as usize).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Names> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_never_meet_local_shards() {
        for (slot, shard) in [(0, 0), (0, HOME_SHARD), (7, 62), (u32::MAX >> 8, 1)] {
            let a = remote_addr(slot, shard);
            assert!(is_remote(a));
            assert_eq!(remote_parts(a), Some((slot, shard)));
        }
        assert_eq!(remote_parts(63), None);
        assert!(!is_remote(REMOTE_BASE - 1));
    }

    #[test]
    fn a_name_keeps_its_slot_and_the_table_is_bounded() {
        let t = NodeTable::new();
        let a = t.slot("a").unwrap();
        let b = t.slot("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(t.slot("a"), Some(a));
        assert_eq!(t.name(b).as_deref(), Some("b"));
        assert_eq!(t.name(99), None);
        for i in 2..MAX_NAMES {
            assert!(t.slot(&format!("n{i}")).is_some());
        }
        assert_eq!(t.slot("one-too-many"), None);
        assert_eq!(t.slot("a"), Some(a), "known names still resolve");
    }
}
