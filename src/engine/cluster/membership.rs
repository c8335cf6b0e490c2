//! The live set: which nodes are in the cluster, from their heartbeats.
//!
//! Each node publishes a [`Heartbeat`] every second on its `node.<name>`
//! subject. A node is live from its first heartbeat until `node_timeout`
//! passes without one, measured on the receiver's clock (the `now_ms`
//! given here), so nodes' clocks need not agree. This node is always live.
//!
//! A node that restarts comes back with a new random incarnation: it is a
//! new node with the old name, and whatever the cluster held for the old
//! one (presence members, interest, pending requests) is gone
//! ([`Change::Restarted`]). Once a node has restarted, heartbeats still in
//! flight from its previous incarnation are refused instead of making it
//! flap between the two.
//!
//! The live set changes only here; each change bumps
//! [`Membership::generation`], which is what [`super::placement::Placement`]
//! is keyed by. The number of other nodes is bounded ([`MAX_NODES`]);
//! heartbeats of new nodes beyond it are refused and counted.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{DecodeError, KIND_HEARTBEAT, PROTOCOL_VERSION, Reader};
use super::subject::is_valid_name;

/// Most nodes tracked besides this one. Far above any cluster this design
/// targets; it bounds memory and the cost of a placement against a flood
/// of heartbeats with made-up names.
pub const MAX_NODES: usize = 1024;

/// What a node announces every second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The node's name (`[cluster] node_name`): 1–64 bytes of
    /// `A–Z a–z 0–9 _ -`.
    pub node: Arc<str>,
    /// Random per process start: a restarted node is a new incarnation.
    pub incarnation: u64,
    /// The node's shard count (at least 1).
    pub shards: u16,
    /// The sender's Unix time in ms when it sent this (informational: for
    /// clock-skew diagnostics; liveness uses the receiver's clock).
    pub sent_ms: u64,
}

/// Bytes of a heartbeat before the name: header, incarnation, shards,
/// sent_ms, name length.
const HEARTBEAT_FIXED: usize = 2 + 8 + 2 + 8 + 1;

impl Heartbeat {
    /// The heartbeat's bytes: version, kind `0x01`, incarnation (u64),
    /// shards (u16), sent_ms (u64), name length (u8), name.
    pub fn encode(&self) -> Bytes {
        let name = self.node.as_bytes();
        let n = name.len().min(u8::MAX as usize);
        let mut out = BytesMut::with_capacity(HEARTBEAT_FIXED + n);
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(KIND_HEARTBEAT);
        out.put_u64(self.incarnation);
        out.put_u16(self.shards);
        out.put_u64(self.sent_ms);
        out.put_u8(n as u8);
        out.put_slice(&name[..n]);
        out.freeze()
    }

    /// Decodes a heartbeat; refuses anything else, including a name that
    /// could not be a subject token and zero shards.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let (kind, mut r) = Reader::open(buf)?;
        if kind != KIND_HEARTBEAT {
            return Err(DecodeError::Kind(kind));
        }
        let incarnation = r.u64()?;
        let shards = r.u16()?;
        let sent_ms = r.u64()?;
        let n = r.u8()? as usize;
        let name = r.bytes(n)?;
        r.finish()?;
        if shards == 0 {
            return Err(DecodeError::ZeroShards);
        }
        match std::str::from_utf8(name) {
            Ok(s) if is_valid_name(s) => Ok(Heartbeat {
                node: Arc::from(s),
                incarnation,
                shards,
                sent_ms,
            }),
            _ => Err(DecodeError::NodeName),
        }
    }
}

/// What a heartbeat did to the live set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A node not in the live set joined it.
    Joined,
    /// A live node came back as a new incarnation: everything held for
    /// `previous` is gone. The set of names is the same, but the
    /// generation changes.
    Restarted {
        /// The incarnation that is gone.
        previous: u64,
        /// The one now live.
        incarnation: u64,
    },
    /// A live node is still there.
    Refreshed,
    /// This node's own heartbeat, echoed back by NATS: nothing changes.
    Own,
    /// Not taken into the live set; counted ([`Membership::counters`]).
    Refused(Refusal),
}

