//! One-time WebSocket tickets redeemed through Redis, on a sidecar thread.
//!
//! A backend writes `wsedge:ticket:<ticket>` = claims JSON with a short TTL
//! (`SET wsedge:ticket:<t> '<json>' EX 30`); a client sends
//! `connect {ticket}`. The shard hands the ticket to this worker through
//! [`TicketClient::redeem`], which never blocks, and keeps the connection
//! pending. The worker redeems the ticket with one `GETDEL` (Redis 6.2+),
//! so a ticket works once, and pushes a
//! [`ShardMsg::Ticket`](crate::bridge::ShardMsg::Ticket) into the asking
//! shard's inbox (through a [`TicketSink`], which tests replace).
//!
//! Layout: the ticket and claims rules are in [`claims`]; this file is the
//! thread, its queue and its bounds:
//! - requests wait in a bounded queue; a full queue refuses at once
//!   ([`TicketError::Busy`]), an invalid ticket string never enters it
//!   ([`TicketError::Invalid`]);
//! - at most [`TicketOptions::max_in_flight`] redemptions run at a time,
//!   each within [`TicketOptions::timeout`]; Redis down or slow answers
//!   [`TicketError::Unavailable`] (temporary) and the worker goes on;
//!   `redis::aio::ConnectionManager` reconnects on its own;
//! - an answer that meets a full inbox is retried 5 times, 2 ms apart, then
//!   dropped and counted (the connection then ends at its connect timeout).
//!
//! A redemption that times out may still have consumed the ticket in
//! Redis; the client's retry then gets 3502 and must fetch a new ticket.

pub mod claims;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::bridge::{Inbox, ShardMsg};
pub use crate::bridge::{TicketAnswer, TicketClaims, TicketError, TicketVerdict};
use crate::engine::subs::ConnRef;
pub use claims::{KEY_PREFIX, MAX_CLAIMS_LEN, MAX_TICKET_LEN, parse_claims, valid_ticket};

/// Attempts to push an answer into a full inbox before dropping it (the
/// server API sidecar uses the same bound).
const DELIVER_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const DELIVER_RETRY: Duration = Duration::from_millis(2);
/// Largest `max_in_flight` accepted (the shutdown waits for every permit
/// in one `acquire_many`, which takes a `u32`).
const MAX_IN_FLIGHT_LIMIT: usize = 1 << 16;

/// Bounds of the ticket worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketOptions {
    /// Requests waiting for a free redemption slot. Default 1024: about
    /// four rounds of `max_in_flight`, so a reconnect storm queues briefly
    /// instead of being refused, while a Redis outage cannot hold more
    /// than this many pending connections in the queue.
    pub queue_capacity: usize,
    /// Redemptions running at once (each is one `GETDEL` on a multiplexed
    /// connection). Default 256: far above what one Redis round trip per
    /// connect needs on a healthy network, small enough that a stalled
    /// Redis ties up little memory.
    pub max_in_flight: usize,
    /// Longest wait for Redis per redemption, including a reconnect.
    /// Default 2 s: well above a healthy round trip, short enough that the
    /// client's retry happens well within a 10 s `connect_timeout`.
    pub timeout: Duration,
}

impl Default for TicketOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_in_flight: 256,
            timeout: Duration::from_secs(2),
        }
    }
}

/// A redemption asked by a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRequest {
    /// The asking shard (its inbox gets the answer).
    pub shard: usize,
    /// The waiting connection.
    pub conn: ConnRef,
    /// Its `connect` command's id.
    pub id: u32,
    /// The ticket as the client sent it.
    pub ticket: String,
}

/// A request [`TicketClient::redeem`] refused at once: the caller answers
/// it itself (see [`Refused::into_answer`]); it has been counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The request, given back.
    pub req: TicketRequest,
    /// [`TicketError::Invalid`], [`TicketError::Busy`] (queue full) or
    /// [`TicketError::Unavailable`] (the worker has stopped).
    pub error: TicketError,
}

