//! The inbound JetStream consumer, on its own thread (`wsedge-inbound-js`,
//! a current-thread tokio runtime that also runs its NATS connection):
//! one durable pull consumer per stream, named
//! [`JsInboundOptions::durable`] (`[durable] consume_group`), over the
//! `[[durable.consume]]` subjects, whose messages the node publishes to
//! channels. Each message goes to the node over one bounded queue
//! ([`JsQueue`]) with an [`InboundAck`], exactly like the Kafka
//! consumer's records ([`super::inbound`]); the node's publisher
//! ([`super::consume`]) serves both.
//!
//! # The consumers
//!
//! A subject's stream is the rule's `stream`, else the one the server
//! names for the subject (`$JS.API.STREAM.NAMES` filtered by subject).
//! On each stream the consumer `<durable>` is looked up and created when
//! missing: pull, `AckPolicy::Explicit`, the stream's subjects of the
//! rules as filter subjects, `max_ack_pending` =
//! [`JsInboundOptions::max_in_flight`] (the whole group's bound: every
//! node shares the consumer), `ack_wait` = [`JsInboundOptions::ack_wait`],
//! unlimited deliveries, delivering from the stream's start (a new
//! consumer reads what the stream retains, like a new Kafka group). An
//! existing one is never changed: one whose filter subjects or ack
//! policy differ, a push consumer or a headers-only one is reported as
//! such and the setup is retried (with a growing pause) until the
//! operator removes it or the rules match again; other differences
//! (`max_ack_pending`, `ack_wait`) are logged and accepted. Nodes with
//! the same `consume_group` share the consumer: the server hands each
//! message to one of them.
//!
//! # Answers
//!
//! - `Ok(())`: `+ACK`. A plain ack, not a double ack: a lost ack makes the
//!   server deliver the message again after `ack_wait` (30 s), well within
//!   the node's `idempotency_window` (5 min by default), so the repeat is
//!   not published twice; a double ack would cost a request, a reply and
//!   a subscription per message and still not close the crash window.
//! - `Err(reason)`: refused for good: a dead letter goes to
//!   [`JsInboundOptions::dead_letter`] (a NATS subject; headers
//!   `Wsedge-Dlq-Reason`, `Wsedge-Dlq-Stream`, `Wsedge-Dlq-Sequence`,
//!   `Wsedge-Dlq-Subject`, `Wsedge-Dlq-Msg-Id` when the message had a
//!   `Nats-Msg-Id`, after the message's own headers but its `Nats-*`
//!   ones; `Nats-Msg-Id: wsedge-dlq:<stream>:<sequence>`, so a stream that
//!   keeps the dead letters stores a repeat once; the payload, or
//!   `Wsedge-Dlq-Payload-Bytes` when it would not fit the server), and
//!   once it left the process (flushed) the message is `+TERM`ed. A
//!   dead letter that fails is `-NAK`ed with a backoff: the message comes
//!   again and is tried again.
//! - The [`InboundAck`] dropped unanswered (the home cannot take it now):
//!   `-NAK` with a delay, [`JsInboundOptions::retry_min`] doubling per
//!   delivery to [`JsInboundOptions::retry_max`], with jitter; the server
//!   redelivers it then (counted in `redelivered`). Other messages go on
//!   meanwhile: a poison message never stalls the consumer.
//!
//! # Bounds
//!
//! The queue holds [`JsInboundOptions::queue_capacity`] records; while
//! it is full the loop waits. At most [`JsInboundOptions::max_in_flight`]
//! messages are held (handed over and not settled); at the bound the
//! loop stops reading, and the pull requests ask for at most
//! [`PULL_BATCH`] at a time.
//!
//! # Lag
//!
//! Every second the consumers' info: `lag` in [`InboundMetrics`] is
//! Σ (`num_pending` + `num_ack_pending`): messages not yet delivered plus
//! delivered and not yet settled, like Kafka's high watermark − committed
//! offset. It is the consumer's, so every node of the group reports the
//! same value.
//!
//! # The stop
//!
//! Answers already in are settled; the messages still held are `-NAK`ed
//! without delay (another node takes them at once), and the connection
//! is flushed.
//!
//! Layout: options, the record and [`start`] here; the loop in
//! `inbound_js/run.rs`; tests in `inbound_js/tests.rs`.

use std::io;
use std::time::Duration;

use async_nats::ConnectOptions;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

use super::inbound::{
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_QUEUE_CAPACITY, DEFAULT_RETRY_MAX, DEFAULT_RETRY_MIN,
    InboundAck, InboundMetrics,
};
use crate::config::durable::{
    INBOUND_DEAD_LETTER, is_filter_subject, is_jetstream_name, subjects_collide,
};
use crate::sidecar::WorkerThread;
use crate::sidecar::cluster::parse_servers;

mod run;
#[cfg(test)]
mod tests;

/// Messages a pull request asks for (the pull stream asks again at half):
/// at most this many wait in the client's buffer, a quarter of the queue.
pub const PULL_BATCH: usize = DEFAULT_QUEUE_CAPACITY / 4;

/// Header of a JetStream dead letter: the stream the message came from.
pub const DLQ_STREAM: &str = "Wsedge-Dlq-Stream";
/// Header of a JetStream dead letter: its stream sequence there.
pub const DLQ_SEQUENCE: &str = "Wsedge-Dlq-Sequence";

