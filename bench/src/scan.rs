//! Cheap scanning of server JSON objects: no full deserialization, just
//! `memmem` searches for the few keys the generator needs. Relies on the
//! shapes both targets emit (`{"push":{"channel":..,"pub":{"offset":K,"data":..}}}`,
//! `{"id":N,"<method>":{..}}`), not on general JSON.

use std::sync::LazyLock;

use memchr::memmem::Finder;

static PUB_OFFSET: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"pub\":{\"offset\":"));
static DATA_T: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":{\"t\":"));
static OFFSET: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"offset\":"));
static CODE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"code\":"));

/// One server object, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMsg {
    /// A `pub` push: its offset and the publisher's timestamp (`"t"` as the
    /// first key of `data`), if present.
    Pub {
        /// Channel offset.
        offset: u64,
        /// `CLOCK_MONOTONIC` ns stamped by the publisher.
        t: Option<u64>,
    },
    /// A `disconnect` push with its close code.
    Disconnect {
        /// Close code (0 if not found).
        code: u64,
    },
    /// Any other push.
    OtherPush,
    /// A successful reply.
    Reply {
        /// Command id.
        id: u64,
        /// The `"offset"` of `subscribe`/`publish` replies.
        offset: Option<u64>,
    },
    /// An error reply.
    Error {
        /// Command id.
        id: u64,
        /// Error code.
        code: u64,
    },
    /// Not recognised.
    Unknown,
}

/// Parses the unsigned decimal at the start of `s` (at most 19 digits, so
/// it cannot overflow); returns the value and the number of digits.
pub fn parse_u64_len(s: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    while n < s.len() && n < 19 {
        let d = s[n].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        v = v * 10 + u64::from(d);
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// Parses the unsigned decimal at the start of `s` (at most 19 digits).
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    parse_u64_len(s).map(|(v, _)| v)
}

fn after<'a>(hay: &'a [u8], f: &Finder<'_>) -> Option<&'a [u8]> {
    f.find(hay).map(|i| &hay[i + f.needle().len()..])
}

/// The exact shape both targets emit for a `pub` push:
/// `{"push":{"channel":"<name without escapes>","pub":{"offset":K,"data":{"t":T...`.
/// `None` if `obj` does not have it (the caller then searches).
fn pub_fast_path(obj: &[u8]) -> Option<ServerMsg> {
    let rest = obj.strip_prefix(b"{\"push\":{\"channel\":\"")?;
    let q = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[q] != b'"' {
        return None;
    }
    let rest = rest[q + 1..].strip_prefix(b",\"pub\":{\"offset\":")?;
    let (offset, digits) = parse_u64_len(rest)?;
    let t = rest[digits..]
        .strip_prefix(b",\"data\":{\"t\":")
        .and_then(parse_u64);
    Some(ServerMsg::Pub { offset, t })
}

/// Classifies one JSON object (one `\n`-separated line of a text frame).
pub fn classify(obj: &[u8]) -> ServerMsg {
    if let Some(m) = pub_fast_path(obj) {
        return m;
    }
    if let Some(rest) = obj.strip_prefix(b"{\"push\":") {
        if let Some(p) = after(rest, &PUB_OFFSET) {
            let Some(offset) = parse_u64(p) else {
                return ServerMsg::Unknown;
            };
            let t = after(p, &DATA_T).and_then(parse_u64);
            return ServerMsg::Pub { offset, t };
        }
        if rest.starts_with(b"{\"disconnect\":") {
            let code = after(rest, &CODE).and_then(parse_u64).unwrap_or(0);
            return ServerMsg::Disconnect { code };
        }
        return ServerMsg::OtherPush;
    }
    if let Some(rest) = obj.strip_prefix(b"{\"id\":") {
        let Some((id, digits)) = parse_u64_len(rest) else {
            return ServerMsg::Unknown;
        };
        let rest = &rest[digits..];
        if rest.starts_with(b",\"error\":") {
            let code = after(rest, &CODE).and_then(parse_u64).unwrap_or(0);
            return ServerMsg::Error { id, code };
        }
        let offset = after(rest, &OFFSET).and_then(parse_u64);
        return ServerMsg::Reply { id, offset };
    }
    ServerMsg::Unknown
}

/// Calls `f` for each non-empty `\n`-separated object of a text payload.
pub fn for_each_object(payload: &[u8], mut f: impl FnMut(&[u8])) {
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', payload) {
        if nl > start {
            f(&payload[start..nl]);
        }
        start = nl + 1;
    }
    if start < payload.len() {
        f(&payload[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes() {
        assert_eq!(
            classify(br#"{"push":{"channel":"bench","pub":{"offset":42,"data":{"t":123456789,"p":"xx"}}}}"#),
            ServerMsg::Pub { offset: 42, t: Some(123_456_789) }
        );
        assert_eq!(
            classify(br#"{"push":{"channel":"c","pub":{"offset":7,"data":{"x":1}}}}"#),
            ServerMsg::Pub { offset: 7, t: None }
        );
        // Escaped channel name and other key orders take the slow path.
        assert_eq!(
            classify(br#"{"push":{"channel":"a\"b","pub":{"offset":8,"data":{"t":5}}}}"#),
            ServerMsg::Pub {
                offset: 8,
                t: Some(5)
            }
        );
        assert_eq!(
            classify(br#"{"push":{"pub":{"offset":9,"data":{"t":6}},"channel":"c"}}"#),
            ServerMsg::Pub {
                offset: 9,
                t: Some(6)
            }
        );
        assert_eq!(
            classify(br#"{"push":{"disconnect":{"code":3002,"reason":"slow","reconnect":true}}}"#),
            ServerMsg::Disconnect { code: 3002 }
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            classify(br#"{"id":3,"publish":{"offset":9}}"#),
            ServerMsg::Reply {
                id: 3,
                offset: Some(9)
            }
        );
        assert_eq!(
            classify(br#"{"id":1,"connect":{"client":"a","node":"n","ping":25}}"#),
            ServerMsg::Reply {
                id: 1,
                offset: None
            }
        );
        assert_eq!(
            classify(br#"{"id":2,"subscribe":{"epoch":"00ab","offset":0}}"#),
            ServerMsg::Reply {
                id: 2,
                offset: Some(0)
            }
        );
        assert_eq!(
            classify(
                br#"{"id":5,"error":{"code":110,"message":"connect first","temporary":false}}"#
            ),
            ServerMsg::Error { id: 5, code: 110 }
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64_len(b"12345,"), Some((12345, 5)));
        assert_eq!(parse_u64_len(b"x"), None);
        assert_eq!(
            parse_u64(b"18446744073709551615"),
            Some(1_844_674_407_370_955_161)
        );
    }

    #[test]
    fn objects() {
        let mut v = Vec::new();
        for_each_object(b"{\"a\":1}\n{\"b\":2}\n", |o| v.push(o.to_vec()));
        assert_eq!(v, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
    }
}
