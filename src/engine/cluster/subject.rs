//! NATS subject names of the cluster, all under `wsedge.<cluster>.`:
//!
//! | subject                  | what travels on it                          |
//! |--------------------------|---------------------------------------------|
//! | `ch.<channel, hex>`      | a channel's deliveries and sync markers      |
//! | `node.<name>`            | a node's heartbeats                          |
//! | `home.<name>`            | requests to a node as a home (publish, sync) |
//! | `hist.<ns>.<hex>`        | a channel's history in JetStream (stream `wsedge_<cluster>_<ns>`) |
//!
//! A channel name may hold `.` (a NATS token separator) and other
//! characters subjects may not, so the channel token is the name's bytes in
//! lowercase hex: injective, only `0-9a-f`, never `.`, `*`, `>` or
//! whitespace. Decoding accepts the canonical form only (lowercase, even
//! length), so each channel has exactly one subject and each channel
//! subject exactly one channel. Cluster and node names go into subjects as
//! they are, so they are restricted to `A–Z a–z 0–9 _ -` ([`is_valid_name`]).

use crate::engine::channel::{MAX_CHANNEL_LEN, is_valid_channel};

/// First token of every subject.
pub const ROOT: &str = "wsedge";
/// Longest cluster or node name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest subject this module builds: `wsedge.<64>.ch.<510 hex>`. Well
/// under NATS's default control-line limit (4 KiB).
pub const MAX_SUBJECT_LEN: usize =
    ROOT.len() + 1 + MAX_NAME_LEN + 1 + CHANNEL.len() + 1 + 2 * MAX_CHANNEL_LEN;

const CHANNEL: &str = "ch";
const NODE: &str = "node";
const HOME: &str = "home";
const HISTORY: &str = "hist";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `s` can be a cluster or node name: 1–64 bytes of
/// `A–Z a–z 0–9 _ -` (one subject token, no wildcard, no separator).
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The subject token of a channel: its bytes in lowercase hex.
pub fn channel_token(channel: &str) -> String {
    let mut out = String::with_capacity(channel.len() * 2);
    push_hex(&mut out, channel.as_bytes());
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0x0f) as usize] as char);
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The channel a token names, if the token is canonical lowercase hex of a
/// valid channel name.
pub fn channel_of_token(token: &str) -> Result<String, SubjectError> {
    let t = token.as_bytes();
    if t.is_empty() || !t.len().is_multiple_of(2) || t.len() > 2 * MAX_CHANNEL_LEN {
        return Err(SubjectError::ChannelToken);
    }
    let mut raw = Vec::with_capacity(t.len() / 2);
    for pair in t.chunks_exact(2) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => raw.push(h << 4 | l),
            _ => return Err(SubjectError::ChannelToken),
        }
    }
    match String::from_utf8(raw) {
        Ok(s) if is_valid_channel(&s) => Ok(s),
        _ => Err(SubjectError::ChannelToken),
    }
}

/// Why a cluster name or a subject was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectError {
    /// The cluster or node name is not 1–64 bytes of `A–Z a–z 0–9 _ -`.
    Name,
    /// The subject is not under this cluster's prefix.
    Prefix,
    /// The subject's kind token is not `ch`, `node` or `home`, or the
    /// subject has the wrong number of tokens.
    Shape,
    /// The channel token is not canonical hex of a valid channel name.
    ChannelToken,
}

impl std::fmt::Display for SubjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubjectError::Name => "name is not 1-64 bytes of A-Z a-z 0-9 _ -",
            SubjectError::Prefix => "subject is not under this cluster's prefix",
            SubjectError::Shape => "subject is not ch.<hex>, node.<name> or home.<name>",
            SubjectError::ChannelToken => "channel token is not lowercase hex of a valid channel",
        })
    }
}

impl std::error::Error for SubjectError {}

/// A subject of this cluster, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject<'a> {
    /// `ch.<hex>`: the channel it carries.
    Channel(String),
    /// `node.<name>`: heartbeats of that node.
    Node(&'a str),
    /// `home.<name>`: requests to that node.
    Home(&'a str),
}

/// The subjects of one cluster; built once from the configured cluster
/// name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    /// `wsedge.<cluster>.`
    prefix: String,
}

impl Subjects {
    /// The subjects of cluster `cluster` (refused unless
    /// [`is_valid_name`]).
    pub fn new(cluster: &str) -> Result<Self, SubjectError> {
        if !is_valid_name(cluster) {
            return Err(SubjectError::Name);
        }
        Ok(Subjects {
            prefix: format!("{ROOT}.{cluster}."),
        })
    }

