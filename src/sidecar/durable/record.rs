//! A durable record: what the worker sends to the sink (a subject or
//! topic, a key, a message id the sink deduplicates on, the payload),
//! and its stable binary form in the spill.
//!
//! The worker knows nothing of events: the engine builds the record
//! (subject or topic from the namespace's `jetstream:<subject>` or
//! `kafka:<topic>` sink, the channel as the key, message id
//! `<channel>:<epoch hex>:<offset>`, the payload the encoded event).
//!
//! # Encoding (version 2)
//!
//! ```text
//! [version: u8 = 2][queued at, Unix ms: u64 LE]
//! [subject len: u16 LE][key len: u16 LE][msg id len: u16 LE]
//! [subject][key][msg id][payload]
//! ```
//!
//! Version 1 (no key) was never released; this code reads version 2
//! only.
//!
//! The payload is the rest (the spill frames and checksums each record).
//! The queued-at time travels with the record so the age of the oldest
//! unsent record survives a restart. Decoding checks every length before
//! it reads and the text fields' UTF-8: garbage is an error, never a
//! panic.

use std::fmt;

use bytes::Bytes;

/// The version byte this code writes and reads.
pub const RECORD_VERSION: u8 = 2;

/// Bytes of an encoding before its text fields: version, time, the
/// three lengths.
pub const ENCODED_HEADER: usize = 1 + 8 + 2 + 2 + 2;

/// One record for the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableRecord {
    /// Where it goes (a JetStream subject, a Kafka topic).
    pub subject: String,
    /// The Kafka message key (the channel: a channel's records stay in
    /// one partition, in order); empty for none. JetStream ignores it.
    pub key: String,
    /// Its id (`Nats-Msg-Id`, Kafka header `wsedge-id`): JetStream
    /// stores the same record sent twice within the stream's duplicate
    /// window once; consumers deduplicate on it otherwise.
    pub msg_id: String,
    /// The bytes stored.
    pub payload: Bytes,
}

/// Why bytes are not a record, or a record has no encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes than the header, or than the lengths in it say.
    Short {
        /// Bytes needed at least.
        need: usize,
        /// Bytes there.
        have: usize,
    },
    /// A version this code does not read.
    Version(u8),
    /// A text field is longer than its u16 length allows (encoding only).
    FieldTooLong {
        /// `subject`, `key` or `msg_id`.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A text field is not UTF-8.
    NotUtf8(&'static str),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Short { need, have } => {
                write!(f, "a durable record needs {need} bytes, has {have}")
            }
            RecordError::Version(v) => {
                write!(f, "durable record version {v} is not {RECORD_VERSION}")
            }
            RecordError::FieldTooLong { field, len } => write!(
                f,
                "a durable record's {field} of {len} bytes is over {} bytes",
                u16::MAX
            ),
            RecordError::NotUtf8(field) => write!(f, "a durable record's {field} is not UTF-8"),
        }
    }
}

impl std::error::Error for RecordError {}

impl DurableRecord {
    /// A record without a key.
    pub fn new(subject: impl Into<String>, msg_id: impl Into<String>, payload: Bytes) -> Self {
        Self {
            subject: subject.into(),
            key: String::new(),
            msg_id: msg_id.into(),
            payload,
        }
    }

    /// The same record with `key` (the Kafka message key).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Bytes of its encoding.
    pub fn encoded_len(&self) -> usize {
        ENCODED_HEADER
            + self.subject.len()
            + self.key.len()
            + self.msg_id.len()
            + self.payload.len()
    }

    /// The longest of its text fields (each must fit a u16 length).
    pub fn longest_field(&self) -> usize {
        self.subject
            .len()
            .max(self.key.len())
            .max(self.msg_id.len())
    }

