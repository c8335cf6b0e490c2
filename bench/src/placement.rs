//! Which wsedge node is a channel's home: a copy of wsedge's rendezvous
//! hashing (`src/engine/cluster/placement.rs` in the main crate; the bench
//! does not depend on wsedge). The cluster workloads use it to pick a
//! channel homed on a given node and to know which channels a killed node
//! was home for; they also check it against the nodes' own counters (a
//! publish through a channel's home sends no `to_node` message).
//!
//! Must stay identical to wsedge's: XXH3-64 of the channel (seed
//! [`PLACEMENT_SEED`]) and of the node name (seed `!PLACEMENT_SEED`), the
//! splitmix64 finaliser of their xor as the weight, highest weight wins
//! (ties: the greater name). The test pins wsedge's own known answers.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// wsedge's placement seed.
pub const PLACEMENT_SEED: u64 = 0x7773_6564_6765_0010;

fn weight(channel: &str, node: &str) -> u64 {
    let mut z = xxh3_64_with_seed(channel.as_bytes(), PLACEMENT_SEED)
        ^ xxh3_64_with_seed(node.as_bytes(), !PLACEMENT_SEED);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The index in `live` of `channel`'s home node (`None` for an empty set).
pub fn home_index<S: AsRef<str>>(channel: &str, live: &[S]) -> Option<usize> {
    live.iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| {
            let (a, b) = (a.as_ref(), b.as_ref());
            (weight(channel, a), a).cmp(&(weight(channel, b), b))
        })
        .map(|(i, _)| i)
}

/// The first channel `{prefix}{i}` (i = 0, 1, …) whose home is `live[want]`.
pub fn channel_homed_at<S: AsRef<str>>(prefix: &str, want: usize, live: &[S]) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| home_index(c, live) == Some(want))
        .expect("some channel is homed on every node")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wsedge's `pinned_answers` (placement/tests.rs): five nodes `edge-0`…`edge-4`.
    #[test]
    fn same_homes_as_wsedge() {
        let live: Vec<String> = (0..5).map(|i| format!("edge-{i}")).collect();
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
        let want = [3, 1, 0, 2, 2, 4, 3, 3];
        for (c, w) in chs.iter().zip(want) {
            assert_eq!(home_index(c, &live), Some(w), "{c}");
        }
        assert_eq!(home_index::<&str>("a", &[]), None);
        let c = channel_homed_at("chat:", 1, &["n0", "n1"]);
        assert_eq!(home_index(&c, &["n0", "n1"]), Some(1));
    }
}
