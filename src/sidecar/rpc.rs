//! Clients' backend calls over NATS, on a sidecar thread (`wsedge-rpc`).
//!
//! A client sends `rpc {method, data}` or `send {data}`; its shard hands
//! the call to this worker through [`RpcClient::submit`], which never
//! blocks, and counts an `rpc` against the connection's `[rpc]
//! max_in_flight`.
//! The worker makes `rpc` a NATS request on `<prefix>.rpc.<method>` and
//! `send` a publish on `<prefix>.send`, each with the headers
//! `Wsedge-User`, `Wsedge-Client` and `Wsedge-Node`, and pushes a
//! [`ShardMsg::Rpc`](crate::bridge::ShardMsg::Rpc) with the outcome into
//! the asking shard's inbox (through an [`RpcSink`], which tests replace).
//!
//! Layout: this file is the thread, its one bound and its answers;
//! [`pending`] is the table of requests waiting for their reply; `tests.rs`
//! tests the worker without a NATS server (round trips: `tests/rpc.rs`).
//!
//! Bounds and overflow:
//! - the node holds at most `[rpc] queue_capacity` calls at once, waiting
//!   for the worker or at NATS (a semaphore: a call takes a slot at
//!   `submit` and gives it back once answered); one more is refused at
//!   once (error 112), counted `result="refused"`;
//! - a request waits at most `[rpc] timeout` (error 124), publishing
//!   included; NATS unreachable answers at once (error 100);
//! - sends are published in the order they were submitted, by the
//!   worker's loop itself; requests run concurrently, one task each;
//! - an answer that meets a full inbox is retried 5 times, 2 ms apart;
//!   then its payload is dropped, counted in
//!   `wsedge_rpc_answers_lost_total`, and the shard hears the call's
//!   `(conn, id, kind)` through [`Inbox::rpc_lost`] (never refused): the
//!   client gets error 112 and its in-flight slot is freed.

mod pending;

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, HeaderMap, HeaderValue, Message, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};

use crate::bridge::{CallKind, Inbox, RpcAnswer, RpcOutcome, ShardMsg};
use crate::config::Config;
use crate::config::rpc::RpcNatsSource;
use crate::engine::subs::ConnRef;
use crate::engine::wire::publication::{PubData, is_json_text};
use pending::Pending;

/// The header naming the connection's user (empty when anonymous).
pub const HEADER_USER: &str = "Wsedge-User";
/// The header naming the connection's client id.
pub const HEADER_CLIENT: &str = "Wsedge-Client";
/// The header naming the node (`node_name`).
pub const HEADER_NODE: &str = "Wsedge-Node";
/// The header a responder sets to answer with an error (its value is the
/// error's message, e.g. `400 bad input`).
pub const HEADER_ERROR: &str = "Wsedge-Error";
/// Longest responder error text passed on; longer is cut (at a character
/// boundary).
pub const MAX_ERROR_TEXT: usize = 1024;

/// Attempts to push an answer into a full inbox before reporting it lost
/// (as the ticket sidecar does).
const DELIVER_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const DELIVER_RETRY: Duration = Duration::from_millis(2);
/// Longest the worker spends flushing sends on its way out.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// What the worker needs.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    /// NATS servers, comma-separated.
    pub servers: String,
    /// The cluster's credentials and CA, when the servers are the
    /// cluster's.
    pub auth: Option<crate::sidecar::cluster::NatsAuth>,
    /// This node's name (`Wsedge-Node`).
    pub node: String,
    /// Longest wait for a reply.
    pub timeout: Duration,
    /// Subjects are `<subject_prefix>.rpc.<method>` and
    /// `<subject_prefix>.send`.
    pub subject_prefix: String,
    /// Calls the node holds at once.
    pub queue_capacity: usize,
    /// Largest reply forwarded, in bytes.
    pub max_reply_size: usize,
}

