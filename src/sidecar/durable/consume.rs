//! Backend events to users: the records of the `[[durable.consume]]`
//! topics, published to the channels their rules name (thread
//! `wsedge-consume`, beside the inbound consumer's `wsedge-inbound`).
//!
//! Each record from [`super::inbound`] gets its channel from its topic's
//! [`ChannelTemplate`] (its key, its headers), its data from its payload
//! (JSON as is, other bytes as binary data) and an idempotency key: the
//! record's `idempotency-key` header when it has one (the backend's own
//! id, 1–256 bytes), else `kafka:<partition>:<offset>:<topic>` (cut to
//! 256 bytes). A record delivered again (a consumer restart, a rebalance)
//! within the node's `idempotency_window` is then not published twice:
//! at least once into the edge, once to clients. (The record's *key* is
//! not the idempotency key: records keyed by user would make every
//! second notification to a user within the window a "repeat".)
//!
//! The publication goes to the channel's home like a server API
//! `publish` (so `client_publish = false` namespaces take it). Its answer
//! settles the record: an offset is done; an error no retry can cure (no
//! channel, an invalid or unknown channel, a bad request, permission)
//! sends the record to the dead-letter topic with the reason; anything
//! else (overloaded, shutting down, a home node away) leaves it to be
//! handed over again after a backoff. Records are handed to the shards
//! in the order they arrive, so a partition's records for one channel
//! are published in order (a retried one comes later).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;

use super::inbound::{
    InboundAck, InboundMetrics, InboundOptions, InboundQueue, InboundRecord, start as start_inbound,
};
use crate::bridge::Inbox;
use crate::config::Config;
use crate::config::durable::ChannelTemplate;
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
    /// Refused for good: sent to the dead-letter topic.
    pub refused: AtomicU64,
    /// Not published now: handed over again later.
    pub retried: AtomicU64,
}

/// The running consumer: its two threads and counters.
pub struct Consuming {
    inbound: WorkerThread,
    publisher: WorkerThread,
    /// The consumer's counters (lag among them).
    pub inbound_metrics: Arc<InboundMetrics>,
    /// What became of the records.
    pub metrics: Arc<ConsumeMetrics>,
}

impl Consuming {
    /// Stops the consumer (it commits what is done) and the publisher.
    pub fn shutdown(self) {
        self.inbound.shutdown();
        self.publisher.shutdown();
    }
}

/// A topic's rule.
struct Rule {
    topic: String,
    channel: ChannelTemplate,
}

/// Starts consuming when `[[durable.consume]]` lists topics; `None`
/// otherwise.
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
    let brokers = d
        .kafka_brokers
        .clone()
        .ok_or_else(|| invalid("[[durable.consume]] needs [durable] kafka_brokers".into()))?;
    let mut rules = Vec::new();
    for r in &d.consume {
        rules.push(Rule {
            topic: r.topic.clone(),
            channel: ChannelTemplate::parse(&r.channel).map_err(invalid)?,
        });
    }
    let topics: Vec<String> = rules.iter().map(|r| r.topic.clone()).collect();
    let mut opts = InboundOptions::new(brokers, topics);
    opts.group_id = d.consume_group.clone();
    let (queue, inbound_metrics, inbound) = start_inbound(opts)?;
    let metrics = Arc::new(ConsumeMetrics::default());
    let dispatcher = Dispatcher::new(inboxes, shared, config.node_name.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let m = metrics.clone();
    let publisher = WorkerThread::spawn("wsedge-consume", runtime, move |stop| {
        run(queue, rules, dispatcher, m, stop)
    })?;
    tracing::info!(
        group = %d.consume_group,
        topics = ?d.consume.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(),
        "durable: consuming backend events into channels"
    );
    Ok(Some(Consuming {
        inbound,
        publisher,
        inbound_metrics,
        metrics,
    }))
}

