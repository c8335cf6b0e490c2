//! The inbound consumer against a real Kafka-protocol broker (tansu,
//! memory storage): records reach the node with their fields; offsets
//! are committed only up to the last contiguous answered record; `Err`
//! goes to the dead-letter topic and the partition moves on; a dropped
//! ack hands the record over again; the lag; a new consumer of the group
//! resumes from the committed offset. A consumer group's first join
//! takes about 23 s on this tansu build: long timeouts. Skipped loudly
//! without a tansu binary.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::*;

#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../../../../tests/common/kafka_broker.rs"]
mod kafka_broker;
use kafka_broker::KafkaBroker;

/// Longest wait for records, a group join included.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest wait for anything else.
const TIMEOUT: Duration = Duration::from_secs(30);

fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker with `topic` (`partitions`), and a runtime for the test's
/// own clients.
struct Setup {
    broker: KafkaBroker,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    fn start(topic: &str, partitions: i32) -> Option<Setup> {
        if !KafkaBroker::available() {
            return None;
        }
        let s = Setup {
            broker: KafkaBroker::start(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", s.broker.bootstrap())
            .create()
            .unwrap();
        let created =
            s.rt.block_on(admin.create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            ))
            .unwrap();
        assert!(created[0].is_ok(), "{created:?}");
        Some(s)
    }

    /// Produces record `i` (key `k<i>`, header `h: v<i>`, payload `n<i>`)
    /// to `partition` of `topic`.
    fn produce(&self, topic: &str, partition: i32, range: std::ops::Range<usize>) {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .create()
            .unwrap();
        self.rt.block_on(async {
            for i in range {
                let (key, value, payload) = (format!("k{i}"), format!("v{i}"), format!("n{i}"));
                let headers = OwnedHeaders::new().insert(Header {
                    key: "h",
                    value: Some(&value),
                });
                let r = FutureRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers);
                p.send(r, Duration::from_secs(10)).await.expect("produced");
            }
        });
    }

    /// The group's committed offset of `topic`/`partition` (`None`: none).
    fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("group.id", group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
        match got.find_partition(topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }
}

/// The options for `topics` on `setup`'s broker, with test timings.
fn options(setup: &Setup, group: &str, topics: &[&str]) -> InboundOptions {
    let mut o = InboundOptions::new(setup.broker.bootstrap(), topics.iter().copied());
    o.group_id = group.into();
    o.commit_interval = Duration::from_millis(200);
    o.retry_max = Duration::from_millis(200);
    o
}

/// The next `n` records the node gets.
fn take(
    rt: &tokio::runtime::Runtime,
    queue: &mut InboundQueue,
    n: usize,
    timeout: Duration,
) -> Vec<(InboundRecord, InboundAck)> {
    rt.block_on(async {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(timeout, queue.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} records in time", out.len()))
                .expect("the consumer is running");
            out.push(next);
        }
        out
    })
}

#[test]
fn records_reach_the_node_and_commits_follow_the_contiguous_answers() {
    let Some(s) = Setup::start("notify", 2) else {
        return;
    };
    s.produce("notify", 0, 0..10);
    s.produce("notify", 1, 10..11);
    let group = "g-contiguous";
    let (mut queue, metrics, thread) = start(options(&s, group, &["notify"])).unwrap();
    let joined = Instant::now();
    let mut got = take(&s.rt, &mut queue, 11, JOIN_TIMEOUT);
    eprintln!(
        "inbound: first records after {:?} (group join)",
        joined.elapsed()
    );
    got.sort_by_key(|(r, _)| (r.partition, r.offset));
    let (r, _) = &got[0];
    assert_eq!((r.topic.as_str(), r.partition, r.offset), ("notify", 0, 0));
    assert_eq!(r.key.as_deref(), Some(&b"k0"[..]));
    assert_eq!(
        r.headers,
        [("h".to_owned(), Some(Bytes::from_static(b"v0")))]
    );
    assert_eq!(r.payload, "n0");
    let mut acks: HashMap<(i32, i64), InboundAck> = got
        .into_iter()
        .map(|(r, ack)| ((r.partition, r.offset), ack))
        .collect();
    // Partition 0: 0-2 and 5-9 answered, 7 refused for good, 3 and 4
    // still at the home.
    for o in [0, 1, 2, 5, 6, 8, 9] {
        acks.remove(&(0, o)).unwrap().send(Ok(())).unwrap();
    }
    acks.remove(&(0, 7))
        .unwrap()
        .send(Err("not a notification".into()))
        .unwrap();
    // Partition 1: dropped unanswered: it comes again.
    drop(acks.remove(&(1, 0)));
    let (again, ack) = take(&s.rt, &mut queue, 1, TIMEOUT).pop().unwrap();
    assert_eq!(
        (again.partition, again.offset, &again.payload[..]),
        (1, 0, &b"n10"[..])
    );
    ack.send(Ok(())).unwrap();
    eventually("partition 0 committed up to 3", || {
        s.committed(group, "notify", 0) == Some(3)
    });
    eventually("partition 1 committed", || {
        s.committed(group, "notify", 1) == Some(1)
    });
    eventually("the lag at 7", || metrics.snapshot().lag == 7);
    acks.remove(&(0, 4)).unwrap().send(Ok(())).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // 4 answered, 3 not: nothing moves.
    assert_eq!(s.committed(group, "notify", 0), Some(3));
    acks.remove(&(0, 3)).unwrap().send(Ok(())).unwrap();
    eventually("partition 0 committed to its end", || {
        s.committed(group, "notify", 0) == Some(10)
    });
    eventually("no lag", || metrics.snapshot().lag == 0);
    let m = metrics.snapshot();
    assert_eq!(
        (
            m.received,
            m.acknowledged,
            m.dead_lettered,
            m.redelivered,
            m.in_flight
        ),
        (11, 10, 1, 1, 0),
        "{m:?}"
    );
    assert_eq!(m.assigned_partitions, 2, "{m:?}");
    assert!(m.commits > 0 && m.rebalances > 0, "{m:?}");
    // The refused record, on the dead-letter topic.
    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", s.broker.bootstrap())
        .set("group.id", "g-dlq-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(DEFAULT_INBOUND_DLQ, 0, Offset::Beginning)
        .unwrap();
    dlq.assign(&tpl).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let letter = loop {
        assert!(Instant::now() < deadline, "no dead letter");
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(100)) {
            break m.detach();
        }
    };
    let headers: HashMap<String, String> = letter
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(headers[DLQ_REASON], "not a notification");
    assert_eq!(headers[DLQ_TOPIC], "notify");
    assert_eq!(headers[DLQ_PARTITION], "0");
    assert_eq!(headers[DLQ_OFFSET], "7");
    assert_eq!(headers["h"], "v7");
    assert_eq!(letter.key(), Some(&b"k7"[..]));
    assert_eq!(letter.payload(), Some(&b"n7"[..]));
    thread.shutdown();
}

