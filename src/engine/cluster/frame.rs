//! The binary messages nodes send each other over NATS (heartbeats are in
//! [`super::membership`]), and [`decode_any`], the one entry for what
//! arrives.
//!
//! | kind   | message                 | subject       | from → to                 |
//! |--------|-------------------------|---------------|---------------------------|
//! | `0x12` | [`Delivery`]            | `ch.<hex>`    | home → interested nodes   |
//! | `0x14` | [`SyncMarker`]          | `ch.<hex>`    | home → interested nodes   |
//! | `0x20` | [`Envelope`]            | `home.<name>` | a node → another node     |
//! | `0x30` | [`PostFrame`]           | `home.<name>` | a post's node → its stream's node |
//! | `0x31` | [`AnswerFrame`]         | `home.<name>` | the stream's node → the post's node |
//!
//! A publication for a channel's interested nodes is a [`Delivery`]: the
//! hot path, laid out by hand so that its payload is a slice of the
//! received buffer. Every other router message ([`Msg`]: a publish for the
//! home, its answer, interest, subscribe, presence, story commands, and a
//! delivery of presence events) goes in an [`Envelope`] to one node.
//!
//! A node that gains local subscribers of a channel subscribes to its
//! subject, then sends the home `Msg::Interest`; the home answers with a
//! [`SyncMarker`] on the channel subject, in order with the deliveries, so
//! the node learns the exact position its subscribers start after (the
//! cluster's form of `Msg::InterestAck`).
//!
//! Layout of the two frames: version, kind, then the kind's fields
//! (big-endian integers, a channel as a length byte and its bytes). A
//! delivery ends with its payload, so the payload needs no length. Every
//! length is checked against what is left and a sync marker refuses
//! trailing bytes; any input gives a message or a [`DecodeError`], never a
//! panic. The `is_json` flag is the home's verdict (it checked the payload
//! once) and is not re-checked.
//!
//! [`Msg`]: crate::engine::router::Msg
//! [`PostFrame`]: super::sse::PostFrame
//! [`AnswerFrame`]: super::sse::AnswerFrame

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{DecodeError, PROTOCOL_VERSION, Reader, channel_len, put_channel};
use super::envelope::{Envelope, KIND_ENVELOPE};
use super::sse::{AnswerFrame, KIND_SSE_ANSWER, KIND_SSE_POST, PostFrame};
use crate::engine::hub::Position;
use crate::engine::wire::publication::{PubData, Publication, PushBody, SharedPub};

const KIND_DELIVERY: u8 = 0x12;
const KIND_SYNC_MARKER: u8 = 0x14;

/// Flag: the payload is JSON text.
const FLAG_JSON: u8 = 0x01;
/// Flag: the publication is written before normal data already queued
/// (the namespace's priority, decided at the home).
const FLAG_HIGH: u8 = 0x02;

/// An accepted publication, published once by the home on the channel's
/// subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Channel name.
    pub channel: Arc<str>,
    /// The channel's epoch.
    pub epoch: u64,
    /// The publication: its offset and payload.
    pub publication: Publication,
    /// Written before normal data already queued for a connection.
    pub high_priority: bool,
}

/// The home's answer to a node's `Msg::Interest`, published on the
/// channel's subject: every delivery after it follows `position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMarker {
    /// Channel name.
    pub channel: Arc<str>,
    /// The channel's position when the home answered.
    pub position: Position,
    /// Chosen by the asking node; the marker carries it back.
    pub nonce: u64,
}

/// What arrived from another node, by its kind byte.
#[derive(Debug)]
pub enum Incoming {
    /// See [`Delivery`].
    Delivery(Delivery),
    /// See [`SyncMarker`].
    SyncMarker(SyncMarker),
    /// See [`Envelope`].
    Envelope(Envelope),
    /// See [`PostFrame`].
    SsePost(PostFrame),
    /// See [`AnswerFrame`].
    SseAnswer(AnswerFrame),
}

impl Incoming {
    /// A short name for metric labels.
    pub const fn label(&self) -> &'static str {
        match self {
            Incoming::Delivery(_) => "delivery",
            Incoming::SyncMarker(_) => "sync_marker",
            Incoming::Envelope(_) => "envelope",
            Incoming::SsePost(_) => "sse_post",
            Incoming::SseAnswer(_) => "sse_answer",
        }
    }
}

