//! The durable-events worker for a JetStream sink, on its own thread
//! (`wsedge-durable`, a current-thread tokio runtime): the homes hand it
//! [`DurableRecord`]s over one bounded queue ([`DurableClient`], never
//! blocks); it sends them to JetStream in order, with `Nats-Msg-Id`, and
//! keeps them in the [`Spill`] while JetStream is slow or down.
//!
//! The worker makes its own connections from [`DurableOptions::nats_url`]
//! and an options factory (credentials, TLS) rather than take a shared
//! `async_nats::Client`: only a client it owns alone can be dropped at a
//! connection loss, which is what keeps order (below).
//!
//! # Modes
//!
//! - **Direct** (the spill is empty and a connection is up): records are
//!   taken off the queue into batches (at most [`DurableOptions::batch_max`],
//!   waiting at most [`DurableOptions::linger`] for more), published in
//!   order on the one connection and their acknowledgements awaited
//!   together (pipelined, [`DurableOptions::ack_timeout`]); one batch is in
//!   flight at a time. All acknowledged: the waiters of
//!   [`DurableClient::emit_acked`] are answered. The first record that
//!   fails for now, and every record after it, go to the spill in order
//!   (waiters answered once the spill is synced) and the worker switches
//!   to spill mode. So does a batch still in flight when the queue is
//!   half full (the broker is slow: the queue fills, then the spill
//!   takes the load), and a batch due while there is no connection.
//! - **Spill**: every record taken off the queue is appended to the spill
//!   behind what is there; a waiter is answered when a `sync` covers its
//!   record (the worker syncs at once when a waiter waits, else the
//!   spill's [`FsyncPolicy`](super::spill::FsyncPolicy) applies). A replay
//!   loop reads the spill from its first record the broker does not have
//!   yet, publishes with the same message ids, and moves the spill's
//!   cursor up to the last record done (two fsyncs each time, so at most
//!   every 50 ms while the replay is behind, at once when it catches up,
//!   fails or stops; a crash resends what the cursor had not reached,
//!   as duplicates). A failure pauses it (backoff
//!   [`DurableOptions::retry_min`] doubling to
//!   [`DurableOptions::retry_max`], with jitter: a random pause between
//!   half and all of it; counted in `retries`) and it starts again from
//!   the first record not done. When the spill is empty and nothing
//!   waits for room, the worker is back in direct mode.
//!
//! # Order
//!
//! Records are sent in queue order: in direct mode one batch at a time;
//! once a record is in the spill, every later one goes behind it, and
//! direct mode resumes only when the spill is empty. After any failure,
//! and on every new connection, batches start at one record and double
//! up to `batch_max` (slow start), so while JetStream is coming back (a
//! stream without a leader yet) a failure costs one record, not a batch.
//!
//! What a connection loss could do to order is fenced off: each
//! connection is its own `async-nats` client whose automatic reconnect is
//! disabled (its reconnect delay is "never"), on its own I/O thread
//! (`wsedge-durable-io`). When it is lost, an acknowledgement times out
//! or a publish fails in the client, the worker drops the client and its
//! thread, and with them
//! whatever they still held: a record queued before the loss can never
//! go out on a later connection, behind records sent again. Every
//! connection therefore carries the records in order from the first one
//! not yet acknowledged, and no record reaches the stream before an
//! earlier one was sent on the same connection or acknowledged. The one
//! remaining way to disorder is JetStream refusing one record for now
//! (e.g. a stream leader election) and storing the next of the same
//! batch; slow start keeps that to rare single records, and the message
//! id (`<channel>:<epoch>:<offset>`) lets consumers see it.
//!
//! # Duplicates
//!
//! A record sent again (its acknowledgement lost, a batch in flight when
//! the spill took over, a replay after a restart) has the same
//! `Nats-Msg-Id`: JetStream stores it once if it arrives within the
//! stream's duplicate window (2 min by default). A record stored, its
//! acknowledgement lost, and sent again only after a longer outage is
//! stored twice; consumers deduplicate by id.
//!
//! # Refusals and rejections
//!
//! [`DurableClient`] refuses ([`Refused::Overloaded`]) when the queue is
//! full or the spill is full (a flag the worker sets), so the home
//! answers 112 and publishes nothing: no accepted record is lost for
//! lack of room. Errors that cannot succeed on retry are **permanent**:
//! the record goes to [`DurableOptions::dead_letter_subject`] (a core
//! NATS publish, headers `Wsedge-Dlq-Reason`, `Wsedge-Dlq-Subject`,
//! `Wsedge-Dlq-Msg-Id` and `Nats-Msg-Id`; the payload left out, with
//! `Wsedge-Dlq-Payload-Bytes` giving its size, when it would not fit the
//! server; the connection flushed before the record counts as done),
//! counted, never retried. Permanent: the message is over the server's
//! `max_payload` (`MaxPayloadExceeded`, checked by `async-nats` against
//! the connected server), JetStream errors 10054 (over the stream's
//! `max_msg_size`) and 10097 (headers too large), wrong-last-id/sequence
//! (never asked for here), an invalid subject. Everything else is retried:
//! timeouts, a lost connection, no responders (no stream over the
//! subject, or JetStream not ready: a missing stream fills the spill and
//! then refuses, visibly, rather than drop), any other JetStream error
//! (storage full, no leader).
//!
//! # The spill full
//!
//! When an append gets [`SpillError::Full`](super::spill::SpillError::Full)
//! (or fails), that record and every one after it that the worker has
//! already taken stay in memory, in order, the refusal flag is set, and
//! the worker takes nothing more off the queue until they are in the
//! spill. It takes at most `batch_max` records at a time, and in direct
//! mode the batch in flight and the next one together are at most
//! `batch_max`, so at most `batch_max` records wait in memory for room,
//! besides the queue's own `queue_capacity`. The flag clears when they
//! are all in (acknowledged records free room a whole segment at a time).
//! A failed spill write is handled the same way, tried again after
//! `retry_min`.
//!
//! # Start and stop
//!
//! At start the spill is opened (recovery logged if not clean); records
//! in it are sent first (spill mode). Records that come before the first
//! connection is up go to the spill too. On stop the worker takes no more, writes every
//! record in memory to the spill and syncs it; records still waiting for
//! room are retried until [`DurableOptions::shutdown_grace`] ends, then
//! counted `lost` and logged (only possible when the spill is full at
//! the stop).
//!
//! Layout: the API here; `worker/run.rs` (the loop), `worker/session.rs`
//! (the connection, a batch in flight, what is permanent).

