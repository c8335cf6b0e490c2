//! The server HTTP API on its own thread (tokio current-thread + hyper),
//! for the application's backend: `POST /api/<method>` with a JSON body
//! and `Authorization: apikey <key>`. It checks each request, sends it to
//! the shard(s) that can answer as [`crate::bridge::ShardMsg::Api`] and
//! merges their answers; it never touches a connection itself.
//!
//! HTTP statuses: 200 for every command that was understood, with
//! `{"result": ...}` or a command-level `{"error": {"code", "message",
//! "temporary"}}` (Centrifugo's default mode); 401 without the right key
//! (always, when no key is configured), 404 for an unknown method, 405 for
//! anything but POST, 413 for a body over `api_max_body`, 400 for a body
//! that is not JSON. docs/OPERATIONS.md ("Server API") documents every
//! method.

mod command;
mod exec;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use serde_json::value::RawValue;

pub use command::{ApiError, Checker, Command, MAX_BATCH, Method, Reply, reply_json};
pub use exec::{Dispatcher, glob_match, merge_all_ok, merge_channels, merge_info};

use super::http::{Body, respond};
use crate::bridge::Inbox;
use crate::config::Config;
use crate::engine::namespace::Namespaces;
use crate::metrics::{ApiMetrics, Metrics};
use crate::shard::Shared;
use crate::sidecar::cluster::{ClusterWorker, NodeApi};

/// How a request ended, for `wsedge_api_requests_total{status}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200 with a `result`.
    Ok,
    /// 200 with a command-level `error`.
    Error,
    /// 400: the body is not JSON (or could not be read).
    BadRequest,
    /// 401: missing or wrong key, or no key configured.
    Unauthorized,
    /// 404: no such method.
    NotFound,
    /// 405: not a POST.
    MethodNotAllowed,
    /// 413: the body is over `api_max_body`.
    TooLarge,
}