impl Refused {
    /// The answer the waiting connection gets.
    pub fn into_answer(self) -> TicketAnswer {
        TicketAnswer {
            conn: self.req.conn,
            id: self.req.id,
            result: Err(self.error),
        }
    }
}

/// Where answers go: each shard's inbox in the node ([`InboxSink`]), a
/// closure in tests.
pub trait TicketSink: Send + Sync + 'static {
    /// Queues `answer` for `shard` without blocking; gives it back when it
    /// cannot be queued now.
    fn deliver(&self, shard: usize, answer: Box<TicketAnswer>) -> Result<(), Box<TicketAnswer>>;
}

impl<F> TicketSink for F
where
    F: Fn(usize, Box<TicketAnswer>) -> Result<(), Box<TicketAnswer>> + Send + Sync + 'static,
{
    fn deliver(&self, shard: usize, answer: Box<TicketAnswer>) -> Result<(), Box<TicketAnswer>> {
        self(shard, answer)
    }
}

/// The node's sink: the shards' inboxes, in shard order. An answer for a
/// shard that does not exist is refused (and, after the retries, counted
/// as dropped).
pub struct InboxSink(pub Arc<[Arc<Inbox>]>);

impl TicketSink for InboxSink {
    fn deliver(&self, shard: usize, answer: Box<TicketAnswer>) -> Result<(), Box<TicketAnswer>> {
        let Some(inbox) = self.0.get(shard) else {
            return Err(answer);
        };
        match inbox.push(ShardMsg::Ticket(answer)) {
            Ok(()) => Ok(()),
            Err(ShardMsg::Ticket(answer)) => Err(answer),
            Err(_) => unreachable!("Inbox::push gives back the message it was given"),
        }
    }
}

/// The worker's counters. Standalone by default (tests); the node takes
/// registered ones from `crate::metrics::Metrics::tickets`, exported as
/// `wsedge_ticket_redemptions_total{result}`,
/// `wsedge_ticket_answers_dropped_total` and
/// `wsedge_ticket_redemptions_in_flight`.
#[derive(Debug, Clone, Default)]
pub struct TicketMetrics {
    results: [Counter; 6],
    dropped: Counter,
    in_flight: Gauge<i64, AtomicI64>,
}

impl TicketMetrics {
    /// The `result` labels, in the order [`TicketMetrics::from_parts`]
    /// takes their counters: `redeemed`, then [`TicketError::ALL`]'s.
    pub const RESULTS: [&'static str; 6] = [
        "redeemed",
        TicketError::ALL[0].label(),
        TicketError::ALL[1].label(),
        TicketError::ALL[2].label(),
        TicketError::ALL[3].label(),
        TicketError::ALL[4].label(),
    ];

    /// Metrics over existing (registered) counters: one per
    /// [`TicketMetrics::RESULTS`] label, dropped answers, in-flight gauge.
    pub fn from_parts(
        results: [Counter; 6],
        dropped: Counter,
        in_flight: Gauge<i64, AtomicI64>,
    ) -> Self {
        Self {
            results,
            dropped,
            in_flight,
        }
    }

    /// The position of `result`'s counter (and label in [`Self::RESULTS`]).
    const fn slot(result: Result<(), TicketError>) -> usize {
        match result {
            Ok(()) => 0,
            Err(TicketError::Unknown) => 1,
            Err(TicketError::Malformed) => 2,
            Err(TicketError::Unavailable) => 3,
            Err(TicketError::Busy) => 4,
            Err(TicketError::Invalid) => 5,
        }
    }

    fn count(&self, result: Result<(), TicketError>) {
        self.results[Self::slot(result)].inc();
    }

    /// Tickets redeemed (claims handed to a shard).
    pub fn redeemed(&self) -> u64 {
        self.results[0].get()
    }

    /// Redemptions that ended with `error`.
    pub fn failed(&self, error: TicketError) -> u64 {
        self.results[Self::slot(Err(error))].get()
    }

