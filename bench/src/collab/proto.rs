//! The story collaboration wire subset the `collab-*` workloads speak
//! (JSON form, docs/COLLABORATION.md): building `collab_join` and `update`
//! commands, recognising story events among the pushes, and parsing the
//! `update` and `collab_join` replies. Pure functions, unit-tested.
//!
//! Story events reach members as ordinary `pub` pushes on the story
//! channel; an accepted update is
//! `{"push":{"channel":…,"pub":{"offset":K,"data":{"update":{"section":…,
//! "version":N,"data":<what the editor sent>,"by":{…}}}}}}`. The editors'
//! `data` is `{"t":<CLOCK_MONOTONIC ns at send>,"x":"xx…"}`, so a viewer
//! finds the send time as in `fanout`.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::LazyLock;

use anyhow::{Context, Result, anyhow};
use memchr::memmem::Finder;
use serde::Deserialize;

use crate::scan::{ServerMsg, classify, parse_u64, parse_u64_len};

/// The role asked for in `collab_join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRole {
    /// May lock sections and send updates.
    Editor,
    /// Reads only.
    Viewer,
}

impl JoinRole {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            JoinRole::Editor => "editor",
            JoinRole::Viewer => "viewer",
        }
    }
}

/// Appends `{"id":<id>,"collab_join":{"channel":<channel_json>,"role":"…"}}`.
/// `channel_json` is the channel already JSON-quoted.
pub fn build_join(out: &mut Vec<u8>, id: u64, channel_json: &str, role: JoinRole) {
    write!(
        out,
        "{{\"id\":{id},\"collab_join\":{{\"channel\":{channel_json},\"role\":\"{}\"}}}}",
        role.as_str()
    )
    .expect("Vec write");
}

/// Appends the `update` command `id` for `section` from `base_version`,
/// whose `data` is `{"t":<t>,"x":"xx…"}` padded to `payload` bytes (or the
/// minimum). `section` and `op_id` are written between quotes as they are:
/// they must not need JSON escaping (the workloads use `s<j>`, `sec<i>`
/// and `<g>-<n>`).
#[allow(clippy::too_many_arguments)]
pub fn build_update(
    out: &mut Vec<u8>,
    id: u64,
    channel_json: &str,
    section: &str,
    base_version: u64,
    t: u64,
    payload: usize,
    op_id: &str,
) {
    debug_assert!(!section.contains(['"', '\\']) && !op_id.contains(['"', '\\']));
    let digits = t.checked_ilog10().unwrap_or(0) as usize + 1;
    let pad = payload.saturating_sub(13 + digits);
    write!(
        out,
        "{{\"id\":{id},\"update\":{{\"channel\":{channel_json},\"section\":\"{section}\",\
         \"base_version\":{base_version},\"data\":{{\"t\":{t},\"x\":\""
    )
    .expect("Vec write");
    out.resize(out.len() + pad, b'x');
    write!(out, "\"}},\"op_id\":\"{op_id}\"}}}}").expect("Vec write");
}

static PUB_OFFSET: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"pub\":{\"offset\":"));
static VERSION: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"version\":"));
static DATA_T: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":{\"t\":"));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\":{"));

fn after<'a>(hay: &'a [u8], f: &Finder<'_>) -> Option<&'a [u8]> {
    f.find(hay).map(|i| &hay[i + f.needle().len()..])
}

/// One server object as a story member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoryMsg<'a> {
    /// An `update` story event.
    Update {
        /// Channel offset of the publication.
        offset: u64,
        /// The section id as it appears between the quotes (escapes, if
        /// any, left as they are).
        section: &'a [u8],
        /// The section's new version.
        version: u64,
        /// The editor's send time (`"t"` first in the update's `data`).
        t: Option<u64>,
    },
    /// Another story event (`story.user.join`, `story.user.leave`, `lock`)
    /// or any other publication on the channel.
    Event {
        /// Channel offset of the publication.
        offset: u64,
    },
    /// Not a publication: a reply, an error, another push.
    Other(ServerMsg),
}