/// The loop: hands each record to its home in arrival order, settles it
/// when the home answers.
async fn run(
    mut queue: InboundQueue,
    rules: Vec<Rule>,
    dispatcher: Dispatcher,
    metrics: Arc<ConsumeMetrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let dispatcher = Arc::new(dispatcher);
    let mut answers = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = answers.next(), if !answers.is_empty() => {}
            next = queue.recv() => {
                let Some((record, ack)) = next else { break };
                match prepare(&rules, &record) {
                    Err(reason) => settle(&metrics, ack, Settle::Refused(reason)),
                    Ok((channel, data, key)) => {
                        // Queued on the home shard now, in arrival order;
                        // the answer is awaited beside the loop.
                        let d = dispatcher.clone();
                        let m = metrics.clone();
                        answers.push(async move {
                            let outcome = match d.publish(&channel, data, Some(key)).await {
                                Ok(_) => Settle::Done,
                                Err(e) if permanent(e.code) => {
                                    Settle::Refused(format!(
                                        "{channel}: error {} ({})",
                                        e.code.code(),
                                        e.detail.as_deref().unwrap_or(e.code.message())
                                    ))
                                }
                                Err(_) => Settle::Later,
                            };
                            settle(&m, ack, outcome);
                        });
                    }
                }
            }
        }
    }
}

/// What became of a record.
enum Settle {
    /// Published.
    Done,
    /// Never publishable: to the dead-letter topic, with the reason.
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

/// The record's channel, data and idempotency key, or why it can never
/// be published.
fn prepare(rules: &[Rule], r: &InboundRecord) -> Result<(String, PubData, Box<str>), String> {
    let rule = rules
        .iter()
        .find(|x| x.topic == r.topic)
        .ok_or_else(|| format!("no rule for topic {:?}", r.topic))?;
    let text = |b: &Option<bytes::Bytes>| {
        b.as_ref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    };
    let channel = rule.channel.fill(
        |_| text(&r.key),
        |name| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| text(v))
        },
    )?;
    if !crate::engine::channel::is_valid_channel(&channel) {
        return Err(format!("{channel:?} is not a valid channel name"));
    }
    let key = r
        .headers
        .iter()
        .find(|(k, _)| k == "idempotency-key")
        .and_then(|(_, v)| text(v))
        .filter(|k| (1..=MAX_KEY).contains(&k.len()))
        .unwrap_or_else(|| {
            let mut k = format!("kafka:{}:{}:{}", r.partition, r.offset, r.topic);
            let mut cut = k.len().min(MAX_KEY);
            while !k.is_char_boundary(cut) {
                cut -= 1;
            }
            k.truncate(cut);
            k
        });
    let data = PubData::from_data(Data::Bytes(&r.payload));
    Ok((channel, data, key.into()))
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

    fn rules() -> Vec<Rule> {
        vec![Rule {
            topic: "notifications".into(),
            channel: ChannelTemplate::parse("#{key}").unwrap(),
        }]
    }

    #[test]
    fn a_record_keyed_by_user_goes_to_their_personal_channel() {
        let (channel, data, key) =
            prepare(&rules(), &record(Some("alice"), &[], br#"{"n":1}"#)).unwrap();
        assert_eq!(channel, "#alice");
        assert!(data.is_json);
        assert_eq!(&*key, "kafka:2:41:notifications");
        // The backend's own id wins.
        let (_, data, key) = prepare(
            &rules(),
            &record(Some("bob"), &[("idempotency-key", "n-7")], &[0xff, 0]),
        )
        .unwrap();
        assert_eq!(&*key, "n-7");
        assert!(!data.is_json);
    }

    #[test]
    fn records_that_can_never_be_published_say_why() {
        assert!(
            prepare(&rules(), &record(None, &[], b"1"))
                .unwrap_err()
                .contains("key")
        );
        let bad = prepare(&rules(), &record(Some("a b"), &[], b"1")).unwrap_err();
        assert!(bad.contains("not a valid channel"), "{bad}");
        let mut other = record(Some("a"), &[], b"1");
        other.topic = "else".into();
        assert!(prepare(&rules(), &other).unwrap_err().contains("no rule"));
        assert!(permanent(ErrorCode::InvalidChannel));
        assert!(!permanent(ErrorCode::Overloaded));
        assert!(!permanent(ErrorCode::Internal));
    }
}
