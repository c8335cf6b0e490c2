//! Wire protocol v1: commands, replies and pushes, in two forms that carry
//! the same meaning — JSON text frames (`edu-matrix-v1.json`) and
//! FlatBuffers binary frames (`edu-matrix-v1`, schema in
//! `schemas/edge.fbs`). docs/PROTOCOL.md is the prose contract.
//!
//! Layout:
//! - `mod.rs`: the protocol-neutral types and [`FrameWriter`], which builds
//!   one server frame holding one or more replies.
//! - [`json`]: the JSON form.
//! - [`binary`]: the FlatBuffers form.
//! - [`publication`]: encodes a publication once per form.

use std::borrow::Cow;

use bytes::Bytes;

use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::ws::handshake::WireFormat;

pub mod binary;
pub mod json;
pub mod publication;

#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, missing_docs, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes, non_camel_case_types)]
#[path = "edge_generated.rs"]
mod edge_generated;

/// The FlatBuffers types generated from `schemas/edge.fbs`.
pub use edge_generated::wsedge::proto;

/// Parameters of `connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectParams<'a> {
    /// Credentials (validated once authentication is configured).
    pub token: Option<Cow<'a, str>>,
    /// Client application name, for logs.
    pub name: Option<Cow<'a, str>>,
    /// Client application version, for logs.
    pub version: Option<Cow<'a, str>>,
}

/// Who a connection is, as presence reports it and join/leave/state pushes
/// carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Server-assigned client id (unique per connection).
    pub client: std::sync::Arc<str>,
    /// User id (empty for an anonymous connection).
    pub user: std::sync::Arc<str>,
    /// Optional application data about the connection: JSON text.
    pub info: Option<Bytes>,
}

/// One member of a channel's presence: who it is and its current state
/// (`viewing`, `typing`, `editing:<section>`…), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The connection.
    pub info: ClientInfo,
    /// Its state, if one is set and not expired.
    pub state: Option<std::sync::Arc<str>>,
}

/// Publication payload as a client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data<'a> {
    /// Raw JSON text (from the JSON form; any JSON value).
    Json(&'a [u8]),
    /// Opaque bytes (from the binary form).
    Bytes(&'a [u8]),
}

impl<'a> Data<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Data::Json(b) | Data::Bytes(b) => b,
        }
    }
}

/// A command method with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method<'a> {
    /// `connect {token?, name?, version?}`.
    Connect(ConnectParams<'a>),
    /// `subscribe {channel}`.
    Subscribe {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
    },
    /// `unsubscribe {channel}`.
    Unsubscribe {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
    },
    /// `publish {channel, data}`.
    Publish {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// The payload.
        data: Data<'a>,
    },
    /// `ping {}`.
    Ping,
}

impl Method<'_> {
    /// The method name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Connect(_) => "connect",
            Method::Subscribe { .. } => "subscribe",
            Method::Unsubscribe { .. } => "unsubscribe",
            Method::Publish { .. } => "publish",
            Method::Ping => "ping",
        }
    }
}

/// One decoded command. `method` is an error when the command is well
/// formed enough to answer (it has an id) but its method is unknown or its
/// parameters are malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    /// Client-chosen id echoed in the reply.
    pub id: u32,
    /// The method, or the error to reply with.
    pub method: Result<Method<'a>, ErrorCode>,
}

/// A frame the client sent could not be decoded as commands at all; the
/// connection is closed with [`CloseReason::BadRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedFrame(pub String);

impl MalformedFrame {
    /// The close reason for a malformed frame.
    pub fn close_reason(&self) -> CloseReason {
        CloseReason::BadRequest
    }
}

/// Decodes every command in one client message and hands each to `f`.
/// Returns an error when the message is not a valid command frame of the
/// connection's form.
pub fn decode_commands<'a>(
    format: WireFormat,
    text: bool,
    payload: &'a [u8],
    f: impl FnMut(Command<'a>),
) -> Result<(), MalformedFrame> {
    match (format, text) {
        (WireFormat::Json, true) => json::decode_commands(payload, f),
        (WireFormat::Binary, false) => binary::decode_commands(payload, f),
        (WireFormat::Json, false) => {
            Err(MalformedFrame("binary frame on a JSON connection".into()))
        }
        (WireFormat::Binary, true) => {
            Err(MalformedFrame("text frame on a binary connection".into()))
        }
    }
}

/// The successful result (or error) of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBody<'a> {
    /// Result of `connect`.
    Connect {
        /// Server-assigned client id.
        client: &'a str,
        /// Node name.
        node: &'a str,
        /// Ping interval in seconds.
        ping: u32,
    },
    /// Result of `subscribe`: the channel position after which the client
    /// receives every publication.
    Subscribe {
        /// Channel epoch (changes when the channel's history is lost).
        epoch: u64,
        /// Offset of the last publication before the subscription.
        offset: u64,
    },
    /// Result of `unsubscribe`.
    Unsubscribe,
    /// Result of `publish`.
    Publish {
        /// Offset assigned to the publication.
        offset: u64,
    },
    /// Result of `ping`.
    Ping,
    /// An error.
    Error(ErrorCode),
}

/// Renders an epoch as the 16-character lowercase hex string used on the
/// wire.
pub fn epoch_str(epoch: u64, buf: &mut [u8; 16]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((epoch >> (60 - 4 * i)) & 0xf) as usize];
    }
    // SAFETY-free: every byte is ASCII hex.
    std::str::from_utf8(buf).expect("hex is ASCII")
}

/// Builds one server frame holding one or more replies (and/or a
/// disconnect push), in the connection's form. Reused across frames to
/// avoid allocation.
pub struct FrameWriter {
    json: json::JsonWriter,
    binary: binary::BinaryWriter,
    format: WireFormat,
    count: usize,
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self {
            json: json::JsonWriter::default(),
            binary: binary::BinaryWriter::default(),
            format: WireFormat::Json,
            count: 0,
        }
    }

    /// Starts a new frame in `format`.
    pub fn begin(&mut self, format: WireFormat) {
        self.format = format;
        self.count = 0;
        match format {
            WireFormat::Json => self.json.begin(),
            WireFormat::Binary => self.binary.begin(),
        }
    }

    /// Adds a reply.
    pub fn reply(&mut self, id: u32, body: ReplyBody<'_>) {
        self.count += 1;
        match self.format {
            WireFormat::Json => self.json.reply(id, body),
            WireFormat::Binary => self.binary.reply(id, body),
        }
    }

    /// Adds a `disconnect` push.
    pub fn disconnect(&mut self, reason: CloseReason) {
        self.count += 1;
        match self.format {
            WireFormat::Json => self.json.disconnect(reason),
            WireFormat::Binary => self.binary.disconnect(reason),
        }
    }

    /// Whether nothing was added since `begin`.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Finishes the frame as a plain WebSocket frame, or `None` if empty.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.finish_with(crate::engine::ws::deflate::plain_frame)
    }

    /// Finishes the frame, letting `make(text, payload)` build the
    /// WebSocket frame (e.g. compressed), or `None` if empty. The writer is
    /// then empty again, in the same form.
    pub fn finish_with(&mut self, make: impl FnOnce(bool, &[u8]) -> Bytes) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        let frame = match self.format {
            WireFormat::Json => make(true, self.json.payload()),
            WireFormat::Binary => make(false, self.binary.payload()),
        };
        self.begin(self.format);
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_hex() {
        let mut b = [0u8; 16];
        assert_eq!(epoch_str(0x0123_4567_89ab_cdef, &mut b), "0123456789abcdef");
        assert_eq!(epoch_str(0, &mut b), "0000000000000000");
    }
}
