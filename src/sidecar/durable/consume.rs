//! Backend events to users: the records of the `[[durable.consume]]`
//! topics and subjects, published to the channels their rules name
//! (thread `wsedge-consume`, beside the consumers: `wsedge-inbound` for
//! Kafka topics, [`super::inbound`]; `wsedge-inbound-js` for JetStream
//! subjects, [`super::inbound_js`]). Both consumers hand their records
//! over the same way (a bounded queue, an [`InboundAck`] each) and this
//! one loop publishes them: only the way a record becomes a channel, data
//! and idempotency key differs by source.
//!
//! Each record gets its channel from its rule's [`ChannelTemplate`], its
//! data from its payload (JSON as is, other bytes as binary data) and an
//! idempotency key:
//!
//! - Kafka: the record's `idempotency-key` header when it has one (the
//!   backend's own id, 1–256 bytes), else
//!   `kafka:<partition>:<offset>:<topic>` (cut to 256 bytes). `{key}` is
//!   the record's key. (The record's *key* is not the idempotency key:
//!   records keyed by user would make every second notification to a
//!   user within the window a "repeat".)
//! - JetStream: the message's `idempotency-key` header (1–256 bytes),
//!   else its `Nats-Msg-Id` header (1–256 bytes), else
//!   `jetstream:<stream>:<stream sequence>`. `{key}` is the last token of
//!   the message's subject, `{subject:<n>}` its n-th token (from 1).
//!
//! A record delivered again (a consumer restart, a rebalance, a lost
//! acknowledgement) within the node's `idempotency_window` is then not
//! published twice: at least once into the edge, once to clients.
//!
//! The publication goes to the channel's home like a server API
//! `publish` (so `client_publish = false` namespaces take it). Its answer
//! settles the record: published is done; an error no retry can cure (no
//! channel, an invalid or unknown channel, a bad request, permission)
//! sends the record to the dead-letter topic or subject with the reason;
//! anything else (overloaded, shutting down, a home node away) leaves it
//! to be handed over again after a backoff. Records are handed to the
//! shards in the order they arrive, so a partition's (a consumer's)
//! records for one channel are published in order (a retried one comes
//! later).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::inbound::{
    InboundAck, InboundMetrics, InboundOptions, InboundQueue, InboundRecord, start as start_inbound,
};
use super::inbound_js::{self, JsInboundOptions, JsQueue, JsRecord};
use crate::bridge::Inbox;
use crate::config::Config;
use crate::config::durable::{ChannelTemplate, ConsumeSource, subject_matches};
use crate::engine::codes::ErrorCode;
use crate::engine::wire::Data;
use crate::engine::wire::publication::PubData;
use crate::shard::Shared;
use crate::sidecar::WorkerThread;
use crate::sidecar::api::Dispatcher;

/// Longest idempotency key (the wire's bound).
const MAX_KEY: usize = 256;

/// Counts of what became of the records.
#[derive(Debug, Default)]
pub struct ConsumeMetrics {
    /// Published (an offset, or a repeat of an idempotency key).
    pub published: AtomicU64,
    /// Refused for good: sent to the dead-letter topic or subject.
    pub refused: AtomicU64,
    /// Not published now: handed over again later.
    pub retried: AtomicU64,
}

/// One running consumer's counters, for the metrics.
#[derive(Debug, Clone)]
pub struct ConsumerSource {
    /// `kafka` or `jetstream` (the metrics' `source` label).
    pub kind: &'static str,
    /// The consumer's own counters (lag among them).
    pub inbound: Arc<InboundMetrics>,
    /// What became of its records.
    pub consumed: Arc<ConsumeMetrics>,
}

/// The running consumers and the publisher: their threads and counters.
pub struct Consuming {
    consumers: Vec<WorkerThread>,
    publisher: WorkerThread,
    /// Each running consumer's counters (Kafka first when both run).
    pub sources: Vec<ConsumerSource>,
}

impl Consuming {
    /// Stops the consumers (each settles what is done; the rest comes
    /// again) and then the publisher.
    pub fn shutdown(self) {
        for c in self.consumers {
            c.shutdown();
        }
        self.publisher.shutdown();
    }
}

