//! The JSON form of the wire protocol: one or more JSON objects per text
//! frame, separated by `\n`, in either direction.
//!
//! Command: `{"id": N, "<method>": {params}}`. Reply: `{"id": N,
//! "<method>": {result}}` or `{"id": N, "error": {...}}`. Push:
//! `{"push": {"channel": "…", "<type>": {…}}}`.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::publication::Publication;
use super::{
    ClientInfo, Command, ConnectParams, Data, MalformedFrame, Method, PresenceEntry, ReplyBody,
    epoch_str,
};
use crate::engine::codes::{CloseReason, ErrorCode};

pub(super) mod collab;

/// One command object before its parameters are interpreted.
struct RawCommand<'a> {
    id: u32,
    /// The method key and its raw parameters; `None` if no method key.
    method: Option<(Cow<'a, str>, &'a RawValue)>,
    /// More than one method key.
    ambiguous: bool,
}

impl<'de> Deserialize<'de> for RawCommand<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommand<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut id = None;
                let mut method: Option<(Cow<'de, str>, &'de RawValue)> = None;
                let mut ambiguous = false;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "id" {
                        if id.is_some() {
                            return Err(de::Error::duplicate_field("id"));
                        }
                        id = Some(map.next_value::<u32>()?);
                    } else {
                        let params = map.next_value::<&'de RawValue>()?;
                        if method.is_some() {
                            ambiguous = true;
                        } else {
                            method = Some((key, params));
                        }
                    }
                }
                Ok(RawCommand {
                    id: id.unwrap_or(0),
                    method,
                    ambiguous,
                })
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct ConnectJson<'a> {
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ticket: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RefreshJson<'a> {
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SubRefreshJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChannelJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
}

#[derive(Deserialize)]
struct SubscribeJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(default)]
    recover: bool,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PublishJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default)]
    durable_ack: bool,
}

#[derive(Deserialize)]
struct RpcJson<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SendJson<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// A backend call's payload: the JSON text given, or empty when absent.
fn call_data(data: Option<&RawValue>) -> Data<'_> {
    Data::Json(data.map_or(&[][..], |d| d.get().as_bytes()))
}

#[derive(Deserialize)]
struct PositionJson<'a> {
    #[serde(borrow)]
    epoch: Cow<'a, str>,
    offset: u64,
}

#[derive(Deserialize)]
struct HistoryJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(borrow, default)]
    since: Option<PositionJson<'a>>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct PresenceStateJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    state: Cow<'a, str>,
    #[serde(default)]
    ttl: Option<u32>,
}

fn method<'a>(name: &str, params: &'a RawValue) -> Result<Method<'a>, ErrorCode> {
    let bad = |_| ErrorCode::BadRequest;
    let p = params.get();
    let channel = || -> Result<Cow<'a, str>, ErrorCode> {
        Ok(serde_json::from_str::<ChannelJson<'a>>(p)
            .map_err(bad)?
            .channel)
    };
    Ok(match name {
        "connect" => {
            let c: ConnectJson<'a> = serde_json::from_str(p).map_err(bad)?;
            Method::Connect(ConnectParams {
                token: c.token,
                name: c.name,
                version: c.version,
                user: c.user,
                info: c.info.map(|i| i.get().as_bytes()),
                ticket: c.ticket,
            })
        }
        "subscribe" => {
            let s: SubscribeJson<'a> = serde_json::from_str(p).map_err(bad)?;
            super::subscribe(s.channel, s.recover, s.epoch.as_deref(), s.offset, s.token)?
        }
        "unsubscribe" => Method::Unsubscribe {
            channel: channel()?,
        },
        "publish" => {
            let pj: PublishJson<'a> = serde_json::from_str(p).map_err(bad)?;
            let data = Data::Json(pj.data.get().as_bytes());
            super::publish(pj.channel, data, pj.idempotency_key, pj.durable_ack)?
        }
        "history" => {
            let h: HistoryJson<'a> = serde_json::from_str(p).map_err(bad)?;
            let since = match &h.since {
                Some(s) => super::position(Some(&s.epoch), Some(s.offset))?,
                None => None,
            };
            Method::History {
                channel: h.channel,
                limit: h.limit,
                since,
                reverse: h.reverse,
            }
        }
        "presence" => Method::Presence {
            channel: channel()?,
        },
        "presence_stats" => Method::PresenceStats {
            channel: channel()?,
        },
        "presence_state" => {
            let s: PresenceStateJson<'a> = serde_json::from_str(p).map_err(bad)?;
            super::presence_state(s.channel, s.state, s.ttl)?
        }
        "refresh" => {
            let r: RefreshJson<'a> = serde_json::from_str(p).map_err(bad)?;
            Method::Refresh {
                token: super::token(r.token)?,
            }
        }
        "sub_refresh" => {
            let r: SubRefreshJson<'a> = serde_json::from_str(p).map_err(bad)?;
            Method::SubRefresh {
                channel: r.channel,
                token: super::token(r.token)?,
            }
        }
        "ping" => {
            serde_json::from_str::<IgnoredAny>(p).map_err(bad)?;
            Method::Ping
        }
        "rpc" => {
            let r: RpcJson<'a> = serde_json::from_str(p).map_err(bad)?;
            super::rpc::rpc(r.method, call_data(r.data))?
        }
        "send" => {
            let s: SendJson<'a> = serde_json::from_str(p).map_err(bad)?;
            Method::Send {
                data: call_data(s.data),
            }
        }
        other => return collab::method(other, p).unwrap_or(Err(ErrorCode::UnknownMethod)),
    })
}

