//! The byte layout shared by heartbeats and frames, and the one decode
//! error enum both return.
//!
//! Every message starts with two bytes: the protocol version
//! ([`PROTOCOL_VERSION`]) and a kind. In heartbeats and frames integers
//! are big-endian; an envelope's body is postcard (`super::envelope`). A channel
//! name is one length byte and its bytes (a valid channel name is at most
//! 255 bytes, so the byte always suffices). Decoding checks each length
//! against what is left before reading and refuses trailing bytes: no read
//! ever goes past the end, so any input gives an answer, never a panic.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::engine::channel::is_valid_channel;

/// The version every heartbeat and frame of this build starts with. A
/// message of another version is refused ([`DecodeError::Version`]): a
/// cluster runs one protocol version, and changing the layout means a new
/// number here.
pub const PROTOCOL_VERSION: u8 = 3;

/// Kind byte of a heartbeat.
pub(super) const KIND_HEARTBEAT: u8 = 0x01;

/// Why a heartbeat or a frame was refused. The caller counts each by
/// [`DecodeError::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer than the two header bytes.
    Empty,
    /// A protocol version this build does not speak.
    Version(u8),
    /// A kind byte this version does not define, or a kind that does not
    /// belong where it arrived (a frame where a heartbeat was expected or
    /// the reverse).
    Kind(u8),
    /// The message ends before a field it announces.
    Truncated,
    /// Bytes after the last field of a fixed-layout message.
    Trailing,
    /// A channel name that is not valid (`crate::engine::channel`).
    Channel,
    /// A node name that is not valid ([`super::subject::is_valid_name`]).
    NodeName,
    /// An idempotency key that is empty, too long or not UTF-8.
    IdempotencyKey,
    /// A flags byte with bits this version does not define.
    Flags(u8),
    /// A heartbeat announcing zero shards.
    ZeroShards,
    /// An envelope longer than
    /// [`MAX_ENVELOPE`](super::envelope::MAX_ENVELOPE).
    TooLarge,
    /// An envelope body that is not a router message: a bad varint, bool,
    /// option or enum tag, or a string that is not UTF-8.
    Malformed,
    /// A field of a router message beyond the limit a client's command is
    /// held to (a presence state, a section id, an `op_id`).
    Field,
}

impl DecodeError {
    /// Every label, for metrics that pre-register each.
    pub const LABELS: [&'static str; 13] = [
        "empty",
        "version",
        "kind",
        "truncated",
        "trailing",
        "channel",
        "node_name",
        "idempotency_key",
        "flags",
        "zero_shards",
        "too_large",
        "malformed",
        "field",
    ];

    /// A short name for a metric label.
    pub const fn label(self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Version(_) => "version",
            DecodeError::Kind(_) => "kind",
            DecodeError::Truncated => "truncated",
            DecodeError::Trailing => "trailing",
            DecodeError::Channel => "channel",
            DecodeError::NodeName => "node_name",
            DecodeError::IdempotencyKey => "idempotency_key",
            DecodeError::Flags(_) => "flags",
            DecodeError::ZeroShards => "zero_shards",
            DecodeError::TooLarge => "too_large",
            DecodeError::Malformed => "malformed",
            DecodeError::Field => "field",
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("message shorter than its header"),
            DecodeError::Version(v) => {
                write!(
                    f,
                    "protocol version {v} (this node speaks {PROTOCOL_VERSION})"
                )
            }
            DecodeError::Kind(k) => write!(f, "unexpected message kind 0x{k:02x}"),
            DecodeError::Truncated => f.write_str("message ends inside a field"),
            DecodeError::Trailing => f.write_str("bytes after the last field"),
            DecodeError::Channel => f.write_str("invalid channel name"),
            DecodeError::NodeName => f.write_str("invalid node name"),
            DecodeError::IdempotencyKey => f.write_str("invalid idempotency key"),
            DecodeError::Flags(b) => write!(f, "undefined flag bits 0x{b:02x}"),
            DecodeError::ZeroShards => f.write_str("heartbeat with zero shards"),
            DecodeError::TooLarge => f.write_str("envelope larger than 16 MiB"),
            DecodeError::Malformed => f.write_str("envelope body is not a router message"),
            DecodeError::Field => f.write_str("a field beyond its limit"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A bounds-checked cursor over a message: every read checks what is left
/// first.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads the header; returns the kind byte and a cursor after it.
    pub(super) fn open(buf: &'a [u8]) -> Result<(u8, Self), DecodeError> {
        let [version, kind, ..] = *buf else {
            return Err(DecodeError::Empty);
        };
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version(version));
        }
        Ok((kind, Reader { buf, pos: 2 }))
    }

    /// The next `n` bytes.
    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_be_bytes(a))
    }

    /// A length byte and a valid channel name.
    pub(super) fn channel(&mut self) -> Result<Arc<str>, DecodeError> {
        let n = self.u8()? as usize;
        let raw = self.bytes(n)?;
        match std::str::from_utf8(raw) {
            Ok(s) if is_valid_channel(s) => Ok(Arc::from(s)),
            _ => Err(DecodeError::Channel),
        }
    }

    /// Where the cursor is (the offset of the rest of the message).
    pub(super) fn position(&self) -> usize {
        self.pos
    }

    /// Refuses bytes after the last field.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

/// Writes a length byte and the channel name. Names longer than 255 bytes
/// never reach here (every channel in the node was validated); one that
/// did would be cut to 255 bytes and refused by the receiver, not written
/// with a wrong length.
pub(super) fn put_channel(out: &mut BytesMut, channel: &str) {
    let b = channel.as_bytes();
    let n = b.len().min(u8::MAX as usize);
    out.put_u8(n as u8);
    out.put_slice(&b[..n]);
}

/// Bytes [`put_channel`] writes.
pub(super) fn channel_len(channel: &str) -> usize {
    1 + channel.len().min(u8::MAX as usize)
}
