//! Deterministic tests of several shards' routers wired together by
//! in-memory inboxes, with virtual time and no sockets (quinn-proto's
//! model). The order in which shards take their turns is drawn from a
//! seeded RNG, so each seed is one reproducible interleaving.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::*;
use crate::engine::cluster::members::MemberWrite;
use crate::engine::durable::DurableEvent;
use crate::engine::namespace::Namespaces;
use crate::engine::wire::json;
use crate::engine::wire::publication::PubData;
use crate::engine::ws::handshake::WireFormat;

/// Unix milliseconds at the simulation's time origin.
pub(super) const UNIX_ORIGIN_MS: u64 = 1_800_000_000_000;

/// A connection in the simulation: its shard and its slot there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct SimConn {
    pub shard: usize,
    pub conn: ConnRef,
}

/// What a connection saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Seen {
    /// A reply, as the JSON form encodes it.
    Reply(Value),
    /// A push, as the JSON form encodes it.
    Push(Value),
    /// The server closed the connection.
    Closed(CloseReason),
}

/// What the routers asked of the story store and the durable sink.
#[derive(Debug, Default)]
pub(super) struct StoreLog {
    /// `story_write`s: (home shard, channel, sections touched, active).
    pub writes: Vec<(usize, String, Vec<String>, bool)>,
    /// `story_load`s: (home shard, channel).
    pub loads: Vec<(usize, String)>,
    /// `story_evicted`s: (home shard, channel).
    pub evicted: Vec<(usize, String)>,
    /// Durable events, in the order the homes emitted them.
    pub durable: Vec<DurableEvent>,
    /// The `durable_ack` tokens of the events taken: (home shard, token).
    pub durable_acks: Vec<(usize, u64)>,
    /// Stored-history writes asked for, in order.
    pub persists: Vec<SimPersist>,
    /// Stored-history read-backs asked for: (home shard, channel).
    pub tail_loads: Vec<(usize, Arc<str>)>,
    /// Refuse stored-history requests (the cluster queue is full).
    pub refuse_store: bool,
    /// Refuse durable events (the sink's queue and spill are full).
    pub refuse_durable: bool,
    /// Writes to the presence bucket asked for, in order.
    pub member_writes: Vec<MemberWrite>,
    /// `history_remove` purges asked for: (channel, floor).
    pub purges: Vec<(Arc<str>, Position)>,
}

/// A stored-history write: (home shard, channel, epoch, offset, body).
pub(super) type SimPersist = (usize, Arc<str>, u64, u64, Vec<u8>);

/// One shard's side of the wiring.
pub(super) struct ShardOut<'a> {
    shard: usize,
    inboxes: &'a mut [VecDeque<(usize, Msg)>],
    cap: usize,
    seen: &'a mut HashMap<SimConn, Vec<Seen>>,
    frames: &'a mut HashMap<SimConn, usize>,
    store: &'a mut StoreLog,
    /// This node's side of a simulated cluster, if it is in one.
    net: Option<&'a mut super::sim_cluster::NodeNet>,
}

fn decode_one(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("server JSON is valid")
}

