//! Live story collaboration end to end against the real binary: ten
//! editors and a thousand viewers on one story across two shards, the
//! editor cap and the queue (its `queue` pushes, and the slot a
//! disconnected editor gets back within `lock_grace`), every documented
//! refusal on the wire, a recovering re-join pipelined with an update, and
//! a story that survives a crash of its node through a real
//! `redis-server`.
//!
//! Every client is `common::raw_json::RawJson`: bytes off the socket, one
//! WebSocket frame at a time, each a whole text frame of `\n`-separated
//! JSON objects, so a cut or glued frame fails the test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::raw_json::RawJson;
use common::redis_server::RedisServer;
use common::*;
use serde_json::{Value, json};
use wsedge::engine::wire::proto;

const CONFIG: &str = r#"
shards = 2

[collab]
max_section_bytes = 2048
lock_grace = "20s"

[[namespace]]
name = "story"
collaboration = true
history_size = 1000
history_ttl = "5m"
recover = true
presence = true
join_leave_max_subscribers = 20

[[namespace]]
name = "strict"
collaboration = true
conflict = "reject"
max_editors = 2
"#;

/// Starts the binary with [`CONFIG`] and the environment `env`.
fn start(test: &str, env: &[(&str, &str)]) -> Server {
    let dir = std::env::temp_dir().join(format!("wsedge-collab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.toml"));
    std::fs::write(&path, CONFIG).unwrap();
    let mut opts = Opts {
        args: vec!["--config".into(), path.to_str().unwrap().into()],
        ..Opts::default()
    };
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    let server = Server::start_with(opts);
    server.wait_for("the listening line in the log", || {
        server.log.lock().unwrap().contains(" listening ")
    });
    server
}

fn code(v: &Value) -> u64 {
    v["error"]["code"].as_u64().unwrap_or(0)
}

/// The story events (`pub` data) of `channel` through offset `last`,
/// checked to come once each, in offset order, with no gap after the
/// first.
fn events_through(c: &mut RawJson, channel: &str, last: u64) -> Vec<(u64, Value)> {
    let pubs = c.pubs_through(channel, last);
    let offsets: Vec<u64> = pubs
        .iter()
        .map(|p| p["push"]["pub"]["offset"].as_u64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "offsets in order with no gap: {offsets:?}"
    );
    pubs.into_iter()
        .map(|p| {
            (
                p["push"]["pub"]["offset"].as_u64().unwrap(),
                p["push"]["pub"]["data"].clone(),
            )
        })
        .collect()
}

