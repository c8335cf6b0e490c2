//! The inbound Kafka consumer, on its own thread (`wsedge-inbound`, a
//! current-thread tokio runtime): a consumer group
//! ([`InboundOptions::group_id`]) over [`InboundOptions::topics`] whose
//! records the node publishes to channels. Each record goes to the node
//! over one bounded queue ([`InboundQueue`]) with an [`InboundAck`] the
//! node answers once the channel's home accepted the publication.
//!
//! # At least once
//!
//! Offsets are committed per partition only up to the last record of an
//! unbroken run of answered ones, from the partition's start: a record
//! answered out of order waits until every record before it is answered.
//! Commits go out every [`InboundOptions::commit_interval`]
//! (asynchronously, sent again at each interval until librdkafka's
//! statistics show the coordinator has them), when partitions are
//! revoked (synchronously, before they go) and at the stop
//! (synchronously). A record handed over but not answered when its partition moves
//! to another consumer, or the node stops, is delivered again there:
//! the node sees a record at least once, the same record again after a
//! rebalance or a crash (its topic, partition and offset identify it).
//!
//! # Answers
//!
//! - `Ok(())`: done.
//! - `Err(reason)`: refused for good (the record cannot be published,
//!   ever): it goes to [`InboundOptions::dead_letter`] (headers
//!   `wsedge-dlq-reason`, `wsedge-dlq-topic`, `wsedge-dlq-partition`,
//!   `wsedge-dlq-offset` after the record's own; same key and payload,
//!   the payload left out with `wsedge-dlq-payload-bytes` if the
//!   dead-letter topic refuses its size), and once that is delivered
//!   the record is done and the partition moves on. A dead letter that
//!   fails for now is retried (backoff).
//! - The [`InboundAck`] dropped unanswered: not done now (e.g. the home
//!   is overloaded); the record is handed over again after a backoff
//!   ([`InboundOptions::retry_min`] doubling to
//!   [`InboundOptions::retry_max`], with jitter), counted in
//!   `redelivered`.
//!
//! # Bounds
//!
//! The queue holds [`InboundOptions::queue_capacity`] records; while it
//! is full the consumer waits (and so stops fetching).
//! [`InboundOptions::max_in_flight`] bounds the records handed over and
//! not yet done; at the bound the consumer stops reading until some
//! are. A node that holds records longer than librdkafka's
//! `max.poll.interval.ms` (5 min by default) makes the consumer leave
//! the group, and its partitions go elsewhere.
//!
//! # Lag
//!
//! librdkafka's statistics (every second) give each assigned
//! partition's high watermark and committed offset; `lag` in
//! [`InboundMetrics`] is their difference summed (a partition without a
//! committed offset counts from its low watermark).
//!
//! Layout: options, the record, [`start`] and the loop here (with its
//! per-partition bookkeeping, `Tracker`); the counters in
//! `inbound/metrics.rs` (the JetStream consumer's too); tests in
//! `inbound/tests.rs`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::worker::TopicSpec;
use super::worker::kafka::{
    DLQ_PAYLOAD_BYTES, DLQ_REASON, DLQ_TOPIC, KafkaContext, create_missing_topics, is_permanent,
    log_to_tracing,
};
use super::worker::options::is_kafka_topic;
use super::worker::transport::clean;
use crate::sidecar::WorkerThread;

mod metrics;
#[cfg(test)]
mod tests;

pub use metrics::{InboundMetrics, InboundMetricsSnapshot};

/// The default consumer group.
pub const DEFAULT_GROUP: &str = "notification-processors";

/// The default dead-letter topic of inbound records.
pub const DEFAULT_INBOUND_DLQ: &str = crate::config::durable::INBOUND_DEAD_LETTER;

/// Header of an inbound dead letter: the partition it came from.
pub const DLQ_PARTITION: &str = "wsedge-dlq-partition";
/// Header of an inbound dead letter: its offset there.
pub const DLQ_OFFSET: &str = "wsedge-dlq-offset";