/// The consumer's options. Every default states its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsInboundOptions {
    /// The NATS servers (a comma-separated `nats_url`).
    pub nats_url: String,
    /// The durable consumer's name on every stream (`[durable]
    /// consume_group`): nodes with the same name share the messages.
    pub durable: String,
    /// The subject filters and, when a rule names it, their stream.
    pub subjects: Vec<(String, Option<String>)>,
    /// The subject dead letters go to. Default `wsedge.inbound.dlq` (the
    /// Kafka consumer's dead-letter topic's name).
    pub dead_letter: String,
    /// Records waiting for the node. Default 1,024, like Kafka's.
    pub queue_capacity: usize,
    /// Messages held (handed over and not settled) at most, and the
    /// consumer's `max_ack_pending` when wsedge creates it. Default 4,096,
    /// like Kafka's.
    pub max_in_flight: usize,
    /// The consumer's `ack_wait` when wsedge creates it: how long the
    /// server waits for an answer before it delivers a message again.
    /// Default 30 s: far above a home's answer (10 s at most), far below
    /// the idempotency window (so a redelivery after a lost ack is not
    /// published twice).
    pub ack_wait: Duration,
    /// First `nak` delay of a record the home could not take. Default
    /// 50 ms, like Kafka's.
    pub retry_min: Duration,
    /// Longest such delay. Default 2 s, like Kafka's.
    pub retry_max: Duration,
    /// Longest wait for a JetStream request (a lookup, the consumer's
    /// info), a dead letter's flush and the flush at the stop. Default
    /// 5 s.
    pub timeout: Duration,
}

impl JsInboundOptions {
    /// The defaults for `subjects` on `nats_url`, consumer `durable`.
    pub fn new(
        nats_url: impl Into<String>,
        durable: impl Into<String>,
        subjects: Vec<(String, Option<String>)>,
    ) -> Self {
        Self {
            nats_url: nats_url.into(),
            durable: durable.into(),
            subjects,
            dead_letter: INBOUND_DEAD_LETTER.into(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            ack_wait: Duration::from_secs(30),
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            timeout: Duration::from_secs(5),
        }
    }

    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<(), String> {
        parse_servers(&self.nats_url).map_err(|e| format!("inbound nats_url: {e}"))?;
        if !is_jetstream_name(&self.durable) {
            return Err(format!(
                "inbound durable = {:?} is not a JetStream consumer name",
                self.durable
            ));
        }
        if self.subjects.is_empty() {
            return Err("inbound subjects is empty".into());
        }
        for (i, (subject, stream)) in self.subjects.iter().enumerate() {
            if !is_filter_subject(subject) {
                return Err(format!("inbound subject {subject:?} is not a NATS subject"));
            }
            if stream.as_deref().is_some_and(|s| !is_jetstream_name(s)) {
                return Err(format!("inbound stream {stream:?} is not a stream name"));
            }
            if self.subjects[..i]
                .iter()
                .any(|(o, _)| subjects_collide(o, subject))
            {
                return Err(format!("inbound subject {subject:?} overlaps another"));
            }
        }
        if !is_filter_subject(&self.dead_letter) || self.dead_letter.contains(['*', '>']) {
            return Err(format!(
                "inbound dead_letter {:?} is not a NATS subject",
                self.dead_letter
            ));
        }
        if self.queue_capacity == 0 || self.max_in_flight == 0 {
            return Err("inbound queue_capacity and max_in_flight must be at least 1".into());
        }
        if self.ack_wait < Duration::from_secs(1) || self.timeout.is_zero() {
            return Err("inbound ack_wait must be at least 1 s and timeout above 0".into());
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return Err("inbound retry_min must be above 0 and retry_max ≥ retry_min".into());
        }
        Ok(())
    }
}

/// A message from a consumed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsRecord {
    /// Its stream.
    pub stream: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// Its headers (each value of a repeated header, in order).
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Bytes,
    /// Deliveries so far, this one included (from 1).
    pub delivered: i64,
}

impl JsRecord {
    /// The first value of header `name` (exact name), if any.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// Where the node takes the messages from (answered like the Kafka
/// consumer's records).
pub type JsQueue = mpsc::Receiver<(JsRecord, InboundAck)>;

/// Starts the consumer thread (`wsedge-inbound-js`): connects in the
/// background (`connect` makes the `async-nats` options: credentials,
/// TLS, name; reconnects are `async-nats`'s own, forever), binds the
/// consumers (retrying until the streams exist and the server answers)
/// and hands messages to the returned queue.
pub fn start(
    opts: JsInboundOptions,
    connect: impl Fn() -> ConnectOptions + Send + 'static,
) -> io::Result<(JsQueue, Arc<InboundMetrics>, WorkerThread)> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    opts.validate().map_err(invalid)?;
    let servers = parse_servers(&opts.nats_url).map_err(invalid)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = Arc::new(InboundMetrics::default());
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let worker_metrics = metrics.clone();
    let thread = WorkerThread::spawn("wsedge-inbound-js", runtime, move |stop| async move {
        // In the runtime: the client's connection task runs on it.
        let options = connect().retry_on_initial_connect().max_reconnects(None);
        let client = match options.connect(servers).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "inbound-js: cannot start the NATS client");
                return;
            }
        };
        run::Consumer::new(opts, client, tx, worker_metrics)
            .run(stop)
            .await;
    })?;
    Ok((rx, metrics, thread))
}
