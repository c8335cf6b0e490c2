//! Deterministic multi-shard tests of what channels remember: recovery,
//! history, presence with states, idempotent publishing, subscriber caps.

use std::time::Duration;

use serde_json::{Value, json};

use super::sim::{Seen, Sim, SimConn};
use crate::engine::codes::ErrorCode;
use crate::engine::durable::DurableEvent;
use crate::engine::hub::{Position, home_shard};
use crate::engine::namespace::{NamespaceOptions, Namespaces, Priority};

fn namespaces() -> Namespaces {
    let history = NamespaceOptions {
        history_size: 100,
        history_ttl_ms: 60_000,
        recover: true,
        ..Default::default()
    };
    Namespaces::new(
        false,
        [
            ("chat", history.clone()),
            (
                "small",
                NamespaceOptions {
                    history_size: 5,
                    ..history.clone()
                },
            ),
            (
                "room",
                NamespaceOptions {
                    presence: true,
                    join_leave: true,
                    join_leave_max_subscribers: 3,
                    ..Default::default()
                },
            ),
            (
                "capped",
                NamespaceOptions {
                    max_subscribers: 2,
                    ..Default::default()
                },
            ),
            (
                "news",
                NamespaceOptions {
                    client_publish: false,
                    priority: Priority::High,
                    ..Default::default()
                },
            ),
            (
                "kept",
                NamespaceOptions {
                    durable: true,
                    ..history.clone()
                },
            ),
            (
                "lobby",
                NamespaceOptions {
                    presence: true,
                    durable_presence: true,
                    ..Default::default()
                },
            ),
        ],
    )
    .expect("valid namespaces")
}

fn sim(shards: usize, seed: u64) -> Sim {
    Sim::with_namespaces(shards, seed, namespaces())
}

fn position(v: &Value) -> Position {
    let epoch = v["epoch"].as_str().expect("epoch");
    Position {
        epoch: u64::from_str_radix(epoch, 16).expect("hex epoch"),
        offset: v["offset"].as_u64().expect("offset"),
    }
}

fn code(v: &Value) -> u64 {
    v["error"]["code"].as_u64().unwrap_or(0)
}

