//! The worker against a real Kafka-protocol broker (tansu 0.6.0, memory
//! storage, loopback, one per test; killed with SIGKILL and restarted
//! empty on the same port for outages): records in queue order with
//! their keys and `wsedge-id`, a channel in one partition, topics created
//! when missing and existing ones left alone, a kill mid-stream replayed
//! from the spill, dead letters, acked emits while the broker is down.
//! Consumers use `assign()` (a group's first join takes ~23 s here).
//! Without a tansu binary these tests say so loudly and return (CI always
//! has one: `scripts/test-all.sh`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::kafka::{DLQ_PAYLOAD_BYTES, DLQ_REASON, DLQ_TOPIC, ID_HEADER};
use super::tests::{TempDir, eventually};
use super::*;

#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../../../../tests/common/kafka_broker.rs"]
mod kafka_broker;
use kafka_broker::KafkaBroker;

/// Longest wait for anything that should happen.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The test topic and its partitions.
const TOPIC: &str = "evt";
const PARTITIONS: i32 = 3;

/// The channels records are spread over (the key).
const CHANNELS: usize = 5;

/// A broker, or `None` (with a loud note) when there is no binary.
fn broker() -> Option<KafkaBroker> {
    KafkaBroker::available().then(KafkaBroker::start)
}

fn id(i: usize) -> String {
    format!("room{}:1f:{i}", i % CHANNELS)
}

/// Record `i`: its channel `room<i % 5>` as the key, `pad` bytes of
/// payload after its number.
fn rec_padded(i: usize, pad: usize) -> DurableRecord {
    let mut payload = format!("event {i} ").into_bytes();
    payload.resize(payload.len() + pad, b'x');
    DurableRecord::new(TOPIC, id(i), Bytes::from(payload)).with_key(format!("room{}", i % CHANNELS))
}

fn rec(i: usize) -> DurableRecord {
    rec_padded(i, 0)
}

/// Record `i`'s index back from its id.
fn index(id: &str) -> usize {
    id.rsplit(':').next().unwrap().parse().unwrap()
}

/// A worker on `broker`, creating [`TOPIC`], spilling in `dir`, with test
/// timings.
fn worker(
    bootstrap: &str,
    dir: &std::path::Path,
    edit: impl FnOnce(&mut DurableOptions),
) -> (DurableClient, WorkerThread) {
    let mut opts = DurableOptions::kafka(bootstrap, dir);
    opts.retry_max = Duration::from_millis(300);
    opts.ack_timeout = Duration::from_secs(1);
    let SinkOptions::Kafka(sink) = &mut opts.sink else {
        unreachable!()
    };
    sink.topics = vec![TopicSpec::new(TOPIC, PARTITIONS, 1)];
    edit(&mut opts);
    start(opts, default_connect_options).expect("start the worker")
}

fn wait_up(client: &DurableClient) {
    eventually("the worker connected", || client.metrics().snapshot().up);
}

/// Emits `r`, waiting while the worker is overloaded.
fn emit(client: &DurableClient, r: DurableRecord) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match client.emit(r.clone()) {
            Ok(()) => return,
            Err(Refused::Overloaded) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("record {} refused: {e}", r.msg_id),
        }
    }
}

/// The answer to an acked emit.
fn wait_answer(rx: oneshot::Receiver<Result<(), DurableError>>) -> Result<(), DurableError> {
    let deadline = Instant::now() + TIMEOUT;
    let mut rx = rx;
    loop {
        match rx.try_recv() {
            Ok(answer) => return answer,
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("no answer: {e:?}"),
        }
    }
}

/// One record as a consumer saw it.
#[derive(Debug, Clone)]
struct Got {
    partition: i32,
    key: String,
    id: String,
    payload: Bytes,
    headers: HashMap<String, String>,
}