impl Output for ShardOut<'_> {
    fn reply(&mut self, conn: ConnRef, id: u32, body: ReplyBody<'_>) {
        if id == SERVER_INITIATED {
            return; // no one asked
        }
        let mut buf = Vec::new();
        json::write_reply(&mut buf, id, body);
        let c = SimConn {
            shard: self.shard,
            conn,
        };
        self.seen
            .entry(c)
            .or_default()
            .push(Seen::Reply(decode_one(&buf)));
    }

    fn deliver(&mut self, subs: &[Subscriber], frames: &mut LocalPub<'_>, _: &SharedPub) {
        let frame = frames.frame(WireFormat::Json, false);
        // A small unmasked text frame: 2-byte header, or 4 with a 16-bit
        // length.
        let payload = if frame[1] == 126 {
            &frame[4..]
        } else {
            &frame[2..]
        };
        // One frame may hold several pushes, one JSON object a line.
        let pushes: Vec<Value> = payload.split(|&b| b == b'\n').map(decode_one).collect();
        for s in subs {
            let c = SimConn {
                shard: self.shard,
                conn: s.conn,
            };
            *self.frames.entry(c).or_default() += 1;
            let seen = self.seen.entry(c).or_default();
            seen.extend(pushes.iter().cloned().map(Seen::Push));
        }
    }

    fn server_push(&mut self, conn: ConnRef, channel: &str, body: ReplyBody<'_>) {
        let mut buf = Vec::new();
        json::write_reply(&mut buf, 0, body);
        let mut v = decode_one(&buf);
        let (kind, body) = match v.as_object_mut().and_then(|o| o.remove("subscribe")) {
            Some(b) => ("subscribe", b),
            None => ("unsubscribe", serde_json::json!({})),
        };
        let c = SimConn {
            shard: self.shard,
            conn,
        };
        let push = serde_json::json!({"push": {"channel": channel, kind: body}});
        self.seen.entry(c).or_default().push(Seen::Push(push));
    }

    fn close(&mut self, conn: ConnRef, reason: CloseReason) {
        let c = SimConn {
            shard: self.shard,
            conn,
        };
        self.seen.entry(c).or_default().push(Seen::Closed(reason));
    }

    fn send(&mut self, to: usize, msg: Msg) -> Result<(), Msg> {
        let q = &mut self.inboxes[to];
        if msg.refusable() && q.len() >= self.cap {
            return Err(msg);
        }
        q.push_back((self.shard, msg));
        Ok(())
    }

    fn collab_push(&mut self, conn: ConnRef, channel: &str, event: &DirectedEvent) {
        let mut w = crate::engine::wire::FrameWriter::new();
        w.begin(WireFormat::Json);
        match event {
            DirectedEvent::Promoted { .. } => w.promoted(channel),
            DirectedEvent::Conflict {
                section,
                version,
                overwritten,
                by,
            } => w.conflict(channel, section, *version, overwritten, by),
            DirectedEvent::Queue { position } => w.queue_position(channel, *position as u32),
        }
        let payload = w.finish_with(|_, p| p.to_vec()).expect("one push");
        let c = SimConn {
            shard: self.shard,
            conn,
        };
        let push = decode_one(&payload);
        self.seen.entry(c).or_default().push(Seen::Push(push));
    }

    fn story_write(&mut self, w: StoryWriteReq<'_>) {
        self.store.writes.push((
            self.shard,
            w.channel.to_string(),
            w.touched.iter().map(|t| t.to_string()).collect(),
            w.active,
        ));
    }

    fn story_load(&mut self, channel: &Arc<str>) {
        self.store.loads.push((self.shard, channel.to_string()));
    }

    fn story_evicted(&mut self, channel: &Arc<str>) {
        self.store.evicted.push((self.shard, channel.to_string()));
    }

    fn durable(&mut self, event: DurableEvent, ack: Option<u64>) -> bool {
        if self.store.refuse_durable {
            return false;
        }
        self.store.durable.push(event);
        if let Some(t) = ack {
            self.store.durable_acks.push((self.shard, t));
        }
        true
    }

    fn durable_room(&mut self, _channel: &Arc<str>) -> bool {
        !self.store.refuse_durable
    }

    fn send_remote(&mut self, to: usize, channel: &Arc<str>, msg: Msg) -> Result<(), Msg> {
        let net = self.net.as_mut().expect("remote sends only in a cluster");
        net.send(to, channel, msg)
    }

    fn broadcast(&mut self, channel: &Arc<str>, what: Broadcast<'_>) -> bool {
        let net = self.net.as_mut().expect("broadcasts only in a cluster");
        net.broadcast(channel, what)
    }

    fn watch(&mut self, channel: &Arc<str>, on: bool) {
        let net = self.net.as_mut().expect("watches only in a cluster");
        net.watch(channel, on);
    }

    fn persist(
        &mut self,
        _ns: usize,
        channel: &Arc<str>,
        epoch: u64,
        offset: u64,
        body: Vec<u8>,
    ) -> bool {
        if self.store.refuse_store {
            return false;
        }
        self.store
            .persists
            .push((self.shard, channel.clone(), epoch, offset, body));
        true
    }

    fn load_stored(&mut self, _ns: usize, channel: &Arc<str>) -> bool {
        if self.store.refuse_store {
            return false;
        }
        self.store.tail_loads.push((self.shard, channel.clone()));
        true
    }

    fn purge_stored(&mut self, _ns: usize, channel: &Arc<str>, floor: Position) -> bool {
        if self.store.refuse_store {
            return false;
        }
        self.store.purges.push((channel.clone(), floor));
        true
    }

    fn mirror_members(&mut self, write: MemberWrite) -> bool {
        if self.store.refuse_store {
            return false;
        }
        self.store.member_writes.push(write);
        true
    }
}