    /// Answers dropped because the shard's inbox stayed full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Redemptions running now (at most `max_in_flight`).
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }
}

/// A shard's handle on the worker: cheap to clone, never blocks.
#[derive(Clone)]
pub struct TicketClient {
    tx: mpsc::Sender<TicketRequest>,
    metrics: TicketMetrics,
}

impl TicketClient {
    /// Queues a redemption; its answer arrives later through the sink.
    /// Refuses at once, and counts, a ticket that fails
    /// [`valid_ticket`] (`Invalid`), a full queue (`Busy`) or a stopped
    /// worker (`Unavailable`).
    pub fn redeem(&self, req: TicketRequest) -> Result<(), Refused> {
        if !valid_ticket(&req.ticket) {
            return Err(self.refuse(req, TicketError::Invalid));
        }
        self.tx.try_send(req).map_err(|e| match e {
            TrySendError::Full(req) => self.refuse(req, TicketError::Busy),
            TrySendError::Closed(req) => self.refuse(req, TicketError::Unavailable),
        })
    }

    fn refuse(&self, req: TicketRequest, error: TicketError) -> Refused {
        self.metrics.count(Err(error));
        Refused { req, error }
    }
}

/// The running worker thread. Dropping it stops the worker (without
/// waiting); [`TicketWorker::shutdown`] stops it and waits.
pub struct TicketWorker {
    client: TicketClient,
    worker: super::WorkerThread,
}

impl TicketWorker {
    /// A handle for a shard.
    pub fn client(&self) -> TicketClient {
        self.client.clone()
    }

    /// Stops taking requests, answers those still queued with
    /// `Unavailable`, waits for the redemptions in flight (at most the
    /// timeout) and joins the thread.
    pub fn shutdown(self) {
        self.worker.shutdown();
    }
}