/// A consumer of `topic`'s `partitions` from their beginning
/// (`assign()`, no group).
fn consumer(bootstrap: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // librdkafka's consumer wants a group even to `assign()`; it never
        // joins it (no `subscribe`) nor commits.
        .set("group.id", "wsedge-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
    c
}

/// The next record `c` has, within `wait`.
fn poll(c: &BaseConsumer, wait: Duration) -> Option<Got> {
    let m = match c.poll(wait)? {
        Ok(m) => m,
        Err(e) => {
            eprintln!("consumer: {e}");
            return None;
        }
    };
    let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
    let headers: HashMap<String, String> = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), text(h.value)))
                .collect()
        })
        .unwrap_or_default();
    Some(Got {
        partition: m.partition(),
        key: text(m.key()),
        id: headers.get(ID_HEADER).cloned().unwrap_or_default(),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
    })
}

/// Reads until `n` records came, then a little more (to see any extra).
fn read(c: &BaseConsumer, n: usize) -> Vec<Got> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records arrived",
            out.len()
        );
        out.extend(poll(c, Duration::from_millis(100)));
    }
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        out.extend(poll(c, Duration::from_millis(100)));
    }
    out
}

/// Checks `got` is exactly the records `want` (indexes), each once, a
/// channel's in one partition and in queue order, with their keys and
/// ids.
fn assert_exactly(got: &[Got], want: impl IntoIterator<Item = usize>) {
    let want: Vec<usize> = want.into_iter().collect();
    let mut seen = HashSet::new();
    for g in got {
        assert!(seen.insert(g.id.clone()), "{} arrived twice", g.id);
    }
    let got_set: HashSet<usize> = got.iter().map(|g| index(&g.id)).collect();
    let want_set: HashSet<usize> = want.iter().copied().collect();
    let missing: Vec<usize> = want_set.difference(&got_set).copied().collect();
    let extra: Vec<usize> = got_set.difference(&want_set).copied().collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {} (first {:?}), extra {} (first {:?})",
        missing.len(),
        missing.iter().min(),
        extra.len(),
        extra.iter().min()
    );
    assert_channels_in_order(got);
}

/// A channel's records are in one partition, in queue order, with the
/// channel as their key and the right payload.
fn assert_channels_in_order(got: &[Got]) {
    let mut by_key: BTreeMap<&str, (i32, usize)> = BTreeMap::new();
    for g in got {
        let i = index(&g.id);
        assert_eq!(g.key, format!("room{}", i % CHANNELS), "{}", g.id);
        assert!(g.payload.starts_with(format!("event {i} ").as_bytes()));
        match by_key.get_mut(g.key.as_str()) {
            None => {
                by_key.insert(&g.key, (g.partition, i));
            }
            Some((partition, last)) => {
                assert_eq!(*partition, g.partition, "{} left its partition", g.key);
                assert!(i > *last, "{} after {} in {}", i, last, g.key);
                *last = i;
            }
        }
    }
}

#[test]
fn records_arrive_in_queue_order_with_keys_ids_and_one_partition_per_channel() {
    let Some(broker) = broker() else {
        return;
    };
    let dir = TempDir::new("kafka-up");
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), |_| {});
    // Connected first: the records go straight to the broker.
    wait_up(&client);
    for i in 0..5_000 {
        emit(&client, rec(i));
    }
    // A record without a key goes too (any partition).
    emit(
        &client,
        DurableRecord::new(TOPIC, "no-key:0:0", Bytes::from_static(b"keyless")),
    );
    eventually("every record sent", || {
        let m = client.metrics().snapshot();
        m.sent >= 5_001 && m.queued == 0
    });
    let c = consumer(&broker.bootstrap(), TOPIC, PARTITIONS);
    let mut got = read(&c, 5_001);
    let keyless = got.iter().position(|g| g.id == "no-key:0:0").unwrap();
    let keyless = got.remove(keyless);
    assert_eq!(
        (keyless.key.as_str(), &keyless.payload[..]),
        ("", &b"keyless"[..])
    );
    assert_exactly(&got, 0..5_000);
    // The five channels spread over more than one partition.
    let partitions: HashSet<i32> = got.iter().map(|g| g.partition).collect();
    assert!(partitions.len() > 1, "{partitions:?}");
    let m = client.metrics().snapshot();
    assert_eq!(
        (m.dead_lettered, m.lost, m.spilled, m.queued),
        (0, 0, 0, 0),
        "{m:?}"
    );
    assert!(m.up);
    thread.shutdown();
}