/// A topic's rule.
struct TopicRule {
    topic: String,
    channel: ChannelTemplate,
}

/// A subject filter's rule.
struct SubjectRule {
    subject: String,
    channel: ChannelTemplate,
}

/// What the publisher works from: the rules and the queues with their
/// counters.
struct Publisher {
    dispatcher: Arc<Dispatcher>,
    topics: Vec<TopicRule>,
    subjects: Vec<SubjectRule>,
    kafka: Option<InboundQueue>,
    jetstream: Option<JsQueue>,
    kafka_consumed: Arc<ConsumeMetrics>,
    jetstream_consumed: Arc<ConsumeMetrics>,
}

/// Starts consuming when `[[durable.consume]]` lists topics or subjects;
/// `None` otherwise. Topic rules start the Kafka consumer group, subject
/// rules the JetStream durable consumer (on `[durable] nats_url`, else
/// the cluster's NATS with its credentials), both named
/// `[durable] consume_group`.
pub fn start(
    config: &Config,
    inboxes: Arc<[Arc<Inbox>]>,
    shared: Arc<Shared>,
) -> io::Result<Option<Consuming>> {
    let d = &config.durable;
    if d.consume.is_empty() {
        return Ok(None);
    }
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let mut topics = Vec::new();
    let mut subjects = Vec::new();
    let mut streams = Vec::new();
    for r in &d.consume {
        let channel = ChannelTemplate::parse(&r.channel).map_err(invalid)?;
        match r.source().map_err(invalid)? {
            ConsumeSource::Kafka(topic) => topics.push(TopicRule {
                topic: topic.into(),
                channel,
            }),
            ConsumeSource::Jetstream { subject, stream } => {
                subjects.push(SubjectRule {
                    subject: subject.into(),
                    channel,
                });
                streams.push((subject.to_owned(), stream.map(str::to_owned)));
            }
        }
    }
    let mut consumers = Vec::new();
    let mut sources = Vec::new();
    let mut kafka = None;
    let kafka_consumed = Arc::new(ConsumeMetrics::default());
    if !topics.is_empty() {
        let brokers = d.kafka_brokers.clone().ok_or_else(|| {
            invalid("[[durable.consume]] topics need [durable] kafka_brokers".into())
        })?;
        let mut opts = InboundOptions::new(brokers, topics.iter().map(|r| r.topic.clone()));
        opts.group_id = d.consume_group.clone();
        opts.commit_interval = d.consume_commit_interval;
        opts.config = d
            .kafka_config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        opts.consumer_config = d
            .kafka_consumer_config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (queue, inbound, thread) = start_inbound(opts)?;
        consumers.push(thread);
        kafka = Some(queue);
        sources.push(ConsumerSource {
            kind: "kafka",
            inbound,
            consumed: kafka_consumed.clone(),
        });
    }
    let mut jetstream = None;
    let jetstream_consumed = Arc::new(ConsumeMetrics::default());
    if !subjects.is_empty() {
        let (url, connect) = crate::shard::durable::nats_connection(config)?;
        let opts = JsInboundOptions::new(url, d.consume_group.clone(), streams);
        let (queue, inbound, thread) = inbound_js::start(opts, connect)?;
        consumers.push(thread);
        jetstream = Some(queue);
        sources.push(ConsumerSource {
            kind: "jetstream",
            inbound,
            consumed: jetstream_consumed.clone(),
        });
    }
    let publisher = Publisher {
        dispatcher: Arc::new(Dispatcher::new(inboxes, shared, config.node_name.clone())),
        topics,
        subjects,
        kafka,
        jetstream,
        kafka_consumed,
        jetstream_consumed,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let publisher =
        WorkerThread::spawn("wsedge-consume", runtime, move |stop| publisher.run(stop))?;
    tracing::info!(
        group = %d.consume_group,
        rules = ?d.consume.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "durable: consuming backend events into channels"
    );
    Ok(Some(Consuming {
        consumers,
        publisher,
        sources,
    }))
}

impl Publisher {
    /// The loop: hands each record to its home in arrival order, settles
    /// it when the home answers; ends at the stop or when every consumer
    /// closed its queue.
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut answers = FuturesUnordered::new();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(()) = answers.next(), if !answers.is_empty() => {}
                next = recv(self.kafka.as_mut()) => match next {
                    Some((record, ack)) => {
                        let prepared = prepare_kafka(&self.topics, &record);
                        let m = &self.kafka_consumed;
                        answers.extend(publication(&self.dispatcher, m, prepared, ack));
                    }
                    None => self.kafka = None,
                },
                next = recv(self.jetstream.as_mut()) => match next {
                    Some((record, ack)) => {
                        let prepared = prepare_jetstream(&self.subjects, &record);
                        let m = &self.jetstream_consumed;
                        answers.extend(publication(&self.dispatcher, m, prepared, ack));
                    }
                    None => self.jetstream = None,
                },
            }
            if self.kafka.is_none() && self.jetstream.is_none() {
                break;
            }
        }
    }
}

