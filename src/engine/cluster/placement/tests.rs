//! Properties of rendezvous placement over 100,000 channel names: every
//! node agrees, a leave moves only the leaver's channels, a join moves
//! about `1/n` and only to the joiner, and three nodes share the load
//! within ±10%.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;
use crate::engine::cluster::membership::Heartbeat;

const CHANNELS: usize = 100_000;

fn channels() -> Vec<String> {
    // Sequential names, the hardest case for a weak hash.
    (0..CHANNELS).map(|i| format!("chat:room-{i}")).collect()
}

fn nodes(n: usize) -> Vec<Arc<str>> {
    (0..n).map(|i| Arc::from(format!("edge-{i}"))).collect()
}

/// Home index of every channel over `live`.
fn homes<'a>(chs: &[String], live: &'a [Arc<str>]) -> Vec<&'a Arc<str>> {
    chs.iter().map(|c| home_node(c, live).unwrap()).collect()
}

fn membership(self_name: &str, others: &[Arc<str>]) -> Membership {
    let mut m = Membership::new(Arc::from(self_name), 1, 3_000);
    for n in others {
        if **n != *self_name {
            m.on_heartbeat(
                &Heartbeat {
                    node: n.clone(),
                    incarnation: 1,
                    shards: 1,
                    sent_ms: 0,
                },
                0,
            );
        }
    }
    m
}

/// Known answers: a change of hash, seed or weight fails here before it
/// splits a cluster of mixed versions. The values were computed
/// independently with the reference C xxHash (python-xxhash 3.x/4.x,
/// `xxh3_64_intdigest`) and the weight in Python; the names cover XXH3's
/// length classes (1-16, 17-128, 129-240, over 240 bytes).
#[test]
fn pinned_answers() {
    assert_eq!(xxh3_64_with_seed(b"", 0), 0x2d06_8005_38d3_94c2);
    assert_eq!(channel_hash("chat:room-1"), 0x7115_2f8b_39a8_0eca);
    assert_eq!(node_hash("edge-0"), 0xb051_a6cf_ef44_6015);
    let long = |n: usize| format!("chat:{}", "r".repeat(n));
    let chs = [
        "a".to_string(),
        "chat:room-1".into(),
        "story:plan".into(),
        "feed:user.42".into(),
        "x".into(),
        long(60),
        long(195),
        long(250),
    ];
    let hashes = [
        0xdc5d_2a4e_d693_3acf,
        0x7115_2f8b_39a8_0eca,
        0x344a_df51_9800_8987,
        0xae83_6fb6_2599_73fa,
        0x4471_9cb5_951f_0502,
        0xc6bc_d35a_d4cb_2d1c,
        0xfbe7_2a3d_936b_12a2,
        0xaa00_5422_66c8_0c2f,
    ];
    let live = nodes(5);
    for ((c, h), want) in chs.iter().zip(hashes).zip(PINNED) {
        assert_eq!(channel_hash(c), h, "{c}");
        assert_eq!(&**home_node(c, &live).unwrap(), want, "{c}");
    }
}

const PINNED: [&str; 8] = [
    "edge-3", "edge-1", "edge-0", "edge-2", "edge-2", "edge-4", "edge-3", "edge-3",
];

#[test]
fn every_node_agrees_whatever_the_order() {
    let chs = channels();
    let mut rng = StdRng::seed_from_u64(30);
    for n in 1..=7 {
        let live = nodes(n);
        let reference = homes(&chs, &live);
        // Any order of the same set gives the same answers.
        let mut shuffled = live.clone();
        shuffled.shuffle(&mut rng);
        for (c, want) in chs.iter().zip(&reference).step_by(7) {
            assert_eq!(home_node(c, &shuffled).unwrap(), *want);
        }
        // Each node's Placement (built from its own membership) agrees.
        for me in &live {
            let p = Placement::new(&membership(me, &live));
            assert_eq!(p.nodes().count(), n);
            for (c, want) in chs.iter().zip(&reference).step_by(13) {
                assert_eq!(p.home(c), *want);
                assert_eq!(p.is_home(c), *want == me);
            }
        }
    }
    assert_eq!(home_node("a", &[]), None);
}