/// Decodes the commands of one text message.
pub fn decode_commands<'a>(
    payload: &'a [u8],
    mut f: impl FnMut(Command<'a>),
) -> Result<(), MalformedFrame> {
    let text = std::str::from_utf8(payload).map_err(|e| MalformedFrame(e.to_string()))?;
    let mut any = false;
    for line in text.split('\n') {
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawCommand<'a> =
            serde_json::from_str(line).map_err(|e| MalformedFrame(e.to_string()))?;
        any = true;
        let method = match (&raw.method, raw.ambiguous) {
            (_, true) | (None, _) => Err(ErrorCode::BadRequest),
            (Some((name, params)), false) => method(name, params),
        };
        f(Command { id: raw.id, method });
    }
    if !any {
        return Err(MalformedFrame("empty frame".into()));
    }
    Ok(())
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// `"expires":true,"ttl":N` or `"expires":false`.
fn push_expiry(out: &mut Vec<u8>, ttl: Option<u32>) {
    match ttl {
        Some(t) => {
            out.extend_from_slice(b"\"expires\":true,\"ttl\":");
            push_u64(out, t as u64);
        }
        None => out.extend_from_slice(b"\"expires\":false"),
    }
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends one reply object (no separator).
pub fn write_reply(out: &mut Vec<u8>, id: u32, body: ReplyBody<'_>) {
    out.extend_from_slice(b"{\"id\":");
    push_u64(out, id as u64);
    match body {
        ReplyBody::Connect {
            client,
            node,
            ping,
            user,
            ttl,
        } => {
            out.extend_from_slice(b",\"connect\":{\"client\":");
            push_json_str(out, client);
            out.extend_from_slice(b",\"node\":");
            push_json_str(out, node);
            out.extend_from_slice(b",\"ping\":");
            push_u64(out, ping as u64);
            out.extend_from_slice(b",\"user\":");
            push_json_str(out, user);
            out.push(b',');
            push_expiry(out, ttl);
            out.push(b'}');
        }
        ReplyBody::Refresh { ttl, subscription } => {
            out.extend_from_slice(if subscription {
                b",\"sub_refresh\":{"
            } else {
                b",\"refresh\":{"
            });
            push_expiry(out, ttl);
            out.push(b'}');
        }
        ReplyBody::Subscribe {
            epoch,
            offset,
            recoverable,
            recovered,
            publications,
        } => {
            out.extend_from_slice(b",\"subscribe\":");
            push_subscribe_body(out, epoch, offset, recoverable, recovered, publications);
        }
        ReplyBody::Unsubscribe => out.extend_from_slice(b",\"unsubscribe\":{}"),
        ReplyBody::Publish { offset } => {
            out.extend_from_slice(b",\"publish\":{\"offset\":");
            push_u64(out, offset);
            out.push(b'}');
        }
        ReplyBody::History {
            epoch,
            offset,
            publications,
        } => {
            out.extend_from_slice(b",\"history\":{\"publications\":");
            push_publications(out, publications);
            out.push(b',');
            push_position(out, epoch, offset);
            out.push(b'}');
        }
        ReplyBody::Presence { clients } => {
            out.extend_from_slice(b",\"presence\":{\"clients\":{");
            for (i, entry) in clients.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json_str(out, &entry.info.client);
                out.push(b':');
                push_presence_entry(out, entry);
            }
            out.extend_from_slice(b"}}");
        }
        ReplyBody::PresenceStats {
            num_clients,
            num_users,
        } => {
            out.extend_from_slice(b",\"presence_stats\":{\"num_clients\":");
            push_u64(out, num_clients);
            out.extend_from_slice(b",\"num_users\":");
            push_u64(out, num_users);
            out.push(b'}');
        }
        ReplyBody::PresenceState => out.extend_from_slice(b",\"presence_state\":{}"),
        ReplyBody::Ping => out.extend_from_slice(b",\"ping\":{}"),
        ReplyBody::Error(code) => {
            push_error_fields(out, code, code.message());
            out.push(b'}');
        }
        ReplyBody::ErrorMessage { code, message } => {
            push_error_fields(out, code, message);
            out.push(b'}');
        }
        ReplyBody::ErrorDetail(detail) => {
            push_error_fields(out, detail.code(), detail.code().message());
            collab::write_error_detail(out, &detail);
            out.push(b'}');
        }
        ReplyBody::CollabJoin(r) => collab::write_join_reply(out, &r),
        ReplyBody::CollabLeave => out.extend_from_slice(b",\"collab_leave\":{}"),
        ReplyBody::Lock {
            section,
            holder,
            expires,
        } => collab::write_lock_reply(out, section, holder, expires),
        ReplyBody::Unlock => out.extend_from_slice(b",\"unlock\":{}"),
        ReplyBody::Update { version, duplicate } => {
            collab::write_update_reply(out, version, duplicate)
        }
        ReplyBody::Rpc { data, is_json } => {
            out.extend_from_slice(b",\"rpc\":{");
            push_data_field(out, data, is_json);
            out.push(b'}');
        }
        ReplyBody::Send => out.extend_from_slice(b",\"send\":{}"),
    }
    out.push(b'}');
}

/// `,"error":{"code":N,"message":…,"temporary":…` — the caller adds any
/// extra fields and `}`.
fn push_error_fields(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(b",\"error\":{\"code\":");
    push_u64(out, code.code() as u64);
    out.extend_from_slice(b",\"message\":");
    push_json_str(out, message);
    out.extend_from_slice(b",\"temporary\":");
    push_bool(out, code.temporary());
}

/// Appends a `disconnect` push object.
pub fn write_disconnect(out: &mut Vec<u8>, reason: CloseReason, text: &str) {
    out.extend_from_slice(b"{\"push\":{\"disconnect\":{\"code\":");
    push_u64(out, reason.code() as u64);
    out.extend_from_slice(b",\"reason\":");
    push_json_str(out, text);
    out.extend_from_slice(b",\"reconnect\":");
    push_bool(out, reason.reconnect());
    out.extend_from_slice(b"}}}");
}

/// Appends a `pub` push object. `data` is embedded as-is when it is JSON,
/// otherwise base64-encoded under `b64data`.
pub fn write_pub(out: &mut Vec<u8>, channel: &str, offset: u64, data: &[u8], data_is_json: bool) {
    push_head(out, channel);
    out.extend_from_slice(b",\"pub\":");
    push_publication(out, offset, data, data_is_json);
    out.extend_from_slice(b"}}");
}

/// Appends a `join` push object.
pub fn write_join(out: &mut Vec<u8>, channel: &str, info: &ClientInfo) {
    push_head(out, channel);
    out.extend_from_slice(b",\"join\":{\"info\":");
    push_client_info(out, info);
    out.extend_from_slice(b"}}}");
}

/// Appends a `leave` push object.
pub fn write_leave(out: &mut Vec<u8>, channel: &str, info: &ClientInfo) {
    push_head(out, channel);
    out.extend_from_slice(b",\"leave\":{\"info\":");
    push_client_info(out, info);
    out.extend_from_slice(b"}}}");
}

/// Appends a `state` push object (`state` empty = cleared or expired).
pub fn write_state(out: &mut Vec<u8>, channel: &str, info: &ClientInfo, state: &str) {
    push_head(out, channel);
    out.extend_from_slice(b",\"state\":{\"info\":");
    push_client_info(out, info);
    out.extend_from_slice(b",\"state\":");
    push_json_str(out, state);
    out.extend_from_slice(b"}}}");
}

/// Appends a `subscribe` push object: the server subscribed this
/// connection to `channel`. The body is the `subscribe` reply's, with
/// nothing recovered.
pub fn write_subscribe_push(
    out: &mut Vec<u8>,
    channel: &str,
    epoch: u64,
    offset: u64,
    recoverable: bool,
) {
    push_head(out, channel);
    out.extend_from_slice(b",\"subscribe\":");
    push_subscribe_body(out, epoch, offset, recoverable, false, &[]);
    out.extend_from_slice(b"}}");
}

/// Appends an `unsubscribe` push object: the server unsubscribed this
/// connection from `channel`.
pub fn write_unsubscribe_push(out: &mut Vec<u8>, channel: &str) {
    push_head(out, channel);
    out.extend_from_slice(b",\"unsubscribe\":{}}}");
}

fn push_bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// `"epoch":"<hex>","offset":N`.
fn push_position(out: &mut Vec<u8>, epoch: u64, offset: u64) {
    let mut eb = [0u8; 16];
    out.extend_from_slice(b"\"epoch\":\"");
    out.extend_from_slice(epoch_str(epoch, &mut eb).as_bytes());
    out.extend_from_slice(b"\",\"offset\":");
    push_u64(out, offset);
}

/// The body of a `subscribe` reply or push: `{"epoch":"<hex>","offset":N,
/// "recoverable":…,"recovered":…,"publications":[…]}`.
fn push_subscribe_body(
    out: &mut Vec<u8>,
    epoch: u64,
    offset: u64,
    recoverable: bool,
    recovered: bool,
    publications: &[Publication],
) {
    out.push(b'{');
    push_position(out, epoch, offset);
    out.extend_from_slice(b",\"recoverable\":");
    push_bool(out, recoverable);
    out.extend_from_slice(b",\"recovered\":");
    push_bool(out, recovered);
    out.extend_from_slice(b",\"publications\":");
    push_publications(out, publications);
    out.push(b'}');
}

/// `{"push":{"channel":"…"` — the caller adds the body and `}}`.
fn push_head(out: &mut Vec<u8>, channel: &str) {
    out.extend_from_slice(b"{\"push\":{\"channel\":");
    push_json_str(out, channel);
}

/// `[{publication}, …]`.
fn push_publications(out: &mut Vec<u8>, pubs: &[Publication]) {
    out.push(b'[');
    for (i, p) in pubs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_publication(out, p.offset, &p.data.bytes, p.data.is_json);
    }
    out.push(b']');
}

