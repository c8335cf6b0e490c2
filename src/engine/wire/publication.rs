//! Encode once, send many: a publication becomes one complete WebSocket
//! frame per wire form, shared (as `Bytes`) by every subscriber on every
//! shard.

use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use serde::de::IgnoredAny;

use super::{Data, FrameWriter, binary, json};
use crate::engine::presence::PresenceEvent;
use crate::engine::ws::deflate::{Compressor, plain_frame};
use crate::engine::ws::handshake::WireFormat;

/// A publication's payload, owned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PubData {
    /// The payload bytes.
    pub bytes: Bytes,
    /// Whether `bytes` is JSON text (always true for data published through
    /// the JSON form; checked once for data from the binary form).
    pub is_json: bool,
}

impl PubData {
    /// Copies a client's payload once, deciding how JSON subscribers see it.
    pub fn from_data(data: Data<'_>) -> Self {
        match data {
            Data::Json(b) => PubData {
                bytes: Bytes::copy_from_slice(b),
                is_json: true,
            },
            Data::Bytes(b) => PubData {
                bytes: Bytes::copy_from_slice(b),
                is_json: is_json_text(b),
            },
        }
    }
}

/// Whether `b` is UTF-8 JSON text: one JSON value, whitespace around it.
/// (`serde_json::from_slice` alone lets bytes that are not UTF-8 through
/// inside strings, and those would break the JSON form's text frames.)
pub fn is_json_text(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(|s| serde_json::from_str::<IgnoredAny>(s).is_ok())
}

/// A publication as history keeps it and recovery replays it: its offset
/// in the channel's stream and its payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Publication {
    /// Offset assigned by the channel's home.
    pub offset: u64,
    /// The payload.
    pub data: PubData,
}

/// The four forms a publication frame can take, in this order.
pub const FORMS: [&str; 4] = ["json", "binary", "json_deflate", "binary_deflate"];

fn form_index(format: WireFormat, deflate: bool) -> usize {
    match (format, deflate) {
        (WireFormat::Json, false) => 0,
        (WireFormat::Binary, false) => 1,
        (WireFormat::Json, true) => 2,
        (WireFormat::Binary, true) => 3,
    }
}

/// What a shared push carries.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum PushBody {
    /// A publication (a `pub` push with its offset).
    Pub(Publication),
    /// Presence changes of one tick, coalesced into one frame of `join`,
    /// `leave` and `state` pushes (they carry no offset).
    Presence(Vec<PresenceEvent>),
}

/// A push on its way from its channel's home to every shard with
/// subscribers: the content once, and each wire form encoded at most once,
/// the first time some subscriber on some shard needs it (a channel whose
/// subscribers all speak JSON never pays for the binary form, nor for
/// compression when none of them negotiated it). Shared by every shard
/// through an `Arc`.
#[derive(Debug)]
pub struct SharedPub {
    /// Channel name.
    pub channel: Arc<str>,
    /// What it carries.
    pub body: PushBody,
    /// Written before normal data already queued for a connection.
    pub high_priority: bool,
    /// When the home accepted it (publish-to-write latency).
    pub accepted_at: Instant,
    /// Encoded frames by [`FORMS`] index; a compressed form is `None` when
    /// the payload is below the compression floor (the plain frame is used).
    forms: [OnceLock<Option<Bytes>>; 4],
}

impl SharedPub {
    /// A publication not yet encoded in any form.
    pub fn new(
        channel: Arc<str>,
        publication: Publication,
        high_priority: bool,
        accepted_at: Instant,
    ) -> Self {
        Self::with_body(
            channel,
            PushBody::Pub(publication),
            high_priority,
            accepted_at,
        )
    }

    /// Presence events of one tick, not yet encoded.
    pub fn presence(channel: Arc<str>, events: Vec<PresenceEvent>, accepted_at: Instant) -> Self {
        Self::with_body(channel, PushBody::Presence(events), false, accepted_at)
    }

