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

use super::{Command, ConnectParams, Data, MalformedFrame, Method, ReplyBody, epoch_str};
use crate::engine::codes::{CloseReason, ErrorCode};

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
}

#[derive(Deserialize)]
struct ChannelJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
}

#[derive(Deserialize)]
struct PublishJson<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn method<'a>(name: &str, params: &'a RawValue) -> Result<Method<'a>, ErrorCode> {
    let bad = |_| ErrorCode::BadRequest;
    let p = params.get();
    Ok(match name {
        "connect" => {
            let c: ConnectJson<'a> = serde_json::from_str(p).map_err(bad)?;
            Method::Connect(ConnectParams {
                token: c.token,
                name: c.name,
                version: c.version,
            })
        }
        "subscribe" => Method::Subscribe {
            channel: serde_json::from_str::<ChannelJson<'a>>(p)
                .map_err(bad)?
                .channel,
        },
        "unsubscribe" => Method::Unsubscribe {
            channel: serde_json::from_str::<ChannelJson<'a>>(p)
                .map_err(bad)?
                .channel,
        },
        "publish" => {
            let pj: PublishJson<'a> = serde_json::from_str(p).map_err(bad)?;
            Method::Publish {
                channel: pj.channel,
                data: Data::Json(pj.data.get().as_bytes()),
            }
        }
        "ping" => {
            serde_json::from_str::<IgnoredAny>(p).map_err(bad)?;
            Method::Ping
        }
        _ => return Err(ErrorCode::UnknownMethod),
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

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends one reply object (no separator).
pub fn write_reply(out: &mut Vec<u8>, id: u32, body: ReplyBody<'_>) {
    out.extend_from_slice(b"{\"id\":");
    push_u64(out, id as u64);
    match body {
        ReplyBody::Connect { client, node, ping } => {
            out.extend_from_slice(b",\"connect\":{\"client\":");
            push_json_str(out, client);
            out.extend_from_slice(b",\"node\":");
            push_json_str(out, node);
            out.extend_from_slice(b",\"ping\":");
            push_u64(out, ping as u64);
            out.push(b'}');
        }
        ReplyBody::Subscribe { epoch, offset } => {
            let mut eb = [0u8; 16];
            out.extend_from_slice(b",\"subscribe\":{\"epoch\":\"");
            out.extend_from_slice(epoch_str(epoch, &mut eb).as_bytes());
            out.extend_from_slice(b"\",\"offset\":");
            push_u64(out, offset);
            out.push(b'}');
        }
        ReplyBody::Unsubscribe => out.extend_from_slice(b",\"unsubscribe\":{}"),
        ReplyBody::Publish { offset } => {
            out.extend_from_slice(b",\"publish\":{\"offset\":");
            push_u64(out, offset);
            out.push(b'}');
        }
        ReplyBody::Ping => out.extend_from_slice(b",\"ping\":{}"),
        ReplyBody::Error(code) => {
            out.extend_from_slice(b",\"error\":{\"code\":");
            push_u64(out, code.code() as u64);
            out.extend_from_slice(b",\"message\":");
            push_json_str(out, code.message());
            out.extend_from_slice(b",\"temporary\":");
            out.extend_from_slice(if code.temporary() { b"true" } else { b"false" });
            out.push(b'}');
        }
    }
    out.push(b'}');
}

/// Appends a `disconnect` push object.
pub fn write_disconnect(out: &mut Vec<u8>, reason: CloseReason) {
    out.extend_from_slice(b"{\"push\":{\"disconnect\":{\"code\":");
    push_u64(out, reason.code() as u64);
    out.extend_from_slice(b",\"reason\":");
    push_json_str(out, reason.reason());
    out.extend_from_slice(b",\"reconnect\":");
    out.extend_from_slice(if reason.reconnect() {
        b"true"
    } else {
        b"false"
    });
    out.extend_from_slice(b"}}}");
}

/// Appends a `pub` push object. `data` is embedded as-is when it is JSON,
/// otherwise base64-encoded under `b64data`.
pub fn write_pub(out: &mut Vec<u8>, channel: &str, offset: u64, data: &[u8], data_is_json: bool) {
    out.extend_from_slice(b"{\"push\":{\"channel\":");
    push_json_str(out, channel);
    out.extend_from_slice(b",\"pub\":{\"offset\":");
    push_u64(out, offset);
    if data_is_json {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
    } else {
        use base64::Engine as _;
        out.extend_from_slice(b",\"b64data\":\"");
        let start = out.len();
        let n = base64::encoded_len(data.len(), true).expect("length fits");
        out.resize(start + n, 0);
        base64::engine::general_purpose::STANDARD
            .encode_slice(data, &mut out[start..])
            .expect("buffer sized exactly");
        out.push(b'"');
    }
    out.extend_from_slice(b"}}}");
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

    /// Adds a disconnect push.
    pub fn disconnect(&mut self, reason: CloseReason) {
        self.sep();
        write_disconnect(&mut self.payload, reason);
    }

    /// The frame's payload so far (cleared by the next `begin`).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Vec<Command<'_>>, MalformedFrame> {
        let mut v = Vec::new();
        decode_commands(s.as_bytes(), |c| v.push(c))?;
        Ok(v)
    }

    #[test]
    fn decodes_every_method() {
        let cmds = decode(concat!(
            "{\"id\":1,\"connect\":{\"token\":\"t\",\"name\":\"app\"}}\n",
            "{\"id\":2,\"subscribe\":{\"channel\":\"chat:1\"}}\n",
            "{\"publish\":{\"channel\":\"chat:\\u0031\",\"data\":{\"a\":[1,2]}},\"id\":3}\n",
            "{\"id\":4,\"unsubscribe\":{\"channel\":\"chat:1\"}}\n",
            "{\"id\":5,\"ping\":{}}\n"
        ))
        .unwrap();
        assert_eq!(cmds.len(), 5);
        assert_eq!(cmds[0].id, 1);
        match &cmds[0].method {
            Ok(Method::Connect(p)) => {
                assert_eq!(p.token.as_deref(), Some("t"));
                assert_eq!(p.name.as_deref(), Some("app"));
                assert_eq!(p.version, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            cmds[1].method,
            Ok(Method::Subscribe {
                channel: "chat:1".into()
            })
        );
        assert_eq!(
            cmds[2].method,
            Ok(Method::Publish {
                channel: "chat:1".into(),
                data: Data::Json(b"{\"a\":[1,2]}")
            })
        );
        assert_eq!(cmds[4].method, Ok(Method::Ping));
    }

    #[test]
    fn per_command_errors_keep_the_id() {
        let cmds =
            decode("{\"id\":7,\"teleport\":{}}\n{\"id\":8,\"subscribe\":{}}\n{\"id\":9}").unwrap();
        assert_eq!(cmds[0].method, Err(ErrorCode::UnknownMethod));
        assert_eq!(cmds[1].method, Err(ErrorCode::BadRequest));
        assert_eq!(cmds[2].method, Err(ErrorCode::BadRequest));
        assert_eq!(cmds.iter().map(|c| c.id).collect::<Vec<_>>(), vec![7, 8, 9]);
    }

    #[test]
    fn malformed_frames() {
        assert!(decode("not json").is_err());
        assert!(decode("[1,2]").is_err());
        assert!(decode("{\"id\":-1,\"ping\":{}}").is_err());
        assert!(decode("").is_err());
        assert!(decode("{\"id\":1,\"ping\":{}}\n{").is_err());
    }

    #[test]
    fn reply_and_push_shapes() {
        let mut out = Vec::new();
        write_reply(
            &mut out,
            3,
            ReplyBody::Subscribe {
                epoch: 0xab,
                offset: 7,
            },
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"id":3,"subscribe":{"epoch":"00000000000000ab","offset":7}}"#
        );
        out.clear();
        write_reply(&mut out, 4, ReplyBody::Error(ErrorCode::UnknownMethod));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["code"], 104);
        assert_eq!(v["error"]["temporary"], false);
        out.clear();
        write_pub(&mut out, "a\"b", 9, br#"{"x":1}"#, true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["push"]["channel"], "a\"b");
        assert_eq!(v["push"]["pub"]["offset"], 9);
        assert_eq!(v["push"]["pub"]["data"]["x"], 1);
        out.clear();
        write_pub(&mut out, "c", 1, &[0xff, 0x00], false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["push"]["pub"]["b64data"], "/wA=");
        out.clear();
        write_disconnect(&mut out, CloseReason::SlowConsumer);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["push"]["disconnect"]["code"], 3002);
        assert_eq!(v["push"]["disconnect"]["reconnect"], true);
    }
}