/// librdkafka properties the consumer sets itself (the group, manual
/// commits); [`InboundOptions::config`] may not name them.
pub const INBOUND_RESERVED: [&str; 6] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "statistics.interval.ms",
];

/// Records waiting for the node, by default (both consumers): a few ms
/// of a busy topic or stream, a bounded amount of memory.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1_024;

/// Records handed over and not yet answered, at most, by default (both
/// consumers): the queue and what the homes are working on.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4_096;

/// First pause before a record is handed over again, by default.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(50);

/// Longest such pause, by default.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(2);

/// How often librdkafka reports statistics (the lag).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The consumer's options. Every default states its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundOptions {
    /// The bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    /// The consumer group. Default `notification-processors`: every
    /// node of a deployment shares the topics' partitions.
    pub group_id: String,
    /// The topics to consume (they must exist; none is created).
    pub topics: Vec<String>,
    /// Records waiting for the node. Default 1,024: a few ms of a busy
    /// topic, a bounded amount of memory.
    pub queue_capacity: usize,
    /// Records handed over and not yet answered, at most. Default 4,096:
    /// the queue and what the homes are working on; past it the
    /// consumer stops reading.
    pub max_in_flight: usize,
    /// How often contiguous answered offsets are committed. Default 1 s:
    /// after a crash at most about a second of answered records comes
    /// again.
    pub commit_interval: Duration,
    /// Where records answered `Err` go; created at start when missing
    /// (never changed). Default `wsedge.inbound.dlq`, one partition (in
    /// order), replication 1 (raise it on a real cluster).
    pub dead_letter: TopicSpec,
    /// First pause before a record is handed over again or a dead letter
    /// retried. Default 50 ms.
    pub retry_min: Duration,
    /// Longest such pause. Default 2 s.
    pub retry_max: Duration,
    /// Longest wait for a dead letter's delivery, for creating the
    /// dead-letter topic and for the last commit at the stop. Default 5 s.
    pub timeout: Duration,
    /// More librdkafka properties, set after the consumer's own (e.g.
    /// `security.protocol`, `sasl.*`, `auto.offset.reset`, which is
    /// `earliest` here: a new group reads what the topics retain,
    /// `session.timeout.ms`, `partition.assignment.strategy`); the
    /// [`INBOUND_RESERVED`] ones are refused. They apply to the
    /// dead-letter producer too. Default none.
    pub config: Vec<(String, String)>,
    /// librdkafka properties for the consumer only, set after `config`
    /// (e.g. `session.timeout.ms`, which the producer would warn
    /// about); the [`INBOUND_RESERVED`] ones are refused. Default none.
    pub consumer_config: Vec<(String, String)>,
}