    /// `wsedge.<cluster>.`
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn with(&self, kind: &str, extra: usize) -> String {
        let mut s = String::with_capacity(self.prefix.len() + kind.len() + 1 + extra);
        s.push_str(&self.prefix);
        s.push_str(kind);
        s.push('.');
        s
    }

    /// The subject of a channel: `wsedge.<cluster>.ch.<hex>`.
    pub fn channel(&self, channel: &str) -> String {
        let mut s = self.with(CHANNEL, 2 * channel.len());
        push_hex(&mut s, channel.as_bytes());
        s
    }

    /// The subject a node's heartbeats go to: `wsedge.<cluster>.node.<name>`.
    /// `name` must be [`is_valid_name`] (the node's own, validated name or
    /// one from a decoded heartbeat, which checks it).
    pub fn node(&self, name: &str) -> String {
        let mut s = self.with(NODE, name.len());
        s.push_str(name);
        s
    }

    /// What to subscribe to for every node's heartbeats:
    /// `wsedge.<cluster>.node.*`.
    pub fn all_nodes(&self) -> String {
        let mut s = self.with(NODE, 1);
        s.push('*');
        s
    }

    /// The subject requests to a node go to: `wsedge.<cluster>.home.<name>`.
    /// `name` must be [`is_valid_name`].
    pub fn home(&self, name: &str) -> String {
        let mut s = self.with(HOME, name.len());
        s.push_str(name);
        s
    }

