//! Server API requests, decoded and checked: a method name and its JSON
//! parameters become a [`Command`] that only needs sending, or an
//! [`ApiError`] (107 bad request, 109 invalid channel, 102 unknown
//! channel, 104 unknown method inside a batch). Nothing here touches a
//! shard: everything a shard would refuse for its shape is refused here.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::bridge::ApiOp;
use crate::engine::channel::is_valid_channel;
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::history::HistoryQuery;
use crate::engine::hub::Position;
use crate::engine::namespace::Namespaces;
use crate::engine::wire::publication::PubData;
use crate::engine::wire::{MAX_IDEMPOTENCY_KEY, parse_epoch};

/// Most commands in one `batch`.
pub const MAX_BATCH: usize = 1000;
/// Most channels in one `broadcast`.
pub const MAX_BROADCAST: usize = 1000;
/// Longest `channels` pattern, in bytes: bounds the glob's work.
pub const MAX_PATTERN: usize = 1024;
/// Longest user id in `subscribe`, `unsubscribe`, `disconnect`, in bytes.
pub const MAX_USER: usize = 255;

/// A server API method (the last path segment of `POST /api/<method>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `publish`
    Publish,
    /// `broadcast`
    Broadcast,
    /// `presence`
    Presence,
    /// `presence_stats`
    PresenceStats,
    /// `history`
    History,
    /// `history_remove`
    HistoryRemove,
    /// `subscribe`
    Subscribe,
    /// `unsubscribe`
    Unsubscribe,
    /// `disconnect`
    Disconnect,
    /// `channels`
    Channels,
    /// `info`
    Info,
    /// `batch`
    Batch,
}

impl Method {
    /// Every method, for metrics.
    pub const ALL: [Method; 12] = [
        Method::Publish,
        Method::Broadcast,
        Method::Presence,
        Method::PresenceStats,
        Method::History,
        Method::HistoryRemove,
        Method::Subscribe,
        Method::Unsubscribe,
        Method::Disconnect,
        Method::Channels,
        Method::Info,
        Method::Batch,
    ];

    /// The method's name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Publish => "publish",
            Method::Broadcast => "broadcast",
            Method::Presence => "presence",
            Method::PresenceStats => "presence_stats",
            Method::History => "history",
            Method::HistoryRemove => "history_remove",
            Method::Subscribe => "subscribe",
            Method::Unsubscribe => "unsubscribe",
            Method::Disconnect => "disconnect",
            Method::Channels => "channels",
            Method::Info => "info",
            Method::Batch => "batch",
        }
    }

    /// The method named `name` (exact spelling), if any.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// A command-level error: a catalogue code and, for a bad request, what
/// was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The catalogue code.
    pub code: ErrorCode,
    /// Appended to the code's message after `": "`.
    pub detail: Option<String>,
}

impl ApiError {
    /// 107 with an explanation.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::BadRequest,
            detail: Some(detail.into()),
        }
    }

    /// `{"code", "message", "temporary"}`.
    pub fn to_json(&self) -> Value {
        let message = match &self.detail {
            Some(d) => format!("{}: {d}", self.code.message()),
            None => self.code.message().to_owned(),
        };
        json!({
            "code": self.code.code(),
            "message": message,
            "temporary": self.code.temporary(),
        })
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self { code, detail: None }
    }
}

/// The outcome of one command: its `result` object or its error.
pub type Reply = Result<Value, ApiError>;

/// `{"result": ...}` or `{"error": {...}}`.
pub fn reply_json(reply: &Reply) -> Value {
    match reply {
        Ok(v) => json!({ "result": v }),
        Err(e) => json!({ "error": e.to_json() }),
    }
}

/// A checked command, ready to send.
#[derive(Debug, Clone)]
pub enum Command {
    /// One call to `channel`'s home shard (`publish`, `history`,
    /// `history_remove`, `presence`, `presence_stats`).
    Home {
        /// Picks the home shard.
        channel: Arc<str>,
        /// The call.
        op: ApiOp,
    },
    /// `publish` to each channel's home; a channel that failed its check
    /// keeps its error and gets it as its response.
    Broadcast {
        /// In request order.
        channels: Vec<Result<Arc<str>, ApiError>>,
        /// Payload.
        data: PubData,
        /// Idempotency key, for every channel.
        idempotency_key: Option<Box<str>>,
        /// `priority: "high"`, for every channel.
        high: bool,
        /// `durable_ack`, for every channel.
        durable_ack: bool,
    },
    /// The same call to every shard, merged to `{}` or the first error
    /// (`subscribe`, `unsubscribe`, `disconnect`).
    Everywhere(ApiOp),
    /// `channels`, filtered on the sidecar by a glob.
    Channels {
        /// `*` any run, `?` one character; `None` matches all.
        pattern: Option<String>,
    },
    /// `info`.
    Info,
    /// `batch`: each entry checked on its own, run in order.
    Batch(Vec<Result<Command, ApiError>>),
}

