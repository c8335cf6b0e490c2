//! The SSE fallback's wire (docs/PROTOCOL.md, "SSE fallback"), with no I/O: what a
//! server frame becomes on an event stream, and the session ids that let
//! a `POST` find its stream.
//!
//! A stream connection's output is the same shared, pre-encoded WebSocket
//! frames every connection gets; [`event_from_frame`] rewrites one into
//! the HTTP chunk of its SSE event at the moment it is queued:
//!
//! - a text frame (one or more `\n`-separated JSON objects) is one event
//!   with one `data:` line per object, which `EventSource` joins with
//!   `\n` back into the frame's text;
//! - a ping is a comment line (`: ping`), which keeps proxies and the
//!   client's dead-link timer content;
//! - a close is `event: close` with `{"code": N, "reason": "…"}`, and the
//!   stream ends after it;
//! - pongs, binary frames and compressed frames have no SSE form (stream
//!   connections never negotiate the binary form nor deflate): none.

use std::fmt::Write as _;

use base64::Engine as _;

/// What [`event_from_frame`] made of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A message event (a text frame).
    Message,
    /// A keepalive comment (a ping).
    Ping,
    /// The close event: the stream ends after it.
    Close,
    /// Nothing: the frame has no SSE form.
    Skipped,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header says.
    Truncated,
    /// Masked, fragmented or with reserved bits: not a frame this server
    /// writes to a stream connection.
    Unexpected,
}

/// Appends the HTTP chunk of `frame`'s SSE event to `out` (nothing for
/// [`Event::Skipped`]). `frame` is one complete server frame.
pub fn event_from_frame(frame: &[u8], out: &mut Vec<u8>) -> Result<Event, FrameError> {
    let (opcode, payload) = parse_frame(frame)?;
    let mut body = Vec::with_capacity(payload.len() + 16);
    let event = match opcode {
        0x1 => {
            for line in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                body.extend_from_slice(b"data: ");
                // A JSON text never holds a raw CR; strip one anyway so a
                // line cannot end early on the client.
                body.extend(line.iter().copied().filter(|&b| b != b'\r'));
                body.push(b'\n');
            }
            if body.is_empty() {
                return Ok(Event::Skipped);
            }
            body.push(b'\n');
            Event::Message
        }
        0x9 => {
            body.extend_from_slice(b": ping\n\n");
            Event::Ping
        }
        0x8 => {
            let (code, reason) = match payload {
                [a, b, rest @ ..] => (
                    u16::from_be_bytes([*a, *b]),
                    String::from_utf8_lossy(rest).into_owned(),
                ),
                _ => (1005, String::new()),
            };
            let data = serde_json::json!({"code": code, "reason": reason});
            body.extend_from_slice(b"event: close\ndata: ");
            body.extend_from_slice(data.to_string().as_bytes());
            body.extend_from_slice(b"\n\n");
            Event::Close
        }
        _ => return Ok(Event::Skipped),
    };
    chunk(&body, out);
    Ok(event)
}

/// Appends `body` as one HTTP/1.1 chunk.
pub fn chunk(body: &[u8], out: &mut Vec<u8>) {
    let mut size = String::with_capacity(8);
    let _ = write!(size, "{:x}\r\n", body.len());
    out.reserve(size.len() + body.len() + 2);
    out.extend_from_slice(size.as_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// The chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Opcode and payload of one complete, final, unmasked frame with no
/// reserved bits.
fn parse_frame(frame: &[u8]) -> Result<(u8, &[u8]), FrameError> {
    let [b0, b1, rest @ ..] = frame else {
        return Err(FrameError::Truncated);
    };
    if b0 & 0x80 == 0 || b0 & 0x70 != 0 || b1 & 0x80 != 0 {
        return Err(FrameError::Unexpected);
    }
    let (len, rest) = match b1 & 0x7f {
        126 => match rest {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) as usize, rest),
            _ => return Err(FrameError::Truncated),
        },
        127 => match rest.split_first_chunk::<8>() {
            Some((n, rest)) => (
                usize::try_from(u64::from_be_bytes(*n)).map_err(|_| FrameError::Truncated)?,
                rest,
            ),
            None => return Err(FrameError::Truncated),
        },
        n => (n as usize, rest),
    };
    let payload = rest.get(..len).ok_or(FrameError::Truncated)?;
    Ok((b0 & 0x0f, payload))
}

