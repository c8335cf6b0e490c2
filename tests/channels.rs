//! Channels that remember, end to end against the real binary: recovery
//! after a dropped connection, history, presence with states across
//! shards, idempotent and high-priority publishing, the connect reply.
//!
//! The client is `common::raw_json::RawJson` (bytes off the socket, one
//! WebSocket frame at a time): every data frame must be a whole, unmasked,
//! uncompressed, unfragmented text frame whose `\n`-separated lines each
//! parse as one JSON object, so a cut or glued frame fails the test instead
//! of being hidden by a client library. Every wait has a deadline and fails
//! with everything the client received.
//!
//! The shard a connection lands on is the kernel's choice (SO_REUSEPORT),
//! so each scenario that depends on it runs on two channels, one homed on
//! each shard: whatever shard the clients land on, one channel is served
//! through another shard's home and one locally.

mod common;

use std::collections::BTreeSet;

use common::raw_json::RawJson;
use common::*;
use serde_json::{Value, json};

/// Shards the test server runs.
const SHARDS: usize = 2;

const CONFIG: &str = r#"
shards = 2
node_name = "edge-test"

[[namespace]]
name = "chat"
history_size = 100
history_ttl = "60s"
recover = true

[[namespace]]
name = "small"
history_size = 5
history_ttl = "60s"
recover = true

[[namespace]]
name = "room"
presence = true
join_leave = true

[[namespace]]
name = "alert"
priority = "high"
"#;

/// Starts the binary with [`CONFIG`] (two shards, the namespaces above).
fn start(test: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("wsedge-channels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.toml"));
    std::fs::write(&path, CONFIG).unwrap();
    let server = Server::start_with(Opts {
        args: vec!["--config".into(), path.to_str().unwrap().into()],
        ..Opts::default()
    });
    // The harness hands out the addresses before it logs their line.
    server.wait_for("the listening line in the log", || {
        server.log.lock().unwrap().contains(" listening ")
    });
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains(&format!(" shards={SHARDS} ")),
        "the config's two shards: {log}"
    );
    server
}

/// `{prefix}{i}` for the first `i` that makes it homed on `shard`.
fn homed(prefix: &str, shard: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| wsedge::engine::hub::home_shard(c, SHARDS) == shard)
        .unwrap()
}

/// One channel per home shard.
fn one_per_home(prefix: &str) -> Vec<String> {
    (0..SHARDS).map(|s| homed(prefix, s)).collect()
}

/// The data published as number `n` (published in order, so at offset `n`
/// of a fresh channel).
fn data(n: u64) -> Value {
    json!({"n": n, "text": format!("message {n}")})
}

/// A publication as `publications` lists it.
fn publication(n: u64) -> Value {
    json!({"offset": n, "data": data(n)})
}

/// The push of publication `n` on `channel`.
fn pub_push(channel: &str, n: u64) -> Value {
    json!({"push": {"channel": channel, "pub": publication(n)}})
}

/// Publishes [`data`]`(n)` and checks that it got offset `n`.
fn publish(c: &mut RawJson, channel: &str, n: u64) {
    let r = c.call("publish", json!({"channel": channel, "data": data(n)}));
    assert_eq!(
        r,
        json!({"id": r["id"], "publish": {"offset": n}}),
        "{channel}"
    );
}

/// The epoch of a reply, checked to be 16 hex characters.
fn epoch_of(result: &Value) -> String {
    let e = result["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"));
    assert!(
        e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit()),
        "epoch {e:?}"
    );
    e.to_string()
}

/// The error reply `{id, error: {code, message, temporary: false}}`.
fn error(id: &Value, code: u32, message: &str) -> Value {
    json!({"id": id, "error": {"code": code, "message": message, "temporary": false}})
}

/// The offsets of a list of `pub` pushes.
fn offsets(pushes: &[Value]) -> Vec<u64> {
    pushes
        .iter()
        .map(|p| p["push"]["pub"]["offset"].as_u64().unwrap_or(0))
        .collect()
}