/// `{"user":…,"client":…,"info"?:…}`.
fn push_client_info(out: &mut Vec<u8>, info: &ClientInfo) {
    push_client_info_fields(out, info);
    out.push(b'}');
}

/// `{"user":…,"client":…,"info"?:…,"state"?:…}`.
fn push_presence_entry(out: &mut Vec<u8>, entry: &PresenceEntry) {
    push_client_info_fields(out, &entry.info);
    if let Some(state) = &entry.state {
        out.extend_from_slice(b",\"state\":");
        push_json_str(out, state);
    }
    out.push(b'}');
}

/// Appends JSON text that was validated when it came in, as-is except
/// that a raw line feed becomes a space: outside strings it is
/// insignificant whitespace (JSON strings cannot hold one), and inside a
/// frame it would split the `\n`-separated objects. Only text from the
/// binary form can hold one.
fn push_raw_json(out: &mut Vec<u8>, json: &[u8]) {
    let start = out.len();
    out.extend_from_slice(json);
    if json.contains(&b'\n') {
        for b in &mut out[start..] {
            if *b == b'\n' {
                *b = b' ';
            }
        }
    }
}

/// A client info object without its closing brace; `info` (JSON text) is
/// embedded as-is.
fn push_client_info_fields(out: &mut Vec<u8>, info: &ClientInfo) {
    out.extend_from_slice(b"{\"user\":");
    push_json_str(out, &info.user);
    out.extend_from_slice(b",\"client\":");
    push_json_str(out, &info.client);
    if let Some(i) = &info.info {
        out.extend_from_slice(b",\"info\":");
        push_raw_json(out, i);
    }
}