impl InboundOptions {
    /// The defaults for `topics` on the bootstrap `brokers`.
    pub fn new(
        brokers: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            group_id: DEFAULT_GROUP.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            commit_interval: Duration::from_secs(1),
            dead_letter: TopicSpec::new(DEFAULT_INBOUND_DLQ, 1, 1),
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            timeout: Duration::from_secs(5),
            config: Vec::new(),
            consumer_config: Vec::new(),
        }
    }

    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.split(',').all(|b| b.trim().is_empty()) {
            return Err("inbound brokers is empty".into());
        }
        if self.group_id.trim().is_empty() {
            return Err("inbound group_id is empty".into());
        }
        if self.topics.is_empty() {
            return Err("inbound topics is empty".into());
        }
        if let Some(bad) = self.topics.iter().find(|t| !is_kafka_topic(t)) {
            return Err(format!("inbound topic {bad:?} is not a Kafka topic name"));
        }
        let dlq = &self.dead_letter;
        if !is_kafka_topic(&dlq.name) || dlq.partitions < 1 || dlq.replication < 1 {
            return Err(format!("inbound dead_letter {dlq:?} is not valid"));
        }
        if self.topics.contains(&dlq.name) {
            return Err("inbound dead_letter is one of the topics consumed".into());
        }
        if self.queue_capacity == 0 || self.max_in_flight == 0 {
            return Err("inbound queue_capacity and max_in_flight must be at least 1".into());
        }
        if self.commit_interval.is_zero() || self.timeout.is_zero() {
            return Err("inbound commit_interval and timeout must be above 0".into());
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return Err("inbound retry_min must be above 0 and retry_max ≥ retry_min".into());
        }
        if let Some((k, _)) = self
            .config
            .iter()
            .chain(&self.consumer_config)
            .find(|(k, _)| INBOUND_RESERVED.contains(&k.trim()))
        {
            return Err(format!("inbound config may not set {k:?}"));
        }
        Ok(())
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.as_str())
            .set("client.id", "wsedge-inbound")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &self.config {
            c.set(k.trim(), v.as_str());
        }
        c
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", self.group_id.as_str())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "statistics.interval.ms",
                STATS_INTERVAL.as_millis().to_string(),
            );
        for (k, v) in &self.consumer_config {
            c.set(k.trim(), v.as_str());
        }
        c
    }

    fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        let ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        c.set("enable.idempotence", "true")
            .set("message.timeout.ms", ms.max(10).to_string())
            .set("allow.auto.create.topics", "false")
            .set("linger.ms", "1");
        c
    }
}

/// A record from an inbound topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRecord {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Bytes>,
    /// Its headers in order (a value may be null).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Its payload (empty when null).
    pub payload: Bytes,
}

/// The node's answer to one record: `Ok(())` once the channel's home
/// accepted the publication, `Err(reason)` when it never can (dead
/// letter); dropped unanswered, the record comes again after a backoff.
pub type InboundAck = oneshot::Sender<Result<(), String>>;

/// Where the node takes the records from.
pub type InboundQueue = mpsc::Receiver<(InboundRecord, InboundAck)>;

/// A topic and partition.
type Key = (Arc<str>, i32);

/// One assigned partition's records in flight.
#[derive(Debug)]
struct Part {
    /// Which assignment this is (answers to an earlier one are stale).
    generation: u64,
    /// Offsets handed over, in order, and whether each is done.
    in_flight: VecDeque<(i64, bool)>,
    /// The offset to commit: after the last of the unbroken run of done
    /// records.
    commit: Option<i64>,
    /// The last offset the coordinator is known to have (librdkafka's
    /// statistics; a commit is sent again until they show it).
    committed: Option<i64>,
}

/// Every assigned partition's bookkeeping, shared by the loop and the
/// rebalance and statistics callbacks (which run inside the loop's
/// `recv`, on the same thread: the lock is never contended).
#[derive(Debug, Default)]
struct Tracker {
    parts: HashMap<Key, Part>,
    next_generation: u64,
}

impl Tracker {
    /// `key` is assigned (again): a fresh generation.
    fn assign(&mut self, key: Key) {
        self.next_generation += 1;
        self.parts.insert(
            key,
            Part {
                generation: self.next_generation,
                in_flight: VecDeque::new(),
                commit: None,
                committed: None,
            },
        );
    }

    /// `key` is revoked: its offset to commit, if it moved.
    fn revoke(&mut self, key: &Key) -> Option<i64> {
        let part = self.parts.remove(key)?;
        part.commit
            .filter(|&c| part.committed.is_none_or(|d| c > d))
    }

    /// Record `offset` of `key` was handed over; its generation.
    fn handed(&mut self, key: &Key, offset: i64) -> u64 {
        if !self.parts.contains_key(key) {
            self.assign(key.clone());
        }
        let part = self.parts.get_mut(key).expect("assigned above");
        part.in_flight.push_back((offset, false));
        part.generation
    }

