//! Encode once, send many: a publication becomes one complete WebSocket
//! frame per wire form, shared (as `Bytes`) by every subscriber on every
//! shard.

use std::rc::Rc;

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use serde::de::IgnoredAny;

use super::{Data, binary, json};
use crate::engine::ws::deflate::Compressor;
use crate::engine::ws::frame::{Opcode, encode_frame};
use crate::engine::ws::handshake::WireFormat;

/// A publication's payload, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
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
                is_json: serde_json::from_slice::<IgnoredAny>(b).is_ok(),
            },
        }
    }
}

/// A publication as history keeps it and recovery replays it: its offset
/// in the channel's stream and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Offset assigned by the channel's home.
    pub offset: u64,
    /// The payload.
    pub data: PubData,
}

/// Every encoding of one publication, each a complete server frame.
#[derive(Debug, Clone)]
pub struct Encodings<T> {
    /// Text frame for JSON connections.
    pub json: T,
    /// Binary frame for FlatBuffers connections.
    pub binary: T,
    /// The JSON frame compressed once (permessage-deflate, 15-bit window,
    /// no context), when compression is on and the payload is big enough.
    pub json_deflate: Option<T>,
    /// The binary frame, compressed likewise.
    pub binary_deflate: Option<T>,
}

/// A publication as the home shard encodes it and every shard receives it.
pub type EncodedPub = Encodings<Bytes>;

/// One shard's handle on an [`EncodedPub`] while it hands the frames to its
/// subscribers: each encoding behind a non-atomic count, so a subscriber's
/// copy is an increment (see [`Frame::Shared`](crate::engine::outbox::Frame)).
pub type LocalPub = Encodings<Rc<Bytes>>;

impl<T> Encodings<T> {
    /// The frame for a connection of `format` that may (`deflate`) take the
    /// shared compressed form.
    pub fn for_conn(&self, format: WireFormat, deflate: bool) -> &T {
        match (format, deflate) {
            (WireFormat::Json, true) => self.json_deflate.as_ref().unwrap_or(&self.json),
            (WireFormat::Json, false) => &self.json,
            (WireFormat::Binary, true) => self.binary_deflate.as_ref().unwrap_or(&self.binary),
            (WireFormat::Binary, false) => &self.binary,
        }
    }

    /// The same encodings, each passed through `f`.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Encodings<U> {
        Encodings {
            json: f(&self.json),
            binary: f(&self.binary),
            json_deflate: self.json_deflate.as_ref().map(&mut f),
            binary_deflate: self.binary_deflate.as_ref().map(&mut f),
        }
    }
}

/// Reusable encoder (one per shard).
pub struct PubEncoder {
    fbb: FlatBufferBuilder<'static>,
    json: Vec<u8>,
}

impl Default for PubEncoder {
    fn default() -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(1024),
            json: Vec::with_capacity(1024),
        }
    }
}

impl PubEncoder {
    /// Encodes a publication in both forms, and compresses each once when
    /// a compressor is given.
    pub fn encode(
        &mut self,
        channel: &str,
        offset: u64,
        data: &PubData,
        compressor: Option<&mut Compressor>,
    ) -> EncodedPub {
        self.json.clear();
        json::write_pub(&mut self.json, channel, offset, &data.bytes, data.is_json);
        let mut frame = Vec::with_capacity(self.json.len() + 10);
        encode_frame(Opcode::Text, &self.json, &mut frame);
        let bin_payload = binary::pub_payload(&mut self.fbb, channel, offset, &data.bytes);
        let mut bin_frame = Vec::with_capacity(bin_payload.len() + 10);
        encode_frame(Opcode::Binary, bin_payload, &mut bin_frame);
        let (json_deflate, binary_deflate) = match compressor {
            Some(c) => (c.shared(true, &self.json), c.shared(false, bin_payload)),
            None => (None, None),
        };
        EncodedPub {
            json: Bytes::from(frame),
            binary: Bytes::from(bin_frame),
            json_deflate,
            binary_deflate,
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
    }

    #[test]
    fn encodes_both_forms() {
        let mut enc = PubEncoder::default();
        let e = enc.encode(
            "room:1",
            3,
            &PubData::from_data(Data::Json(b"\"hi\"")),
            None,
        );
        assert_eq!(e.json[0], 0x81);
        let v: serde_json::Value = serde_json::from_slice(&e.json[2..]).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "hi");
        assert_eq!(e.binary[0], 0x82);
        assert!(e.json_deflate.is_none());
        // With a compressor: compressed once per form above the size floor.
        let mut c = Compressor::new(1, 64);
        let big = PubData::from_data(Data::Json(format!("\"{}\"", "abc".repeat(100)).as_bytes()));
        let e = enc.encode("room:1", 4, &big, Some(&mut c));
        let jd = e.json_deflate.as_ref().unwrap();
        assert_eq!(jd[0], 0xC1);
        assert!(jd.len() < e.json.len());
        assert_eq!(e.binary_deflate.as_ref().unwrap()[0], 0xC2);
        assert_eq!(e.for_conn(WireFormat::Json, true), jd);
        assert_eq!(e.for_conn(WireFormat::Json, false), &e.json);
    }
}
