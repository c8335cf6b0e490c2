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
//! - [`collab`]: story collaboration's types and story events.
//! - [`rpc`]: backend calls (`rpc`, `send`) and their parameter rules.

use std::borrow::Cow;

use bytes::Bytes;

use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::hub::Position;
use crate::engine::ws::handshake::WireFormat;

pub mod binary;
pub mod collab;
pub mod json;
pub mod publication;
pub mod rpc;

#[cfg(test)]
mod fixtures;

use collab::{CollabJoinReply, CollabRole, ErrorDetail, MemberId};
use publication::Publication;

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
    /// User id the connection claims (trusted until token auth lands).
    pub user: Option<Cow<'a, str>>,
    /// Application data about the connection, shown in presence: JSON
    /// text (checked in the binary form; the JSON form only parses JSON).
    pub info: Option<&'a [u8]>,
    /// A one-time ticket stored in Redis by a backend (auth mode
    /// `ticket`).
    pub ticket: Option<Cow<'a, str>>,
}

/// Who a connection is, as presence reports it and join/leave/state pushes
/// carry it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// `connect {token?, ticket?, name?, version?, user?, info?}`.
    Connect(ConnectParams<'a>),
    /// `subscribe {channel, recover?, epoch?, offset?, token?}`.
    Subscribe {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// Replay the publications missed since `since`.
        recover: bool,
        /// The last position the client saw (`epoch` and `offset`), when
        /// given; always `Some` when `recover` is set.
        since: Option<Position>,
        /// Subscription token (namespaces with `subscribe = "token"`).
        token: Option<Cow<'a, str>>,
    },
    /// `refresh {token}`: a new connection token before the current one
    /// expires.
    Refresh {
        /// The new token.
        token: Cow<'a, str>,
    },
    /// `sub_refresh {channel, token}`: a new subscription token.
    SubRefresh {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// The new token.
        token: Cow<'a, str>,
    },
    /// `unsubscribe {channel}`.
    Unsubscribe {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
    },
    /// `publish {channel, data, idempotency_key?, durable_ack?}`.
    Publish {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// The payload.
        data: Data<'a>,
        /// Deduplication key for retried publishes (1..=256 bytes).
        idempotency_key: Option<Cow<'a, str>>,
        /// Answer only once the durable sink (or the synced spill) has
        /// the publication's event.
        durable_ack: bool,
    },
    /// `history {channel, limit?, since?, reverse?}`.
    History {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// At most this many publications.
        limit: Option<u32>,
        /// Only publications after this position.
        since: Option<Position>,
        /// Newest first.
        reverse: bool,
    },
    /// `presence {channel}`.
    Presence {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
    },
    /// `presence_stats {channel}`.
    PresenceStats {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
    },
    /// `presence_state {channel, state, ttl?}`.
    PresenceState {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// The new state (0..=128 bytes; empty clears it).
        state: Cow<'a, str>,
        /// Seconds until the state expires.
        ttl: Option<u32>,
    },
    /// `ping {}`.
    Ping,
    /// `collab_join {channel, role, queue?, recover?, epoch?, offset?}`:
    /// join a story.
    CollabJoin {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// The role asked for.
        role: CollabRole,
        /// An editor beyond the cap waits in line instead of error 117.
        queue: bool,
        /// Replay the story events missed since `since` (an editor
        /// re-joining after a reconnect).
        recover: bool,
        /// The last position the client saw, as in `subscribe`; always
        /// `Some` when `recover` is set.
        since: Option<Position>,
    },
    /// `collab_leave {channel}`.
    CollabLeave {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
    },
    /// `lock {channel, section, ttl?}`.
    Lock {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// Section id (1..=128 bytes).
        section: Cow<'a, str>,
        /// Seconds the lock lasts unless renewed.
        ttl: Option<u32>,
    },
    /// `unlock {channel, section}`.
    Unlock {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// Section id (1..=128 bytes).
        section: Cow<'a, str>,
    },
    /// `update {channel, section, base_version, data, op_id}`.
    Update {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// Section id (1..=128 bytes).
        section: Cow<'a, str>,
        /// The section version the update was made against.
        base_version: u64,
        /// The new data: JSON text, checked in both forms.
        data: &'a [u8],
        /// Deduplicates resends (1..=64 bytes).
        op_id: Cow<'a, str>,
    },
    /// `rpc {method, data?}`: a request to the backends, answered with
    /// their reply.
    Rpc {
        /// The method: a valid subject suffix ([`rpc::is_valid_rpc_method`]).
        method: Cow<'a, str>,
        /// The payload handed to the backend (empty when absent).
        data: Data<'a>,
    },
    /// `send {data?}`: a message to the backends, with no reply.
    Send {
        /// The payload handed to the backends (empty when absent).
        data: Data<'a>,
    },
}

