//! The worker against a real `nats-server` (JetStream on, loopback, one
//! per test; stopped with SIGKILL and restarted on the same port and
//! store for outages): every record once and in order with the broker up,
//! through an outage, across a worker restart, with a full spill; acked
//! emits; dead letters. Without a `nats-server` binary those tests say so
//! loudly and return (CI always has one: `scripts/test-all.sh`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::jetstream::{
    self as nats_transport, DLQ_MSG_ID, DLQ_PAYLOAD_BYTES, DLQ_REASON, DLQ_SUBJECT,
};
use super::*;
use crate::sidecar::cluster::parse_servers;
use crate::sidecar::durable::spill::{FsyncPolicy, Seq, Spill, SpillOptions};

#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../../../../tests/common/nats_server.rs"]
mod nats_server;
use nats_server::NatsServer;

/// Longest wait for anything that should happen.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The test stream and its subjects.
const STREAM: &str = "EVT";
const SUBJECTS: &str = "evt.>";

/// Whether there is a `nats-server` to test against.
fn have_nats() -> bool {
    NatsServer::available()
}

/// A fresh directory, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "wsedge-durable-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A NATS server with the test stream, and a runtime for looking at it.
struct Broker {
    nats: NatsServer,
    rt: tokio::runtime::Runtime,
}

impl Broker {
    /// A server with stream `EVT` over `evt.>` (file storage, so it
    /// survives a restart; duplicate window 2 min), or `None` (with a
    /// loud note) if there is no binary.
    fn start() -> Option<Broker> {
        Broker::start_with(&[], -1)
    }

    fn start_with(args: &[&str], max_message_size: i32) -> Option<Broker> {
        if !have_nats() {
            return None;
        }
        let broker = Broker {
            nats: NatsServer::start_with(args),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        broker.block_on(async {
            let js = broker.js().await;
            js.create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![SUBJECTS.into()],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                max_message_size,
                ..Default::default()
            })
            .await
            .unwrap();
        });
        Some(broker)
    }

    fn url(&self) -> String {
        self.nats.url()
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.url()).await.unwrap())
    }

    /// Messages in the stream now.
    fn count(&self) -> u64 {
        self.block_on(async {
            let mut s = self.js().await.get_stream(STREAM).await.unwrap();
            s.info().await.unwrap().state.messages
        })
    }

    /// Every message of the stream, in stream order: (msg id, payload).
    fn read_all(&self) -> Vec<(String, Bytes)> {
        let total = self.count() as usize;
        self.block_on(async {
            let s = self.js().await.get_stream(STREAM).await.unwrap();
            let consumer = s
                .create_consumer(consumer::pull::OrderedConfig::default())
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let mut out = Vec::with_capacity(total);
            while out.len() < total {
                let m = tokio::time::timeout(TIMEOUT, messages.next())
                    .await
                    .expect("the stream's messages in time")
                    .expect("more messages")
                    .expect("a message");
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                out.push((id, m.payload.clone()));
            }
            out
        })
    }
}

fn id(i: usize) -> String {
    format!("room{}:1f:{i}", i % 3)
}

/// Record `i`: its own id, spread over three subjects, `pad` bytes of
/// payload after its number.
fn rec_padded(i: usize, pad: usize) -> DurableRecord {
    let mut payload = format!("event {i} ").into_bytes();
    payload.resize(payload.len() + pad, b'x');
    DurableRecord::new(format!("evt.room{}", i % 3), id(i), Bytes::from(payload))
}

fn rec(i: usize) -> DurableRecord {
    rec_padded(i, 0)
}

/// A worker on `url`, spilling in `dir`, with test timings.
fn worker(
    url: &str,
    dir: &Path,
    edit: impl FnOnce(&mut DurableOptions),
) -> (DurableClient, WorkerThread) {
    let mut opts = DurableOptions::new(url, dir);
    opts.retry_max = Duration::from_millis(300);
    opts.ack_timeout = Duration::from_secs(1);
    edit(&mut opts);
    start(opts, default_connect_options).expect("start the worker")
}

/// Waits until the worker is connected (records go straight to the
/// broker from then on, as long as it answers).
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