/// The next of `queue`'s records (`None`: it closed); never, without a
/// queue.
async fn recv<T>(queue: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match queue {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

/// A record's channel, data and idempotency key.
struct Prepared {
    channel: String,
    data: PubData,
    key: Box<str>,
}

/// Settles a record that can never be published at once (`None`), or
/// queues its publication on the home shard now, in arrival order, and
/// returns the wait for the answer, which settles it (awaited beside the
/// loop).
fn publication(
    dispatcher: &Arc<Dispatcher>,
    metrics: &Arc<ConsumeMetrics>,
    prepared: Result<Prepared, String>,
    ack: InboundAck,
) -> Option<impl Future<Output = ()> + Send + use<>> {
    let p = match prepared {
        Ok(p) => p,
        Err(reason) => {
            settle(metrics, ack, Settle::Refused(reason));
            return None;
        }
    };
    let (d, m) = (dispatcher.clone(), metrics.clone());
    Some(async move {
        let outcome = match d.publish(&p.channel, p.data, Some(p.key)).await {
            Ok(_) => Settle::Done,
            Err(e) if permanent(e.code) => Settle::Refused(format!(
                "{}: error {} ({})",
                p.channel,
                e.code.code(),
                e.detail.as_deref().unwrap_or(e.code.message())
            )),
            Err(_) => Settle::Later,
        };
        settle(&m, ack, outcome);
    })
}

/// What became of a record.
enum Settle {
    /// Published.
    Done,
    /// Never publishable: to the dead-letter topic or subject, with the
    /// reason.
    Refused(String),
    /// Not now: handed over again after a backoff.
    Later,
}

/// Answers the consumer (a dropped ack means "later").
fn settle(metrics: &ConsumeMetrics, ack: InboundAck, outcome: Settle) {
    let counter = match &outcome {
        Settle::Done => &metrics.published,
        Settle::Refused(_) => &metrics.refused,
        Settle::Later => &metrics.retried,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Settle::Done => {
            let _ = ack.send(Ok(()));
        }
        Settle::Refused(r) => {
            tracing::warn!(reason = %r, "durable: a consumed record cannot be published; dead-lettered");
            let _ = ack.send(Err(r));
        }
        Settle::Later => drop(ack),
    }
}

/// Errors no retry of the same record can cure.
fn permanent(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UnknownChannel
            | ErrorCode::InvalidChannel
            | ErrorCode::BadRequest
            | ErrorCode::PermissionDenied
    )
}

/// `channel` if it is a valid channel name, else why not.
fn valid(channel: String) -> Result<String, String> {
    if crate::engine::channel::is_valid_channel(&channel) {
        Ok(channel)
    } else {
        Err(format!("{channel:?} is not a valid channel name"))
    }
}

/// `k` cut to [`MAX_KEY`] bytes (at a character boundary).
fn bounded(mut k: String) -> Box<str> {
    let mut cut = k.len().min(MAX_KEY);
    while !k.is_char_boundary(cut) {
        cut -= 1;
    }
    k.truncate(cut);
    k.into()
}

/// Whether `k` may be an idempotency key as it is.
fn fits(k: &str) -> bool {
    (1..=MAX_KEY).contains(&k.len())
}

/// A Kafka record's channel, data and idempotency key, or why it can
/// never be published.
fn prepare_kafka(rules: &[TopicRule], r: &InboundRecord) -> Result<Prepared, String> {
    let rule = rules
        .iter()
        .find(|x| x.topic == r.topic)
        .ok_or_else(|| format!("no rule for topic {:?}", r.topic))?;
    let text = |b: &Option<bytes::Bytes>| {
        b.as_ref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    };
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| text(v))
    };
    let channel = valid(rule.channel.fill(|_| text(&r.key), header, |_| None)?)?;
    let key = header("idempotency-key")
        .filter(|k| fits(k))
        .map(Into::into)
        .unwrap_or_else(|| bounded(format!("kafka:{}:{}:{}", r.partition, r.offset, r.topic)));
    Ok(Prepared {
        channel,
        data: PubData::from_data(Data::Bytes(&r.payload)),
        key,
    })
}

