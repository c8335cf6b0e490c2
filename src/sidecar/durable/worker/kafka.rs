//! The Kafka transport: one idempotent librdkafka producer per
//! connection (its settings and the fence are in the parent module's
//! doc), the topics created when missing, a batch in flight (enqueue in
//! order, await the delivery reports, dead-letter what is refused for
//! good), and which errors are permanent.
//!
//! librdkafka calls block (metadata, creating topics, destroying a
//! producer), so they run on tokio's blocking threads, never on the
//! worker's loop; producing (`send_result`) only enqueues, and delivery
//! reports arrive on the producer's own polling thread.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::options::{DurableOptions, KafkaSink, TopicSpec, is_kafka_topic};
use super::transport::{self, Done, Failure, Landed, Landing, Outgoing, Transport, clean};

/// The header carrying a record's id (consumers deduplicate on it).
pub(in crate::sidecar::durable) const ID_HEADER: &str = "wsedge-id";
/// Headers of a dead letter: why it was refused.
pub(in crate::sidecar::durable) const DLQ_REASON: &str = "wsedge-dlq-reason";
/// The topic the record was for.
pub(in crate::sidecar::durable) const DLQ_TOPIC: &str = "wsedge-dlq-topic";
/// The payload's size, when it was left out (too large).
pub(in crate::sidecar::durable) const DLQ_PAYLOAD_BYTES: &str = "wsedge-dlq-payload-bytes";

/// Broker error codes no retry can cure for that record.
const PERMANENT_CODES: [RDKafkaErrorCode; 5] = [
    // Over `message.max.bytes`: librdkafka's own check at produce time,
    // or the broker's (the topic's `max.message.bytes`).
    RDKafkaErrorCode::MessageSizeTooLarge,
    RDKafkaErrorCode::MessageBatchTooLarge,
    RDKafkaErrorCode::InvalidMessageSize,
    RDKafkaErrorCode::InvalidTopic,
    RDKafkaErrorCode::InvalidRecord,
];

/// The producer, with the context that reports its end.
type KafkaProducer = FutureProducer<KafkaContext>;

/// The Kafka transport: the sink's settings, the topics to create, and
/// the producers being retired (the next one waits for them).
pub(super) struct Kafka {
    /// Producer settings (the transport's own, then the sink's `config`).
    config: ClientConfig,
    /// The listed topics and the dead-letter topic.
    topics: Vec<TopicSpec>,
    dlq: Arc<str>,
    timeout: Duration,
    max_message_bytes: usize,
    /// Retired producers being purged and destroyed on blocking threads.
    retiring: Vec<JoinHandle<()>>,
}

impl Kafka {
    /// The transport for `sink`, with `opts`' timings and dead-letter
    /// topic.
    pub(super) fn new(sink: &KafkaSink, opts: &DurableOptions) -> Kafka {
        Kafka {
            config: client_config(sink, opts),
            topics: sink.topics_to_create(&opts.dead_letter_subject),
            dlq: Arc::from(opts.dead_letter_subject.as_str()),
            timeout: opts.ack_timeout,
            max_message_bytes: sink.max_message_bytes,
            retiring: Vec::new(),
        }
    }
}

/// The producer's settings; see the parent module's doc for why each.
fn client_config(sink: &KafkaSink, opts: &DurableOptions) -> ClientConfig {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", sink.brokers.as_str())
        .set("client.id", "wsedge-durable")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        // librdkafka fails a record it could not deliver by then; the
        // worker's own deadline for the batch is the same (the fence
        // purges what is still in flight). `linger.ms` must be below it.
        .set(
            "message.timeout.ms",
            ms(opts.ack_timeout).max(10).to_string(),
        )
        .set("linger.ms", "1")
        .set("compression.type", "zstd")
        .set("allow.auto.create.topics", "false")
        .set("message.max.bytes", sink.max_message_bytes.to_string())
        // Room for a batch, the next one and dead letters, well above
        // `batch_max`, so a record is never refused for a full queue.
        .set(
            "queue.buffering.max.messages",
            (4 * opts.batch_max).clamp(100_000, 2_000_000).to_string(),
        );
    for (k, v) in &sink.config {
        c.set(k.trim(), v.as_str());
    }
    c
}

/// One producer; dropping it (see [`Transport::retire`]) purges and
/// destroys it.
pub(super) struct Session {
    /// The only strong reference: a batch in flight holds a `Weak` and
    /// upgrades it only while it enqueues (never across an `.await`), so
    /// the retire thread gets the last one.
    producer: Arc<KafkaProducer>,
    /// Why the producer is done for (all brokers down, a fatal error).
    ends: mpsc::UnboundedReceiver<String>,
}