/// Polls `f` until it holds.
pub(super) fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the worker holds nothing (memory, spill) and the stream
/// has `ids.len()` messages, then checks they are exactly `ids`, in
/// order, each once.
fn assert_stream_holds(broker: &Broker, client: &DurableClient, ids: &[String]) {
    eventually("the worker to drain", || {
        let m = client.metrics().snapshot();
        m.queued == 0 && m.in_spill_records == 0
    });
    eventually(&format!("{} messages in the stream", ids.len()), || {
        let n = broker.count();
        assert!(n <= ids.len() as u64, "{n} messages: duplicates stored");
        n == ids.len() as u64
    });
    let got: Vec<String> = broker.read_all().into_iter().map(|(id, _)| id).collect();
    if got != ids {
        let first = got.iter().zip(ids).position(|(a, b)| a != b);
        panic!(
            "stream order differs at {first:?} (got {} ids, want {})",
            got.len(),
            ids.len()
        );
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(id).collect()
}

#[test]
fn with_the_broker_up_every_record_arrives_once_in_order() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let dir = TempDir::new("up");
    let (client, thread) = worker(&broker.url(), dir.path(), |_| {});
    for i in 0..10_000 {
        emit(&client, rec(i));
    }
    assert_stream_holds(&broker, &client, &ids(0..10_000));
    let payloads = broker.read_all();
    assert_eq!(payloads[9_999].1, rec(9_999).payload);
    let m = client.metrics().snapshot();
    assert!(m.sent >= 10_000, "{m:?}");
    assert_eq!((m.dead_lettered, m.lost, m.queued), (0, 0, 0), "{m:?}");
    assert!(m.up);
    thread.shutdown();
}

#[test]
fn through_an_outage_records_spill_and_arrive_once_in_order() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let dir = TempDir::new("outage");
    let (client, thread) = worker(&broker.url(), dir.path(), |_| {});
    wait_up(&client);
    // Killed with records in flight, most likely.
    for i in 0..5_000 {
        emit(&client, rec(i));
    }
    broker.nats.stop();
    for i in 5_000..20_000 {
        emit(&client, rec(i));
    }
    eventually("records in the spill", || {
        let m = client.metrics().snapshot();
        m.in_spill_records > 0 && m.spill_bytes > 0 && m.queued == 0
    });
    let m = client.metrics().snapshot();
    assert!(!m.up, "{m:?}");
    assert!(m.oldest_unsent_age_ms < 3_600_000, "{m:?}");
    broker.nats.restart();
    assert_stream_holds(&broker, &client, &ids(0..20_000));
    let m = client.metrics().snapshot();
    assert!(m.spilled >= 15_000 && m.retries > 0, "{m:?}");
    assert_eq!((m.lost, m.dead_lettered), (0, 0), "{m:?}");
    thread.shutdown();
}

#[test]
fn a_new_worker_sends_what_the_stopped_one_left_in_the_spill() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let dir = TempDir::new("restart");
    let (client, thread) = worker(&broker.url(), dir.path(), |_| {});
    for i in 0..1_000 {
        emit(&client, rec(i));
    }
    eventually("the first records sent", || {
        client.metrics().snapshot().sent >= 1_000
    });
    broker.nats.stop();
    for i in 1_000..3_000 {
        emit(&client, rec(i));
    }
    eventually("records in the spill", || {
        let m = client.metrics().snapshot();
        m.queued == 0 && m.in_spill_records >= 2_000
    });
    thread.shutdown();
    assert_eq!(client.emit(rec(3_000)), Err(Refused::Stopped));
    broker.nats.restart();
    let (client, thread) = worker(&broker.url(), dir.path(), |_| {});
    assert_stream_holds(&broker, &client, &ids(0..3_000));
    thread.shutdown();
}

/// The answer to an acked emit.
fn wait_answer(
    broker: &Broker,
    rx: oneshot::Receiver<Result<(), DurableError>>,
) -> Result<(), DurableError> {
    broker
        .block_on(async { tokio::time::timeout(TIMEOUT, rx).await })
        .expect("an answer in time")
        .expect("answered")
}

