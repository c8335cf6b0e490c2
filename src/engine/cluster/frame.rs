//! The binary messages nodes send each other over NATS (heartbeats are in
//! [`super::membership`]).
//!
//! | kind   | frame              | subject        | from → to                 |
//! |--------|--------------------|----------------|---------------------------|
//! | `0x10` | [`PublishRequest`] | `home.<name>`  | a node → a channel's home |
//! | `0x11` | [`PublishAnswer`]  | request's reply| home → the asking node    |
//! | `0x12` | [`Delivery`]       | `ch.<hex>`     | home → interested nodes   |
//! | `0x13` | [`SyncRequest`]    | `home.<name>`  | a node → a channel's home |
//! | `0x14` | [`SyncMarker`]     | `ch.<hex>`     | home → interested nodes   |
//!
//! A node that gains local subscribers of a channel subscribes to its
//! subject, then sends the home a [`SyncRequest`]; the home answers with a
//! [`SyncMarker`] on the channel subject, in order with the deliveries, so
//! the node learns the exact position its subscribers start after (the
//! cluster's form of `InterestAck`).
//!
//! Layout: version, kind, then the kind's fields (big-endian integers, a
//! channel as a length byte and its bytes). A frame with a payload ends
//! with it, so the payload needs no length and decodes as a slice of the
//! received buffer without copying. Every length is checked against what
//! is left and fixed-layout frames refuse trailing bytes; any input gives
//! a frame or a [`DecodeError`], never a panic. The `is_json` flag is the
//! home's verdict (it checked the payload once) and is not re-checked.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{DecodeError, PROTOCOL_VERSION, Reader, channel_len, put_channel};
use crate::engine::hub::Position;
use crate::engine::wire::MAX_IDEMPOTENCY_KEY;
use crate::engine::wire::publication::{PubData, Publication};

const KIND_PUBLISH_REQUEST: u8 = 0x10;
const KIND_PUBLISH_ANSWER: u8 = 0x11;
const KIND_DELIVERY: u8 = 0x12;
const KIND_SYNC_REQUEST: u8 = 0x13;
const KIND_SYNC_MARKER: u8 = 0x14;

/// Flag: the payload is JSON text.
const FLAG_JSON: u8 = 0x01;
/// Flag (publish requests): an idempotency key follows the channel.
const FLAG_KEY: u8 = 0x02;

/// A node asks a channel's home to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Matches the answer to the request on the asking node.
    pub request_id: u64,
    /// Channel name.
    pub channel: Arc<str>,
    /// Drop the publication if this key was seen on the channel within the
    /// idempotency window (1–256 bytes).
    pub idempotency_key: Option<Box<str>>,
    /// The payload and whether it is JSON.
    pub data: PubData,
}

/// The home's answer to a [`PublishRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAnswer {
    /// The request's id.
    pub request_id: u64,
    /// The offset assigned (or the original one, for a repeated
    /// idempotency key), or an error code of `crate::engine::codes`.
    pub result: Result<u64, u16>,
}

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
}

/// A node that gained subscribers of a channel asks its home where the
/// channel stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// Channel name.
    pub channel: Arc<str>,
    /// Chosen by the asking node; the marker carries it back.
    pub nonce: u64,
}

/// The home's answer to a [`SyncRequest`], published on the channel's
/// subject: every delivery after it follows `position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMarker {
    /// Channel name.
    pub channel: Arc<str>,
    /// The channel's position when the home answered.
    pub position: Position,
    /// The request's nonce.
    pub nonce: u64,
}

/// Any frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// See [`PublishRequest`].
    PublishRequest(PublishRequest),
    /// See [`PublishAnswer`].
    PublishAnswer(PublishAnswer),
    /// See [`Delivery`].
    Delivery(Delivery),
    /// See [`SyncRequest`].
    SyncRequest(SyncRequest),
    /// See [`SyncMarker`].
    SyncMarker(SyncMarker),
}

fn json_flag(data: &PubData) -> u8 {
    if data.is_json { FLAG_JSON } else { 0 }
}