#[test]
fn ten_editors_and_a_thousand_viewers_share_one_story_across_two_shards() {
    let server = start("big", &[]);
    let story = "story:big";
    let mut editors: Vec<RawJson> = (0..10)
        .map(|i| RawJson::user(&server, &format!("e{i}"), None))
        .collect();
    for e in &mut editors {
        let r = e.call("collab_join", json!({"channel": story, "role": "editor"}));
        assert_eq!(r["collab_join"]["role"], "editor", "{r}");
    }
    // The eleventh editor: "editors full" (temporary) as the raw bytes say.
    let mut late = RawJson::user(&server, "late", None);
    let r = late.call("collab_join", json!({"channel": story, "role": "editor"}));
    assert_eq!(r["error"]["code"], 117, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    // Asking to queue instead gets a place in line.
    let r = late.call(
        "collab_join",
        json!({"channel": story, "role": "editor", "queue": true}),
    );
    assert_eq!(r["collab_join"]["role"], "queued", "{r}");
    assert_eq!(r["collab_join"]["position"], 1, "{r}");

    // A thousand viewers: every join sent first, the replies read after.
    let mut viewers: Vec<RawJson> = (0..1000).map(|_| RawJson::anon(&server)).collect();
    let ids: Vec<u32> = viewers
        .iter_mut()
        .map(|v| v.send("collab_join", json!({"channel": story, "role": "viewer"})))
        .collect();
    let mut joined_at = Vec::with_capacity(viewers.len());
    for (v, id) in viewers.iter_mut().zip(ids) {
        let r = v.reply_before_pubs(id, story);
        assert_eq!(r["collab_join"]["role"], "viewer", "{r}");
        assert_eq!(r["collab_join"]["editors"].as_array().unwrap().len(), 10);
        joined_at.push(r["collab_join"]["offset"].as_u64().unwrap());
    }
    let shards: std::collections::BTreeSet<usize> =
        viewers.iter().chain(&editors).map(|c| c.shard).collect();
    assert_eq!(shards.len(), 2, "members on both shards");

    // Each editor locks its own section and writes it five times.
    for (i, e) in editors.iter_mut().enumerate() {
        let r = e.call(
            "lock",
            json!({"channel": story, "section": format!("s{i}")}),
        );
        assert_eq!(r["lock"]["holder"]["user"], format!("e{i}"), "{r}");
    }
    for round in 0..5u64 {
        for (i, e) in editors.iter_mut().enumerate() {
            let r = e.call(
                "update",
                json!({"channel": story, "section": format!("s{i}"), "base_version": round,
                       "data": {"text": format!("e{i} r{round}")}, "op_id": format!("e{i}-{round}")}),
            );
            assert_eq!(r["update"]["version"], round + 1, "{r}");
        }
    }
    // The story's last offset: the history's position.
    let h = editors[0].call("history", json!({"channel": story, "limit": 1}));
    let last = h["history"]["offset"].as_u64().unwrap();
    // Every viewer saw all fifty updates, each section's versions in order.
    for (n, v) in viewers.iter_mut().enumerate() {
        let events = events_through(v, story, last);
        assert!(events.iter().all(|e| e.0 > joined_at[n]));
        let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (_, d) in &events {
            if let Some(u) = d.get("update") {
                versions
                    .entry(u["section"].as_str().unwrap().to_string())
                    .or_default()
                    .push(u["version"].as_u64().unwrap());
            }
        }
        assert_eq!(versions.len(), 10, "viewer {n}: {versions:?}");
        assert!(
            versions.values().all(|v| *v == vec![1, 2, 3, 4, 5]),
            "{versions:?}"
        );
    }
    // An editor leaves: the queued member is promoted, told on the wire.
    let r = editors[3].call("collab_leave", json!({"channel": story}));
    assert_eq!(r["collab_leave"], json!({}), "{r}");
    let p = late.wait("promoted push", |v| v["push"].get("promoted").is_some());
    assert_eq!(
        p,
        json!({"push": {"channel": story, "promoted": {"role": "editor"}}})
    );
    // Its lock went with it: the promoted editor may take s3.
    let r = late.call("lock", json!({"channel": story, "section": "s3"}));
    assert_eq!(r["lock"]["holder"]["user"], "late", "{r}");
    server.wait_for("the story metrics", || {
        server.metric("wsedge_collab_updates_total") == 50.0
            && server.metric("wsedge_durable_events_total{kind=\"kept\"}") == 50.0
            // 10 editors, the promoted one, 1000 viewers, less the one gone.
            && server.metric("wsedge_collab_members") == 1010.0
    });
}

#[test]
fn every_story_refusal_gets_its_documented_answer() {
    let server = start("refusals", &[]);
    let mut ann = RawJson::user(&server, "ann", None);
    let mut bob = RawJson::user(&server, "bob", None);
    // Not a story.
    let r = ann.call(
        "collab_join",
        json!({"channel": "chat:1", "role": "editor"}),
    );
    assert_eq!(code(&r), 122, "{r}");
    let r = ann.call("lock", json!({"channel": "chat:1", "section": "a"}));
    assert_eq!(code(&r), 122, "{r}");
    // Not a member.
    let r = ann.call("lock", json!({"channel": "strict:1", "section": "a"}));
    assert_eq!(code(&r), 120, "{r}");
    for c in [&mut ann, &mut bob] {
        let r = c.call(
            "collab_join",
            json!({"channel": "strict:1", "role": "editor"}),
        );
        assert_eq!(r["collab_join"]["role"], "editor", "{r}");
    }
    // Bad parameters: 107.
    let r = ann.call(
        "lock",
        json!({"channel": "strict:1", "section": "a", "ttl": 0}),
    );
    assert_eq!(code(&r), 107, "ttl 0: {r}");
    let long = "x".repeat(65);
    let r = ann.call(
        "update",
        json!({"channel": "strict:1", "section": "a", "base_version": 0, "data": 1, "op_id": long}),
    );
    assert_eq!(code(&r), 107, "op_id over 64 bytes: {r}");
    let r = ann.call(
        "update",
        json!({"channel": "strict:1", "section": "", "base_version": 0, "data": 1, "op_id": "o"}),
    );
    assert_eq!(code(&r), 107, "empty section: {r}");
    // Too large for a section: 121.
    let big = "y".repeat(3000);
    let r = ann.call(
        "update",
        json!({"channel": "strict:1", "section": "a", "base_version": 0, "data": big, "op_id": "big"}),
    );
    assert_eq!(code(&r), 121, "{r}");
    // Locked by someone else: 118 with the holder.
    let r = ann.call("lock", json!({"channel": "strict:1", "section": "a"}));
    assert_eq!(r["lock"]["holder"]["user"], "ann", "{r}");
    let r = bob.call(
        "update",
        json!({"channel": "strict:1", "section": "a", "base_version": 0, "data": "b", "op_id": "b1"}),
    );
    assert_eq!(code(&r), 118, "{r}");
    assert_eq!(r["error"]["holder"]["user"], "ann", "{r}");
    let r = bob.call("unlock", json!({"channel": "strict:1", "section": "a"}));
    assert_eq!(code(&r), 118, "unlock of another's lock: {r}");
    // A stale base under `reject`: 119 with the current version and data.
    // The longest op_id the wire takes, the story takes too (one limit).
    let longest = "a".repeat(64);
    let r = ann.call(
        "update",
        json!({"channel": "strict:1", "section": "a", "base_version": 0, "data": {"v": 1}, "op_id": &longest}),
    );
    assert_eq!(r["update"]["version"], 1, "{r}");
    let r = ann.call("unlock", json!({"channel": "strict:1", "section": "a"}));
    assert_eq!(r["unlock"], json!({}), "{r}");
    let r = bob.call(
        "update",
        json!({"channel": "strict:1", "section": "a", "base_version": 0, "data": "b", "op_id": "b2"}),
    );
    assert_eq!(code(&r), 119, "{r}");
    assert_eq!(r["error"]["version"], 1, "{r}");
    assert_eq!(r["error"]["data"], json!({"v": 1}), "{r}");
    // A resent op_id: the first answer, marked, nothing applied again.
    let r = ann.call(
        "update",
        json!({"channel": "strict:1", "section": "a", "base_version": 0, "data": {"v": 1}, "op_id": longest}),
    );
    assert_eq!(r["update"], json!({"version": 1, "duplicate": true}), "{r}");
    // The third editor of a two-editor story.
    let mut cy = RawJson::user(&server, "cy", None);
    let r = cy.call(
        "collab_join",
        json!({"channel": "strict:1", "role": "editor"}),
    );
    assert_eq!(code(&r), 117, "{r}");
    // Every refusal is counted by code.
    let counted = [
        ("122", 2.0),
        ("120", 1.0),
        ("107", 3.0),
        ("121", 1.0),
        ("118", 2.0),
        ("119", 1.0),
        ("117", 1.0),
    ];
    server.wait_for("every refusal counted", || {
        counted.iter().all(|(c, n)| {
            server.metric(&format!("wsedge_error_replies_total{{kind=\"{c}\"}}")) == *n
        })
    });
    // Nothing above crashed a shard or cut a frame: both still answer.
    for c in [&mut ann, &mut bob, &mut cy] {
        assert_eq!(c.call("ping", json!({}))["ping"], json!({}));
    }
}

#[test]
fn under_lww_the_overwritten_editor_is_alerted_with_what_it_lost() {
    let server = start("lww", &[]);
    let story = "story:lww";
    let mut ann = RawJson::user(&server, "ann", None);
    let mut bob = RawJson::user(&server, "bob", None);
    for c in [&mut ann, &mut bob] {
        c.call("collab_join", json!({"channel": story, "role": "editor"}));
    }
    let r = ann.call(
        "update",
        json!({"channel": story, "section": "p3", "base_version": 0, "data": "A", "op_id": "a1"}),
    );
    assert_eq!(r["update"]["version"], 1);
    let r = bob.call(
        "update",
        json!({"channel": story, "section": "p3", "base_version": 0, "data": "B", "op_id": "b1"}),
    );
    assert_eq!(r["update"]["version"], 2, "last write wins: {r}");
    let p = ann.wait("conflict push", |v| v["push"].get("conflict").is_some());
    let c = &p["push"]["conflict"];
    assert_eq!(p["push"]["channel"], story);
    assert_eq!(
        (c["section"].as_str(), c["version"].as_u64()),
        (Some("p3"), Some(2))
    );
    assert_eq!(c["overwritten"], "A");
    assert_eq!(c["by"]["user"], "bob");
    server.wait_for("the conflict counted", || {
        server.metric("wsedge_collab_conflicts_total") == 1.0
    });
    // Bob overwriting his own version alerts nobody.
    bob.call(
        "update",
        json!({"channel": story, "section": "p3", "base_version": 1, "data": "B2", "op_id": "b2"}),
    );
    assert!(bob.drain_pushes(story, "conflict").is_empty());
    assert!(ann.drain_pushes(story, "conflict").is_empty());
    // Presence states say who is editing what.
    let r = ann.call(
        "presence_state",
        json!({"channel": story, "state": "editing:p3", "ttl": 30}),
    );
    assert_eq!(r["presence_state"], json!({}), "{r}");
    let r = bob.call("presence", json!({"channel": story}));
    let states: Vec<(String, String)> = r["presence"]["clients"]
        .as_object()
        .unwrap_or_else(|| panic!("{r}"))
        .values()
        .map(|c| {
            (
                c["user"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        states.contains(&("ann".to_string(), "editing:p3".to_string())),
        "{r}"
    );
    assert_eq!(states.len(), 2, "{r}");
}

fn redis_get(url: &str, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut con).unwrap()
}

fn redis_fields(url: &str, key: &str) -> usize {
    match redis_get(url, &["HLEN", key]) {
        redis::Value::Int(n) => n as usize,
        other => panic!("HLEN: {other:?}"),
    }
}

#[test]
fn a_story_survives_a_crash_of_its_node_through_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("WSEDGE_COLLAB_REDIS_URL", url.as_str())];
    let story = "story:kept";
    let key = format!("wsedge:story:{story}");
    let mut server = start("redis-1", &env);
    {
        let mut ann = RawJson::user(&server, "ann", None);
        let r = ann.call("collab_join", json!({"channel": story, "role": "editor"}));
        assert_eq!(r["collab_join"]["sections"], json!({}), "a new story: {r}");
        for (section, base, data) in [("p1", 0, "one"), ("p1", 1, "two"), ("p2", 0, "x")] {
            let r = ann.call(
                "update",
                json!({"channel": story, "section": section, "base_version": base,
                       "data": data, "op_id": format!("{section}-{base}")}),
            );
            assert_eq!(r["update"]["version"], base + 1, "{r}");
        }
        let r = ann.call(
            "lock",
            json!({"channel": story, "section": "p2", "ttl": 60}),
        );
        assert!(
            r["lock"]["expires"].as_u64().unwrap() > 1_700_000_000_000,
            "{r}"
        );
        // Written behind within the flush interval (10 ms): two sections
        // and a lock.
        server.wait_for("the story in Redis", || {
            redis_fields(&redis.url(), &key) == 3
        });
        // Editors present: no TTL.
        assert_eq!(
            redis_get(&redis.url(), &["PTTL", &key]),
            redis::Value::Int(-1)
        );
        // The node dies without a word to anyone.
        server.signal(libc::SIGKILL);
        server.wait_exit(Duration::from_secs(10)).expect("killed");
    }
    let server = start("redis-2", &env);
    let mut bob = RawJson::user(&server, "bob", None);
    let r = bob.call("collab_join", json!({"channel": story, "role": "editor"}));
    let s = &r["collab_join"]["sections"];
    assert_eq!(s["p1"], json!({"version": 2, "data": "two"}), "{r}");
    assert_eq!(s["p2"]["version"], 1, "{r}");
    assert_eq!(
        s["p2"]["holder"]["user"], "ann",
        "ann's lock waits for her: {r}"
    );
    let r = bob.call(
        "update",
        json!({"channel": story, "section": "p2", "base_version": 1, "data": "bob", "op_id": "b"}),
    );
    assert_eq!(code(&r), 118, "{r}");
    // Ann is back within the grace: the lock is hers again.
    let mut ann = RawJson::user(&server, "ann", None);
    ann.call("collab_join", json!({"channel": story, "role": "editor"}));
    let r = ann.call(
        "update",
        json!({"channel": story, "section": "p2", "base_version": 1, "data": "y", "op_id": "p2-1b"}),
    );
    assert_eq!(r["update"]["version"], 2, "{r}");
    // The last editors leave: the key now expires (story_ttl, 1 h).
    for c in [&mut ann, &mut bob] {
        c.call("collab_leave", json!({"channel": story}));
    }
    server.wait_for(
        "a TTL on the story key",
        || matches!(redis_get(&redis.url(), &["PTTL", &key]), redis::Value::Int(t) if t > 0),
    );
    server.wait_for("the load counted", || {
        server.metric("wsedge_collab_loads_total{kind=\"ok\"}") == 1.0
    });
}

/// Reads binary frames from `raw` until the replies to every id in `ids`
/// came; returns them (each as its frame's bytes and its index in it).
fn binary_replies(raw: &mut RawWs, ids: &[u32]) -> Vec<(Vec<u8>, usize)> {
    let deadline = std::time::Instant::now() + raw_json::WAIT;
    let mut got: Vec<(u32, Vec<u8>, usize)> = Vec::new();
    while ids.iter().any(|id| !got.iter().any(|g| g.0 == *id)) {
        let f = raw
            .read_frame_before(deadline)
            .unwrap_or_else(|_| panic!("no replies to {ids:?}; got {:?}", got.len()))
            .expect("open");
        if f.opcode != 2 {
            continue;
        }
        assert!(f.fin, "whole messages");
        let sf = flatbuffers::root::<proto::ServerFrame>(&f.payload).expect("a ServerFrame");
        for (i, m) in sf.messages().unwrap().iter().enumerate() {
            if let Some(r) = m.reply() {
                got.push((r.id(), f.payload.clone(), i));
            }
        }
    }
    ids.iter()
        .map(|id| {
            let g = got.iter().find(|g| g.0 == *id).unwrap();
            (g.1.clone(), g.2)
        })
        .collect()
}

fn binary_reply(frame: &(Vec<u8>, usize)) -> proto::Reply<'_> {
    let sf = flatbuffers::root::<proto::ServerFrame>(&frame.0).unwrap();
    sf.messages().unwrap().get(frame.1).reply().unwrap()
}

