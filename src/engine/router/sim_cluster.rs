//! Deterministic tests of a cluster: several simulated nodes (each a
//! [`Sim`] of shards) joined by an in-memory "NATS" that keeps the order
//! of what one node sends another, delivers a channel's broadcasts only
//! to the nodes watching its subject, and can lose messages or go down.
//! The order in which nodes and shards take their turns is drawn from a
//! seeded RNG.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::sim::{Seen, Sim, SimConn};
use super::*;
use crate::engine::cluster::members::{MemberChange, StoredMember};
use crate::engine::cluster::membership::{Heartbeat, Membership};
use crate::engine::cluster::nodes::{HOME_SHARD, NodeTable, remote_addr, remote_parts};
use crate::engine::cluster::placement::Placement;
use crate::engine::cluster::stored::{StoreAnswer, StoreUnavailable, StoredPub};
use crate::engine::namespace::Namespaces;

/// What one node handed its NATS connection.
enum Packet {
    To {
        node: Arc<str>,
        channel: Arc<str>,
        to_shard: Option<usize>,
        msg: Msg,
    },
    Push {
        channel: Arc<str>,
        epoch: u64,
        push: Arc<SharedPub>,
    },
    Marker {
        channel: Arc<str>,
        position: Position,
    },
}

/// One node's side of the simulated NATS.
pub(crate) struct NodeNet {
    table: Arc<NodeTable>,
    outbox: Vec<Packet>,
    watching: HashMap<Arc<str>, usize>,
    /// Refuse everything refusable (the cluster queue is full).
    refuse: bool,
}

impl NodeNet {
    pub(super) fn send(&mut self, to: usize, channel: &Arc<str>, msg: Msg) -> Result<(), Msg> {
        if self.refuse && msg.refusable() {
            return Err(msg);
        }
        let (slot, shard) = remote_parts(to).expect("a remote address");
        let node = self.table.name(slot).expect("a known slot");
        self.outbox.push(Packet::To {
            node,
            channel: channel.clone(),
            to_shard: (shard != HOME_SHARD).then_some(shard as usize),
            msg,
        });
        Ok(())
    }

    pub(super) fn broadcast(&mut self, channel: &Arc<str>, what: Broadcast<'_>) -> bool {
        if self.refuse {
            return false;
        }
        self.outbox.push(match what {
            Broadcast::Push { epoch, push } => Packet::Push {
                channel: channel.clone(),
                epoch,
                push: push.clone(),
            },
            Broadcast::Marker(position) => Packet::Marker {
                channel: channel.clone(),
                position,
            },
        });
        true
    }

    pub(super) fn watch(&mut self, channel: &Arc<str>, on: bool) {
        let n = self.watching.entry(channel.clone()).or_default();
        if on {
            *n += 1;
        } else {
            *n = n.checked_sub(1).expect("unwatch after watch");
            if *n == 0 {
                self.watching.remove(channel);
            }
        }
    }
}

/// What each node received from the simulated NATS, by kind.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Received {
    pub pushes: usize,
    pub markers: usize,
    pub messages: usize,
}

/// Several nodes and the NATS between them.
pub(super) struct ClusterSim {
    pub nodes: Vec<Sim>,
    names: Vec<Arc<str>>,
    inbound: Vec<VecDeque<FromNode>>,
    /// Nodes that are down: they send and receive nothing.
    pub down: Vec<bool>,
    pub received: Vec<Received>,
    /// The simulated JetStream: each stored channel's messages, in order.
    pub stream: HashMap<Arc<str>, Vec<StoredPub>>,
    /// Floors `history_remove` left in the stream, by channel.
    pub floors: HashMap<Arc<str>, Position>,
    /// The presence bucket: members by channel and client.
    pub bucket: HashMap<Arc<str>, BTreeMap<Arc<str>, StoredMember>>,
    /// JetStream refuses (NATS down): writes and read-backs fail.
    pub stream_down: bool,
    rng: StdRng,
}