    /// A publication or presence events (`body`), not yet encoded.
    pub fn with_body(
        channel: Arc<str>,
        body: PushBody,
        high_priority: bool,
        accepted_at: Instant,
    ) -> Self {
        Self {
            channel,
            body,
            high_priority,
            accepted_at,
            forms: Default::default(),
        }
    }

    /// The publication's offset (`None` for presence events).
    pub fn offset(&self) -> Option<u64> {
        match &self.body {
            PushBody::Pub(p) => Some(p.offset),
            PushBody::Presence(_) => None,
        }
    }

    /// The forms encoded so far, by [`FORMS`] index (tests and metrics).
    pub fn encoded(&self) -> [bool; 4] {
        std::array::from_fn(|i| self.forms[i].get().is_some())
    }
}

/// One shard's view of a [`SharedPub`] while it hands frames to its local
/// subscribers: each form behind a non-atomic count, so a subscriber's copy
/// is an increment (see [`Frame::Shared`](crate::engine::outbox::Frame)),
/// and each form looked up in the shared cells once per shard.
pub struct LocalPub<'a> {
    shared: &'a SharedPub,
    encoder: &'a mut PubEncoder,
    compressor: Option<&'a mut Compressor>,
    local: [Option<Rc<Bytes>>; 4],
}

impl<'a> LocalPub<'a> {
    /// Starts handing out `shared`'s frames, encoding with `encoder` (and
    /// `compressor`, when compression is on) where no shard has yet.
    pub fn new(
        shared: &'a SharedPub,
        encoder: &'a mut PubEncoder,
        compressor: Option<&'a mut Compressor>,
    ) -> Self {
        Self {
            shared,
            encoder,
            compressor,
            local: Default::default(),
        }
    }

    /// The frame for a connection of `format` that may (`deflate`) take the
    /// shared compressed form.
    pub fn frame(&mut self, format: WireFormat, deflate: bool) -> Rc<Bytes> {
        let deflate = deflate && self.compressor.is_some();
        let i = form_index(format, deflate);
        if let Some(f) = &self.local[i] {
            return Rc::clone(f);
        }
        let shared = self.shared;
        let cell = shared.forms[i].get_or_init(|| {
            self.encoder.encodes[i] += 1;
            let compressor = if deflate {
                self.compressor.as_deref_mut()
            } else {
                None
            };
            self.encoder
                .frame(format, &shared.channel, &shared.body, compressor)
        });
        let frame = match cell {
            Some(b) => Rc::new(b.clone()),
            // Below the compression floor: the plain form.
            None => self.frame(format, false),
        };
        self.local[i] = Some(Rc::clone(&frame));
        frame
    }
}

/// Reusable encoder (one per shard).
pub struct PubEncoder {
    fbb: FlatBufferBuilder<'static>,
    json: Vec<u8>,
    /// Builds presence event frames.
    events: FrameWriter,
    /// Frames encoded, by form (see [`FORMS`]); the shard moves these
    /// counts to its metrics.
    pub encodes: [u64; 4],
}

impl Default for PubEncoder {
    fn default() -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(1024),
            json: Vec::with_capacity(1024),
            events: FrameWriter::new(),
            encodes: [0; 4],
        }
    }
}

impl PubEncoder {
    /// The frame of `body` in `format`: compressed once with `compressor`
    /// when one is given (`None` if the payload is below its floor), else
    /// plain.
    fn frame(
        &mut self,
        format: WireFormat,
        channel: &str,
        body: &PushBody,
        compressor: Option<&mut Compressor>,
    ) -> Option<Bytes> {
        let make = |text: bool, payload: &[u8]| match compressor {
            Some(c) => c.shared(text, payload),
            None => Some(plain_frame(text, payload)),
        };
        match body {
            PushBody::Pub(p) => {
                let text = format == WireFormat::Json;
                make(text, self.payload(format, channel, p))
            }
            PushBody::Presence(events) => {
                let w = &mut self.events;
                w.begin(format);
                for ev in events {
                    match ev {
                        PresenceEvent::Join(info) => w.join(channel, info),
                        PresenceEvent::Leave(info) => w.leave(channel, info),
                        PresenceEvent::State(info, state) => w.state(channel, info, state),
                    }
                }
                w.finish_with(make).flatten()
            }
        }
    }