#[test]
fn binary_clients_collaborate_with_json_ones() {
    use wsedge::engine::wire::binary::client_frame;
    use wsedge::engine::wire::collab::CollabRole;
    use wsedge::engine::wire::{ConnectParams, Method};
    let server = start("binary", &[]);
    let story = "story:bin";
    let mut viewer = RawJson::anon(&server);
    let r = viewer.call("collab_join", json!({"channel": story, "role": "viewer"}));
    let at = r["collab_join"]["offset"].as_u64().unwrap();
    let connect = |user: &'static str| {
        Method::Connect(ConnectParams {
            user: Some(user.into()),
            ..ConnectParams::default()
        })
    };
    let join = || Method::CollabJoin {
        channel: story.into(),
        role: CollabRole::Editor,
        queue: false,
        recover: false,
        since: None,
    };
    let mut ann = RawWs::connect(&server, Some("edu-matrix-v1"));
    ann.send_frame(
        true,
        2,
        &client_frame(&[
            (1, connect("ann")),
            (2, join()),
            (
                3,
                Method::Update {
                    channel: story.into(),
                    section: "p".into(),
                    base_version: 0,
                    data: br#"{"x":1}"#,
                    op_id: "o1".into(),
                },
            ),
            (
                4,
                Method::Lock {
                    channel: story.into(),
                    section: "p".into(),
                    ttl: None,
                },
            ),
        ]),
    );
    let replies = binary_replies(&mut ann, &[2, 3, 4]);
    let j = binary_reply(&replies[0])
        .result_as_collab_join()
        .expect("collab_join");
    assert_eq!(j.role(), proto::CollabRole::Editor);
    let u = binary_reply(&replies[1])
        .result_as_update()
        .expect("update");
    assert_eq!(u.version(), 1);
    let l = binary_reply(&replies[2]).result_as_lock().expect("lock");
    assert_eq!(l.holder().unwrap().user(), Some("ann"));
    // The JSON viewer sees the binary editor's update as JSON.
    let events = events_through(&mut viewer, story, at + 3);
    let update = events
        .iter()
        .find_map(|e| e.1.get("update"))
        .expect("the update event");
    assert_eq!(update["data"], json!({"x": 1}));
    assert_eq!(update["by"]["user"], "ann");
    // A second binary editor hits the lock: 118 carries the holder.
    let mut bob = RawWs::connect(&server, Some("edu-matrix-v1"));
    bob.send_frame(
        true,
        2,
        &client_frame(&[
            (1, connect("bob")),
            (2, join()),
            (
                3,
                Method::Update {
                    channel: story.into(),
                    section: "p".into(),
                    base_version: 1,
                    data: b"2",
                    op_id: "b1".into(),
                },
            ),
        ]),
    );
    let replies = binary_replies(&mut bob, &[2, 3]);
    let j = binary_reply(&replies[0])
        .result_as_collab_join()
        .expect("collab_join");
    let p = j
        .sections()
        .unwrap()
        .lookup_by_key("p", |s, k| s.key_compare_with_value(k));
    assert_eq!(p.map(|s| s.version()), Some(1));
    let e = binary_reply(&replies[1]).error().expect("an error");
    assert_eq!(e.code(), 118);
    assert_eq!(e.holder().unwrap().user(), Some("ann"));
}