/// Several routers, their inboxes, and a virtual clock.
pub(super) struct Sim {
    pub routers: Vec<Router>,
    inboxes: Vec<VecDeque<(usize, Msg)>>,
    /// Inbox bound for refusable messages.
    pub cap: usize,
    pub seen: HashMap<SimConn, Vec<Seen>>,
    /// Frames delivered to each connection.
    pub frames: HashMap<SimConn, usize>,
    /// What the routers asked of the story store and the durable sink.
    pub store: StoreLog,
    pub now: Instant,
    users: HashMap<SimConn, String>,
    next_idx: Vec<u32>,
    rng: StdRng,
    next_id: u32,
    /// This node's side of a simulated cluster, if it is in one.
    pub(super) net: Option<super::sim_cluster::NodeNet>,
    /// Prefix of this node's client ids (distinct per simulated node).
    pub(super) client_prefix: String,
}

impl Sim {
    pub fn new(shards: usize, seed: u64) -> Self {
        Self::with_namespaces(shards, seed, Namespaces::default())
    }

    /// The settings of every router in a simulation.
    pub fn config(shard: usize, shards: usize, namespaces: &Arc<Namespaces>) -> RouterConfig {
        RouterConfig {
            shard,
            shards,
            max_subscriptions: 64,
            channel_idle_ttl: Duration::from_secs(300),
            compression: None,
            expected_connections: 0,
            namespaces: namespaces.clone(),
            history_memory_limit: 64 << 20,
            recovery_max_publications: 300,
            history_max_publications: 300,
            idempotency_window: Duration::from_secs(300),
            idempotency_max_keys: 10_000,
            story_table: CollabConfig::default(),
            story_store: false,
            unix_origin_ms: UNIX_ORIGIN_MS,
        }
    }

    pub fn with_namespaces(shards: usize, seed: u64, namespaces: Namespaces) -> Self {
        Self::with_config(shards, seed, namespaces, |_| {})
    }

    /// A simulation whose router settings `tweak` adjusts.
    pub fn with_config(
        shards: usize,
        seed: u64,
        namespaces: Namespaces,
        tweak: impl Fn(&mut RouterConfig),
    ) -> Self {
        let now = Instant::now();
        let namespaces = Arc::new(namespaces);
        let routers = (0..shards)
            .map(|i| {
                let mut cfg = Self::config(i, shards, &namespaces);
                tweak(&mut cfg);
                Router::new(&cfg, seed ^ (i as u64) << 56, now)
            })
            .collect();
        Self {
            routers,
            inboxes: (0..shards).map(|_| VecDeque::new()).collect(),
            cap: usize::MAX,
            seen: HashMap::new(),
            frames: HashMap::new(),
            store: StoreLog::default(),
            now,
            users: HashMap::new(),
            next_idx: vec![0; shards],
            rng: StdRng::seed_from_u64(seed),
            next_id: 1,
            net: None,
            client_prefix: String::new(),
        }
    }

    /// A new connection on `shard`.
    pub fn connect(&mut self, shard: usize) -> SimConn {
        let idx = self.next_idx[shard];
        self.next_idx[shard] += 1;
        SimConn {
            shard,
            conn: ConnRef { idx, generation: 1 },
        }
    }

    /// A new connection on `shard` of user `user`.
    pub fn connect_as(&mut self, shard: usize, user: &str) -> SimConn {
        let c = self.connect(shard);
        self.users.insert(c, user.to_string());
        c
    }