impl Status {
    /// Every status, for metrics.
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::Error,
        Status::BadRequest,
        Status::Unauthorized,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::TooLarge,
    ];

    /// The `status` label.
    pub const fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::BadRequest => "bad_request",
            Status::Unauthorized => "unauthorized",
            Status::NotFound => "not_found",
            Status::MethodNotAllowed => "method_not_allowed",
            Status::TooLarge => "too_large",
        }
    }

    /// The HTTP status sent.
    pub const fn http(self) -> StatusCode {
        match self {
            Status::Ok | Status::Error => StatusCode::OK,
            Status::BadRequest => StatusCode::BAD_REQUEST,
            Status::Unauthorized => StatusCode::UNAUTHORIZED,
            Status::NotFound => StatusCode::NOT_FOUND,
            Status::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Status::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// The `method` label of requests whose path names no method.
pub const UNKNOWN_METHOD_LABEL: &str = "unknown";

/// Whether an `Authorization` header carries `apikey <key>`. `None` for
/// `key` (none configured) refuses everything. The key comparison takes a
/// time that depends only on the configured key's length, not on how much
/// of it a caller guessed right.
pub fn authorized(header: Option<&[u8]>, key: Option<&[u8]>) -> bool {
    let (Some(header), Some(key)) = (header, key) else {
        return false;
    };
    const SCHEME: &[u8] = b"apikey ";
    if header.len() < SCHEME.len() || !header[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    constant_time_eq(&header[SCHEME.len()..], key)
}

/// `given == expected` in time that depends on `expected.len()` only.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= std::hint::black_box(g ^ e);
    }
    diff == 0
}

/// The API's state, shared by every connection.
struct Api {
    key: Option<Box<[u8]>>,
    max_body: usize,
    checker: Checker,
    dispatcher: Dispatcher,
    metrics: ApiMetrics,
}

/// An HTTP-level error body: `{"error": {"code": <HTTP status>, "message"}}`.
fn http_error(status: Status, message: &str) -> Response<Body> {
    let body = json!({ "error": { "code": status.http().as_u16(), "message": message } });
    let mut resp = respond(status.http(), "application/json", body.to_string());
    if status == Status::MethodNotAllowed {
        resp.headers_mut()
            .insert("allow", HeaderValue::from_static("POST"));
    }
    resp
}

impl Api {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (method, status, resp) = self.route(req).await;
        let row = method.map_or(Method::ALL.len(), |m| {
            Method::ALL
                .iter()
                .position(|&x| x == m)
                .expect("every method is in ALL")
        });
        let col = Status::ALL
            .iter()
            .position(|&s| s == status)
            .expect("every status is in ALL");
        self.metrics.request(row, col);
        resp
    }

    async fn route(&self, req: Request<Incoming>) -> (Option<Method>, Status, Response<Body>) {
        let method = req
            .uri()
            .path()
            .strip_prefix("/api/")
            .and_then(Method::from_name);
        let auth = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if !authorized(auth, self.key.as_deref()) {
            let why = if self.key.is_none() {
                "the server API is closed: no api_key is configured"
            } else {
                "missing or wrong API key (send Authorization: apikey <key>)"
            };
            return (
                method,
                Status::Unauthorized,
                http_error(Status::Unauthorized, why),
            );
        }
        let Some(method) = method else {
            let msg = format!("no API method at {}", req.uri().path());
            return (None, Status::NotFound, http_error(Status::NotFound, &msg));
        };
        if req.method() != hyper::Method::POST {
            let s = Status::MethodNotAllowed;
            return (Some(method), s, http_error(s, "use POST"));
        }
        let (status, resp) = match self.read(req).await {
            Ok(body) => self.run(method, &body).await,
            Err((status, msg)) => (status, http_error(status, &msg)),
        };
        (Some(method), status, resp)
    }

    /// The body, refused with 413 past `max_body` (at once when the
    /// declared length says so) or 400 when it cannot be read.
    async fn read(&self, req: Request<Incoming>) -> Result<Bytes, (Status, String)> {
        let too_large = || {
            (
                Status::TooLarge,
                format!("the body is over api_max_body ({} bytes)", self.max_body),
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err((Status::BadRequest, format!("cannot read the body: {e}"))),
        }
    }

    /// Checks and runs one request whose body was read.
    async fn run(&self, method: Method, body: &[u8]) -> (Status, Response<Body>) {
        let text = match std::str::from_utf8(body) {
            Ok(t) if t.trim().is_empty() => "{}",
            Ok(t) => t,
            Err(e) => {
                let msg = format!("invalid JSON: the body is not UTF-8 ({e})");
                return (Status::BadRequest, http_error(Status::BadRequest, &msg));
            }
        };
        if let Err(e) = serde_json::from_str::<&RawValue>(text) {
            let msg = format!("invalid JSON: {e}");
            return (Status::BadRequest, http_error(Status::BadRequest, &msg));
        }
        let reply = match self.checker.check(method, text) {
            Ok(cmd) => self.dispatcher.execute(cmd).await,
            Err(e) => Err(e),
        };
        let status = if reply.is_ok() {
            Status::Ok
        } else {
            Status::Error
        };
        let body = reply_json(&reply).to_string();
        (status, respond(StatusCode::OK, "application/json", body))
    }
}

/// Other nodes' calls, run on this node's shards only (the cluster
/// worker's [`NodeApi`]): checked like a caller's, then only the
/// methods that act on every node are taken.
#[derive(Clone)]
struct PeerApi {
    checker: Arc<Checker>,
    dispatcher: Arc<Dispatcher>,
}

impl NodeApi for PeerApi {
    fn call(
        &self,
        request: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send>> {
        let this = self.clone();
        Box::pin(async move { reply_json(&this.run(&request).await) })
    }
}

impl PeerApi {
    async fn run(&self, request: &[u8]) -> Reply {
        #[derive(serde::Deserialize)]
        struct PeerCall<'a> {
            method: String,
            #[serde(borrow)]
            params: &'a RawValue,
        }
        let call: PeerCall = serde_json::from_slice(request)
            .map_err(|e| ApiError::bad_request(format!("unreadable peer call: {e}")))?;
        let method = Method::from_name(&call.method)
            .filter(|m| {
                matches!(
                    m,
                    Method::Subscribe | Method::Unsubscribe | Method::Disconnect | Method::Channels
                )
            })
            .ok_or(crate::engine::codes::ErrorCode::UnknownMethod)?;
        let cmd = self.checker.check(method, call.params.get())?;
        self.dispatcher.on_this_node(cmd).await
    }
}

/// Starts the server API on its own thread; returns the bound address.
/// `inboxes` are the shards', in shard order. In a cluster, the calls
/// that act on every node also go to the other nodes through `cluster`,
/// and theirs are run here.
pub fn start(
    listener: std::net::TcpListener,
    config: &Config,
    inboxes: Arc<[Arc<Inbox>]>,
    shared: Arc<Shared>,
    metrics: &Metrics,
    cluster: Option<&ClusterWorker>,
) -> std::io::Result<SocketAddr> {
    let namespaces = Namespaces::from_config(config).map_err(std::io::Error::other)?;
    let mut dispatcher = Dispatcher::new(inboxes.clone(), shared.clone(), config.node_name.clone());
    if let Some(worker) = cluster {
        dispatcher = dispatcher.with_cluster(worker.caller());
        let peer: Arc<dyn NodeApi> = Arc::new(PeerApi {
            checker: Arc::new(Checker::new(
                namespaces.clone(),
                config.history_max_publications,
            )),
            dispatcher: Arc::new(Dispatcher::new(inboxes, shared, config.node_name.clone())),
        });
        worker.answer_calls(peer);
    }
    let mut methods: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
    methods.push(UNKNOWN_METHOD_LABEL);
    let statuses = Status::ALL.map(Status::label);
    let api = Arc::new(Api {
        key: config
            .api_key
            .as_deref()
            .map(|k| k.as_bytes().to_vec().into_boxed_slice()),
        max_body: config.api_max_body,
        checker: Checker::new(namespaces, config.history_max_publications),
        dispatcher,
        metrics: metrics.api(&methods, &statuses),
    });
    super::http::serve("wsedge-api", listener, move |req| api.clone().handle(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_needs_the_exact_key() {
        let key = Some(&b"s3cret"[..]);
        assert!(authorized(Some(b"apikey s3cret"), key));
        assert!(
            authorized(Some(b"APIKEY s3cret"), key),
            "scheme is case-insensitive"
        );
        for bad in [
            &b"apikey s3cre"[..],
            b"apikey s3cret2",
            b"apikey S3cret",
            b"apikey ",
            b"apikey",
            b"bearer s3cret",
            b"s3cret",
            b"",
        ] {
            assert!(
                !authorized(Some(bad), key),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(!authorized(None, key), "no header");
        assert!(
            !authorized(Some(b"apikey s3cret"), None),
            "no key configured"
        );
        assert!(!authorized(Some(b"apikey "), None));
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        // A missing byte must not compare equal to anything: the stand-in
        // differs from the expected byte in every bit.
        assert!(!constant_time_eq(b"", b"\0"));
    }

    #[test]
    fn statuses_map_to_http() {
        assert_eq!(Status::Error.http(), StatusCode::OK);
        assert_eq!(Status::TooLarge.http(), StatusCode::PAYLOAD_TOO_LARGE);
        let labels: std::collections::HashSet<_> = Status::ALL.map(Status::label).into();
        assert_eq!(labels.len(), Status::ALL.len(), "labels are unique");
    }

    #[test]
    fn http_errors_are_json() {
        let r = http_error(Status::MethodNotAllowed, "use POST");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()["allow"], "POST");
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
