//! The Redis layout of a story, and the JSON of its hash fields. Pure: no
//! I/O, so every rule here is unit-tested, including random garbage.
//!
//! One hash per story, `wsedge:story:<channel>`:
//! - `s:<section>` = `{"v":<version>,"w":"<writer user>","d":<data>}`,
//!   `d` being the section's JSON value as is (not a string holding JSON);
//! - `l:<section>` = `{"u":"<user>","c":"<client>","e":<expires_ms>}`.
//!
//! Reading is lenient: a field that cannot be read is skipped and counted
//! ([`Decoded::malformed`]), never fatal; a field whose name has another
//! prefix is ignored (room for later additions); unknown keys inside a
//! field's object are ignored for the same reason.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::bridge::{LockRecord, SectionRecord, StoryRecord};

/// Prefix of every story key: story `c` lives at `wsedge:story:<c>`.
pub const KEY_PREFIX: &str = "wsedge:story:";
/// Prefix of a section field: `s:<section id>`.
pub const SECTION_PREFIX: &str = "s:";
/// Prefix of a lock field: `l:<section id>`.
pub const LOCK_PREFIX: &str = "l:";

/// The Redis key of a story.
pub fn story_key(channel: &str) -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + channel.len());
    key.push_str(KEY_PREFIX);
    key.push_str(channel);
    key
}

/// The field holding section `id`.
pub fn section_field(id: &str) -> String {
    [SECTION_PREFIX, id].concat()
}

/// The field holding the lock of section `id`.
pub fn lock_field(id: &str) -> String {
    [LOCK_PREFIX, id].concat()
}

/// A section whose `data` is not one JSON value: it is not written (the
/// stored field would be unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

#[derive(Serialize)]
struct SectionOut<'a> {
    v: u64,
    w: &'a str,
    d: &'a RawValue,
}

#[derive(Deserialize)]
struct SectionIn<'a> {
    v: u64,
    #[serde(borrow)]
    w: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    d: &'a RawValue,
}

#[derive(Serialize, Deserialize)]
struct LockJson<'a> {
    #[serde(borrow)]
    u: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    c: std::borrow::Cow<'a, str>,
    e: u64,
}

/// The value of a section's field. `data` must be one JSON value
/// (whitespace around it is dropped).
pub fn encode_section(s: &SectionRecord) -> Result<Vec<u8>, NotJson> {
    let text = std::str::from_utf8(&s.data).map_err(|_| NotJson)?;
    // `from_str` checks the whole text is one value (trailing whitespace
    // only); the borrowed `RawValue` is that value's text without it.
    let _: IgnoredAny = serde_json::from_str(text).map_err(|_| NotJson)?;
    let d: &RawValue = serde_json::from_str(text.trim()).map_err(|_| NotJson)?;
    let out = SectionOut {
        v: s.version,
        w: &s.writer,
        d,
    };
    Ok(serde_json::to_vec(&out).expect("a struct of a number, a string and JSON serializes"))
}

/// The value of a lock's field.
pub fn encode_lock(l: &LockRecord) -> Vec<u8> {
    let out = LockJson {
        u: std::borrow::Cow::Borrowed(&l.user),
        c: std::borrow::Cow::Borrowed(&l.client),
        e: l.expires_ms,
    };
    serde_json::to_vec(&out).expect("a struct of strings and a number serializes")
}

/// A section read back from its field's value; `None` if it is not a
/// section's JSON.
pub fn decode_section(id: &str, value: &[u8]) -> Option<SectionRecord> {
    let text = std::str::from_utf8(value).ok()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let s: SectionIn<'_> = serde_json::from_str(text).ok()?;
    Some(SectionRecord {
        id: id.into(),
        version: s.v,
        data: Bytes::copy_from_slice(s.d.get().as_bytes()),
        writer: Arc::from(s.w.as_ref()),
    })
}

/// A lock read back from its field's value; `None` if it is not a lock's
/// JSON.
pub fn decode_lock(section: &str, value: &[u8]) -> Option<LockRecord> {
    let text = std::str::from_utf8(value).ok()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let l: LockJson<'_> = serde_json::from_str(text).ok()?;
    Some(LockRecord {
        section: section.into(),
        user: Arc::from(l.u.as_ref()),
        client: Arc::from(l.c.as_ref()),
        expires_ms: l.e,
    })
}

/// A story read from its hash's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The story (`active` as given to [`decode_story`]).
    pub record: StoryRecord,
    /// Fields skipped because they could not be read: a section or lock
    /// field whose value is not its JSON, or whose name is not UTF-8 or
    /// has an empty section id.
    pub malformed: u32,
    /// Fields ignored because their name has no known prefix.
    pub ignored: u32,
}

