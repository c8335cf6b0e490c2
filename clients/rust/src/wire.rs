//! The JSON wire form (subprotocol `edu-matrix-v1.json`): commands out,
//! replies and pushes in. No I/O here.
//!
//! A text frame holds one or more JSON objects separated by `\n`:
//! `{"id": N, "<method>": {params}}` out; `{"id": N, "<method>": {result}}`,
//! `{"id": N, "error": {code, message, temporary}}` and
//! `{"push": {"channel": C, "<type>": {body}}}` in.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::error::ServerError;
use crate::types::{
    ClientInfo, ConnectInfo, Data, HistoryResult, PresenceEntry, PresenceResult, Publication, Push,
    StreamPosition,
};

/// The subprotocol of the JSON form.
pub const SUBPROTOCOL: &str = "edu-matrix-v1.json";

/// One object received.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to command `id`.
    Reply {
        /// The command's id.
        id: u32,
        /// Its result object, or its error.
        result: Result<Value, ServerError>,
    },
    /// A push.
    Push {
        /// The channel (`""` when the push has none: `disconnect`).
        channel: String,
        /// The push type (`pub`, `join`, `disconnect`...).
        kind: String,
        /// Its body.
        body: Value,
    },
}

/// One command as a line of JSON text. `method` is one of the protocol's
/// method names (no escaping needed); `params` an object.
pub fn command(id: u32, method: &str, params: &Value) -> String {
    format!("{{\"id\":{id},\"{method}\":{params}}}")
}

/// Splits a text frame into its objects.
pub fn parse_frame(text: &str) -> Result<Vec<Incoming>, String> {
    text.split('\n')
        .filter(|line| !line.trim().is_empty())
        .map(parse_object)
        .collect()
}

fn parse_object(line: &str) -> Result<Incoming, String> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line:.200}"))?;
    let Value::Object(mut obj) = value else {
        return Err(format!("not an object: {line:.200}"));
    };
    if let Some(push) = obj.remove("push") {
        let Value::Object(mut push) = push else {
            return Err(format!("push is not an object: {line:.200}"));
        };
        let channel = match push.remove("channel") {
            Some(Value::String(c)) => c,
            None => String::new(),
            Some(_) => return Err(format!("push channel is not a string: {line:.200}")),
        };
        let (kind, body) = single_entry(push).ok_or_else(|| format!("push type: {line:.200}"))?;
        return Ok(Incoming::Push {
            channel,
            kind,
            body,
        });
    }
    let id = obj
        .remove("id")
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("neither a reply nor a push: {line:.200}"))?;
    let (key, body) = single_entry(obj).ok_or_else(|| format!("reply method: {line:.200}"))?;
    let result = if key == "error" {
        Err(server_error(body))
    } else {
        Ok(body)
    };
    Ok(Incoming::Reply { id, result })
}

/// The one key/value pair of an object.
fn single_entry(obj: Map<String, Value>) -> Option<(String, Value)> {
    let mut entries = obj.into_iter();
    let entry = entries.next()?;
    entries.next().is_none().then_some(entry)
}

fn server_error(body: Value) -> ServerError {
    let mut obj = match body {
        Value::Object(o) => o,
        other => {
            let mut o = Map::new();
            o.insert("message".into(), other);
            o
        }
    };
    let code = obj.remove("code").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    let message = match obj.remove("message") {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let temporary = obj
        .remove("temporary")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    ServerError {
        code,
        message,
        temporary,
        details: obj,
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name)
        .ok_or_else(|| format!("missing {name:?} in {v:.200}"))
}

fn u64_field(v: &Value, name: &str) -> Result<u64, String> {
    field(v, name)?
        .as_u64()
        .ok_or_else(|| format!("{name:?} is not an unsigned integer in {v:.200}"))
}

fn str_field(v: &Value, name: &str) -> Result<String, String> {
    field(v, name)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{name:?} is not a string in {v:.200}"))
}

fn bool_field(v: &Value, name: &str) -> bool {
    v.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// `{"data": <json>}` or `{"b64data": "<base64>"}` (the rpc result and
/// the publication body).
pub fn data(v: &Value) -> Result<Data, String> {
    if let Some(d) = v.get("data") {
        return Ok(Data::Json(d.clone()));
    }
    match v.get("b64data") {
        Some(Value::String(s)) => STANDARD
            .decode(s)
            .map(Data::Bytes)
            .map_err(|e| format!("b64data ({e}) in {v:.200}")),
        _ => Err(format!("neither data nor b64data in {v:.200}")),
    }
}

/// A publication: `{"offset": N, "data": ...}` or `{"offset": N, "b64data": ...}`.
pub fn publication(v: &Value) -> Result<Publication, String> {
    Ok(Publication {
        offset: v.get("offset").and_then(Value::as_u64).unwrap_or(0),
        data: data(v)?,
    })
}

fn publications(v: &Value) -> Result<Vec<Publication>, String> {
    match v.get("publications") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(publication).collect(),
        Some(other) => Err(format!("publications is not an array: {other:.200}")),
    }
}

/// `{user, client, info?}`.
pub fn client_info(v: &Value) -> Result<ClientInfo, String> {
    Ok(ClientInfo {
        user: str_field(v, "user")?,
        client: str_field(v, "client")?,
        info: v.get("info").cloned(),
    })
}

/// The `subscribe` reply (and push) body.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeResult {
    pub position: StreamPosition,
    pub recoverable: bool,
    pub recovered: bool,
    pub publications: Vec<Publication>,
}