#[test]
fn a_leave_moves_only_the_leavers_channels() {
    let chs = channels();
    for n in 2..=7 {
        let live = nodes(n);
        let before = homes(&chs, &live);
        for gone in 0..n {
            let rest: Vec<Arc<str>> = live
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != gone)
                .map(|(_, x)| x.clone())
                .collect();
            let after = homes(&chs, &rest);
            for ((b, a), c) in before.iter().zip(&after).zip(&chs) {
                if **b == live[gone] {
                    assert_ne!(*a, &live[gone], "{c}");
                } else {
                    assert_eq!(b, a, "{c} moved from {b} though {} left", live[gone]);
                }
            }
        }
    }
}

#[test]
fn a_join_moves_about_one_in_n_and_only_to_the_joiner() {
    let chs = channels();
    for n in 1..=7 {
        let live = nodes(n);
        let before = homes(&chs, &live);
        let grown = nodes(n + 1);
        let joiner = &grown[n];
        let after = homes(&chs, &grown);
        let mut moved = 0usize;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, joiner);
                moved += 1;
            }
        }
        let expected = CHANNELS as f64 / (n + 1) as f64;
        let off = (moved as f64 - expected).abs() / expected;
        assert!(
            off < 0.05,
            "{n}->{}: moved {moved}, expected {expected}",
            n + 1
        );
    }
}

#[test]
fn three_nodes_share_within_ten_percent() {
    let chs = channels();
    // Sequential names and random ones, several sets of node names.
    let mut rng = StdRng::seed_from_u64(31);
    let random: Vec<String> = (0..CHANNELS)
        .map(|_| {
            let n = rng.random_range(1..40);
            (0..n)
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect()
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for names in [
        ["edge-0", "edge-1", "edge-2"],
        ["a", "b", "c"],
        ["node-eu-1", "node-us-1", "node-ap-1"],
    ] {
        let live: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
        for set in [&chs, &random] {
            let mut count = [0usize; 3];
            for c in set.iter() {
                let h = home_node(c, &live).unwrap();
                count[live.iter().position(|n| n == h).unwrap()] += 1;
            }
            let fair = set.len() as f64 / 3.0;
            for (name, k) in names.iter().zip(count) {
                let off = (k as f64 - fair).abs() / fair;
                assert!(off <= 0.10, "{name}: {k} of {} ({off:.3})", set.len());
            }
        }
    }
}

#[test]
fn placement_follows_the_generation() {
    let live = nodes(3);
    let mut m = membership("edge-0", &live);
    let mut p = Placement::new(&m);
    assert!(!p.update(&m));
    let old = p.clone();
    assert_eq!(m.expire(3_000).len(), 2);
    assert!(p.update(&m));
    assert_eq!(p.generation(), m.generation());
    assert_eq!(p.nodes().count(), 1);
    // Alone, this node is home for everything; the old placement still
    // answers for the old set.
    let chs = channels();
    assert!(chs.iter().all(|c| p.is_home(c)));
    assert!(chs.iter().any(|c| !old.is_home(c)));
}

#[test]
fn placement_knows_each_live_nodes_incarnation() {
    let live = nodes(3);
    let mut m = membership("edge-0", &live);
    let p = Placement::new(&m);
    assert_eq!(p.self_incarnation(), 1);
    assert_eq!(p.incarnation("edge-1"), Some(1));
    assert_eq!(p.incarnation("edge-9"), None);
    // edge-1 restarts: a new placement names its new incarnation.
    let hb = Heartbeat {
        node: live[1].clone(),
        incarnation: 2,
        shards: 1,
        sent_ms: 10,
    };
    m.on_heartbeat(&hb, 10);
    let q = Placement::new(&m);
    assert_eq!(q.incarnation("edge-1"), Some(2));
    assert_eq!(p.incarnation("edge-1"), Some(1), "the old one is unchanged");
}
