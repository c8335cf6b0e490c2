//! Moves of a channel's home between nodes: JetStream channels keep
//! their subscribers (relays re-point, the old home becomes a relay, a
//! relay becomes the home) and, through the presence bucket, their
//! members; memory channels recover.

use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A channel `prefix:<i>` homed at `before` among the nodes of
/// `live_before` and at `after` among those of `live_after`.
fn channel_moving(
    c: &ClusterSim,
    prefix: &str,
    (live_before, before): (&[usize], usize),
    (live_after, after): (&[usize], usize),
) -> String {
    let home = |ch: &str, live: &[usize]| {
        let names: Vec<Arc<str>> = live.iter().map(|&n| c.names[n].clone()).collect();
        let h = crate::engine::cluster::placement::home_node(ch, &names).unwrap();
        c.names.iter().position(|n| n == h).unwrap()
    };
    (0..)
        .map(|i| format!("{prefix}:{i}"))
        .find(|ch| home(ch, live_before) == before && home(ch, live_after) == after)
        .expect("some channel moves that way")
}

#[test]
fn a_stored_channel_whose_home_dies_keeps_its_subscribers_without_a_recovery() {
    for seed in 0..8 {
        let mut c = ClusterSim::new(3, 2, seed, stored_ns());
        // Homed at node 2, then at node 1: node 0 relays it throughout,
        // node 1 relays it, then becomes its home.
        let channel = channel_moving(&c, "feed", (&[0, 1, 2], 2), (&[0, 1], 1));
        let sub = c.connect(0, 1);
        let at_new_home = c.connect(1, 1);
        let publisher = c.connect(1, 0);
        let sid = subscribe(&mut c, sub, &channel);
        subscribe(&mut c, at_new_home, &channel);
        c.run();
        for i in 1..=5 {
            publish(&mut c, publisher, &channel, &i.to_string());
        }
        c.run();
        assert_eq!(offsets(&c, sub, &channel), vec![1, 2, 3, 4, 5]);
        c.down[2] = true;
        c.set_live(&[0, 1]);
        c.run();
        publish_each(&mut c, publisher, &channel, 6..=8, seed);
        for (name, x) in [("relay", sub), ("new home", at_new_home)] {
            assert_eq!(closed(&c, x), None, "seed {seed}: {name}: no gap, no 3004");
            assert_eq!(
                offsets(&c, x, &channel),
                (1..=8).collect::<Vec<_>>(),
                "seed {seed}: {name}: every publication once, in order, across the move"
            );
        }
        for n in [0, 1] {
            let resyncs: u64 = (0..2)
                .map(|s| c.nodes[n].routers[s].take_cluster_stats().resyncs)
                .sum();
            assert_eq!(resyncs, 0, "seed {seed}: node {n}");
        }
        // The new home serves a recovery from before the move.
        let late = c.connect(0, 0);
        let since = Position {
            epoch: hex_epoch(&reply(&c, sub, sid)["subscribe"]["epoch"]),
            offset: 2,
        };
        let (v, offs) = recover_from(&mut c, late, &channel, since);
        assert_eq!(v["subscribe"]["recovered"], true, "seed {seed}: {v}");
        assert_eq!(offs, (3..=8).collect::<Vec<_>>(), "seed {seed}");
    }
}