#[test]
fn emit_acked_answers_after_the_broker_or_else_the_spill_has_it() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let dir = TempDir::new("acked");
    let (client, thread) = worker(&broker.url(), dir.path(), |o| {
        // Only the explicit sync a waiter asks for puts it on disk.
        o.spill.fsync = FsyncPolicy::Never;
    });
    wait_up(&client);
    let (tx, rx) = oneshot::channel();
    client.emit_acked(rec(0), tx).unwrap();
    assert_eq!(wait_answer(&broker, rx), Ok(()));
    // Answered: the stream has it already.
    assert_eq!(broker.count(), 1);
    broker.nats.stop();
    let (tx, rx) = oneshot::channel();
    client.emit_acked(rec(1), tx).unwrap();
    assert_eq!(wait_answer(&broker, rx), Ok(()));
    // Answered while the broker is down: it is in the (synced) spill.
    let m = client.metrics().snapshot();
    assert!(m.spilled >= 1, "{m:?}");
    broker.nats.restart();
    assert_stream_holds(&broker, &client, &ids(0..2));
    thread.shutdown();
}

#[test]
fn a_full_spill_refuses_and_loses_nothing_accepted() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.nats.stop();
    let dir = TempDir::new("full");
    let (client, thread) = worker(&broker.url(), dir.path(), |o| {
        o.spill.max_bytes = 64 << 10;
        o.spill.segment_bytes = 16 << 10;
        o.spill.max_record = 4 << 10;
        o.queue_capacity = 64;
        o.batch_max = 32;
    });
    // Accepted records get consecutive ids; refusals are retried until
    // the refusal flag shows the spill full.
    let mut accepted = 0;
    let deadline = Instant::now() + TIMEOUT;
    while !client.is_full() {
        assert!(Instant::now() < deadline, "the spill never filled");
        match client.emit(rec_padded(accepted, 200)) {
            Ok(()) => accepted += 1,
            Err(Refused::Overloaded) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        client.emit(rec_padded(accepted, 200)),
        Err(Refused::Overloaded)
    );
    let m = client.metrics().snapshot();
    assert!(m.refused >= 1 && m.spill_bytes > 32 << 10, "{m:?}");
    // 64 KiB of ~250-byte records, and what waits in memory.
    assert!(accepted > 200, "{accepted}");
    broker.nats.restart();
    assert_stream_holds(&broker, &client, &ids(0..accepted));
    eventually("room again", || !client.is_full());
    client.emit(rec(accepted)).unwrap();
    assert_stream_holds(&broker, &client, &ids(0..accepted + 1));
    assert_eq!(client.metrics().snapshot().lost, 0);
    thread.shutdown();
}

#[test]
fn records_the_sink_refuses_for_good_are_dead_lettered() {
    if !have_nats() {
        return;
    }
    // A server taking messages up to 4 KiB, a stream up to 1 KiB.
    let conf = TempDir::new("conf");
    let conf_file = conf.path().join("nats.conf");
    std::fs::write(&conf_file, "max_payload: 4096\n").unwrap();
    let Some(broker) = Broker::start_with(&["-c", conf_file.to_str().unwrap()], 1024) else {
        return;
    };
    let dlq = broker.block_on(async {
        let c = async_nats::connect(broker.url()).await.unwrap();
        let sub = c.subscribe("wsedge.durable.dlq").await.unwrap();
        c.flush().await.unwrap();
        (c, sub)
    });
    let dir = TempDir::new("dlq");
    let (client, thread) = worker(&broker.url(), dir.path(), |_| {});
    // Connected first, so the acked record is not answered from the spill.
    wait_up(&client);
    emit(&client, rec(0));
    // Over the stream's limit: JetStream refuses it (error 10054).
    let (tx, rejected) = oneshot::channel();
    client.emit_acked(rec_padded(1, 2_000), tx).unwrap();
    emit(&client, rec(2));
    // Over the server's max_payload: async-nats refuses it.
    emit(&client, rec_padded(3, 5_000));
    emit(&client, rec(4));
    let answer = wait_answer(&broker, rejected);
    assert!(
        matches!(&answer, Err(DurableError::DeadLettered(r)) if r.contains("10054")),
        "{answer:?}"
    );
    assert_stream_holds(&broker, &client, &[id(0), id(2), id(4)]);
    let (_c, mut sub) = dlq;
    let letters: Vec<async_nats::Message> = broker.block_on(async {
        let mut out = Vec::new();
        for _ in 0..2 {
            out.push(
                tokio::time::timeout(TIMEOUT, sub.next())
                    .await
                    .expect("a dead letter in time")
                    .unwrap(),
            );
        }
        out
    });
    let header = |m: &async_nats::Message, name: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let (first, second) = (&letters[0], &letters[1]);
    assert_eq!(header(first, DLQ_MSG_ID), id(1));
    assert_eq!(header(first, DLQ_SUBJECT), "evt.room1");
    assert!(header(first, DLQ_REASON).contains("10054"), "{first:?}");
    assert_eq!(first.payload, rec_padded(1, 2_000).payload);
    assert_eq!(header(second, DLQ_MSG_ID), id(3));
    assert!(
        header(second, DLQ_REASON).contains("max payload"),
        "{second:?}"
    );
    assert!(second.payload.is_empty());
    assert_eq!(
        header(second, DLQ_PAYLOAD_BYTES),
        rec_padded(3, 5_000).payload.len().to_string()
    );
    let m = client.metrics().snapshot();
    assert_eq!((m.dead_lettered, m.lost), (2, 0), "{m:?}");
    thread.shutdown();
}