    /// Record `offset` of `key` (of `generation`) is done; whether it was
    /// still tracked (not revoked since).
    fn done(&mut self, key: &Key, generation: u64, offset: i64) -> bool {
        let Some(part) = self
            .parts
            .get_mut(key)
            .filter(|p| p.generation == generation)
        else {
            return false;
        };
        // Offsets are handed over in increasing order.
        let Ok(i) = part.in_flight.binary_search_by_key(&offset, |(o, _)| *o) else {
            return false;
        };
        part.in_flight[i].1 = true;
        while let Some(&(o, true)) = part.in_flight.front() {
            part.in_flight.pop_front();
            part.commit = Some(o + 1);
        }
        true
    }

    /// Whether `generation` of `key` is still assigned.
    fn current(&self, key: &Key, generation: u64) -> bool {
        self.parts
            .get(key)
            .is_some_and(|p| p.generation == generation)
    }

    /// The offsets to commit (moved since the last commit).
    fn due(&self) -> Vec<(Key, i64)> {
        self.parts
            .iter()
            .filter_map(|(k, p)| {
                let c = p.commit?;
                p.committed.is_none_or(|d| c > d).then(|| (k.clone(), c))
            })
            .collect()
    }

    /// The coordinator has `offset` for `key`.
    fn committed(&mut self, key: &Key, offset: i64) {
        if let Some(p) = self.parts.get_mut(key) {
            p.committed = Some(p.committed.map_or(offset, |c| c.max(offset)));
        }
    }

    /// Records handed over and not done.
    fn in_flight(&self) -> usize {
        self.parts
            .values()
            .map(|p| p.in_flight.iter().filter(|(_, done)| !done).count())
            .sum()
    }
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The consumer's context: rebalances and commits update the tracker,
/// statistics the lag.
struct InboundContext {
    tracker: Arc<Mutex<Tracker>>,
    metrics: Arc<InboundMetrics>,
}

impl ClientContext for InboundContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason, "librdkafka error (inbound)");
    }

    fn stats(&self, stats: Statistics) {
        let mut tracker = lock(&self.tracker);
        let mut lag = 0u64;
        for (name, topic) in &stats.topics {
            for (&partition, p) in &topic.partitions {
                let key: Key = (Arc::from(name.as_str()), partition);
                if partition < 0 || !tracker.parts.contains_key(&key) {
                    continue;
                }
                // librdkafka's view of the group's offset (fetched at
                // the assignment, updated by each commit's answer): the
                // commits the loop sent that the coordinator took.
                if p.committed_offset >= 0 {
                    tracker.committed(&key, p.committed_offset);
                }
                let base = match p.committed_offset {
                    c if c >= 0 => c,
                    _ => p.lo_offset.max(0),
                };
                if p.hi_offset >= 0 {
                    lag += u64::try_from(p.hi_offset - base).unwrap_or(0);
                }
            }
        }
        InboundMetrics::set(&self.metrics.lag, lag);
    }
}

impl ConsumerContext for InboundContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        // What was answered goes to the coordinator before the partitions
        // go; what was not comes again at their next owner.
        let mut commit = TopicPartitionList::new();
        {
            let mut tracker = lock(&self.tracker);
            for e in tpl.elements() {
                let key: Key = (Arc::from(e.topic()), e.partition());
                if let Some(offset) = tracker.revoke(&key) {
                    let _ = commit.add_partition_offset(
                        e.topic(),
                        e.partition(),
                        Offset::Offset(offset),
                    );
                }
            }
            InboundMetrics::set(
                &self.metrics.assigned_partitions,
                tracker.parts.len() as u64,
            );
        }
        InboundMetrics::add(&self.metrics.rebalances, 1);
        tracing::info!(partitions = tpl.count(), "inbound: partitions revoked");
        if commit.count() > 0 {
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => InboundMetrics::add(&self.metrics.commits, 1),
                Err(e) => {
                    InboundMetrics::add(&self.metrics.commit_failures, 1);
                    tracing::warn!(error = %e, "inbound: the commit before a revocation failed; those records come again");
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut tracker = lock(&self.tracker);
                for e in tpl.elements() {
                    tracker.assign((Arc::from(e.topic()), e.partition()));
                }
                InboundMetrics::set(
                    &self.metrics.assigned_partitions,
                    tracker.parts.len() as u64,
                );
                InboundMetrics::add(&self.metrics.rebalances, 1);
                tracing::info!(partitions = tpl.count(), "inbound: partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "inbound: rebalance error"),
        }
    }
}