#[test]
fn a_stored_channel_moving_off_a_live_home_keeps_subscribers_on_both_nodes() {
    for seed in 0..8 {
        let mut c = ClusterSim::new(3, 2, seed, stored_ns());
        // Node 2 is away; the channel lives at node 0, and moves to node 2
        // when it joins.
        let channel = channel_moving(&c, "feed", (&[0, 1], 0), (&[0, 1, 2], 2));
        c.down[2] = true;
        c.set_live(&[0, 1]);
        let at_home = c.connect(0, 0);
        let relayed = c.connect(1, 1);
        let publisher = c.connect(1, 0);
        subscribe(&mut c, at_home, &channel);
        subscribe(&mut c, relayed, &channel);
        c.run();
        for i in 1..=3 {
            publish(&mut c, publisher, &channel, &i.to_string());
        }
        c.run();
        c.down[2] = false;
        c.set_live(&[0, 1, 2]);
        c.run();
        publish_each(&mut c, publisher, &channel, 4..=6, seed);
        for (name, x) in [("old home", at_home), ("relay", relayed)] {
            assert_eq!(closed(&c, x), None, "seed {seed}: {name}");
            assert_eq!(
                offsets(&c, x, &channel),
                (1..=6).collect::<Vec<_>>(),
                "seed {seed}: {name}"
            );
        }
    }
}

#[test]
fn a_new_home_behind_its_moved_subscribers_makes_them_recover() {
    let mut c = ClusterSim::new(3, 2, 5, stored_ns());
    let channel = channel_moving(&c, "feed", (&[0, 1, 2], 2), (&[0, 1], 1));
    let sub = c.connect(0, 1);
    let publisher = c.connect(1, 0);
    subscribe(&mut c, sub, &channel);
    c.run();
    for i in 1..=4 {
        publish(&mut c, publisher, &channel, &i.to_string());
    }
    c.run();
    assert_eq!(offsets(&c, sub, &channel), vec![1, 2, 3, 4]);
    // The stream lost its last message (a truncated stream): the new home
    // continues from offset 3, and its next publication would reuse 4.
    c.stream.get_mut(channel.as_str()).unwrap().pop();
    c.down[2] = true;
    c.set_live(&[0, 1]);
    c.run();
    assert_eq!(closed(&c, sub), Some(CloseReason::InsufficientState));
}

/// A stored namespace that keeps presence with join/leave pushes.
fn stored_presence_ns() -> Namespaces {
    let feed = crate::engine::namespace::NamespaceOptions {
        history_size: 100,
        history_ttl_ms: 600_000,
        recover: true,
        presence: true,
        join_leave: true,
        history_backend: crate::engine::namespace::HistoryBackend::Jetstream,
        ..Default::default()
    };
    Namespaces::new(false, [("feed", feed)]).unwrap()
}

/// `presence_stats` of `channel` asked by `q`: (clients, users).
fn stats(c: &mut ClusterSim, q: Conn, channel: &str) -> (u64, u64) {
    let id = c.on(q.0, |sim| sim.presence(q.1, channel, true));
    c.run();
    let v = reply(c, q, id);
    let s = &v["presence_stats"];
    (
        s["num_clients"].as_u64().unwrap_or_else(|| panic!("{v}")),
        s["num_users"].as_u64().unwrap(),
    )
}