#[test]
fn refusals_and_option_checks_need_no_broker() {
    let dir = TempDir::new("refusals");
    let mut bad = DurableOptions::new("nats://127.0.0.1:1", dir.path());
    assert!(bad.validate().is_ok());
    bad.batch_max = 0;
    assert!(bad.validate().unwrap_err().contains("batch_max"));
    bad.batch_max = 1;
    bad.dead_letter_subject = "a b".into();
    assert!(bad.validate().unwrap_err().contains("dead_letter_subject"));
    bad.dead_letter_subject = "dlq.*".into();
    assert!(bad.validate().unwrap_err().contains("dead_letter_subject"));
    bad.dead_letter_subject = "dlq".into();
    bad.retry_max = Duration::from_millis(1);
    assert!(bad.validate().is_err());
    let refused = start(DurableOptions::new("", dir.path()), default_connect_options);
    assert!(matches!(refused, Err(e) if e.kind() == std::io::ErrorKind::InvalidInput));
    // No server on port 1: the worker runs, spilling.
    let (client, thread) = worker("nats://127.0.0.1:1", dir.path(), |o| {
        o.spill.max_record = 1024;
    });
    // A second worker on the same spill is refused.
    assert!(
        start(
            DurableOptions::new("nats://127.0.0.1:1", dir.path()),
            default_connect_options
        )
        .is_err()
    );
    assert!(matches!(
        client.emit(rec_padded(0, 2_000)),
        Err(Refused::TooLarge { max: 1024, .. })
    ));
    let (tx, rx) = oneshot::channel();
    client.emit_acked(rec(0), tx).unwrap();
    assert_eq!(rx.blocking_recv().unwrap(), Ok(()));
    let m = client.metrics().snapshot();
    assert_eq!(
        (m.refused, m.spilled, m.in_spill_records, m.up),
        (1, 1, 1, false)
    );
    thread.shutdown();
    assert_eq!(client.emit(rec(1)), Err(Refused::Stopped));
    assert_eq!(client.metrics().snapshot().refused, 2);
}

#[test]
fn a_fenced_connection_never_comes_back() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let servers = parse_servers(&broker.url()).unwrap();
    let spec = nats_transport::ConnectSpec {
        capacity: 64,
        timeout: Duration::from_secs(1),
    };
    let mut connecting = nats_transport::connect(default_connect_options(), servers, spec)
        .expect("a connection thread");
    let mut session = broker.block_on(async {
        let (client, js) = connecting.outcome().await.expect("connected");
        connecting.into_session(client, js)
    });
    broker.nats.stop();
    let reason = broker.block_on(async { tokio::time::timeout(TIMEOUT, session.lost()).await });
    assert_eq!(reason.as_deref(), Ok("disconnected"));
    broker.nats.restart();
    // A fresh client sees the server; the fenced one stays away, and
    // what it was given after the loss never goes out.
    let (_fresh, mut sub) = broker.block_on(async {
        let c = async_nats::connect(broker.url()).await.unwrap();
        let sub = c.subscribe("fence.test").await.unwrap();
        c.flush().await.unwrap();
        (c, sub)
    });
    broker.block_on(async {
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            session
                .client
                .publish("fence.test", Bytes::from_static(b"stale")),
        )
        .await;
        let got = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
        assert!(got.is_err(), "a stale message went out: {got:?}");
    });
    assert_ne!(
        session.client.connection_state(),
        async_nats::connection::State::Connected
    );
}