    /// Its encoding, queued at `queued_ms` (Unix ms); fails only on a
    /// text field over 65,535 bytes.
    pub fn encode(&self, queued_ms: u64) -> Result<Vec<u8>, RecordError> {
        let len16 = |field, s: &str| {
            u16::try_from(s.len()).map_err(|_| RecordError::FieldTooLong {
                field,
                len: s.len(),
            })
        };
        let subject_len = len16("subject", &self.subject)?;
        let key_len = len16("key", &self.key)?;
        let id_len = len16("msg_id", &self.msg_id)?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&queued_ms.to_le_bytes());
        out.extend_from_slice(&subject_len.to_le_bytes());
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(&id_len.to_le_bytes());
        out.extend_from_slice(self.subject.as_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(self.msg_id.as_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// The record in `bytes` and when it was queued (Unix ms). The
    /// payload shares `bytes` (no copy).
    pub fn decode(bytes: Bytes) -> Result<(DurableRecord, u64), RecordError> {
        let short = |need| RecordError::Short {
            need,
            have: bytes.len(),
        };
        if bytes.len() < ENCODED_HEADER {
            return Err(short(ENCODED_HEADER));
        }
        if bytes[0] != RECORD_VERSION {
            return Err(RecordError::Version(bytes[0]));
        }
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&bytes[1..9]);
        let len_at = |i: usize| usize::from(u16::from_le_bytes([bytes[i], bytes[i + 1]]));
        let key_at = ENCODED_HEADER + len_at(9);
        let id_at = key_at + len_at(11);
        let payload_at = id_at + len_at(13);
        if bytes.len() < payload_at {
            return Err(short(payload_at));
        }
        let text = |range: std::ops::Range<usize>, field| {
            std::str::from_utf8(&bytes[range])
                .map(str::to_owned)
                .map_err(|_| RecordError::NotUtf8(field))
        };
        let subject = text(ENCODED_HEADER..key_at, "subject")?;
        let key = text(key_at..id_at, "key")?;
        let msg_id = text(id_at..payload_at, "msg_id")?;
        let record = DurableRecord {
            subject,
            key,
            msg_id,
            payload: bytes.slice(payload_at..),
        };
        Ok((record, u64::from_le_bytes(ms)))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn record() -> DurableRecord {
        DurableRecord::new(
            "evt.chat.6368",
            "chat:room:1f:42",
            Bytes::from_static(b"{\"data\":1}"),
        )
        .with_key("chat:room")
    }

    #[test]
    fn a_record_round_trips_with_its_time() {
        let r = record();
        let bytes = r.encode(1_700_000_000_123).unwrap();
        assert_eq!(bytes.len(), r.encoded_len());
        let (back, ms) = DurableRecord::decode(Bytes::from(bytes)).unwrap();
        assert_eq!((back, ms), (r, 1_700_000_000_123));
        let empty = DurableRecord::new("", "", Bytes::new());
        let bytes = empty.encode(0).unwrap();
        assert_eq!(bytes.len(), ENCODED_HEADER);
        assert_eq!(
            DurableRecord::decode(Bytes::from(bytes)).unwrap(),
            (empty, 0)
        );
    }

    #[test]
    fn the_encoding_is_stable() {
        let r = DurableRecord::new("s", "id", Bytes::from_static(b"xy")).with_key("k");
        assert_eq!(
            r.encode(0x0102).unwrap(),
            [
                2, 2, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 2, 0, b's', b'k', b'i', b'd', b'x', b'y'
            ]
        );
    }

    #[test]
    fn over_long_fields_have_no_encoding() {
        let mut r = record();
        r.msg_id = "x".repeat(usize::from(u16::MAX) + 1);
        assert_eq!(
            r.encode(0),
            Err(RecordError::FieldTooLong {
                field: "msg_id",
                len: 65_536
            })
        );
        r.msg_id = "x".repeat(usize::from(u16::MAX));
        let bytes = r.encode(0).unwrap();
        assert_eq!(DurableRecord::decode(Bytes::from(bytes)).unwrap().0, r);
        r.key = "k".repeat(usize::from(u16::MAX) + 1);
        assert_eq!(
            r.encode(0),
            Err(RecordError::FieldTooLong {
                field: "key",
                len: 65_536
            })
        );
        assert_eq!(r.longest_field(), 65_536);
    }

    #[test]
    fn every_cut_of_an_encoding_is_an_error_up_to_the_payload() {
        let r = record();
        let bytes = r.encode(7).unwrap();
        let payload_at = bytes.len() - r.payload.len();
        for cut in 0..bytes.len() {
            let got = DurableRecord::decode(Bytes::copy_from_slice(&bytes[..cut]));
            if cut < payload_at {
                assert!(
                    matches!(got, Err(RecordError::Short { .. })),
                    "{cut}: {got:?}"
                );
            } else {
                // A cut payload is still a record: the spill's CRC guards
                // the whole.
                assert_eq!(got.unwrap().0.payload, r.payload[..cut - payload_at]);
            }
        }
    }

    #[test]
    fn wrong_versions_and_bad_utf8_are_errors() {
        let mut bytes = record().encode(0).unwrap();
        // Version 1 (no key) was never released.
        for v in [0, 1, 3] {
            bytes[0] = v;
            assert_eq!(
                DurableRecord::decode(Bytes::from(bytes.clone())),
                Err(RecordError::Version(v))
            );
        }
        bytes[0] = RECORD_VERSION;
        let subject_len = record().subject.len();
        let mut bad_key = bytes.clone();
        bad_key[ENCODED_HEADER + subject_len] = 0xff;
        assert_eq!(
            DurableRecord::decode(Bytes::from(bad_key)),
            Err(RecordError::NotUtf8("key"))
        );
        bytes[ENCODED_HEADER] = 0xff;
        assert_eq!(
            DurableRecord::decode(Bytes::from(bytes)),
            Err(RecordError::NotUtf8("subject"))
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(11);
        let good = record().encode(5).unwrap();
        for _ in 0..20_000 {
            let bytes: Vec<u8> = if rng.random_bool(0.5) {
                let len = rng.random_range(0..64);
                (0..len).map(|_| rng.random()).collect()
            } else {
                // A valid encoding with a few bytes flipped.
                let mut b = good.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
                b
            };
            let _ = DurableRecord::decode(Bytes::from(bytes));
        }
    }
}
