//! Deterministic multi-shard tests of live stories routed through their
//! home: joins and snapshots, the editor cap and the queue, lock
//! contention from two shards, conflicts under both policies, the grace
//! of a disconnected editor's locks, recovery on re-join, the store
//! (loads before the first join, writes after changes) and durable
//! events. Each story call is checked on what every member sees.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::sim::{Seen, Sim, SimConn, UNIX_ORIGIN_MS};
use super::story::StoryUnavailable;
use super::{CollabAsk, CollabOp};
use crate::engine::collab::{
    CollabConfig, ConflictPolicy, JoinAs, LockExport, SectionExport, StoryExport,
};
use crate::engine::durable::DurableEvent;
use crate::engine::hub::{Position, home_shard};
use crate::engine::namespace::{NamespaceOptions, Namespaces};

const STORY: &str = "story:s1";

fn story_ns(conflict: ConflictPolicy) -> NamespaceOptions {
    NamespaceOptions {
        history_size: 100,
        history_ttl_ms: 60_000,
        recover: true,
        join_leave_max_subscribers: 5,
        collab: Some(CollabConfig {
            max_editors: 2,
            queue_max: 2,
            conflict,
            ..CollabConfig::default()
        }),
        ..Default::default()
    }
}

fn namespaces() -> Namespaces {
    Namespaces::new(
        false,
        [
            ("story", story_ns(ConflictPolicy::Lww)),
            ("strict", story_ns(ConflictPolicy::Reject)),
            (
                "kept",
                NamespaceOptions {
                    durable_collab: true,
                    ..story_ns(ConflictPolicy::Lww)
                },
            ),
        ],
    )
    .expect("valid namespaces")
}

fn sim(seed: u64) -> Sim {
    Sim::with_namespaces(2, seed, namespaces())
}

/// A simulation whose routers write stories behind to a store.
fn sim_with_store(seed: u64) -> Sim {
    Sim::with_config(2, seed, namespaces(), |c| c.story_store = true)
}

impl Sim {
    pub fn collab_join(
        &mut self,
        c: SimConn,
        channel: &str,
        role: JoinAs,
        queue: bool,
        since: Option<Position>,
    ) -> u32 {
        let id = self.id();
        let who = self.who(c);
        let ask = CollabAsk { role, queue };
        self.on(c.shard, |r, out, now| {
            r.collab_join(
                now,
                c.conn,
                id,
                channel,
                ask,
                since,
                &super::Who::new(|| who.clone()),
                out,
            )
        });
        id
    }

    pub fn collab_leave(&mut self, c: SimConn, channel: &str) -> u32 {
        let id = self.id();
        let who = self.who(c);
        self.on(c.shard, |r, out, now| {
            r.collab_leave(
                now,
                c.conn,
                id,
                channel,
                &super::Who::new(|| who.clone()),
                out,
            )
        });
        id
    }

    pub fn collab(&mut self, c: SimConn, channel: &str, op: CollabOp) -> u32 {
        let id = self.id();
        self.on(c.shard, |r, out, now| {
            r.collab_command(now, c.conn, id, channel, op, out)
        });
        id
    }

    pub fn lock(&mut self, c: SimConn, channel: &str, section: &str) -> u32 {
        let op = CollabOp::Lock {
            section: section.into(),
            ttl: None,
        };
        self.collab(c, channel, op)
    }

    pub fn update(&mut self, c: SimConn, section: &str, base: u64, data: &str, op: &str) -> u32 {
        let op = CollabOp::Update {
            section: section.into(),
            base_version: base,
            data: Bytes::copy_from_slice(data.as_bytes()),
            op_id: op.into(),
        };
        self.collab(c, STORY, op)
    }

    pub fn story_loaded(
        &mut self,
        shard: usize,
        channel: &str,
        result: Result<Option<StoryExport>, StoryUnavailable>,
    ) {
        self.on(shard, |r, out, now| {
            r.story_loaded(now, channel.into(), result, out)
        });
    }