/// One record on its way through the node.
struct Pending {
    key: Key,
    generation: u64,
    record: InboundRecord,
    /// Hand-overs or dead-letter attempts so far (the backoff's exponent).
    attempt: u32,
}

/// Something that finished while the loop waited.
enum Event {
    /// The node answered (or dropped the ack).
    Answered(
        Pending,
        Result<Result<(), String>, oneshot::error::RecvError>,
    ),
    /// A backoff ended: hand it over again.
    Redeliver(Pending),
    /// A dead letter's delivery (`true`: it carried the payload): done,
    /// or why not (and whether that is permanent).
    DeadLettered(Pending, String, bool, Result<(), (String, bool)>),
    /// A backoff ended: produce its dead letter again.
    RetryDeadLetter(Pending, String),
}

type EventFuture = Pin<Box<dyn Future<Output = Event> + Send>>;

type Producer = FutureProducer<KafkaContext>;

/// Starts the consumer thread (`wsedge-inbound`): joins the group in the
/// background and hands records to the returned queue. The dead-letter
/// topic is created when missing, in the background (retried until the
/// brokers answer).
pub fn start(
    opts: InboundOptions,
) -> io::Result<(InboundQueue, Arc<InboundMetrics>, WorkerThread)> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    opts.validate().map_err(invalid)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = Arc::new(InboundMetrics::default());
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let producer: Producer = opts
        .producer_config()
        .create_with_context(KafkaContext { ends: None })
        .map_err(|e| invalid(format!("inbound dead-letter producer: {e}")))?;
    let worker_metrics = metrics.clone();
    let thread = WorkerThread::spawn("wsedge-inbound", runtime, move |stop| async move {
        // The stream consumer spawns its wake-up task: inside the runtime.
        let context = InboundContext {
            tracker: tracker.clone(),
            metrics: worker_metrics.clone(),
        };
        let consumer: StreamConsumer<InboundContext> =
            match opts.consumer_config().create_with_context(context) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "inbound: cannot create the Kafka consumer");
                    return;
                }
            };
        let topics: Vec<&str> = opts.topics.iter().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&topics) {
            tracing::error!(error = %e, "inbound: cannot subscribe");
            return;
        }
        let inbound = Inbound {
            opts,
            consumer,
            producer: Arc::new(producer),
            tracker,
            metrics: worker_metrics,
            tx,
            events: FuturesUnordered::new(),
            stopping: false,
        };
        inbound.run(stop).await;
    })?;
    Ok((rx, metrics, thread))
}

/// The loop's state.
struct Inbound {
    opts: InboundOptions,
    consumer: StreamConsumer<InboundContext>,
    producer: Arc<Producer>,
    tracker: Arc<Mutex<Tracker>>,
    metrics: Arc<InboundMetrics>,
    tx: mpsc::Sender<(InboundRecord, InboundAck)>,
    events: FuturesUnordered<EventFuture>,
    stopping: bool,
}