#[test]
fn missing_topics_are_created_and_existing_ones_left_alone() {
    let Some(broker) = broker() else {
        return;
    };
    // `evt` exists with 2 partitions (the operator's); the worker lists it
    // with 3, and `audit` (missing) with 4.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let created = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(TOPIC, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
    let dir = TempDir::new("kafka-topics");
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), |o| {
        let SinkOptions::Kafka(sink) = &mut o.sink else {
            unreachable!()
        };
        sink.topics = vec![
            TopicSpec::new(TOPIC, PARTITIONS, 1),
            TopicSpec::new("audit", 4, 1),
        ];
    });
    wait_up(&client);
    let partitions = |topic: &str| {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let t = &md.topics()[0];
        assert!(t.error().is_none(), "{topic}: {:?}", t.error());
        t.partitions().len()
    };
    assert_eq!(partitions(TOPIC), 2);
    assert_eq!(partitions("audit"), 4);
    // The dead-letter topic too: one partition.
    assert_eq!(partitions(DEFAULT_DEAD_LETTER), 1);
    emit(&client, rec(0));
    emit(
        &client,
        DurableRecord::new("audit", "a-1", Bytes::from_static(b"event 1 ")).with_key("room1"),
    );
    eventually("both sent", || client.metrics().snapshot().sent == 2);
    thread.shutdown();
}

