//! A router message ([`Msg`]) on its way between nodes: the [`Envelope`].
//!
//! A node that is not a channel's home forwards the channel's router
//! messages to the home node (`home.<name>`), and the home's answers come
//! back the same way. Every [`Msg`] variant crosses; the hot path, a
//! publication for a channel's interested nodes, goes as a
//! [`Delivery`](super::frame::Delivery) frame instead (no copy of the
//! payload on receipt).
//!
//! Layout: [`PROTOCOL_VERSION`], kind `0x20`, then the envelope in
//! [postcard](https://docs.rs/postcard) (serde derives on `Msg` and
//! everything it holds: varint integers and lengths, enum variants by
//! index, fields in declaration order, no names). The layout is therefore
//! the Rust types themselves: reordering a variant or a field of any type
//! a `Msg` holds changes the bytes, and needs a new `PROTOCOL_VERSION`
//! (the `layout_is_pinned` test fails as a reminder). A `Msg::Deliver`
//! carries its channel, body and priority, not its encoded-frame caches
//! nor its `accepted_at`: the receiver rebuilds it with its own clock
//! ([`shared_pub`]).
//!
//! ## A peer is trusted no more than a client
//!
//! Decoding any bytes gives an envelope or a [`DecodeError`], never a
//! panic, and never an allocation sized by a length the bytes declare:
//!
//! - The input is at most [`MAX_ENVELOPE`] bytes (refused before parsing).
//! - postcard 1.2 (`src/de/flavors.rs`, `Slice::try_take_n`) checks a
//!   string's or a byte string's declared length against the bytes left
//!   before it borrows them, so a forged length is `Truncated` and nothing
//!   was allocated; what is kept is copied from the checked slice.
//! - For a sequence (`Vec<T>`), postcard's `SeqAccess::size_hint`
//!   (`src/de/deserializer.rs`) answers `None` when the declared length
//!   exceeds the bytes left, and serde's `Vec` visitor pre-allocates
//!   `size_hint::cautious`: at most 1 MiB, and nothing without a hint. So
//!   a forged element count allocates at most `min(bytes left, 1 MiB)`
//!   before the input runs out. Every element type in a `Msg` takes at
//!   least one byte (no zero-sized element), so the loop is bounded by the
//!   input too, and no `Msg` type nests sequences in sequences.
//! - After parsing, the fields a client's command is held to are checked
//!   again ([`DecodeError::Channel`], [`DecodeError::IdempotencyKey`],
//!   [`DecodeError::Field`]): channel names, idempotency keys, presence
//!   states, section ids and `op_id`s. Payload contents (the `is_json`
//!   verdict) and the sending node's shard indices (`from`, used only to
//!   address answers back) are taken as sent: nodes of one cluster share
//!   its NATS credentials.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::codec::{DecodeError, PROTOCOL_VERSION, Reader};
use super::subject::is_valid_name;
use crate::engine::channel::is_valid_channel;
use crate::engine::router::msg::{CollabOp, Msg};
use crate::engine::wire::collab::{MAX_OP_ID, MAX_SECTION_ID};
use crate::engine::wire::publication::PushBody;
use crate::engine::wire::{MAX_IDEMPOTENCY_KEY, MAX_PRESENCE_STATE};

/// Kind byte of an envelope.
pub(super) const KIND_ENVELOPE: u8 = 0x20;

/// The largest envelope a node decodes, header included (16 MiB). A
/// router message is a command, an answer or a delivery of one tick's
/// presence events, each bounded well below this by the client-facing
/// limits (`max_message_size`, history caps); the bound exists so that a
/// peer cannot make a node parse (or pre-allocate for) more.
pub const MAX_ENVELOPE: usize = 16 << 20;

/// A router message between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's name.
    pub from_node: Arc<str>,
    /// The channel the message is about (a reply: its request's). The
    /// receiving node hands the message to this channel's home shard
    /// there, its home or its relay, which passes answers on to
    /// `to_shard` in order with the channel's deliveries.
    pub channel: Arc<str>,
    /// The shard on the receiving node the message is finally for, when the
    /// sender knows it (answers: the asking shard); `None`: the channel's
    /// home shard there. The receiver checks it against its shard count.
    pub to_shard: Option<u16>,
    /// The message; its `from` fields are the sender's local shard indices.
    pub msg: Msg,
}