    /// Who `c` is: its client id and user.
    pub fn who(&self, c: SimConn) -> ClientInfo {
        ClientInfo {
            client: format!("{}c{}.{}", self.client_prefix, c.shard, c.conn.idx).into(),
            user: self.users.get(&c).map_or("", String::as_str).into(),
            info: None,
        }
    }

    /// Runs `f` on `shard`'s router with that shard's output.
    pub(super) fn on(
        &mut self,
        shard: usize,
        f: impl FnOnce(&mut Router, &mut ShardOut<'_>, Instant),
    ) {
        let mut out = ShardOut {
            shard,
            inboxes: &mut self.inboxes,
            cap: self.cap,
            seen: &mut self.seen,
            frames: &mut self.frames,
            store: &mut self.store,
            net: self.net.as_mut(),
        };
        f(&mut self.routers[shard], &mut out, self.now);
    }

    pub(super) fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    pub fn subscribe(&mut self, c: SimConn, channel: &str) -> u32 {
        self.subscribe_from(c, channel, None)
    }

    /// `subscribe` recovering from `since`.
    pub fn subscribe_from(&mut self, c: SimConn, channel: &str, since: Option<Position>) -> u32 {
        let id = self.id();
        let who = self.who(c);
        let req = SubscribeRequest {
            channel,
            recover_since: since,
        };
        self.on(c.shard, |r, out, now| {
            r.subscribe(now, c.conn, id, req, &Who::new(|| who.clone()), out)
        });
        id
    }

    pub fn unsubscribe(&mut self, c: SimConn, channel: &str) -> u32 {
        let id = self.id();
        let who = self.who(c);
        self.on(c.shard, |r, out, now| {
            r.unsubscribe(now, c.conn, id, channel, &Who::new(|| who.clone()), out)
        });
        id
    }

    pub fn publish(&mut self, c: SimConn, channel: &str, json: &str) -> u32 {
        self.publish_key(c, channel, json, None)
    }

    /// `publish` with an idempotency key.
    pub fn publish_key(&mut self, c: SimConn, channel: &str, json: &str, key: Option<&str>) -> u32 {
        self.publish_with(c, channel, json, key, false)
    }

    /// `publish` with an idempotency key and `durable_ack`.
    pub fn publish_with(
        &mut self,
        c: SimConn,
        channel: &str,
        json: &str,
        key: Option<&str>,
        durable_ack: bool,
    ) -> u32 {
        let id = self.id();
        let data = PubData {
            bytes: bytes::Bytes::copy_from_slice(json.as_bytes()),
            is_json: true,
        };
        let who = self.who(c);
        self.on(c.shard, |r, out, now| {
            r.publish(
                now,
                c.conn,
                id,
                channel,
                data,
                key,
                durable_ack,
                &Who::new(|| who.clone()),
                out,
            )
        });
        id
    }

    /// The sink's outcome for durable wait `token` at `shard`.
    pub fn durable_confirmed(&mut self, shard: usize, token: u64, ok: bool) {
        self.on(shard, |r, out, now| {
            r.durable_confirmed(now, token, ok, out)
        });
    }

    /// `history`.
    pub fn history(
        &mut self,
        c: SimConn,
        channel: &str,
        limit: Option<u32>,
        since: Option<Position>,
        reverse: bool,
    ) -> u32 {
        let id = self.id();
        self.on(c.shard, |r, out, now| {
            r.history(now, c.conn, id, channel, limit, since, reverse, out)
        });
        id
    }

    /// The server API's `history_remove`, asked through `c`'s shard (its
    /// answer comes to `c` as a reply).
    pub fn history_remove(&mut self, c: SimConn, channel: &str) -> u32 {
        let id = self.id();
        let msg = Msg::HistoryRemove {
            channel: Arc::from(channel),
            from: c.shard,
            reply_to: ReplyTo {
                conn: c.conn,
                cmd_id: id,
            },
        };
        self.on(c.shard, |r, out, now| r.request(now, msg, out));
        id
    }

    /// `presence` or `presence_stats`.
    pub fn presence(&mut self, c: SimConn, channel: &str, stats: bool) -> u32 {
        let id = self.id();
        self.on(c.shard, |r, out, now| {
            r.presence_query(now, c.conn, id, channel, stats, out)
        });
        id
    }

    /// `presence_state`.
    pub fn state(&mut self, c: SimConn, channel: &str, state: &str, ttl_s: Option<u64>) -> u32 {
        let id = self.id();
        let who = self.who(c);
        let ttl = ttl_s.map(Duration::from_secs);
        self.on(c.shard, |r, out, now| {
            r.presence_state(
                now,
                c.conn,
                id,
                channel,
                state,
                ttl,
                &Who::new(|| who.clone()),
                out,
            )
        });
        id
    }

    pub fn close(&mut self, c: SimConn) {
        let who = self.who(c);
        self.on(c.shard, |r, out, now| {
            r.conn_closed(now, c.conn, &Who::new(|| who.clone()), out)
        });
    }

    /// Moves virtual time on by `d`, in steps no longer than the routers'
    /// next deadlines, running every timer that comes due and the messages
    /// it causes.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .routers
                .iter()
                .map(Router::poll_timeout)
                .min()
                .expect("at least one router");
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            for shard in 0..self.routers.len() {
                if self.routers[shard].poll_timeout() <= self.now {
                    self.on(shard, |r, out, now| r.handle_timeout(now, out));
                }
            }
            self.run();
        }
        self.now = end;
    }

    /// Delivers one message to a randomly chosen shard with a non-empty
    /// inbox. Returns false when every inbox is empty.
    pub fn step(&mut self) -> bool {
        let busy: Vec<usize> = (0..self.inboxes.len())
            .filter(|&i| !self.inboxes[i].is_empty())
            .collect();
        if busy.is_empty() {
            return false;
        }
        let shard = busy[self.rng.random_range(0..busy.len())];
        let (_, msg) = self.inboxes[shard].pop_front().expect("non-empty");
        self.on(shard, |r, out, now| r.handle(now, msg, out));
        true
    }

    /// Runs until every inbox is empty, then sends the loss notices owed.
    pub fn run(&mut self) {
        loop {
            while self.step() {}
            if !self.pass_lost() {
                return;
            }
        }
    }

    /// Queues the loss notices owed; whether there were any.
    pub(super) fn pass_lost(&mut self) -> bool {
        let mut any = false;
        for from in 0..self.routers.len() {
            for to in 0..self.routers.len() {
                for channel in self.routers[from].take_lost(to) {
                    self.inboxes[to].push_back((from, Msg::Lost { channel }));
                    any = true;
                }
            }
        }
        any
    }

    /// Whether any shard has a message waiting.
    pub(super) fn busy(&self) -> bool {
        self.inboxes.iter().any(|q| !q.is_empty())
    }

    /// What `c` saw.
    pub fn seen(&self, c: SimConn) -> &[Seen] {
        self.seen.get(&c).map_or(&[], Vec::as_slice)
    }

    /// The reply to command `id` of `c`.
    pub fn reply(&self, c: SimConn, id: u32) -> &Value {
        self.seen(c)
            .iter()
            .find_map(|s| match s {
                Seen::Reply(v) if v["id"] == id => Some(v),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no reply to {id} for {c:?}: {:?}", self.seen(c)))
    }

    /// The offsets of the publications `c` received on `channel`.
    pub fn offsets(&self, c: SimConn, channel: &str) -> Vec<u64> {
        self.seen(c)
            .iter()
            .filter_map(|s| match s {
                Seen::Push(v) if v["push"]["channel"] == channel => {
                    v["push"]["pub"]["offset"].as_u64()
                }
                _ => None,
            })
            .collect()
    }
}

#[test]
fn every_subscriber_on_every_shard_sees_every_offset_once_in_order() {
    for seed in 0..20 {
        let mut sim = Sim::new(3, seed);
        let subs: Vec<SimConn> = (0..9).map(|i| sim.connect(i % 3)).collect();
        let pubs: Vec<SimConn> = (0..3).map(|i| sim.connect(i)).collect();
        let sub_ids: Vec<u32> = subs.iter().map(|&s| sim.subscribe(s, "room:1")).collect();
        sim.run();
        let mut ids = Vec::new();
        for round in 0..10 {
            for &p in &pubs {
                ids.push((p, sim.publish(p, "room:1", &format!("{round}"))));
                // Interleave: some messages move between publishes.
                for _ in 0..(seed % 4) {
                    sim.step();
                }
            }
        }
        sim.run();
        // Offsets 1..=30 handed out once each.
        let mut offsets: Vec<u64> = ids
            .iter()
            .map(|&(p, id)| sim.reply(p, id)["publish"]["offset"].as_u64().unwrap())
            .collect();
        offsets.sort();
        assert_eq!(offsets, (1..=30).collect::<Vec<_>>(), "seed {seed}");
        for (&s, &id) in subs.iter().zip(&sub_ids) {
            assert_eq!(sim.reply(s, id)["subscribe"]["offset"], 0);
            assert_eq!(
                sim.offsets(s, "room:1"),
                (1..=30).collect::<Vec<_>>(),
                "seed {seed} {s:?}"
            );
        }
    }
}

#[test]
fn late_subscriber_gets_its_position_then_exactly_what_follows() {
    for seed in 0..20 {
        let mut sim = Sim::new(2, seed);
        let early = sim.connect(0);
        let publisher = sim.connect(1);
        sim.subscribe(early, "feed");
        sim.run();
        for i in 0..5 {
            sim.publish(publisher, "feed", &i.to_string());
        }
        let late = sim.connect(seed as usize % 2);
        let id = sim.subscribe(late, "feed");
        for i in 5..10 {
            sim.publish(publisher, "feed", &i.to_string());
            sim.step();
        }
        sim.run();
        let at = sim.reply(late, id)["subscribe"]["offset"].as_u64().unwrap();
        assert_eq!(
            sim.offsets(late, "feed"),
            ((at + 1)..=10).collect::<Vec<_>>(),
            "seed {seed}"
        );
        assert_eq!(sim.offsets(early, "feed"), (1..=10).collect::<Vec<_>>());
    }
}

#[test]
fn interest_follows_the_last_local_subscriber() {
    let mut sim = Sim::new(2, 1);
    // "a" lives on one shard; subscribe from the other.
    let home = home_shard("a", 2);
    let away = 1 - home;
    let c1 = sim.connect(away);
    let c2 = sim.connect(away);
    let p = sim.connect(home);
    sim.subscribe(c1, "a");
    sim.subscribe(c2, "a");
    sim.run();
    sim.publish(p, "a", "1");
    sim.run();
    let id = sim.unsubscribe(c1, "a");
    assert_eq!(sim.reply(c1, id)["unsubscribe"], serde_json::json!({}));
    sim.close(c2);
    sim.run();
    sim.publish(p, "a", "2");
    sim.run();
    assert_eq!(sim.offsets(c2, "a"), vec![1]);
    assert_eq!(
        sim.routers[away].local_channels(),
        0,
        "no local channel left"
    );
    // Resubscribing asks the home again and resumes from its position.
    let c3 = sim.connect(away);
    let id = sim.subscribe(c3, "a");
    sim.run();
    assert_eq!(sim.reply(c3, id)["subscribe"]["offset"], 2);
}

#[test]
fn refused_deliveries_make_subscribers_recover_with_3004() {
    let mut sim = Sim::new(2, 7);
    let home = home_shard("x", 2);
    let away = 1 - home;
    let s = sim.connect(away);
    let p = sim.connect(home);
    sim.subscribe(s, "x");
    sim.run();
    sim.cap = 2;
    for i in 0..5 {
        sim.publish(p, "x", &i.to_string());
    }
    sim.run();
    assert_eq!(sim.offsets(s, "x"), vec![1, 2]);
    assert_eq!(
        sim.seen(s).last(),
        Some(&Seen::Closed(CloseReason::InsufficientState))
    );
}

#[test]
fn invalid_channels_are_refused_with_109() {
    let mut sim = Sim::new(1, 0);
    let c = sim.connect(0);
    for bad in ["", "a b", "ns:", ":x"] {
        let id = sim.subscribe(c, bad);
        assert_eq!(sim.reply(c, id)["error"]["code"], 109);
        let id = sim.publish(c, bad, "1");
        assert_eq!(sim.reply(c, id)["error"]["code"], 109);
    }
}
