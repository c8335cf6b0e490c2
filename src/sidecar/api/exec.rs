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

use super::command::{ApiError, Command, Reply, reply_json};
use crate::bridge::{ApiAnswer, ApiCall, ApiOp, Inbox, ShardMsg};
use crate::engine::codes::ErrorCode;
use crate::engine::hub::home_shard;
use crate::engine::wire::publication::PubData;
use crate::shard::Shared;

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
        }
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
    ) -> Pending {
        let op = ApiOp::Publish {
            channel: channel.into(),
            data,
            idempotency_key: key,
            high,
        };
        self.send(home_shard(channel, self.inboxes.len()), op).await
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
            } => {
                let mut pending = Vec::with_capacity(channels.len());
                for c in channels {
                    pending.push(match c {
                        Ok(c) => {
                            self.publish_home(&c, data.clone(), idempotency_key.clone(), high)
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
            Command::Everywhere(op) => merge_all_ok(self.everywhere(op).await),
            Command::Channels { pattern } => {
                merge_channels(self.everywhere(ApiOp::Channels).await, pattern.as_deref())
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