impl Transport for Kafka {
    type Session = Session;
    const BROKER: &'static str = "Kafka";

    fn connect(&mut self) -> std::io::Result<transport::Connecting<Session>> {
        let retiring = std::mem::take(&mut self.retiring);
        let (config, topics, timeout) = (self.config.clone(), self.topics.clone(), self.timeout);
        Ok(Box::pin(async move {
            // The fence: the last producer is gone before the next one.
            for r in retiring {
                let _ = r.await;
            }
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || open(&config, &topics, timeout, &handle))
                .await
                .unwrap_or_else(|e| Err(format!("the connect task ended: {e}")))
        }))
    }

    async fn lost(session: &mut Session) -> String {
        session
            .ends
            .recv()
            .await
            .unwrap_or_else(|| "the producer closed".into())
    }

    fn fly(&self, session: &Session, batch: Vec<Outgoing>) -> Landing {
        let out = Out {
            producer: Arc::downgrade(&session.producer),
            dlq: self.dlq.clone(),
            max_message_bytes: self.max_message_bytes,
        };
        let timeout = self.timeout;
        Box::pin(async move { out.fly(batch, timeout).await })
    }

    fn retire(&mut self, session: Session) {
        // Dropping a producer purges its queues (the records fail
        // locally, never sent), waits up to 500 ms for their reports and
        // destroys it (its broker threads end): blocking work.
        let Session { producer, ends } = session;
        drop(ends);
        self.retiring
            .push(tokio::task::spawn_blocking(move || drop(producer)));
    }
}

/// Makes a producer, checks the brokers answer, creates the missing
/// topics (blocking: on a blocking thread).
fn open(
    config: &ClientConfig,
    topics: &[TopicSpec],
    timeout: Duration,
    handle: &tokio::runtime::Handle,
) -> Result<Session, String> {
    let (tx, mut ends) = mpsc::unbounded_channel();
    let producer: KafkaProducer = config
        .create_with_context(KafkaContext { ends: Some(tx) })
        .map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
    let metadata = producer
        .client()
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("no answer from the Kafka brokers: {e}"))?;
    let missing = missing_topics(&metadata, topics);
    if !missing.is_empty() {
        create_topics(config, &missing, timeout, handle)?;
    }
    // What librdkafka reported before the brokers answered is stale.
    while ends.try_recv().is_ok() {}
    Ok(Session {
        producer: Arc::new(producer),
        ends,
    })
}

/// Those of `topics` that `metadata` does not list (without an error).
fn missing_topics<'a>(
    metadata: &rdkafka::metadata::Metadata,
    topics: &'a [TopicSpec],
) -> Vec<&'a TopicSpec> {
    let existing: HashSet<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name())
        .collect();
    topics
        .iter()
        .filter(|t| !existing.contains(t.name.as_str()))
        .collect()
}

/// Creates those of `topics` the brokers do not have (blocking: call it
/// on a blocking thread); one that exists is left as it is.
pub(in crate::sidecar::durable) fn create_missing_topics(
    config: &ClientConfig,
    topics: &[TopicSpec],
    timeout: Duration,
    handle: &tokio::runtime::Handle,
) -> Result<(), String> {
    let admin: AdminClient<KafkaContext> = config
        .create_with_context(KafkaContext { ends: None })
        .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("no answer from the Kafka brokers: {e}"))?;
    let missing = missing_topics(&metadata, topics);
    match missing.is_empty() {
        true => Ok(()),
        false => create_topics(config, &missing, timeout, handle),
    }
}

/// Creates `missing` (CreateTopics); one created meanwhile by someone
/// else is fine.
fn create_topics(
    config: &ClientConfig,
    missing: &[&TopicSpec],
    timeout: Duration,
    handle: &tokio::runtime::Handle,
) -> Result<(), String> {
    let admin: AdminClient<KafkaContext> = config
        .create_with_context(KafkaContext { ends: None })
        .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    // The admin future needs no runtime driver (librdkafka answers on its
    // own thread); this is a blocking thread, so it may wait here.
    let results = handle
        .block_on(admin.create_topics(&new, &opts))
        .map_err(|e| format!("cannot create Kafka topics: {e}"))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "durable: created a Kafka topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "durable: the Kafka topic exists already")
            }
            Err((name, code)) => {
                return Err(format!("cannot create Kafka topic {name:?}: {code}"));
            }
        }
    }
    Ok(())
}