/// One publication object: `{"offset":N,"data":…}` when `data` is JSON,
/// else `{"offset":N,"b64data":"…"}`.
fn push_publication(out: &mut Vec<u8>, offset: u64, data: &[u8], data_is_json: bool) {
    out.extend_from_slice(b"{\"offset\":");
    push_u64(out, offset);
    out.push(b',');
    push_data_field(out, data, data_is_json);
    out.push(b'}');
}

/// `"data":…` when `data` is JSON text, else `"b64data":"…"` (standard
/// base64): how a publication's or a backend reply's bytes reach a JSON
/// client.
fn push_data_field(out: &mut Vec<u8>, data: &[u8], data_is_json: bool) {
    if data_is_json {
        out.extend_from_slice(b"\"data\":");
        push_raw_json(out, data);
    } else {
        use base64::Engine as _;
        out.extend_from_slice(b"\"b64data\":\"");
        let start = out.len();
        let n = base64::encoded_len(data.len(), true).expect("length fits");
        out.resize(start + n, 0);
        base64::engine::general_purpose::STANDARD
            .encode_slice(data, &mut out[start..])
            .expect("buffer sized exactly");
        out.push(b'"');
    }
}

/// Accumulates JSON objects for one text frame.
#[derive(Default)]
pub struct JsonWriter {
    payload: Vec<u8>,
}