#[test]
fn a_new_consumer_of_the_group_resumes_from_the_committed_offset() {
    let Some(s) = Setup::start("resume", 1) else {
        return;
    };
    s.produce("resume", 0, 0..5);
    let group = "g-resume";
    let (mut queue, _metrics, thread) = start(options(&s, group, &["resume"])).unwrap();
    let got = take(&s.rt, &mut queue, 5, JOIN_TIMEOUT);
    let mut held = Vec::new();
    for (r, ack) in got {
        match r.offset {
            2 => held.push(ack),
            _ => ack.send(Ok(())).unwrap(),
        }
    }
    eventually("committed up to 2", || {
        s.committed(group, "resume", 0) == Some(2)
    });
    // Stopped with record 2 unanswered: it, and what followed, come again.
    thread.shutdown();
    drop(held);
    let (mut queue, metrics, thread) = start(options(&s, group, &["resume"])).unwrap();
    let joined = Instant::now();
    let got = take(&s.rt, &mut queue, 3, JOIN_TIMEOUT);
    eprintln!(
        "inbound: records again after {:?} (group rejoin)",
        joined.elapsed()
    );
    let offsets: Vec<i64> = got.iter().map(|(r, _)| r.offset).collect();
    assert_eq!(offsets, [2, 3, 4]);
    for (_, ack) in got {
        ack.send(Ok(())).unwrap();
    }
    eventually("committed to the end", || {
        s.committed(group, "resume", 0) == Some(5)
    });
    eventually("no lag", || metrics.snapshot().lag == 0);
    thread.shutdown();
}

#[test]
fn options_are_checked() {
    let mut o = InboundOptions::new("127.0.0.1:9092", ["notify"]);
    assert_eq!(o.validate(), Ok(()));
    assert_eq!(o.group_id, DEFAULT_GROUP);
    o.config.push(("enable.auto.commit".into(), "true".into()));
    assert!(o.validate().unwrap_err().contains("enable.auto.commit"));
    o.config.clear();
    o.topics.push(DEFAULT_INBOUND_DLQ.into());
    assert!(o.validate().unwrap_err().contains("dead_letter"));
    o.topics = vec!["bad topic".into()];
    assert!(o.validate().unwrap_err().contains("bad topic"));
    o.topics.clear();
    assert!(o.validate().unwrap_err().contains("topics"));
}

#[test]
fn the_tracker_commits_only_contiguous_answers_of_the_current_assignment() {
    let mut t = Tracker::default();
    let key: Key = (Arc::from("t"), 0);
    t.assign(key.clone());
    let generation = (0..5).map(|o| t.handed(&key, o + 10)).last().unwrap();
    assert!(t.done(&key, generation, 11));
    assert_eq!(t.due(), []);
    assert!(t.done(&key, generation, 10));
    assert_eq!(t.due(), [(key.clone(), 12)]);
    t.committed(&key, 12);
    assert_eq!(t.due(), []);
    assert_eq!(t.in_flight(), 3);
    // Revoked and assigned again: answers of the old assignment are stale.
    assert_eq!(t.revoke(&key), None);
    t.assign(key.clone());
    assert!(!t.done(&key, generation, 12));
    assert!(!t.current(&key, generation));
    assert_eq!(t.in_flight(), 0);
}
