//! Three nodes joined by a real `nats-server` on loopback: one order per
//! channel whichever node accepted a publication, interest routing (a node
//! without subscribers gets none of a channel's traffic), presence across
//! nodes, and the answers clients get while NATS is down — all read as raw
//! frames.

mod common;

use std::time::{Duration, Instant};

use common::nats_server::NatsServer;
use common::raw_json::RawJson;
use common::{Opts, Server, api_post};
use serde_json::json;

/// The namespaces every node runs.
const CONFIG: &str = r#"
shards = 2
# The publishers here send thousands of commands a second.
max_commands_per_second = 0

[[namespace]]
name = "chat"
history_size = 100
history_ttl = "60s"
recover = true

[[namespace]]
name = "room"
presence = true
join_leave = true

# History in JetStream: written before delivery, read back by a new home.
[[namespace]]
name = "feed"
history_size = 1000
history_ttl = "300s"
recover = true
history_backend = "jetstream"

# History in JetStream and presence: members kept in the presence bucket.
[[namespace]]
name = "lobby"
history_size = 100
history_ttl = "300s"
recover = true
presence = true
join_leave = true
history_backend = "jetstream"
"#;

/// The server API key of every node.
const API_KEY: &str = "cluster-test-key";

/// Starts `n` nodes named `n0`… with [`CONFIG`] on the cluster of `nats`,
/// and waits until each sees all of them.
fn cluster(nats: &NatsServer, n: usize, test: &str) -> Vec<Server> {
    cluster_with(nats, n, test, &[])
}

/// [`cluster`], with more environment for every node.
fn cluster_with(nats: &NatsServer, n: usize, test: &str, env: &[(&str, &str)]) -> Vec<Server> {
    let dir = std::env::temp_dir().join(format!("wsedge-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.toml"));
    std::fs::write(&path, CONFIG).unwrap();
    let nodes: Vec<Server> = (0..n)
        .map(|i| {
            let opts = Opts {
                args: vec!["--config".into(), path.to_str().unwrap().into()],
                ..Opts::default()
            }
            .env("WSEDGE_CLUSTER_NATS_URL", &nats.url())
            .env("WSEDGE_CLUSTER_NODE_NAME", &format!("n{i}"))
            .env("WSEDGE_CLUSTER_CLUSTER_NAME", "test")
            .env("WSEDGE_API_KEY", API_KEY);
            Server::start_with(env.iter().fold(opts, |o, (k, v)| o.env(k, v)))
        })
        .collect();
    for s in &nodes {
        s.wait_for("every node in the live set", || {
            s.metric("wsedge_cluster_nodes") == n as f64
        });
    }
    nodes
}

/// The home node (index) of `channel` among `n0`…`n{n-1}`, as every node
/// computes it.
fn home_of(channel: &str, n: usize) -> usize {
    let live: Vec<std::sync::Arc<str>> = (0..n).map(|i| format!("n{i}").into()).collect();
    let home = wsedge::engine::cluster::placement::home_node(channel, &live).unwrap();
    live.iter().position(|x| x == home).unwrap()
}

/// A channel whose home is node `want` of `n`.
fn channel_homed_at(prefix: &str, want: usize, n: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}:{i}"))
        .find(|c| home_of(c, n) == want)
        .unwrap()
}