/// The context of the worker's librdkafka clients: its logs go to
/// `tracing` (target `librdkafka`), and the errors that end a producer
/// to the session.
pub(in crate::sidecar::durable) struct KafkaContext {
    /// Where the errors that end a producer go (none: only logged).
    pub(in crate::sidecar::durable) ends: Option<mpsc::UnboundedSender<String>>,
}

/// librdkafka's log line to `tracing` (target `librdkafka`). Connection
/// failures repeat while a broker is down, and the worker logs an
/// outage once itself, so errors are at debug.
pub(in crate::sidecar::durable) fn log_to_tracing(
    level: RDKafkaLogLevel,
    fac: &str,
    message: &str,
) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::warn!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
            tracing::debug!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
            tracing::trace!(target: "librdkafka", fac, "{message}")
        }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason, "librdkafka error");
        let ends = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::Fatal)
        );
        if ends && let Some(tx) = &self.ends {
            let _ = tx.send(format!("{error}: {reason}"));
        }
    }
}

/// How an error is handled.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// Dead-letter the record.
    Permanent(String),
    /// Retire the producer; the record goes again on the next one.
    Retried(String),
}

/// Whether no retry can cure `e` for the record it concerns.
pub(in crate::sidecar::durable) fn is_permanent(e: &KafkaError) -> bool {
    e.rdkafka_error_code()
        .is_some_and(|code| PERMANENT_CODES.contains(&code))
}

fn classify(e: &KafkaError) -> Class {
    match is_permanent(e) {
        true => Class::Permanent(e.to_string()),
        false => Class::Retried(e.to_string()),
    }
}

/// What is in flight between enqueueing and the delivery report.
enum Sent {
    Delivery(DeliveryFuture),
    Rejected(String),
    Failed(String),
}

/// What a batch in flight needs.
struct Out {
    producer: Weak<KafkaProducer>,
    dlq: Arc<str>,
    max_message_bytes: usize,
}

