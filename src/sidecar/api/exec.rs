//! Carrying checked [`Command`]s to the shards and merging their answers.
//!
//! A call is one [`ShardMsg::Api`] pushed into a shard's inbox; a full
//! inbox is retried a few times after a short sleep, then the command is
//! answered with 112 (overloaded) rather than waiting without bound. The
//! answer comes back on the call's one-shot channel. Calls to several
//! shards are all sent before the first answer is awaited, so they run
//! concurrently.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use bytes::Bytes;

use super::command::{ApiError, Command, Reply, reply_json};
use crate::bridge::{ApiAnswer, ApiCall, ApiOp, Inbox, ShardMsg};
use crate::engine::codes::ErrorCode;
use crate::engine::hub::home_shard;
use crate::engine::wire::publication::PubData;
use crate::shard::Shared;
use crate::sidecar::cluster::{CallRefused, NodeCaller};

/// Pushes tried on a full inbox before answering 112.
const PUSH_ATTEMPTS: u32 = 5;
/// Pause between pushes to a full inbox.
const PUSH_RETRY: Duration = Duration::from_millis(2);
/// Longest wait for a shard's answer; a shard that takes longer is stuck
/// or gone (error 100).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends commands to the shards and merges the answers.
pub struct Dispatcher {
    inboxes: Arc<[Arc<Inbox>]>,
    shared: Arc<Shared>,
    node: String,
    started: Instant,
    /// In a cluster: the way to the other nodes, for the calls that act on
    /// every node (`subscribe`, `unsubscribe`, `disconnect`, `channels`).
    cluster: Option<NodeCaller>,
}

type Pending = Result<oneshot::Receiver<ApiAnswer>, ApiError>;

impl Dispatcher {
    /// A dispatcher over the shards' inboxes; `node` is reported by
    /// `info`, whose uptime counts from now.
    pub fn new(inboxes: Arc<[Arc<Inbox>]>, shared: Arc<Shared>, node: String) -> Self {
        Self {
            inboxes,
            shared,
            node,
            started: Instant::now(),
            cluster: None,
        }
    }

    /// The same dispatcher, also acting on the other nodes of a cluster
    /// through `caller`.
    pub fn with_cluster(mut self, caller: NodeCaller) -> Self {
        self.cluster = Some(caller);
        self
    }

    /// Queues `op` on `shard`: 113 while draining, 112 if its inbox stays
    /// full.
    async fn send(&self, shard: usize, op: ApiOp) -> Pending {
        if self.shared.draining.load(Ordering::Relaxed) {
            return Err(ErrorCode::ShuttingDown.into());
        }
        let (reply, rx) = oneshot::channel();
        let mut msg = ShardMsg::Api(Box::new(ApiCall { op, reply }));
        for attempt in 1..=PUSH_ATTEMPTS {
            match self.inboxes[shard].push(msg) {
                Ok(()) => return Ok(rx),
                Err(back) => msg = back,
            }
            if attempt < PUSH_ATTEMPTS {
                tokio::time::sleep(PUSH_RETRY).await;
            }
        }
        Err(ErrorCode::Overloaded.into())
    }

    /// Awaits a sent call's answer.
    async fn answer(pending: Pending) -> Reply {
        match tokio::time::timeout(ANSWER_TIMEOUT, pending?).await {
            Ok(Ok(answer)) => answer.map_err(ApiError::from),
            Ok(Err(_)) => Err(ApiError {
                code: ErrorCode::Internal,
                detail: Some("the shard dropped the call".into()),
            }),
            Err(_) => Err(ApiError {
                code: ErrorCode::Internal,
                detail: Some("the shard did not answer in time".into()),
            }),
        }
    }

    async fn publish_home(
        &self,
        channel: &str,
        data: PubData,
        key: Option<Box<str>>,
        high: bool,
        durable_ack: bool,
    ) -> Pending {
        let op = ApiOp::Publish {
            channel: channel.into(),
            data,
            idempotency_key: key,
            high,
            durable_ack,
        };
        self.send(home_shard(channel, self.inboxes.len()), op).await
    }

    /// Publishes `data` on `channel` at its home, as the server API's
    /// `publish` does (allowed where clients may not publish); the
    /// publication's offset, or why not.
    pub async fn publish(
        &self,
        channel: &str,
        data: PubData,
        key: Option<Box<str>>,
    ) -> Result<u64, ApiError> {
        let pending = self.publish_home(channel, data, key, false, false).await;
        let v = Self::answer(pending).await?;
        v["offset"].as_u64().ok_or(ApiError {
            code: ErrorCode::Internal,
            detail: Some("a publish answer without an offset".into()),
        })
    }

