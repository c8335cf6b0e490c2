//! An SSE command post passed between nodes (docs/PROTOCOL.md, "SSE
//! fallback"): a POST names its stream's node in the session id; a node
//! that reads a post for another node's stream sends it there on
//! `home.<name>` as a [`PostFrame`], and the stream's shard answers with an
//! [`AnswerFrame`] on the sender's `home.<name>`, addressed to the shard
//! and connection that hold the post (which then answers the client).
//!
//! Layout (after the version and kind bytes, big-endian integers):
//!
//! | kind   | frame           | fields |
//! |--------|-----------------|--------|
//! | `0x30` | [`PostFrame`]   | sender's node name (length byte + bytes), post shard `u16`, post slot `u32`, post generation `u32`, stream shard `u16`, stream slot `u32`, stream generation `u32`, secret (16 bytes), body (the rest) |
//! | `0x31` | [`AnswerFrame`] | post shard `u16`, post slot `u32`, post generation `u32`, answer `u8` ([`PostAnswer::code`]) |
//!
//! Both decode from any bytes to a frame or a [`DecodeError`], never a
//! panic. The secret is checked by the stream's shard, in constant time,
//! exactly as for a post read on its own node.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{DecodeError, PROTOCOL_VERSION, Reader};
use super::subject::is_valid_name;
use crate::engine::sse::{PostAnswer, SessionId};
use crate::engine::subs::ConnRef;

/// Kind byte of a [`PostFrame`].
pub(super) const KIND_SSE_POST: u8 = 0x30;
/// Kind byte of an [`AnswerFrame`].
pub(super) const KIND_SSE_ANSWER: u8 = 0x31;

/// A post for a stream of the receiving node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostFrame {
    /// The node holding the post (where the answer goes).
    pub from_node: Arc<str>,
    /// The shard holding the post there.
    pub from_shard: u16,
    /// The post's connection on that shard.
    pub post: ConnRef,
    /// The stream the post names.
    pub target: SessionId,
    /// The commands (one or more JSON objects, `\n`-separated).
    pub body: Bytes,
}

/// The stream shard's answer to a [`PostFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerFrame {
    /// The shard holding the post.
    pub shard: u16,
    /// The post's connection there.
    pub post: ConnRef,
    /// What became of it.
    pub answer: PostAnswer,
}

impl PostFrame {
    /// The frame's bytes, in one allocation of the exact size.
    pub fn encode(&self) -> Bytes {
        let name = self.from_node.as_bytes();
        let mut out = BytesMut::with_capacity(2 + 1 + name.len() + 10 + 10 + 16 + self.body.len());
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(KIND_SSE_POST);
        // Node names are at most 64 bytes (validated at start).
        out.put_u8(name.len().min(u8::MAX as usize) as u8);
        out.put_slice(&name[..name.len().min(u8::MAX as usize)]);
        out.put_u16(self.from_shard);
        out.put_u32(self.post.idx);
        out.put_u32(self.post.generation);
        out.put_u16(self.target.shard);
        out.put_u32(self.target.idx);
        out.put_u32(self.target.generation);
        out.put_slice(&self.target.secret);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// The fields after the header; the body is the rest of `buf`.
    pub(super) fn decode(mut r: Reader<'_>, buf: &Bytes) -> Result<PostFrame, DecodeError> {
        let n = r.u8()? as usize;
        let from_node = match std::str::from_utf8(r.bytes(n)?) {
            Ok(s) if is_valid_name(s) => Arc::from(s),
            _ => return Err(DecodeError::NodeName),
        };
        let from_shard = r.u16()?;
        let post = ConnRef {
            idx: r.u32()?,
            generation: r.u32()?,
        };
        let shard = r.u16()?;
        let idx = r.u32()?;
        let generation = r.u32()?;
        let mut secret = [0u8; 16];
        secret.copy_from_slice(r.bytes(16)?);
        Ok(PostFrame {
            from_node,
            from_shard,
            post,
            target: SessionId {
                shard,
                idx,
                generation,
                secret,
            },
            body: buf.slice(r.position()..),
        })
    }
}

impl AnswerFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + 2 + 8 + 1);
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(KIND_SSE_ANSWER);
        out.put_u16(self.shard);
        out.put_u32(self.post.idx);
        out.put_u32(self.post.generation);
        out.put_u8(self.answer.code());
        out.freeze()
    }

    /// The fields after the header.
    pub(super) fn decode(mut r: Reader<'_>) -> Result<AnswerFrame, DecodeError> {
        let shard = r.u16()?;
        let post = ConnRef {
            idx: r.u32()?,
            generation: r.u32()?,
        };
        let answer = PostAnswer::from_code(r.u8()?).ok_or(DecodeError::Field)?;
        r.finish()?;
        Ok(AnswerFrame {
            shard,
            post,
            answer,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::engine::cluster::frame::{Incoming, decode_any};

    fn post() -> PostFrame {
        PostFrame {
            from_node: Arc::from("edge-2"),
            from_shard: 1,
            post: ConnRef {
                idx: 70_000,
                generation: 3,
            },
            target: SessionId {
                shard: 0,
                idx: 12,
                generation: 99,
                secret: *b"0123456789abcdef",
            },
            body: Bytes::from_static(b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"ping\":{}}"),
        }
    }

    #[test]
    fn posts_and_answers_round_trip_through_decode_any() {
        let p = post();
        let bytes = p.encode();
        match decode_any(&bytes, Instant::now()) {
            Ok(Incoming::SsePost(got)) => assert_eq!(got, p),
            other => panic!("{other:?}"),
        }
        let a = AnswerFrame {
            shard: 1,
            post: p.post,
            answer: PostAnswer::Busy,
        };
        match decode_any(&a.encode(), Instant::now()) {
            Ok(Incoming::SseAnswer(got)) => assert_eq!(got, a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_cut_and_a_bad_name_or_answer_is_an_error() {
        let bytes = post().encode();
        // Every cut inside the fixed fields is truncated (from the secret's
        // end on, the rest is a shorter body, which is a valid post).
        let fixed = 2 + 1 + 6 + 10 + 10 + 16;
        for n in 0..fixed {
            assert!(
                decode_any(&bytes.slice(..n), Instant::now()).is_err(),
                "cut at {n}"
            );
        }
        let mut bad = bytes.to_vec();
        bad[4] = b'!';
        assert!(matches!(
            decode_any(&Bytes::from(bad), Instant::now()),
            Err(DecodeError::NodeName)
        ));
        let mut answer = AnswerFrame {
            shard: 0,
            post: ConnRef {
                idx: 1,
                generation: 1,
            },
            answer: PostAnswer::Taken,
        }
        .encode()
        .to_vec();
        *answer.last_mut().unwrap() = 7;
        assert!(matches!(
            decode_any(&Bytes::from(answer.clone()), Instant::now()),
            Err(DecodeError::Field)
        ));
        answer.push(0);
        assert!(decode_any(&Bytes::from(answer), Instant::now()).is_err());
    }
}