/// Subscriber `a` takes 1..=5, drops without a close; `missed` more are
/// published; a new connection recovers from offset 5. Returns the new
/// connection, its subscribe result and the epoch.
fn drop_and_resubscribe(
    server: &Server,
    channel: &str,
    missed: u64,
) -> (RawJson, RawJson, Value, String) {
    let mut a = RawJson::anon(server);
    let mut publisher = RawJson::anon(server);
    let r = a.call("subscribe", json!({"channel": channel}));
    let epoch = epoch_of(&r["subscribe"]);
    assert_eq!(
        r,
        json!({"id": r["id"], "subscribe": {
            "epoch": epoch, "offset": 0, "recoverable": true, "recovered": false,
            "publications": []}}),
    );
    for n in 1..=5 {
        publish(&mut publisher, channel, n);
    }
    let got = a.pubs_through(channel, 5);
    let want: Vec<Value> = (1..=5).map(|n| pub_push(channel, n)).collect();
    assert_eq!(got, want);
    a.raw.abort();
    for n in 6..=5 + missed {
        publish(&mut publisher, channel, n);
    }
    let mut b = RawJson::anon(server);
    let r = b.call(
        "subscribe",
        json!({"channel": channel, "recover": true, "epoch": epoch, "offset": 5}),
    );
    let result = r
        .get("subscribe")
        .unwrap_or_else(|| panic!("{channel}: {r}"))
        .clone();
    (publisher, b, result, epoch)
}