impl Out {
    /// Enqueues `batch` in order, awaits the delivery reports (all within
    /// `timeout` of the start) and dead-letters what is refused for good.
    async fn fly(self, batch: Vec<Outgoing>, timeout: Duration) -> Landed {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sent = Vec::with_capacity(batch.len());
        {
            let Some(producer) = self.producer.upgrade() else {
                return failed("the producer was retired");
            };
            for rec in &batch {
                if let Some(reason) = &rec.reject {
                    sent.push(Sent::Rejected(reason.clone()));
                    continue;
                }
                if !is_kafka_topic(&rec.subject) {
                    sent.push(Sent::Rejected(format!(
                        "invalid topic {:?}",
                        clean(&rec.subject)
                    )));
                    continue;
                }
                let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: ID_HEADER,
                    value: Some(rec.msg_id.as_bytes()),
                });
                let mut record = FutureRecord::<[u8], [u8]>::to(&rec.subject)
                    .payload(&rec.payload[..])
                    .headers(headers);
                if !rec.key.is_empty() {
                    record = record.key(rec.key.as_bytes());
                }
                match producer.send_result(record) {
                    Ok(delivery) => sent.push(Sent::Delivery(delivery)),
                    Err((e, _)) => match classify(&e) {
                        Class::Permanent(reason) => sent.push(Sent::Rejected(reason)),
                        Class::Retried(reason) => {
                            sent.push(Sent::Failed(reason));
                            break;
                        }
                    },
                }
            }
        }
        let mut landed = Landed::default();
        for (i, s) in sent.into_iter().enumerate() {
            let done = match s {
                Sent::Delivery(delivery) => match tokio::time::timeout_at(deadline, delivery).await
                {
                    Ok(Ok(Ok(d))) => Done::Stored {
                        // A resend the broker had already (librdkafka
                        // reports it delivered, without an offset).
                        duplicate: d.offset < 0,
                    },
                    Ok(Ok(Err((e, _)))) => match classify(&e) {
                        Class::Permanent(reason) => Done::DeadLettered(reason),
                        Class::Retried(reason) => {
                            landed.failure = Some(Failure::Connection(reason));
                            break;
                        }
                    },
                    Ok(Err(_)) => {
                        landed.failure =
                            Some(Failure::Connection("the producer was retired".into()));
                        break;
                    }
                    Err(_) => {
                        landed.failure =
                            Some(Failure::Connection("no delivery report in time".into()));
                        break;
                    }
                },
                Sent::Rejected(reason) => Done::DeadLettered(reason),
                Sent::Failed(reason) => {
                    landed.failure = Some(Failure::Connection(reason));
                    break;
                }
            };
            if let Done::DeadLettered(reason) = &done
                && let Err(e) = self.dead_letter(&batch[i], reason, deadline).await
            {
                landed.failure = Some(Failure::Connection(format!(
                    "dead-letter produce failed: {e}"
                )));
                break;
            }
            landed.done.push(done);
        }
        landed
    }

    /// Produces `rec`'s dead letter and awaits its delivery, the payload
    /// left out if the whole would not fit `message.max.bytes`.
    async fn dead_letter(
        &self,
        rec: &Outgoing,
        reason: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        let (reason, topic, msg_id) = (clean(reason), clean(&rec.subject), clean(&rec.msg_id));
        tracing::warn!(
            %topic,
            %msg_id,
            %reason,
            "durable: Kafka refused a record for good; dead-lettered"
        );
        // Headers, key and the record's framing, generously.
        let overhead = 256 + reason.len() + topic.len() + msg_id.len() + rec.key.len();
        if overhead + rec.payload.len() <= self.max_message_bytes {
            match self
                .produce_dead_letter(rec, &reason, &topic, &msg_id, true, deadline)
                .await
            {
                // The estimate was short: send it without the payload.
                Err(Class::Permanent(_)) => {}
                Err(Class::Retried(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
        self.produce_dead_letter(rec, &reason, &topic, &msg_id, false, deadline)
            .await
            .map_err(|e| match e {
                Class::Permanent(e) | Class::Retried(e) => e,
            })
    }

    async fn produce_dead_letter(
        &self,
        rec: &Outgoing,
        reason: &str,
        topic: &str,
        msg_id: &str,
        with_payload: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(), Class> {
        let delivery = {
            let producer = self
                .producer
                .upgrade()
                .ok_or_else(|| Class::Retried("the producer was retired".into()))?;
            let size = rec.payload.len().to_string();
            let mut headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: DLQ_REASON,
                    value: Some(reason),
                })
                .insert(Header {
                    key: DLQ_TOPIC,
                    value: Some(topic),
                })
                .insert(Header {
                    key: ID_HEADER,
                    value: Some(msg_id),
                });
            if !with_payload {
                headers = headers.insert(Header {
                    key: DLQ_PAYLOAD_BYTES,
                    value: Some(size.as_str()),
                });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.dlq).headers(headers);
            if with_payload {
                record = record.payload(&rec.payload[..]);
            }
            if !rec.key.is_empty() {
                record = record.key(rec.key.as_bytes());
            }
            producer
                .send_result(record)
                .map_err(|(e, _)| classify(&e))?
        };
        match tokio::time::timeout_at(deadline, delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(classify(&e)),
            Ok(Err(_)) => Err(Class::Retried("the producer was retired".into())),
            Err(_) => Err(Class::Retried("no delivery report in time".into())),
        }
    }
}

/// A batch that failed before its first record.
fn failed(reason: &str) -> Landed {
    Landed {
        done: Vec::new(),
        failure: Some(Failure::Connection(reason.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_and_retried_errors() {
        let produce = |c| KafkaError::MessageProduction(c);
        for c in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidMessageSize,
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            assert!(
                matches!(classify(&produce(c)), Class::Permanent(_)),
                "{c:?}"
            );
        }
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::PurgeQueue,
            RDKafkaErrorCode::PurgeInflight,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::InvalidMessage,
        ] {
            assert!(matches!(classify(&produce(c)), Class::Retried(_)), "{c:?}");
        }
        assert!(matches!(classify(&KafkaError::Canceled), Class::Retried(_)));
    }

    #[test]
    fn the_producer_is_idempotent_and_never_auto_creates() {
        let mut opts = DurableOptions::kafka("127.0.0.1:9092", "/tmp/x");
        opts.ack_timeout = Duration::from_millis(1500);
        let super::super::SinkOptions::Kafka(sink) = &mut opts.sink else {
            unreachable!()
        };
        sink.config.push(("client.id".into(), "edge-7".into()));
        let sink = sink.clone();
        let c = client_config(&sink, &opts);
        for (k, v) in [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("max.in.flight.requests.per.connection", "5"),
            ("message.timeout.ms", "1500"),
            ("allow.auto.create.topics", "false"),
            ("compression.type", "zstd"),
            ("client.id", "edge-7"),
        ] {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
    }
}
