//! Server API calls that act on every node of the cluster: `subscribe`,
//! `unsubscribe` and `disconnect` of a user, and `channels`.
//!
//! The node that took the call runs it on its own shards and, at the same
//! time, publishes it on `wsedge.<cluster>.api` with a fresh reply inbox
//! ([`NodeCaller::call`]). Every other node runs it on its shards
//! ([`NodeApi`]) and answers on the inbox with `{"node", "reply"}`. The
//! asker waits until each node of the live set it knew when it asked has
//! answered, or for `request_timeout`; a node that did not answer is
//! named in [`NodeAnswers::missing`] (the caller says so: the call may
//! have acted on some nodes only).
//!
//! The request is the server API's own `{"method", "params"}` JSON, so a
//! peer's call is checked exactly like a caller's (`Checker`), and only
//! the per-node methods are taken from a peer.
//!
//! Bounds: the API → worker queue holds [`CALL_QUEUE`] calls (a full one
//! is answered [`CallRefused::Busy`]); a node runs at most
//! [`MAX_SERVING`] peer calls at once and answers the rest with error 112.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::{Client, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::engine::codes::ErrorCode;
use crate::metrics::{ApiCall, ApiServed, ClusterMetrics};

/// Calls the server API may queue for the worker.
pub const CALL_QUEUE: usize = 256;
/// Peer calls a node runs at once.
pub const MAX_SERVING: usize = 64;
/// The header naming the node that asks. The asker has already run the
/// call on its own shards; its connection is no-echo, so it does not get
/// the call back, and the header makes sure of it whatever the options.
const FROM_HEADER: &str = "Wsedge-From";

/// Runs a peer node's call on this node's shards only.
pub trait NodeApi: Send + Sync + 'static {
    /// `request` is `{"method", "params"}`; the answer is the server API's
    /// reply form: `{"result": …}` or `{"error": {"code", "message"}}`.
    fn call(&self, request: Bytes) -> Pin<Box<dyn Future<Output = Value> + Send>>;
}

/// What the other nodes answered.
#[derive(Debug, Default)]
pub struct NodeAnswers {
    /// Each answering node and its reply (`{"result"}` or `{"error"}`).
    pub answers: Vec<(Arc<str>, Value)>,
    /// Live nodes that did not answer within `request_timeout`.
    pub missing: Vec<Arc<str>>,
}

/// Why a call did not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallRefused {
    /// NATS is unreachable (or the worker stopped).
    Unreachable,
    /// The queue to the worker is full.
    Busy,
}

/// A call for the worker to publish, and where its answers go.
pub(super) struct NodeCall {
    pub(super) request: Bytes,
    pub(super) reply: oneshot::Sender<Result<NodeAnswers, CallRefused>>,
}

/// The server API's handle on the worker for calls to every node. Cheap
/// to clone.
#[derive(Clone)]
pub struct NodeCaller {
    pub(super) tx: mpsc::Sender<NodeCall>,
    pub(super) up: Arc<AtomicBool>,
    pub(super) metrics: ClusterMetrics,
}

impl NodeCaller {
    /// Sends `request` (`{"method", "params"}`) to every other live node
    /// and collects their answers.
    pub async fn call(&self, request: Bytes) -> Result<NodeAnswers, CallRefused> {
        if !self.up.load(Ordering::Acquire) {
            self.metrics.api_call(ApiCall::Unreachable);
            return Err(CallRefused::Unreachable);
        }
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(NodeCall { request, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.api_call(ApiCall::Busy);
                return Err(CallRefused::Busy);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.api_call(ApiCall::Unreachable);
                return Err(CallRefused::Unreachable);
            }
        }
        rx.await.unwrap_or(Err(CallRefused::Unreachable))
    }
}

/// A peer's answer on the inbox.
#[derive(Deserialize)]
struct Answer {
    node: String,
    reply: Value,
}

/// Publishes `request` on `subject` and collects one answer from each of
/// `expected` within `timeout` (runs as its own task on the worker's
/// runtime).
pub(super) async fn ask(
    client: Client,
    from: Arc<str>,
    subject: String,
    request: Bytes,
    expected: Vec<Arc<str>>,
    timeout: Duration,
) -> Result<NodeAnswers, CallRefused> {
    let mut out = NodeAnswers::default();
    if expected.is_empty() {
        return Ok(out);
    }
    let inbox = client.new_inbox();
    // SUB goes out before PUB (one connection, in order).
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|_| CallRefused::Unreachable)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(FROM_HEADER, &*from);
    client
        .publish_with_reply_and_headers(subject, inbox, headers, request)
        .await
        .map_err(|_| CallRefused::Unreachable)?;
    let mut waiting: HashSet<Arc<str>> = expected.into_iter().collect();
    let deadline = tokio::time::Instant::now() + timeout;
    while !waiting.is_empty() {
        let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => break,
        };
        let Ok(answer) = serde_json::from_slice::<Answer>(&msg.payload) else {
            tracing::debug!("cluster: an unreadable answer to a server API call");
            continue;
        };
        // Only a node it waits for, once (a node that joined after the
        // call went out, or a repeat, is not counted).
        if let Some(node) = waiting.take(answer.node.as_str()) {
            out.answers.push((node, answer.reply));
        }
    }
    let mut missing: Vec<Arc<str>> = waiting.into_iter().collect();
    missing.sort();
    out.missing = missing;
    Ok(out)
}

/// Runs a peer's call (from `wsedge.<cluster>.api`) and answers on its
/// reply subject; `serving` bounds how many run at once. This node's own
/// calls come back on the subject too and are skipped.
pub(super) fn serve(
    client: &Client,
    msg: Message,
    node: Arc<str>,
    api: Option<Arc<dyn NodeApi>>,
    serving: &Arc<AtomicUsize>,
    metrics: &ClusterMetrics,
) {
    let Some(reply_to) = msg.reply else {
        return;
    };
    let from = msg.headers.as_ref().and_then(|h| h.get(FROM_HEADER));
    if from.is_some_and(|f| f.as_str() == &*node) {
        return;
    }
    let client = client.clone();
    let too_many = serving.fetch_add(1, Ordering::AcqRel) >= MAX_SERVING;
    let serving = serving.clone();
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let reply = match api {
            _ if too_many => error_reply(ErrorCode::Overloaded),
            None => error_reply(ErrorCode::Internal),
            Some(api) => api.call(msg.payload).await,
        };
        serving.fetch_sub(1, Ordering::AcqRel);
        metrics.api_served(if too_many {
            ApiServed::Busy
        } else if reply.get("result").is_some() {
            ApiServed::Ok
        } else {
            ApiServed::Error
        });
        let body = json!({ "node": &*node, "reply": reply }).to_string();
        if let Err(e) = client.publish(reply_to, Bytes::from(body)).await {
            tracing::debug!(error = %e, "cluster: cannot answer a server API call");
        }
    });
}

/// The server API's error form for `code`.
fn error_reply(code: ErrorCode) -> Value {
    json!({ "error": {
        "code": code.code(),
        "message": code.message(),
        "temporary": code.temporary(),
    } })
}