impl RpcOptions {
    /// The options `config` asks for; `None` when backend calls are off
    /// (no NATS configured). Reads the cluster's credentials file when its
    /// servers are used, so a bad one fails the start.
    pub fn from_config(config: &Config) -> io::Result<Option<(RpcOptions, RpcNatsSource)>> {
        let Some((url, source)) = config.rpc_nats() else {
            return Ok(None);
        };
        let auth = match (source, config.cluster.options()) {
            (RpcNatsSource::Cluster, Some(cluster)) => {
                Some(crate::sidecar::cluster::NatsAuth::from_options(&cluster)?)
            }
            _ => None,
        };
        let rpc = &config.rpc;
        Ok(Some((
            RpcOptions {
                servers: url.to_owned(),
                auth,
                node: config.node_name.clone(),
                timeout: rpc.timeout,
                subject_prefix: rpc.subject_prefix.clone(),
                queue_capacity: rpc.queue_capacity,
                max_reply_size: rpc.max_reply_size,
            },
            source,
        )))
    }
}

/// Whether `s` can be a NATS header value (no line break).
pub fn header_safe(s: &str) -> bool {
    !s.contains(['\r', '\n'])
}

/// What a call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcCall {
    /// `rpc`: a request on `<prefix>.rpc.<method>`.
    Request {
        /// The method (already checked: a valid subject suffix).
        method: String,
    },
    /// `send`: a publish on `<prefix>.send`.
    Send,
}

impl RpcCall {
    /// Which command this is.
    pub fn kind(&self) -> CallKind {
        match self {
            RpcCall::Request { .. } => CallKind::Rpc,
            RpcCall::Send => CallKind::Send,
        }
    }
}

/// A call asked by a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcRequest {
    /// The asking shard (its inbox gets the answer).
    pub shard: usize,
    /// The connection that asked.
    pub conn: ConnRef,
    /// Its command's id.
    pub id: u32,
    /// What it asks for.
    pub call: RpcCall,
    /// The payload, as the client gave it.
    pub payload: Bytes,
    /// The connection's user (empty when anonymous; no line break).
    pub user: Arc<str>,
    /// The connection's client id.
    pub client: String,
}

/// Why [`RpcClient::submit`] refused a call (counted already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcRefused {
    /// The node holds `queue_capacity` calls (error 112).
    Busy,
    /// The worker has stopped (error 100).
    Stopped,
}

/// Where answers go: the shards' inboxes in the node ([`RpcInboxes`]),
/// something else in tests.
pub trait RpcSink: Send + Sync + 'static {
    /// Queues `answer` for `shard` without blocking; gives it back when
    /// it cannot be queued now.
    fn deliver(&self, shard: usize, answer: Box<RpcAnswer>) -> Result<(), Box<RpcAnswer>>;
    /// Tells `shard` that the answer to `conn`'s call `id` (a `kind`) was
    /// lost (never refused).
    fn lost(&self, shard: usize, conn: ConnRef, id: u32, kind: CallKind);
}

/// The node's sink: the shards' inboxes, in shard order.
pub struct RpcInboxes(pub Arc<[Arc<Inbox>]>);

impl RpcSink for RpcInboxes {
    fn deliver(&self, shard: usize, answer: Box<RpcAnswer>) -> Result<(), Box<RpcAnswer>> {
        let Some(inbox) = self.0.get(shard) else {
            return Err(answer);
        };
        match inbox.push(ShardMsg::Rpc(answer)) {
            Ok(()) => Ok(()),
            Err(ShardMsg::Rpc(answer)) => Err(answer),
            Err(_) => unreachable!("Inbox::push gives back the message it was given"),
        }
    }

    fn lost(&self, shard: usize, conn: ConnRef, id: u32, kind: CallKind) {
        if let Some(inbox) = self.0.get(shard) {
            inbox.rpc_lost(conn, id, kind);
        }
    }
}

/// The worker's counters. Standalone by default (tests); the node takes
/// registered ones from `crate::metrics::Metrics::rpc`, exported as
/// `wsedge_rpc_requests_total{result}`, `wsedge_rpc_sends_total{result}`,
/// `wsedge_rpc_in_flight` and `wsedge_rpc_answers_lost_total`.
#[derive(Debug, Clone, Default)]
pub struct RpcMetrics {
    requests: [Counter; 6],
    sends: [Counter; 3],
    in_flight: Gauge<i64, AtomicI64>,
    answers_lost: Counter,
}