impl Envelope {
    /// The envelope's bytes: version, kind `0x20`, the postcard body.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(64 + payload_len(&self.msg));
        out.push(PROTOCOL_VERSION);
        out.push(KIND_ENVELOPE);
        // Writing to a Vec fails only for a sequence of unknown length or
        // a `collect_str` error, neither of which a derived `Msg` has;
        // every variant is encoded by the tests.
        let out = postcard::to_extend(self, out).expect("every Msg serializes into a Vec");
        Bytes::from(out)
    }

    /// Decodes an envelope; a `Msg::Deliver` in it is accepted at `now`.
    /// Refuses more than [`MAX_ENVELOPE`] bytes, bytes after the message,
    /// and fields beyond what a client may send (see the module docs).
    pub fn decode(buf: &[u8], now: Instant) -> Result<Envelope, DecodeError> {
        let (kind, _) = Reader::open(buf)?;
        if kind != KIND_ENVELOPE {
            return Err(DecodeError::Kind(kind));
        }
        if buf.len() > MAX_ENVELOPE {
            return Err(DecodeError::TooLarge);
        }
        let _clock = DecodeClock::set(now);
        let (envelope, rest) =
            postcard::take_from_bytes::<Envelope>(&buf[2..]).map_err(body_error)?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing);
        }
        envelope.validate()?;
        Ok(envelope)
    }

    /// The checks a client's command passes before it becomes a `Msg`,
    /// applied to a peer's.
    fn validate(&self) -> Result<(), DecodeError> {
        if !is_valid_name(&self.from_node) {
            return Err(DecodeError::NodeName);
        }
        if !is_valid_channel(&self.channel)
            || self.msg.channel().is_some_and(|c| *c != self.channel)
        {
            return Err(DecodeError::Channel);
        }
        match &self.msg {
            Msg::Publish {
                idempotency_key: Some(k),
                ..
            } if !(1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) => Err(DecodeError::IdempotencyKey),
            Msg::SetState { state, .. } if state.len() > MAX_PRESENCE_STATE => {
                Err(DecodeError::Field)
            }
            Msg::Collab { op, .. } => match &**op {
                CollabOp::Join { .. } => Ok(()),
                CollabOp::Lock { section, .. } | CollabOp::Unlock { section } => id(section),
                CollabOp::Update { section, op_id, .. } => {
                    id(section)?;
                    if (1..=MAX_OP_ID).contains(&op_id.len()) {
                        Ok(())
                    } else {
                        Err(DecodeError::Field)
                    }
                }
            },
            _ => Ok(()),
        }
    }
}

/// A section id as a client may send it: 1..=128 bytes.
fn id(section: &str) -> Result<(), DecodeError> {
    if (1..=MAX_SECTION_ID).contains(&section.len()) {
        Ok(())
    } else {
        Err(DecodeError::Field)
    }
}

/// The payload bytes a message carries, to size the encoding buffer once.
fn payload_len(msg: &Msg) -> usize {
    match msg {
        Msg::Publish { data, .. } => data.bytes.len(),
        Msg::Deliver(p) => match &p.body {
            PushBody::Pub(p) => p.data.bytes.len(),
            PushBody::Presence(events) => 64 * events.len(),
        },
        _ => 0,
    }
}

fn body_error(e: postcard::Error) -> DecodeError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        _ => DecodeError::Malformed,
    }
}

thread_local! {
    /// The receiver's clock while [`Envelope::decode`] runs on this
    /// thread. A derived `Deserialize` passes no context down to the
    /// `Msg::Deliver` field, and reading the clock there would make decode
    /// depend on more than its inputs.
    static DECODE_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets [`DECODE_NOW`] for one decode and puts back what was there.
struct DecodeClock(Option<Instant>);

impl DecodeClock {
    fn set(now: Instant) -> Self {
        DecodeClock(DECODE_NOW.replace(Some(now)))
    }
}

impl Drop for DecodeClock {
    fn drop(&mut self) {
        DECODE_NOW.set(self.0);
    }
}

/// serde for `Msg::Deliver`'s `Arc<SharedPub>`: its channel, body and
/// priority, not its encoded-frame caches (each node encodes for its own
/// subscribers) nor `accepted_at` (an `Instant` means nothing on another
/// machine). Decoded, it is a new `SharedPub` accepted at the `now` given
/// to [`Envelope::decode`] — so the publish-to-write latency a node
/// measures starts when the push reached it.
pub(crate) mod shared_pub {
    use std::sync::Arc;
    use std::time::Instant;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::DECODE_NOW;
    use crate::engine::wire::publication::{PushBody, SharedPub};

    #[derive(Serialize)]
    struct Fields<'a> {
        channel: &'a str,
        body: &'a PushBody,
        high_priority: bool,
    }

    #[derive(Deserialize)]
    struct Owned {
        channel: Arc<str>,
        body: PushBody,
        high_priority: bool,
    }

    /// Writes the push's content.
    pub(crate) fn serialize<S: Serializer>(p: &Arc<SharedPub>, s: S) -> Result<S::Ok, S::Error> {
        Fields {
            channel: &p.channel,
            body: &p.body,
            high_priority: p.high_priority,
        }
        .serialize(s)
    }

    /// Reads the content into a new, unencoded push accepted at the
    /// decode's `now` (the current time outside [`super::Envelope::decode`]).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<SharedPub>, D::Error> {
        let o = Owned::deserialize(d)?;
        let now = DECODE_NOW.get().unwrap_or_else(Instant::now);
        Ok(Arc::new(SharedPub::with_body(
            o.channel,
            o.body,
            o.high_priority,
            now,
        )))
    }
}

#[cfg(test)]
mod tests;