/// Reads a `subscribe` reply or push body.
pub fn subscribe_result(v: &Value) -> Result<SubscribeResult, String> {
    Ok(SubscribeResult {
        position: StreamPosition {
            epoch: str_field(v, "epoch")?,
            offset: u64_field(v, "offset")?,
        },
        recoverable: bool_field(v, "recoverable"),
        recovered: bool_field(v, "recovered"),
        publications: publications(v)?,
    })
}

/// Reads the `connect` reply.
pub fn connect_info(v: &Value) -> Result<ConnectInfo, String> {
    Ok(ConnectInfo {
        client: str_field(v, "client")?,
        node: v.get("node").and_then(Value::as_str).unwrap_or("").into(),
        user: v.get("user").and_then(Value::as_str).unwrap_or("").into(),
        ping: v.get("ping").and_then(Value::as_u64).unwrap_or(0),
        expires: bool_field(v, "expires"),
        ttl: v.get("ttl").and_then(Value::as_u64),
    })
}

/// Reads the `history` reply.
pub fn history_result(v: &Value) -> Result<HistoryResult, String> {
    Ok(HistoryResult {
        publications: publications(v)?,
        epoch: str_field(v, "epoch")?,
        offset: u64_field(v, "offset")?,
    })
}

/// Reads the `presence` reply.
pub fn presence_result(v: &Value) -> Result<PresenceResult, String> {
    let Some(Value::Object(clients)) = v.get("clients") else {
        return Err(format!("clients is not an object in {v:.200}"));
    };
    clients
        .iter()
        .map(|(id, entry)| {
            Ok((
                id.clone(),
                PresenceEntry {
                    info: client_info(entry)?,
                    state: entry
                        .get("state")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                },
            ))
        })
        .collect()
}