impl RpcMetrics {
    /// The `result` labels of `rpc` calls, in the order
    /// [`RpcMetrics::from_parts`] takes their counters.
    pub const REQUEST_RESULTS: [&'static str; 6] = [
        "ok",
        "timeout",
        "no_responders",
        "error",
        "unavailable",
        "refused",
    ];
    /// The `result` labels of `send` calls, likewise.
    pub const SEND_RESULTS: [&'static str; 3] = ["ok", "unavailable", "refused"];

    /// Metrics over existing (registered) counters.
    pub fn from_parts(
        requests: [Counter; 6],
        sends: [Counter; 3],
        in_flight: Gauge<i64, AtomicI64>,
        answers_lost: Counter,
    ) -> Self {
        Self {
            requests,
            sends,
            in_flight,
            answers_lost,
        }
    }

    /// Counts a call that ended with `outcome` (`None`: refused at
    /// submit).
    fn count(&self, call: &RpcCall, outcome: Option<&RpcOutcome>) {
        let label = match outcome {
            None => "refused",
            Some(RpcOutcome::Reply(_) | RpcOutcome::Sent) => "ok",
            Some(RpcOutcome::Timeout) => "timeout",
            Some(RpcOutcome::NoResponders) => "no_responders",
            Some(RpcOutcome::Failed(_)) => "error",
            Some(RpcOutcome::Unavailable) => "unavailable",
        };
        let (labels, counters) = match call {
            RpcCall::Request { .. } => (&Self::REQUEST_RESULTS[..], &self.requests[..]),
            RpcCall::Send => (&Self::SEND_RESULTS[..], &self.sends[..]),
        };
        if let Some(i) = labels.iter().position(|l| *l == label) {
            counters[i].inc();
        }
    }

    /// `rpc` calls that ended with `result` (a [`Self::REQUEST_RESULTS`]
    /// label).
    pub fn requests(&self, result: &str) -> u64 {
        Self::REQUEST_RESULTS
            .iter()
            .position(|l| *l == result)
            .map_or(0, |i| self.requests[i].get())
    }

    /// `send` calls that ended with `result` (a [`Self::SEND_RESULTS`]
    /// label).
    pub fn sends(&self, result: &str) -> u64 {
        Self::SEND_RESULTS
            .iter()
            .position(|l| *l == result)
            .map_or(0, |i| self.sends[i].get())
    }

    /// Calls the node holds now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Answers lost to a full inbox.
    pub fn answers_lost(&self) -> u64 {
        self.answers_lost.get()
    }
}

/// A call the node holds: it keeps its slot until dropped.
struct Admitted {
    req: RpcRequest,
    _slot: Slot,
}

/// One of the node's `queue_capacity` slots, counted in the in-flight
/// gauge while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge<i64, AtomicI64>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A shard's handle on the worker: cheap to clone, never blocks.
#[derive(Clone)]
pub struct RpcClient {
    tx: mpsc::UnboundedSender<Admitted>,
    slots: Arc<Semaphore>,
    metrics: RpcMetrics,
}

impl RpcClient {
    /// Hands a call to the worker; its answer arrives later through the
    /// sink. Refuses at once, and counts, when the node holds
    /// `queue_capacity` calls or the worker has stopped.
    pub fn submit(&self, req: RpcRequest) -> Result<(), RpcRefused> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => {
                self.metrics.count(&req.call, None);
                return Err(RpcRefused::Busy);
            }
            Err(TryAcquireError::Closed) => {
                self.metrics
                    .count(&req.call, Some(&RpcOutcome::Unavailable));
                return Err(RpcRefused::Stopped);
            }
        };
        self.metrics.in_flight.inc();
        let slot = Slot {
            _permit: permit,
            gauge: self.metrics.in_flight.clone(),
        };
        self.tx.send(Admitted { req, _slot: slot }).map_err(|back| {
            self.metrics
                .count(&back.0.req.call, Some(&RpcOutcome::Unavailable));
            RpcRefused::Stopped
        })
    }
}