    /// The data of the story events (publications) `c` received on
    /// `channel`, with their offsets.
    pub fn story_events(&self, c: SimConn, channel: &str) -> Vec<(u64, Value)> {
        self.seen(c)
            .iter()
            .filter_map(|s| match s {
                Seen::Push(v) if v["push"]["channel"] == channel => {
                    let p = &v["push"]["pub"];
                    Some((p["offset"].as_u64()?, p["data"].clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The pushes for `c` alone (`promoted`, `conflict`, `queue`).
    pub fn directed(&self, c: SimConn) -> Vec<Value> {
        self.seen(c)
            .iter()
            .filter_map(|s| match s {
                Seen::Push(v)
                    if ["promoted", "conflict", "queue"]
                        .iter()
                        .any(|k| v["push"][k].is_object()) =>
                {
                    Some(v.clone())
                }
                _ => None,
            })
            .collect()
    }
}

fn code(v: &Value) -> u64 {
    v["error"]["code"].as_u64().unwrap_or(0)
}

#[test]
fn joins_across_shards_get_a_snapshot_at_a_position_and_the_events_after_it() {
    for seed in 0..10 {
        let mut sim = sim(seed);
        let ann = sim.connect_as(0, "ann");
        let bob = sim.connect_as(1, "bob");
        let viewer = sim.connect(seed as usize % 2);
        let a = sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
        sim.run();
        let r = sim.reply(ann, a)["collab_join"].clone();
        assert_eq!(r["role"], "editor", "seed {seed}");
        assert_eq!(r["editors"][0]["user"], "ann");
        let id = sim.update(ann, "p1", 0, r#"{"t":"hello"}"#, "a1");
        sim.run();
        assert_eq!(sim.reply(ann, id)["update"]["version"], 1);
        let b = sim.collab_join(bob, STORY, JoinAs::Editor, false, None);
        let v = sim.collab_join(viewer, STORY, JoinAs::Viewer, false, None);
        sim.run();
        let rb = sim.reply(bob, b)["collab_join"].clone();
        assert_eq!(
            rb["sections"]["p1"],
            json!({"version": 1, "data": {"t": "hello"}})
        );
        let rv = sim.reply(viewer, v)["collab_join"].clone();
        assert_eq!(rv["role"], "viewer");
        // Ann saw her join? No: her snapshot holds it. She sees the update
        // and the others' joins, in offsets after her snapshot's.
        let at = r["offset"].as_u64().unwrap();
        let events: Vec<(u64, Value)> = sim.story_events(ann, STORY);
        let offsets: Vec<u64> = events.iter().map(|e| e.0).collect();
        assert!(
            offsets.iter().all(|&o| o > at),
            "seed {seed}: {offsets:?} after {at}"
        );
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
        let kinds: Vec<String> = events
            .iter()
            .map(|(_, d)| d.as_object().unwrap().keys().next().unwrap().clone())
            .collect();
        assert_eq!(kinds[0], "update");
        assert_eq!(
            kinds.iter().filter(|k| *k == "story.user.join").count(),
            2,
            "bob and the viewer joined: {kinds:?}"
        );
        // Each later joiner's snapshot offset covers its own join.
        let vb = rb["offset"].as_u64().unwrap();
        assert!(
            sim.story_events(bob, STORY).iter().all(|e| e.0 > vb),
            "seed {seed}"
        );
    }
}

#[test]
fn the_editor_cap_queues_and_promotes_across_shards() {
    let mut sim = sim(3);
    let e: Vec<SimConn> = (0..4)
        .map(|i| sim.connect_as(i % 2, &format!("u{i}")))
        .collect();
    sim.collab_join(e[0], STORY, JoinAs::Editor, false, None);
    sim.collab_join(e[1], STORY, JoinAs::Editor, false, None);
    sim.run();
    let full = sim.collab_join(e[2], STORY, JoinAs::Editor, false, None);
    sim.run();
    assert_eq!(code(sim.reply(e[2], full)), 117, "editors full, not queued");
    let q = sim.collab_join(e[3], STORY, JoinAs::Editor, true, None);
    sim.run();
    let r = &sim.reply(e[3], q)["collab_join"];
    assert_eq!(
        (r["role"].as_str(), r["position"].as_u64()),
        (Some("queued"), Some(1))
    );
    // A queued member may not edit.
    let id = sim.lock(e[3], STORY, "p1");
    sim.run();
    assert_eq!(code(sim.reply(e[3], id)), 120);
    // An editor leaves (from the other shard): the queued one is promoted.
    let id = sim.collab_leave(e[0], STORY);
    sim.run();
    assert_eq!(sim.reply(e[0], id)["collab_leave"], json!({}));
    assert_eq!(
        sim.directed(e[3]),
        vec![json!({"push": {"channel": STORY, "promoted": {"role": "editor"}}})]
    );
    let id = sim.lock(e[3], STORY, "p1");
    sim.run();
    assert_eq!(sim.reply(e[3], id)["lock"]["section"], "p1");
}

#[test]
fn two_editors_on_two_shards_asking_for_one_lock_get_one_winner() {
    for seed in 0..20 {
        let mut sim = sim(seed);
        let ann = sim.connect_as(0, "ann");
        let bob = sim.connect_as(1, "bob");
        sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
        sim.collab_join(bob, STORY, JoinAs::Editor, false, None);
        sim.run();
        let a = sim.lock(ann, STORY, "p1");
        let b = sim.lock(bob, STORY, "p1");
        sim.run();
        let (ra, rb) = (sim.reply(ann, a).clone(), sim.reply(bob, b).clone());
        let (winner, loser, lose) = match (ra.get("lock"), rb.get("lock")) {
            (Some(_), None) => ("ann", bob, rb.clone()),
            (None, Some(_)) => ("bob", ann, ra.clone()),
            other => panic!("seed {seed}: not one winner: {other:?}"),
        };
        assert_eq!(code(&lose), 118, "seed {seed}");
        assert_eq!(lose["error"]["holder"]["user"], winner);
        // The expiry is Unix time, a lock_ttl (30 s) after the origin.
        let rw = if winner == "ann" { &ra } else { &rb };
        assert_eq!(rw["lock"]["expires"], UNIX_ORIGIN_MS + 30_000);
        // The loser may not write the locked section either.
        let id = sim.update(loser, "p1", 0, "1", "x");
        sim.run();
        assert_eq!(code(sim.reply(loser, id)), 118);
        // Everyone saw the lock event with the holder and its expiry.
        let ev = sim.story_events(loser, STORY);
        let lock = ev
            .iter()
            .find(|e| e.1.get("lock").is_some())
            .expect("lock event");
        assert_eq!(lock.1["lock"]["holder"]["user"], winner);
        assert_eq!(lock.1["lock"]["expires"], UNIX_ORIGIN_MS + 30_000);
    }
}

#[test]
fn lww_alerts_the_overwritten_editor_on_its_own_shard_and_reject_refuses() {
    let mut sim = sim(5);
    let ann = sim.connect_as(0, "ann");
    let bob = sim.connect_as(1, "bob");
    sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
    sim.collab_join(bob, STORY, JoinAs::Editor, false, None);
    sim.run();
    let a = sim.update(ann, "p3", 0, r#""A""#, "a1");
    let b = sim.update(bob, "p3", 0, r#""B""#, "b1");
    sim.run();
    let (va, vb) = (
        sim.reply(ann, a)["update"]["version"].as_u64(),
        sim.reply(bob, b)["update"]["version"].as_u64(),
    );
    let mut versions = [va.unwrap(), vb.unwrap()];
    versions.sort();
    assert_eq!(versions, [1, 2], "both accepted, one after the other");
    // Whoever came second overwrote the first, who is told, with its data.
    let (first, second_user, lost) = if va == Some(1) {
        (ann, "bob", "A")
    } else {
        (bob, "ann", "B")
    };
    let d = sim.directed(first);
    assert_eq!(d.len(), 1, "{d:?}");
    let c = &d[0]["push"]["conflict"];
    assert_eq!(
        (
            c["section"].as_str(),
            c["version"].as_u64(),
            c["overwritten"].as_str()
        ),
        (Some("p3"), Some(2), Some(lost))
    );
    assert_eq!(c["by"]["user"], second_user);
    // A durable event per accepted update, in version order.
    let versions: Vec<u64> = sim
        .store
        .durable
        .iter()
        .filter_map(|e| match e {
            DurableEvent::StoryContentUpdate(u) => Some(u.version),
            _ => None,
        })
        .collect();
    assert_eq!(versions, vec![1, 2]);
    // A resend of the same op_id is answered again, changes nothing, and
    // emits no second durable event.
    let again = sim.update(ann, "p3", 0, r#""A""#, "a1");
    sim.run();
    assert_eq!(sim.reply(ann, again)["update"]["duplicate"], true);
    assert_eq!(sim.store.durable.len(), 2);

    // Under `reject` the stale update is refused with the current state.
    let s = "strict:s1";
    let c1 = sim.connect_as(0, "c1");
    let c2 = sim.connect_as(1, "c2");
    sim.collab_join(c1, s, JoinAs::Editor, false, None);
    sim.collab_join(c2, s, JoinAs::Editor, false, None);
    sim.run();
    let up = |sim: &mut Sim, c, base, d: &str, op: &str| {
        let op = CollabOp::Update {
            section: "p".into(),
            base_version: base,
            data: Bytes::copy_from_slice(d.as_bytes()),
            op_id: op.into(),
        };
        sim.collab(c, s, op)
    };
    let x = up(&mut sim, c1, 0, r#""X""#, "x");
    sim.run();
    let y = up(&mut sim, c2, 0, r#""Y""#, "y");
    sim.run();
    assert_eq!(sim.reply(c1, x)["update"]["version"], 1);
    let e = &sim.reply(c2, y)["error"];
    assert_eq!(
        (e["code"].as_u64(), e["version"].as_u64()),
        (Some(119), Some(1))
    );
    assert_eq!(e["data"], "X");
    assert!(sim.directed(c1).is_empty(), "no alert under reject");
}

#[test]
fn a_disconnected_editors_locks_wait_for_the_same_user_then_lapse() {
    let mut sim = sim(9);
    let home = home_shard(STORY, 2);
    let ann = sim.connect_as(home, "ann");
    let bob = sim.connect_as(1 - home, "bob");
    sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
    sim.collab_join(bob, STORY, JoinAs::Editor, false, None);
    sim.run();
    sim.lock(ann, STORY, "p1");
    sim.lock(ann, STORY, "p2");
    sim.run();
    sim.close(ann);
    sim.run();
    sim.advance(Duration::from_secs(2));
    // Still held: bob may not take p1.
    let id = sim.lock(bob, STORY, "p1");
    sim.run();
    assert_eq!(code(sim.reply(bob, id)), 118);
    // Ann comes back on the other shard within the grace: both are hers.
    let ann2 = sim.connect_as(1 - home, "ann");
    let j = sim.collab_join(ann2, STORY, JoinAs::Editor, false, None);
    sim.run();
    let snap = &sim.reply(ann2, j)["collab_join"]["sections"];
    assert_eq!(snap["p1"]["holder"]["user"], "ann");
    let id = sim.update(ann2, "p1", 0, "1", "r1");
    sim.run();
    assert_eq!(sim.reply(ann2, id)["update"]["version"], 1);
    // This time she vanishes for good: after the grace (10 s) the locks
    // are released, and everyone is told.
    sim.close(ann2);
    sim.run();
    let before = sim.story_events(bob, STORY).len();
    sim.advance(Duration::from_secs(11));
    let after = sim.story_events(bob, STORY);
    let released: Vec<&Value> = after[before..]
        .iter()
        .map(|e| &e.1)
        .filter(|d| d.get("lock").is_some_and(|l| l["holder"].is_null()))
        .collect();
    assert_eq!(released.len(), 2, "{after:?}");
    let id = sim.lock(bob, STORY, "p1");
    sim.run();
    assert_eq!(sim.reply(bob, id)["lock"]["holder"]["user"], "bob");
}

#[test]
fn a_reconnecting_editor_keeps_its_slot_and_the_line_learns_its_places() {
    for seed in 0..4 {
        let mut sim = sim(seed);
        let home = home_shard(STORY, 2);
        let ann = sim.connect_as(home, "ann");
        let bob = sim.connect_as(1 - home, "bob");
        let carol = sim.connect_as(1 - home, "carol");
        let dave = sim.connect_as(home, "dave");
        sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
        sim.collab_join(bob, STORY, JoinAs::Editor, false, None);
        sim.run();
        let c = sim.collab_join(carol, STORY, JoinAs::Editor, true, None);
        sim.run();
        let d = sim.collab_join(dave, STORY, JoinAs::Editor, true, None);
        sim.run();
        let rc = &sim.reply(carol, c)["collab_join"];
        assert_eq!(
            (rc["position"].as_u64(), rc["queued"].as_u64()),
            (Some(1), Some(1))
        );
        let rd = &sim.reply(dave, d)["collab_join"];
        assert_eq!(
            (rd["position"].as_u64(), rd["queued"].as_u64()),
            (Some(2), Some(2))
        );
        sim.lock(ann, STORY, "p1");
        sim.run();
        // Ann's connection drops: her slot is held with her lock.
        sim.close(ann);
        sim.run();
        sim.advance(Duration::from_secs(3));
        assert!(
            sim.directed(carol).is_empty(),
            "seed {seed}: nobody promoted"
        );
        assert!(sim.directed(dave).is_empty(), "seed {seed}: nobody moved");
        // She reconnects on the other shard and re-joins asking to queue:
        // an editor at once, her lock her own.
        let ann2 = sim.connect_as(1 - home, "ann");
        let j = sim.collab_join(ann2, STORY, JoinAs::Editor, true, None);
        sim.run();
        let r = &sim.reply(ann2, j)["collab_join"];
        assert_eq!(r["role"], "editor", "seed {seed}: {r}");
        assert_eq!(r["queued"], 2);
        assert_eq!(r["sections"]["p1"]["holder"]["user"], "ann");
        let id = sim.update(ann2, "p1", 0, "1", "a1");
        sim.run();
        assert_eq!(sim.reply(ann2, id)["update"]["version"], 1, "seed {seed}");
        assert!(sim.directed(carol).is_empty() && sim.directed(dave).is_empty());
        // She drops again for good: after the grace her lock goes, carol
        // gets the slot, dave learns he is next.
        sim.close(ann2);
        sim.run();
        sim.advance(Duration::from_secs(9));
        assert!(
            sim.directed(carol).is_empty(),
            "seed {seed}: still in grace"
        );
        sim.advance(Duration::from_secs(2));
        assert_eq!(
            sim.directed(carol),
            vec![json!({"push": {"channel": STORY, "promoted": {"role": "editor"}}})]
        );
        assert_eq!(
            sim.directed(dave),
            vec![json!({"push": {"channel": STORY, "queue": {"position": 1}}})]
        );
        let id = sim.lock(carol, STORY, "p1");
        sim.run();
        assert_eq!(sim.reply(carol, id)["lock"]["holder"]["user"], "carol");
    }
}

#[test]
fn a_rejoining_editor_recovers_the_events_it_missed() {
    let mut sim = sim(11);
    let ann = sim.connect_as(0, "ann");
    let bob = sim.connect_as(1, "bob");
    let j = sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
    sim.collab_join(bob, STORY, JoinAs::Editor, false, None);
    sim.run();
    let r = sim.reply(ann, j)["collab_join"].clone();
    let epoch = u64::from_str_radix(r["epoch"].as_str().unwrap(), 16).unwrap();
    let seen = sim.story_events(ann, STORY);
    let last = seen.last().map_or(r["offset"].as_u64().unwrap(), |e| e.0);
    sim.close(ann);
    sim.run();
    sim.update(bob, "p1", 0, r#""while away""#, "b1");
    sim.run();
    let ann2 = sim.connect_as(0, "ann");
    let since = Position {
        epoch,
        offset: last,
    };
    let j = sim.collab_join(ann2, STORY, JoinAs::Editor, false, Some(since));
    sim.run();
    let r = &sim.reply(ann2, j)["collab_join"];
    assert_eq!(r["recovered"], true, "{r}");
    let kinds: Vec<String> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["data"]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap()
                .clone()
        })
        .collect();
    // Her own leave, bob's update, and her own re-join.
    assert_eq!(kinds, vec!["story.user.leave", "update", "story.user.join"]);
    assert_eq!(r["sections"]["p1"]["data"], "while away");
}

#[test]
fn story_commands_check_the_namespace_and_the_member() {
    let mut sim = sim(1);
    let c = sim.connect_as(0, "ann");
    let id = sim.collab_join(c, "plain", JoinAs::Editor, false, None);
    let l = sim.lock(c, "plain", "p");
    sim.run();
    assert_eq!(code(sim.reply(c, id)), 122);
    assert_eq!(code(sim.reply(c, l)), 122);
    let l = sim.lock(c, STORY, "p");
    sim.run();
    assert_eq!(code(sim.reply(c, l)), 120, "not a member");
    let v = sim.connect_as(1, "vic");
    sim.collab_join(v, STORY, JoinAs::Viewer, false, None);
    sim.run();
    let l = sim.lock(v, STORY, "p");
    sim.run();
    assert_eq!(code(sim.reply(v, l)), 120, "a viewer");
    // A viewer becomes an editor by joining again.
    let j = sim.collab_join(v, STORY, JoinAs::Editor, false, None);
    sim.run();
    assert_eq!(sim.reply(v, j)["collab_join"]["role"], "editor");
    let l = sim.lock(v, STORY, "p");
    sim.run();
    assert_eq!(sim.reply(v, l)["lock"]["holder"]["user"], "vic");
}

#[test]
fn viewer_joins_stop_being_broadcast_above_the_join_leave_cap() {
    let mut sim = sim(2);
    let ed = sim.connect_as(0, "ed");
    sim.collab_join(ed, STORY, JoinAs::Editor, false, None);
    sim.run();
    for i in 0..10 {
        let v = sim.connect(i % 2);
        sim.collab_join(v, STORY, JoinAs::Viewer, false, None);
        sim.run();
    }
    let joins = sim
        .story_events(ed, STORY)
        .iter()
        .filter(|e| e.1.get("story.user.join").is_some())
        .count();
    // join_leave_max_subscribers = 5 members: the editor and 4 viewers.
    assert_eq!(joins, 4);
}

#[test]
fn a_stored_story_is_loaded_before_its_first_join_and_written_after_changes() {
    let mut sim = sim_with_store(4);
    let home = home_shard(STORY, 2);
    let ann = sim.connect_as(1 - home, "ann");
    let gone = sim.connect_as(home, "gone");
    let j = sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
    // Pipelined behind the join: waits with it, decided after it.
    let early = sim.update(ann, "p1", 7, r#""early""#, "e1");
    let g = sim.collab_join(gone, STORY, JoinAs::Viewer, false, None);
    sim.run();
    assert_eq!(sim.store.loads, vec![(home, STORY.to_string())], "one load");
    assert!(sim.seen(ann).is_empty(), "the join waits for the load");
    // One of the waiting joiners goes away before the load answers.
    sim.close(gone);
    sim.run();
    let stored = StoryExport {
        sections: vec![
            SectionExport {
                id: "p1".into(),
                version: 7,
                data: Bytes::from_static(b"\"kept\""),
                writer: Some("ann".into()),
                lock: None,
            },
            SectionExport {
                id: "p2".into(),
                version: 0,
                data: Bytes::new(),
                writer: None,
                lock: Some(LockExport {
                    user: "ann".into(),
                    client: "old".into(),
                    expires_in_ms: 20_000,
                }),
            },
        ],
    };
    sim.story_loaded(home, STORY, Ok(Some(stored)));
    sim.run();
    let r = &sim.reply(ann, j)["collab_join"];
    assert_eq!(r["sections"]["p1"], json!({"version": 7, "data": "kept"}));
    assert_eq!(
        r["sections"]["p2"]["data"],
        Value::Null,
        "locked, never written"
    );
    assert_eq!(r["viewers"], 0, "the viewer that left is no ghost");
    assert_eq!(sim.reply(ann, early)["update"]["version"], 8);
    assert!(
        sim.seen(gone)
            .iter()
            .all(|s| !matches!(s, Seen::Reply(v) if v["id"] == g)),
        "no answer to a closed connection"
    );
    // The grace lock of the same user came back to her on joining.
    let up = sim.update(ann, "p2", 0, r#""mine""#, "o1");
    sim.run();
    assert_eq!(sim.reply(ann, up)["update"]["version"], 1);
    let last = sim.store.writes.last().unwrap().clone();
    assert_eq!(
        last,
        (home, STORY.to_string(), vec!["p2".to_string()], true)
    );
    // The story store is down for another story: its join gets 100.
    let other = sim.connect_as(0, "x");
    let s2 = "story:s2";
    let id = sim.collab_join(other, s2, JoinAs::Editor, false, None);
    sim.run();
    sim.story_loaded(home_shard(s2, 2), s2, Err(StoryUnavailable));
    sim.run();
    assert_eq!(code(sim.reply(other, id)), 100);
    // The last editor leaving writes `active: false` (the key gets a TTL).
    sim.collab_leave(ann, STORY);
    sim.run();
    assert!(!sim.store.writes.last().unwrap().3);
}

#[test]
fn an_idle_story_is_evicted_and_the_shell_told() {
    // Stories of every namespace here leave memory after the default
    // idle_evict (10 min) without members.
    let mut sim = Sim::with_namespaces(1, 0, namespaces());
    let c = sim.connect_as(0, "ann");
    sim.collab_join(c, STORY, JoinAs::Editor, false, None);
    sim.run();
    sim.collab_leave(c, STORY);
    sim.run();
    assert_eq!(sim.routers[0].story_stats().stories, 1);
    sim.advance(Duration::from_secs(601));
    assert_eq!(sim.routers[0].story_stats().stories, 0);
    assert_eq!(sim.store.evicted, vec![(0, STORY.to_string())]);
}

#[test]
fn commands_pipelined_behind_a_join_from_another_shard_follow_it() {
    for seed in 0..10 {
        let mut sim = sim(seed);
        let away = 1 - home_shard(STORY, 2);
        let ann = sim.connect_as(away, "ann");
        let j = sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
        let l = sim.lock(ann, STORY, "p1");
        let u = sim.update(ann, "p1", 0, "1", "u1");
        sim.run();
        assert_eq!(sim.reply(ann, j)["collab_join"]["role"], "editor");
        assert_eq!(sim.reply(ann, l)["lock"]["section"], "p1", "seed {seed}");
        assert_eq!(sim.reply(ann, u)["update"]["version"], 1, "seed {seed}");
    }
}

#[test]
fn a_load_whose_answer_never_comes_is_given_up() {
    let mut sim = sim_with_store(6);
    let ann = sim.connect_as(0, "ann");
    let j = sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
    sim.run();
    sim.advance(super::story::LOAD_TIMEOUT - Duration::from_millis(1));
    assert!(sim.seen(ann).is_empty(), "still waiting");
    sim.advance(Duration::from_millis(2));
    assert_eq!(code(sim.reply(ann, j)), 100);
    assert_eq!(sim.routers[home_shard(STORY, 2)].story_stats().waiting, 0);
    // The next join asks again.
    let loads = sim.store.loads.len();
    sim.collab_join(ann, STORY, JoinAs::Editor, false, None);
    sim.run();
    assert_eq!(sim.store.loads.len(), loads + 1);
}

#[test]
fn a_durable_collab_story_refuses_updates_its_sink_cannot_keep() {
    let mut sim = sim(7);
    let story = "kept:s1";
    let ann = sim.connect_as(0, "ann");
    let bob = sim.connect_as(1, "bob");
    sim.collab_join(ann, story, JoinAs::Editor, false, None);
    sim.collab_join(bob, story, JoinAs::Viewer, false, None);
    sim.run();
    let update = |sim: &mut Sim, base: u64, data: &str, op: &str| {
        let op = CollabOp::Update {
            section: "p1".into(),
            base_version: base,
            data: Bytes::copy_from_slice(data.as_bytes()),
            op_id: op.into(),
        };
        let id = sim.collab(ann, story, op);
        sim.run();
        sim.reply(ann, id).clone()
    };
    assert_eq!(
        update(&mut sim, 0, r#""one""#, "o1")["update"]["version"],
        1
    );
    // The sink is full: the update is refused (temporary), not applied,
    // and bob sees nothing.
    sim.store.refuse_durable = true;
    let before = sim.seen(bob).len();
    let r = update(&mut sim, 1, r#""two""#, "o2");
    assert_eq!(code(&r), 112, "{r:?}");
    assert_eq!(sim.seen(bob).len(), before);
    let home = home_shard(story, 2);
    assert_eq!(sim.routers[home].take_stats().0.durable_collab_refused, 1);
    // Room again: the same op goes through as version 2.
    sim.store.refuse_durable = false;
    assert_eq!(
        update(&mut sim, 1, r#""two""#, "o2")["update"]["version"],
        2
    );
    let versions: Vec<(String, u64)> = sim
        .store
        .durable
        .iter()
        .filter_map(|e| match e {
            DurableEvent::StoryContentUpdate(u) => Some((u.story.to_string(), u.version)),
            _ => None,
        })
        .collect();
    assert_eq!(versions, vec![(story.into(), 1), (story.into(), 2)]);
}
