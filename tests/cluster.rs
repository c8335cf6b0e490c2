//! Three nodes joined by a real `nats-server` on loopback: one order per
//! channel whichever node accepted a publication, interest routing (a node
//! without subscribers gets none of a channel's traffic), presence across
//! nodes, and the answers clients get while NATS is down — all read as raw
//! frames.

mod common;

use std::time::{Duration, Instant};

use common::nats_server::NatsServer;
use common::raw_json::RawJson;
use common::{Opts, Server};
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
"#;

/// Starts `n` nodes named `n0`… with [`CONFIG`] on the cluster of `nats`,
/// and waits until each sees all of them.
fn cluster(nats: &NatsServer, n: usize, test: &str) -> Vec<Server> {
    let dir = std::env::temp_dir().join(format!("wsedge-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.toml"));
    std::fs::write(&path, CONFIG).unwrap();
    let nodes: Vec<Server> = (0..n)
        .map(|i| {
            Server::start_with(
                Opts {
                    args: vec!["--config".into(), path.to_str().unwrap().into()],
                    ..Opts::default()
                }
                .env("WSEDGE_CLUSTER_NATS_URL", &nats.url())
                .env("WSEDGE_CLUSTER_NODE_NAME", &format!("n{i}"))
                .env("WSEDGE_CLUSTER_CLUSTER_NAME", "test"),
            )
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