/// The running worker thread. Dropping it stops the worker (without
/// waiting); [`RpcWorker::shutdown`] stops it and waits.
pub struct RpcWorker {
    client: RpcClient,
    worker: super::WorkerThread,
}

impl RpcWorker {
    /// A handle for a shard.
    pub fn client(&self) -> RpcClient {
        self.client.clone()
    }

    /// Stops taking calls, answers those still queued as unavailable,
    /// flushes the sends (at most 1 s) and joins the thread.
    pub fn shutdown(self) {
        self.client.slots.close();
        self.worker.shutdown();
    }
}

/// Starts the worker thread (`wsedge-rpc`) on a current-thread tokio
/// runtime. Returns at once: the NATS connection is made in the
/// background and retried until NATS answers (calls meanwhile get error
/// 100). Refuses (`InvalidInput`) unusable options.
pub fn spawn_rpc_worker(
    opts: RpcOptions,
    sink: impl RpcSink,
    metrics: RpcMetrics,
) -> io::Result<RpcWorker> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let servers = crate::sidecar::cluster::parse_servers(&opts.servers).map_err(invalid)?;
    if opts.queue_capacity == 0 || opts.queue_capacity > Semaphore::MAX_PERMITS {
        return Err(invalid("rpc queue_capacity must be at least 1".into()));
    }
    if opts.timeout.is_zero() {
        return Err(invalid("rpc timeout must be above zero".into()));
    }
    if !header_safe(&opts.node) {
        return Err(invalid("node_name must not hold a line break".into()));
    }
    let mut connect = ConnectOptions::new()
        .name(format!("wsedge rpc {}", opts.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // The calls the node holds are bounded by `queue_capacity`; the
        // client's own queue never needs to make one wait.
        .client_capacity(opts.queue_capacity.max(1024))
        .subscription_capacity(opts.queue_capacity.max(1024))
        .event_callback(|event| async move { log_event(event) });
    if let Some(auth) = &opts.auth {
        connect = auth.apply(connect);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(opts.queue_capacity));
    let shared = Arc::new(Shared {
        sink: Box::new(sink),
        metrics: metrics.clone(),
        timeout: opts.timeout,
        request_prefix: format!("{}.rpc.", opts.subject_prefix),
        send_subject: format!("{}.send", opts.subject_prefix),
        node: opts.node,
        max_reply_size: opts.max_reply_size,
        pending: Pending::default(),
    });
    let shown = crate::sidecar::cluster::redacted_servers(&opts.servers);
    let worker = super::WorkerThread::spawn("wsedge-rpc", runtime, move |stop| {
        run(servers, shown, connect, rx, stop, shared)
    })?;
    Ok(RpcWorker {
        client: RpcClient { tx, slots, metrics },
        worker,
    })
}

/// Starts the worker when `config` has a NATS for backend calls (logs
/// where from); `None` when it has none (`rpc` and `send` then answer
/// error 127).
pub fn start(
    config: &Config,
    inboxes: &Arc<[Arc<Inbox>]>,
    metrics: RpcMetrics,
) -> Result<Option<RpcWorker>, String> {
    let Some((opts, source)) =
        RpcOptions::from_config(config).map_err(|e| format!("rpc worker: {e}"))?
    else {
        return Ok(None);
    };
    let servers = crate::sidecar::cluster::redacted_servers(&opts.servers);
    let prefix = opts.subject_prefix.clone();
    let worker = spawn_rpc_worker(opts, RpcInboxes(inboxes.clone()), metrics)
        .map_err(|e| format!("rpc worker: {e}"))?;
    tracing::info!(
        servers = %servers,
        from = source.key(),
        subjects = %format!("{prefix}.rpc.<method>, {prefix}.send"),
        allow_anonymous = config.rpc.allow_anonymous,
        "backend calls (rpc, send) go through NATS"
    );
    Ok(Some(worker))
}

fn log_event(event: Event) {
    match event {
        Event::Connected => tracing::info!("rpc: connected to NATS"),
        Event::Disconnected => tracing::warn!(
            "rpc: NATS connection lost; rpc and send get error 100 until it is back \
             (wsedge_rpc_requests_total{{result=\"unavailable\"}})"
        ),
        other => tracing::debug!(event = %other, "rpc: NATS event"),
    }
}

/// What every call shares.
struct Shared {
    sink: Box<dyn RpcSink>,
    metrics: RpcMetrics,
    timeout: Duration,
    /// `<prefix>.rpc.`, the method follows.
    request_prefix: String,
    send_subject: String,
    node: String,
    max_reply_size: usize,
    pending: Pending,
}

/// The worker's loop: sends published in order, requests spawned, the
/// reply subscription's messages handed to their requests.
async fn run(
    servers: Vec<async_nats::ServerAddr>,
    shown: String,
    connect: ConnectOptions,
    mut rx: mpsc::UnboundedReceiver<Admitted>,
    mut stop: oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    // With `retry_on_initial_connect` this returns at once; it fails only
    // on options it cannot use, and every call is then unavailable.
    let client = match connect.connect(servers).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(servers = %shown, error = %e, "rpc: cannot start the NATS client; rpc and send get error 100");
            None
        }
    };
    let inbox = client.as_ref().map(Client::new_inbox);
    let mut replies = match (&client, &inbox) {
        (Some(c), Some(inbox)) => match c.subscribe(format!("{inbox}.*")).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "rpc: cannot subscribe to replies; rpc gets error 100");
                None
            }
        },
        _ => None,
    };
    tracing::info!(servers = %shown, "rpc: connecting to NATS in the background");
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            msg = next_reply(&mut replies), if replies.is_some() => match msg {
                Some(msg) => {
                    let token = msg.subject.rsplit_once('.').map_or("", |(_, t)| t).to_owned();
                    shared.pending.answer(&token, msg);
                }
                // The client is gone: requests can no longer be answered.
                None => replies = None,
            },
            call = rx.recv() => match call {
                Some(call) => {
                    let inbox = inbox.as_deref().filter(|_| replies.is_some());
                    start_call(&shared, client.as_ref(), inbox, call).await;
                }
                None => break,
            },
        }
    }
    // Stopping: nothing new gets in; what is queued is answered at once.
    rx.close();
    while let Ok(call) = rx.try_recv() {
        finish(&shared, call, RpcOutcome::Unavailable).await;
    }
    if let Some(c) = &client
        && tokio::time::timeout(SHUTDOWN_FLUSH, c.flush())
            .await
            .is_err()
    {
        tracing::warn!("rpc: stopped before every send reached NATS");
    }
}