impl ClusterSim {
    /// `nodes` nodes of `shards` shards each, all live and linked.
    pub fn new(nodes: usize, shards: usize, seed: u64, namespaces: Namespaces) -> Self {
        let mut sims = Vec::new();
        let mut names = Vec::new();
        for n in 0..nodes {
            let mut sim =
                Sim::with_namespaces(shards, seed ^ ((n as u64 + 1) << 40), namespaces.clone());
            let name: Arc<str> = Arc::from(format!("node{n}"));
            let table = NodeTable::new();
            let view = ClusterView {
                self_node: name.clone(),
                nodes: table.clone(),
                request_timeout: Duration::from_secs(2),
            };
            for r in &mut sim.routers {
                r.join_cluster(view.clone());
            }
            sim.net = Some(NodeNet {
                table,
                outbox: Vec::new(),
                watching: HashMap::new(),
                refuse: false,
            });
            sim.client_prefix = format!("n{n}.");
            sims.push(sim);
            names.push(name);
        }
        let mut c = ClusterSim {
            nodes: sims,
            names,
            inbound: (0..nodes).map(|_| VecDeque::new()).collect(),
            down: vec![false; nodes],
            received: vec![Received::default(); nodes],
            stream: HashMap::new(),
            bucket: HashMap::new(),
            floors: HashMap::new(),
            stream_down: false,
            rng: StdRng::seed_from_u64(seed),
        };
        for n in 0..nodes {
            c.set_link(n, true);
        }
        let all: Vec<usize> = (0..nodes).collect();
        c.set_live(&all);
        c
    }

    /// Every live node's routers get the placement of `live` (each from
    /// its own membership, as heartbeats would build it).
    pub fn set_live(&mut self, live: &[usize]) {
        self.set_live_on(live, live);
    }

    /// Only nodes `on` learn that the live set is `live` (the others
    /// learn it later: heartbeats do not reach every node at once).
    pub fn set_live_on(&mut self, on: &[usize], live: &[usize]) {
        for &n in on {
            let mut m = Membership::new(self.names[n].clone(), 1, 3_000);
            for &o in live {
                if o != n {
                    let hb = Heartbeat {
                        node: self.names[o].clone(),
                        incarnation: 1,
                        shards: self.nodes[o].routers.len() as u16,
                        sent_ms: 0,
                    };
                    m.on_heartbeat(&hb, 0);
                }
            }
            let placement = Arc::new(Placement::new(&m));
            for shard in 0..self.nodes[n].routers.len() {
                let p = placement.clone();
                self.nodes[n].on(shard, |r, out, now| r.set_placement(now, p, out));
            }
        }
        self.pump();
    }

    /// Node `n`'s NATS connection comes up or goes down.
    pub fn set_link(&mut self, n: usize, up: bool) {
        for shard in 0..self.nodes[n].routers.len() {
            self.nodes[n].on(shard, |r, out, now| r.set_link(now, up, out));
        }
        self.pump();
    }

    /// Node `n`'s cluster queue refuses (or takes again) what it may.
    pub fn refuse(&mut self, n: usize, refuse: bool) {
        self.nodes[n].net.as_mut().expect("in a cluster").refuse = refuse;
    }

    /// The home node of `channel` (all nodes agree).
    pub fn home_node(&self, channel: &str) -> usize {
        let live: Vec<Arc<str>> = (0..self.names.len())
            .filter(|&n| !self.down[n])
            .map(|n| self.names[n].clone())
            .collect();
        let home = crate::engine::cluster::placement::home_node(channel, &live).unwrap();
        self.names.iter().position(|n| n == home).unwrap()
    }

    /// The first channel `<prefix>:<i>` whose home is node `n`.
    pub fn channel_homed_at(&self, prefix: &str, n: usize) -> String {
        (0..)
            .map(|i| format!("{prefix}:{i}"))
            .find(|ch| self.home_node(ch) == n)
            .expect("some channel is homed at every node")
    }