/// Pushes of a kind ("join", "leave", "state") that `c` saw on `channel`.
fn pushes(sim: &Sim, c: SimConn, channel: &str, kind: &str) -> Vec<Value> {
    sim.seen(c)
        .iter()
        .filter_map(|s| match s {
            Seen::Push(v) if v["push"]["channel"] == channel && !v["push"][kind].is_null() => {
                Some(v["push"][kind].clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn recovery_across_a_drop_returns_every_missed_publication_once_in_order_then_live() {
    let mut replayed = 0;
    for seed in 0..40 {
        let mut sim = sim(3, seed);
        let publisher = sim.connect((seed % 3) as usize);
        let first = sim.connect(((seed / 3) % 3) as usize);
        let id = sim.subscribe(first, "chat:lobby");
        sim.run();
        for i in 0..5 {
            sim.publish(publisher, "chat:lobby", &i.to_string());
        }
        sim.run();
        let at = position(&sim.reply(first, id)["subscribe"]);
        let seen = sim.offsets(first, "chat:lobby");
        let last = Position {
            offset: *seen.last().expect("received some"),
            ..at
        };
        // Dropped; the channel goes on without it.
        sim.close(first);
        for i in 5..12 {
            sim.publish(publisher, "chat:lobby", &i.to_string());
        }
        // Reconnect elsewhere and recover while publications keep coming.
        let again = sim.connect(((seed / 9) % 3) as usize);
        let id = sim.subscribe_from(again, "chat:lobby", Some(last));
        for i in 12..20 {
            sim.publish(publisher, "chat:lobby", &i.to_string());
            for _ in 0..(seed % 5) {
                sim.step();
            }
        }
        sim.run();
        let reply = sim.reply(again, id)["subscribe"].clone();
        assert_eq!(reply["recovered"], true, "seed {seed}: {reply}");
        assert_eq!(reply["recoverable"], true);
        let mut offsets: Vec<u64> = reply["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        // The reply's position is its last recovered publication (or the
        // client's own, when the publications had not reached the home
        // yet and all arrive live).
        assert_eq!(
            position(&reply).offset,
            offsets.last().copied().unwrap_or(last.offset),
            "seed {seed}"
        );
        replayed += usize::from(!offsets.is_empty());
        for p in reply["publications"].as_array().unwrap() {
            // Published i at offset i + 1.
            assert_eq!(p["data"], json!(p["offset"].as_u64().unwrap() - 1));
        }
        offsets.extend(sim.offsets(again, "chat:lobby"));
        assert_eq!(offsets, (6..=20).collect::<Vec<_>>(), "seed {seed}");
    }
    assert!(replayed >= 20, "most runs replay from history: {replayed}");
}

#[test]
fn recovery_fails_whole_after_overflow_epoch_change_or_ttl() {
    let mut sim = sim(2, 3);
    let p = sim.connect(0);
    let s = sim.connect(1);
    let id = sim.subscribe(s, "small:x");
    sim.run();
    let at = position(&sim.reply(s, id)["subscribe"]);
    sim.close(s);
    // Ring of 5: missing 5 recovers, missing 6 does not.
    for i in 0..5 {
        sim.publish(p, "small:x", &i.to_string());
    }
    sim.run();
    let a = sim.connect(1);
    let id = sim.subscribe_from(a, "small:x", Some(at));
    sim.run();
    let r = &sim.reply(a, id)["subscribe"];
    assert_eq!(r["recovered"], true);
    assert_eq!(r["publications"].as_array().unwrap().len(), 5);
    sim.close(a);
    sim.publish(p, "small:x", "5");
    sim.run();
    let b = sim.connect(0);
    let id = sim.subscribe_from(b, "small:x", Some(at));
    sim.run();
    let r = sim.reply(b, id)["subscribe"].clone();
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["publications"], json!([]), "never a partial recovery");
    assert_eq!(r["offset"], 6, "subscribed at the current position");
    // A position from another epoch.
    let c = sim.connect(1);
    let other = Position {
        epoch: at.epoch ^ 1,
        offset: 6,
    };
    let id = sim.subscribe_from(c, "small:x", Some(other));
    sim.run();
    assert_eq!(sim.reply(c, id)["subscribe"]["recovered"], false);
    // Up to date: recovered, nothing missed.
    let d = sim.connect(0);
    let now = Position { offset: 6, ..at };
    let id = sim.subscribe_from(d, "small:x", Some(now));
    sim.run();
    assert_eq!(sim.reply(d, id)["subscribe"]["recovered"], true);
    // TTL: a minute later the history is gone.
    sim.close(d);
    sim.close(c);
    sim.close(b);
    let before = Position { offset: 5, ..at };
    sim.advance(Duration::from_secs(61));
    let e = sim.connect(1);
    let id = sim.subscribe_from(e, "small:x", Some(before));
    sim.run();
    let r = &sim.reply(e, id)["subscribe"];
    assert_eq!(r["recovered"], false, "{r}");
}

#[test]
fn namespaces_without_recovery_subscribe_plainly() {
    let mut sim = sim(2, 1);
    let c = sim.connect(0);
    let id = sim.subscribe_from(
        c,
        "plain",
        Some(Position {
            epoch: 1,
            offset: 0,
        }),
    );
    sim.run();
    let r = &sim.reply(c, id)["subscribe"];
    assert_eq!(r["recoverable"], false);
    assert_eq!(r["recovered"], false);
}

#[test]
fn history_reads_newest_oldest_since_and_refuses_what_it_cannot() {
    let mut sim = sim(2, 5);
    let c = sim.connect(0);
    for i in 1..=10 {
        sim.publish(c, "chat:h", &i.to_string());
    }
    sim.run();
    let offsets = |v: &Value| -> Vec<u64> {
        v["history"]["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    let id = sim.history(c, "chat:h", Some(3), None, false);
    sim.run();
    let r = sim.reply(c, id).clone();
    assert_eq!(offsets(&r), vec![8, 9, 10], "newest 3, oldest first");
    let at = position(&r["history"]);
    assert_eq!(at.offset, 10);
    let id = sim.history(c, "chat:h", Some(3), None, true);
    sim.run();
    assert_eq!(offsets(sim.reply(c, id)), vec![10, 9, 8]);
    let since = Position { offset: 4, ..at };
    let id = sim.history(c, "chat:h", Some(2), Some(since), false);
    sim.run();
    assert_eq!(offsets(sim.reply(c, id)), vec![5, 6]);
    let id = sim.history(c, "chat:h", Some(0), None, false);
    sim.run();
    assert_eq!(offsets(sim.reply(c, id)), Vec::<u64>::new());
    let bad = Position {
        epoch: at.epoch ^ 1,
        offset: 4,
    };
    let id = sim.history(c, "chat:h", None, Some(bad), false);
    sim.run();
    assert_eq!(
        code(sim.reply(c, id)),
        u64::from(ErrorCode::UnrecoverablePosition.code())
    );
    let id = sim.history(c, "plain", None, None, false);
    sim.run();
    assert_eq!(code(sim.reply(c, id)), 103, "no history in that namespace");
}

#[test]
fn presence_joins_leaves_states_and_stats_across_shards() {
    let mut sim = sim(3, 11);
    let a = sim.connect_as(0, "ann");
    let b = sim.connect_as(1, "bob");
    let b2 = sim.connect_as(2, "bob");
    for c in [a, b, b2] {
        sim.subscribe(c, "room:1");
    }
    sim.run();
    sim.advance(Duration::from_millis(60));
    // One coalesced frame: three joins, seen by every subscriber.
    for c in [a, b, b2] {
        let joins = pushes(&sim, c, "room:1", "join");
        assert_eq!(joins.len(), 3, "{c:?}: {:?}", sim.seen(c));
    }
    assert_eq!(sim.frames[&a], 1, "three joins in one frame");
    let id = sim.presence(a, "room:1", true);
    sim.run();
    assert_eq!(
        sim.reply(a, id)["presence_stats"],
        json!({"num_clients": 3, "num_users": 2})
    );
    let id = sim.presence(b, "room:1", false);
    sim.run();
    let clients = sim.reply(b, id)["presence"]["clients"].clone();
    let who = sim.who(b2);
    assert_eq!(clients[&*who.client]["user"], "bob");
    // A typing state with a 3 s ttl: pushed, then expired to "".
    let id = sim.state(a, "room:1", "typing", Some(3));
    sim.run();
    assert_eq!(sim.reply(a, id)["presence_state"], json!({}));
    sim.advance(Duration::from_millis(60));
    let states = pushes(&sim, b, "room:1", "state");
    assert_eq!(states.len(), 1);
    assert_eq!(states[0]["state"], "typing");
    assert_eq!(states[0]["info"]["user"], "ann");
    let id = sim.presence(b, "room:1", false);
    sim.run();
    let who_a = sim.who(a);
    assert_eq!(
        sim.reply(b, id)["presence"]["clients"][&*who_a.client]["state"],
        "typing"
    );
    sim.advance(Duration::from_secs(3));
    let states = pushes(&sim, b, "room:1", "state");
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(
        states[1]["state"], "",
        "the typing indicator does not stick"
    );
    // Leave on close.
    sim.close(b2);
    sim.run();
    sim.advance(Duration::from_millis(60));
    let leaves = pushes(&sim, a, "room:1", "leave");
    assert_eq!(leaves.len(), 1);
    assert_eq!(leaves[0]["info"]["client"], &*sim.who(b2).client);
    let id = sim.presence(a, "room:1", true);
    sim.run();
    assert_eq!(
        sim.reply(a, id)["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    // Not subscribed: no state. Presence off: 103.
    let c = sim.connect(0);
    let id = sim.state(c, "room:1", "typing", None);
    sim.run();
    assert_eq!(code(sim.reply(c, id)), 108);
    let id = sim.presence(c, "plain", false);
    sim.run();
    assert_eq!(code(sim.reply(c, id)), 103);
}

#[test]
fn join_leave_stop_above_the_cap_but_stats_stay_exact() {
    let mut sim = sim(2, 2);
    let watcher = sim.connect_as(0, "w");
    sim.subscribe(watcher, "room:big");
    sim.run();
    sim.advance(Duration::from_millis(60));
    let others: Vec<SimConn> = (0..6)
        .map(|i| sim.connect_as(i % 2, &format!("u{i}")))
        .collect();
    for &c in &others {
        sim.subscribe(c, "room:big");
        sim.run();
        sim.advance(Duration::from_millis(60));
    }
    // Cap 3: joins pushed while members <= 3 (the watcher and two more).
    let joins = pushes(&sim, watcher, "room:big", "join");
    assert_eq!(joins.len(), 3, "{joins:?}");
    let id = sim.presence(watcher, "room:big", true);
    sim.run();
    assert_eq!(sim.reply(watcher, id)["presence_stats"]["num_clients"], 7);
}

#[test]
fn a_join_and_leave_within_one_tick_push_nothing() {
    let mut sim = sim(2, 4);
    let watcher = sim.connect_as(0, "w");
    sim.subscribe(watcher, "room:flap");
    sim.run();
    sim.advance(Duration::from_millis(60));
    let before = sim.seen(watcher).len();
    let flap = sim.connect_as(1, "f");
    sim.subscribe(flap, "room:flap");
    sim.run();
    sim.close(flap);
    sim.run();
    sim.advance(Duration::from_millis(60));
    assert_eq!(sim.seen(watcher).len(), before, "{:?}", sim.seen(watcher));
}

#[test]
fn idempotent_publish_returns_the_original_offset_and_delivers_once() {
    let mut sim = sim(2, 8);
    let s = sim.connect(1);
    sim.subscribe(s, "feed");
    sim.run();
    let p = sim.connect(0);
    let a = sim.publish_key(p, "feed", "1", Some("k1"));
    let b = sim.publish_key(p, "feed", "1", Some("k1"));
    let c = sim.publish_key(p, "feed", "2", Some("k2"));
    sim.run();
    assert_eq!(sim.reply(p, a)["publish"]["offset"], 1);
    assert_eq!(
        sim.reply(p, b)["publish"]["offset"],
        1,
        "the original offset"
    );
    assert_eq!(sim.reply(p, c)["publish"]["offset"], 2);
    assert_eq!(sim.offsets(s, "feed"), vec![1, 2]);
    // The same key on another channel is another key.
    let d = sim.publish_key(p, "other", "1", Some("k1"));
    sim.run();
    assert_eq!(sim.reply(p, d)["publish"]["offset"], 1);
    // After the window the key is forgotten.
    sim.advance(Duration::from_secs(301));
    let e = sim.publish_key(p, "feed", "1", Some("k1"));
    sim.run();
    assert_eq!(sim.reply(p, e)["publish"]["offset"], 3);
}

#[test]
fn max_subscribers_is_enforced_node_wide() {
    let mut sim = sim(3, 9);
    let c: Vec<SimConn> = (0..3).map(|i| sim.connect(i)).collect();
    let ids: Vec<u32> = c.iter().map(|&x| sim.subscribe(x, "capped:a")).collect();
    sim.run();
    let refused: Vec<bool> = c
        .iter()
        .zip(&ids)
        .map(|(&x, &id)| code(sim.reply(x, id)) == 106)
        .collect();
    assert_eq!(refused.iter().filter(|&&r| r).count(), 1, "{refused:?}");
    let ok = c[refused.iter().position(|&r| !r).unwrap()];
    sim.unsubscribe(ok, "capped:a");
    sim.run();
    let d = sim.connect(1);
    let id = sim.subscribe(d, "capped:a");
    sim.run();
    assert!(sim.reply(d, id)["subscribe"].is_object());
}

#[test]
fn leaving_while_the_home_decides_keeps_counts_right() {
    for seed in 0..10 {
        let mut sim = sim(2, seed);
        let away = 1 - home_shard("room:q", 2);
        let a = sim.connect_as(away, "a");
        let b = sim.connect_as(away, "b");
        sim.subscribe(a, "room:q");
        sim.subscribe(b, "room:q");
        // Before the home answers: one unsubscribes, one closes.
        sim.unsubscribe(a, "room:q");
        sim.close(b);
        sim.run();
        let c = sim.connect_as(away, "c");
        sim.subscribe(c, "room:q");
        sim.run();
        let id = sim.presence(c, "room:q", true);
        sim.run();
        assert_eq!(
            sim.reply(c, id)["presence_stats"],
            json!({"num_clients": 1, "num_users": 1}),
            "seed {seed}"
        );
    }
}

#[test]
fn only_the_server_may_publish_where_clients_may_not() {
    let mut sim = sim(1, 0);
    let c = sim.connect(0);
    let id = sim.publish(c, "news:x", "1");
    assert_eq!(code(sim.reply(c, id)), 103);
}

/// The publication events the sink took: (id, user, client, data).
fn publication_events(sim: &Sim) -> Vec<(String, String, String, String)> {
    sim.store
        .durable
        .iter()
        .filter_map(|e| match e {
            DurableEvent::Publication(p) => Some((
                p.id(),
                p.user.to_string(),
                p.client.to_string(),
                String::from_utf8_lossy(&p.data.bytes).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_durable_namespace_makes_one_event_per_accepted_publication_in_order() {
    let mut sim = sim(2, 31);
    let s = sim.connect(1);
    let sid = sim.subscribe(s, "kept:1");
    sim.run();
    let epoch = format!("{:016x}", position(&sim.reply(s, sid)["subscribe"]).epoch);
    // Publishers on both shards: the home makes the events in offset order.
    let ann = sim.connect_as(0, "ann");
    let bob = sim.connect_as(1, "bob");
    let a = sim.publish_key(ann, "kept:1", "1", Some("k1"));
    let b = sim.publish(bob, "kept:1", "2");
    // A repeat of an idempotency key is no second publication: no event.
    let again = sim.publish_key(ann, "kept:1", "1", Some("k1"));
    sim.run();
    assert_eq!(sim.reply(ann, a)["publish"]["offset"], 1);
    assert_eq!(sim.reply(bob, b)["publish"]["offset"], 2);
    assert_eq!(sim.reply(ann, again)["publish"]["offset"], 1);
    let ann_client = sim.who(ann).client.to_string();
    let bob_client = sim.who(bob).client.to_string();
    assert_eq!(
        publication_events(&sim),
        vec![
            (
                format!("kept:1:{epoch}:1"),
                "ann".into(),
                ann_client,
                "1".into()
            ),
            (
                format!("kept:1:{epoch}:2"),
                "bob".into(),
                bob_client,
                "2".into()
            ),
        ]
    );
    // Other namespaces make none.
    let c = sim.publish(ann, "chat:1", "3");
    sim.run();
    assert_eq!(sim.reply(ann, c)["publish"]["offset"], 1);
    assert_eq!(publication_events(&sim).len(), 2);
}

#[test]
fn a_sink_that_cannot_take_the_event_refuses_the_publication_whole() {
    let mut sim = sim(2, 32);
    let s = sim.connect(1);
    sim.subscribe(s, "kept:2");
    sim.run();
    let p = sim.connect_as(0, "ann");
    let a = sim.publish(p, "kept:2", "1");
    sim.run();
    sim.store.refuse_durable = true;
    let b = sim.publish_key(p, "kept:2", "2", Some("k2"));
    sim.run();
    assert_eq!(
        sim.reply(p, b)["error"]["code"],
        ErrorCode::Overloaded.code()
    );
    sim.store.refuse_durable = false;
    // Nothing was published: the retry (same key) takes offset 2.
    let c = sim.publish_key(p, "kept:2", "2", Some("k2"));
    sim.run();
    assert_eq!(sim.reply(p, a)["publish"]["offset"], 1);
    assert_eq!(sim.reply(p, c)["publish"]["offset"], 2);
    assert_eq!(
        sim.offsets(s, "kept:2"),
        vec![1, 2],
        "no gap, no lost event"
    );
    let ids: Vec<String> = publication_events(&sim).into_iter().map(|e| e.0).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[1].ends_with(":2"), "{ids:?}");
}

/// Whether `c` has the reply to `id` yet.
fn replied(sim: &Sim, c: SimConn, id: u32) -> bool {
    sim.seen(c)
        .iter()
        .any(|s| matches!(s, Seen::Reply(v) if v["id"] == id))
}

#[test]
fn a_durable_ack_publish_is_answered_only_once_the_sink_confirmed_it() {
    for seed in 0..6 {
        let mut sim = sim(2, 40 + seed);
        let s = sim.connect(1);
        sim.subscribe(s, "kept:3");
        sim.run();
        let p = sim.connect_as(0, "ann");
        let a = sim.publish_with(p, "kept:3", "1", None, true);
        let b = sim.publish_with(p, "kept:3", "2", Some("k"), true);
        // Without durable_ack: answered at once, as before.
        let c = sim.publish(p, "kept:3", "3");
        sim.run();
        assert!(
            !replied(&sim, p, a),
            "seed {seed}: no answer before the sink's"
        );
        assert!(!replied(&sim, p, b), "seed {seed}");
        assert_eq!(sim.reply(p, c)["publish"]["offset"], 3, "seed {seed}");
        // Delivered at once all the same.
        assert_eq!(sim.offsets(s, "kept:3"), vec![1, 2, 3], "seed {seed}");
        let acks = sim.store.durable_acks.clone();
        assert_eq!(
            acks.len(),
            2,
            "seed {seed}: one token per waiting publisher"
        );
        let home = home_shard("kept:3", 2);
        assert!(acks.iter().all(|(shard, _)| *shard == home));
        // The second is confirmed first, the first is not confirmed.
        sim.durable_confirmed(home, acks[1].1, true);
        sim.run();
        assert_eq!(sim.reply(p, b)["publish"]["offset"], 2, "seed {seed}");
        assert!(!replied(&sim, p, a));
        sim.durable_confirmed(home, acks[0].1, false);
        sim.run();
        assert_eq!(
            code(sim.reply(p, a)),
            u64::from(ErrorCode::NotDurable.code()),
            "seed {seed}"
        );
        // A repeat of the key answers at once (it made no event), and a
        // late or unknown confirmation changes nothing.
        let d = sim.publish_with(p, "kept:3", "2", Some("k"), true);
        sim.durable_confirmed(home, acks[1].1, true);
        sim.durable_confirmed(home, 999, true);
        sim.run();
        assert_eq!(sim.reply(p, d)["publish"]["offset"], 2);
        assert_eq!(sim.store.durable_acks.len(), 2);
    }
}

#[test]
fn durable_ack_outside_a_durable_namespace_and_on_refusal_answers_at_once() {
    let mut sim = sim(2, 50);
    let p = sim.connect_as(0, "ann");
    let a = sim.publish_with(p, "chat:9", "1", None, true);
    sim.run();
    assert_eq!(sim.reply(p, a)["publish"]["offset"], 1);
    sim.store.refuse_durable = true;
    let b = sim.publish_with(p, "kept:9", "1", None, true);
    sim.run();
    assert_eq!(
        code(sim.reply(p, b)),
        u64::from(ErrorCode::Overloaded.code())
    );
    assert!(sim.store.durable_acks.is_empty());
}

/// The presence events of `durable_presence` channels the routers emitted:
/// (type, user, client, reason).
fn presence_events(sim: &Sim) -> Vec<(&'static str, String, String, Option<&'static str>)> {
    sim.store
        .durable
        .iter()
        .filter_map(|e| match e {
            DurableEvent::Presence(p) => Some((
                e.kind(),
                p.user.to_string(),
                p.client.to_string(),
                p.reason.map(|r| r.as_str()),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn durable_presence_keeps_every_join_and_leave_once_at_the_home_and_never_blocks_one() {
    let mut sim = sim(3, 5);
    let a = sim.connect_as(0, "ann");
    let b = sim.connect_as(1, "bob");
    let c = sim.connect_as(2, "cat");
    for x in [a, b, c] {
        sim.subscribe(x, "lobby:1");
    }
    // Not a durable_presence namespace: no event.
    sim.subscribe(a, "room:1");
    sim.run();
    let (ann, bob, cat) = (sim.who(a), sim.who(b), sim.who(c));
    let mut joins = presence_events(&sim);
    joins.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        joins,
        vec![
            ("presence.join", "ann".into(), ann.client.to_string(), None),
            ("presence.join", "bob".into(), bob.client.to_string(), None),
            ("presence.join", "cat".into(), cat.client.to_string(), None),
        ]
    );
    // A second subscribe of a member changes nothing.
    let again = sim.subscribe(b, "lobby:1");
    sim.run();
    assert_eq!(code(sim.reply(b, again)), 105, "already subscribed");
    assert_eq!(presence_events(&sim).len(), 3);
    // An unsubscribe and a disconnect leave with their reasons.
    sim.unsubscribe(b, "lobby:1");
    sim.run();
    sim.close(c);
    sim.run();
    let events = presence_events(&sim);
    assert_eq!(
        events[3..],
        [
            (
                "presence.leave",
                "bob".into(),
                bob.client.to_string(),
                Some("unsubscribe")
            ),
            (
                "presence.leave",
                "cat".into(),
                cat.client.to_string(),
                Some("disconnect")
            ),
        ]
    );
    // Ids are distinct even for a client that leaves and joins again.
    sim.subscribe(b, "lobby:1");
    sim.run();
    sim.unsubscribe(b, "lobby:1");
    sim.run();
    sim.subscribe(b, "lobby:1");
    sim.run();
    let ids: std::collections::HashSet<String> = sim
        .store
        .durable
        .iter()
        .filter_map(|e| match e {
            DurableEvent::Presence(p) => Some(p.id()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 8);
    // A full sink loses the event, counted, but not the join.
    let home = home_shard("lobby:2", 3);
    sim.store.refuse_durable = true;
    let id = sim.subscribe(a, "lobby:2");
    sim.run();
    assert!(
        sim.reply(a, id).get("error").is_none(),
        "{:?}",
        sim.reply(a, id)
    );
    let lost = sim.routers[home].take_stats().0.durable_events_lost;
    assert_eq!(lost, 1);
    let id = sim.presence(a, "lobby:2", true);
    sim.run();
    assert_eq!(sim.reply(a, id)["presence_stats"]["num_clients"], 1);
    assert_eq!(presence_events(&sim).len(), 8);
}