mod run;
mod session;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::ConnectOptions;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::metrics::DurableMetrics;
use super::record::DurableRecord;
use super::spill::{Spill, SpillOptions};
use crate::sidecar::WorkerThread;
use crate::sidecar::cluster::parse_servers;

/// The worker's bounds and timings, validated once by
/// [`DurableOptions::validate`] (and by [`start`]). Every default states
/// its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableOptions {
    /// The NATS servers, comma-separated (`nats://host:port`,
    /// `tls://…`, `host[:port]`).
    pub nats_url: String,
    /// The spill (its directory, bounds and fsync policy).
    pub spill: SpillOptions,
    /// Records waiting for the worker. Default 16,384: at 50,000 durable
    /// events a second, a third of a second of slack while the worker
    /// moves a slow broker's load to the spill (it does so at half full);
    /// a few MB at most.
    pub queue_capacity: usize,
    /// Records per batch at most (in direct mode and in replay). Default
    /// 256: one batch is in flight at a time, so at a 2 ms round trip
    /// about 128,000 records a second, while a failed batch resends
    /// little.
    pub batch_max: usize,
    /// Payload bytes a replay batch reads from the spill at most (but
    /// always one record). Default 1 MiB: a batch of large records stays
    /// within the connection's buffers.
    pub batch_bytes: usize,
    /// Longest a record waits for more to fill its batch. Default 2 ms:
    /// well under what a `durable_ack` publisher notices, long enough to
    /// batch a burst.
    pub linger: Duration,
    /// Longest wait for a batch's acknowledgements (and for a flush of
    /// the connection). Default 2 s: far above a healthy JetStream
    /// round trip (replicated streams included), short enough that a
    /// half-dead connection is dropped quickly; it is also how long
    /// records of a batch can wait before they go to the spill.
    pub ack_timeout: Duration,
    /// First pause after a failure (to send, to connect). Default 50 ms.
    pub retry_min: Duration,
    /// Longest pause between attempts while the broker is down. Default
    /// 2 s: the spill drains within about two seconds of the broker
    /// coming back, at one attempt every two seconds while it is down.
    pub retry_max: Duration,
    /// Where records the sink refuses for good go (a core NATS publish).
    /// Default `wsedge.durable.dlq`.
    pub dead_letter_subject: String,
    /// Longest the stop waits for room in a full spill for records still
    /// in memory. Default 2 s.
    pub shutdown_grace: Duration,
}