impl Method<'_> {
    /// The method name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Connect(_) => "connect",
            Method::Subscribe { .. } => "subscribe",
            Method::Unsubscribe { .. } => "unsubscribe",
            Method::Publish { .. } => "publish",
            Method::History { .. } => "history",
            Method::Presence { .. } => "presence",
            Method::PresenceStats { .. } => "presence_stats",
            Method::PresenceState { .. } => "presence_state",
            Method::Refresh { .. } => "refresh",
            Method::SubRefresh { .. } => "sub_refresh",
            Method::Ping => "ping",
            Method::CollabJoin { .. } => "collab_join",
            Method::CollabLeave { .. } => "collab_leave",
            Method::Lock { .. } => "lock",
            Method::Unlock { .. } => "unlock",
            Method::Update { .. } => "update",
            Method::Rpc { .. } => "rpc",
            Method::Send { .. } => "send",
        }
    }
}

/// Longest `idempotency_key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Longest presence state accepted, in bytes.
pub const MAX_PRESENCE_STATE: usize = 128;

// Parameter rules shared by both forms, so they cannot drift apart.

/// A stream position from its optional parts: both or neither.
fn position(epoch: Option<&str>, offset: Option<u64>) -> Result<Option<Position>, ErrorCode> {
    match (epoch, offset) {
        (None, None) => Ok(None),
        (Some(e), Some(offset)) => parse_epoch(e)
            .map(|epoch| Some(Position { epoch, offset }))
            .ok_or(ErrorCode::BadRequest),
        _ => Err(ErrorCode::BadRequest),
    }
}

/// `subscribe`: `recover` needs a position to recover from.
fn subscribe<'a>(
    channel: Cow<'a, str>,
    recover: bool,
    epoch: Option<&str>,
    offset: Option<u64>,
    token: Option<Cow<'a, str>>,
) -> Result<Method<'a>, ErrorCode> {
    let since = position(epoch, offset)?;
    if recover && since.is_none() {
        return Err(ErrorCode::BadRequest);
    }
    Ok(Method::Subscribe {
        channel,
        recover,
        since,
        token: token.filter(|t| !t.is_empty()),
    })
}

/// Longest token or ticket accepted, in bytes.
pub const MAX_TOKEN: usize = 8192;

/// `refresh` and `sub_refresh`: a token is required, 1..=8192 bytes.
fn token(token: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, ErrorCode> {
    match token {
        Some(t) if !t.is_empty() && t.len() <= MAX_TOKEN => Ok(t),
        _ => Err(ErrorCode::BadRequest),
    }
}

/// `publish`: the idempotency key, when given, is 1..=256 bytes.
fn publish<'a>(
    channel: Cow<'a, str>,
    data: Data<'a>,
    idempotency_key: Option<Cow<'a, str>>,
    durable_ack: bool,
) -> Result<Method<'a>, ErrorCode> {
    if let Some(k) = &idempotency_key
        && !(1..=MAX_IDEMPOTENCY_KEY).contains(&k.len())
    {
        return Err(ErrorCode::BadRequest);
    }
    Ok(Method::Publish {
        channel,
        data,
        idempotency_key,
        durable_ack,
    })
}