#[test]
fn a_broker_killed_mid_stream_leaves_records_in_the_spill_replayed_in_order() {
    let Some(mut broker) = broker() else {
        return;
    };
    let dir = TempDir::new("kafka-outage");
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), |_| {});
    wait_up(&client);
    // A consumer reads all along, until the kill: the broker keeps records
    // in memory only, so what it has not read by then is gone.
    let before: Arc<Mutex<Vec<Got>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (before, stop, bootstrap) = (before.clone(), stop.clone(), broker.bootstrap());
        std::thread::spawn(move || {
            let c = consumer(&bootstrap, TOPIC, PARTITIONS);
            while !stop.load(Ordering::Acquire) {
                if let Some(g) = poll(&c, Duration::from_millis(20)) {
                    before.lock().unwrap().push(g);
                }
            }
        })
    };
    // Records go out steadily (about 4,000 a second) from another thread
    // the whole time: the broker dies with batches in flight and comes
    // back while records keep coming.
    const TOTAL: usize = 16_000;
    let emitter = {
        let client = client.clone();
        std::thread::spawn(move || {
            for i in 0..TOTAL {
                emit(&client, rec(i));
                if i % 20 == 19 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    eventually("the consumer reading", || {
        before.lock().unwrap().len() > 2_000
    });
    broker.kill();
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    eventually("records in the spill, the producer down", || {
        let m = client.metrics().snapshot();
        m.in_spill_records > 0 && m.spill_bytes > 0 && !m.up
    });
    // What the old broker acknowledged: a prefix of the queue.
    let acked = client.metrics().snapshot().sent as usize;
    broker.restart();
    emitter.join().unwrap();
    eventually("the spill drained", || {
        let m = client.metrics().snapshot();
        m.queued == 0 && m.in_spill_records == 0 && m.up
    });
    // The restarted broker (empty) holds every record the old one had
    // not acknowledged, each once, a channel's in order.
    let c = consumer(&broker.bootstrap(), TOPIC, PARTITIONS);
    let after = read(&c, TOTAL - acked);
    let before = before.lock().unwrap().clone();
    eprintln!(
        "kafka outage: {} read before the kill, {acked} acknowledged by the old broker, {} after",
        before.len(),
        after.len()
    );
    assert_exactly(&after, acked..TOTAL);
    // Before the kill: each once, in order; only acknowledged records,
    // or records of the batch in flight delivered behind one that failed
    // (sent again after it, so seen twice across the kill: consumers
    // deduplicate those by `wsedge-id`).
    let mut seen = HashSet::new();
    for g in &before {
        assert!(seen.insert(g.id.clone()), "{} read twice", g.id);
    }
    assert_channels_in_order(&before);
    let resent = before.iter().filter(|g| index(&g.id) >= acked).count();
    eprintln!("kafka outage: {resent} records delivered before the kill and sent again after");
    let m = client.metrics().snapshot();
    // (`retries` may stay 0: a loss noticed between batches is not a
    // failed attempt, and the first reconnect may already succeed.)
    assert!(m.spilled > 0, "{m:?}");
    assert!(acked < TOTAL, "the kill came after the last record: {m:?}");
    assert_eq!((m.lost, m.dead_lettered), (0, 0), "{m:?}");
    thread.shutdown();
}

/// Emits records from `from` until `n` are accepted or the worker stops;
/// returns the index after the last accepted one.
fn flood(client: &DurableClient, from: usize, n: usize) -> usize {
    let mut i = from;
    while i < from + n {
        match client.emit(rec_padded(i, 200)) {
            Ok(()) => i += 1,
            Err(Refused::Overloaded) => std::thread::yield_now(),
            Err(Refused::Stopped) => break,
            Err(e) => panic!("record {i} refused: {e}"),
        }
    }
    i
}

#[test]
fn a_batch_in_flight_when_the_spill_takes_over_or_the_worker_stops_is_stored_once() {
    let Some(broker) = broker() else {
        return;
    };
    let dir = TempDir::new("kafka-takeover");
    // A small queue flooded from here: it is half full while a batch is in
    // flight again and again, so the spill takes over mid-batch.
    let small_queue = |o: &mut DurableOptions| o.queue_capacity = 64;
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), small_queue);
    wait_up(&client);
    let first = flood(&client, 0, 20_000);
    assert_eq!(first, 20_000);
    let m = client.metrics().snapshot();
    assert!(
        m.spilled > 0,
        "the spill never took over from a batch in flight: {m:?}"
    );
    // Stopped while records still flow: what is in flight then is awaited,
    // the rest stays in the spill for the next start.
    let stopper = {
        let client = client.clone();
        std::thread::spawn(move || flood(&client, first, 1_000_000))
    };
    std::thread::sleep(Duration::from_millis(200));
    thread.shutdown();
    let total = stopper.join().unwrap();
    let m = client.metrics().snapshot();
    eprintln!("kafka takeover: {total} accepted; at the stop {m:?}");
    assert_eq!(m.lost, 0, "{m:?}");
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), small_queue);
    eventually("the spill drained", || {
        let m = client.metrics().snapshot();
        m.up && m.queued == 0 && m.in_spill_records == 0
    });
    let c = consumer(&broker.bootstrap(), TOPIC, PARTITIONS);
    assert_exactly(&read(&c, total), 0..total);
    thread.shutdown();
}