/// A stream session's id: where it lives (node-local: shard, slot,
/// generation) and a random secret that is the capability to post to it.
/// Its text form names the node too ([`SessionId::encode`]), so a post
/// that reaches another node of the cluster can be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId {
    /// The shard that holds the stream.
    pub shard: u16,
    /// The connection's slot there.
    pub idx: u32,
    /// The slot's generation (a reused slot is another session).
    pub generation: u32,
    /// 128 random bits.
    pub secret: [u8; 16],
}

impl SessionId {
    /// `<node>.<shard>.<slot>.<generation>.<secret, base64url>`: URL-safe,
    /// for a path segment (node names are `A-Z a-z 0-9 _ -`).
    pub fn encode(&self, node: &str) -> String {
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.secret);
        format!(
            "{node}.{}.{}.{}.{secret}",
            self.shard, self.idx, self.generation
        )
    }

    /// Reads an id made by [`SessionId::encode`]: the node's name and the
    /// id; `None` for anything else.
    pub fn parse(s: &str) -> Option<(&str, SessionId)> {
        let mut parts = s.split('.');
        let node = parts.next()?;
        if !crate::engine::cluster::subject::is_valid_name(node) {
            return None;
        }
        let shard = parts.next()?.parse().ok()?;
        let idx = parts.next()?.parse().ok()?;
        let generation = parts.next()?.parse().ok()?;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next()?)
            .ok()?
            .try_into()
            .ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some((
            node,
            SessionId {
                shard,
                idx,
                generation,
                secret,
            },
        ))
    }

    /// Whether `other` names this session, the secret compared in
    /// constant time.
    pub fn matches(&self, other: &SessionId) -> bool {
        let diff = self
            .secret
            .iter()
            .zip(&other.secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (self.shard, self.idx, self.generation) == (other.shard, other.idx, other.generation)
            && diff == 0
    }
}

/// What became of a post passed to the stream's shard (on this node or
/// another): the answer travels back to the shard that holds the post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostAnswer {
    /// The stream took the commands (204).
    Taken,
    /// No such stream, or it has ended (404).
    Unknown,
    /// The stream's shard could not take it now (503, retry).
    Busy,
}

impl PostAnswer {
    /// Its byte in a cluster frame.
    pub const fn code(self) -> u8 {
        match self {
            PostAnswer::Taken => 0,
            PostAnswer::Unknown => 1,
            PostAnswer::Busy => 2,
        }
    }

