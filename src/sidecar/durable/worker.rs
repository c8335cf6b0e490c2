//! The durable-events worker, on its own thread (`wsedge-durable`, a
//! current-thread tokio runtime): the homes hand it [`DurableRecord`]s
//! over one bounded queue ([`DurableClient`], never blocks); it sends
//! them in order to the sink, JetStream (with `Nats-Msg-Id`) or Kafka
//! (an idempotent producer, header `wsedge-id`), and keeps them in the
//! [`Spill`] while the broker is slow or down. One loop
//! (`worker/run.rs`) does the same for both; a transport
//! (`worker/transport.rs`: `jetstream.rs`, `kafka.rs`) connects, creates
//! the sinks that are missing, sends a batch and says what is permanent.
//!
//! The worker makes its own connections (from [`JetStreamSink::nats_url`]
//! and an options factory for credentials and TLS; from
//! [`KafkaSink::brokers`] and [`KafkaSink::config`]) rather than share a
//! client: only a client it owns alone can be dropped at a failure, which
//! is what keeps order (below).
//!
//! # Modes
//!
//! - **Direct** (the spill is empty and a connection is up): records are
//!   taken off the queue into batches (at most [`DurableOptions::batch_max`],
//!   waiting at most [`DurableOptions::linger`] for more, not at all
//!   when one of them has a waiter), sent in
//!   order on the one connection and their acknowledgements awaited
//!   together (pipelined, [`DurableOptions::ack_timeout`]); one batch is in
//!   flight at a time. All acknowledged: the waiters of
//!   [`DurableClient::emit_acked`] are answered. The first record that
//!   fails for now, and every record after it, go to the spill in order
//!   (waiters answered once the spill is synced) and the worker switches
//!   to spill mode. So does a batch still in flight when the queue is
//!   half full (the broker is slow: the queue fills, then the spill
//!   takes the load), and a batch due while there is no connection. A
//!   batch written to the spill while in flight keeps flying: what it
//!   lands counts as done there and the replay starts after it (a
//!   second copy on the same Kafka producer would be a new record to the
//!   broker, not a retry it drops).
//! - **Spill**: every record taken off the queue is appended to the spill
//!   behind what is there; a waiter is answered when a `sync` covers its
//!   record (the worker syncs at once when a waiter waits, else the
//!   spill's [`FsyncPolicy`](super::spill::FsyncPolicy) applies). A replay
//!   loop reads the spill from its first record the broker does not have
//!   yet, sends with the same message ids, and moves the spill's
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
//! up to `batch_max` (slow start), so while the broker is coming back (a
//! stream or partition without a leader yet) a failure costs one
//! record, not a batch.
//!
//! What a connection loss could do to order is fenced off: when a
//! connection is lost, a batch times out or fails, the worker drops the
//! connection and whatever it still held, and makes a new one. A record
//! queued before the failure can never go out on a later connection,
//! behind records sent again. Every connection therefore carries the
//! records in order from the first one not yet acknowledged, and no
//! record reaches the sink before an earlier one was sent on the same
//! connection or acknowledged.
//!
//! - **JetStream**: each connection is its own `async-nats` client whose
//!   automatic reconnect is disabled (its reconnect delay is "never"),
//!   on its own I/O thread (`wsedge-durable-io`); dropping the client
//!   and its thread is the fence. A failure JetStream answers for now
//!   (no responders, a JetStream error) keeps the connection. The one
//!   remaining way to disorder is JetStream refusing one record for now
//!   (e.g. a stream leader election) and storing the next of the same
//!   batch; slow start keeps that to rare single records, and the
//!   message id (`<channel>:<epoch>:<offset>`) lets consumers see it.
//! - **Kafka**: each connection is a librdkafka producer with
//!   `enable.idempotence=true` (so `acks=all`, at most 5 requests in
//!   flight per broker, unlimited internal retries, FIFO queueing),
//!   `message.timeout.ms` = [`DurableOptions::ack_timeout`], zstd
//!   compression, `allow.auto.create.topics=false`, `linger.ms=1` (the
//!   worker batches already). Within one producer, librdkafka's own
//!   retries (a request timed out, a broker reconnected, a leader moved)
//!   neither reorder nor duplicate: the broker checks each partition's
//!   sequence numbers, drops a batch it has (`DUPLICATE_SEQUENCE_NUMBER`,
//!   reported as delivered) and refuses one after a gap
//!   (`OUT_OF_ORDER_SEQUENCE_NUMBER`), so no record is stored after an
//!   earlier one of its partition failed. Any failure the worker retries
//!   (a delivery error that is not permanent, the batch's deadline, all
//!   brokers down, a fatal producer error) retires the producer: it is
//!   purged (what it still had queued fails locally and is never sent;
//!   what was in flight may land) and destroyed on a blocking thread,
//!   and the next producer is created only once that is done. Without
//!   the fence, librdkafka could still deliver a record queued behind
//!   one that timed out, ahead of the resend. A channel's records share
//!   a key, so one partition: Kafka's order per partition is the
//!   channel's order. There is no order across partitions (nor across
//!   channels), by design.
//!
//! # Duplicates
//!
//! A record sent again (its acknowledgement lost, a replay after a crash
//! or after a stop that could not wait for its batch) has the same
//! message id. JetStream stores it once if it arrives within the stream's
//! duplicate window (2 min by default). Kafka's idempotence covers one
//! producer only: a resend on the next producer (after a failure whose
//! outcome is unknown: a timeout, a connection lost with the request in
//! flight) can be stored twice, as can a record stored, its
//! acknowledgement lost, and sent again after a longer outage on
//! JetStream. Consumers deduplicate by id (`Nats-Msg-Id`, Kafka header
//! `wsedge-id`); first copies are in order (but for the JetStream case
//! under Order).
//!
//! # Refusals and rejections
//!
//! [`DurableClient`] refuses ([`Refused::Overloaded`]) when the queue is
//! full or the spill is full (a flag the worker sets), so the home
//! answers 112 and publishes nothing: no accepted record is lost for
//! lack of room. Errors that cannot succeed on retry are **permanent**:
//! the record goes to [`DurableOptions::dead_letter_subject`], counted,
//! never retried; a dead letter counts as done only once it left this
//! process (JetStream: the connection flushed; Kafka: delivered).
//!
//! - **JetStream**: a core NATS publish, headers `Wsedge-Dlq-Reason`,
//!   `Wsedge-Dlq-Subject`, `Wsedge-Dlq-Msg-Id` and `Nats-Msg-Id`; the
//!   payload left out, with `Wsedge-Dlq-Payload-Bytes` giving its size,
//!   when it would not fit the server. Permanent: the message is over
//!   the server's `max_payload` (`MaxPayloadExceeded`, checked by
//!   `async-nats` against the connected server), JetStream errors 10054
//!   (over the stream's `max_msg_size`) and 10097 (headers too large),
//!   wrong-last-id/sequence (never asked for here), an invalid subject.
//!   Everything else is retried: timeouts, a lost connection, no
//!   responders (no stream over the subject, or JetStream not ready: a
//!   missing stream fills the spill and then refuses, visibly, rather
//!   than drop), any other JetStream error (storage full, no leader).
//! - **Kafka**: a record on the dead-letter topic (same key), headers
//!   `wsedge-dlq-reason`, `wsedge-dlq-topic`, `wsedge-id`; the payload
//!   left out, with `wsedge-dlq-payload-bytes` giving its size, when it
//!   would not fit [`KafkaSink::max_message_bytes`]. Permanent: over
//!   `message.max.bytes` (refused locally by librdkafka, or by the
//!   broker: `MESSAGE_TOO_LARGE`, `RECORD_LIST_TOO_LARGE`,
//!   `INVALID_MESSAGE_SIZE`), an invalid topic name (checked before
//!   sending, or `INVALID_TOPIC_EXCEPTION`), `INVALID_RECORD`.
//!   Everything else is retried: timeouts, brokers down, no leader,
//!   not enough replicas, an unknown topic or partition (a missing
//!   topic fills the spill visibly, as a missing stream does),
//!   authorization (an operator can fix it), a fatal producer error.
//!
//! # Creating sinks
//!
//! Streams ([`JetStreamSink::streams`]) and topics
//! ([`KafkaSink::topics`], and the Kafka dead-letter topic) are created
//! on each new connection when missing, before anything is sent; one
//! that exists is never changed (its retention is the operator's). A
//! sink that cannot be created fails the connection attempt (retried,
//! counted, logged): the spill fills, visibly.
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
//! connection is up go to the spill too. On stop the worker takes no
//! more, writes every record in memory to the spill and syncs it, and
//! waits for the batch in flight (what it lands is not sent again by the
//! next start); records still waiting for room are retried. Both end
//! when [`DurableOptions::shutdown_grace`] does: what still waits for
//! room is then counted `lost` and logged (only possible when the spill
//! is full at the stop).
//!
//! Layout: the API here; `worker/options.rs` (the options and their
//! checks); `worker/run.rs` (the loop); `worker/transport.rs` (the seam
//! and a batch's types); `worker/jetstream.rs` and `worker/kafka.rs`
//! (the transports: connections, sinks, a batch in flight, what is
//! permanent).