#[test]
fn records_kafka_refuses_for_good_are_dead_lettered_with_their_reason() {
    let Some(broker) = broker() else {
        return;
    };
    let dir = TempDir::new("kafka-dlq");
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), |o| {
        let SinkOptions::Kafka(sink) = &mut o.sink else {
            unreachable!()
        };
        sink.max_message_bytes = 4_096;
    });
    wait_up(&client);
    emit(&client, rec(0));
    // Over `message.max.bytes`: librdkafka refuses it.
    let (tx, rejected) = oneshot::channel();
    client.emit_acked(rec_padded(1, 5_000), tx).unwrap();
    emit(&client, rec(2));
    // Not a topic name Kafka takes.
    let mut bad = rec(3);
    bad.subject = "evt/3".into();
    emit(&client, bad.clone());
    emit(&client, rec(4));
    let answer = wait_answer(rejected);
    assert!(
        matches!(&answer, Err(DurableError::DeadLettered(r)) if r.contains("too large")),
        "{answer:?}"
    );
    let c = consumer(&broker.bootstrap(), TOPIC, PARTITIONS);
    assert_exactly(&read(&c, 3), [0, 2, 4]);
    let dlq = consumer(&broker.bootstrap(), DEFAULT_DEAD_LETTER, 1);
    let letters = read(&dlq, 2);
    assert_eq!(letters.len(), 2, "{letters:?}");
    let (first, second) = (&letters[0], &letters[1]);
    assert_eq!(first.id, id(1));
    assert_eq!(first.key, "room1");
    assert_eq!(first.headers[DLQ_TOPIC], TOPIC);
    assert!(first.headers[DLQ_REASON].contains("too large"), "{first:?}");
    assert!(first.payload.is_empty());
    assert_eq!(
        first.headers[DLQ_PAYLOAD_BYTES],
        rec_padded(1, 5_000).payload.len().to_string()
    );
    assert_eq!(second.id, id(3));
    assert_eq!(second.headers[DLQ_TOPIC], "evt/3");
    assert!(
        second.headers[DLQ_REASON].contains("invalid topic"),
        "{second:?}"
    );
    assert_eq!(second.payload, bad.payload);
    assert!(!second.headers.contains_key(DLQ_PAYLOAD_BYTES));
    let m = client.metrics().snapshot();
    assert_eq!((m.dead_lettered, m.lost), (2, 0), "{m:?}");
    thread.shutdown();
}

#[test]
fn emit_acked_while_the_broker_is_down_answers_once_the_spill_has_it() {
    let Some(mut broker) = broker() else {
        return;
    };
    let dir = TempDir::new("kafka-acked");
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), |o| {
        // Only the explicit sync a waiter asks for puts it on disk.
        o.spill.fsync = crate::sidecar::durable::spill::FsyncPolicy::Never;
    });
    wait_up(&client);
    let (tx, rx) = oneshot::channel();
    client.emit_acked(rec(0), tx).unwrap();
    assert_eq!(wait_answer(rx), Ok(()));
    broker.kill();
    let (tx, rx) = oneshot::channel();
    client.emit_acked(rec(1), tx).unwrap();
    assert_eq!(wait_answer(rx), Ok(()));
    let m = client.metrics().snapshot();
    assert!(m.spilled >= 1, "{m:?}");
    broker.restart();
    eventually("the spill drained", || {
        let m = client.metrics().snapshot();
        m.in_spill_records == 0 && m.up
    });
    // The restarted broker is empty: it has record 1 only.
    let c = consumer(&broker.bootstrap(), TOPIC, PARTITIONS);
    assert_exactly(&read(&c, 1), [1]);
    thread.shutdown();
}

#[test]
fn a_new_worker_sends_what_the_stopped_one_left_in_the_spill() {
    let Some(mut broker) = broker() else {
        return;
    };
    broker.kill();
    let dir = TempDir::new("kafka-restart");
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), |_| {});
    for i in 0..1_000 {
        emit(&client, rec(i));
    }
    eventually("records in the spill", || {
        let m = client.metrics().snapshot();
        m.queued == 0 && m.in_spill_records == 1_000
    });
    thread.shutdown();
    broker.restart();
    let (client, thread) = worker(&broker.bootstrap(), dir.path(), |_| {});
    eventually("the spill drained", || {
        client.metrics().snapshot().in_spill_records == 0
    });
    let c = consumer(&broker.bootstrap(), TOPIC, PARTITIONS);
    assert_exactly(&read(&c, 1_000), 0..1_000);
    thread.shutdown();
}