impl DurableOptions {
    /// The defaults, for the servers in `nats_url`, spilling in
    /// `spill_dir`.
    pub fn new(nats_url: impl Into<String>, spill_dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            nats_url: nats_url.into(),
            spill: SpillOptions::new(spill_dir),
            queue_capacity: 16_384,
            batch_max: 256,
            batch_bytes: 1 << 20,
            linger: Duration::from_millis(2),
            ack_timeout: Duration::from_secs(2),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            dead_letter_subject: "wsedge.durable.dlq".into(),
            shutdown_grace: Duration::from_secs(2),
        }
    }

    /// Checks every bound; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.nats_url.trim().is_empty() {
            return Err("durable nats_url is empty".into());
        }
        parse_servers(&self.nats_url).map_err(|e| format!("durable nats_url: {e}"))?;
        self.spill.validate()?;
        for (name, v) in [
            ("queue_capacity", self.queue_capacity),
            ("batch_max", self.batch_max),
            ("batch_bytes", self.batch_bytes),
        ] {
            if v == 0 {
                return Err(format!("durable {name} must be at least 1"));
            }
        }
        if self.queue_capacity < 2 {
            return Err("durable queue_capacity must be at least 2".into());
        }
        if self.ack_timeout.is_zero() {
            return Err("durable ack_timeout must be above 0".into());
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return Err("durable retry_min must be above 0 and retry_max ≥ retry_min".into());
        }
        if !session::is_valid_subject(&self.dead_letter_subject) {
            return Err(format!(
                "durable dead_letter_subject {:?} is not a NATS subject",
                self.dead_letter_subject
            ));
        }
        Ok(())
    }
}

/// Why a record was not taken. The home answers the publisher with an
/// error and publishes nothing: no accepted record is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full or the spill is full: try again later (112).
    Overloaded,
    /// The worker has stopped.
    Stopped,
    /// The record is longer than a spill record may be
    /// ([`SpillOptions::max_record`]), or a text field is over 65,535
    /// bytes: it could never be kept through an outage.
    TooLarge {
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Overloaded => f.write_str("the durable queue or spill is full"),
            Refused::Stopped => f.write_str("the durable worker has stopped"),
            Refused::TooLarge { len, max } => write!(
                f,
                "a {len}-byte durable record is over the {max}-byte limit"
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// Why an [`DurableClient::emit_acked`] record was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurableError {
    /// The sink refused it for good; it went to the dead-letter subject
    /// with this reason.
    DeadLettered(String),
    /// It is in the spill and will be sent, but the spill's sync failed:
    /// not confirmed on disk.
    Unsynced(String),
    /// It was lost (the spill still full when the worker stopped); logged
    /// and counted.
    Lost(String),
}

impl fmt::Display for DurableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurableError::DeadLettered(r) => write!(f, "dead-lettered: {r}"),
            DurableError::Unsynced(r) => write!(f, "spilled but not synced: {r}"),
            DurableError::Lost(r) => write!(f, "lost: {r}"),
        }
    }
}

impl std::error::Error for DurableError {}

/// Where the answer to an [`DurableClient::emit_acked`] goes.
pub type AckSender = oneshot::Sender<Result<(), DurableError>>;

/// A record on its way, with its waiter.
#[derive(Debug)]
struct Item {
    record: DurableRecord,
    done: Option<AckSender>,
    /// When it was queued, Unix ms.
    queued_ms: u64,
}

impl Item {
    fn answer(&mut self, result: Result<(), DurableError>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }
}

/// The homes' handle on the worker: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct DurableClient {
    tx: mpsc::Sender<Item>,
    /// Set by the worker while records wait for room in the spill.
    full: Arc<AtomicBool>,
    metrics: Arc<DurableMetrics>,
    max_record: usize,
}