/// Starts the ticket worker thread (`wsedge-tickets`) on a current-thread
/// tokio runtime, connected lazily to `redis_url` (`redis://[:password@]host:port[/db]`):
/// a Redis that is down at start only makes redemptions `Unavailable`
/// until it is up.
pub fn spawn_ticket_worker(
    redis_url: &str,
    opts: TicketOptions,
    sink: impl TicketSink,
    metrics: TicketMetrics,
) -> io::Result<TicketWorker> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if opts.queue_capacity == 0 {
        return Err(invalid("ticket queue capacity must be at least 1".into()));
    }
    if opts.max_in_flight == 0 || opts.max_in_flight > MAX_IN_FLIGHT_LIMIT {
        return Err(invalid(format!(
            "ticket max_in_flight must be 1..={MAX_IN_FLIGHT_LIMIT}"
        )));
    }
    if opts.timeout.is_zero() {
        return Err(invalid("ticket timeout must be above zero".into()));
    }
    let client = redis::Client::open(redis_url)
        .map_err(|e| invalid(format!("redis_url is not a Redis URL: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A redemption never waits longer than `timeout`, and the next one
    // starts a fresh reconnect anyway.
    let manager = super::redis_manager(&runtime, client, opts.timeout)?;
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let shared = Arc::new(Shared {
        sink: Box::new(sink),
        metrics: metrics.clone(),
        timeout: opts.timeout,
        redis_up: AtomicBool::new(true),
    });
    let max_in_flight = opts.max_in_flight;
    let worker = super::WorkerThread::spawn("wsedge-tickets", runtime, move |stop| {
        run(manager, rx, stop, shared, max_in_flight)
    })?;
    Ok(TicketWorker {
        client: TicketClient { tx, metrics },
        worker,
    })
}

/// What every redemption task shares.
struct Shared {
    sink: Box<dyn TicketSink>,
    metrics: TicketMetrics,
    timeout: Duration,
    /// Whether the last redemption reached Redis (logs only the changes).
    redis_up: AtomicBool,
}

/// The worker's loop: one task per request, at most `max_in_flight` at a
/// time; the queue holds the rest.
async fn run(
    manager: ConnectionManager,
    mut rx: mpsc::Receiver<TicketRequest>,
    mut stop: oneshot::Receiver<()>,
    shared: Arc<Shared>,
    max_in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    loop {
        let permit = tokio::select! {
            biased;
            _ = &mut stop => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let req = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
        };
        tokio::spawn(redeem_one(manager.clone(), req, permit, shared.clone()));
    }
    // Shutdown: nothing new gets in; what is queued is answered at once.
    rx.close();
    while let Some(req) = rx.recv().await {
        shared.metrics.count(Err(TicketError::Unavailable));
        let answer = Box::new(TicketAnswer {
            conn: req.conn,
            id: req.id,
            result: Err(TicketError::Unavailable),
        });
        deliver(&shared, req.shard, answer).await;
    }
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let wait = shared.timeout + Duration::from_secs(1);
    if tokio::time::timeout(wait, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("ticket worker stopped with redemptions still in flight");
    }
}

/// Redeems one ticket and delivers the answer; holds its slot throughout,
/// so answers waiting for a full inbox count against `max_in_flight` too.
async fn redeem_one(
    mut con: ConnectionManager,
    req: TicketRequest,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
) {
    shared.metrics.in_flight.inc();
    let result = getdel(&mut con, &req.ticket, &shared).await;
    shared
        .metrics
        .count(result.as_ref().map(|_| ()).map_err(|e| *e));
    let answer = Box::new(TicketAnswer {
        conn: req.conn,
        id: req.id,
        result,
    });
    deliver(&shared, req.shard, answer).await;
    shared.metrics.in_flight.dec();
    drop(permit);
}

/// `GETDEL wsedge:ticket:<ticket>` within the timeout, and the claims.
async fn getdel(
    con: &mut ConnectionManager,
    ticket: &str,
    shared: &Shared,
) -> Result<TicketClaims, TicketError> {
    let mut cmd = redis::cmd("GETDEL");
    cmd.arg(claims::ticket_key(ticket));
    let reply = tokio::time::timeout(shared.timeout, cmd.query_async::<Option<Vec<u8>>>(con)).await;
    let value = match reply {
        Ok(Ok(value)) => value,
        // The key holds a hash, list...: the backend wrote it wrong, and
        // Redis answered, so this is not an outage.
        Ok(Err(e)) if e.code() == Some("WRONGTYPE") => {
            redis_reachable(shared);
            return Err(TicketError::Malformed);
        }
        Ok(Err(e)) => {
            redis_unreachable(shared, &e);
            return Err(TicketError::Unavailable);
        }
        Err(_elapsed) => {
            redis_unreachable(shared, &"no answer within the ticket timeout");
            return Err(TicketError::Unavailable);
        }
    };
    redis_reachable(shared);
    match value {
        None => Err(TicketError::Unknown),
        Some(value) => parse_claims(&value),
    }
}

fn redis_reachable(shared: &Shared) {
    if !shared.redis_up.swap(true, Ordering::Relaxed) {
        tracing::info!("ticket redemption: Redis answers again");
    }
}

fn redis_unreachable(shared: &Shared, why: &dyn std::fmt::Display) {
    if shared.redis_up.swap(false, Ordering::Relaxed) {
        tracing::warn!(
            error = %why,
            "ticket redemption: Redis is unreachable; connects with a ticket get a \
             temporary error until it is back (wsedge_ticket_redemptions_total{{result=\"unavailable\"}})"
        );
    }
}

/// Pushes `answer` to `shard`, retrying a full inbox briefly; counts a drop.
async fn deliver(shared: &Shared, shard: usize, mut answer: Box<TicketAnswer>) {
    for attempt in 1..=DELIVER_ATTEMPTS {
        match shared.sink.deliver(shard, answer) {
            Ok(()) => return,
            Err(back) => answer = back,
        }
        if attempt < DELIVER_ATTEMPTS {
            tokio::time::sleep(DELIVER_RETRY).await;
        }
    }
    shared.metrics.dropped.inc();
    tracing::debug!(
        shard,
        conn = answer.conn.idx,
        "ticket answer dropped: the shard's inbox stayed full"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn req(ticket: &str) -> TicketRequest {
        TicketRequest {
            shard: 0,
            conn: ConnRef {
                idx: 7,
                generation: 1,
            },
            id: 3,
            ticket: ticket.into(),
        }
    }

    #[test]
    fn metrics_labels_line_up() {
        let m = TicketMetrics::default();
        m.count(Ok(()));
        for (i, e) in TicketError::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                m.count(Err(e));
            }
        }
        assert_eq!(m.redeemed(), 1);
        for (i, e) in TicketError::ALL.into_iter().enumerate() {
            assert_eq!(m.failed(e), i as u64 + 1, "{e:?}");
            assert_eq!(
                TicketMetrics::RESULTS[TicketMetrics::slot(Err(e))],
                e.label()
            );
        }
        assert_eq!(
            TicketMetrics::RESULTS[TicketMetrics::slot(Ok(()))],
            "redeemed"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let sink = |_: usize, _: Box<TicketAnswer>| Ok(());
        for opts in [
            TicketOptions {
                queue_capacity: 0,
                ..Default::default()
            },
            TicketOptions {
                max_in_flight: 0,
                ..Default::default()
            },
            TicketOptions {
                timeout: Duration::ZERO,
                ..Default::default()
            },
        ] {
            let e = spawn_ticket_worker("redis://127.0.0.1:1", opts, sink, Default::default())
                .err()
                .expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        let e = spawn_ticket_worker("http://x", Default::default(), sink, Default::default())
            .err()
            .expect("not a Redis URL");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn refusals_are_immediate_and_counted() {
        // Nothing listens on port 1: whatever reaches the worker fails, but
        // these requests never do.
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink = move |_: usize, a: Box<TicketAnswer>| {
            g.lock().unwrap().push(*a);
            Ok(())
        };
        let metrics = TicketMetrics::default();
        let worker = spawn_ticket_worker(
            "redis://127.0.0.1:1",
            Default::default(),
            sink,
            metrics.clone(),
        )
        .unwrap();
        let client = worker.client();
        let r = client.redeem(req("with space")).unwrap_err();
        assert_eq!(r.error, TicketError::Invalid);
        let a = r.into_answer();
        assert_eq!((a.conn.idx, a.id), (7, 3));
        assert_eq!(a.result, Err(TicketError::Invalid));
        assert_eq!(metrics.failed(TicketError::Invalid), 1);
        worker.shutdown();
        let r = client.redeem(req("fine")).unwrap_err();
        assert_eq!(r.error, TicketError::Unavailable, "the worker has stopped");
        assert_eq!(metrics.failed(TicketError::Unavailable), 1);
        assert!(got.lock().unwrap().is_empty());
    }

    #[test]
    fn inbox_sink_pushes_ticket_messages() {
        let inboxes: Arc<[Arc<Inbox>]> = vec![Arc::new(Inbox::new(1).unwrap())].into();
        let sink = InboxSink(inboxes.clone());
        let answer = || {
            Box::new(
                Refused {
                    req: req("t"),
                    error: TicketError::Unknown,
                }
                .into_answer(),
            )
        };
        assert!(sink.deliver(0, answer()).is_ok());
        let back = sink.deliver(0, answer()).expect_err("the inbox is full");
        assert_eq!(back.result, Err(TicketError::Unknown));
        assert!(sink.deliver(1, answer()).is_err(), "no such shard");
        match inboxes[0].pop() {
            Some(ShardMsg::Ticket(a)) => assert_eq!(a.id, 3),
            other => panic!("expected a ticket answer, got {other:?}"),
        }
    }
}
