//! Publication bodies: the padded timestamp payload of `fanout` and
//! `rooms`, and the realistic JSON feed items of `compression`.
//!
//! Every `data` object starts with `"t":<CLOCK_MONOTONIC ns>` so that the
//! subscribers' scanner ([`crate::scan`]) finds the timestamp cheaply.

use std::io::Write as _;

/// Appends the `publish` command for publication `id`: its `data` is
/// `{"t":<t>,"p":"xx…"}`, padded to `payload` bytes (or the minimum).
pub fn build_publish(out: &mut Vec<u8>, id: u64, channel_json: &str, t: u64, payload: usize) {
    let digits = t.checked_ilog10().unwrap_or(0) as usize + 1;
    let pad = payload.saturating_sub(13 + digits);
    write!(
        out,
        "{{\"id\":{id},\"publish\":{{\"channel\":{channel_json},\"data\":{{\"t\":{t},\"p\":\""
    )
    .expect("Vec write");
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}}}");
}

/// Appends the `publish` command for publication `id` whose `data` is
/// `{"t":<t>,<rest>`, where `rest` is the remainder of a JSON object
/// (its members after `t` and the closing brace), e.g. one of [`feed_items`].
pub fn build_publish_rest(out: &mut Vec<u8>, id: u64, channel_json: &str, t: u64, rest: &str) {
    write!(
        out,
        "{{\"id\":{id},\"publish\":{{\"channel\":{channel_json},\"data\":{{\"t\":{t},{rest}}}}}"
    )
    .expect("Vec write");
}

/// A tiny deterministic PRNG (xorshift64*), so the items are the same on
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "release",
    "server",
    "latency",
    "today",
    "team",
    "great",
    "update",
    "build",
    "deploy",
    "thanks",
    "review",
    "channel",
    "message",
    "new",
    "feature",
    "fixed",
    "bug",
    "just",
    "shipped",
    "looks",
    "good",
    "to",
    "me",
    "please",
    "check",
    "when",
    "you",
    "can",
    "meeting",
    "moved",
    "tomorrow",
    "morning",
    "coffee",
    "anyone",
    "lunch",
    "rust",
    "websocket",
    "edge",
    "metrics",
    "dashboard",
    "green",
    "again",
    "finally",
    "works",
    "on",
    "my",
    "machine",
    "and",
];
const NAMES: &[&str] = &[
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
    "Barbara Liskov",
    "Ken Thompson",
    "Margaret Hamilton",
    "Dennis Ritchie",
    "Frances Allen",
    "Edsger Dijkstra",
    "Radia Perlman",
];
const TAGS: &[&str] = &[
    "rust", "ops", "release", "random", "design", "perf", "oncall", "frontend", "infra", "music",
];
const EMOJI: &[&str] = &["thumbs_up", "heart", "laugh", "rocket", "eyes", "tada"];

fn sentence(r: &mut Rng, words: u64) -> String {
    let n = 4 + r.below(words);
    (0..n).map(|_| r.pick(WORDS)).collect::<Vec<_>>().join(" ")
}

fn user(r: &mut Rng) -> String {
    let id = r.below(100_000);
    format!(
        "{{\"id\":\"u_{id}\",\"name\":\"{}\",\"avatar\":\"https://cdn.example.com/avatars/u_{id}.png\",\"verified\":{}}}",
        r.pick(NAMES),
        r.below(4) == 0
    )
}

fn timestamp(r: &mut Rng) -> String {
    format!(
        "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + r.below(28),
        r.below(24),
        r.below(60),
        r.below(60),
        r.below(1000)
    )
}

/// One realistic feed/chat item (the members after `"t"`, plus the
/// closing brace), of about `target` bytes: a post with its author, text,
/// tags, reactions and a few comments, each with nested objects and the
/// same keys over and over, as real application JSON has.
pub fn feed_item(seed: u64, target: usize) -> String {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut s = format!(
        "\"type\":\"feed.item\",\"room\":\"room-{}\",\"item\":{{\"id\":\"post_{:08}\",\"author\":{},\"created_at\":\"{}\",\"text\":\"{}\",\"tags\":[\"{}\",\"{}\"],\"reactions\":[",
        r.below(1000),
        r.below(100_000_000),
        user(&mut r),
        timestamp(&mut r),
        sentence(&mut r, 30),
        r.pick(TAGS),
        r.pick(TAGS),
    );
    for i in 0..3 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"emoji\":\"{}\",\"count\":{}}}",
            r.pick(EMOJI),
            r.below(50)
        ));
    }
    s.push_str("],\"comments\":[");
    let mut first = true;
    // Comments until the item is about `target` bytes long.
    while s.len() + 80 < target {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&format!(
            "{{\"id\":\"c_{}\",\"author\":{},\"created_at\":\"{}\",\"text\":\"{}\",\"likes\":{}}}",
            r.below(1_000_000),
            user(&mut r),
            timestamp(&mut r),
            sentence(&mut r, 12),
            r.below(20)
        ));
    }
    s.push_str(&format!(
        "],\"stats\":{{\"views\":{},\"shares\":{},\"replies\":{}}}}}}}",
        r.below(100_000),
        r.below(500),
        r.below(200)
    ));
    s
}

/// `n` different [`feed_item`]s of about `target` bytes (deterministic).
pub fn feed_items(n: usize, target: usize) -> Vec<String> {
    (0..n as u64).map(|i| feed_item(i + 1, target)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_payload_size() {
        for payload in [40, 100, 1000] {
            let mut out = Vec::new();
            build_publish(&mut out, 7, "\"bench\"", 123_456_789_012, payload);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let data = serde_json::to_string(&v["publish"]["data"]).unwrap();
            assert_eq!(data.len(), payload, "{data}");
            assert_eq!(v["publish"]["data"]["t"], 123_456_789_012u64);
        }
    }

    #[test]
    fn feed_items_are_json_of_the_right_size() {
        let items = feed_items(8, 1500);
        for it in &items {
            let mut out = Vec::new();
            build_publish_rest(&mut out, 9, "\"c\"", 42, it);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["publish"]["data"]["t"], 42);
            assert!(v["publish"]["data"]["item"]["comments"].is_array());
            assert!((1200..2000).contains(&it.len()), "{}", it.len());
            // The scanner's fast path must see "t" first.
            let s = String::from_utf8(out).unwrap();
            assert!(s.contains("\"data\":{\"t\":42,"));
        }
        assert_ne!(items[0], items[1]);
        assert_eq!(feed_item(3, 1500), feed_item(3, 1500));
    }
}