/// The next message of the reply subscription (`None`: it ended).
async fn next_reply(replies: &mut Option<async_nats::Subscriber>) -> Option<Message> {
    replies.as_mut()?.next().await
}

/// Publishes a send now (so sends keep their order) or spawns a request;
/// `inbox` is the reply subscription's prefix while it runs. Answers are
/// delivered by tasks of their own, so a full inbox never holds up the
/// loop.
async fn start_call(
    shared: &Arc<Shared>,
    client: Option<&Client>,
    inbox: Option<&str>,
    call: Admitted,
) {
    let Some(client) = client.filter(|c| c.connection_state() == State::Connected) else {
        return answer_later(shared, call, RpcOutcome::Unavailable);
    };
    let headers = match headers(&call.req, &shared.node) {
        Ok(h) => h,
        Err(outcome) => return answer_later(shared, call, outcome),
    };
    match &call.req.call {
        RpcCall::Send => {
            let published = client
                .publish_with_headers(
                    shared.send_subject.clone(),
                    headers,
                    call.req.payload.clone(),
                )
                .await;
            let outcome = match published {
                Ok(()) => RpcOutcome::Sent,
                Err(e) => publish_failed(&e),
            };
            answer_later(shared, call, outcome);
        }
        RpcCall::Request { method } => {
            let Some(inbox) = inbox else {
                return answer_later(shared, call, RpcOutcome::Unavailable);
            };
            let subject = format!("{}{method}", shared.request_prefix);
            let task = request(
                shared.clone(),
                client.clone(),
                inbox.to_owned(),
                subject,
                headers,
                call,
            );
            tokio::spawn(task);
        }
    }
}