    /// Moves what each node sent to the nodes that get it, and answers
    /// what it asked of JetStream.
    fn pump(&mut self) {
        for n in 0..self.nodes.len() {
            let persists = std::mem::take(&mut self.nodes[n].store.persists);
            let loads = std::mem::take(&mut self.nodes[n].store.tail_loads);
            let member_writes = std::mem::take(&mut self.nodes[n].store.member_writes);
            let purges = std::mem::take(&mut self.nodes[n].store.purges);
            if self.down[n] {
                continue;
            }
            for w in member_writes {
                if self.stream_down {
                    let answer = StoreAnswer::MembersUnwritten { channel: w.channel };
                    self.inbound[n].push_back(FromNode::Stored(answer));
                    continue;
                }
                let b = self.bucket.entry(w.channel).or_default();
                if w.whole {
                    b.clear();
                }
                for c in w.changes {
                    match c {
                        MemberChange::Put(m) => b.insert(m.client.clone(), m),
                        MemberChange::Remove(client) => b.remove(&client),
                    };
                }
            }
            for (_, channel, _, offset, body) in persists {
                let ok = !self.stream_down;
                if ok {
                    let p = StoredPub::decode(&body).expect("a stored publication");
                    self.stream.entry(channel.clone()).or_default().push(p);
                }
                let answer = StoreAnswer::Persisted {
                    channel,
                    offset,
                    ok,
                };
                self.inbound[n].push_back(FromNode::Stored(answer));
            }
            // Writes before a purge are in the stream when it is purged
            // (one connection, in order).
            for (channel, floor) in purges {
                let ok = !self.stream_down;
                if ok {
                    if let Some(s) = self.stream.get_mut(&channel) {
                        s.retain(|p| p.epoch != floor.epoch || p.offset > floor.offset);
                    }
                    self.floors.insert(channel.clone(), floor);
                }
                let answer = StoreAnswer::Purged { channel, ok };
                self.inbound[n].push_back(FromNode::Stored(answer));
            }
            for (_, channel) in loads {
                let result = if self.stream_down {
                    Err(StoreUnavailable)
                } else {
                    Ok(self.stream.get(&channel).cloned().unwrap_or_default())
                };
                let members = match &result {
                    Ok(_) => self
                        .bucket
                        .get(&channel)
                        .map(|b| b.values().cloned().collect())
                        .unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                let floor = self.floors.get(&channel).copied();
                let answer = StoreAnswer::Loaded {
                    channel,
                    result,
                    floor,
                    members,
                };
                self.inbound[n].push_back(FromNode::Stored(answer));
            }
        }
        for n in 0..self.nodes.len() {
            let packets = std::mem::take(&mut self.nodes[n].net.as_mut().unwrap().outbox);
            if self.down[n] {
                continue;
            }
            for p in packets {
                match p {
                    Packet::To {
                        node,
                        channel,
                        to_shard,
                        mut msg,
                    } => {
                        let dest = self.names.iter().position(|x| *x == node).unwrap();
                        if self.down[dest] {
                            continue;
                        }
                        let net = self.nodes[dest].net.as_ref().unwrap();
                        let slot = net.table.slot(&self.names[n]).unwrap();
                        if let Some(from) = msg.from_mut() {
                            *from = remote_addr(slot, *from as u16);
                        }
                        self.inbound[dest].push_back(FromNode::Msg {
                            channel,
                            to_shard,
                            msg,
                        });
                    }
                    Packet::Push {
                        channel,
                        epoch,
                        push,
                    } => {
                        for d in self.watchers(n, &channel) {
                            self.inbound[d].push_back(FromNode::Delivery {
                                epoch,
                                push: push.clone(),
                            });
                        }
                    }
                    Packet::Marker { channel, position } => {
                        for d in self.watchers(n, &channel) {
                            self.inbound[d].push_back(FromNode::Marker {
                                channel: channel.clone(),
                                position,
                            });
                        }
                    }
                }
            }
        }
    }

    fn watchers(&self, from: usize, channel: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&d| d != from && !self.down[d])
            .filter(|&d| {
                self.nodes[d]
                    .net
                    .as_ref()
                    .unwrap()
                    .watching
                    .contains_key(channel)
            })
            .collect()
    }