/// A JetStream message's channel, data and idempotency key, or why it
/// can never be published.
fn prepare_jetstream(rules: &[SubjectRule], r: &JsRecord) -> Result<Prepared, String> {
    let rule = rules
        .iter()
        .find(|x| subject_matches(&x.subject, &r.subject))
        .ok_or_else(|| format!("no rule for subject {:?}", r.subject))?;
    let tokens: Vec<&str> = r.subject.split('.').collect();
    let token = |n: usize| {
        n.checked_sub(1)
            .and_then(|i| tokens.get(i))
            .map(|t| (*t).to_owned())
    };
    let channel = rule
        .channel
        .fill(
            |_| tokens.last().map(|t| (*t).to_owned()),
            |n| r.header(n),
            token,
        )
        .map_err(|e| format!("subject {:?}: {e}", r.subject))?;
    let channel = valid(channel)?;
    let key = r
        .header("idempotency-key")
        .filter(|k| fits(k))
        .or_else(|| r.header("Nats-Msg-Id").filter(|k| fits(k)))
        .map(Into::into)
        .unwrap_or_else(|| bounded(format!("jetstream:{}:{}", r.stream, r.sequence)));
    Ok(Prepared {
        channel,
        data: PubData::from_data(Data::Bytes(&r.payload)),
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(key: Option<&str>, headers: &[(&str, &str)], payload: &[u8]) -> InboundRecord {
        InboundRecord {
            topic: "notifications".into(),
            partition: 2,
            offset: 41,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), Some(Bytes::copy_from_slice(v.as_bytes()))))
                .collect(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn rules() -> Vec<TopicRule> {
        vec![TopicRule {
            topic: "notifications".into(),
            channel: ChannelTemplate::parse("#{key}").unwrap(),
        }]
    }

    /// `prepare`'s parts, for comparing.
    fn parts(p: Result<Prepared, String>) -> Result<(String, bool, String), String> {
        p.map(|p| (p.channel, p.data.is_json, p.key.into()))
    }

    #[test]
    fn a_record_keyed_by_user_goes_to_their_personal_channel() {
        let got = prepare_kafka(&rules(), &record(Some("alice"), &[], br#"{"n":1}"#));
        assert_eq!(
            parts(got),
            Ok(("#alice".into(), true, "kafka:2:41:notifications".into()))
        );
        // The backend's own id wins.
        let got = prepare_kafka(
            &rules(),
            &record(Some("bob"), &[("idempotency-key", "n-7")], &[0xff, 0]),
        );
        assert_eq!(parts(got), Ok(("#bob".into(), false, "n-7".into())));
    }

    #[test]
    fn records_that_can_never_be_published_say_why() {
        let err = |r: &InboundRecord| parts(prepare_kafka(&rules(), r)).unwrap_err();
        assert!(err(&record(None, &[], b"1")).contains("key"));
        let bad = err(&record(Some("a b"), &[], b"1"));
        assert!(bad.contains("not a valid channel"), "{bad}");
        let mut other = record(Some("a"), &[], b"1");
        other.topic = "else".into();
        assert!(err(&other).contains("no rule"));
        assert!(permanent(ErrorCode::InvalidChannel));
        assert!(!permanent(ErrorCode::Overloaded));
        assert!(!permanent(ErrorCode::Internal));
    }

    fn message(subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> JsRecord {
        JsRecord {
            stream: "BACKEND".into(),
            sequence: 17,
            subject: subject.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            payload: Bytes::copy_from_slice(payload),
            delivered: 1,
        }
    }

    fn subject_rules() -> Vec<SubjectRule> {
        let rule = |subject: &str, channel: &str| SubjectRule {
            subject: subject.into(),
            channel: ChannelTemplate::parse(channel).unwrap(),
        };
        vec![
            rule("notify.>", "#{key}"),
            rule("course.*.updates", "course:{subject:2}"),
            rule("org.*.>", "org:{subject:2}-{header:team}"),
        ]
    }

    #[test]
    fn a_message_goes_to_the_channel_its_subject_names() {
        let rules = subject_rules();
        let got = prepare_jetstream(&rules, &message("notify.alice", &[], br#"{"n":1}"#));
        assert_eq!(
            parts(got),
            Ok(("#alice".into(), true, "jetstream:BACKEND:17".into()))
        );
        // `{key}` is the last token, however many there are.
        let got = prepare_jetstream(&rules, &message("notify.eu.bob", &[], b"x"));
        assert_eq!(
            parts(got),
            Ok(("#bob".into(), false, "jetstream:BACKEND:17".into()))
        );
        let got = prepare_jetstream(&rules, &message("course.bio101.updates", &[], b"1"));
        assert_eq!(parts(got).unwrap().0, "course:bio101");
        let got = prepare_jetstream(
            &rules,
            &message(
                "org.acme.x",
                &[("team", "red"), ("Nats-Msg-Id", "m-1")],
                b"1",
            ),
        );
        assert_eq!(parts(got), Ok(("org:acme-red".into(), true, "m-1".into())));
    }

    #[test]
    fn the_idempotency_key_is_the_backends_then_the_message_id_then_the_sequence() {
        let rules = subject_rules();
        let key = |h: &[(&str, &str)]| {
            parts(prepare_jetstream(&rules, &message("notify.a", h, b"1")))
                .unwrap()
                .2
        };
        assert_eq!(
            key(&[("idempotency-key", "n-2"), ("Nats-Msg-Id", "m-9")]),
            "n-2"
        );
        assert_eq!(key(&[("Nats-Msg-Id", "m-9")]), "m-9");
        // Out of bounds: the next one.
        let long = "k".repeat(257);
        assert_eq!(
            key(&[("idempotency-key", &long), ("Nats-Msg-Id", "m-9")]),
            "m-9"
        );
        assert_eq!(
            key(&[("idempotency-key", ""), ("Nats-Msg-Id", &long)]),
            "jetstream:BACKEND:17"
        );
    }

    #[test]
    fn messages_that_can_never_be_published_say_why() {
        let rules = subject_rules();
        let err = |r: JsRecord| parts(prepare_jetstream(&rules, &r)).unwrap_err();
        let e = err(message("org.acme.x", &[], b"1"));
        assert!(e.contains("\"team\"") && e.contains("org.acme.x"), "{e}");
        let e = err(message("other.x", &[], b"1"));
        assert!(e.contains("no rule"), "{e}");
        let e = err(message("notify.a b", &[], b"1"));
        assert!(e.contains("not a valid channel"), "{e}");
        // Fewer tokens than the template asks for.
        let short = vec![SubjectRule {
            subject: "a.>".into(),
            channel: ChannelTemplate::parse("#{subject:3}").unwrap(),
        }];
        let e = parts(prepare_jetstream(&short, &message("a.b", &[], b"1"))).unwrap_err();
        assert!(e.contains("fewer than 3 tokens"), "{e}");
        assert_eq!(
            parts(prepare_jetstream(&short, &message("a.b.c", &[], b"1")))
                .unwrap()
                .0,
            "#c"
        );
    }
}
