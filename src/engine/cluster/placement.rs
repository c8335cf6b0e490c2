//! Which node is a channel's home: rendezvous (highest-random-weight)
//! hashing of the channel name over the live set.
//!
//! Each live node gets a weight for the channel, a hash of the pair; the
//! node with the highest weight is the home. A node's weight for a channel
//! does not depend on the other nodes, so when a node leaves only the
//! channels it was home for move (each to its second-highest node), and
//! when a node joins only the channels it now wins move to it — about
//! `1/n` of them with `n` nodes. Every node computes the same home from
//! the same live set, whatever order it holds the set in.
//!
//! The hash is XXH3-64 with a fixed seed (never `std`'s randomised
//! hasher): stable across processes, machines and versions of the crate,
//! since XXH3's output is part of its specification. [`PLACEMENT_SEED`]
//! and [`weight`] are part of the cluster protocol: nodes that compute
//! them differently disagree on every home. A test pins known answers.
//!
//! [`Placement`] keeps the live set's node hashes for one membership
//! generation, so finding a home is one hash of the channel name and one
//! multiply-xorshift per node; there is no per-channel cache to bound or
//! invalidate.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::membership::Membership;

/// Seed of the channel and node hashes. Changing it moves every channel.
pub const PLACEMENT_SEED: u64 = 0x7773_6564_6765_0010; // "wsedge", issue 10

/// Hash of a channel name.
pub fn channel_hash(channel: &str) -> u64 {
    xxh3_64_with_seed(channel.as_bytes(), PLACEMENT_SEED)
}

/// Hash of a node name (another domain than channel names, so a node and
/// a channel with the same text are unrelated).
pub fn node_hash(node: &str) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), !PLACEMENT_SEED)
}

/// The weight of a node for a channel, from their hashes: the splitmix64
/// finaliser of their xor. The finaliser is a bijection with full
/// avalanche, so for one channel the weights of distinct nodes are
/// distinct and look independent.
pub fn weight(channel_hash: u64, node_hash: u64) -> u64 {
    let mut z = channel_hash ^ node_hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The index of the winner among `(name, node hash)` pairs: highest
/// weight, then (only if two node hashes collide) the greater name, so
/// the answer never depends on the order of the nodes.
fn winner<'a, I>(channel: &str, nodes: I) -> Option<usize>
where
    I: Iterator<Item = (&'a str, u64)>,
{
    let ch = channel_hash(channel);
    let mut best: Option<(u64, &str, usize)> = None;
    for (i, (name, h)) in nodes.enumerate() {
        let w = weight(ch, h);
        if best.is_none_or(|(bw, bn, _)| (w, name) > (bw, bn)) {
            best = Some((w, name, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// The home node of `channel` among `live` (`None` only for an empty
/// set). Hashes every node name; a node asking often uses [`Placement`].
pub fn home_node<'a>(channel: &str, live: &'a [Arc<str>]) -> Option<&'a Arc<str>> {
    winner(channel, live.iter().map(|n| (&**n, node_hash(n)))).map(|i| &live[i])
}

/// The live set of one membership generation, ready to place channels.
/// Cheap to clone (the node list is shared), so a caller can keep the
/// previous placement to see which channels moved after a change.
#[derive(Debug, Clone)]
pub struct Placement {
    generation: u64,
    /// Live nodes (sorted by name) and their hashes.
    nodes: Arc<[(Arc<str>, u64)]>,
    /// Each live node's incarnation, in the order of `nodes`.
    incarnations: Arc<[u64]>,
    self_index: usize,
}

impl Placement {
    /// The placement of `membership`'s live set.
    pub fn new(membership: &Membership) -> Self {
        let nodes: Arc<[(Arc<str>, u64)]> = membership
            .live()
            .iter()
            .map(|n| (n.clone(), node_hash(n)))
            .collect();
        let me = membership.self_name();
        let self_index = nodes.iter().position(|(n, _)| n == me).unwrap_or_default();
        let incarnations = nodes
            .iter()
            .map(|(n, _)| match membership.node(n) {
                Some(info) => info.incarnation,
                None => membership.incarnation(),
            })
            .collect();
        Placement {
            generation: membership.generation(),
            nodes,
            incarnations,
            self_index,
        }
    }

    /// Rebuilds from `membership` if its generation moved on; returns
    /// whether it did (homes may have changed).
    pub fn update(&mut self, membership: &Membership) -> bool {
        if membership.generation() == self.generation {
            return false;
        }
        *self = Placement::new(membership);
        true
    }

    /// The membership generation this placement was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The live nodes, sorted by name.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &Arc<str>> {
        self.nodes.iter().map(|(n, _)| n)
    }

    /// The incarnation of live node `node` (this node's own included);
    /// `None` if it is not live.
    pub fn incarnation(&self, node: &str) -> Option<u64> {
        let i = self.nodes.binary_search_by(|(n, _)| (**n).cmp(node)).ok()?;
        self.incarnations.get(i).copied()
    }

    /// This node's own incarnation.
    pub fn self_incarnation(&self) -> u64 {
        self.incarnations[self.self_index]
    }

    fn home_index(&self, channel: &str) -> usize {
        winner(channel, self.nodes.iter().map(|(n, h)| (&**n, *h))).unwrap_or(self.self_index)
    }

    /// The home node of `channel`. The live set always holds this node, so
    /// there always is one.
    pub fn home(&self, channel: &str) -> &Arc<str> {
        &self.nodes[self.home_index(channel)].0
    }

    /// Whether this node is `channel`'s home.
    pub fn is_home(&self, channel: &str) -> bool {
        self.home_index(channel) == self.self_index
    }
}

#[cfg(test)]
mod tests;