/// Classifies one server object (one `\n`-separated line of a text frame).
/// An update event is recognised only in the server's own key order
/// (`"pub":{"offset":K,"data":{"update":{` …); its `version` is the first
/// `"version":` after that and `t` the first `"data":{"t":` after the
/// version.
pub fn classify_story(obj: &[u8]) -> StoryMsg<'_> {
    match classify(obj) {
        ServerMsg::Pub { offset, .. } => {
            let update = after(obj, &PUB_OFFSET)
                .and_then(|p| parse_u64_len(p).map(|(_, n)| &p[n..]))
                .and_then(|p| p.strip_prefix(b",\"data\":{\"update\":{".as_slice()));
            let Some(body) = update else {
                return StoryMsg::Event { offset };
            };
            let Some(section) = section_id(body) else {
                return StoryMsg::Event { offset };
            };
            let Some(v) = after(body, &VERSION) else {
                return StoryMsg::Event { offset };
            };
            let Some((version, n)) = parse_u64_len(v) else {
                return StoryMsg::Event { offset };
            };
            let t = after(&v[n..], &DATA_T).and_then(parse_u64);
            StoryMsg::Update {
                offset,
                section,
                version,
                t,
            }
        }
        other => StoryMsg::Other(other),
    }
}

/// The id of `"section":"<id>"` at the start of an update event's body:
/// the bytes up to the first unescaped quote.
fn section_id(body: &[u8]) -> Option<&[u8]> {
    let rest = body.strip_prefix(b"\"section\":\"".as_slice())?;
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'\\' => i += 2,
            b'"' => return Some(&rest[..i]),
            _ => i += 1,
        }
    }
    None
}

/// A successful `update` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateReply {
    /// Command id.
    pub id: u64,
    /// The section's version after the update.
    pub version: u64,
    /// `duplicate: true`: a resent `op_id`, nothing applied.
    pub duplicate: bool,
}

/// Parses `{"id":N,"update":{"version":V,"duplicate"?:true}}`; `None` for
/// anything else.
pub fn parse_update_reply(obj: &[u8]) -> Option<UpdateReply> {
    let rest = obj.strip_prefix(b"{\"id\":")?;
    let (id, n) = parse_u64_len(rest)?;
    let rest = rest[n..].strip_prefix(b",\"update\":{\"version\":")?;
    let (version, n) = parse_u64_len(rest)?;
    let duplicate = rest[n..].starts_with(b",\"duplicate\":true");
    Some(UpdateReply {
        id,
        version,
        duplicate,
    })
}

/// An error reply: its id, code and, for 119 *version conflict*, the
/// section's current `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorReply {
    /// Command id.
    pub id: u64,
    /// Error code.
    pub code: u64,
    /// The `version` field the error carries, if any.
    pub version: Option<u64>,
}

/// Parses an error reply (`{"id":N,"error":{"code":C,…,"version"?:V,…}}`);
/// `None` for anything else.
pub fn parse_error_reply(obj: &[u8]) -> Option<ErrorReply> {
    let ServerMsg::Error { id, code } = classify(obj) else {
        return None;
    };
    let version = after(obj, &ERROR)
        .and_then(|e| after(e, &VERSION))
        .and_then(parse_u64);
    Some(ErrorReply { id, code, version })
}

/// One section of a `collab_join` snapshot.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SectionSnap {
    /// Current version (0 = never written).
    pub version: u64,
    /// Current data, parsed (a client renders it).
    pub data: serde_json::Value,
    /// Lock holder, if any.
    #[serde(default)]
    pub holder: Option<Member>,
}

/// A member as the snapshot names it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Member {
    /// User id.
    pub user: String,
    /// Client id.
    pub client: String,
    /// The client's `info`, if any.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

/// A parsed `collab_join` reply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JoinReply {
    /// `editor`, `viewer` or `queued`.
    pub role: String,
    /// Place in line when queued.
    #[serde(default)]
    pub position: Option<u64>,
    /// The editors.
    pub editors: Vec<Member>,
    /// How many viewers the story has.
    pub viewers: u64,
    /// Every section by id.
    pub sections: HashMap<String, SectionSnap>,
    /// Channel offset the snapshot is taken at.
    pub offset: u64,
    /// Channel epoch.
    pub epoch: String,
    /// The `pub` push objects that arrived in the setup frames with or
    /// after the reply (JSON text), for the member to handle as if they
    /// came later; filled by the connection, not part of the JSON.
    #[serde(skip)]
    pub early: Vec<Vec<u8>>,
}

/// Parses a whole `collab_join` reply object (`{"id":N,"collab_join":{…}}`),
/// section data included.
pub fn parse_join_reply(obj: &[u8]) -> Result<JoinReply> {
    #[derive(Deserialize)]
    struct Outer {
        collab_join: JoinReply,
    }
    let o: Outer = serde_json::from_slice(obj).with_context(|| {
        let s = String::from_utf8_lossy(&obj[..obj.len().min(300)]).into_owned();
        anyhow!("not a collab_join reply: {s}")
    })?;
    Ok(o.collab_join)
}