/// `presence_state`: the state is at most 128 bytes.
fn presence_state<'a>(
    channel: Cow<'a, str>,
    state: Cow<'a, str>,
    ttl: Option<u32>,
) -> Result<Method<'a>, ErrorCode> {
    if state.len() > MAX_PRESENCE_STATE {
        return Err(ErrorCode::BadRequest);
    }
    Ok(Method::PresenceState {
        channel,
        state,
        ttl,
    })
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
        /// The connection's user id (empty when anonymous).
        user: &'a str,
        /// Seconds until the credentials must be refreshed (`None`: they
        /// do not expire); on the wire `expires` and `ttl`.
        ttl: Option<u32>,
    },
    /// Result of `subscribe`: the channel position after which the client
    /// receives every publication, and what recovery replayed.
    Subscribe {
        /// Channel epoch (changes when the channel's history is lost).
        epoch: u64,
        /// Offset of the last publication before the subscription.
        offset: u64,
        /// Whether the channel keeps history a later recovery can use.
        recoverable: bool,
        /// Whether `publications` holds every publication missed since
        /// the position the client gave.
        recovered: bool,
        /// The missed publications, oldest first (empty unless recovering).
        publications: &'a [Publication],
    },
    /// Result of `unsubscribe`.
    Unsubscribe,
    /// Result of `publish`.
    Publish {
        /// Offset assigned to the publication.
        offset: u64,
    },
    /// Result of `history`: the channel's position and the publications
    /// asked for.
    History {
        /// Channel epoch.
        epoch: u64,
        /// Offset of the channel's last publication.
        offset: u64,
        /// The publications, in the order asked for.
        publications: &'a [Publication],
    },
    /// Result of `presence`: every member of the channel.
    Presence {
        /// The members (client ids are unique).
        clients: &'a [PresenceEntry],
    },
    /// Result of `presence_stats`.
    PresenceStats {
        /// Connections present.
        num_clients: u64,
        /// Distinct users among them.
        num_users: u64,
    },
    /// Result of `presence_state`.
    PresenceState,
    /// Result of `refresh` and `sub_refresh`: seconds until the new
    /// credentials must be refreshed again (`None`: they do not expire).
    Refresh {
        /// On the wire `expires` and `ttl`.
        ttl: Option<u32>,
        /// True for `sub_refresh` (the binary form's union member).
        subscription: bool,
    },
    /// Result of `ping`.
    Ping,
    /// An error.
    Error(ErrorCode),
    /// An error that carries more than its code (118, 119).
    ErrorDetail(ErrorDetail<'a>),
    /// Result of `collab_join`: the story snapshot.
    CollabJoin(CollabJoinReply<'a>),
    /// Result of `collab_leave`.
    CollabLeave,
    /// Result of `lock`.
    Lock {
        /// The section locked.
        section: &'a str,
        /// Who holds it (the connection that asked).
        holder: MemberId<'a>,
        /// When it lapses unless renewed: Unix time in milliseconds.
        expires: u64,
    },
    /// Result of `unlock`.
    Unlock,
    /// Result of `update`.
    Update {
        /// The section's version after the update.
        version: u64,
        /// The `op_id` was seen before: nothing was applied again (sent
        /// only when true).
        duplicate: bool,
    },
    /// Result of `rpc`: the backend's reply.
    Rpc {
        /// The reply's bytes.
        data: &'a [u8],
        /// Whether they are JSON text: JSON clients then get them as
        /// `data`, else base64 as `b64data` (as publications).
        is_json: bool,
    },
    /// Result of `send`.
    Send,
    /// An error whose message is not the catalogue's: a backend's own
    /// text (126).
    ErrorMessage {
        /// The code.
        code: ErrorCode,
        /// The message sent in place of [`ErrorCode::message`].
        message: &'a str,
    },
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

/// Parses an epoch from the wire: exactly 16 hex characters (either case;
/// the server sends lowercase).
pub fn parse_epoch(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Builds one server frame holding one or more replies and/or pushes, in the connection's form. Reused across frames to
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
        self.disconnect_text(reason, reason.reason());
    }

    /// Adds a `disconnect` push whose reason text is `text` (a backend's,
    /// through the server API) instead of the catalogue's.
    pub fn disconnect_text(&mut self, reason: CloseReason, text: &str) {
        self.count += 1;
        match self.format {
            WireFormat::Json => self.json.disconnect(reason, text),
            WireFormat::Binary => self.binary.disconnect(reason, text),
        }
    }

    /// Adds a `join` push: `info` subscribed to `channel`.
    pub fn join(&mut self, channel: &str, info: &ClientInfo) {
        self.count += 1;
        match self.format {
            WireFormat::Json => self.json.join(channel, info),
            WireFormat::Binary => self.binary.join(channel, info),
        }
    }

    /// Adds a `leave` push: `info` left `channel`.
    pub fn leave(&mut self, channel: &str, info: &ClientInfo) {
        self.count += 1;
        match self.format {
            WireFormat::Json => self.json.leave(channel, info),
            WireFormat::Binary => self.binary.leave(channel, info),
        }
    }

    /// Adds a `state` push: `info`'s presence state on `channel` is now
    /// `state` (empty = cleared or expired).
    pub fn state(&mut self, channel: &str, info: &ClientInfo, state: &str) {
        self.count += 1;
        match self.format {
            WireFormat::Json => self.json.state(channel, info, state),
            WireFormat::Binary => self.binary.state(channel, info, state),
        }
    }

    /// Adds a `subscribe` push: the server subscribed this connection to
    /// `channel` (server API or personal channel), which is at
    /// `epoch`/`offset`. Same body as the `subscribe` reply, with
    /// `recovered` false and no publications.
    pub fn subscribe_push(&mut self, channel: &str, epoch: u64, offset: u64, recoverable: bool) {
        self.count += 1;
        match self.format {
            WireFormat::Json => self
                .json
                .subscribe_push(channel, epoch, offset, recoverable),
            WireFormat::Binary => self
                .binary
                .subscribe_push(channel, epoch, offset, recoverable),
        }
    }

    /// Adds an `unsubscribe` push: the server unsubscribed this connection
    /// from `channel`.
    pub fn unsubscribe_push(&mut self, channel: &str) {
        self.count += 1;
        match self.format {
            WireFormat::Json => self.json.unsubscribe_push(channel),
            WireFormat::Binary => self.binary.unsubscribe_push(channel),
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
    pub fn finish_with<T>(&mut self, make: impl FnOnce(bool, &[u8]) -> T) -> Option<T> {
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

    #[test]
    fn epoch_parse() {
        let mut b = [0u8; 16];
        for e in [0, 1, 0xab, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(parse_epoch(epoch_str(e, &mut b)), Some(e));
        }
        assert_eq!(parse_epoch("0123456789ABCDEF"), Some(0x0123_4567_89ab_cdef));
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcdef0",
            "+123456789abcdef",
            "-123456789abcdef",
            "0123456789abcdeg",
            " 123456789abcdef",
            "0123456789abcdé",
        ] {
            assert_eq!(parse_epoch(bad), None, "{bad}");
        }
    }

    #[test]
    fn positions_go_together() {
        let p = Position {
            epoch: 0xab,
            offset: 0,
        };
        assert_eq!(position(None, None), Ok(None));
        assert_eq!(position(Some("00000000000000ab"), Some(0)), Ok(Some(p)));
        assert_eq!(
            position(Some("00000000000000ab"), None),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(position(None, Some(0)), Err(ErrorCode::BadRequest));
        assert_eq!(position(Some("ab"), Some(0)), Err(ErrorCode::BadRequest));
    }

    /// The frame `w` finishes: (text?, payload).
    fn finish(w: &mut FrameWriter) -> (bool, Vec<u8>) {
        let mut got = None;
        w.finish_with(|text, p| {
            got = Some((text, p.to_vec()));
            Bytes::new()
        })
        .unwrap();
        got.unwrap()
    }

    #[test]
    fn frame_writer_batches_replies_and_pushes() {
        let bob = fixtures::client("b.2", "bob", None);
        let mut w = FrameWriter::new();
        w.begin(WireFormat::Json);
        assert!(w.is_empty());
        w.reply(1, ReplyBody::Ping);
        w.join("room", &bob);
        w.state("room", &bob, "typing");
        w.leave("room", &bob);
        assert!(!w.is_empty());
        let (text, payload) = finish(&mut w);
        assert!(text);
        let lines: Vec<serde_json::Value> = std::str::from_utf8(&payload)
            .unwrap()
            .split('\n')
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["ping"], serde_json::json!({}));
        assert_eq!(lines[1]["push"]["join"]["info"]["user"], "bob");
        assert_eq!(lines[2]["push"]["state"]["state"], "typing");
        assert_eq!(lines[3]["push"]["leave"]["info"]["client"], "b.2");
        assert!(w.is_empty());

        w.begin(WireFormat::Binary);
        w.join("room", &bob);
        w.reply(2, ReplyBody::PresenceState);
        w.state("room", &bob, "");
        w.leave("room", &bob);
        let (text, payload) = finish(&mut w);
        assert!(!text);
        let sf = flatbuffers::root::<proto::ServerFrame>(&payload).unwrap();
        let msgs = sf.messages().unwrap();
        assert_eq!(msgs.len(), 4);
        assert!(msgs.get(0).push_().unwrap().body_as_join().is_some());
        assert_eq!(msgs.get(1).reply().unwrap().id(), 2);
        assert_eq!(
            msgs.get(2)
                .push_()
                .unwrap()
                .body_as_state()
                .unwrap()
                .state(),
            Some("")
        );
        assert!(msgs.get(3).push_().unwrap().body_as_leave().is_some());
        assert!(w.finish().is_none());
    }

    #[test]
    fn frame_writer_server_side_subscription_pushes() {
        let mut w = FrameWriter::new();
        w.begin(WireFormat::Json);
        w.subscribe_push("#bob", 0xab, 3, true);
        w.unsubscribe_push("#bob");
        let (text, payload) = finish(&mut w);
        assert!(text);
        let lines: Vec<serde_json::Value> = std::str::from_utf8(&payload)
            .unwrap()
            .split('\n')
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["push"]["channel"], "#bob");
        let s = &lines[0]["push"]["subscribe"];
        assert_eq!(s["epoch"], "00000000000000ab");
        assert_eq!(s["offset"], 3);
        assert_eq!(s["recoverable"], true);
        assert_eq!(s["recovered"], false);
        assert_eq!(s["publications"], serde_json::json!([]));
        assert_eq!(lines[1]["push"]["channel"], "#bob");
        assert_eq!(lines[1]["push"]["unsubscribe"], serde_json::json!({}));

        w.begin(WireFormat::Binary);
        w.subscribe_push("#bob", 0xab, 3, true);
        w.unsubscribe_push("#bob");
        let (text, payload) = finish(&mut w);
        assert!(!text);
        let sf = flatbuffers::root::<proto::ServerFrame>(&payload).unwrap();
        let msgs = sf.messages().unwrap();
        assert_eq!(msgs.len(), 2);
        let p = msgs.get(0).push_().unwrap();
        assert_eq!(p.channel(), Some("#bob"));
        let s = p.body_as_subscribe().unwrap();
        assert_eq!((s.epoch(), s.offset()), (Some("00000000000000ab"), 3));
        assert!(s.recoverable() && !s.recovered());
        assert_eq!(s.publications().unwrap().len(), 0);
        let p = msgs.get(1).push_().unwrap();
        assert_eq!(p.channel(), Some("#bob"));
        assert!(p.body_as_unsubscribe().is_some());
        assert!(w.finish().is_none());
    }
}