    /// The subject server API calls that act on every node go to:
    /// `wsedge.<cluster>.api` (every node subscribes).
    pub fn api(&self) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 3);
        s.push_str(&self.prefix);
        s.push_str("api");
        s
    }

    /// The subject a channel's kept history is stored under, in the stream
    /// of namespace `ns` (`history_backend = "jetstream"`):
    /// `wsedge.<cluster>.hist.<ns>.<hex>`. `ns` must be a valid namespace
    /// name (`A–Z a–z 0–9 _ -`).
    pub fn history(&self, ns: &str, channel: &str) -> String {
        let mut s = self.with(HISTORY, ns.len() + 1 + 2 * channel.len());
        s.push_str(ns);
        s.push('.');
        push_hex(&mut s, channel.as_bytes());
        s
    }

    /// Every history subject of namespace `ns`: what its stream holds.
    pub fn history_all(&self, ns: &str) -> String {
        let mut s = self.with(HISTORY, ns.len() + 2);
        s.push_str(ns);
        s.push_str(".>");
        s
    }

    /// Parses a subject of this cluster.
    pub fn parse<'a>(&self, subject: &'a str) -> Result<Subject<'a>, SubjectError> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .ok_or(SubjectError::Prefix)?;
        let (kind, last) = rest.split_once('.').ok_or(SubjectError::Shape)?;
        match kind {
            CHANNEL => channel_of_token(last).map(Subject::Channel),
            NODE | HOME if !is_valid_name(last) => {
                if last.contains('.') {
                    Err(SubjectError::Shape)
                } else {
                    Err(SubjectError::Name)
                }
            }
            NODE => Ok(Subject::Node(last)),
            HOME => Ok(Subject::Home(last)),
            _ => Err(SubjectError::Shape),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Every byte a channel name may hold (crate::engine::channel).
    const NAME_BYTES: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.=@/,+!~#$";
    const NS_BYTES: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

    fn random_channel(rng: &mut StdRng) -> String {
        let pick = |rng: &mut StdRng, set: &[u8], n: usize| -> String {
            (0..n)
                .map(|_| set[rng.random_range(0..set.len())] as char)
                .collect()
        };
        if rng.random_bool(0.5) {
            let ns_len = rng.random_range(1..=MAX_NAME_LEN);
            let ns = pick(rng, NS_BYTES, ns_len);
            let name_len = rng.random_range(1..=MAX_CHANNEL_LEN - ns_len - 1);
            format!("{ns}:{}", pick(rng, NAME_BYTES, name_len))
        } else {
            let n = rng.random_range(1..=MAX_CHANNEL_LEN);
            pick(rng, NAME_BYTES, n)
        }
    }

    fn subject_safe(token: &str) -> bool {
        token
            .bytes()
            .all(|b| !matches!(b, b'.' | b'*' | b'>') && !b.is_ascii_whitespace())
    }

    #[test]
    fn channel_tokens_roundtrip_and_are_injective() {
        let mut rng = StdRng::seed_from_u64(10);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let ch = random_channel(&mut rng);
            assert!(is_valid_channel(&ch), "{ch}");
            let tok = channel_token(&ch);
            assert!(subject_safe(&tok), "{tok}");
            assert!(tok.bytes().all(|b| HEX.contains(&b)));
            assert_eq!(channel_of_token(&tok).as_deref(), Ok(ch.as_str()));
            // Injective: a token seen before names the same channel.
            if let Some(prev) = seen.insert(tok, ch.clone()) {
                assert_eq!(prev, ch);
            }
        }
        // Names one byte apart give different tokens.
        assert_ne!(channel_token("a.b"), channel_token("a-b"));
        assert_ne!(channel_token("ab"), channel_token("a:b"));
    }

    #[test]
    fn longest_channel_subject_fits() {
        let s = Subjects::new(&"c".repeat(MAX_NAME_LEN)).unwrap();
        let ch = "x".repeat(MAX_CHANNEL_LEN);
        let subj = s.channel(&ch);
        assert_eq!(subj.len(), MAX_SUBJECT_LEN);
        assert_eq!(s.parse(&subj), Ok(Subject::Channel(ch)));
        // One byte more is not a channel.
        let too_long = "61".repeat(MAX_CHANNEL_LEN + 1);
        assert_eq!(channel_of_token(&too_long), Err(SubjectError::ChannelToken));
    }

    #[test]
    fn only_canonical_tokens_decode() {
        assert_eq!(channel_token("chat:a.b"), "636861743a612e62");
        assert_eq!(channel_of_token("636861743a612e62").unwrap(), "chat:a.b");
        for bad in [
            "",
            "6",                // odd length
            "636861743A612E62", // uppercase: not canonical
            "6g",
            "20",   // a space: not a valid channel
            "3a61", // ":a": empty namespace
            "ff",   // not UTF-8
            "61.62",
        ] {
            assert_eq!(
                channel_of_token(bad),
                Err(SubjectError::ChannelToken),
                "{bad}"
            );
        }
    }

    #[test]
    fn random_tokens_never_panic() {
        let mut rng = StdRng::seed_from_u64(11);
        let s = Subjects::new("prod").unwrap();
        for _ in 0..50_000 {
            let n = rng.random_range(0..24);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random_range(0x20..0x7f)).collect();
            let text = String::from_utf8(bytes).unwrap();
            if let Ok(ch) = channel_of_token(&text) {
                assert_eq!(channel_token(&ch), text);
            }
            let _ = s.parse(&format!("wsedge.prod.{text}"));
            let _ = s.parse(&format!("wsedge.prod.ch.{text}"));
        }
    }

    #[test]
    fn node_and_home_subjects() {
        let s = Subjects::new("prod-1").unwrap();
        assert_eq!(s.prefix(), "wsedge.prod-1.");
        assert_eq!(s.node("edge_a"), "wsedge.prod-1.node.edge_a");
        assert_eq!(s.all_nodes(), "wsedge.prod-1.node.*");
        assert_eq!(s.home("edge_a"), "wsedge.prod-1.home.edge_a");
        assert_eq!(s.channel("a"), "wsedge.prod-1.ch.61");
        assert_eq!(
            s.parse("wsedge.prod-1.node.edge_a"),
            Ok(Subject::Node("edge_a"))
        );
        assert_eq!(
            s.parse("wsedge.prod-1.home.edge_a"),
            Ok(Subject::Home("edge_a"))
        );
        assert_eq!(s.parse("wsedge.prod-2.node.a"), Err(SubjectError::Prefix));
        assert_eq!(s.parse("wsedge.prod-1.node"), Err(SubjectError::Shape));
        assert_eq!(s.parse("wsedge.prod-1.node.a.b"), Err(SubjectError::Shape));
        assert_eq!(s.parse("wsedge.prod-1.node.*"), Err(SubjectError::Name));
        assert_eq!(s.parse("wsedge.prod-1.other.a"), Err(SubjectError::Shape));
        assert_eq!(s.parse("wsedge.prod-1.home."), Err(SubjectError::Name));
    }

    #[test]
    fn names() {
        assert!(is_valid_name("a"));
        assert!(is_valid_name("Edge_01-b"));
        assert!(is_valid_name(&"n".repeat(MAX_NAME_LEN)));
        for bad in ["", "a.b", "a*", ">", "a b", "ü", "a\n"] {
            assert!(!is_valid_name(bad), "{bad:?}");
            assert_eq!(Subjects::new(bad), Err(SubjectError::Name));
        }
        assert!(!is_valid_name(&"n".repeat(MAX_NAME_LEN + 1)));
    }
}