/// The members of `channel` the presence bucket holds: their nodes, sorted.
fn bucket_nodes(c: &ClusterSim, channel: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .bucket
        .get(channel)
        .map(|b| b.values().map(|m| m.node.to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_stored_presence_channel_whose_home_dies_keeps_its_live_members_and_subscribers() {
    for seed in 0..6 {
        let mut c = ClusterSim::new(3, 2, seed, stored_presence_ns());
        // Homed at node 2 (which dies), then at node 1.
        let channel = channel_moving(&c, "feed", (&[0, 1, 2], 2), (&[0, 1], 1));
        let relayed = c.connect(0, 1);
        let at_new_home = c.connect(1, 1);
        let on_dead = c.connect(2, 0);
        let publisher = c.connect(1, 0);
        for x in [relayed, at_new_home, on_dead] {
            subscribe(&mut c, x, &channel);
        }
        c.run();
        c.advance(PRESENCE_TICK * 2);
        assert_eq!(
            bucket_nodes(&c, &channel),
            ["node0", "node1", "node2"],
            "seed {seed}"
        );
        publish_each(&mut c, publisher, &channel, 1..=3, seed);
        c.down[2] = true;
        c.set_live(&[0, 1]);
        c.run();
        publish_each(&mut c, publisher, &channel, 4..=6, seed);
        for (name, x) in [("relay", relayed), ("new home", at_new_home)] {
            assert_eq!(closed(&c, x), None, "seed {seed}: {name}: no 3004");
            assert_eq!(
                offsets(&c, x, &channel),
                (1..=6).collect::<Vec<_>>(),
                "seed {seed}: {name}"
            );
        }
        // The new home read the members back: the dead node's is gone,
        // in memory and in the bucket.
        let q = c.connect(0, 0);
        assert_eq!(stats(&mut c, q, &channel).0, 2, "seed {seed}");
        c.advance(PRESENCE_TICK * 2);
        assert_eq!(
            bucket_nodes(&c, &channel),
            ["node0", "node1"],
            "seed {seed}"
        );
        // Both kinds of restored member leave as they would have before:
        // the local one, then the one on another node.
        let _ = c.on(1, |sim| sim.unsubscribe(at_new_home.1, &channel));
        c.run();
        assert_eq!(stats(&mut c, q, &channel).0, 1, "seed {seed}");
        let _ = c.on(0, |sim| sim.unsubscribe(relayed.1, &channel));
        c.run();
        assert_eq!(stats(&mut c, q, &channel).0, 0, "seed {seed}");
        c.advance(PRESENCE_TICK * 2);
        assert_eq!(
            bucket_nodes(&c, &channel),
            Vec::<String>::new(),
            "seed {seed}"
        );
    }
}

#[test]
fn members_follow_a_stored_channel_off_a_live_home_and_its_node_leaving_still_counts() {
    let mut c = ClusterSim::new(3, 2, 4, stored_presence_ns());
    // At node 0 while node 2 is away, then at node 2.
    let channel = channel_moving(&c, "feed", (&[0, 1], 0), (&[0, 1, 2], 2));
    c.down[2] = true;
    c.set_live(&[0, 1]);
    let at_old_home = c.connect(0, 0);
    let relayed = c.connect(1, 1);
    subscribe(&mut c, at_old_home, &channel);
    subscribe(&mut c, relayed, &channel);
    c.run();
    let publisher = c.connect(1, 0);
    publish_each(&mut c, publisher, &channel, 1..=2, 4);
    c.down[2] = false;
    c.set_live(&[0, 1, 2]);
    c.run();
    publish_each(&mut c, publisher, &channel, 3..=4, 4);
    for x in [at_old_home, relayed] {
        assert_eq!(closed(&c, x), None);
        assert_eq!(offsets(&c, x, &channel), vec![1, 2, 3, 4]);
    }
    let q = c.connect(2, 0);
    assert_eq!(stats(&mut c, q, &channel).0, 2, "both followed to node 2");
    // Node 1 leaves: its member leaves the new home too.
    c.down[1] = true;
    c.set_live(&[0, 2]);
    c.run();
    assert_eq!(stats(&mut c, q, &channel).0, 1);
    assert_eq!(closed(&c, at_old_home), None);
}

#[test]
fn a_relay_asks_a_new_home_again_until_it_knows_it_is_home() {
    for learns in [true, false] {
        let mut c = ClusterSim::new(3, 2, 11, stored_ns());
        let channel = channel_moving(&c, "feed", (&[0, 1, 2], 2), (&[0, 1], 1));
        let sub = c.connect(0, 1);
        let publisher = c.connect(1, 0);
        subscribe(&mut c, sub, &channel);
        c.run();
        publish(&mut c, publisher, &channel, "1");
        c.run();
        assert_eq!(offsets(&c, sub, &channel), vec![1]);
        // Node 0 sees node 2 go first: its marker request reaches node 1,
        // which does not think it is home yet (misrouted, no marker).
        c.down[2] = true;
        c.set_live_on(&[0], &[0, 1]);
        c.run();
        assert_eq!(closed(&c, sub), None);
        if learns {
            c.set_live_on(&[1], &[0, 1]);
            c.run();
            // The relay asks again after request_timeout and is confirmed.
            c.advance(Duration::from_secs(3));
            let id = publish(&mut c, publisher, &channel, "2");
            c.run();
            assert_eq!(reply(&c, publisher, id)["publish"]["offset"], 2);
            assert_eq!(closed(&c, sub), None);
            assert_eq!(offsets(&c, sub, &channel), vec![1, 2]);
        } else {
            // No marker after three tries: the subscribers recover.
            c.advance(Duration::from_secs(5));
            assert_eq!(closed(&c, sub), None, "still asking");
            c.advance(Duration::from_secs(2));
            assert_eq!(closed(&c, sub), Some(CloseReason::InsufficientState));
        }
    }
}

#[test]
fn a_relay_that_learns_of_the_move_last_misses_nothing_the_new_home_accepted_first() {
    let mut c = ClusterSim::new(3, 2, 13, stored_ns());
    let channel = channel_moving(&c, "feed", (&[0, 1, 2], 2), (&[0, 1], 1));
    let sub = c.connect(0, 1);
    let publisher = c.connect(1, 0);
    subscribe(&mut c, sub, &channel);
    c.run();
    publish_each(&mut c, publisher, &channel, 1..=3, 13);
    // Node 1 sees node 2 go first and takes the channel at its first
    // publication; node 0 still thinks node 2 is the home and has not
    // asked node 1 for anything.
    c.down[2] = true;
    c.set_live_on(&[1], &[0, 1]);
    c.run();
    publish_each(&mut c, publisher, &channel, 4..=6, 13);
    assert_eq!(offsets(&c, sub, &channel), (1..=6).collect::<Vec<_>>());
    // Then node 0 learns it: its relay's marker request confirms.
    c.set_live_on(&[0], &[0, 1]);
    c.run();
    publish_each(&mut c, publisher, &channel, 7..=8, 13);
    assert_eq!(closed(&c, sub), None);
    assert_eq!(offsets(&c, sub, &channel), (1..=8).collect::<Vec<_>>());
    assert!(sends_to_other_nodes(&c, 1, &channel));
    // Node 0's relay asked, so the channel keeps going out after the
    // window; once that relay leaves it stops.
    c.advance(Duration::from_secs(10));
    assert!(sends_to_other_nodes(&c, 1, &channel));
    let _ = c.on(0, |sim| sim.unsubscribe(sub.1, &channel));
    c.run();
    assert!(!sends_to_other_nodes(&c, 1, &channel));
}

/// Whether node `n`, as `channel`'s home, sends its publications on the
/// channel's subject (the hub's remote-interest bit).
fn sends_to_other_nodes(c: &ClusterSim, n: usize, channel: &str) -> bool {
    c.nodes[n]
        .routers
        .iter()
        .any(|r| r.hub.interested(channel) & (1 << REMOTE_BIT) != 0)
}

#[test]
fn a_new_home_nobody_relays_stops_sending_on_the_subject_after_the_window() {
    let mut c = ClusterSim::new(3, 2, 17, stored_ns());
    let channel = c.channel_homed_at("feed", 1);
    let publisher = c.connect(1, 0);
    publish_each(&mut c, publisher, &channel, 1..=2, 17);
    // A first load: relays of an old home may exist, so it sends.
    assert!(sends_to_other_nodes(&c, 1, &channel));
    c.advance(Duration::from_secs(7));
    assert!(sends_to_other_nodes(&c, 1, &channel), "within 4 × 2 s");
    c.advance(Duration::from_secs(2));
    assert!(!sends_to_other_nodes(&c, 1, &channel));
    publish_each(&mut c, publisher, &channel, 3..=3, 17);
}

/// The offsets `history` on `x` returns for `channel`.
fn history_offsets(c: &mut ClusterSim, x: Conn, channel: &str) -> Vec<u64> {
    let id = c.on(x.0, |sim| sim.history(x.1, channel, Some(100), None, false));
    c.run();
    let v = reply(c, x, id);
    v["history"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[test]
fn history_remove_through_another_node_cuts_a_stored_channels_history_for_good() {
    let mut c = ClusterSim::new(3, 2, 21, stored_ns());
    let channel = channel_moving(&c, "feed", (&[0, 1, 2], 2), (&[0, 1], 1));
    let sub = c.connect(0, 1);
    let publisher = c.connect(1, 0);
    subscribe(&mut c, sub, &channel);
    c.run();
    publish_each(&mut c, publisher, &channel, 1..=4, 21);
    assert_eq!(history_offsets(&mut c, sub, &channel), vec![1, 2, 3, 4]);
    // Asked on node 0 of a channel homed at node 2.
    let id = c.on(0, |sim| sim.history_remove(sub.1, &channel));
    c.run();
    assert_eq!(
        reply(&c, sub, id)["error"],
        Value::Null,
        "{}",
        reply(&c, sub, id)
    );
    assert_eq!(history_offsets(&mut c, sub, &channel), Vec::<u64>::new());
    assert_eq!(c.floors.get(channel.as_str()).map(|f| f.offset), Some(4));
    assert!(
        c.stream[channel.as_str()].is_empty(),
        "purged below the floor"
    );
    // The position stays: the next publication is 5.
    publish_each(&mut c, publisher, &channel, 5..=6, 21);
    assert_eq!(history_offsets(&mut c, sub, &channel), vec![5, 6]);
    // The home dies: its successor reads the floor and the two after it,
    // continues the epoch, and the subscriber carries on.
    c.down[2] = true;
    c.set_live(&[0, 1]);
    c.run();
    publish_each(&mut c, publisher, &channel, 7..=7, 21);
    assert_eq!(closed(&c, sub), None);
    assert_eq!(offsets(&c, sub, &channel), (1..=7).collect::<Vec<_>>());
    assert_eq!(history_offsets(&mut c, sub, &channel), vec![5, 6, 7]);
    // With nothing published after a removal, the floor alone keeps the
    // position for the next home.
    let id = c.on(0, |sim| sim.history_remove(sub.1, &channel));
    c.run();
    assert_eq!(reply(&c, sub, id)["error"], Value::Null);
    assert_eq!(history_offsets(&mut c, sub, &channel), Vec::<u64>::new());
    assert!(c.stream[channel.as_str()].is_empty());
    c.down[1] = true;
    c.set_live(&[0]);
    c.run();
    let publisher = c.connect(0, 0);
    publish_each(&mut c, publisher, &channel, 8..=8, 21);
    assert_eq!(
        closed(&c, sub),
        None,
        "the floor kept the epoch and position"
    );
    assert_eq!(offsets(&c, sub, &channel), (1..=8).collect::<Vec<_>>());
}

#[test]
fn history_remove_of_a_memory_channel_homed_on_another_node_reaches_its_home() {
    let mut c = ClusterSim::new(3, 2, 22, presence_ns());
    let channel = c.channel_homed_at("room", 2);
    let x = c.connect(0, 0);
    subscribe(&mut c, x, &channel);
    c.run();
    for i in 0..3 {
        publish(&mut c, x, &channel, &i.to_string());
    }
    c.run();
    assert_eq!(history_offsets(&mut c, x, &channel), vec![1, 2, 3]);
    let id = c.on(0, |sim| sim.history_remove(x.1, &channel));
    c.run();
    assert_eq!(reply(&c, x, id)["error"], Value::Null);
    assert_eq!(history_offsets(&mut c, x, &channel), Vec::<u64>::new());
    publish(&mut c, x, &channel, "4");
    c.run();
    assert_eq!(history_offsets(&mut c, x, &channel), vec![4]);
}