/// The call's headers, or the outcome when they cannot be made.
fn headers(req: &RpcRequest, node: &str) -> Result<HeaderMap, RpcOutcome> {
    let value = |s: &str| {
        s.parse::<HeaderValue>()
            .map_err(|_| RpcOutcome::Failed("the caller cannot be named in a header".into()))
    };
    let mut h = HeaderMap::new();
    h.insert(HEADER_USER, value(&req.user)?);
    h.insert(HEADER_CLIENT, value(&req.client)?);
    h.insert(HEADER_NODE, value(node)?);
    Ok(h)
}

/// What a failed publish means for the client.
fn publish_failed(e: &async_nats::PublishError) -> RpcOutcome {
    match e.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
            RpcOutcome::Failed("request larger than the NATS server accepts".into())
        }
        _ => RpcOutcome::Unavailable,
    }
}

/// One request: published with its reply subject, answered by its reply
/// or by the timeout.
async fn request(
    shared: Arc<Shared>,
    client: Client,
    inbox: String,
    subject: String,
    headers: HeaderMap,
    call: Admitted,
) {
    let mut waiting = shared.pending.open();
    let reply_to = format!("{inbox}.{}", waiting.token);
    let payload = call.req.payload.clone();
    let exchange = async {
        client
            .publish_with_reply_and_headers(subject, reply_to, headers, payload)
            .await
            .map_err(|e| publish_failed(&e))?;
        (&mut waiting.reply)
            .await
            .map_err(|_| RpcOutcome::Unavailable)
    };
    let outcome = match tokio::time::timeout(shared.timeout, exchange).await {
        Err(_elapsed) => RpcOutcome::Timeout,
        Ok(Err(outcome)) => outcome,
        Ok(Ok(msg)) => reply_outcome(msg, shared.max_reply_size),
    };
    finish(&shared, call, outcome).await;
}

/// What a reply means for the client.
fn reply_outcome(msg: Message, max_reply_size: usize) -> RpcOutcome {
    if msg.status == Some(StatusCode::NO_RESPONDERS) {
        return RpcOutcome::NoResponders;
    }
    if let Some(e) = msg.headers.as_ref().and_then(|h| h.get(HEADER_ERROR)) {
        return RpcOutcome::Failed(cut(e.as_str(), MAX_ERROR_TEXT).to_owned());
    }
    if msg.payload.len() > max_reply_size {
        return RpcOutcome::Failed("reply too large".into());
    }
    RpcOutcome::Reply(PubData {
        is_json: is_json_text(&msg.payload),
        bytes: msg.payload,
    })
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`finish`] on a task of its own.
fn answer_later(shared: &Arc<Shared>, call: Admitted, outcome: RpcOutcome) {
    let shared = shared.clone();
    tokio::spawn(async move { finish(&shared, call, outcome).await });
}

/// Counts the call and answers it; its slot is freed once the answer is
/// delivered (or reported lost).
async fn finish(shared: &Shared, call: Admitted, outcome: RpcOutcome) {
    let Admitted { req, _slot } = call;
    shared.metrics.count(&req.call, Some(&outcome));
    let kind = req.call.kind();
    let mut answer = Box::new(RpcAnswer {
        conn: req.conn,
        id: req.id,
        kind,
        outcome,
    });
    for attempt in 1..=DELIVER_ATTEMPTS {
        match shared.sink.deliver(req.shard, answer) {
            Ok(()) => return,
            Err(back) => answer = back,
        }
        if attempt < DELIVER_ATTEMPTS {
            tokio::time::sleep(DELIVER_RETRY).await;
        }
    }
    shared.metrics.answers_lost.inc();
    shared.sink.lost(req.shard, req.conn, req.id, kind);
    tracing::debug!(
        shard = req.shard,
        "rpc answer lost: the shard's inbox stayed full; the client gets error 112"
    );
}

#[cfg(test)]
mod tests;