/// Decodes whatever another node sent: a [`Delivery`] (its payload a slice
/// of `buf`), a [`SyncMarker`] or an [`Envelope`] (a `Msg::Deliver` in it
/// accepted at `now`).
pub fn decode_any(buf: &Bytes, now: Instant) -> Result<Incoming, DecodeError> {
    let (kind, r) = Reader::open(buf)?;
    match kind {
        KIND_DELIVERY => Delivery::decode(r, buf).map(Incoming::Delivery),
        KIND_SYNC_MARKER => SyncMarker::decode(r).map(Incoming::SyncMarker),
        KIND_ENVELOPE => Envelope::decode(buf, now).map(Incoming::Envelope),
        KIND_SSE_POST => PostFrame::decode(r, buf).map(Incoming::SsePost),
        KIND_SSE_ANSWER => AnswerFrame::decode(r).map(Incoming::SseAnswer),
        other => Err(DecodeError::Kind(other)),
    }
}

impl Delivery {
    /// The delivery of a shared publication at the channel's `epoch`
    /// (a publication does not carry its epoch); `None` for presence
    /// events, which go to each node in an [`Envelope`].
    pub fn from_shared(p: &SharedPub, epoch: u64) -> Option<Delivery> {
        match &p.body {
            PushBody::Pub(publication) => Some(Delivery {
                channel: Arc::clone(&p.channel),
                epoch,
                publication: publication.clone(),
                high_priority: p.high_priority,
            }),
            PushBody::Presence(_) => None,
        }
    }

    /// The publication as this node's shards share it, accepted at `now`
    /// (when it reached this node), not yet encoded in any form.
    pub fn into_shared(self, now: Instant) -> SharedPub {
        SharedPub::new(self.channel, self.publication, self.high_priority, now)
    }

    /// Bytes [`Delivery::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        2 + 8 + 8 + 1 + channel_len(&self.channel) + self.publication.data.bytes.len()
    }

    /// The frame's bytes, in one allocation of the exact size.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(KIND_DELIVERY);
        out.put_u64(self.epoch);
        out.put_u64(self.publication.offset);
        let high = if self.high_priority { FLAG_HIGH } else { 0 };
        out.put_u8(json_flag(&self.publication.data) | high);
        put_channel(&mut out, &self.channel);
        out.put_slice(&self.publication.data.bytes);
        out.freeze()
    }

    /// The fields after the header; the payload is the rest of `buf`.
    fn decode(mut r: Reader<'_>, buf: &Bytes) -> Result<Delivery, DecodeError> {
        let epoch = r.u64()?;
        let offset = r.u64()?;
        let flags = flags(r.u8()?, FLAG_JSON | FLAG_HIGH)?;
        let channel = r.channel()?;
        Ok(Delivery {
            channel,
            epoch,
            publication: Publication {
                offset,
                data: PubData {
                    bytes: buf.slice(r.position()..),
                    is_json: flags & FLAG_JSON != 0,
                },
            },
            high_priority: flags & FLAG_HIGH != 0,
        })
    }
}

impl SyncMarker {
    /// Bytes [`SyncMarker::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        2 + 8 + 8 + 8 + channel_len(&self.channel)
    }

    /// The frame's bytes, in one allocation of the exact size.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(KIND_SYNC_MARKER);
        out.put_u64(self.position.epoch);
        out.put_u64(self.position.offset);
        out.put_u64(self.nonce);
        put_channel(&mut out, &self.channel);
        out.freeze()
    }

    /// The fields after the header.
    fn decode(mut r: Reader<'_>) -> Result<SyncMarker, DecodeError> {
        let epoch = r.u64()?;
        let offset = r.u64()?;
        let nonce = r.u64()?;
        let channel = r.channel()?;
        r.finish()?;
        Ok(SyncMarker {
            channel,
            position: Position { epoch, offset },
            nonce,
        })
    }
}

fn json_flag(data: &PubData) -> u8 {
    if data.is_json { FLAG_JSON } else { 0 }
}

/// `b` if it sets no bit outside `allowed`.
fn flags(b: u8, allowed: u8) -> Result<u8, DecodeError> {
    if b & !allowed == 0 {
        Ok(b)
    } else {
        Err(DecodeError::Flags(b))
    }
}

#[cfg(test)]
mod tests;