/// What checking a command needs from the configuration.
#[derive(Debug)]
pub struct Checker {
    /// Resolves channel namespaces (102 when strict and unknown).
    pub namespaces: Namespaces,
    /// `history_max_publications`.
    pub history_max: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum PriorityP {
    Normal,
    High,
}

#[derive(Deserialize)]
struct PublishP<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    idempotency_key: Option<String>,
    priority: Option<PriorityP>,
    #[serde(default)]
    durable_ack: bool,
}

#[derive(Deserialize)]
struct BroadcastP<'a> {
    channels: Vec<String>,
    #[serde(borrow)]
    data: &'a RawValue,
    idempotency_key: Option<String>,
    priority: Option<PriorityP>,
    #[serde(default)]
    durable_ack: bool,
}

#[derive(Deserialize)]
struct ChannelP {
    channel: String,
}

#[derive(Deserialize)]
struct SinceP {
    epoch: String,
    offset: u64,
}

#[derive(Deserialize)]
struct HistoryP {
    channel: String,
    limit: Option<usize>,
    since: Option<SinceP>,
    reverse: Option<bool>,
}

#[derive(Deserialize)]
struct UserChannelP {
    user: String,
    channel: String,
}

#[derive(Deserialize)]
struct DisconnectP {
    user: String,
    code: Option<u16>,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct ChannelsP {
    pattern: Option<String>,
}

#[derive(Deserialize)]
struct EmptyP {}

#[derive(Deserialize)]
struct BatchP<'a> {
    #[serde(borrow)]
    commands: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ItemP<'a> {
    method: String,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

fn decode<'a, T: Deserialize<'a>>(params: &'a str) -> Result<T, ApiError> {
    serde_json::from_str(params).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn payload(data: &RawValue) -> PubData {
    PubData {
        bytes: Bytes::copy_from_slice(data.get().as_bytes()),
        is_json: true,
    }
}

fn idempotency_key(key: Option<String>) -> Result<Option<Box<str>>, ApiError> {
    match key {
        Some(k) if !(1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) => Err(ApiError::bad_request(
            format!("idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} bytes"),
        )),
        k => Ok(k.map(String::into_boxed_str)),
    }
}

fn user(user: String) -> Result<Arc<str>, ApiError> {
    if user.is_empty() || user.len() > MAX_USER {
        return Err(ApiError::bad_request(format!(
            "user must be 1-{MAX_USER} bytes"
        )));
    }
    Ok(user.into())
}

impl Checker {
    /// A checker for the node's configuration.
    pub fn new(namespaces: Namespaces, history_max: usize) -> Self {
        Self {
            namespaces,
            history_max,
        }
    }

    /// A valid channel of a known namespace (109, 102).
    pub fn channel(&self, name: String) -> Result<Arc<str>, ApiError> {
        if !is_valid_channel(&name) {
            return Err(ErrorCode::InvalidChannel.into());
        }
        if self.namespaces.resolve(&name).is_none() {
            return Err(ErrorCode::UnknownChannel.into());
        }
        Ok(name.into())
    }

    /// Checks `method`'s parameters, `params` being valid JSON text.
    pub fn check(&self, method: Method, params: &str) -> Result<Command, ApiError> {
        match method {
            Method::Publish => {
                let p: PublishP = decode(params)?;
                let channel = self.channel(p.channel)?;
                let op = ApiOp::Publish {
                    channel: channel.clone(),
                    data: payload(p.data),
                    idempotency_key: idempotency_key(p.idempotency_key)?,
                    high: matches!(p.priority, Some(PriorityP::High)),
                    durable_ack: p.durable_ack,
                };
                Ok(Command::Home { channel, op })
            }
            Method::Broadcast => {
                let p: BroadcastP = decode(params)?;
                if p.channels.is_empty() || p.channels.len() > MAX_BROADCAST {
                    return Err(ApiError::bad_request(format!(
                        "channels must list 1-{MAX_BROADCAST} channels"
                    )));
                }
                Ok(Command::Broadcast {
                    idempotency_key: idempotency_key(p.idempotency_key)?,
                    high: matches!(p.priority, Some(PriorityP::High)),
                    durable_ack: p.durable_ack,
                    data: payload(p.data),
                    channels: p.channels.into_iter().map(|c| self.channel(c)).collect(),
                })
            }
            Method::Presence | Method::PresenceStats => {
                let channel = self.channel(decode::<ChannelP>(params)?.channel)?;
                let op = ApiOp::Presence {
                    channel: channel.clone(),
                    stats: method == Method::PresenceStats,
                };
                Ok(Command::Home { channel, op })
            }
            Method::History => {
                let p: HistoryP = decode(params)?;
                let channel = self.channel(p.channel)?;
                let since = match p.since {
                    None => None,
                    Some(s) => Some(Position {
                        epoch: parse_epoch(&s.epoch).ok_or_else(|| {
                            ApiError::bad_request("since.epoch must be 16 hex characters")
                        })?,
                        offset: s.offset,
                    }),
                };
                let query = HistoryQuery {
                    limit: p.limit,
                    since,
                    reverse: p.reverse.unwrap_or(false),
                    max: self.history_max,
                };
                let op = ApiOp::History {
                    channel: channel.clone(),
                    query,
                };
                Ok(Command::Home { channel, op })
            }
            Method::HistoryRemove => {
                let channel = self.channel(decode::<ChannelP>(params)?.channel)?;
                let op = ApiOp::HistoryRemove {
                    channel: channel.clone(),
                };
                Ok(Command::Home { channel, op })
            }
            Method::Subscribe | Method::Unsubscribe => {
                let p: UserChannelP = decode(params)?;
                let user = user(p.user)?;
                let channel = self.channel(p.channel)?;
                Ok(Command::Everywhere(if method == Method::Subscribe {
                    ApiOp::Subscribe { user, channel }
                } else {
                    ApiOp::Unsubscribe { user, channel }
                }))
            }
            Method::Disconnect => {
                let p: DisconnectP = decode(params)?;
                let code = p.code.unwrap_or(CloseReason::Disconnected.code());
                if !(3000..=4999).contains(&code) {
                    return Err(ApiError::bad_request("code must be between 3000 and 4999"));
                }
                // A close frame's reason is at most 123 bytes.
                if p.reason.as_ref().is_some_and(|r| r.len() > 123) {
                    return Err(ApiError::bad_request("reason must be at most 123 bytes"));
                }
                Ok(Command::Everywhere(ApiOp::Disconnect {
                    user: user(p.user)?,
                    code,
                    reason: p.reason.map(Arc::from),
                }))
            }
            Method::Channels => {
                let pattern = decode::<ChannelsP>(params)?.pattern;
                if pattern.as_ref().is_some_and(|p| p.len() > MAX_PATTERN) {
                    return Err(ApiError::bad_request(format!(
                        "pattern must be at most {MAX_PATTERN} bytes"
                    )));
                }
                Ok(Command::Channels { pattern })
            }
            Method::Info => {
                decode::<EmptyP>(params)?;
                Ok(Command::Info)
            }
            Method::Batch => {
                let p: BatchP = decode(params)?;
                if p.commands.len() > MAX_BATCH {
                    return Err(ApiError::bad_request(format!(
                        "a batch holds at most {MAX_BATCH} commands"
                    )));
                }
                Ok(Command::Batch(
                    p.commands.into_iter().map(|c| self.item(c)).collect(),
                ))
            }
        }
    }

    /// One `{"method", "params"}` entry of a batch (no nested batch).
    fn item(&self, raw: &RawValue) -> Result<Command, ApiError> {
        let item: ItemP = decode(raw.get())?;
        let method = Method::from_name(&item.method).ok_or(ErrorCode::UnknownMethod)?;
        if method == Method::Batch {
            return Err(ApiError::bad_request("a batch cannot hold a batch"));
        }
        self.check(method, item.params.map_or("{}", RawValue::get))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::namespace::NamespaceOptions;

    fn checker(strict: bool) -> Checker {
        let ns = Namespaces::new(strict, [("chat", NamespaceOptions::default())]).unwrap();
        Checker::new(ns, 300)
    }

    fn code(r: Result<Command, ApiError>) -> u32 {
        r.expect_err("must fail").code.code()
    }

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        assert_eq!(Method::from_name("Publish"), None);
        assert_eq!(Method::from_name("ping"), None);
    }

    #[test]
    fn publish_keeps_raw_json_and_options() {
        let c = checker(false);
        let cmd = c
            .check(
                Method::Publish,
                r#"{"channel":"chat:a","data":{"x": [1, 2]},"idempotency_key":"k1","priority":"high"}"#,
            )
            .unwrap();
        let Command::Home {
            channel,
            op:
                ApiOp::Publish {
                    data,
                    idempotency_key,
                    high,
                    ..
                },
        } = cmd
        else {
            panic!("not a home publish: {cmd:?}");
        };
        assert_eq!(&*channel, "chat:a");
        assert_eq!(&data.bytes[..], br#"{"x": [1, 2]}"#);
        assert!(data.is_json);
        assert_eq!(idempotency_key.as_deref(), Some("k1"));
        assert!(high);
        let Command::Home {
            op: ApiOp::Publish { high, data, .. },
            ..
        } = c
            .check(Method::Publish, r#"{"channel":"a","data":"s"}"#)
            .unwrap()
        else {
            panic!("not a publish");
        };
        assert!(!high);
        assert_eq!(&data.bytes[..], br#""s""#);
    }

    #[test]
    fn publish_refusals() {
        let c = checker(true);
        let p = |s: &str| code(c.check(Method::Publish, s));
        assert_eq!(p(r#"{"channel":"a"}"#), 107, "missing data");
        assert_eq!(p(r#"{"data":1}"#), 107, "missing channel");
        assert_eq!(p(r#"{"channel":5,"data":1}"#), 107, "ill-typed channel");
        assert_eq!(p(r#"[1]"#), 107, "not an object");
        assert_eq!(p(r#"{"channel":"a","data":1,"priority":"urgent"}"#), 107);
        assert_eq!(p(r#"{"channel":"a","data":1,"idempotency_key":""}"#), 107);
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY + 1);
        assert_eq!(
            p(&format!(
                r#"{{"channel":"a","data":1,"idempotency_key":"{long}"}}"#
            )),
            107
        );
        assert_eq!(p(r#"{"channel":"a b","data":1}"#), 109);
        assert_eq!(p(r#"{"channel":"nope:a","data":1}"#), 102, "strict");
        assert!(
            checker(false)
                .check(Method::Publish, r#"{"channel":"nope:a","data":1}"#)
                .is_ok(),
            "unknown namespaces fall back to default when not strict"
        );
    }

    #[test]
    fn bad_request_message_names_the_problem() {
        let e = checker(false)
            .check(Method::Publish, r#"{"data":1}"#)
            .unwrap_err();
        let j = e.to_json();
        assert_eq!(j["code"], 107);
        assert_eq!(j["temporary"], false);
        let msg = j["message"].as_str().unwrap();
        assert!(msg.starts_with("bad request: "), "{msg}");
        assert!(msg.contains("channel"), "{msg}");
        let plain = ApiError::from(ErrorCode::Overloaded).to_json();
        assert_eq!(
            plain,
            json!({"code": 112, "message": "server overloaded, retry", "temporary": true})
        );
    }

    #[test]
    fn history_query() {
        let c = checker(false);
        let cmd = c
            .check(
                Method::History,
                r#"{"channel":"a","limit":5,"since":{"epoch":"00000000000000FF","offset":3},"reverse":true}"#,
            )
            .unwrap();
        let Command::Home {
            op: ApiOp::History { query, .. },
            ..
        } = cmd
        else {
            panic!("not history");
        };
        assert_eq!(
            query,
            HistoryQuery {
                limit: Some(5),
                since: Some(Position {
                    epoch: 255,
                    offset: 3
                }),
                reverse: true,
                max: 300
            }
        );
        let h = |s: &str| code(c.check(Method::History, s));
        assert_eq!(
            h(r#"{"channel":"a","since":{"epoch":"xyz","offset":1}}"#),
            107
        );
        assert_eq!(
            h(r#"{"channel":"a","since":{"epoch":"00000000000000ff"}}"#),
            107
        );
        assert_eq!(h(r#"{"channel":"a","limit":-1}"#), 107);
    }

    #[test]
    fn user_commands_go_everywhere() {
        let c = checker(false);
        assert!(matches!(
            c.check(Method::Subscribe, r#"{"user":"u","channel":"a"}"#),
            Ok(Command::Everywhere(ApiOp::Subscribe { .. }))
        ));
        assert!(matches!(
            c.check(Method::Unsubscribe, r#"{"user":"u","channel":"a"}"#),
            Ok(Command::Everywhere(ApiOp::Unsubscribe { .. }))
        ));
        assert!(matches!(
            c.check(Method::Disconnect, r#"{"user":"u"}"#),
            Ok(Command::Everywhere(ApiOp::Disconnect { .. }))
        ));
        assert_eq!(code(c.check(Method::Disconnect, r#"{"user":""}"#)), 107);
        assert!(matches!(
            c.check(
                Method::Disconnect,
                r#"{"user":"u","code":4001,"reason":"banned"}"#
            ),
            Ok(Command::Everywhere(ApiOp::Disconnect { code: 4001, .. }))
        ));
        assert!(matches!(
            c.check(Method::Disconnect, r#"{"user":"u"}"#),
            Ok(Command::Everywhere(ApiOp::Disconnect {
                code: 3006,
                reason: None,
                ..
            }))
        ));
        for bad in [r#"{"user":"u","code":1000}"#, r#"{"user":"u","code":5000}"#] {
            assert_eq!(code(c.check(Method::Disconnect, bad)), 107, "{bad}");
        }
        let long = format!(r#"{{"user":"u","reason":"{}"}}"#, "x".repeat(124));
        assert_eq!(code(c.check(Method::Disconnect, &long)), 107);
        assert_eq!(code(c.check(Method::Subscribe, r#"{"user":"u"}"#)), 107);
        assert_eq!(
            code(c.check(Method::Subscribe, r#"{"user":"u","channel":""}"#)),
            109
        );
    }

    #[test]
    fn broadcast_keeps_per_channel_errors() {
        let c = checker(false);
        let Command::Broadcast { channels, high, .. } = c
            .check(
                Method::Broadcast,
                r#"{"channels":["a","b c","d"],"data":1}"#,
            )
            .unwrap()
        else {
            panic!("not broadcast");
        };
        assert!(!high);
        assert!(channels[0].is_ok() && channels[2].is_ok());
        assert!(matches!(
            c.check(
                Method::Broadcast,
                r#"{"channels":["a"],"data":1,"priority":"high"}"#
            ),
            Ok(Command::Broadcast { high: true, .. })
        ));
        assert_eq!(channels[1].as_ref().unwrap_err().code.code(), 109);
        assert_eq!(
            code(c.check(Method::Broadcast, r#"{"channels":[],"data":1}"#)),
            107
        );
    }

    #[test]
    fn batch_items_fail_alone() {
        let c = checker(false);
        let Command::Batch(items) = c
            .check(
                Method::Batch,
                r#"{"commands":[
                    {"method":"publish","params":{"channel":"a","data":1}},
                    {"method":"nope","params":{}},
                    {"method":"publish","params":{"channel":"a"}},
                    {"method":"batch","params":{"commands":[]}},
                    7,
                    {"method":"info"}
                ]}"#,
            )
            .unwrap()
        else {
            panic!("not batch");
        };
        assert_eq!(items.len(), 6);
        assert!(matches!(items[0], Ok(Command::Home { .. })));
        assert_eq!(items[1].as_ref().unwrap_err().code.code(), 104);
        assert_eq!(items[2].as_ref().unwrap_err().code.code(), 107);
        assert_eq!(items[3].as_ref().unwrap_err().code.code(), 107);
        assert_eq!(items[4].as_ref().unwrap_err().code.code(), 107);
        assert!(matches!(items[5], Ok(Command::Info)));
        let many = format!(
            r#"{{"commands":[{}]}}"#,
            vec![r#"{"method":"info"}"#; MAX_BATCH + 1].join(",")
        );
        assert_eq!(code(c.check(Method::Batch, &many)), 107);
    }

    #[test]
    fn channels_and_info_params() {
        let c = checker(false);
        assert!(matches!(
            c.check(Method::Channels, r#"{"pattern":"chat:*"}"#),
            Ok(Command::Channels { pattern: Some(p) }) if p == "chat:*"
        ));
        assert!(matches!(
            c.check(Method::Channels, "{}"),
            Ok(Command::Channels { pattern: None })
        ));
        assert_eq!(code(c.check(Method::Channels, r#"{"pattern":1}"#)), 107);
        let long = "*".repeat(MAX_PATTERN + 1);
        assert_eq!(
            code(c.check(Method::Channels, &format!(r#"{{"pattern":"{long}"}}"#))),
            107
        );
        assert!(matches!(c.check(Method::Info, "{}"), Ok(Command::Info)));
        assert_eq!(code(c.check(Method::Info, "5")), 107);
    }
}