/// A channel `{prefix}{i}` homed on `shard` (`same`) or on the other one.
fn homed(prefix: &str, shard: usize, same: bool) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| (wsedge::engine::hub::home_shard(c, 2) == shard) == same)
        .unwrap()
}

#[test]
fn a_reconnecting_editor_gets_its_slot_back_and_the_line_learns_its_places() {
    // A short grace, so its end comes within a wait.
    let server = start("held", &[("WSEDGE_COLLAB_LOCK_GRACE", "3s")]);
    let story = "strict:held"; // max_editors = 2
    let mut ann = RawJson::user(&server, "ann", None);
    let mut bob = RawJson::user(&server, "bob", None);
    let mut carol = RawJson::user(&server, "carol", None);
    let mut dave = RawJson::user(&server, "dave", None);
    for c in [&mut ann, &mut bob] {
        let r = c.call("collab_join", json!({"channel": story, "role": "editor"}));
        assert_eq!(r["collab_join"]["role"], "editor", "{r}");
    }
    let editor_or_queue = json!({"channel": story, "role": "editor", "queue": true});
    let r = carol.call("collab_join", editor_or_queue.clone());
    let j = &r["collab_join"];
    assert_eq!(
        (
            j["role"].as_str(),
            j["position"].as_u64(),
            j["queued"].as_u64()
        ),
        (Some("queued"), Some(1), Some(1)),
        "{r}"
    );
    let r = dave.call("collab_join", editor_or_queue.clone());
    let j = &r["collab_join"];
    assert_eq!(
        (
            j["role"].as_str(),
            j["position"].as_u64(),
            j["queued"].as_u64()
        ),
        (Some("queued"), Some(2), Some(2)),
        "{r}"
    );
    let r = ann.call("lock", json!({"channel": story, "section": "p1"}));
    assert_eq!(r["lock"]["holder"]["user"], "ann", "{r}");

    // Ann's connection vanishes. Her slot and her lock wait for her: the
    // line neither moves nor hears anything.
    ann.raw.abort();
    bob.wait("ann's leave", |v| {
        v["push"]["pub"]["data"]["story.user.leave"]["user"] == "ann"
    });
    // She is back (a new connection, a new client id) and re-joins as a
    // client does, asking to queue: an editor at once, her lock her own.
    let mut ann2 = RawJson::user(&server, "ann", None);
    let r = ann2.call("collab_join", editor_or_queue.clone());
    let j = &r["collab_join"];
    assert_eq!(j["role"], "editor", "{r}");
    assert!(j.get("position").is_none(), "{r}");
    assert_eq!(j["queued"], 2, "{r}");
    assert_eq!(
        j["sections"]["p1"]["holder"],
        json!({"user": "ann", "client": ann2.id}),
        "{r}"
    );
    let r = ann2.call(
        "update",
        json!({"channel": story, "section": "p1", "base_version": 0, "data": "back", "op_id": "a1"}),
    );
    assert_eq!(r["update"]["version"], 1, "{r}");
    for (c, name) in [(&mut carol, "carol"), (&mut dave, "dave")] {
        for kind in ["promoted", "queue"] {
            assert!(
                c.drain_pushes(story, kind).is_empty(),
                "{name} got a {kind} push while the slot was held"
            );
        }
    }
    let r = carol.call("lock", json!({"channel": story, "section": "p2"}));
    assert_eq!(code(&r), 120, "carol still waits: {r}");

    // She vanishes again and stays away: at the end of the grace her lock
    // is released, carol gets the slot, dave learns he is next.
    ann2.raw.abort();
    let p = carol.wait("promoted push", |v| v["push"].get("promoted").is_some());
    assert_eq!(
        p,
        json!({"push": {"channel": story, "promoted": {"role": "editor"}}})
    );
    let q = dave.wait("queue push", |v| v["push"].get("queue").is_some());
    assert_eq!(
        q,
        json!({"push": {"channel": story, "queue": {"position": 1}}})
    );
    let r = carol.call("lock", json!({"channel": story, "section": "p1"}));
    assert_eq!(r["lock"]["holder"]["user"], "carol", "the lock lapsed: {r}");
    assert!(
        dave.drain_pushes(story, "queue").is_empty(),
        "one push per move"
    );
    // A leave (not a disconnect) frees the slot at once: dave is promoted.
    let r = bob.call("collab_leave", json!({"channel": story}));
    assert_eq!(r["collab_leave"], json!({}), "{r}");
    dave.wait("promoted push", |v| v["push"].get("promoted").is_some());
}