    /// `op` on every shard; the answers in shard order.
    async fn everywhere(&self, op: ApiOp) -> Vec<Reply> {
        let mut pending = Vec::with_capacity(self.inboxes.len());
        for shard in 0..self.inboxes.len() {
            pending.push(self.send(shard, op.clone()).await);
        }
        let mut answers = Vec::with_capacity(pending.len());
        for p in pending {
            answers.push(Self::answer(p).await);
        }
        answers
    }

    /// Runs a command: a batch runs its entries one after another.
    pub async fn execute(&self, cmd: Command) -> Reply {
        match cmd {
            Command::Batch(items) => {
                let mut replies = Vec::with_capacity(items.len());
                for item in items {
                    let reply = match item {
                        Ok(c) => self.single(c).await,
                        Err(e) => Err(e),
                    };
                    replies.push(reply_json(&reply));
                }
                Ok(json!({ "replies": replies }))
            }
            c => self.single(c).await,
        }
    }

    /// Runs any command but a batch.
    async fn single(&self, cmd: Command) -> Reply {
        match cmd {
            Command::Home { channel, op } => {
                let shard = home_shard(&channel, self.inboxes.len());
                Self::answer(self.send(shard, op).await).await
            }
            Command::Broadcast {
                channels,
                data,
                idempotency_key,
                high,
                durable_ack,
            } => {
                let mut pending = Vec::with_capacity(channels.len());
                for c in channels {
                    pending.push(match c {
                        Ok(c) => {
                            self.publish_home(
                                &c,
                                data.clone(),
                                idempotency_key.clone(),
                                high,
                                durable_ack,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    });
                }
                let mut responses = Vec::with_capacity(pending.len());
                for p in pending {
                    responses.push(reply_json(&Self::answer(p).await));
                }
                Ok(json!({ "responses": responses }))
            }
            Command::Everywhere(op) => {
                let request = peer_request(&op);
                let (mut answers, peers) =
                    tokio::join!(self.everywhere(op), self.on_peers(request));
                answers.extend(peers);
                merge_all_ok(answers)
            }
            Command::Channels { pattern } => {
                let request = json!({ "method": "channels", "params": { "pattern": &pattern } });
                let (mut answers, peers) = tokio::join!(
                    self.everywhere(ApiOp::Channels),
                    self.on_peers(Some(request))
                );
                answers.extend(peers);
                merge_channels(answers, pattern.as_deref())
            }
            Command::Info => merge_info(
                self.everywhere(ApiOp::Info).await,
                &self.node,
                self.started.elapsed().as_secs(),
            ),
            Command::Batch(_) => Err(ApiError::bad_request("a batch cannot hold a batch")),
        }
    }
}

impl Dispatcher {
    /// Runs a peer node's call on this node's shards only: `subscribe`,
    /// `unsubscribe`, `disconnect` and `channels` (any other method is
    /// refused with 104: a peer never sends one).
    pub async fn on_this_node(&self, cmd: Command) -> Reply {
        match cmd {
            Command::Everywhere(op) => merge_all_ok(self.everywhere(op).await),
            Command::Channels { pattern } => {
                merge_channels(self.everywhere(ApiOp::Channels).await, pattern.as_deref())
            }
            _ => Err(ErrorCode::UnknownMethod.into()),
        }
    }

    /// The replies of the other live nodes of the cluster to `request`
    /// (`{"method", "params"}`), one per node; an error stands for the
    /// nodes that did not answer, or for all of them when NATS is
    /// unreachable. Nothing outside a cluster.
    async fn on_peers(&self, request: Option<Value>) -> Vec<Reply> {
        let (Some(caller), Some(request)) = (&self.cluster, request) else {
            return Vec::new();
        };
        let answers = match caller.call(Bytes::from(request.to_string())).await {
            Ok(a) => a,
            Err(CallRefused::Unreachable) => {
                return vec![Err(ApiError {
                    code: ErrorCode::Internal,
                    detail: Some("NATS is unreachable: the call acted on this node only".into()),
                })];
            }
            Err(CallRefused::Busy) => {
                return vec![Err(ApiError {
                    code: ErrorCode::Overloaded,
                    detail: Some(
                        "too many calls to the other nodes: the call acted on this node only"
                            .into(),
                    ),
                })];
            }
        };
        let mut replies: Vec<Reply> = answers
            .answers
            .into_iter()
            .map(|(node, reply)| peer_reply(&node, reply))
            .collect();
        if !answers.missing.is_empty() {
            let names: Vec<&str> = answers.missing.iter().map(|n| &**n).collect();
            replies.push(Err(ApiError {
                code: ErrorCode::Internal,
                detail: Some(format!(
                    "no answer from node(s) {} in time: the call may have acted on some nodes only",
                    names.join(", ")
                )),
            }));
        }
        replies
    }
}

/// What a peer is sent for a call that acts on every node: the server
/// API's own `{"method", "params"}`, checked there like a caller's.
fn peer_request(op: &ApiOp) -> Option<Value> {
    let (method, params) = match op {
        ApiOp::Subscribe { user, channel } => (
            "subscribe",
            json!({ "user": &**user, "channel": &**channel }),
        ),
        ApiOp::Unsubscribe { user, channel } => (
            "unsubscribe",
            json!({ "user": &**user, "channel": &**channel }),
        ),
        ApiOp::Disconnect { user, code, reason } => (
            "disconnect",
            json!({ "user": &**user, "code": code, "reason": reason.as_deref() }),
        ),
        _ => return None,
    };
    Some(json!({ "method": method, "params": params }))
}

/// A peer's `{"result"}` or `{"error"}` as a [`Reply`]; an error names the
/// node.
fn peer_reply(node: &str, reply: Value) -> Reply {
    if let Some(result) = reply.get("result") {
        return Ok(result.clone());
    }
    let error = reply.get("error");
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_u64)
        .and_then(|n| {
            ErrorCode::ALL
                .into_iter()
                .find(|c| u64::from(c.code()) == n)
        })
        .unwrap_or(ErrorCode::Internal);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    // The peer's message starts with the code's own; keep only its detail.
    let detail = message
        .strip_prefix(code.message())
        .map_or(message, |rest| rest.trim_start_matches(": "));
    Err(ApiError {
        code,
        detail: Some(if detail.is_empty() {
            format!("on node {node}")
        } else {
            format!("on node {node}: {detail}")
        }),
    })
}

/// `{}` when every shard succeeded, else the first error.
pub fn merge_all_ok(answers: Vec<Reply>) -> Reply {
    for a in answers {
        a?;
    }
    Ok(json!({}))
}

/// Adds up every shard's `{"channels": {name: {"num_clients": n}}}`,
/// keeping the names that match `pattern`; the first error if a shard
/// failed (a partial count would mislead).
pub fn merge_channels(answers: Vec<Reply>, pattern: Option<&str>) -> Reply {
    let mut counts: Map<String, Value> = Map::new();
    for answer in answers {
        let answer = answer?;
        let Some(channels) = answer.get("channels").and_then(Value::as_object) else {
            continue;
        };
        for (name, v) in channels {
            if pattern.is_some_and(|p| !glob_match(p, name)) {
                continue;
            }
            let n = v.get("num_clients").and_then(Value::as_u64).unwrap_or(0);
            let entry = counts
                .entry(name.clone())
                .or_insert_with(|| json!({ "num_clients": 0 }));
            let sum = entry["num_clients"].as_u64().unwrap_or(0) + n;
            entry["num_clients"] = sum.into();
        }
    }
    Ok(json!({ "channels": counts }))
}

/// The node's `info` from every shard's counts; the first error if a
/// shard failed.
/// In a cluster, `nodes` lists the live nodes (as the first shard saw
/// them; each shard reports the live set it read last).
pub fn merge_info(answers: Vec<Reply>, node: &str, uptime_seconds: u64) -> Reply {
    let mut shards = answers.into_iter().collect::<Result<Vec<Value>, _>>()?;
    let connections: u64 = shards
        .iter()
        .filter_map(|s| s.get("connections").and_then(Value::as_u64))
        .sum();
    let mut nodes = None;
    for s in &mut shards {
        if let Some(n) = s.as_object_mut().and_then(|o| o.remove("cluster_nodes")) {
            nodes.get_or_insert(n);
        }
    }
    let mut info = json!({
        "node": node,
        "uptime_seconds": uptime_seconds,
        "shards": shards,
        "connections": connections,
    });
    if let Some(nodes) = nodes {
        info["nodes"] = nodes;
    }
    Ok(info)
}

/// Whether `name` matches the glob `pattern`: `*` matches any run of
/// characters (also none), `?` exactly one, anything else itself. Linear
/// backtracking on the last `*`: O(pattern × name) at worst.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Position of the last `*` seen and the name index it resumes from.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn glob() {
        let yes = [
            ("*", ""),
            ("*", "chat:a"),
            ("chat:*", "chat:"),
            ("chat:*", "chat:room"),
            ("?", "a"),
            ("a?c", "abc"),
            ("*room*", "chat:room-1"),
            ("a*b*c", "a-b-b-c"),
            ("**", "x"),
            ("exact", "exact"),
            ("*.?", "x.y"),
        ];
        for (p, n) in yes {
            assert!(glob_match(p, n), "{p} should match {n}");
        }
        let no = [
            ("", "a"),
            ("?", ""),
            ("?", "ab"),
            ("chat:*", "news:a"),
            ("a*b", "a-b-c"),
            ("exact", "exact2"),
            ("a?c", "ac"),
            ("*x", "aaa"),
        ];
        for (p, n) in no {
            assert!(!glob_match(p, n), "{p} should not match {n}");
        }
    }

    #[test]
    fn all_ok_or_first_error() {
        assert_eq!(
            merge_all_ok(vec![Ok(json!({})), Ok(json!({}))]),
            Ok(json!({}))
        );
        let r = merge_all_ok(vec![
            Ok(json!({})),
            Err(ErrorCode::Overloaded.into()),
            Err(ErrorCode::Internal.into()),
        ]);
        assert_eq!(r.unwrap_err().code, ErrorCode::Overloaded);
    }

    #[test]
    fn channels_add_up_and_filter() {
        let a = json!({"channels": {"chat:a": {"num_clients": 2}, "news": {"num_clients": 1}}});
        let b = json!({"channels": {"chat:a": {"num_clients": 3}, "chat:b": {"num_clients": 1}}});
        assert_eq!(
            merge_channels(vec![Ok(a.clone()), Ok(b.clone())], None).unwrap(),
            json!({"channels": {
                "chat:a": {"num_clients": 5},
                "chat:b": {"num_clients": 1},
                "news": {"num_clients": 1}
            }})
        );
        assert_eq!(
            merge_channels(vec![Ok(a.clone()), Ok(b)], Some("chat:*")).unwrap(),
            json!({"channels": {"chat:a": {"num_clients": 5}, "chat:b": {"num_clients": 1}}})
        );
        let e = merge_channels(vec![Ok(a), Err(ErrorCode::Internal.into())], None);
        assert_eq!(e.unwrap_err().code, ErrorCode::Internal);
    }

    #[test]
    fn info_sums_connections() {
        let s0 = json!({"shard": 0, "connections": 4, "channels_local": 1, "channels_home": 2});
        let s1 = json!({"shard": 1, "connections": 6, "channels_local": 0, "channels_home": 1});
        assert_eq!(
            merge_info(vec![Ok(s0.clone()), Ok(s1.clone())], "n1", 7).unwrap(),
            json!({"node": "n1", "uptime_seconds": 7, "shards": [s0, s1], "connections": 10})
        );
    }

    /// A peer is sent what a caller would send, and the peer's checker
    /// reads it back as the same command.
    #[test]
    fn peer_request_is_the_api_call_itself() {
        use crate::engine::namespace::Namespaces;
        use crate::sidecar::api::command::{Checker, Method};
        let checker = Checker::new(Namespaces::from_config(&Config::default()).unwrap(), 100);
        let ops = [
            ApiOp::Subscribe {
                user: "u1".into(),
                channel: "room".into(),
            },
            ApiOp::Unsubscribe {
                user: "u1".into(),
                channel: "room".into(),
            },
            ApiOp::Disconnect {
                user: "u1".into(),
                code: 4001,
                reason: Some("banned".into()),
            },
            ApiOp::Disconnect {
                user: "u2".into(),
                code: 3007,
                reason: None,
            },
        ];
        for op in ops {
            let req = peer_request(&op).unwrap();
            let method = Method::from_name(req["method"].as_str().unwrap()).unwrap();
            let cmd = checker
                .check(method, &req["params"].to_string())
                .unwrap_or_else(|e| panic!("{req}: {e:?}"));
            let Command::Everywhere(back) = cmd else {
                panic!("{req} is not a call on every node");
            };
            assert_eq!(format!("{back:?}"), format!("{op:?}"));
        }
        assert!(
            peer_request(&ApiOp::Info).is_none(),
            "info stays on one node"
        );
    }

    #[test]
    fn peer_reply_keeps_the_code_and_names_the_node() {
        assert_eq!(
            peer_reply("n2", json!({"result": {"x": 1}})),
            Ok(json!({"x": 1}))
        );
        let e: ApiError = ApiError {
            code: ErrorCode::Overloaded,
            detail: Some("shard 1".into()),
        };
        let back = peer_reply("n2", reply_json(&Err(e))).unwrap_err();
        assert_eq!(back.code, ErrorCode::Overloaded);
        assert_eq!(back.detail.as_deref(), Some("on node n2: shard 1"));
        let bare = peer_reply("n3", reply_json(&Err(ErrorCode::ShuttingDown.into())));
        assert_eq!(
            bare.unwrap_err(),
            ApiError {
                code: ErrorCode::ShuttingDown,
                detail: Some("on node n3".into())
            }
        );
        let junk = peer_reply("n4", json!({"error": {"code": 9999}})).unwrap_err();
        assert_eq!(junk.code, ErrorCode::Internal);
        assert!(peer_reply("n4", json!("nonsense")).is_err());
    }

    fn dispatcher(capacity: usize, shards: usize) -> (Dispatcher, Arc<[Arc<Inbox>]>) {
        let inboxes: Arc<[Arc<Inbox>]> = (0..shards)
            .map(|_| Arc::new(Inbox::new(capacity).unwrap()))
            .collect();
        let shared = Arc::new(Shared::new(&Config::default()));
        (
            Dispatcher::new(inboxes.clone(), shared, "n".into()),
            inboxes,
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn full_inbox_is_overloaded_and_draining_is_shutting_down() {
        let (d, inboxes) = dispatcher(1, 1);
        inboxes[0].push(ShardMsg::Drain).unwrap();
        let r = rt().block_on(d.execute(Command::Info));
        assert_eq!(r.unwrap_err().code, ErrorCode::Overloaded);
        assert_eq!(inboxes[0].len(), 1, "nothing queued past the bound");
        inboxes[0].pop();
        d.shared.draining.store(true, Ordering::Relaxed);
        let r = rt().block_on(d.execute(Command::Info));
        assert_eq!(r.unwrap_err().code, ErrorCode::ShuttingDown);
    }

    /// Answers every call on every shard from a thread, as shards would.
    fn fake_shards(
        inboxes: Arc<[Arc<Inbox>]>,
        calls: usize,
    ) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while seen.len() < calls {
                for (i, inbox) in inboxes.iter().enumerate() {
                    while let Some(ShardMsg::Api(call)) = inbox.pop() {
                        let answer = match &call.op {
                            ApiOp::Info => Ok(json!({"shard": i, "connections": i + 1})),
                            ApiOp::Publish { channel, .. } if &**channel == "bad" => {
                                Err(ErrorCode::PermissionDenied)
                            }
                            ApiOp::Publish { channel, .. } => {
                                seen.push(format!("{i}:{channel}"));
                                Ok(json!({"offset": 1}))
                            }
                            _ => Err(ErrorCode::UnknownMethod),
                        };
                        if matches!(call.op, ApiOp::Info) {
                            seen.push(format!("{i}:info"));
                        }
                        let _ = call.reply.send(answer);
                    }
                }
                std::thread::yield_now();
            }
            seen
        })
    }

    #[test]
    fn info_and_broadcast_through_inboxes() {
        let (d, inboxes) = dispatcher(16, 3);
        let shards = fake_shards(inboxes, 3 + 2);
        let rt = rt();
        let info = rt.block_on(d.execute(Command::Info)).unwrap();
        assert_eq!(info["node"], "n");
        assert_eq!(info["connections"], 6);
        assert_eq!(info["shards"].as_array().unwrap().len(), 3);
        let data = PubData {
            bytes: "1".into(),
            is_json: true,
        };
        let r = rt
            .block_on(d.execute(Command::Broadcast {
                channels: vec![
                    Ok("a".into()),
                    Err(ErrorCode::InvalidChannel.into()),
                    Ok("bad".into()),
                    Ok("b".into()),
                ],
                data,
                idempotency_key: None,
                high: false,
                durable_ack: false,
            }))
            .unwrap();
        assert_eq!(r["responses"][0], json!({"result": {"offset": 1}}));
        assert_eq!(r["responses"][1]["error"]["code"], 109);
        assert_eq!(r["responses"][2]["error"]["code"], 103);
        assert_eq!(r["responses"][3], json!({"result": {"offset": 1}}));
        let seen = shards.join().unwrap();
        assert!(seen.contains(&format!("{}:a", home_shard("a", 3))));
        assert!(seen.contains(&format!("{}:b", home_shard("b", 3))));
    }
}