/// Why a heartbeat was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A new node beyond [`MAX_NODES`].
    Full,
    /// Another process uses this node's name (a configuration error: two
    /// nodes would both think they are home for the same channels).
    NameClash,
    /// From an incarnation that has since been replaced.
    StaleIncarnation,
}

/// Counts of heartbeats that did not change the live set's members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipCounters {
    /// [`Refusal::Full`].
    pub full: u64,
    /// [`Refusal::NameClash`].
    pub name_clash: u64,
    /// [`Refusal::StaleIncarnation`].
    pub stale_incarnation: u64,
}

/// A node that left the live set (its heartbeats stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// Its name.
    pub node: Arc<str>,
    /// The incarnation that left.
    pub incarnation: u64,
}

/// What is known of a live node other than this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its current incarnation.
    pub incarnation: u64,
    /// Its shard count.
    pub shards: u16,
    /// When its last heartbeat arrived (receiver's clock, ms).
    pub last_seen_ms: u64,
    /// The `sent_ms` of that heartbeat (sender's clock).
    pub last_sent_ms: u64,
}

#[derive(Debug)]
struct Node {
    info: NodeInfo,
    /// The incarnation this one replaced, whose heartbeats are refused.
    replaced: Option<u64>,
}

/// The live set as this node sees it.
#[derive(Debug)]
pub struct Membership {
    self_name: Arc<str>,
    incarnation: u64,
    node_timeout_ms: u64,
    max_nodes: usize,
    /// Every live node except this one.
    nodes: BTreeMap<Arc<str>, Node>,
    /// Every live node's name, this one included, sorted.
    live: Vec<Arc<str>>,
    generation: u64,
    counters: MembershipCounters,
}

impl Membership {
    /// A live set holding only this node. `self_name` should be
    /// [`is_valid_name`] (config validation checks it); `node_timeout_ms`
    /// is how long a node stays live after its last heartbeat.
    pub fn new(self_name: Arc<str>, incarnation: u64, node_timeout_ms: u64) -> Self {
        Membership {
            live: vec![self_name.clone()],
            self_name,
            incarnation,
            node_timeout_ms,
            max_nodes: MAX_NODES,
            nodes: BTreeMap::new(),
            generation: 0,
            counters: MembershipCounters::default(),
        }
    }

    /// The same, tracking at most `max_nodes` other nodes (tests).
    pub fn with_max_nodes(mut self, max_nodes: usize) -> Self {
        self.max_nodes = max_nodes;
        self
    }

    /// This node's name.
    pub fn self_name(&self) -> &Arc<str> {
        &self.self_name
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's heartbeat.
    pub fn own_heartbeat(&self, shards: u16, now_unix_ms: u64) -> Heartbeat {
        Heartbeat {
            node: self.self_name.clone(),
            incarnation: self.incarnation,
            shards,
            sent_ms: now_unix_ms,
        }
    }

    /// Takes a heartbeat received at `now_ms`.
    pub fn on_heartbeat(&mut self, hb: &Heartbeat, now_ms: u64) -> Change {
        if hb.node == self.self_name {
            if hb.incarnation == self.incarnation {
                return Change::Own;
            }
            self.counters.name_clash += 1;
            return Change::Refused(Refusal::NameClash);
        }
        let info = NodeInfo {
            incarnation: hb.incarnation,
            shards: hb.shards,
            last_seen_ms: now_ms,
            last_sent_ms: hb.sent_ms,
        };
        if let Some(node) = self.nodes.get_mut(&*hb.node) {
            let current = node.info.incarnation;
            if hb.incarnation == current {
                node.info.last_seen_ms = node.info.last_seen_ms.max(now_ms);
                node.info.last_sent_ms = hb.sent_ms;
                node.info.shards = hb.shards;
                return Change::Refreshed;
            }
            if node.replaced == Some(hb.incarnation) {
                self.counters.stale_incarnation += 1;
                return Change::Refused(Refusal::StaleIncarnation);
            }
            node.info = info;
            node.replaced = Some(current);
            self.generation += 1;
            return Change::Restarted {
                previous: current,
                incarnation: hb.incarnation,
            };
        }
        if self.nodes.len() >= self.max_nodes {
            self.counters.full += 1;
            return Change::Refused(Refusal::Full);
        }
        self.nodes.insert(
            hb.node.clone(),
            Node {
                info,
                replaced: None,
            },
        );
        self.rebuild_live();
        Change::Joined
    }

    /// Removes the nodes whose last heartbeat is `node_timeout` or more
    /// before `now_ms`, in name order.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Left> {
        let timeout = self.node_timeout_ms;
        let mut left = Vec::new();
        self.nodes.retain(|name, node| {
            let alive = now_ms < node.info.last_seen_ms.saturating_add(timeout);
            if !alive {
                left.push(Left {
                    node: name.clone(),
                    incarnation: node.info.incarnation,
                });
            }
            alive
        });
        if !left.is_empty() {
            self.rebuild_live();
        }
        left
    }