impl Frame {
    /// A short name for metric labels.
    pub const fn label(&self) -> &'static str {
        match self {
            Frame::PublishRequest(_) => "publish_request",
            Frame::PublishAnswer(_) => "publish_answer",
            Frame::Delivery(_) => "delivery",
            Frame::SyncRequest(_) => "sync_request",
            Frame::SyncMarker(_) => "sync_marker",
        }
    }

    /// Bytes [`Frame::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Frame::PublishRequest(p) => {
                8 + 1
                    + channel_len(&p.channel)
                    + p.idempotency_key
                        .as_ref()
                        .map_or(0, |k| 2 + k.len().min(u16::MAX as usize))
                    + p.data.bytes.len()
            }
            Frame::PublishAnswer(a) => 8 + 1 + if a.result.is_ok() { 8 } else { 2 },
            Frame::Delivery(d) => {
                8 + 8 + 1 + channel_len(&d.channel) + d.publication.data.bytes.len()
            }
            Frame::SyncRequest(s) => 8 + channel_len(&s.channel),
            Frame::SyncMarker(m) => 8 + 8 + 8 + channel_len(&m.channel),
        }
    }

    /// The frame's bytes, in one allocation of the exact size.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_u8(PROTOCOL_VERSION);
        match self {
            Frame::PublishRequest(p) => {
                out.put_u8(KIND_PUBLISH_REQUEST);
                out.put_u64(p.request_id);
                let key = if p.idempotency_key.is_some() {
                    FLAG_KEY
                } else {
                    0
                };
                out.put_u8(json_flag(&p.data) | key);
                put_channel(&mut out, &p.channel);
                if let Some(k) = &p.idempotency_key {
                    let k = k.as_bytes();
                    let n = k.len().min(u16::MAX as usize);
                    out.put_u16(n as u16);
                    out.put_slice(&k[..n]);
                }
                out.put_slice(&p.data.bytes);
            }
            Frame::PublishAnswer(a) => {
                out.put_u8(KIND_PUBLISH_ANSWER);
                out.put_u64(a.request_id);
                match a.result {
                    Ok(offset) => {
                        out.put_u8(0);
                        out.put_u64(offset);
                    }
                    Err(code) => {
                        out.put_u8(1);
                        out.put_u16(code);
                    }
                }
            }
            Frame::Delivery(d) => {
                out.put_u8(KIND_DELIVERY);
                out.put_u64(d.epoch);
                out.put_u64(d.publication.offset);
                out.put_u8(json_flag(&d.publication.data));
                put_channel(&mut out, &d.channel);
                out.put_slice(&d.publication.data.bytes);
            }
            Frame::SyncRequest(s) => {
                out.put_u8(KIND_SYNC_REQUEST);
                out.put_u64(s.nonce);
                put_channel(&mut out, &s.channel);
            }
            Frame::SyncMarker(m) => {
                out.put_u8(KIND_SYNC_MARKER);
                out.put_u64(m.position.epoch);
                out.put_u64(m.position.offset);
                out.put_u64(m.nonce);
                put_channel(&mut out, &m.channel);
            }
        }
        out.freeze()
    }

    /// Decodes a frame received in `buf`; a payload is a slice of `buf`.
    pub fn decode(buf: &Bytes) -> Result<Frame, DecodeError> {
        let (kind, mut r) = Reader::open(buf)?;
        match kind {
            KIND_PUBLISH_REQUEST => {
                let request_id = r.u64()?;
                let flags = flags(r.u8()?, FLAG_JSON | FLAG_KEY)?;
                let channel = r.channel()?;
                let idempotency_key = if flags & FLAG_KEY != 0 {
                    let n = r.u16()? as usize;
                    let raw = r.bytes(n)?;
                    match std::str::from_utf8(raw) {
                        Ok(k) if (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) => Some(k.into()),
                        _ => return Err(DecodeError::IdempotencyKey),
                    }
                } else {
                    None
                };
                Ok(Frame::PublishRequest(PublishRequest {
                    request_id,
                    channel,
                    idempotency_key,
                    data: PubData {
                        bytes: buf.slice(r.position()..),
                        is_json: flags & FLAG_JSON != 0,
                    },
                }))
            }
            KIND_PUBLISH_ANSWER => {
                let request_id = r.u64()?;
                let result = match r.u8()? {
                    0 => Ok(r.u64()?),
                    1 => Err(r.u16()?),
                    other => return Err(DecodeError::Flags(other)),
                };
                r.finish()?;
                Ok(Frame::PublishAnswer(PublishAnswer { request_id, result }))
            }
            KIND_DELIVERY => {
                let epoch = r.u64()?;
                let offset = r.u64()?;
                let flags = flags(r.u8()?, FLAG_JSON)?;
                let channel = r.channel()?;
                Ok(Frame::Delivery(Delivery {
                    channel,
                    epoch,
                    publication: Publication {
                        offset,
                        data: PubData {
                            bytes: buf.slice(r.position()..),
                            is_json: flags & FLAG_JSON != 0,
                        },
                    },
                }))
            }
            KIND_SYNC_REQUEST => {
                let nonce = r.u64()?;
                let channel = r.channel()?;
                r.finish()?;
                Ok(Frame::SyncRequest(SyncRequest { channel, nonce }))
            }
            KIND_SYNC_MARKER => {
                let epoch = r.u64()?;
                let offset = r.u64()?;
                let nonce = r.u64()?;
                let channel = r.channel()?;
                r.finish()?;
                Ok(Frame::SyncMarker(SyncMarker {
                    channel,
                    position: Position { epoch, offset },
                    nonce,
                }))
            }
            other => Err(DecodeError::Kind(other)),
        }
    }
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