/// Ann edits in one tab and waits in line in a second; the first tab's
/// connection drops: the second is promoted at once, ahead of carol who
/// queued earlier, and holds ann's lock.
#[test]
fn a_second_tab_waiting_in_line_inherits_its_users_held_slot() {
    let server = start("second-tab", &[]);
    let story = "strict:tabs"; // max_editors = 2
    let mut ann = RawJson::user(&server, "ann", None);
    let mut bob = RawJson::user(&server, "bob", None);
    let mut carol = RawJson::user(&server, "carol", None);
    let mut ann_tab2 = RawJson::user(&server, "ann", None);
    for c in [&mut ann, &mut bob] {
        let r = c.call("collab_join", json!({"channel": story, "role": "editor"}));
        assert_eq!(r["collab_join"]["role"], "editor", "{r}");
    }
    let editor_or_queue = json!({"channel": story, "role": "editor", "queue": true});
    let r = carol.call("collab_join", editor_or_queue.clone());
    assert_eq!(r["collab_join"]["position"], 1, "{r}");
    let r = ann_tab2.call("collab_join", editor_or_queue);
    assert_eq!(r["collab_join"]["position"], 2, "{r}");
    let r = ann.call("lock", json!({"channel": story, "section": "p1"}));
    assert_eq!(r["lock"]["holder"]["client"], ann.id, "{r}");

    ann.raw.abort();
    let p = ann_tab2.wait("promoted push", |v| v["push"].get("promoted").is_some());
    assert_eq!(
        p,
        json!({"push": {"channel": story, "promoted": {"role": "editor"}}})
    );
    let r = ann_tab2.call(
        "update",
        json!({"channel": story, "section": "p1", "base_version": 0, "data": "tab 2", "op_id": "t2"}),
    );
    assert_eq!(r["update"]["version"], 1, "{r}");
    let r = ann_tab2.call("unlock", json!({"channel": story, "section": "p1"}));
    assert_eq!(r["unlock"], json!({}), "the lock is the second tab's: {r}");
    // Carol neither moved nor was promoted; she is still first in line.
    let r = carol.call("lock", json!({"channel": story, "section": "p2"}));
    assert_eq!(code(&r), 120, "carol still waits: {r}");
    assert!(carol.drain_pushes(story, "promoted").is_empty());
    assert!(carol.drain_pushes(story, "queue").is_empty());
}