    /// The answer a cluster frame's byte names; `None` for any other byte.
    pub const fn from_code(b: u8) -> Option<PostAnswer> {
        match b {
            0 => Some(PostAnswer::Taken),
            1 => Some(PostAnswer::Unknown),
            2 => Some(PostAnswer::Busy),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ws::frame::{Opcode, close_frame, frame_bytes};

    /// The event text inside one chunk.
    fn unchunk(out: &[u8]) -> String {
        let text = std::str::from_utf8(out).unwrap();
        let (size, rest) = text.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size, 16).unwrap();
        assert_eq!(&rest[n..], "\r\n", "one chunk, ended by CRLF");
        rest[..n].to_owned()
    }

    #[test]
    fn a_batched_text_frame_is_one_event_with_a_data_line_per_object() {
        let frame = frame_bytes(Opcode::Text, b"{\"id\":1}\n{\"push\":{}}");
        let mut out = Vec::new();
        assert_eq!(event_from_frame(&frame, &mut out), Ok(Event::Message));
        assert_eq!(unchunk(&out), "data: {\"id\":1}\ndata: {\"push\":{}}\n\n");
    }

    #[test]
    fn long_frames_keep_their_payload_whole() {
        for len in [125, 126, 65_535, 65_536, 200_000] {
            let payload = format!("{{\"d\":\"{}\"}}", "x".repeat(len));
            let frame = frame_bytes(Opcode::Text, payload.as_bytes());
            let mut out = Vec::new();
            event_from_frame(&frame, &mut out).unwrap();
            assert_eq!(unchunk(&out), format!("data: {payload}\n\n"), "{len}");
        }
    }

    #[test]
    fn pings_close_and_the_rest() {
        let mut out = Vec::new();
        assert_eq!(
            event_from_frame(&frame_bytes(Opcode::Ping, b""), &mut out),
            Ok(Event::Ping)
        );
        assert_eq!(unchunk(&out), ": ping\n\n");
        out.clear();
        assert_eq!(
            event_from_frame(&close_frame(3504, "too many \"x\""), &mut out),
            Ok(Event::Close)
        );
        assert_eq!(
            unchunk(&out),
            "event: close\ndata: {\"code\":3504,\"reason\":\"too many \\\"x\\\"\"}\n\n"
        );
        out.clear();
        for op in [Opcode::Pong, Opcode::Binary] {
            assert_eq!(
                event_from_frame(&frame_bytes(op, b"x"), &mut out),
                Ok(Event::Skipped)
            );
        }
        assert!(out.is_empty());
        // Compressed (RSV1), masked, fragmented, cut: refused.
        let mut rsv1 = frame_bytes(Opcode::Text, b"{}").to_vec();
        rsv1[0] |= 0x40;
        assert_eq!(
            event_from_frame(&rsv1, &mut out),
            Err(FrameError::Unexpected)
        );
        let mut unfinished = frame_bytes(Opcode::Text, b"{}").to_vec();
        unfinished[0] &= 0x7f;
        assert_eq!(
            event_from_frame(&unfinished, &mut out),
            Err(FrameError::Unexpected)
        );
        let cut = frame_bytes(Opcode::Text, b"{\"a\":1}");
        assert_eq!(
            event_from_frame(&cut[..cut.len() - 1], &mut out),
            Err(FrameError::Truncated)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn session_ids_round_trip_and_need_their_secret() {
        let id = SessionId {
            shard: 3,
            idx: 70_000,
            generation: 9,
            secret: *b"0123456789abcdef",
        };
        let s = id.encode("edge-1");
        assert_eq!(&s[..9], "edge-1.3.");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{s}"
        );
        assert_eq!(SessionId::parse(&s), Some(("edge-1", id)));
        assert!(id.matches(&SessionId::parse(&s).unwrap().1));
        let mut guess = id;
        guess.secret[15] ^= 1;
        assert!(!id.matches(&guess));
        let mut other_gen = id;
        other_gen.generation += 1;
        assert!(!id.matches(&other_gen));
        for bad in [
            "",
            "n.3.7.9",
            "n.3.7.9.MDEy.x",
            "n.a.7.9.MDEyMzQ1Njc4OWFiY2RlZg",
            "n.3.7.9.short",
            // The node-less form of earlier versions.
            "3.7.9.MDEyMzQ1Njc4OWFiY2RlZg.x",
            "n!.3.7.9.MDEyMzQ1Njc4OWFiY2RlZg",
            ".3.7.9.MDEyMzQ1Njc4OWFiY2RlZg",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn post_answers_round_trip_through_their_byte() {
        for a in [PostAnswer::Taken, PostAnswer::Unknown, PostAnswer::Busy] {
            assert_eq!(PostAnswer::from_code(a.code()), Some(a));
        }
        assert_eq!(PostAnswer::from_code(3), None);
    }
}