    /// The `pub` push payload of `p` in `format` (valid until the next call).
    pub fn payload(&mut self, format: WireFormat, channel: &str, p: &Publication) -> &[u8] {
        match format {
            WireFormat::Json => {
                self.json.clear();
                json::write_pub(
                    &mut self.json,
                    channel,
                    p.offset,
                    &p.data.bytes,
                    p.data.is_json,
                );
                &self.json
            }
            WireFormat::Binary => {
                binary::pub_payload(&mut self.fbb, channel, p.offset, &p.data.bytes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_check_for_binary_payloads() {
        assert!(PubData::from_data(Data::Bytes(b"{\"a\":1}")).is_json);
        assert!(!PubData::from_data(Data::Bytes(&[0xff, 0xfe])).is_json);
        assert!(PubData::from_data(Data::Json(b"[1]")).is_json);
        // JSON in shape with a string that is not UTF-8: sent as b64data.
        assert!(!PubData::from_data(Data::Bytes(b"\"\xff\"")).is_json);
        assert!(PubData::from_data(Data::Bytes("\"é\"".as_bytes())).is_json);
    }

    fn publication(data: &[u8]) -> Publication {
        Publication {
            offset: 3,
            data: PubData::from_data(Data::Json(data)),
        }
    }

    #[test]
    fn encodes_only_the_forms_asked_for_once() {
        let mut enc = PubEncoder::default();
        let sp = SharedPub::new(
            "room:1".into(),
            publication(b"\"hi\""),
            false,
            Instant::now(),
        );
        let mut lp = LocalPub::new(&sp, &mut enc, None);
        let a = lp.frame(WireFormat::Json, false);
        let b = lp.frame(WireFormat::Json, true); // no compressor: plain
        assert!(Rc::ptr_eq(&a, &b));
        assert_eq!(a[0], 0x81);
        let v: serde_json::Value = serde_json::from_slice(&a[2..]).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "hi");
        assert_eq!(v["push"]["pub"]["offset"], 3);
        assert_eq!(sp.encoded(), [true, false, false, false]);
        // Another shard reuses the encoded form without encoding again.
        let mut enc2 = PubEncoder::default();
        let mut lp2 = LocalPub::new(&sp, &mut enc2, None);
        assert_eq!(&**lp2.frame(WireFormat::Json, false), &**a);
        assert_eq!(lp2.frame(WireFormat::Binary, false)[0], 0x82);
        assert_eq!(sp.encoded(), [true, true, false, false]);
        assert_eq!(enc.encodes, [1, 0, 0, 0]);
        assert_eq!(enc2.encodes, [0, 1, 0, 0], "JSON was not encoded again");
    }

    #[test]
    fn compressed_once_above_the_floor() {
        let mut enc = PubEncoder::default();
        let mut c = Compressor::new(1, 64);
        let big = format!("\"{}\"", "abc".repeat(100));
        let sp = SharedPub::new(
            "room:1".into(),
            publication(big.as_bytes()),
            false,
            Instant::now(),
        );
        let mut lp = LocalPub::new(&sp, &mut enc, Some(&mut c));
        let jd = lp.frame(WireFormat::Json, true);
        assert_eq!(jd[0], 0xC1);
        let plain = lp.frame(WireFormat::Json, false);
        assert!(jd.len() < plain.len());
        assert_eq!(sp.encoded(), [true, false, true, false]);
        assert_eq!(enc.encodes, [1, 0, 1, 0]);
        // Below the floor the compressed slot holds None and the plain
        // frame is used.
        let small = SharedPub::new("room:1".into(), publication(b"1"), false, Instant::now());
        let mut c = Compressor::new(1, 200);
        let mut lp = LocalPub::new(&small, &mut enc, Some(&mut c));
        assert_eq!(lp.frame(WireFormat::Binary, true)[0], 0x82);
        assert_eq!(small.encoded(), [false, true, false, true]);
    }
}