#[test]
fn recovery_after_a_dropped_connection_replays_what_was_missed_once_then_goes_live() {
    let server = start("recovery");
    for channel in one_per_home("chat:x") {
        let (mut publisher, mut b, result, epoch) = drop_and_resubscribe(&server, &channel, 10);
        let home = wsedge::engine::hub::home_shard(&channel, SHARDS);
        let ctx = format!(
            "{channel} (home {home}, recovering client on shard {})",
            b.shard
        );
        let replayed: Vec<Value> = (6..=15).map(publication).collect();
        assert_eq!(
            result,
            json!({"epoch": epoch, "offset": 15, "recoverable": true, "recovered": true,
                   "publications": replayed}),
            "{ctx}"
        );
        for n in 16..=18 {
            publish(&mut publisher, &channel, n);
        }
        let mut live = b.pubs_through(&channel, 18);
        // Anything that came after 18 (a duplicate) is caught too.
        live.extend(b.drain_pushes(&channel, "pub"));
        let want: Vec<Value> = (16..=18).map(|n| pub_push(&channel, n)).collect();
        assert_eq!(live, want, "{ctx}");
        let mut all: Vec<u64> = result["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        all.extend(offsets(&live));
        assert_eq!(
            all,
            (6..=18).collect::<Vec<_>>(),
            "{ctx}: no gap, no duplicate"
        );
        recover_while_publishing(&server, &mut publisher, &channel, &epoch, 18);
    }
}

/// Rounds of: a new connection recovers from `from` while the publisher's
/// next publications are in flight (sent in two frames around the
/// subscribe, not awaited), so the home sees the subscribe before, between
/// or after them. Whatever
/// the order, the reply's publications and the pushes after it are every
/// publication after `from`, once, in order.
fn recover_while_publishing(
    server: &Server,
    publisher: &mut RawJson,
    channel: &str,
    epoch: &str,
    mut from: u64,
) {
    const BATCH: u64 = 15;
    for (round, split) in [0, 4, 8, 12, 15].into_iter().enumerate() {
        let mut c = RawJson::anon(server);
        let ctx = format!(
            "{channel} round {round} (home {}, recovering on shard {}, publisher on shard {})",
            wsedge::engine::hub::home_shard(channel, SHARDS),
            c.shard,
            publisher.shard
        );
        let last = from + BATCH;
        let batch: Vec<String> = (from + 1..=last)
            .map(|n| json!({"id": 10_000 + n, "publish": {"channel": channel, "data": data(n)}}))
            .map(|v| v.to_string())
            .collect();
        // The subscribe goes between the frames of the batch, at a
        // different place each round.
        let (before, after) = batch.split_at(split);
        if !before.is_empty() {
            publisher.raw.send_text(&before.join("\n"));
        }
        let sub = c.send(
            "subscribe",
            json!({"channel": channel, "recover": true, "epoch": epoch, "offset": from}),
        );
        if !after.is_empty() {
            publisher.raw.send_text(&after.join("\n"));
        }
        let r = c.reply_before_pubs(sub, channel);
        for n in from + 1..=last {
            let r = publisher.wait(&format!("publish reply {n}"), |v| v["id"] == 10_000 + n);
            assert_eq!(
                r,
                json!({"id": 10_000 + n, "publish": {"offset": n}}),
                "{ctx}"
            );
        }
        let result = &r["subscribe"];
        let replayed = result["publications"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut all: Vec<u64> = replayed
            .iter()
            .map(|p| p["offset"].as_u64().unwrap_or(0))
            .collect();
        let at = all.last().copied().unwrap_or(from);
        let want: Vec<Value> = all.iter().map(|&n| publication(n)).collect();
        assert_eq!(
            r,
            json!({"id": sub, "subscribe": {"epoch": epoch, "offset": at, "recoverable": true,
                "recovered": true, "publications": want}}),
            "{ctx}"
        );
        let mut live = Vec::new();
        if at < last {
            live = c.pubs_through(channel, last);
        }
        live.extend(c.drain_pushes(channel, "pub"));
        let want: Vec<Value> = offsets(&live)
            .iter()
            .map(|&n| pub_push(channel, n))
            .collect();
        assert_eq!(live, want, "{ctx}");
        all.extend(offsets(&live));
        assert_eq!(
            all,
            (from + 1..=last).collect::<Vec<_>>(),
            "{ctx}: no gap, no duplicate; received:\n{}",
            c.seen()
        );
        c.raw.abort();
        from = last;
    }
}

#[test]
fn recovery_past_the_kept_history_fails_whole_and_goes_live() {
    let server = start("overflow");
    for channel in one_per_home("small:x") {
        // Ring of 5, 7 missed: offsets 6 and 7 are gone.
        let (mut publisher, mut b, result, epoch) = drop_and_resubscribe(&server, &channel, 7);
        let ctx = format!("{channel}, recovering client on shard {}", b.shard);
        assert_eq!(
            result,
            json!({"epoch": epoch, "offset": 12, "recoverable": true, "recovered": false,
                   "publications": []}),
            "{ctx}: never a partial recovery; subscribed at the current offset"
        );
        for n in 13..=15 {
            publish(&mut publisher, &channel, n);
        }
        let mut live = b.pubs_through(&channel, 15);
        live.extend(b.drain_pushes(&channel, "pub"));
        let want: Vec<Value> = (13..=15).map(|n| pub_push(&channel, n)).collect();
        assert_eq!(live, want, "{ctx}");
    }
}

#[test]
fn history_reads_newest_first_since_and_refuses_what_it_cannot() {
    let server = start("history");
    let mut c = RawJson::anon(&server);
    for channel in one_per_home("chat:h") {
        for n in 1..=10 {
            publish(&mut c, &channel, n);
        }
        let pubs = |ns: &[u64]| -> Vec<Value> { ns.iter().map(|&n| publication(n)).collect() };
        let r = c.call("history", json!({"channel": channel, "limit": 3}));
        let epoch = epoch_of(&r["history"]);
        let answer = |ns: &[u64]| json!({"publications": pubs(ns), "epoch": epoch, "offset": 10});
        assert_eq!(
            r,
            json!({"id": r["id"], "history": answer(&[8, 9, 10])}),
            "{channel}: the newest 3, oldest first"
        );
        let r = c.call(
            "history",
            json!({"channel": channel, "limit": 3, "reverse": true}),
        );
        assert_eq!(
            r,
            json!({"id": r["id"], "history": answer(&[10, 9, 8])}),
            "{channel}: newest first"
        );
        let r = c.call(
            "history",
            json!({"channel": channel, "since": {"epoch": epoch, "offset": 7}}),
        );
        assert_eq!(
            r,
            json!({"id": r["id"], "history": answer(&[8, 9, 10])}),
            "{channel}: everything after 7"
        );
        let r = c.call(
            "history",
            json!({"channel": channel, "limit": 2, "since": {"epoch": epoch, "offset": 4}}),
        );
        assert_eq!(
            r,
            json!({"id": r["id"], "history": answer(&[5, 6])}),
            "{channel}: the first 2 after 4"
        );
        let r = c.call("history", json!({"channel": channel}));
        assert_eq!(
            r,
            json!({"id": r["id"], "history": answer(&(1..=10).collect::<Vec<_>>())}),
            "{channel}: all of it"
        );
        // An epoch that is not the channel's (one hex digit changed).
        let mut bad = epoch.clone().into_bytes();
        bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        let r = c.call(
            "history",
            json!({"channel": channel, "since": {"epoch": bad, "offset": 4}}),
        );
        assert_eq!(
            r,
            error(&r["id"], 115, "unrecoverable position"),
            "{channel}"
        );
    }
    // Namespaces without history: presence only, and the default one.
    for channel in ["room:1", "plain"] {
        let r = c.call("history", json!({"channel": channel}));
        assert_eq!(r, error(&r["id"], 103, "permission denied"), "{channel}");
    }
}

/// A member's `info` object as presence pushes carry it.
fn member(c: &RawJson, user: &str, info: Option<&Value>) -> Value {
    let mut m = json!({"user": user, "client": c.id});
    if let Some(i) = info {
        m["info"] = i.clone();
    }
    m
}

#[test]
fn presence_joins_states_expiry_and_leaves_across_shards() {
    let server = start("presence");
    for room in one_per_home("room:") {
        let home = wsedge::engine::hub::home_shard(&room, SHARDS);
        let ann_info = json!({"name": "Ann", "tags": ["x"]});
        let mut clients = vec![
            RawJson::user(&server, "ann", Some(ann_info.clone())),
            RawJson::user(&server, "bob", None),
            RawJson::user(&server, "bob", None),
        ];
        let members = [
            member(&clients[0], "ann", Some(&ann_info)),
            member(&clients[1], "bob", None),
            member(&clients[2], "bob", None),
        ];
        let ctx = format!(
            "{room} (home {home}; clients on shards {:?})",
            clients.iter().map(|c| c.shard).collect::<Vec<_>>()
        );
        // One after the other: each sees its own join and every later one
        // (earlier joins only if they were still being collected).
        for c in clients.iter_mut() {
            let r = c.call("subscribe", json!({"channel": room}));
            let epoch = epoch_of(&r["subscribe"]);
            assert_eq!(
                r,
                json!({"id": r["id"], "subscribe": {"epoch": epoch, "offset": 0,
                    "recoverable": false, "recovered": false, "publications": []}}),
                "{ctx}"
            );
        }
        for (i, c) in clients.iter_mut().enumerate() {
            for m in &members[i..] {
                let want = json!({"push": {"channel": room, "join": {"info": m}}});
                let got = c.wait(&format!("join of {}", m["client"]), |v| v == &want);
                assert_eq!(got, want);
            }
        }
        let r = clients[0].call("presence_stats", json!({"channel": room}));
        assert_eq!(
            r,
            json!({"id": r["id"], "presence_stats": {"num_clients": 3, "num_users": 2}}),
            "{ctx}"
        );
        let r = clients[1].call("presence", json!({"channel": room}));
        let listed: serde_json::Map<String, Value> = members
            .iter()
            .map(|m| (m["client"].as_str().unwrap().to_string(), m.clone()))
            .collect();
        assert_eq!(
            r,
            json!({"id": r["id"], "presence": {"clients": listed}}),
            "{ctx}"
        );
        // No join twice, and none but the three.
        for (i, c) in clients.iter_mut().enumerate() {
            let mut early = BTreeSet::new();
            for extra in c.drain_pushes(&room, "join") {
                let m = &extra["push"]["join"]["info"];
                assert!(
                    members[..i].contains(m) && early.insert(m.to_string()),
                    "{ctx}: client {i} got an unexpected join {extra}"
                );
            }
        }

        // A typing state with a 2 s ttl: pushed, then expired to "".
        let r = clients[0].call(
            "presence_state",
            json!({"channel": room, "state": "typing", "ttl": 2}),
        );
        assert_eq!(r, json!({"id": r["id"], "presence_state": {}}), "{ctx}");
        for state in ["typing", ""] {
            let want = json!({"push": {"channel": room,
                "state": {"info": members[0], "state": state}}});
            for c in clients[1..].iter_mut() {
                let got = c.wait(&format!("state {state:?}"), |v| {
                    v["push"]["channel"] == room.as_str() && v["push"].get("state").is_some()
                });
                assert_eq!(got, want, "{ctx}");
            }
        }

        // One bob leaves: the others are told; the stats follow.
        let gone = clients.pop().unwrap();
        gone.close();
        let want = json!({"push": {"channel": room, "leave": {"info": members[2]}}});
        for c in clients.iter_mut() {
            let got = c.wait("leave", |v| {
                v["push"]["channel"] == room.as_str() && v["push"].get("leave").is_some()
            });
            assert_eq!(got, want, "{ctx}");
        }
        let r = clients[1].call("presence_stats", json!({"channel": room}));
        assert_eq!(
            r,
            json!({"id": r["id"], "presence_stats": {"num_clients": 2, "num_users": 2}}),
            "{ctx}"
        );
    }
}

#[test]
fn a_retried_publish_with_the_same_idempotency_key_is_accepted_once() {
    let server = start("idempotency");
    let mut s = RawJson::anon(&server);
    let mut p = RawJson::anon(&server);
    for channel in one_per_home("chat:idem") {
        let r = s.call("subscribe", json!({"channel": channel}));
        assert!(r["subscribe"].is_object(), "{r}");
        let send = |p: &mut RawJson, n: u64, key: &str| {
            p.call(
                "publish",
                json!({"channel": channel, "data": data(n), "idempotency_key": key}),
            )
        };
        for _ in 0..2 {
            let r = send(&mut p, 1, "order-81");
            assert_eq!(
                r,
                json!({"id": r["id"], "publish": {"offset": 1}}),
                "{channel}"
            );
        }
        let r = send(&mut p, 2, "order-82");
        assert_eq!(
            r,
            json!({"id": r["id"], "publish": {"offset": 2}}),
            "{channel}"
        );
        // In order: a duplicate of 1 would come before 2.
        let mut got = s.pubs_through(&channel, 2);
        got.extend(s.drain_pushes(&channel, "pub"));
        assert_eq!(
            got,
            vec![pub_push(&channel, 1), pub_push(&channel, 2)],
            "{channel} (subscriber on shard {}, publisher on shard {})",
            s.shard,
            p.shard
        );
    }
}

/// A `subscribe` and a `publish` to the same channel in one WebSocket
/// message: the subscribe reply comes first (it says where the
/// subscription starts), then the publication, then the publish reply —
/// also when the channel's home is the connection's own shard, where both
/// commands take effect at once, within the message, and when the channel
/// is high-priority (its publications jump queued publications, never the
/// connection's own replies).
#[test]
fn a_subscribe_pipelined_with_a_publish_is_answered_before_the_publication() {
    let server = start("pipelined");
    let mut c = RawJson::anon(&server);
    let channels = one_per_home("chat:pipelined")
        .into_iter()
        .chain(one_per_home("alert:pipelined"));
    for channel in channels {
        let ctx = format!(
            "{channel} (home {}, client on shard {})",
            wsedge::engine::hub::home_shard(&channel, SHARDS),
            c.shard
        );
        let sub = json!({"id": 100, "subscribe": {"channel": channel}});
        let publish = json!({"id": 101, "publish": {"channel": channel, "data": data(1)}});
        c.raw.send_text(&format!("{sub}\n{publish}"));
        let r = c.reply_before_pubs(100, &channel);
        assert_eq!(r["subscribe"]["offset"], 0, "{ctx}: {r}");
        let got = c.pubs_through(&channel, 1);
        assert_eq!(got, vec![pub_push(&channel, 1)], "{ctx}");
        let r = c.wait("publish reply", |v| v["id"] == 101);
        assert_eq!(r["publish"]["offset"], 1, "{ctx}: {r}");
        assert!(c.drain_pushes(&channel, "pub").is_empty(), "{ctx}: once");
    }
}

/// High-priority frames jump ahead of normal data already queued for a
/// connection. That only shows with a backlog, which a test cannot build
/// reliably end to end; the ordering is unit-tested in
/// `src/engine/outbox.rs`. Here: a high-priority namespace's publications
/// go through the engine and the shell intact, next to normal ones.
#[test]
fn high_priority_publications_arrive_intact_next_to_normal_ones() {
    let server = start("priority");
    let mut s = RawJson::anon(&server);
    let mut p = RawJson::anon(&server);
    let channels = [homed("alert:", 0), homed("alert:", 1), homed("plain", 0)];
    for ch in &channels {
        let r = s.call("subscribe", json!({"channel": ch}));
        assert!(r["subscribe"].is_object(), "{r}");
    }
    for n in 1..=3 {
        for ch in &channels {
            publish(&mut p, ch, n);
        }
    }
    for ch in &channels {
        let mut got = s.pubs_through(ch, 3);
        got.extend(s.drain_pushes(ch, "pub"));
        let want: Vec<Value> = (1..=3).map(|n| pub_push(ch, n)).collect();
        assert_eq!(got, want, "{ch}");
    }
}

#[test]
fn the_connect_reply_carries_the_user_as_given() {
    let server = start("connect");
    let (c, r) = RawJson::connect(
        &server,
        json!({"user": "ann", "name": "web", "version": "1"}),
    );
    assert_eq!(
        r,
        json!({"id": 1, "connect": {"client": c.id, "node": "edge-test", "ping": 25,
            "user": "ann", "expires": false}})
    );
    let (c, r) = RawJson::connect(&server, json!({"user": "Zoë 7/@x", "info": {"a": 1}}));
    assert_eq!(
        r,
        json!({"id": 1, "connect": {"client": c.id, "node": "edge-test", "ping": 25,
            "user": "Zoë 7/@x", "expires": false}})
    );
    let (c, r) = RawJson::connect(&server, json!({}));
    assert_eq!(
        r,
        json!({"id": 1, "connect": {"client": c.id, "node": "edge-test", "ping": 25,
            "user": "", "expires": false}}),
        "anonymous"
    );
}