impl DurableClient {
    /// Queues `record`; refused (counted) when the queue or the spill is
    /// full, the record too large, or the worker gone.
    pub fn emit(&self, record: DurableRecord) -> Result<(), Refused> {
        self.queue(record, None)
    }

    /// The same, and `done` is answered once the sink acknowledged the
    /// record, or the spill has it on disk (`Ok`), or it was
    /// dead-lettered (only known in direct mode: a record answered from
    /// the spill and dead-lettered later is only counted and logged). On a
    /// refusal `done` is dropped unanswered.
    pub fn emit_acked(&self, record: DurableRecord, done: AckSender) -> Result<(), Refused> {
        self.queue(record, Some(done))
    }

    /// The worker's counters.
    pub fn metrics(&self) -> &DurableMetrics {
        &self.metrics
    }

    /// Whether the spill is full (records are refused until it has room).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    fn queue(&self, record: DurableRecord, done: Option<AckSender>) -> Result<(), Refused> {
        let refuse = |r: Refused| {
            DurableMetrics::add(&self.metrics.refused, 1);
            Err(r)
        };
        let len = record.encoded_len();
        let field_max = usize::from(u16::MAX);
        if len > self.max_record {
            return refuse(Refused::TooLarge {
                len,
                max: self.max_record,
            });
        }
        if record.subject.len() > field_max || record.msg_id.len() > field_max {
            return refuse(Refused::TooLarge {
                len: record.subject.len().max(record.msg_id.len()),
                max: field_max,
            });
        }
        if self.is_full() {
            return refuse(Refused::Overloaded);
        }
        // Counted before the worker can see it, so the gauge never
        // dips below zero.
        DurableMetrics::add(&self.metrics.queued, 1);
        let item = Item {
            record,
            done,
            queued_ms: unix_ms(),
        };
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.dequeued(1);
                match e {
                    TrySendError::Full(_) => refuse(Refused::Overloaded),
                    TrySendError::Closed(_) => refuse(Refused::Stopped),
                }
            }
        }
    }
}

/// The `async-nats` options the worker starts from when nothing else is
/// given: a connection name, `async-nats`'s defaults otherwise.
pub fn default_connect_options() -> ConnectOptions {
    ConnectOptions::new().name("wsedge durable")
}

/// Starts the worker thread (`wsedge-durable`): opens the spill (so a
/// spill another process holds, or that cannot be opened, fails the
/// start), and connects in the background, retrying until NATS answers.
///
/// `connect` makes the `async-nats` options for each connection
/// (credentials, TLS, name; [`default_connect_options`] when there are
/// none). The worker sets on top of them its event callback, its
/// reconnect delay (the fence: a connection is never re-made by
/// `async-nats`; see the module doc) and the client's command capacity;
/// `connect` must not set `retry_on_initial_connect` or a
/// reconnect-to-server callback, which would undo the fence.
pub fn start(
    opts: DurableOptions,
    connect: impl Fn() -> ConnectOptions + Send + 'static,
) -> io::Result<(DurableClient, WorkerThread)> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    opts.validate().map_err(invalid)?;
    let servers = parse_servers(&opts.nats_url).map_err(invalid)?;
    let (spill, recovery) = Spill::open(opts.spill.clone())?;
    if recovery.is_clean() {
        tracing::info!(
            dir = %opts.spill.dir.display(),
            pending = recovery.pending_records,
            "durable: spill opened"
        );
    } else {
        tracing::warn!(
            dir = %opts.spill.dir.display(),
            ?recovery,
            "durable: the spill was repaired at open"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let full = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(DurableMetrics::default());
    let client = DurableClient {
        tx,
        full: full.clone(),
        metrics: metrics.clone(),
        max_record: opts.spill.max_record,
    };
    let worker = run::Worker::new(run::Setup {
        opts,
        servers,
        connect: Box::new(connect),
        rx,
        full,
        metrics,
        spill,
    });
    let thread = WorkerThread::spawn("wsedge-durable", runtime, move |stop| worker.run(stop))?;
    Ok((client, thread))
}

/// Now, in Unix ms.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