    /// One step on a random node with work: a shard's message or one from
    /// the network. False when no node has work.
    pub fn step(&mut self) -> bool {
        let busy: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| !self.down[n] && (self.nodes[n].busy() || !self.inbound[n].is_empty()))
            .collect();
        if busy.is_empty() {
            return false;
        }
        let n = busy[self.rng.random_range(0..busy.len())];
        let local = self.nodes[n].busy();
        if local && (self.inbound[n].is_empty() || self.rng.random_bool(0.5)) {
            self.nodes[n].step();
        } else {
            let item = self.inbound[n].pop_front().expect("non-empty");
            let channel = item.channel();
            let r = &mut self.received[n];
            match &item {
                FromNode::Msg { .. } => r.messages += 1,
                FromNode::Delivery { .. } => r.pushes += 1,
                FromNode::Marker { .. } => r.markers += 1,
                FromNode::Stored(_) => {}
            }
            let shard = home_shard(channel, self.nodes[n].routers.len());
            self.nodes[n].on(shard, |r, out, now| r.handle_remote(now, item, out));
        }
        self.pump();
        true
    }

    /// Runs node `n` alone until it has no work: its shards' messages and
    /// what arrived from the network, in order; what it sends is moved.
    pub fn run_node(&mut self, n: usize) {
        loop {
            while self.nodes[n].step() {
                self.pump();
            }
            let Some(item) = self.inbound[n].pop_front() else {
                return;
            };
            let shard = home_shard(item.channel(), self.nodes[n].routers.len());
            self.nodes[n].on(shard, |r, out, now| r.handle_remote(now, item, out));
            self.pump();
        }
    }

    /// Runs until no node has work (loss notices included).
    pub fn run(&mut self) {
        loop {
            while self.step() {}
            let mut any = false;
            for n in 0..self.nodes.len() {
                if !self.down[n] {
                    any |= self.nodes[n].pass_lost();
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Moves virtual time on by `d` on every node, running timers.
    pub fn advance(&mut self, d: Duration) {
        let end = self.nodes[0].now + d;
        loop {
            let next = (0..self.nodes.len())
                .filter(|&n| !self.down[n])
                .flat_map(|n| self.nodes[n].routers.iter().map(Router::poll_timeout))
                .min()
                .expect("a live node");
            if next > end {
                break;
            }
            for n in 0..self.nodes.len() {
                self.nodes[n].now = self.nodes[n].now.max(next);
                if self.down[n] {
                    continue;
                }
                for shard in 0..self.nodes[n].routers.len() {
                    if self.nodes[n].routers[shard].poll_timeout() <= self.nodes[n].now {
                        self.nodes[n].on(shard, |r, out, now| r.handle_timeout(now, out));
                    }
                }
            }
            self.pump();
            self.run();
        }
        for sim in &mut self.nodes {
            sim.now = end;
        }
    }

    /// A connection on `shard` of node `n`.
    pub fn connect(&mut self, n: usize, shard: usize) -> (usize, SimConn) {
        (n, self.nodes[n].connect(shard))
    }

    /// Runs `f` on node `n`'s simulation and moves what it sent.
    pub fn on<T>(&mut self, n: usize, f: impl FnOnce(&mut Sim) -> T) -> T {
        let t = f(&mut self.nodes[n]);
        self.pump();
        t
    }
}

type Conn = (usize, SimConn);

fn ns() -> Namespaces {
    Namespaces::default()
}

fn presence_ns() -> Namespaces {
    let room = crate::engine::namespace::NamespaceOptions {
        presence: true,
        join_leave: true,
        history_size: 100,
        history_ttl_ms: 600_000,
        recover: true,
        ..Default::default()
    };
    Namespaces::new(false, [("room", room)]).unwrap()
}

fn subscribe(c: &mut ClusterSim, (n, s): Conn, channel: &str) -> u32 {
    c.on(n, |sim| sim.subscribe(s, channel))
}

fn publish(c: &mut ClusterSim, (n, s): Conn, channel: &str, json: &str) -> u32 {
    c.on(n, |sim| sim.publish(s, channel, json))
}

fn offsets(c: &ClusterSim, (n, s): Conn, channel: &str) -> Vec<u64> {
    c.nodes[n].offsets(s, channel)
}

fn reply(c: &ClusterSim, (n, s): Conn, id: u32) -> Value {
    c.nodes[n].reply(s, id).clone()
}

fn closed(c: &ClusterSim, (n, s): Conn) -> Option<CloseReason> {
    c.nodes[n].seen(s).iter().find_map(|x| match x {
        Seen::Closed(r) => Some(*r),
        _ => None,
    })
}

use serde_json::Value;

#[test]
fn publishers_on_three_nodes_make_one_order_every_subscriber_sees() {
    for seed in 0..12 {
        let mut c = ClusterSim::new(3, 2, seed, ns());
        let subs: Vec<Conn> = (0..6).map(|i| c.connect(i % 3, i % 2)).collect();
        let pubs: Vec<Conn> = (0..3).map(|i| c.connect(i, (i + 1) % 2)).collect();
        let sub_ids: Vec<u32> = subs
            .iter()
            .map(|&s| subscribe(&mut c, s, "room:1"))
            .collect();
        c.run();
        let mut ids = Vec::new();
        for round in 0..20 {
            for &p in &pubs {
                ids.push((p, publish(&mut c, p, "room:1", &format!("{round}"))));
                for _ in 0..(seed % 5) {
                    c.step();
                }
            }
        }
        c.run();
        let mut got: Vec<u64> = ids
            .iter()
            .map(|&(p, id)| reply(&c, p, id)["publish"]["offset"].as_u64().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (1..=60).collect::<Vec<_>>(), "seed {seed}");
        for (&s, &id) in subs.iter().zip(&sub_ids) {
            assert_eq!(reply(&c, s, id)["subscribe"]["offset"], 0, "seed {seed}");
            assert_eq!(
                offsets(&c, s, "room:1"),
                (1..=60).collect::<Vec<_>>(),
                "seed {seed} {s:?}"
            );
        }
    }
}

#[test]
fn a_node_without_subscribers_receives_none_of_a_channels_traffic() {
    let mut c = ClusterSim::new(3, 2, 5, ns());
    // A channel homed on node 0, subscribed on node 1 only.
    let channel = c.channel_homed_at("feed", 0);
    let sub = c.connect(1, 0);
    let publisher = c.connect(0, 1);
    subscribe(&mut c, sub, &channel);
    c.run();
    let before = c.received.clone();
    for i in 0..50 {
        publish(&mut c, publisher, &channel, &i.to_string());
    }
    c.run();
    assert_eq!(offsets(&c, sub, &channel), (1..=50).collect::<Vec<_>>());
    // One push per publication to the interested node, none to the other.
    assert_eq!(c.received[1].pushes - before[1].pushes, 50);
    assert_eq!(c.received[2].pushes, 0);
    assert_eq!(c.received[2].markers, 0);
    assert_eq!(c.received[2].messages, 0);
    // The last subscriber leaves: its node stops listening.
    let id = c.on(1, |sim| sim.unsubscribe(sub.1, &channel));
    c.run();
    assert!(reply(&c, sub, id)["unsubscribe"].is_object());
    let pushes = c.received[1].pushes;
    publish(&mut c, publisher, &channel, "after");
    c.run();
    assert_eq!(c.received[1].pushes, pushes, "no interest, no traffic");
    assert_eq!(
        c.nodes[1]
            .routers
            .iter()
            .map(Router::relayed_channels)
            .sum::<usize>(),
        0
    );
}

#[test]
fn a_late_subscriber_on_another_node_starts_at_the_homes_position() {
    for seed in 0..10 {
        let mut c = ClusterSim::new(2, 2, seed, ns());
        let channel = c.channel_homed_at("late", 0);
        let early = c.connect(1, 0);
        let publisher = c.connect(0, 0);
        subscribe(&mut c, early, &channel);
        c.run();
        for i in 0..5 {
            publish(&mut c, publisher, &channel, &i.to_string());
        }
        let late = c.connect(1, 1);
        let id = subscribe(&mut c, late, &channel);
        for i in 5..10 {
            publish(&mut c, publisher, &channel, &i.to_string());
            c.step();
        }
        c.run();
        let at = reply(&c, late, id)["subscribe"]["offset"].as_u64().unwrap();
        assert_eq!(
            offsets(&c, late, &channel),
            ((at + 1)..=10).collect::<Vec<_>>(),
            "seed {seed}"
        );
        assert_eq!(offsets(&c, early, &channel), (1..=10).collect::<Vec<_>>());
    }
}

#[test]
fn recovery_history_and_presence_work_through_a_home_on_another_node() {
    let mut c = ClusterSim::new(3, 2, 9, presence_ns());
    let channel = c.channel_homed_at("room", 2);
    let a = c.connect(0, 0);
    let b = c.connect(1, 1);
    let pa = subscribe(&mut c, a, &channel);
    let pb = subscribe(&mut c, b, &channel);
    c.run();
    assert_eq!(reply(&c, a, pa)["subscribe"]["offset"], 0);
    assert_eq!(reply(&c, b, pb)["subscribe"]["offset"], 0);
    for i in 0..4 {
        publish(&mut c, b, &channel, &i.to_string());
    }
    c.run();
    // Presence from a third node sees both members.
    let q = c.connect(1, 0);
    let id = c.on(1, |sim| sim.presence(q.1, &channel, true));
    c.run();
    assert_eq!(reply(&c, q, id)["presence_stats"]["num_clients"], 2);
    // History from node 0.
    let id = c.on(0, |sim| sim.history(a.1, &channel, Some(10), None, false));
    c.run();
    assert_eq!(
        reply(&c, a, id)["history"]["publications"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let epoch = reply(&c, a, pa)["subscribe"]["epoch"].clone();
    // A new connection on node 0 recovers from offset 1.
    let r = c.connect(0, 1);
    let since = Position {
        epoch: u64::from_str_radix(epoch.as_str().expect("epoch"), 16).expect("hex epoch"),
        offset: 1,
    };
    let (v, offs) = recover_from(&mut c, r, &channel, since);
    assert_eq!(v["subscribe"]["recovered"], true, "{v}");
    assert_eq!(offs, vec![2, 3, 4]);
    publish(&mut c, a, &channel, "5");
    c.run();
    assert_eq!(offsets(&c, r, &channel), vec![5]);
}

#[test]
fn lost_broadcasts_make_remote_subscribers_recover_never_a_silent_gap() {
    let mut c = ClusterSim::new(2, 1, 3, ns());
    let channel = c.channel_homed_at("gap", 0);
    let sub = c.connect(1, 0);
    let publisher = c.connect(0, 0);
    subscribe(&mut c, sub, &channel);
    c.run();
    publish(&mut c, publisher, &channel, "1");
    c.run();
    c.refuse(0, true);
    publish(&mut c, publisher, &channel, "2");
    c.run();
    assert_eq!(offsets(&c, sub, &channel), vec![1]);
    assert_eq!(closed(&c, sub), None, "not yet known");
    c.refuse(0, false);
    // No further publication: the marker that follows the loss shows it.
    c.advance(Duration::from_millis(100));
    assert_eq!(closed(&c, sub), Some(CloseReason::InsufficientState));
}

#[test]
fn with_nats_down_requests_to_other_nodes_get_100_at_once() {
    let mut c = ClusterSim::new(2, 2, 4, ns());
    let channel = c.channel_homed_at("down", 0);
    let x = c.connect(1, 0);
    c.set_link(1, false);
    let p = publish(&mut c, x, &channel, "1");
    let s = subscribe(&mut c, x, &channel);
    c.run();
    assert_eq!(reply(&c, x, p)["error"]["code"], 100);
    assert_eq!(reply(&c, x, s)["error"]["code"], 100);
    // Up again: both work.
    c.set_link(1, true);
    let s = subscribe(&mut c, x, &channel);
    let p = publish(&mut c, x, &channel, "2");
    c.run();
    assert_eq!(reply(&c, x, s)["subscribe"]["offset"], 0);
    assert_eq!(reply(&c, x, p)["publish"]["offset"], 1);
    assert_eq!(offsets(&c, x, &channel), vec![1]);
}

#[test]
fn a_home_that_does_not_answer_gets_requests_answered_100_after_the_timeout() {
    let mut c = ClusterSim::new(2, 1, 6, ns());
    let channel = c.channel_homed_at("mute", 0);
    let x = c.connect(1, 0);
    c.down[0] = true;
    let p = publish(&mut c, x, &channel, "1");
    let s = subscribe(&mut c, x, &channel);
    c.run();
    assert!(c.nodes[1].seen(x.1).is_empty(), "waiting for the home");
    c.advance(Duration::from_secs(3));
    assert_eq!(reply(&c, x, p)["error"]["code"], 100);
    assert_eq!(reply(&c, x, s)["error"]["code"], 100);
    assert_eq!(c.nodes[1].routers[0].pending_remote(), 0);
}

#[test]
fn when_a_home_node_leaves_its_channels_rehome_and_subscribers_recover() {
    let mut c = ClusterSim::new(3, 2, 8, presence_ns());
    let channel = c.channel_homed_at("room", 2);
    let a = c.connect(0, 0);
    let gone = c.connect(2, 1);
    subscribe(&mut c, a, &channel);
    subscribe(&mut c, gone, &channel);
    c.run();
    publish(&mut c, a, &channel, "1");
    c.run();
    assert_eq!(offsets(&c, a, &channel), vec![1]);
    // Node 2 dies; the others' live sets drop it.
    c.down[2] = true;
    c.set_live(&[0, 1]);
    c.run();
    assert_eq!(closed(&c, a), Some(CloseReason::InsufficientState));
    // Resubscribing works against the new home, which counts only live
    // members.
    let b = c.connect(0, 1);
    let id = subscribe(&mut c, b, &channel);
    c.run();
    assert!(reply(&c, b, id)["subscribe"].is_object());
    let q = c.connect(1, 0);
    let id = c.on(1, |sim| sim.presence(q.1, &channel, true));
    c.run();
    assert_eq!(reply(&c, q, id)["presence_stats"]["num_clients"], 1);
}

#[test]
fn members_of_a_node_that_leaves_leave_presence_at_the_home() {
    let mut c = ClusterSim::new(3, 1, 2, presence_ns());
    let channel = c.channel_homed_at("room", 0);
    let a = c.connect(0, 0);
    let b = c.connect(1, 0);
    let z = c.connect(2, 0);
    for x in [a, b, z] {
        subscribe(&mut c, x, &channel);
    }
    c.run();
    let id = c.on(0, |sim| sim.presence(a.1, &channel, true));
    c.run();
    assert_eq!(reply(&c, a, id)["presence_stats"]["num_clients"], 3);
    c.down[2] = true;
    c.set_live(&[0, 1]);
    c.run();
    let id = c.on(0, |sim| sim.presence(a.1, &channel, true));
    c.run();
    assert_eq!(reply(&c, a, id)["presence_stats"]["num_clients"], 2);
    assert_eq!(closed(&c, a), None, "the home did not move");
}

fn stored_ns() -> Namespaces {
    let feed = crate::engine::namespace::NamespaceOptions {
        history_size: 100,
        history_ttl_ms: 600_000,
        recover: true,
        history_backend: crate::engine::namespace::HistoryBackend::Jetstream,
        ..Default::default()
    };
    Namespaces::new(false, [("feed", feed)]).unwrap()
}

/// Publishes `range` (each its own number as data) one at a time, each
/// accepted at that offset.
fn publish_each(
    c: &mut ClusterSim,
    publisher: Conn,
    channel: &str,
    range: std::ops::RangeInclusive<u64>,
    seed: u64,
) {
    for i in range {
        let id = publish(c, publisher, channel, &i.to_string());
        c.run();
        assert_eq!(
            reply(c, publisher, id)["publish"]["offset"],
            i,
            "seed {seed}"
        );
    }
}

/// A subscribe on `conn` recovering from `since`: the reply and the
/// offsets of the publications it recovered.
fn recover_from(
    c: &mut ClusterSim,
    (n, s): Conn,
    channel: &str,
    since: Position,
) -> (Value, Vec<u64>) {
    let id = c.on(n, |sim| sim.subscribe_from(s, channel, Some(since)));
    c.run();
    let v = reply(c, (n, s), id);
    let offs = v["subscribe"]["publications"]
        .as_array()
        .map(|a| a.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default();
    (v, offs)
}

fn hex_epoch(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().expect("epoch"), 16).expect("hex epoch")
}

#[test]
fn a_stored_channel_outlives_its_home_and_its_clients_recover_on_another_node() {
    for seed in 0..8 {
        let mut c = ClusterSim::new(3, 2, seed, stored_ns());
        let channel = c.channel_homed_at("feed", 2);
        let victim = c.connect(2, 0);
        let publisher = c.connect(0, 1);
        let id = subscribe(&mut c, victim, &channel);
        c.run();
        let epoch = reply(&c, victim, id)["subscribe"]["epoch"].clone();
        for i in 1..=5 {
            publish(&mut c, publisher, &channel, &i.to_string());
        }
        c.run();
        assert_eq!(
            offsets(&c, victim, &channel),
            vec![1, 2, 3, 4, 5],
            "seed {seed}"
        );
        assert_eq!(
            c.stream[channel.as_str()].len(),
            5,
            "written before delivered"
        );
        c.down[2] = true;
        c.set_live(&[0, 1]);
        c.run();
        publish_each(&mut c, publisher, &channel, 6..=8, seed);
        // The victim's client recovers on node 1 from offset 5.
        let back = c.connect(1, 1);
        let since = Position {
            epoch: hex_epoch(&epoch),
            offset: 5,
        };
        let id = c.on(1, |sim| sim.subscribe_from(back.1, &channel, Some(since)));
        c.run();
        let v = reply(&c, back, id);
        assert_eq!(v["subscribe"]["recovered"], true, "seed {seed}: {v}");
        assert_eq!(v["subscribe"]["epoch"], epoch, "seed {seed}: {v}");
        let offs: Vec<u64> = v["subscribe"]["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offs, vec![6, 7, 8], "seed {seed}");
    }
}

#[test]
fn a_failed_write_is_answered_100_delivers_nothing_and_the_channel_goes_on() {
    let mut c = ClusterSim::new(2, 2, 4, stored_ns());
    let channel = c.channel_homed_at("feed", 0);
    let local = c.connect(0, 1);
    let remote = c.connect(1, 0);
    subscribe(&mut c, local, &channel);
    subscribe(&mut c, remote, &channel);
    c.run();
    let id = publish(&mut c, local, &channel, "1");
    c.run();
    assert_eq!(reply(&c, local, id)["publish"]["offset"], 1);
    c.stream_down = true;
    let id = publish(&mut c, local, &channel, "2");
    c.run();
    assert_eq!(reply(&c, local, id)["error"]["code"], 100);
    c.stream_down = false;
    let id = publish(&mut c, local, &channel, "3");
    c.run();
    assert_eq!(
        reply(&c, local, id)["publish"]["offset"],
        2,
        "the failed one took no offset"
    );
    for sub in [local, remote] {
        assert_eq!(offsets(&c, sub, &channel), vec![1, 2]);
        assert_eq!(closed(&c, sub), None, "nothing was lost, nobody recovers");
    }
    let kept: Vec<u64> = c.stream[channel.as_str()]
        .iter()
        .map(|p| p.offset)
        .collect();
    assert_eq!(kept, vec![1, 2]);
}

#[test]
fn a_write_stored_after_its_failure_was_reported_is_delivered_not_lost() {
    // The write's acknowledgement was lost (timeout), but JetStream kept
    // it: the reload finds it and delivers it in order.
    let mut c = ClusterSim::new(1, 1, 5, stored_ns());
    let channel = "feed:x";
    let sub = c.connect(0, 0);
    subscribe(&mut c, sub, channel);
    c.run();
    let id = publish(&mut c, sub, channel, "1");
    // Keep the write, drop its answer: the home times it out.
    c.pump();
    c.inbound[0].retain(|m| !matches!(m, FromNode::Stored(StoreAnswer::Persisted { .. })));
    c.advance(STORE_TIMEOUT + Duration::from_secs(1));
    c.run();
    assert_eq!(reply(&c, sub, id)["error"]["code"], 100);
    assert_eq!(
        offsets(&c, sub, channel),
        vec![1],
        "delivered after the read-back"
    );
    let id = publish(&mut c, sub, channel, "2");
    c.run();
    assert_eq!(reply(&c, sub, id)["publish"]["offset"], 2);
    assert_eq!(offsets(&c, sub, channel), vec![1, 2]);
    assert_eq!(closed(&c, sub), None);
}

#[test]
fn a_delivery_that_overtakes_a_subscribe_answer_is_added_to_its_recovery() {
    // The answer travels on the home node's subject, deliveries on the
    // channel's: on the way to the relay a later delivery can arrive first.
    answer_and_delivery_cross(false);
}

#[test]
fn a_subscribe_answer_ahead_of_deliveries_sent_before_it_waits_for_them() {
    // The mirror case: the home published 4 and then answered at 4, and
    // the answer reached the relay before delivery 4.
    answer_and_delivery_cross(true);
}

/// A client on node 1 recovers from offset 2 of a channel homed on node 0
/// (missing 3) while 4 is published; the home's answer and delivery 4
/// reach node 1 in the opposite order to the one they were sent in
/// (`published_first`: 4 went out before the answer, at offset 4; else
/// after it, at offset 3). Either way the client gets 3 and 4 in its
/// recovery, then 5 live, once.
fn answer_and_delivery_cross(published_first: bool) {
    let mut c = ClusterSim::new(2, 1, 11, presence_ns());
    let channel = c.channel_homed_at("room", 0);
    let publisher = c.connect(0, 0);
    let first = c.connect(1, 0);
    let id = subscribe(&mut c, first, &channel);
    c.run();
    let epoch = reply(&c, first, id)["subscribe"]["epoch"].clone();
    publish_each(&mut c, publisher, &channel, 1..=3, 11);
    assert_eq!(offsets(&c, first, &channel), vec![1, 2, 3]);
    let second = c.connect(1, 0);
    let since = Position {
        epoch: hex_epoch(&epoch),
        offset: 2,
    };
    let id = c.on(1, |sim| sim.subscribe_from(second.1, &channel, Some(since)));
    c.run_node(1);
    if published_first {
        publish(&mut c, publisher, &channel, "4");
        c.run_node(0); // the answer, at offset 4
    } else {
        c.run_node(0); // the answer, at offset 3
        publish(&mut c, publisher, &channel, "4");
        c.run_node(0);
    }
    let answer = c.inbound[1]
        .iter()
        .position(|m| matches!(m, FromNode::Msg { .. }))
        .expect("the answer is on its way");
    let delivery = c.inbound[1]
        .iter()
        .position(|m| matches!(m, FromNode::Delivery { .. }))
        .expect("the delivery is on its way");
    assert_eq!(delivery < answer, published_first);
    c.inbound[1].swap(answer, delivery);
    c.run();
    let v = reply(&c, second, id);
    assert_eq!(v["subscribe"]["recovered"], true, "{v}");
    assert_eq!(v["subscribe"]["offset"], 4, "{v}");
    let offs: Vec<u64> = v["subscribe"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offs,
        vec![3, 4],
        "what it missed, and what crossed the answer"
    );
    assert_eq!(offsets(&c, first, &channel), vec![1, 2, 3, 4]);
    publish(&mut c, publisher, &channel, "5");
    c.run();
    assert_eq!(offsets(&c, second, &channel), vec![5], "then live, once");
    assert_eq!(closed(&c, second), None);
}

/// A channel's home moving between nodes: who keeps its subscribers.
mod moves;

#[test]
fn a_durable_publication_through_another_node_carries_its_publisher_to_the_homes_event() {
    for backend in [
        crate::engine::namespace::HistoryBackend::Memory,
        crate::engine::namespace::HistoryBackend::Jetstream,
    ] {
        let feed = crate::engine::namespace::NamespaceOptions {
            history_size: 100,
            history_ttl_ms: 600_000,
            recover: true,
            history_backend: backend,
            durable: true,
            ..Default::default()
        };
        let ns = Namespaces::new(false, [("feed", feed)]).unwrap();
        let mut c = ClusterSim::new(3, 2, 41, ns);
        let channel = c.channel_homed_at("feed", 2);
        let ann = (0, c.on(0, |sim| sim.connect_as(1, "ann")));
        publish_each(&mut c, ann, &channel, 1..=3, 41);
        let events: Vec<(u64, String)> = c.nodes[2]
            .store
            .durable
            .iter()
            .filter_map(|e| match e {
                crate::engine::durable::DurableEvent::Publication(p) => {
                    Some((p.offset, p.user.to_string()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            events,
            vec![(1, "ann".into()), (2, "ann".into()), (3, "ann".into())],
            "{backend:?}: made once each, at the home, with the publisher"
        );
        for n in [0, 1] {
            assert!(c.nodes[n].store.durable.is_empty(), "{backend:?}: node {n}");
        }
    }
}