    /// When the next node expires unless it sends a heartbeat first (the
    /// time to call [`Membership::expire`] at); `None` when this node is
    /// alone.
    pub fn next_deadline(&self) -> Option<u64> {
        self.nodes
            .values()
            .map(|n| n.info.last_seen_ms.saturating_add(self.node_timeout_ms))
            .min()
    }

    /// Every live node's name, this one included, sorted.
    pub fn live(&self) -> &[Arc<str>] {
        &self.live
    }

    /// Whether `node` is live (this node always is).
    pub fn is_live(&self, node: &str) -> bool {
        node == &*self.self_name || self.nodes.contains_key(node)
    }

    /// What is known of a live node other than this one.
    pub fn node(&self, node: &str) -> Option<NodeInfo> {
        self.nodes.get(node).map(|n| n.info)
    }

    /// Changes each time a node joins, restarts or leaves. Starts at 0.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Heartbeats refused so far, by reason.
    pub fn counters(&self) -> MembershipCounters {
        self.counters
    }

    fn rebuild_live(&mut self) {
        self.live.clear();
        self.live.extend(self.nodes.keys().cloned());
        let at = self
            .live
            .binary_search(&self.self_name)
            .unwrap_or_else(|i| i);
        self.live.insert(at, self.self_name.clone());
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const TIMEOUT: u64 = 3_000;

    fn hb(node: &str, incarnation: u64) -> Heartbeat {
        Heartbeat {
            node: Arc::from(node),
            incarnation,
            shards: 4,
            sent_ms: 1_700_000_000_000,
        }
    }

    fn names(m: &Membership) -> Vec<&str> {
        m.live().iter().map(|n| &**n).collect()
    }

    #[test]
    fn heartbeat_roundtrip() {
        let h = Heartbeat {
            node: Arc::from("edge-01_x"),
            incarnation: u64::MAX - 3,
            shards: u16::MAX,
            sent_ms: 1_700_000_000_123,
        };
        let b = h.encode();
        assert_eq!(b.len(), HEARTBEAT_FIXED + 9);
        assert_eq!(&b[..2], &[PROTOCOL_VERSION, KIND_HEARTBEAT]);
        assert_eq!(Heartbeat::decode(&b), Ok(h));
    }

    #[test]
    fn heartbeat_refusals() {
        let good = hb("b", 7).encode();
        assert_eq!(Heartbeat::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Heartbeat::decode(&good[..1]), Err(DecodeError::Empty));
        let mut v = good.to_vec();
        v[0] = PROTOCOL_VERSION + 1;
        assert_eq!(
            Heartbeat::decode(&v),
            Err(DecodeError::Version(PROTOCOL_VERSION + 1))
        );
        let mut v = good.to_vec();
        v[1] = 0x10;
        assert_eq!(Heartbeat::decode(&v), Err(DecodeError::Kind(0x10)));
        for cut in 2..good.len() {
            assert_eq!(
                Heartbeat::decode(&good[..cut]),
                Err(DecodeError::Truncated),
                "{cut}"
            );
        }
        let mut v = good.to_vec();
        v.push(0);
        assert_eq!(Heartbeat::decode(&v), Err(DecodeError::Trailing));
        let mut z = hb("b", 7);
        z.shards = 0;
        assert_eq!(Heartbeat::decode(&z.encode()), Err(DecodeError::ZeroShards));
        for bad in ["", "a.b", "*", "a b", "ü"] {
            assert_eq!(
                Heartbeat::decode(&hb(bad, 1).encode()),
                Err(DecodeError::NodeName),
                "{bad:?}"
            );
        }
        // A 300-byte name is cut to 255 on encode and refused on decode.
        let long = "n".repeat(300);
        assert_eq!(
            Heartbeat::decode(&hb(&long, 1).encode()),
            Err(DecodeError::NodeName)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(20);
        let good = hb("node-a", 99).encode();
        for _ in 0..100_000 {
            let v: Vec<u8> = if rng.random_bool(0.5) {
                let n = rng.random_range(0..40);
                (0..n).map(|_| rng.random()).collect()
            } else {
                // Mutations of a valid heartbeat reach deeper.
                let mut v = good.to_vec();
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
                v.truncate(rng.random_range(0..=v.len()));
                v
            };
            if let Ok(h) = Heartbeat::decode(&v) {
                assert_eq!(h.encode().as_ref(), &v[..]);
            }
        }
    }

    #[test]
    fn join_refresh_expire() {
        let mut m = Membership::new(Arc::from("b"), 1, TIMEOUT);
        assert_eq!(names(&m), ["b"]);
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.generation(), 0);

        assert_eq!(m.on_heartbeat(&hb("c", 5), 1_000), Change::Joined);
        assert_eq!(m.on_heartbeat(&hb("a", 6), 1_500), Change::Joined);
        assert_eq!(names(&m), ["a", "b", "c"]);
        assert_eq!(m.generation(), 2);
        assert_eq!(m.next_deadline(), Some(4_000));

        assert_eq!(m.on_heartbeat(&hb("c", 5), 2_000), Change::Refreshed);
        assert_eq!(m.generation(), 2);
        assert_eq!(m.next_deadline(), Some(4_500));
        assert_eq!(m.node("c").unwrap().last_seen_ms, 2_000);

        assert!(m.expire(4_499).is_empty());
        assert_eq!(
            m.expire(4_500),
            vec![Left {
                node: Arc::from("a"),
                incarnation: 6
            }]
        );
        assert_eq!(names(&m), ["b", "c"]);
        assert_eq!(m.generation(), 3);
        assert!(!m.is_live("a"));
        assert!(m.is_live("b"));
        assert_eq!(m.next_deadline(), Some(5_000));
        assert_eq!(m.expire(10_000).len(), 1);
        assert_eq!(names(&m), ["b"]);
        assert_eq!(m.next_deadline(), None);

        // A node that left and comes back (same incarnation, after a
        // partition) joins again.
        assert_eq!(m.on_heartbeat(&hb("a", 6), 11_000), Change::Joined);
    }

    #[test]
    fn restart_is_a_new_incarnation() {
        let mut m = Membership::new(Arc::from("a"), 1, TIMEOUT);
        m.on_heartbeat(&hb("b", 10), 0);
        let g = m.generation();
        assert_eq!(
            m.on_heartbeat(&hb("b", 11), 500),
            Change::Restarted {
                previous: 10,
                incarnation: 11
            }
        );
        assert_ne!(m.generation(), g);
        assert_eq!(m.node("b").unwrap().incarnation, 11);
        // A late heartbeat of the old process does not bring it back.
        let g = m.generation();
        assert_eq!(
            m.on_heartbeat(&hb("b", 10), 600),
            Change::Refused(Refusal::StaleIncarnation)
        );
        assert_eq!(m.generation(), g);
        assert_eq!(m.counters().stale_incarnation, 1);
        assert_eq!(m.on_heartbeat(&hb("b", 11), 700), Change::Refreshed);
        // A second restart replaces the guard.
        assert_eq!(
            m.on_heartbeat(&hb("b", 12), 800),
            Change::Restarted {
                previous: 11,
                incarnation: 12
            }
        );
        assert_eq!(
            m.on_heartbeat(&hb("b", 11), 900),
            Change::Refused(Refusal::StaleIncarnation)
        );
    }

    #[test]
    fn own_heartbeats_and_name_clashes() {
        let mut m = Membership::new(Arc::from("a"), 1, TIMEOUT);
        let own = m.own_heartbeat(8, 123);
        assert_eq!(m.on_heartbeat(&own, 0), Change::Own);
        assert_eq!(
            m.on_heartbeat(&hb("a", 2), 0),
            Change::Refused(Refusal::NameClash)
        );
        assert_eq!(m.counters().name_clash, 1);
        assert_eq!(names(&m), ["a"]);
        assert_eq!(m.generation(), 0);
        // Self never expires.
        assert!(m.expire(u64::MAX).is_empty());
        assert_eq!(names(&m), ["a"]);
    }

    #[test]
    fn bounded() {
        let mut m = Membership::new(Arc::from("self"), 1, TIMEOUT);
        for i in 0..MAX_NODES {
            assert_eq!(m.on_heartbeat(&hb(&format!("n{i}"), 1), 0), Change::Joined);
        }
        assert_eq!(m.live().len(), MAX_NODES + 1);
        assert_eq!(
            m.on_heartbeat(&hb("extra", 1), 0),
            Change::Refused(Refusal::Full)
        );
        assert_eq!(m.counters().full, 1);
        // Known nodes are still refreshed and restarted when full.
        assert_eq!(m.on_heartbeat(&hb("n0", 1), 1), Change::Refreshed);
        assert!(matches!(
            m.on_heartbeat(&hb("n0", 2), 1),
            Change::Restarted { .. }
        ));
        // Room again once one leaves.
        assert_eq!(m.expire(TIMEOUT).len(), MAX_NODES - 1);
        assert_eq!(m.on_heartbeat(&hb("extra", 1), TIMEOUT), Change::Joined);
    }

    /// Random heartbeats and expiries: the live set is always sorted,
    /// holds self, and the generation moves exactly when it changes.
    #[test]
    fn random_sequences_keep_invariants() {
        let mut rng = StdRng::seed_from_u64(21);
        let mut m = Membership::new(Arc::from("n3"), 1, TIMEOUT).with_max_nodes(5);
        let mut now = 0u64;
        for _ in 0..20_000 {
            now += rng.random_range(0..800);
            let before: Vec<Arc<str>> = m.live().to_vec();
            let incs: Vec<Option<u64>> = before
                .iter()
                .map(|n| m.node(n).map(|i| i.incarnation))
                .collect();
            let g = m.generation();
            let changed = if rng.random_bool(0.8) {
                let name = format!("n{}", rng.random_range(0..8));
                let c = m.on_heartbeat(&hb(&name, rng.random_range(0..3)), now);
                matches!(c, Change::Joined | Change::Restarted { .. })
            } else {
                let left = !m.expire(now).is_empty();
                if let Some(d) = m.next_deadline() {
                    assert!(d > now);
                }
                left
            };
            let live = m.live();
            assert!(live.windows(2).all(|w| w[0] < w[1]));
            assert!(live.iter().any(|n| &**n == "n3"));
            assert!(live.len() <= 6);
            let incs_after: Vec<Option<u64>> = live
                .iter()
                .map(|n| m.node(n).map(|i| i.incarnation))
                .collect();
            let same = before == live && incs == incs_after;
            assert_eq!(changed, !same);
            assert_eq!(m.generation() != g, changed);
        }
    }
}