impl Inbound {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        tracing::info!(
            group = %self.opts.group_id,
            topics = ?self.opts.topics,
            "inbound: consuming"
        );
        tokio::spawn(create_dead_letter_topic(self.opts.clone()));
        let mut commits = tokio::time::interval(self.opts.commit_interval);
        commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopping {
            let in_flight = lock(&self.tracker).in_flight();
            InboundMetrics::set(&self.metrics.in_flight, in_flight as u64);
            let read = in_flight < self.opts.max_in_flight;
            tokio::select! {
                _ = &mut stop => self.stopping = true,
                m = self.consumer.recv(), if read => {
                    let pending = match m {
                        Ok(m) => self.track(&m),
                        Err(e) => {
                            tracing::debug!(error = %e, "inbound: consumer error");
                            continue;
                        }
                    };
                    InboundMetrics::add(&self.metrics.received, 1);
                    self.hand_over(pending, &mut stop).await;
                }
                Some(event) = self.events.next(), if !self.events.is_empty() => {
                    self.event(event, &mut stop).await
                }
                _ = commits.tick() => self.commit(CommitMode::Async),
            }
        }
        // What was answered is committed; what was not comes again.
        self.commit(CommitMode::Sync);
        tracing::info!(
            in_flight = lock(&self.tracker).in_flight(),
            "inbound: stopped; unanswered records come again at the next consumer"
        );
    }

    /// A record read from Kafka, tracked.
    fn track(&self, m: &BorrowedMessage<'_>) -> Pending {
        let record = InboundRecord {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(Bytes::copy_from_slice),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                        .collect()
                })
                .unwrap_or_default(),
            payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        };
        let key: Key = (Arc::from(record.topic.as_str()), record.partition);
        let generation = lock(&self.tracker).handed(&key, record.offset);
        Pending {
            key,
            generation,
            record,
            attempt: 0,
        }
    }

    /// Hands `p` to the node (waiting while the queue is full, or until
    /// the stop).
    async fn hand_over(&mut self, p: Pending, stop: &mut oneshot::Receiver<()>) {
        let (ack, answer) = oneshot::channel();
        tokio::select! {
            sent = self.tx.send((p.record.clone(), ack)) => {
                if sent.is_err() {
                    tracing::info!("inbound: the node closed its queue; stopping");
                    self.stopping = true;
                    return;
                }
            }
            _ = stop => {
                self.stopping = true;
                return;
            }
        }
        self.events
            .push(Box::pin(async move { Event::Answered(p, answer.await) }));
    }

    async fn event(&mut self, event: Event, stop: &mut oneshot::Receiver<()>) {
        match event {
            Event::Answered(p, Ok(Ok(()))) => {
                if lock(&self.tracker).done(&p.key, p.generation, p.record.offset) {
                    InboundMetrics::add(&self.metrics.acknowledged, 1);
                }
            }
            Event::Answered(p, Ok(Err(reason))) => {
                if self.current(&p) {
                    self.dead_letter(p, reason, true);
                }
            }
            Event::Answered(mut p, Err(_)) => {
                if self.current(&p) {
                    InboundMetrics::add(&self.metrics.redelivered, 1);
                    let pause = self.backoff(p.attempt);
                    p.attempt += 1;
                    self.events.push(Box::pin(async move {
                        tokio::time::sleep(pause).await;
                        Event::Redeliver(p)
                    }));
                }
            }
            Event::Redeliver(p) => {
                if self.current(&p) {
                    self.hand_over(p, stop).await;
                }
            }
            Event::DeadLettered(p, _, _, Ok(())) => {
                if lock(&self.tracker).done(&p.key, p.generation, p.record.offset) {
                    InboundMetrics::add(&self.metrics.dead_lettered, 1);
                }
            }
            Event::DeadLettered(p, reason, true, Err((e, true))) => {
                tracing::debug!(error = %e, "inbound: a dead letter is too large; sent without its payload");
                self.dead_letter(p, reason, false);
            }
            Event::DeadLettered(mut p, reason, _, Err((e, _))) => {
                tracing::warn!(error = %e, "inbound: a dead letter failed; retrying");
                InboundMetrics::add(&self.metrics.retries, 1);
                let pause = self.backoff(p.attempt);
                p.attempt += 1;
                self.events.push(Box::pin(async move {
                    tokio::time::sleep(pause).await;
                    Event::RetryDeadLetter(p, reason)
                }));
            }
            Event::RetryDeadLetter(p, reason) => {
                if self.current(&p) {
                    self.dead_letter(p, reason, true);
                }
            }
        }
    }

    /// Whether `p`'s partition is still ours (same assignment).
    fn current(&self, p: &Pending) -> bool {
        lock(&self.tracker).current(&p.key, p.generation)
    }

    /// The pause before attempt `attempt + 1`, with jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.opts.retry_min, self.opts.retry_max, attempt)
    }

    /// Produces `p`'s dead letter; its delivery comes back as an event.
    fn dead_letter(&mut self, p: Pending, reason: String, with_payload: bool) {
        let r = &p.record;
        tracing::warn!(
            topic = %r.topic,
            partition = r.partition,
            offset = r.offset,
            %reason,
            "inbound: the node refused a record for good; dead-lettered"
        );
        let (partition, offset, size) = (
            r.partition.to_string(),
            r.offset.to_string(),
            r.payload.len().to_string(),
        );
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 5);
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let reason_value = clean(&reason);
        for (k, v) in [
            (DLQ_REASON, reason_value.as_str()),
            (DLQ_TOPIC, r.topic.as_str()),
            (DLQ_PARTITION, partition.as_str()),
            (DLQ_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        if !with_payload {
            headers = headers.insert(Header {
                key: DLQ_PAYLOAD_BYTES,
                value: Some(size.as_str()),
            });
        }
        let mut record =
            FutureRecord::<[u8], [u8]>::to(&self.opts.dead_letter.name).headers(headers);
        if with_payload {
            record = record.payload(&r.payload[..]);
        }
        if let Some(key) = &r.key {
            record = record.key(&key[..]);
        }
        let outcome = self.producer.send_result(record).map_err(|(e, _)| e);
        let timeout = self.opts.timeout;
        self.events.push(Box::pin(async move {
            let result = match outcome {
                Err(e) => Err((e.to_string(), is_permanent(&e))),
                Ok(delivery) => match tokio::time::timeout(timeout, delivery).await {
                    Ok(Ok(Ok(_))) => Ok(()),
                    Ok(Ok(Err((e, _)))) => Err((e.to_string(), is_permanent(&e))),
                    Ok(Err(_)) => Err(("the producer is gone".into(), false)),
                    Err(_) => Err(("no delivery report in time".into(), false)),
                },
            };
            Event::DeadLettered(p, reason, with_payload, result)
        }));
    }

    /// Commits the offsets that moved (`Async`: the result comes to the
    /// context's commit callback; `Sync`: at the stop).
    fn commit(&self, mode: CommitMode) {
        let due = lock(&self.tracker).due();
        if due.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &due {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => InboundMetrics::add(&self.metrics.commits, 1),
            Err(e) => {
                InboundMetrics::add(&self.metrics.commit_failures, 1);
                tracing::debug!(error = %e, "inbound: a commit failed; retried at the next");
            }
        }
    }
}

/// The pause before attempt `attempt + 1` of something that failed for
/// now: `min` doubling to `max`, times a random 0.5–1 (jitter, so records
/// that failed together do not come back together).
pub(super) fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let full = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    full.mul_f64(rand::random_range(0.5..=1.0))
}

/// Creates the dead-letter topic when missing, retrying (every
/// `retry_max`) until the brokers answer.
async fn create_dead_letter_topic(opts: InboundOptions) {
    let topics = [opts.dead_letter.clone()];
    loop {
        let (config, topics2, timeout) = (opts.client_config(), topics.clone(), opts.timeout);
        let handle = tokio::runtime::Handle::current();
        let created = tokio::task::spawn_blocking(move || {
            create_missing_topics(&config, &topics2, timeout, &handle)
        })
        .await;
        match created {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "inbound: cannot create the dead-letter topic yet")
            }
            Err(e) => tracing::warn!(error = %e, "inbound: the dead-letter topic task failed"),
        }
        tokio::time::sleep(opts.retry_max).await;
    }
}

impl fmt::Display for InboundRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}