pub(super) mod jetstream;
pub(super) mod kafka;
pub(super) mod options;
mod run;
pub(super) mod transport;

#[cfg(test)]
mod kafka_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::ConnectOptions;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

pub use self::options::{
    DEFAULT_DEAD_LETTER, DurableOptions, JetStreamSink, KAFKA_RESERVED, KafkaSink, SinkOptions,
    StreamSpec, TopicSpec,
};
use super::metrics::DurableMetrics;
use super::record::DurableRecord;
use super::spill::Spill;
use crate::sidecar::WorkerThread;
use crate::sidecar::cluster::parse_servers;

/// Why a record was not taken. The home answers the publisher with an
/// error and publishes nothing: no accepted record is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full or the spill is full: try again later (112).
    Overloaded,
    /// The worker has stopped.
    Stopped,
    /// The record is longer than a spill record may be
    /// ([`SpillOptions::max_record`](super::spill::SpillOptions::max_record)),
    /// or a text field is over 65,535 bytes: it could never be kept
    /// through an outage.
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
    /// or topic with this reason.
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

/// A record's outcome, for its waiter.
pub type AckResult = Result<(), DurableError>;

/// Where the answer to an [`DurableClient::emit_acked`] goes: a oneshot
/// channel (`From`), or a callback the worker runs on its own thread
/// ([`AckSender::callback`]: it must not block; the shards hand it to
/// their inbox).
pub struct AckSender(AckTo);