#[test]
fn a_recovering_join_pipelined_with_an_update_is_answered_before_the_update_event() {
    let server = start("pipelined", &[]);
    // The story homed on the re-joining connection's own shard (where the
    // home answers at once, within the frame) and on the other one.
    for same in [true, false] {
        let mut ann2 = RawJson::user(&server, "ann", None);
        let prefix = if same {
            "story:pipelined-here"
        } else {
            "story:pipelined-there"
        };
        let story = homed(prefix, ann2.shard, same);
        let ctx = format!(
            "{story} homed on shard {}",
            if same { "the same" } else { "the other" }
        );
        let mut ann = RawJson::user(&server, "ann", None);
        let mut bob = RawJson::user(&server, "bob", None);
        let r = ann.call("collab_join", json!({"channel": story, "role": "editor"}));
        let (epoch, seen) = (
            r["collab_join"]["epoch"].as_str().unwrap().to_string(),
            r["collab_join"]["offset"].as_u64().unwrap(),
        );
        bob.call("collab_join", json!({"channel": story, "role": "editor"}));
        ann.raw.abort();
        bob.wait("ann's leave", |v| {
            v["push"]["pub"]["data"]["story.user.leave"]["user"] == "ann"
        });
        let r = bob.call(
            "update",
            json!({"channel": story, "section": "p0", "base_version": 0, "data": "while away", "op_id": "b1"}),
        );
        assert_eq!(r["update"]["version"], 1, "{ctx}: {r}");
        // The re-join and an update behind it, in one WebSocket message.
        let join = json!({"id": 100, "collab_join": {"channel": story, "role": "editor",
            "recover": true, "epoch": epoch, "offset": seen}});
        let update = json!({"id": 101, "update": {"channel": story, "section": "p1",
            "base_version": 0, "data": "mine", "op_id": "a1"}});
        ann2.raw.send_text(&format!("{join}\n{update}"));
        let r = ann2.reply_before_pubs(100, &story);
        let j = &r["collab_join"];
        assert_eq!(j["recovered"], true, "{ctx}: {r}");
        let at = j["offset"].as_u64().unwrap();
        let recovered: Vec<u64> = j["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(recovered, (seen + 1..=at).collect::<Vec<_>>(), "{ctx}: {r}");
        let last = &j["publications"].as_array().unwrap().last().unwrap()["data"];
        assert_eq!(
            last["story.user.join"]["client"], ann2.id,
            "{ctx}: its own join last"
        );
        assert_eq!(j["sections"]["p0"]["data"], "while away", "{ctx}");
        let r = ann2.wait("update reply", |v| v["id"] == 101);
        assert_eq!(r["update"]["version"], 1, "{ctx}: {r}");
        // Live from the reply's offset on: the update, once, right after.
        let mut live = ann2.pubs_through(&story, at + 1);
        live.extend(ann2.drain_pushes(&story, "pub"));
        let offsets: Vec<u64> = live
            .iter()
            .map(|p| p["push"]["pub"]["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![at + 1], "{ctx}: no gap, no duplicate");
        let u = &live[0]["push"]["pub"]["data"]["update"];
        assert_eq!(
            (u["section"].as_str(), u["data"].as_str()),
            (Some("p1"), Some("mine")),
            "{ctx}"
        );
    }
}