/// Where global connection `g` sits when `stories` stories each have
/// `editors` editors: story `g % stories`, member `g / stories` of it;
/// members below `editors` are editors. So connections `0..stories ×
/// editors` are exactly the editors (and `g` is an editor's index among
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// Story index.
    pub story: u64,
    /// Member index within the story.
    pub member: u64,
    /// Whether this member is an editor.
    pub editor: bool,
}

/// See [`Seat`].
pub fn seat(g: u64, stories: u64, editors: u64) -> Seat {
    let k = stories.max(1);
    let member = g / k;
    Seat {
        story: g % k,
        member,
        editor: member < editors,
    }
}

/// Σ over stories of accepted in-window updates × viewers: the update
/// pushes the viewers must receive.
pub fn expected_deliveries(updates: &[u64], viewers: &[u64]) -> u64 {
    updates.iter().zip(viewers).map(|(u, v)| u * v).sum()
}

/// The nearest-rank `q` quantile (0 < q ≤ 1) of ascending `sorted`
/// samples; `None` when there are none.
pub fn nearest_rank(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_command() {
        let mut out = Vec::new();
        build_join(&mut out, 2, "\"story:bench\"", JoinRole::Viewer);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":2,"collab_join":{"channel":"story:bench","role":"viewer"}})
        );
        out.clear();
        build_join(&mut out, 9, "\"story:b7\"", JoinRole::Editor);
        assert!(out.ends_with(b"\"role\":\"editor\"}}"));
    }

    #[test]
    fn update_command_and_payload_size() {
        for payload in [20, 100, 200, 1000] {
            let mut out = Vec::new();
            build_update(
                &mut out,
                7,
                "\"story:bench\"",
                "s3",
                12,
                123_456_789_012,
                payload,
                "4-17",
            );
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let u = &v["update"];
            assert_eq!(v["id"], 7);
            assert_eq!(u["channel"], "story:bench");
            assert_eq!(u["section"], "s3");
            assert_eq!(u["base_version"], 12);
            assert_eq!(u["op_id"], "4-17");
            assert_eq!(u["data"]["t"], 123_456_789_012u64);
            let data = serde_json::to_string(&u["data"]).unwrap();
            assert_eq!(data.len(), payload.max(13 + 12), "{data}");
        }
    }

    /// The update event exactly as the server encodes it
    /// (`json::collab::write_update_event` inside a `pub` push).
    fn update_push(offset: u64, version: u64, data: &str) -> String {
        format!(
            "{{\"push\":{{\"channel\":\"story:bench\",\"pub\":{{\"offset\":{offset},\"data\":\
             {{\"update\":{{\"section\":\"s3\",\"version\":{version},\"data\":{data},\
             \"by\":{{\"user\":\"b3\",\"client\":\"6f1c.0.4\"}}}}}}}}}}}}"
        )
    }

    #[test]
    fn story_events() {
        let p = update_push(42, 9, r#"{"t":123456789,"x":"xx"}"#);
        serde_json::from_str::<serde_json::Value>(&p).unwrap();
        assert_eq!(
            classify_story(p.as_bytes()),
            StoryMsg::Update {
                offset: 42,
                section: b"s3",
                version: 9,
                t: Some(123_456_789)
            }
        );
        // Someone else's data without a timestamp.
        let p = update_push(43, 10, r#"{"text":"hello"}"#);
        assert_eq!(
            classify_story(p.as_bytes()),
            StoryMsg::Update {
                offset: 43,
                section: b"s3",
                version: 10,
                t: None
            }
        );
        assert_eq!(
            section_id(br#""section":"a\"b","version":1"#),
            Some(br#"a\"b"#.as_slice())
        );
        assert_eq!(section_id(br#""section":"abc"#), None);
        let join = br#"{"push":{"channel":"story:bench","pub":{"offset":5,"data":{"story.user.join":{"user":"b9","client":"6f.0.9","role":"viewer"}}}}}"#;
        assert_eq!(classify_story(join), StoryMsg::Event { offset: 5 });
        let lock = br#"{"push":{"channel":"story:bench","pub":{"offset":6,"data":{"lock":{"section":"s1","holder":null}}}}}"#;
        assert_eq!(classify_story(lock), StoryMsg::Event { offset: 6 });
        assert_eq!(
            classify_story(br#"{"id":3,"update":{"version":4}}"#),
            StoryMsg::Other(ServerMsg::Reply {
                id: 3,
                offset: None
            })
        );
    }

    #[test]
    fn update_replies() {
        assert_eq!(
            parse_update_reply(br#"{"id":12,"update":{"version":31}}"#),
            Some(UpdateReply {
                id: 12,
                version: 31,
                duplicate: false
            })
        );
        assert_eq!(
            parse_update_reply(br#"{"id":12,"update":{"version":31,"duplicate":true}}"#),
            Some(UpdateReply {
                id: 12,
                version: 31,
                duplicate: true
            })
        );
        assert_eq!(
            parse_update_reply(br#"{"id":12,"publish":{"offset":3}}"#),
            None
        );
        assert_eq!(
            parse_error_reply(
                br#"{"id":8,"error":{"code":119,"message":"version conflict","temporary":false,"version":5,"data":{"text":"theirs"}}}"#
            ),
            Some(ErrorReply {
                id: 8,
                code: 119,
                version: Some(5)
            })
        );
        assert_eq!(
            parse_error_reply(
                br#"{"id":7,"error":{"code":118,"message":"section locked","temporary":false,"holder":{"user":"bob","client":"6f.1.4"}}}"#
            ),
            Some(ErrorReply {
                id: 7,
                code: 118,
                version: None
            })
        );
        assert_eq!(
            parse_error_reply(br#"{"id":7,"update":{"version":1}}"#),
            None
        );
    }

    #[test]
    fn join_reply() {
        let r = parse_join_reply(
            br#"{"id":2,"collab_join":{"role":"viewer","editors":[{"user":"b0","client":"6f.0.1"},{"user":"b1","client":"6f.0.2","info":{"name":"Ann"}}],"viewers":4999,"sections":{"s0":{"version":3,"data":{"t":1,"x":"x"}},"s1":{"version":1,"data":"plain","holder":{"user":"b1","client":"6f.0.2"}}},"epoch":"9d3c1f0a7b2e4c55","offset":17}}"#,
        )
        .unwrap();
        assert_eq!(r.role, "viewer");
        assert_eq!(r.editors.len(), 2);
        assert_eq!(r.editors[1].info, Some(serde_json::json!({"name":"Ann"})));
        assert_eq!(r.viewers, 4999);
        assert_eq!(r.offset, 17);
        assert_eq!(r.epoch, "9d3c1f0a7b2e4c55");
        assert_eq!(r.sections["s0"].version, 3);
        assert_eq!(r.sections["s0"].data["t"], 1);
        assert_eq!(r.sections["s1"].holder.as_ref().unwrap().user, "b1");
        let q = parse_join_reply(
            br#"{"id":2,"collab_join":{"role":"queued","position":1,"editors":[],"viewers":0,"sections":{},"epoch":"00ab","offset":0}}"#,
        )
        .unwrap();
        assert_eq!((q.role.as_str(), q.position), ("queued", Some(1)));
        assert!(parse_join_reply(br#"{"id":2,"error":{"code":117}}"#).is_err());
    }

    #[test]
    fn seats() {
        // One story, 10 editors: 0..10 edit, the rest view.
        assert_eq!(
            seat(9, 1, 10),
            Seat {
                story: 0,
                member: 9,
                editor: true
            }
        );
        assert!(!seat(10, 1, 10).editor);
        // 1000 stories x 3 editors: 0..3000 edit, each story gets 3.
        let editors: Vec<u64> = (0..23_000).filter(|&g| seat(g, 1000, 3).editor).collect();
        assert_eq!(editors.len(), 3000);
        assert_eq!(*editors.last().unwrap(), 2999);
        let in_story_7 = (0..23_000).filter(|&g| seat(g, 1000, 3).story == 7).count();
        assert_eq!(in_story_7, 23);
        assert_eq!(seat(5, 0, 1).story, 0);
    }

    #[test]
    fn expected_and_quantiles() {
        assert_eq!(expected_deliveries(&[10, 0, 3], &[20, 20, 19]), 257);
        assert_eq!(expected_deliveries(&[], &[]), 0);
        let s: Vec<u64> = (1..=200).collect();
        assert_eq!(nearest_rank(&s, 0.5), Some(100));
        assert_eq!(nearest_rank(&s, 0.99), Some(198));
        assert_eq!(nearest_rank(&s, 1.0), Some(200));
        assert_eq!(nearest_rank(&[7], 0.99), Some(7));
        assert_eq!(nearest_rank(&[], 0.5), None);
        assert_eq!(nearest_rank(&[1, 2, 3], 0.0001), Some(1));
    }
}