#[test]
fn a_stop_writes_what_is_in_memory_to_the_spill_and_counts_what_finds_no_room() {
    // No server on port 1: everything goes to the spill.
    let dir = TempDir::new("stop");
    let (client, thread) = worker("nats://127.0.0.1:1", dir.path(), |_| {});
    for i in 0..1_000 {
        emit(&client, rec(i));
    }
    thread.shutdown();
    let m = client.metrics().snapshot();
    assert_eq!((m.queued, m.lost, m.spilled), (0, 0, 1_000), "{m:?}");
    let (mut spill, recovery) = Spill::open(SpillOptions::new(dir.path())).unwrap();
    assert!(recovery.is_clean());
    assert_eq!(spill.pending_records(), 1_000);
    let last = spill.read(Seq(1_000), 1, 0).unwrap().remove(0).1;
    let (back, _) = DurableRecord::decode(Bytes::from(last)).unwrap();
    assert_eq!(back, rec(999));
    drop(spill);

    // A full spill at the stop: what waits in memory for room is lost
    // after the grace, counted, and its waiters told.
    let dir = TempDir::new("stop-full");
    let (client, thread) = worker("nats://127.0.0.1:1", dir.path(), |o| {
        o.spill.max_bytes = 32 << 10;
        o.spill.segment_bytes = 16 << 10;
        o.spill.max_record = 4 << 10;
        o.queue_capacity = 64;
        o.batch_max = 16;
        o.shutdown_grace = Duration::from_millis(100);
    });
    let mut answers = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while !client.is_full() {
        assert!(Instant::now() < deadline, "the spill never filled");
        let (tx, rx) = oneshot::channel();
        match client.emit_acked(rec_padded(answers.len(), 200), tx) {
            Ok(()) => answers.push(rx),
            Err(Refused::Overloaded) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    thread.shutdown();
    let (mut kept, mut lost) = (0, 0);
    for rx in answers {
        match rx.blocking_recv().expect("every waiter answered") {
            Ok(()) => kept += 1,
            Err(DurableError::Lost(_)) => lost += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let m = client.metrics().snapshot();
    assert!(lost > 0 && kept > 0, "kept {kept}, lost {lost}");
    assert_eq!((m.lost, m.spilled, m.queued), (lost, kept, 0), "{m:?}");
}

#[test]
fn missing_streams_are_created_and_existing_ones_left_alone() {
    // `EVT` exists (the operator's, with its own limits); `AUDIT` does not.
    let Some(broker) = Broker::start() else {
        return;
    };
    let dir = TempDir::new("streams");
    let (client, thread) = worker(&broker.url(), dir.path(), |o| {
        let SinkOptions::JetStream(sink) = &mut o.sink else {
            unreachable!()
        };
        sink.streams = vec![
            StreamSpec::new(STREAM, ["evt.other.>"]),
            StreamSpec::new("AUDIT", ["audit.>"]),
        ];
    });
    wait_up(&client);
    emit(
        &client,
        DurableRecord::new("audit.login", "a-1", Bytes::from_static(b"x")),
    );
    emit(&client, rec(0));
    eventually("both records sent", || {
        client.metrics().snapshot().sent == 2
    });
    broker.block_on(async {
        let js = broker.js().await;
        let mut audit = js.get_stream("AUDIT").await.expect("AUDIT was created");
        let info = audit.info().await.unwrap();
        assert_eq!(info.config.subjects, ["audit.>"]);
        assert_eq!(info.config.storage, stream::StorageType::File);
        assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
        assert!(info.config.description.is_some());
        assert_eq!(info.state.messages, 1);
        let mut evt = js.get_stream(STREAM).await.unwrap();
        let info = evt.info().await.unwrap();
        // Untouched: its subjects are still the operator's.
        assert_eq!(info.config.subjects, [SUBJECTS]);
        assert_eq!(info.config.description, None);
    });
    assert_eq!(broker.count(), 1);
    thread.shutdown();
}