/// Reads a story from its hash's `(field, value)` pairs (as `HGETALL`
/// gives them). Sections and locks come out in section id order.
pub fn decode_story<'a>(
    channel: Arc<str>,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    active: bool,
) -> Decoded {
    let mut d = Decoded {
        record: StoryRecord {
            channel,
            sections: Vec::new(),
            locks: Vec::new(),
            active,
        },
        malformed: 0,
        ignored: 0,
    };
    for (name, value) in fields {
        let (is_section, rest) = if let Some(rest) = name.strip_prefix(SECTION_PREFIX.as_bytes()) {
            (true, rest)
        } else if let Some(rest) = name.strip_prefix(LOCK_PREFIX.as_bytes()) {
            (false, rest)
        } else {
            d.ignored += 1;
            continue;
        };
        let Some(id) = std::str::from_utf8(rest).ok().filter(|id| !id.is_empty()) else {
            d.malformed += 1;
            continue;
        };
        let ok = if is_section {
            decode_section(id, value).map(|s| d.record.sections.push(s))
        } else {
            decode_lock(id, value).map(|l| d.record.locks.push(l))
        };
        if ok.is_none() {
            d.malformed += 1;
        }
    }
    d.record.sections.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    d.record
        .locks
        .sort_unstable_by(|a, b| a.section.cmp(&b.section));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(id: &str, version: u64, data: &str, writer: &str) -> SectionRecord {
        SectionRecord {
            id: id.into(),
            version,
            data: Bytes::copy_from_slice(data.as_bytes()),
            writer: writer.into(),
        }
    }

    fn lock(section: &str, user: &str, client: &str, expires_ms: u64) -> LockRecord {
        LockRecord {
            section: section.into(),
            user: user.into(),
            client: client.into(),
            expires_ms,
        }
    }

    #[test]
    fn keys_and_fields() {
        assert_eq!(story_key("story:42"), "wsedge:story:story:42");
        assert_eq!(section_field("intro"), "s:intro");
        assert_eq!(lock_field("intro"), "l:intro");
    }

    #[test]
    fn section_json_is_the_documented_shape() {
        let s = section("a", 7, r#"{"text":"hi","n":[1,2]}"#, "u\"1");
        let v = encode_section(&s).unwrap();
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            r#"{"v":7,"w":"u\"1","d":{"text":"hi","n":[1,2]}}"#
        );
        assert_eq!(decode_section("a", &v), Some(s));
        let l = lock("a", "ann", "c-1", 1_900_000_000_000);
        let v = encode_lock(&l);
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            r#"{"u":"ann","c":"c-1","e":1900000000000}"#
        );
        assert_eq!(decode_lock("a", &v), Some(l));
    }

    #[test]
    fn any_json_value_is_data_and_outer_whitespace_is_dropped() {
        for (data, kept) in [
            ("null", "null"),
            ("3.5", "3.5"),
            ("\"text\"", "\"text\""),
            ("[1, 2]", "[1, 2]"),
            (" \n{\"a\" : 1}\t ", "{\"a\" : 1}"),
            ("\"é\\u00e9\"", "\"é\\u00e9\""),
        ] {
            let v = encode_section(&section("x", 1, data, "w")).unwrap();
            let back = decode_section("x", &v).unwrap();
            assert_eq!(back.data, kept.as_bytes(), "{data:?}");
        }
    }

    #[test]
    fn data_that_is_not_one_json_value_is_refused() {
        for bad in [
            &b""[..],
            b" ",
            b"{",
            b"{} {}",
            b"1 2",
            b"nul",
            b"'x'",
            b"\"\xff\"",
            b"\xff",
            b"{\"a\":1}x",
        ] {
            let s = SectionRecord {
                id: "x".into(),
                version: 1,
                data: Bytes::copy_from_slice(bad),
                writer: "w".into(),
            };
            assert_eq!(encode_section(&s), Err(NotJson), "{bad:?}");
        }
    }

    #[test]
    fn malformed_values_are_none() {
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"[7,\"w\",{}]",
            b"{}",
            b"{\"v\":1,\"w\":\"u\"}",
            b"{\"v\":-1,\"w\":\"u\",\"d\":1}",
            b"{\"v\":1.5,\"w\":\"u\",\"d\":1}",
            b"{\"v\":\"1\",\"w\":\"u\",\"d\":1}",
            b"{\"v\":1,\"w\":5,\"d\":1}",
            b"{\"v\":1,\"w\":\"u\",\"d\":1} x",
            b"{\"v\":1,\"w\":\"\xff\",\"d\":1}",
        ] {
            assert_eq!(
                decode_section("x", bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let extra = br#"{"v":1,"w":"u","d":true,"later":"field"}"#;
        assert_eq!(decode_section("x", extra).unwrap().data, &b"true"[..]);
        for bad in [
            &b"{}"[..],
            b"{\"u\":\"a\",\"c\":\"b\"}",
            b"{\"u\":\"a\",\"c\":\"b\",\"e\":-5}",
            b"{\"u\":1,\"c\":\"b\",\"e\":5}",
            b"[\"a\",\"b\",5]",
        ] {
            assert_eq!(
                decode_lock("x", bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_story_from_fields_skips_and_counts() {
        let s1 = encode_section(&section("b", 2, "[1]", "u1")).unwrap();
        let s2 = encode_section(&section("a", 1, "{}", "u2")).unwrap();
        let l1 = encode_lock(&lock("b", "u1", "c1", 5));
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"s:b", &s1),
            (b"s:a", &s2),
            (b"l:b", &l1),
            (b"s:bad", b"not json"),
            (b"l:bad", b"{\"u\":1}"),
            (b"s:", &s1),
            (b"l:\xff", &l1),
            (b"x:future", b"anything"),
            (b"meta", b"{}"),
        ];
        let d = decode_story("story:1".into(), fields, false);
        assert_eq!(d.malformed, 4);
        assert_eq!(d.ignored, 2);
        let ids: Vec<&str> = d.record.sections.iter().map(|s| &*s.id).collect();
        assert_eq!(ids, ["a", "b"], "sorted by id");
        assert_eq!(d.record.sections[1].version, 2);
        assert_eq!(d.record.locks, vec![lock("b", "u1", "c1", 5)]);
        assert!(!d.record.active);
        assert_eq!(&*d.record.channel, "story:1");
    }

    /// Seeded random input: random bytes and mutated valid values never
    /// panic, and a value accepted as a section agrees with an independent
    /// `serde_json::Value` reading of the same text.
    #[test]
    fn random_garbage_never_panics_and_agrees_with_serde_json() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0x0570_21e5);
        let valid_s = br#"{"v":12,"w":"ann","d":{"t":"x","n":[1,2,{"k":null}]}}"#;
        let valid_l = br#"{"u":"ann","c":"c-9","e":1900000000000}"#;
        let alphabet = b"{}[]\":,.0123456789-eE nultrfavwdce\\\x00\xff";
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..30_000 {
            let base: &[u8] = if round % 2 == 0 { valid_s } else { valid_l };
            let input: Vec<u8> = if round % 5 == 0 {
                let n = rng.random_range(0..64);
                (0..n).map(|_| rng.random()).collect()
            } else {
                let mut b = base.to_vec();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..b.len());
                    match rng.random_range(0..3) {
                        0 => b[i] = alphabet[rng.random_range(0..alphabet.len())],
                        1 => b.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
                        _ => {
                            b.remove(i);
                        }
                    }
                }
                b
            };
            match decode_section("sec", &input) {
                Some(s) => {
                    accepted += 1;
                    let v: serde_json::Value = serde_json::from_slice(&input)
                        .unwrap_or_else(|e| panic!("accepted but not JSON ({e}): {input:?}"));
                    assert_eq!(Some(s.version), v["v"].as_u64(), "{v}");
                    assert_eq!(Some(&*s.writer), v["w"].as_str(), "{v}");
                    let d: serde_json::Value = serde_json::from_slice(&s.data).unwrap();
                    assert_eq!(d, v["d"], "{v}");
                    // What was read writes back to an equal section.
                    let again = encode_section(&s).unwrap();
                    assert_eq!(decode_section("sec", &again), Some(s));
                }
                None => refused += 1,
            }
            if let Some(l) = decode_lock("sec", &input) {
                let v: serde_json::Value = serde_json::from_slice(&input).unwrap();
                assert_eq!(Some(l.expires_ms), v["e"].as_u64(), "{v}");
                assert_eq!(Some(&*l.user), v["u"].as_str(), "{v}");
                assert_eq!(Some(&*l.client), v["c"].as_str(), "{v}");
            }
            // Random field names through the story decoder.
            let name: Vec<u8> = match rng.random_range(0..3) {
                0 => b"s:"
                    .iter()
                    .copied()
                    .chain(input.iter().take(4).copied())
                    .collect(),
                1 => b"l:"
                    .iter()
                    .copied()
                    .chain(input.iter().take(4).copied())
                    .collect(),
                _ => input.iter().take(6).copied().collect(),
            };
            let d = decode_story("c".into(), [(&name[..], &input[..])], true);
            let read = d.record.sections.len() + d.record.locks.len();
            assert_eq!(read + d.malformed as usize + d.ignored as usize, 1);
            // Random data never makes the encoder panic either.
            let _ = encode_section(&SectionRecord {
                id: "r".into(),
                version: 1,
                data: Bytes::from(input),
                writer: "w".into(),
            });
        }
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }
}