impl JsonWriter {
    /// Starts a new frame.
    pub fn begin(&mut self) {
        self.payload.clear();
    }

    fn sep(&mut self) {
        if !self.payload.is_empty() {
            self.payload.push(b'\n');
        }
    }

    /// Adds a reply.
    pub fn reply(&mut self, id: u32, body: ReplyBody<'_>) {
        self.sep();
        write_reply(&mut self.payload, id, body);
    }

    /// Adds a disconnect push with `text` as its reason.
    pub fn disconnect(&mut self, reason: CloseReason, text: &str) {
        self.sep();
        write_disconnect(&mut self.payload, reason, text);
    }

    /// Adds a join push.
    pub fn join(&mut self, channel: &str, info: &ClientInfo) {
        self.sep();
        write_join(&mut self.payload, channel, info);
    }

    /// Adds a leave push.
    pub fn leave(&mut self, channel: &str, info: &ClientInfo) {
        self.sep();
        write_leave(&mut self.payload, channel, info);
    }

    /// Adds a state push.
    pub fn state(&mut self, channel: &str, info: &ClientInfo, state: &str) {
        self.sep();
        write_state(&mut self.payload, channel, info, state);
    }

    /// Adds a `subscribe` push (server-side subscription).
    pub fn subscribe_push(&mut self, channel: &str, epoch: u64, offset: u64, recoverable: bool) {
        self.sep();
        write_subscribe_push(&mut self.payload, channel, epoch, offset, recoverable);
    }

    /// Adds an `unsubscribe` push (server-side unsubscription).
    pub fn unsubscribe_push(&mut self, channel: &str) {
        self.sep();
        write_unsubscribe_push(&mut self.payload, channel);
    }

    /// The payload, with a separator when it already holds an object, for
    /// the caller to append one more object to.
    pub(super) fn next_object(&mut self) -> &mut Vec<u8> {
        self.sep();
        &mut self.payload
    }

    /// The frame's payload so far (cleared by the next `begin`).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

#[cfg(test)]
mod tests;