#[test]
fn publishers_on_three_nodes_make_one_order_that_every_node_sees() {
    let nats = NatsServer::start();
    let nodes = cluster(&nats, 3, "order");
    let channel = "chat:order";
    let mut subs: Vec<RawJson> = nodes.iter().map(RawJson::anon).collect();
    for s in &mut subs {
        let r = s.call("subscribe", json!({"channel": channel}));
        assert_eq!(r["subscribe"]["offset"], 0, "{r}");
    }
    let mut pubs: Vec<RawJson> = nodes.iter().map(RawJson::anon).collect();
    // 3 × 3,400 = 10,200 publications, sent in interleaved pipelined
    // batches of 100 per publisher.
    let per = 3_400u64;
    let total = 3 * per;
    let mut ids = vec![Vec::new(); 3];
    for batch in 0..(per / 100) {
        for (p, c) in pubs.iter_mut().enumerate() {
            for k in 0..100 {
                let seq = batch * 100 + k;
                ids[p].push(c.send(
                    "publish",
                    json!({"channel": channel, "data": {"p": p, "seq": seq}}),
                ));
            }
        }
    }
    let mut offsets = Vec::new();
    for (p, c) in pubs.iter_mut().enumerate() {
        for &id in &ids[p] {
            let r = c.wait("publish reply", |v| v["id"] == id);
            offsets.push(
                r["publish"]["offset"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{r}")),
            );
        }
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(
        offsets.len() as u64,
        total,
        "one distinct offset per publication"
    );
    assert_eq!((offsets[0], offsets[offsets.len() - 1]), (1, total));
    for (i, s) in subs.iter_mut().enumerate() {
        let got = s.pubs_through(channel, total);
        let seen: Vec<u64> = got
            .iter()
            .map(|v| v["push"]["pub"]["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seen,
            (1..=total).collect::<Vec<_>>(),
            "node {i}: contiguous, in order"
        );
        // And each publisher's own messages in the order it sent them.
        for p in 0..3 {
            let mine: Vec<u64> = got
                .iter()
                .filter(|v| v["push"]["pub"]["data"]["p"] == p)
                .map(|v| v["push"]["pub"]["data"]["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..per).collect::<Vec<_>>(),
                "node {i}, publisher {p}"
            );
        }
    }
}

#[test]
fn a_node_without_subscribers_receives_none_of_a_channels_traffic() {
    let nats = NatsServer::start();
    let nodes = cluster(&nats, 3, "interest");
    // Homed at node 0, subscribed at node 1, nothing at node 2.
    let channel = channel_homed_at("feed", 0, 3);
    let mut sub = RawJson::anon(&nodes[1]);
    sub.call("subscribe", json!({"channel": channel}));
    let mut publisher = RawJson::anon(&nodes[0]);
    let quiet_before = nodes[2].metric("wsedge_cluster_messages_received_total{kind=\"channel\"}");
    let busy_before = nodes[1].metric("wsedge_cluster_messages_received_total{kind=\"channel\"}");
    for i in 0..200 {
        let r = publisher.call("publish", json!({"channel": channel, "data": {"i": i}}));
        assert_eq!(r["publish"]["offset"], i + 1, "{r}");
    }
    assert_eq!(sub.pubs_through(&channel, 200).len(), 200);
    let busy = nodes[1].metric("wsedge_cluster_messages_received_total{kind=\"channel\"}");
    let quiet = nodes[2].metric("wsedge_cluster_messages_received_total{kind=\"channel\"}");
    assert!(
        busy - busy_before >= 200.0,
        "the interested node got each one: {busy_before} -> {busy}"
    );
    assert_eq!(quiet, quiet_before, "the other node got none");
}

#[test]
fn presence_and_history_answer_from_the_home_on_any_node() {
    let nats = NatsServer::start();
    let nodes = cluster(&nats, 3, "presence");
    let channel = channel_homed_at("chat", 2, 3);
    let mut a = RawJson::anon(&nodes[0]);
    let mut b = RawJson::anon(&nodes[1]);
    for c in [&mut a, &mut b] {
        let r = c.call("subscribe", json!({"channel": channel}));
        assert!(r["subscribe"].is_object(), "{r}");
    }
    for i in 0..3 {
        b.call("publish", json!({"channel": channel, "data": {"i": i}}));
    }
    assert_eq!(a.pubs_through(&channel, 3).len(), 3);
    let h = a.call("history", json!({"channel": channel, "limit": 10}));
    assert_eq!(
        h["history"]["publications"].as_array().map(Vec::len),
        Some(3),
        "{h}"
    );
    // Presence: members on two nodes, counted at the home on a third.
    let room = channel_homed_at("room", 2, 3);
    let mut x = RawJson::user(&nodes[0], "ann", None);
    let mut y = RawJson::user(&nodes[1], "bob", None);
    for c in [&mut x, &mut y] {
        let r = c.call("subscribe", json!({"channel": room}));
        assert!(r["subscribe"].is_object(), "{r}");
    }
    let mut q = RawJson::anon(&nodes[2]);
    let r = q.call("presence_stats", json!({"channel": room}));
    assert_eq!(r["presence_stats"]["num_clients"], 2, "{r}");
    assert_eq!(r["presence_stats"]["num_users"], 2, "{r}");
    // One leaves (its connection closes): the home drops it.
    y.close();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = q.call("presence_stats", json!({"channel": room}));
        if r["presence_stats"]["num_clients"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leave never reached the home: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn with_nats_down_publishes_to_another_nodes_channel_get_100_and_work_again_after() {
    let mut nats = NatsServer::start();
    let nodes = cluster(&nats, 2, "down");
    let channel = channel_homed_at("chat", 0, 2);
    let mut c = RawJson::anon(&nodes[1]);
    nats.stop();
    nodes[1].wait_for("the link down", || {
        nodes[1].metric("wsedge_cluster_nats_up") == 0.0
    });
    let r = c.call("publish", json!({"channel": channel, "data": 1}));
    assert_eq!(r["error"]["code"], 100, "{r}");
    nats.restart();
    nodes[1].wait_for("the link up", || {
        nodes[1].metric("wsedge_cluster_nats_up") == 1.0
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.call("publish", json!({"channel": channel, "data": 2}));
        if r["publish"]["offset"].is_u64() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishing never worked again: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Publishes `{"n": n}` on `channel` until it is accepted (error 100 is
/// temporary: NATS down, a home moving), with `n` as the idempotency key
/// so a retry of a publication that was stored after all is not a second
/// one. Returns its offset.
fn publish_until_accepted(c: &mut RawJson, channel: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.call(
            "publish",
            json!({"channel": channel, "data": {"n": n}, "idempotency_key": format!("m{n}")}),
        );
        if let Some(offset) = r["publish"]["offset"].as_u64() {
            return offset;
        }
        assert_eq!(
            r["error"]["code"], 100,
            "only a temporary error is expected: {r}"
        );
        assert!(
            Instant::now() < deadline,
            "publication {n} never accepted: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_of_a_killed_node_recovers_its_channel_on_another_node_from_jetstream() {
    let nats = NatsServer::start();
    let mut nodes = cluster(&nats, 3, "killed");
    // The channel's home is the node that dies: its history must come
    // from JetStream, not from any survivor's memory.
    let channel = channel_homed_at("feed", 2, 3);
    let mut victim_client = RawJson::anon(&nodes[2]);
    let r = victim_client.call("subscribe", json!({"channel": channel}));
    let epoch = r["subscribe"]["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    // A subscriber on each survivor: both nodes relay the channel, then
    // one of them becomes its home.
    let new_home = home_of_live(&channel, &[0, 1]);
    let mut at_new_home = RawJson::anon(&nodes[new_home]);
    let r = at_new_home.call("subscribe", json!({"channel": channel}));
    assert_eq!(r["subscribe"]["offset"], 0, "{r}");
    let mut relayed = Follower::new(&nodes, 1 - new_home, &channel);
    let mut publisher = RawJson::anon(&nodes[0]);
    for n in 1..=50 {
        let r = publisher.call("publish", json!({"channel": channel, "data": {"n": n}}));
        assert_eq!(r["publish"]["offset"], n, "{r}");
    }
    assert_eq!(victim_client.pubs_through(&channel, 50).len(), 50);
    let written = nodes[2].metric("wsedge_cluster_history_writes_total{result=\"ok\"}");
    assert_eq!(written, 50.0, "each publication written once by its home");

    nodes[2].signal(libc::SIGKILL);
    assert!(nodes[2].wait_exit(Duration::from_secs(10)).is_some());
    for s in &nodes[..2] {
        s.wait_for("the dead node to leave", || {
            s.metric("wsedge_cluster_nodes") == 2.0
        });
    }
    // The new home continues the same epoch at the next offset.
    for n in 51..=80 {
        assert_eq!(publish_until_accepted(&mut publisher, &channel, n), n);
    }
    // The new home's subscriber was not told to recover: its shard
    // turned from relay into home at its position, and the stream
    // followed on. Every publication came once, in order, on the same
    // connection.
    let seen: Vec<u64> = at_new_home
        .pubs_through(&channel, 80)
        .iter()
        .map(|v| v["push"]["pub"]["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, (1..=80).collect::<Vec<_>>());
    assert_eq!(
        nodes[new_home].metric("wsedge_cluster_history_resets_total"),
        0.0
    );
    // The other survivor's relay follows the channel to its new home,
    // whichever of the two nodes saw the death first (the new home sends
    // on the channel's subject before that relay has asked): every
    // publication once, in order, and never told to recover.
    relayed.read(&nodes, 80, Instant::now() + Duration::from_secs(20));
    assert_eq!(relayed.got, (1..=80).collect::<Vec<_>>());
    assert_eq!((relayed.told, relayed.unrecovered), (0, 0));
    assert_eq!(
        nodes[1 - new_home].metric("wsedge_cluster_resyncs_total"),
        0.0
    );
    assert!(
        nodes[new_home].metric("wsedge_cluster_history_loads_total{result=\"ok\"}") >= 1.0,
        "the new home read the tail back"
    );
    // The victim's client comes back on the survivor that is not the home.
    let other = 1 - new_home;
    let mut back = RawJson::anon(&nodes[other]);
    let r = back.call(
        "subscribe",
        json!({"channel": channel, "recover": true, "epoch": epoch, "offset": 50}),
    );
    let s = &r["subscribe"];
    assert_eq!(s["recovered"], true, "{r}");
    assert_eq!(s["epoch"], epoch.as_str(), "{r}");
    assert_eq!(s["offset"], 80, "{r}");
    let missed: Vec<(u64, u64)> = s["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        missed,
        (51..=80).map(|n| (n, n)).collect::<Vec<_>>(),
        "every missed publication once, in order"
    );
    // And it is live again.
    publish_until_accepted(&mut publisher, &channel, 81);
    let live = back.pubs_through(&channel, 81);
    assert_eq!(live.len(), 1, "{live:?}");
}

/// The home node of `channel` among the live nodes `live` (indices of
/// `n0`…).
fn home_of_live(channel: &str, live: &[usize]) -> usize {
    let names: Vec<std::sync::Arc<str>> = live.iter().map(|i| format!("n{i}").into()).collect();
    let home = wsedge::engine::cluster::placement::home_node(channel, &names).unwrap();
    live[names.iter().position(|x| x == home).unwrap()]
}

/// A subscriber that survives being told to recover: on a close with
/// 3004 it reconnects and resubscribes from the last publication it got.
struct Follower {
    node: usize,
    /// The user it connects as (`None`: anonymous).
    user: Option<String>,
    channel: String,
    conn: RawJson,
    epoch: String,
    offset: u64,
    /// `n` of each publication received, in order.
    got: Vec<u64>,
    /// Times it was told to recover (3004).
    told: usize,
    /// Recoveries that came back `recovered: false`.
    unrecovered: usize,
}

impl Follower {
    fn new(nodes: &[Server], node: usize, channel: &str) -> Follower {
        Follower::as_user(nodes, node, channel, None)
    }

    fn as_user(nodes: &[Server], node: usize, channel: &str, user: Option<&str>) -> Follower {
        let mut conn = Follower::connect(&nodes[node], user);
        let r = conn.call("subscribe", json!({"channel": channel}));
        Follower {
            node,
            user: user.map(String::from),
            channel: channel.to_string(),
            conn,
            epoch: r["subscribe"]["epoch"].as_str().unwrap().to_string(),
            offset: r["subscribe"]["offset"].as_u64().unwrap(),
            got: Vec::new(),
            told: 0,
            unrecovered: 0,
        }
    }

    fn connect(server: &Server, user: Option<&str>) -> RawJson {
        match user {
            Some(u) => RawJson::user(server, u, None),
            None => RawJson::anon(server),
        }
    }

    fn take(&mut self, p: &serde_json::Value) {
        let offset = p["offset"].as_u64().unwrap();
        assert_eq!(
            offset,
            self.offset + 1,
            "node {}: offsets are contiguous unless the client is told; got {p}",
            self.node
        );
        self.offset = offset;
        self.got.push(p["data"]["n"].as_u64().unwrap());
    }

    /// Reads until `until` (or the publication with `n == last`).
    fn read(&mut self, nodes: &[Server], last: u64, until: Instant) {
        while self.got.last() != Some(&last) && Instant::now() < until {
            match self.conn.next_event(until) {
                Ok(None) => return,
                Ok(Some(v)) => {
                    if v["push"]["channel"] == self.channel.as_str()
                        && v["push"].get("pub").is_some()
                    {
                        let p = v["push"]["pub"].clone();
                        self.take(&p);
                    }
                }
                Err(code) => {
                    assert_eq!(code, Some(3004), "node {}: only 3004 may end it", self.node);
                    self.told += 1;
                    self.resubscribe(nodes);
                }
            }
        }
    }

    fn resubscribe(&mut self, nodes: &[Server]) {
        self.conn = Follower::connect(&nodes[self.node], self.user.as_deref());
        let r = self.conn.call(
            "subscribe",
            json!({"channel": self.channel, "recover": true, "epoch": self.epoch,
                   "offset": self.offset}),
        );
        let s = &r["subscribe"];
        assert!(s.is_object(), "{r}");
        if s["recovered"] == true {
            for p in s["publications"].as_array().unwrap().clone() {
                self.take(&p);
            }
        } else {
            self.unrecovered += 1;
            self.epoch = s["epoch"].as_str().unwrap().to_string();
            self.offset = s["offset"].as_u64().unwrap();
        }
    }
}

/// `presence` of `channel` asked on `q` until it answers (a request that
/// meets a home moving gets 100): the members' users, sorted.
fn presence_users(q: &mut RawJson, channel: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = q.call("presence", json!({"channel": channel}));
        if let Some(clients) = r["presence"]["clients"].as_object() {
            let mut users: Vec<String> = clients
                .values()
                .map(|c| c["user"].as_str().unwrap_or_default().to_string())
                .collect();
            users.sort();
            return users;
        }
        assert!(Instant::now() < deadline, "presence never answered: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `presence` of `channel` until its users are `want`.
fn presence_becomes(q: &mut RawJson, channel: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let users = presence_users(q, channel);
        if users == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "presence {users:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_presence_channel_in_jetstream_keeps_its_members_and_subscribers_when_its_home_is_killed() {
    let nats = NatsServer::start();
    let mut nodes = cluster(&nats, 3, "members");
    let channel = channel_homed_at("lobby", 2, 3);
    let new_home = home_of_live(&channel, &[0, 1]);
    let other = 1 - new_home;
    // Members on each node: ann is relayed, bob is on the node that
    // becomes the home, zed is on the home that dies.
    let mut ann = Follower::as_user(&nodes, other, &channel, Some("ann"));
    let mut bob = Follower::as_user(&nodes, new_home, &channel, Some("bob"));
    let mut zed = RawJson::user(&nodes[2], "zed", None);
    let r = zed.call("subscribe", json!({"channel": channel}));
    assert!(r["subscribe"].is_object(), "{r}");
    let mut q = RawJson::anon(&nodes[other]);
    presence_becomes(&mut q, &channel, &["ann", "bob", "zed"]);
    let mut publisher = RawJson::anon(&nodes[other]);
    for n in 1..=10 {
        let r = publisher.call("publish", json!({"channel": channel, "data": {"n": n}}));
        assert_eq!(r["publish"]["offset"], n, "{r}");
    }
    // The joins are written behind with the 50 ms presence tick; give
    // the last one time to reach the bucket before the home dies.
    nodes[2].wait_for("the members written to the bucket", || {
        nodes[2].metric("wsedge_cluster_presence_writes_total{result=\"delta\"}") >= 1.0
    });
    std::thread::sleep(Duration::from_millis(500));

    nodes[2].signal(libc::SIGKILL);
    assert!(nodes[2].wait_exit(Duration::from_secs(10)).is_some());
    for s in &nodes[..2] {
        s.wait_for("the dead node to leave", || {
            s.metric("wsedge_cluster_nodes") == 2.0
        });
    }
    for n in 11..=20 {
        assert_eq!(publish_until_accepted(&mut publisher, &channel, n), n);
    }
    // Both live members keep their subscription: every publication once,
    // in order, never told to recover.
    for (name, f) in [("ann", &mut ann), ("bob", &mut bob)] {
        f.read(&nodes, 20, Instant::now() + Duration::from_secs(20));
        assert_eq!(f.got, (1..=20).collect::<Vec<_>>(), "{name}");
        assert_eq!((f.told, f.unrecovered), (0, 0), "{name}");
    }
    for i in [0, 1] {
        assert_eq!(nodes[i].metric("wsedge_cluster_resyncs_total"), 0.0, "n{i}");
    }
    // The new home read the members back: the two live ones without a
    // join again, the dead node's dropped.
    presence_becomes(&mut q, &channel, &["ann", "bob"]);
    let read = |r: &str| {
        nodes[new_home].metric(&format!(
            "wsedge_cluster_presence_read_total{{result=\"{r}\"}}"
        ))
    };
    assert_eq!((read("restored"), read("stale")), (2.0, 1.0));
    // Members the new home restored leave as any other: bob (on the new
    // home's node), then ann (relayed); a new member joins.
    bob.conn.close();
    presence_becomes(&mut q, &channel, &["ann"]);
    let mut cy = RawJson::user(&nodes[new_home], "cy", None);
    let r = cy.call("subscribe", json!({"channel": channel}));
    assert!(r["subscribe"].is_object(), "{r}");
    presence_becomes(&mut q, &channel, &["ann", "cy"]);
    ann.conn.close();
    presence_becomes(&mut q, &channel, &["cy"]);
}

#[test]
fn a_nats_restart_mid_stream_loses_nothing_silently_and_repeats_nothing() {
    let mut nats = Some(NatsServer::start());
    let nodes = cluster(nats.as_ref().unwrap(), 2, "natsrestart");
    let channel = channel_homed_at("feed", 0, 2);
    // One subscriber at the home, one across NATS.
    let mut followers = vec![
        Follower::new(&nodes, 0, &channel),
        Follower::new(&nodes, 1, &channel),
    ];
    let mut publisher = RawJson::anon(&nodes[0]);
    let total = 300u64;
    let mut offsets = Vec::new();
    let mut restarted = None;
    for n in 1..=total {
        if n == 100 {
            let mut nats = nats.take().expect("running");
            nats.stop();
            nodes[0].wait_for("the link down", || {
                nodes[0].metric("wsedge_cluster_nats_up") == 0.0
            });
            // While NATS is down a publication is refused at once, never
            // accepted and then lost.
            let r = publisher.call(
                "publish",
                json!({"channel": channel, "data": {"n": 0}, "idempotency_key": "down"}),
            );
            assert_eq!(r["error"]["code"], 100, "{r}");
            // NATS comes back while the publisher keeps retrying.
            restarted = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(1));
                nats.restart();
                nats
            }));
        }
        offsets.push(publish_until_accepted(&mut publisher, &channel, n));
        for f in &mut followers {
            f.read(&nodes, 0, Instant::now());
        }
    }
    let _nats = restarted.expect("restarted").join().expect("restart");
    let mut distinct = offsets.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        offsets.len(),
        "one offset per publication: {offsets:?}"
    );
    // The window was real: writes failed while NATS was away.
    let failed = nodes[0].metric("wsedge_cluster_history_writes_total{result=\"failed\"}");
    assert!(failed >= 1.0, "no write failed: {failed}");
    let until = Instant::now() + Duration::from_secs(20);
    for f in &mut followers {
        f.read(&nodes, total, until);
        eprintln!("node {}: told to recover {} times", f.node, f.told);
        assert_eq!(
            f.unrecovered, 0,
            "node {}: JetStream kept everything",
            f.node
        );
        assert_eq!(
            f.got,
            (1..=total).collect::<Vec<_>>(),
            "node {}: every publication once, in order (told to recover {} times)",
            f.node,
            f.told
        );
    }
}

#[test]
fn the_server_api_on_any_node_acts_on_channels_homed_on_another() {
    let nats = NatsServer::start();
    let nodes = cluster(&nats, 3, "api");
    let call = |node: usize, method: &str, body: serde_json::Value| {
        let (status, reply) = api_post(&nodes[node], method, Some(API_KEY), &body.to_string());
        assert_eq!(status, 200, "{method} on n{node}: {reply}");
        reply
    };
    // A memory-history channel homed at n0 and a JetStream one homed at
    // n1, published through n2's API; subscribers on n0.
    let chat = channel_homed_at("chat", 0, 3);
    let feed = channel_homed_at("feed", 1, 3);
    let mut sub = RawJson::anon(&nodes[0]);
    for ch in [&chat, &feed] {
        let r = sub.call("subscribe", json!({"channel": ch}));
        assert!(r["subscribe"].is_object(), "{r}");
    }
    for ch in [&chat, &feed] {
        for i in 1..=3u64 {
            let r = call(2, "publish", json!({"channel": ch, "data": {"i": i}}));
            assert_eq!(r["result"]["offset"], i, "{ch}: {r}");
        }
        assert_eq!(sub.pubs_through(ch, 3).len(), 3, "{ch}");
        // History through the third node's API too.
        let r = call(2, "history", json!({"channel": ch, "limit": 10}));
        let offsets: Vec<u64> = r["result"]["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![1, 2, 3], "{ch}: {r}");
    }
    // An idempotency key is honoured across nodes: n0's API repeats it.
    let first = call(
        1,
        "publish",
        json!({"channel": chat, "data": 9, "idempotency_key": "k"}),
    );
    let again = call(
        0,
        "publish",
        json!({"channel": chat, "data": 9, "idempotency_key": "k"}),
    );
    assert_eq!(first["result"]["offset"], 4, "{first}");
    assert_eq!(again["result"]["offset"], 4, "{again}");
    // Presence of a channel homed elsewhere.
    let room = channel_homed_at("room", 0, 3);
    let mut x = RawJson::user(&nodes[1], "ann", None);
    let r = x.call("subscribe", json!({"channel": room}));
    assert!(r["subscribe"].is_object(), "{r}");
    let r = call(2, "presence_stats", json!({"channel": room}));
    assert_eq!(r["result"]["num_clients"], 1, "{r}");
    // `info` lists the live nodes.
    let r = call(1, "info", json!({}));
    assert_eq!(r["result"]["nodes"], json!(["n0", "n1", "n2"]), "{r}");
    // Calls a namespace refuses are refused the same way.
    let r = call(2, "presence", json!({"channel": chat}));
    assert_eq!(r["error"]["code"], 103, "{r}");
    // `history_remove` through n2 of both: the history goes (for the
    // JetStream one, from the stream), the position stays.
    let history = |ch: &str| -> Vec<u64> {
        let r = call(2, "history", json!({"channel": ch, "limit": 10}));
        r["result"]["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    for (ch, next) in [(&chat, 5), (&feed, 4)] {
        let r = call(2, "history_remove", json!({"channel": ch}));
        assert_eq!(r["result"], json!({}), "{ch}: {r}");
        assert_eq!(history(ch), Vec::<u64>::new(), "{ch}");
        let r = call(0, "publish", json!({"channel": ch, "data": {"i": next}}));
        assert_eq!(r["result"]["offset"], next, "{ch}: {r}");
        assert_eq!(history(ch), vec![next], "{ch}");
    }
}

/// `subscribe`, `unsubscribe` and `disconnect` of a user through one
/// node's API act on the user's connections on every node, and `channels`
/// counts them all — each push and close code read off the wire; a node
/// that cannot answer is named in the error instead of being skipped.
#[test]
fn user_calls_and_channels_through_one_nodes_api_act_on_every_node() {
    let nats = NatsServer::start();
    // A stopped node stays in the live set for the whole test (30 s
    // node timeout) and each call waits 1 s for the others' answers.
    let nodes = cluster_with(
        &nats,
        3,
        "user-calls",
        &[
            ("WSEDGE_CLUSTER_NODE_TIMEOUT", "30s"),
            ("WSEDGE_CLUSTER_REQUEST_TIMEOUT", "1s"),
        ],
    );
    let call = |node: usize, method: &str, body: serde_json::Value| {
        let (status, reply) = api_post(&nodes[node], method, Some(API_KEY), &body.to_string());
        assert_eq!(status, 200, "{method} on n{node}: {reply}");
        reply
    };
    // ann on n1 and n2, bob on n1; the calls go to n0, which has none.
    let mut ann1 = RawJson::user(&nodes[1], "ann", None);
    let mut ann2 = RawJson::user(&nodes[2], "ann", None);
    let mut bob = RawJson::user(&nodes[1], "bob", None);
    let channel = "chat:together";

    let r = call(0, "subscribe", json!({"user": "ann", "channel": channel}));
    assert_eq!(r, json!({"result": {}}));
    for (name, c) in [("ann@n1", &mut ann1), ("ann@n2", &mut ann2)] {
        let p = c.wait("subscribe push", |v| !v["push"]["subscribe"].is_null());
        assert_eq!(p["push"]["channel"], channel, "{name}: {p}");
    }
    let r = call(0, "publish", json!({"channel": channel, "data": "hi"}));
    assert_eq!(r["result"]["offset"], 1, "{r}");
    for c in [&mut ann1, &mut ann2] {
        let got = c.pubs_through(channel, 1);
        assert_eq!(got[0]["push"]["pub"]["data"], "hi", "{got:?}");
    }

    // Counted on both nodes, asked on the third.
    let r = call(0, "channels", json!({"pattern": "chat:*"}));
    assert_eq!(
        r["result"]["channels"],
        json!({ channel: {"num_clients": 2} }),
        "{r}"
    );

    let r = call(2, "unsubscribe", json!({"user": "ann", "channel": channel}));
    assert_eq!(r, json!({"result": {}}));
    for c in [&mut ann1, &mut ann2] {
        let p = c.wait("unsubscribe push", |v| !v["push"]["unsubscribe"].is_null());
        assert_eq!(p, json!({"push": {"channel": channel, "unsubscribe": {}}}));
    }
    let r = call(1, "channels", json!({"pattern": "chat:*"}));
    assert_eq!(r["result"]["channels"], json!({}), "{r}");

    let r = call(
        0,
        "disconnect",
        json!({"user": "ann", "code": 4501, "reason": "banned"}),
    );
    assert_eq!(r, json!({"result": {}}));
    for (name, c) in [("ann@n1", &mut ann1), ("ann@n2", &mut ann2)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let code = loop {
            match c.next_event(deadline) {
                Ok(Some(v)) if !v["push"]["disconnect"].is_null() => assert_eq!(
                    v["push"]["disconnect"],
                    json!({"code": 4501, "reason": "banned", "reconnect": false}),
                    "{name}"
                ),
                Ok(Some(_)) => {}
                Ok(None) => panic!("{name}: no close within 10 s: {}", c.seen()),
                Err(code) => break code,
            }
        };
        assert_eq!(code, Some(4501), "{name}");
    }
    // Another user on the same node is untouched.
    let r = bob.call("subscribe", json!({"channel": "chat:bob"}));
    assert!(r["subscribe"].is_object(), "{r}");

    // A node that does not answer (stopped, still in the live set): the
    // call acts on the others and says which node it could not reach.
    // First n0 must count n2 live (on a loaded machine a late heartbeat
    // can drop it for a moment, and a call then skips it).
    nodes[0].wait_for("n2 in n0's live set", || {
        nodes[0].metric("wsedge_cluster_nodes") == 3.0
    });
    nodes[2].stop();
    let r = call(
        0,
        "subscribe",
        json!({"user": "bob", "channel": "chat:more"}),
    );
    nodes[2].signal(libc::SIGCONT);
    assert_eq!(r["error"]["code"], 100, "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("n2"), "{r}");
    let p = bob.wait("subscribe push", |v| !v["push"]["subscribe"].is_null());
    assert_eq!(p["push"]["channel"], "chat:more", "{p}");
    assert_eq!(
        nodes[0].metric("wsedge_api_requests_total{method=\"subscribe\",status=\"error\"}"),
        1.0
    );
    // n0 asked four times (subscribe, channels, disconnect: all answered;
    // the last one partly); n1 ran five calls from others.
    let calls = |result: &str| {
        nodes[0].metric(&format!(
            "wsedge_cluster_api_calls_total{{result=\"{result}\"}}"
        ))
    };
    assert_eq!((calls("complete"), calls("partial")), (3.0, 1.0));
    assert_eq!(
        nodes[1].metric("wsedge_cluster_api_served_total{result=\"ok\"}"),
        5.0
    );
}

/// An SSE stream's commands may be posted to any node: the session id
/// names the stream's node, and the node that reads a post passes it there
/// and answers 204 only once the stream took it. Once the stream's node is
/// gone from the live set, a post for it is 404 (reconnect) at once.
#[test]
fn sse_posts_to_any_node_reach_the_stream_and_a_dead_nodes_stream_is_404() {
    use common::sse::SseStream;
    let nats = NatsServer::start();
    let mut nodes = cluster_with(&nats, 2, "sse-posts", &[]);
    let mut st = SseStream::open(&nodes[0]);
    assert!(st.session.starts_with("n0."), "{}", st.session);

    // Every command goes through n1.
    let via = nodes[1].client;
    let (id, status, head) = st.send_to(via, "connect", json!({"user": "ann"}));
    assert_eq!(status, 204, "{head}");
    assert!(st.reply(id)["connect"]["client"].is_string());
    let (id, status, head) = st.send_to(via, "subscribe", json!({"channel": "chat:sse"}));
    assert_eq!(status, 204, "{head}");
    assert!(st.reply(id).get("error").is_none());
    // Posted one after another through n1, run in that order on n0.
    let mut ids = Vec::new();
    for n in 0..20 {
        let (id, status, head) = st.send_to(
            via,
            "publish",
            json!({"channel": "chat:sse", "data": {"n": n}}),
        );
        assert_eq!(status, 204, "{head}");
        ids.push(id);
    }
    let mut offsets = Vec::new();
    let mut pubs = Vec::new();
    while offsets.len() < ids.len() || pubs.len() < ids.len() {
        let v = st.recv();
        if let Some(id) = v["id"].as_u64() {
            assert!(v.get("error").is_none(), "{v}");
            assert_eq!(id, u64::from(ids[offsets.len()]), "replies in order");
            offsets.push(v["publish"]["offset"].as_u64().unwrap());
        } else if v["push"]["channel"] == "chat:sse" {
            pubs.push(v["push"]["pub"]["data"]["n"].as_u64().unwrap());
        }
    }
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    assert_eq!(pubs, (0..20).collect::<Vec<u64>>());
    // A WebSocket client on n1 sees the stream's publications too, and
    // the stream sees its.
    let mut ws = RawJson::user(&nodes[1], "bob", None);
    ws.call("subscribe", json!({"channel": "chat:sse"}));
    let (_, status, _) = st.send_to(
        via,
        "publish",
        json!({"channel": "chat:sse", "data": {"from": "sse"}}),
    );
    assert_eq!(status, 204);
    ws.wait("the stream's publication", |v| {
        v["push"]["pub"]["data"]["from"] == "sse"
    });
    ws.call(
        "publish",
        json!({"channel": "chat:sse", "data": {"from": "ws"}}),
    );
    let push = loop {
        let v = st.recv();
        if v["push"]["pub"]["data"]["from"] == "ws" {
            break v;
        }
    };
    assert_eq!(push["push"]["channel"], "chat:sse", "{push}");
    // The secret is checked on the stream's node: a wrong one is 404
    // through n1 too.
    let mut forged = st.session.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _) = common::sse::post(via, &forged, br#"{"id":99,"ping":{}}"#);
    assert_eq!(status, 404);
    let posts = |r: &str| nodes[1].metric(&format!("wsedge_sse_posts_total{{result=\"{r}\"}}"));
    assert_eq!((posts("ok"), posts("unknown")), (23.0, 1.0));
    assert_eq!(nodes[1].metric("wsedge_sse_streams"), 0.0);
    assert_eq!(nodes[0].metric("wsedge_sse_streams"), 1.0);

    // n0 dies: once n1 no longer counts it, a post for its stream is 404.
    nodes[0].signal(libc::SIGKILL);
    assert!(nodes[0].wait_exit(Duration::from_secs(10)).is_some());
    nodes[1].wait_for("n0 to leave the live set", || {
        nodes[1].metric("wsedge_cluster_nodes") == 1.0
    });
    let (_, status, head) = st.send_to(via, "ping", json!({}));
    assert_eq!(status, 404, "{head}");
}