/// A typed push (the `disconnect` push is read by the driver itself).
pub fn push(kind: &str, body: Value) -> Result<Push, String> {
    Ok(match kind {
        "pub" => Push::Publication(publication(&body)?),
        "join" => Push::Join(client_info(field(&body, "info")?)?),
        "leave" => Push::Leave(client_info(field(&body, "info")?)?),
        "state" => Push::State {
            info: client_info(field(&body, "info")?)?,
            state: str_field(&body, "state")?,
        },
        "subscribe" => {
            let r = subscribe_result(&body)?;
            Push::Subscribe {
                position: r.position,
                recoverable: r.recoverable,
            }
        }
        "unsubscribe" => Push::Unsubscribe,
        _ => Push::Other {
            kind: kind.into(),
            body,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_are_one_object_with_id_and_method() {
        let line = command(3, "publish", &json!({"channel": "c", "data": {"a": 1}}));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"id": 3, "publish": {"channel": "c", "data": {"a": 1}}})
        );
    }

    #[test]
    fn a_frame_of_replies_and_pushes() {
        let frame = concat!(
            r#"{"id":2,"subscribe":{"epoch":"9d3c1f0a7b2e4c55","offset":121,"recoverable":true,"recovered":true,"publications":[{"offset":120,"data":{"text":"yo"}},{"offset":121,"b64data":"/wA="}]}}"#,
            "\n",
            r#"{"id":8,"error":{"code":119,"message":"version conflict","temporary":false,"version":5,"data":{"text":"theirs"}}}"#,
            "\n",
            r#"{"push":{"channel":"chat:room-42","pub":{"offset":119,"data":{"text":"hi"}}}}"#,
            "\n",
            r#"{"push":{"disconnect":{"code":3006,"reason":"bye","reconnect":true}}}"#,
        );
        let got = parse_frame(frame).unwrap();
        assert_eq!(got.len(), 4);
        let Incoming::Reply {
            id: 2,
            result: Ok(sub),
        } = &got[0]
        else {
            panic!("{:?}", got[0]);
        };
        let sub = subscribe_result(sub).unwrap();
        assert!(sub.recovered && sub.recoverable);
        assert_eq!(
            sub.position,
            StreamPosition {
                epoch: "9d3c1f0a7b2e4c55".into(),
                offset: 121
            }
        );
        assert_eq!(
            sub.publications,
            [
                Publication {
                    offset: 120,
                    data: Data::Json(json!({"text": "yo"}))
                },
                Publication {
                    offset: 121,
                    data: Data::Bytes(vec![0xff, 0])
                }
            ]
        );
        let Incoming::Reply {
            id: 8,
            result: Err(e),
        } = &got[1]
        else {
            panic!("{:?}", got[1]);
        };
        assert_eq!((e.code, e.temporary), (119, false));
        assert_eq!(e.message, "version conflict");
        assert_eq!(e.details.get("version"), Some(&json!(5)));
        assert_eq!(
            got[2],
            Incoming::Push {
                channel: "chat:room-42".into(),
                kind: "pub".into(),
                body: json!({"offset": 119, "data": {"text": "hi"}})
            }
        );
        assert_eq!(
            got[3],
            Incoming::Push {
                channel: String::new(),
                kind: "disconnect".into(),
                body: json!({"code": 3006, "reason": "bye", "reconnect": true})
            }
        );
    }

    #[test]
    fn null_data_is_data() {
        let p = publication(&json!({"offset": 1, "data": null})).unwrap();
        assert_eq!(p.data, Data::Json(Value::Null));
        assert!(publication(&json!({"offset": 1})).is_err());
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(parse_frame("{").is_err());
        assert!(parse_frame("[1]").is_err());
        assert!(parse_frame(r#"{"x":1}"#).is_err());
        assert!(parse_frame(r#"{"id":1,"a":{},"b":{}}"#).is_err());
        assert!(parse_frame(r#"{"push":{"channel":"c"}}"#).is_err());
    }

    #[test]
    fn typed_pushes_and_results() {
        let join = push(
            "join",
            json!({"info": {"user": "ann", "client": "a.0.1", "info": {"name": "Ann"}}}),
        )
        .unwrap();
        assert_eq!(
            join,
            Push::Join(ClientInfo {
                user: "ann".into(),
                client: "a.0.1".into(),
                info: Some(json!({"name": "Ann"}))
            })
        );
        let state = push(
            "state",
            json!({"info": {"user": "", "client": "a.1.4"}, "state": "typing"}),
        )
        .unwrap();
        assert!(matches!(state, Push::State { ref state, .. } if state == "typing"));
        assert_eq!(
            push("promoted", json!({"role": "editor"})).unwrap(),
            Push::Other {
                kind: "promoted".into(),
                body: json!({"role": "editor"})
            }
        );
        let presence = presence_result(&json!({"clients": {
            "a.0.17": {"user": "ann", "client": "a.0.17", "info": {"n": 1}, "state": "typing"},
            "a.1.4": {"user": "", "client": "a.1.4"}
        }}))
        .unwrap();
        assert_eq!(presence.len(), 2);
        assert_eq!(presence["a.0.17"].state.as_deref(), Some("typing"));
        assert_eq!(presence["a.1.4"].info.user, "");
        let c = connect_info(&json!({"client": "x", "node": "n", "ping": 25, "user": "u", "expires": true, "ttl": 60})).unwrap();
        assert_eq!((c.ping, c.expires, c.ttl), (25, true, Some(60)));
        assert_eq!(data(&json!({"b64data": ""})).unwrap(), Data::Bytes(vec![]));
    }
}