enum AckTo {
    Channel(oneshot::Sender<AckResult>),
    Call(Box<dyn FnOnce(AckResult) + Send>),
}

impl AckSender {
    /// A waiter that runs `f` with the outcome, once. Dropped without an
    /// outcome (a refusal, the worker gone), it is never run: a caller
    /// that must hear of that puts a drop guard in `f`.
    pub fn callback(f: impl FnOnce(AckResult) + Send + 'static) -> Self {
        AckSender(AckTo::Call(Box::new(f)))
    }

    /// Answers; `Err` gives the outcome back when a channel's receiver is
    /// gone.
    pub fn send(self, result: AckResult) -> Result<(), AckResult> {
        match self.0 {
            AckTo::Channel(tx) => tx.send(result),
            AckTo::Call(f) => {
                f(result);
                Ok(())
            }
        }
    }
}

impl From<oneshot::Sender<AckResult>> for AckSender {
    fn from(tx: oneshot::Sender<AckResult>) -> Self {
        AckSender(AckTo::Channel(tx))
    }
}

impl fmt::Debug for AckSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            AckTo::Channel(_) => "AckSender::Channel",
            AckTo::Call(_) => "AckSender::Callback",
        })
    }
}

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
    pub fn emit_acked(
        &self,
        record: DurableRecord,
        done: impl Into<AckSender>,
    ) -> Result<(), Refused> {
        self.queue(record, Some(done.into()))
    }

    /// The worker's counters.
    pub fn metrics(&self) -> &DurableMetrics {
        &self.metrics
    }

    /// Whether the spill is full (records are refused until it has room).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Whether an event would be queued now: the spill has room and the
    /// queue has a free slot (another thread may take it first).
    pub fn has_room(&self) -> bool {
        !self.is_full() && self.tx.capacity() > 0
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
        if record.longest_field() > field_max {
            return refuse(Refused::TooLarge {
                len: record.longest_field(),
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
/// start), and connects in the background, retrying until the broker
/// answers. [`DurableOptions::sink`] picks the broker.
///
/// `connect` makes the `async-nats` options for each JetStream
/// connection (credentials, TLS, name; [`default_connect_options`] when
/// there are none; unused for Kafka). The worker sets on top of them its
/// event callback, its reconnect delay (the fence: a connection is never
/// re-made by `async-nats`; see the module doc) and the client's command
/// capacity; `connect` must not set `retry_on_initial_connect` or a
/// reconnect-to-server callback, which would undo the fence.
pub fn start(
    opts: DurableOptions,
    connect: impl Fn() -> ConnectOptions + Send + 'static,
) -> io::Result<(DurableClient, WorkerThread)> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    opts.validate().map_err(invalid)?;
    match &opts.sink {
        SinkOptions::JetStream(sink) => {
            let transport = jetstream::JetStream {
                servers: parse_servers(&sink.nats_url).map_err(invalid)?,
                connect: Box::new(connect),
                spec: jetstream::ConnectSpec {
                    // A batch in flight, one left behind by the spill
                    // taking over, dead letters, pings.
                    capacity: (4 * opts.batch_max).max(2048),
                    timeout: opts.ack_timeout,
                },
                streams: sink.streams.clone(),
                dlq: Arc::from(opts.dead_letter_subject.as_str()),
            };
            spawn(opts, transport)
        }
        SinkOptions::Kafka(sink) => {
            let transport = kafka::Kafka::new(sink, &opts);
            spawn(opts, transport)
        }
    }
}

/// Opens the spill and starts the loop over `transport`.
fn spawn<T: transport::Transport>(
    opts: DurableOptions,
    transport: T,
) -> io::Result<(DurableClient, WorkerThread)> {
    let (spill, recovery) = Spill::open(opts.spill.clone())?;
    if recovery.is_clean() {
        tracing::info!(
            broker = T::BROKER,
            dir = %opts.spill.dir.display(),
            pending = recovery.pending_records,
            "durable: spill opened"
        );
    } else {
        tracing::warn!(
            broker = T::BROKER,
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
        transport,
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
