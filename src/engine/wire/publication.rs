//! Encode once, send many: a publication becomes one complete WebSocket
//! frame per wire form, shared (as `Bytes`) by every subscriber on every
//! shard.

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use serde::de::IgnoredAny;

use super::{Data, binary, json};
use crate::engine::ws::frame::{Opcode, encode_frame};

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

/// Both encodings of one publication, each a complete server frame.
#[derive(Debug, Clone)]
pub struct EncodedPub {
    /// Text frame for JSON connections.
    pub json: Bytes,
    /// Binary frame for FlatBuffers connections.
    pub binary: Bytes,
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
    /// Encodes a publication in both forms.
    pub fn encode(&mut self, channel: &str, offset: u64, data: &PubData) -> EncodedPub {
        self.json.clear();
        json::write_pub(&mut self.json, channel, offset, &data.bytes, data.is_json);
        let mut frame = Vec::with_capacity(self.json.len() + 10);
        encode_frame(Opcode::Text, &self.json, &mut frame);
        EncodedPub {
            json: Bytes::from(frame),
            binary: binary::pub_frame(&mut self.fbb, channel, offset, &data.bytes),
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
        let e = enc.encode("room:1", 3, &PubData::from_data(Data::Json(b"\"hi\"")));
        assert_eq!(e.json[0], 0x81);
        let v: serde_json::Value = serde_json::from_slice(&e.json[2..]).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "hi");
        assert_eq!(e.binary[0], 0x82);
    }
}
