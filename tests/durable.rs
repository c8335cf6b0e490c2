//! Durable namespaces against a real `nats-server` (and a real
//! Kafka-protocol broker, tansu): every publication
//! accepted is in the JetStream sink once, in order per channel, through
//! a broker outage (spilled, then replayed) and through a `kill -9` of
//! wsedge with events in its spill. Publishes are read as raw frames; the
//! sink is read back with an ordered consumer.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use common::kafka_broker::KafkaBroker;
use common::nats_server::NatsServer;
use common::raw_json::RawJson;
use common::{Opts, Server};
use futures_util::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

/// The stream over the sink's subjects (created here the way an
/// operator would; wsedge writes into it).
const STREAM: &str = "EVENTS";

/// A node with namespace `chat` durable to `jetstream:events.chat`,
/// spilling in `dir`, on `nats`.
fn node(nats: &NatsServer, dir: &Path, test: &str) -> Server {
    let config = format!(
        r#"
shards = 2
max_commands_per_second = 0

[[namespace]]
name = "chat"
durable = "jetstream:events.chat"

[durable]
dir = "{}"
nats_url = "{}"
"#,
        dir.display(),
        nats.url()
    );
    start(dir, test, &config)
}

/// A node running `config`, written beside `dir` as `<test>.toml`.
fn start(dir: &Path, test: &str, config: &str) -> Server {
    let path = dir.with_extension(format!("{test}.toml"));
    std::fs::write(&path, config).unwrap();
    Server::start_with(Opts {
        args: vec!["--config".into(), path.to_str().unwrap().into()],
        ..Opts::default()
    })
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsedge-durable-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn js(nats: &NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

fn create_stream(nats: &NatsServer) {
    runtime().block_on(async {
        js(nats)
            .await
            .create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec!["events.>".into()],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap();
    });
}

fn stream_count(nats: &NatsServer) -> u64 {
    stream_count_of(nats, STREAM)
}

fn stream_count_of(nats: &NatsServer, name: &str) -> u64 {
    runtime().block_on(async {
        let mut s = js(nats).await.get_stream(name).await.unwrap();
        s.info().await.unwrap().state.messages
    })
}

/// Waits until the stream holds `n` messages (or fails after `limit`).
fn wait_for_count(nats: &NatsServer, n: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let c = stream_count(nats);
        if c >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the stream has {c} of {n}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One record read back: subject, `Nats-Msg-Id`, payload.
struct Stored {
    subject: String,
    msg_id: String,
    payload: Value,
}

/// Every message of the stream, in stream order.
fn read_stream(nats: &NatsServer) -> Vec<Stored> {
    read_stream_of(nats, STREAM)
}

/// Every message of stream `name`, in stream order.
fn read_stream_of(nats: &NatsServer, name: &str) -> Vec<Stored> {
    let total = stream_count_of(nats, name) as usize;
    runtime().block_on(async {
        let s = js(nats).await.get_stream(name).await.unwrap();
        let c = s
            .create_consumer(consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let mut messages = c.messages().await.unwrap();
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let m = tokio::time::timeout(Duration::from_secs(20), messages.next())
                .await
                .expect("the stream's messages in time")
                .expect("more messages")
                .expect("a message");
            let msg_id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push(Stored {
                subject: m.subject.to_string(),
                msg_id,
                payload: serde_json::from_slice(&m.payload).expect("a JSON payload"),
            });
        }
        out
    })
}

/// Publishes `{"n": i}` for `i` in `range` on the channels in turn,
/// `window` at a time without waiting; every publish must be accepted.
/// Calls `between(i)` before sending publication `i`. Returns each
/// channel's offsets in the order they were given.
fn publish_all(
    c: &mut RawJson,
    channels: &[&str],
    range: std::ops::Range<u64>,
    window: u64,
    durable_ack: bool,
    mut between: impl FnMut(u64),
) -> HashMap<String, Vec<u64>> {
    let mut offsets: HashMap<String, Vec<u64>> = HashMap::new();
    let mut i = range.start;
    while i < range.end {
        let end = (i + window).min(range.end);
        let mut sent = Vec::new();
        for n in i..end {
            between(n);
            let ch = channels[(n % channels.len() as u64) as usize];
            let id = c.send(
                "publish",
                json!({"channel": ch, "data": {"n": n}, "durable_ack": durable_ack}),
            );
            sent.push((id, ch));
        }
        for (id, ch) in sent {
            let r = c.wait(&format!("reply #{id}"), |v| v["id"] == id);
            let offset = r["publish"]["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("publish #{id} refused: {r}"));
            offsets.entry(ch.to_owned()).or_default().push(offset);
        }
        i = end;
    }
    offsets
}

/// Checks that the stream holds exactly the publications of `offsets`:
/// one record per (channel, offset), in order per channel, each with its
/// id as `Nats-Msg-Id` and its data.
fn check_exactly_once(stored: &[Stored], offsets: &HashMap<String, Vec<u64>>, total: u64) {
    assert_eq!(stored.len() as u64, total, "one record per publication");
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for s in stored {
        let p = &s.payload;
        let channel = p["channel"].as_str().expect("channel");
        let offset = p["offset"].as_u64().expect("offset");
        assert_eq!(p["type"], "publication");
        assert_eq!(s.msg_id, p["id"].as_str().unwrap(), "Nats-Msg-Id is the id");
        assert_eq!(
            s.msg_id,
            format!("{channel}:{}:{offset}", p["epoch"].as_str().unwrap())
        );
        assert!(
            s.subject.starts_with("events.chat."),
            "subject {}",
            s.subject
        );
        assert!(p["data"]["n"].is_u64(), "{p}");
        seen.entry(channel).or_default().push(offset);
    }
    for (channel, want) in offsets {
        let got = seen.get(channel.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            want.len(),
            "{channel}: one record per publication"
        );
        assert_eq!(&got, want, "{channel}: in offset order, none twice");
    }
}

#[test]
fn every_durable_publication_reaches_jetstream_once_in_order_through_a_broker_kill() {
    if !NatsServer::available() {
        return;
    }
    let mut nats = NatsServer::start();
    create_stream(&nats);
    let dir = scratch("outage");
    let server = node(&nats, &dir, "outage");
    let mut c = RawJson::user(&server, "alice", None);
    let channels = ["chat:a", "chat:b", "chat:c"];
    let total = 100_000u64;
    let (kill_at, back_at) = (30_000, 60_000);
    let mut down_seen = false;
    let offsets = publish_all(&mut c, &channels, 0..total, 500, false, |n| {
        if n == kill_at {
            nats.stop();
        }
        if n == back_at {
            // The worker saw the broker go and spilled meanwhile.
            down_seen = server.metric("wsedge_durable_up{sink=\"jetstream\"}") == 0.0;
            nats.restart();
        }
    });
    assert!(down_seen, "the worker noticed the broker was down");
    wait_for_count(&nats, total, Duration::from_secs(120));
    // Nothing more comes (no duplicate after the count was reached).
    std::thread::sleep(Duration::from_millis(500));
    let stored = read_stream(&nats);
    check_exactly_once(&stored, &offsets, total);
    let spilled = server.metric("wsedge_durable_spilled_total{sink=\"jetstream\"}");
    assert!(spilled > 0.0, "the outage went through the spill");
    assert_eq!(
        server.metric("wsedge_durable_publications_total{kind=\"queued\"}"),
        total as f64
    );
    assert_eq!(
        server.metric("wsedge_durable_lost_total{sink=\"jetstream\"}"),
        0.0
    );
    server.wait_for("the spill drained", || {
        server.metric("wsedge_durable_spill_records{sink=\"jetstream\"}") == 0.0
            && server.metric("wsedge_durable_queued{sink=\"jetstream\"}") == 0.0
    });
    eprintln!(
        "spilled {spilled}, sent {}, duplicates {}, retries {}",
        server.metric("wsedge_durable_sent_total{sink=\"jetstream\"}"),
        server.metric("wsedge_durable_duplicates_total{sink=\"jetstream\"}"),
        server.metric("wsedge_durable_retries_total{sink=\"jetstream\"}")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn events_spilled_by_a_node_killed_with_sigkill_are_sent_by_its_next_start() {
    if !NatsServer::available() {
        return;
    }
    let mut nats = NatsServer::start();
    create_stream(&nats);
    let dir = scratch("sigkill");
    let mut server = node(&nats, &dir, "sigkill");
    nats.stop();
    server.wait_for("the worker sees the broker down", || {
        server.metric("wsedge_durable_up{sink=\"jetstream\"}") == 0.0
    });
    let mut c = RawJson::user(&server, "bob", None);
    // Without durable_ack: answered at once; the events reach the spill
    // file within the worker's turn.
    let total = 5_000u64;
    let mut offsets = publish_all(&mut c, &["chat:x", "chat:y"], 0..total, 250, false, |_| {});
    server.wait_for("every event in the spill", || {
        server.metric("wsedge_durable_spill_records{sink=\"jetstream\"}") == total as f64
    });
    // With durable_ack: each answer means the event is in the synced
    // spill, so the node is killed the moment the last answer arrives.
    let acked = publish_all(
        &mut c,
        &["chat:x", "chat:y"],
        total..2 * total,
        250,
        true,
        |_| {},
    );
    for (ch, o) in acked {
        offsets.entry(ch).or_default().extend(o);
    }
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    nats.restart();
    let again = node(&nats, &dir, "sigkill");
    wait_for_count(&nats, 2 * total, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let stored = read_stream(&nats);
    check_exactly_once(&stored, &offsets, 2 * total);
    again.wait_for("the spill drained", || {
        again.metric("wsedge_durable_spill_records{sink=\"jetstream\"}") == 0.0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn durable_ack_answers_after_the_sink_has_the_event_from_clients_and_the_server_api() {
    if !NatsServer::available() {
        return;
    }
    // No stream: the node creates its own over the sink's subjects.
    let nats = NatsServer::start();
    let created = "WSEDGE_DURABLE_EVENTS_CHAT";
    let dir = scratch("ack");
    let config = format!(
        r#"
shards = 2
max_commands_per_second = 0
api_key = "k"

[[namespace]]
name = "chat"
durable = "jetstream:events.chat"

[durable]
dir = "{}"
nats_url = "{}"
"#,
        dir.display(),
        nats.url()
    );
    let server = start(&dir, "ack", &config);
    server.wait_for("the sink connected", || {
        server.metric("wsedge_durable_up{sink=\"jetstream\"}") == 1.0
    });
    let mut c = RawJson::user(&server, "eve", None);
    for n in 1..=20u64 {
        let r = c.call(
            "publish",
            json!({"channel": "chat:ack", "data": {"n": n}, "durable_ack": true}),
        );
        assert_eq!(r["publish"]["offset"], n, "{r}");
        // Answered only once JetStream had it.
        assert_eq!(stream_count_of(&nats, created), n);
    }
    let (status, body) = common::api_post(
        &server,
        "publish",
        Some("k"),
        r#"{"channel":"chat:ack","data":{"n":21},"durable_ack":true}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["offset"], 21, "{body}");
    assert_eq!(stream_count_of(&nats, created), 21);
    // durable_ack outside a durable namespace is answered as usual.
    let r = c.call(
        "publish",
        json!({"channel": "plain", "data": 1, "durable_ack": true}),
    );
    assert_eq!(r["publish"]["offset"], 1, "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_spill_refuses_durable_publishes_with_112_and_publishes_nothing() {
    if !NatsServer::available() {
        return;
    }
    let mut nats = NatsServer::start();
    create_stream(&nats);
    let dir = scratch("full");
    let config = format!(
        r#"
shards = 1
max_commands_per_second = 0

[[namespace]]
name = "chat"
durable = "jetstream:events.chat"
history_size = 10
history_ttl = "60s"

[durable]
dir = "{}"
nats_url = "{}"
max_bytes = 1048576
queue_capacity = 64
"#,
        dir.display(),
        nats.url()
    );
    let server = start(&dir, "full", &config);
    nats.stop();
    server.wait_for("the worker sees the broker down", || {
        server.metric("wsedge_durable_up{sink=\"jetstream\"}") == 0.0
    });
    let mut c = RawJson::user(&server, "carol", None);
    let mut sub = RawJson::user(&server, "dave", None);
    let r = sub.call("subscribe", json!({"channel": "chat:full"}));
    assert!(r.get("error").is_none(), "{r}");
    // 8 KiB publications fill the 1 MiB spill within ~130.
    let big = "x".repeat(8 * 1024);
    let mut accepted = 0u64;
    let mut refused = None;
    for n in 0..1_000u64 {
        let r = c.call(
            "publish",
            json!({"channel": "chat:full", "data": {"n": n, "pad": big}}),
        );
        if r["publish"]["offset"].is_u64() {
            accepted += 1;
            continue;
        }
        refused = Some(r);
        break;
    }
    let r = refused.expect("the spill filled up and publishes were refused");
    assert_eq!(r["error"]["code"], 112, "{r}");
    assert!(accepted > 50, "the spill took {accepted} first");
    // What was refused was not published: the subscriber got exactly the
    // accepted ones, and history ends at the last accepted offset.
    let pubs = sub.pubs_through("chat:full", accepted);
    assert_eq!(pubs.len() as u64, accepted);
    assert!(
        matches!(
            sub.next_event(Instant::now() + Duration::from_millis(300)),
            Ok(None)
        ),
        "nothing after the accepted publications"
    );
    let h = c.call("history", json!({"channel": "chat:full", "limit": 1}));
    assert_eq!(h["history"]["offset"], accepted, "{h}");
    assert!(server.metric("wsedge_durable_publications_total{kind=\"refused\"}") >= 1.0);
    assert!(server.metric("wsedge_durable_refused_total{sink=\"jetstream\"}") >= 1.0);
    // The broker back: the spill drains, and publishes are accepted again.
    nats.restart();
    wait_for_count(&nats, accepted, Duration::from_secs(60));
    server.wait_for("room in the spill again", || {
        c.call("publish", json!({"channel": "chat:full", "data": {"n": 0}}))["publish"]["offset"]
            .is_u64()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Kafka consumer of `topic`'s `partitions` from their beginning
/// (`assign()`: a group's first join takes ~23 s on the test broker).
/// Waits until stream `name` exists and holds `n` messages.
fn wait_for_stream(nats: &NatsServer, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = runtime().block_on(async {
            let mut s = js(nats).await.get_stream(name).await.ok()?;
            Some(s.info().await.ok()?.state.messages)
        });
        if c.is_some_and(|c| c >= n) {
            return;
        }
        assert!(Instant::now() < deadline, "stream {name} has {c:?} of {n}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn presence_joins_and_leaves_and_story_updates_reach_their_own_sinks() {
    if !NatsServer::available() {
        return;
    }
    let nats = NatsServer::start();
    let dir = scratch("presence");
    let config = format!(
        r#"
shards = 2
max_commands_per_second = 0

[[namespace]]
name = "room"
presence = true
durable_presence = "jetstream:events.presence"

[[namespace]]
name = "story"
collaboration = true
durable_collab = "jetstream:events.stories"

[durable]
dir = "{}"
nats_url = "{}"
"#,
        dir.display(),
        nats.url()
    );
    let server = start(&dir, "presence", &config);
    // Presence: two joins, an unsubscribe, a disconnect.
    let mut alice = RawJson::user(&server, "alice", Some(json!({"name": "Alice"})));
    let mut bob = RawJson::user(&server, "bob", None);
    for c in [&mut alice, &mut bob] {
        let r = c.call("subscribe", json!({"channel": "room:1"}));
        assert!(r.get("error").is_none(), "{r}");
    }
    let r = bob.call("unsubscribe", json!({"channel": "room:1"}));
    assert!(r.get("error").is_none(), "{r}");
    alice.close();
    let presence = "WSEDGE_DURABLE_EVENTS_PRESENCE";
    wait_for_stream(&nats, presence, 4);
    let stored = read_stream_of(&nats, presence);
    let seen: Vec<(String, String, Value)> = stored
        .iter()
        .map(|s| {
            let p = &s.payload;
            assert_eq!(s.msg_id, p["id"].as_str().unwrap(), "Nats-Msg-Id is the id");
            assert_eq!(p["channel"], "room:1");
            assert!(s.subject.starts_with("events.presence."), "{}", s.subject);
            (
                p["type"].as_str().unwrap().to_owned(),
                p["user"].as_str().unwrap().to_owned(),
                p["reason"].clone(),
            )
        })
        .collect();
    let s = |x: &str| x.to_owned();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let mut joins = seen[..2].to_vec();
    joins.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        joins,
        vec![
            (s("presence.join"), s("alice"), Value::Null),
            (s("presence.join"), s("bob"), Value::Null),
        ]
    );
    assert_eq!(
        seen[2..],
        [
            (s("presence.leave"), s("bob"), json!("unsubscribe")),
            (s("presence.leave"), s("alice"), json!("disconnect")),
        ]
    );
    assert_eq!(
        server.metric("wsedge_durable_presence_events_total{kind=\"queued\"}"),
        4.0
    );
    let alice_join = stored
        .iter()
        .find(|x| x.payload["user"] == "alice")
        .unwrap();
    assert_eq!(alice_join.payload["info"], json!({"name": "Alice"}));
    // Story updates: in version order, with their data.
    let mut ed = RawJson::user(&server, "carol", None);
    let r = ed.call(
        "collab_join",
        json!({"channel": "story:1", "role": "editor"}),
    );
    assert_eq!(r["collab_join"]["role"], "editor", "{r}");
    let r = ed.call("lock", json!({"channel": "story:1", "section": "intro"}));
    assert_eq!(r["lock"]["holder"]["user"], "carol", "{r}");
    for v in 0..3u64 {
        let r = ed.call(
            "update",
            json!({"channel": "story:1", "section": "intro", "base_version": v,
                   "data": {"text": format!("draft {v}")}, "op_id": format!("op{v}")}),
        );
        assert_eq!(r["update"]["version"], v + 1, "{r}");
    }
    let stories = "WSEDGE_DURABLE_EVENTS_STORIES";
    wait_for_stream(&nats, stories, 3);
    let updates: Vec<(u64, Value, String)> = read_stream_of(&nats, stories)
        .iter()
        .map(|s| {
            let p = &s.payload;
            assert_eq!(p["type"], "story.content.update");
            assert_eq!(
                (p["channel"].as_str(), p["user"].as_str()),
                (Some("story:1"), Some("carol"))
            );
            assert_eq!(s.msg_id, p["id"].as_str().unwrap());
            (
                p["version"].as_u64().unwrap(),
                p["data"].clone(),
                s.msg_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        updates,
        (0..3u64)
            .map(|v| (
                v + 1,
                json!({"text": format!("draft {v}")}),
                format!("story:1:intro:{}", v + 1)
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        server.metric("wsedge_durable_story_events_total{kind=\"queued\"}"),
        3.0
    );
}

fn kafka_reader(bootstrap: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "wsedge-e2e-reader")
        .set("enable.auto.commit", "false")
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

/// (partition, key, `wsedge-id` header, payload) of every record, until
/// `n` came and half a second more passed quietly.
fn kafka_read(c: &BaseConsumer, n: usize) -> Vec<(i32, String, String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut quiet_until = None;
    loop {
        if out.len() >= n {
            let q = *quiet_until.get_or_insert(Instant::now() + Duration::from_millis(500));
            if Instant::now() > q {
                return out;
            }
        }
        assert!(Instant::now() < deadline, "{} of {n} records", out.len());
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                eprintln!("consumer: {e}");
                continue;
            }
        };
        let id = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "wsedge-id"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        out.push((
            m.partition(),
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            id,
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON"),
        ));
    }
}

#[test]
fn a_kafka_sink_gets_every_publication_once_keyed_by_channel_through_a_broker_outage() {
    if !KafkaBroker::available() {
        return;
    }
    let mut kafka = KafkaBroker::start();
    let dir = scratch("kafka");
    let config = format!(
        r#"
shards = 2
max_commands_per_second = 0

[[namespace]]
name = "chat"
durable = "kafka:chat-events"

[durable]
dir = "{}"
kafka_brokers = "{}"
kafka_partitions = 3
"#,
        dir.display(),
        kafka.bootstrap()
    );
    // The broker is down when the node starts: events go to the spill,
    // and the topic is created when it comes up.
    kafka.kill();
    let server = start(&dir, "kafka", &config);
    let mut c = RawJson::user(&server, "kim", None);
    let channels = ["chat:k1", "chat:k2", "chat:k3", "chat:k4"];
    let down = 2_000u64;
    let mut offsets = publish_all(&mut c, &channels, 0..down, 250, false, |_| {});
    server.wait_for("the first events in the spill", || {
        server.metric("wsedge_durable_spill_records{sink=\"kafka\"}") == down as f64
    });
    kafka.restart();
    // Publishing goes on while the spill drains: nothing overtakes it.
    let total = 10_000u64;
    let more = publish_all(&mut c, &channels, down..total, 250, false, |_| {});
    for (ch, o) in more {
        offsets.entry(ch).or_default().extend(o);
    }
    let reader = kafka_reader(&kafka.bootstrap(), "chat-events", 3);
    let got = kafka_read(&reader, total as usize);
    assert_eq!(got.len() as u64, total, "every publication once");
    let mut by_channel: HashMap<String, Vec<u64>> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (partition, key, id, p) in &got {
        let channel = p["channel"].as_str().unwrap().to_owned();
        assert_eq!(key, &channel, "keyed by channel");
        assert_eq!(id, p["id"].as_str().unwrap());
        assert_eq!(
            *partition_of.entry(channel.clone()).or_insert(*partition),
            *partition,
            "{channel}: one partition"
        );
        by_channel
            .entry(channel)
            .or_default()
            .push(p["offset"].as_u64().unwrap());
    }
    for (ch, want) in &offsets {
        assert_eq!(by_channel.get(ch), Some(want), "{ch}: in order, none twice");
    }
    server.wait_for("the spill drained", || {
        server.metric("wsedge_durable_spill_records{sink=\"kafka\"}") == 0.0
    });
    assert_eq!(
        server.metric("wsedge_durable_lost_total{sink=\"kafka\"}"),
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A record to produce: key, headers, payload.
type Produced<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);

/// Produces `records` to `topic` on `bootstrap`.
fn produce(bootstrap: &str, topic: &str, records: &[Produced<'_>]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    runtime().block_on(async {
        for (key, headers, payload) in records {
            let mut h = OwnedHeaders::new();
            for (k, v) in *headers {
                let v = v.to_string();
                h = h.insert(Header {
                    key: k,
                    value: Some(&v),
                });
            }
            let mut r = FutureRecord::to(topic).payload(*payload).headers(h);
            if let Some(k) = key {
                r = r.key(*k);
            }
            p.send(r, Duration::from_secs(10)).await.expect("produced");
        }
    });
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let created = runtime()
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
}

#[test]
fn kafka_notifications_keyed_by_user_reach_that_users_connections_once() {
    if !KafkaBroker::available() {
        return;
    }
    let kafka = KafkaBroker::start();
    create_topic(&kafka.bootstrap(), "notifications", 2);
    let dir = scratch("consume");
    let config = format!(
        r##"
shards = 2
personal_channel = true

[durable]
dir = "{}"
kafka_brokers = "{}"

[[durable.consume]]
topic = "notifications"
channel = "#{{key}}"
"##,
        dir.display(),
        kafka.bootstrap()
    );
    let server = start(&dir, "consume", &config);
    // Two connections of alice (personal channel #alice), one of bob.
    let mut a1 = RawJson::user(&server, "alice", None);
    let mut a2 = RawJson::user(&server, "alice", None);
    let mut b = RawJson::user(&server, "bob", None);
    produce(
        &kafka.bootstrap(),
        "notifications",
        &[
            (Some("alice"), &[], r#"{"text":"graded"}"#),
            // The backend's own id: sent twice, published once.
            (
                Some("alice"),
                &[("idempotency-key", "n-2")],
                r#"{"text":"due"}"#,
            ),
            (
                Some("alice"),
                &[("idempotency-key", "n-2")],
                r#"{"text":"due"}"#,
            ),
            (Some("bob"), &[], r#"{"text":"hello bob"}"#),
            // No key: no channel, ever: dead-lettered, the partition
            // moves on.
            (None, &[], r#"{"text":"lost"}"#),
        ],
    );
    // The first group join takes ~23 s on the test broker: a longer wait
    // than the harness's.
    let deadline = Instant::now() + Duration::from_secs(90);
    while server.metric("wsedge_durable_consumed_total{result=\"published\"}") < 4.0
        || server.metric("wsedge_durable_consumed_total{result=\"refused\"}") < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "records not consumed; log:\n{}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for a in [&mut a1, &mut a2] {
        let pubs = a.pubs_through("#alice", 2);
        let texts: Vec<&str> = pubs
            .iter()
            .map(|p| p["push"]["pub"]["data"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["graded", "due"]);
        // Nothing more on #alice (other pushes, e.g. the personal
        // subscription's, may be pending).
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(v)) = a.next_event(until) {
            assert!(v["push"]["pub"].is_null(), "a publication twice: {v}");
        }
    }
    let pubs = b.pubs_through("#bob", 1);
    assert_eq!(pubs[0]["push"]["pub"]["data"]["text"], "hello bob");
    // The unkeyed record went to the dead-letter topic with its reason.
    let reader = kafka_reader(&kafka.bootstrap(), "wsedge.inbound.dlq", 1);
    let dead = kafka_read_raw(&reader, 1);
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .1
            .get("wsedge-dlq-reason")
            .is_some_and(|r| r.contains("key")),
        "{:?}",
        dead[0].1
    );
    server.wait_for("the offsets committed", || {
        server.metric("wsedge_durable_consumer_lag") == 0.0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// (payload, headers) of every record, until `n` came (then 500 ms more).
fn kafka_read_raw(c: &BaseConsumer, n: usize) -> Vec<(String, HashMap<String, String>)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut quiet_until = None;
    loop {
        if out.len() >= n {
            let q = *quiet_until.get_or_insert(Instant::now() + Duration::from_millis(500));
            if Instant::now() > q {
                return out;
            }
        }
        assert!(Instant::now() < deadline, "{} of {n} records", out.len());
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            headers,
        ));
    }
}

#[test]
fn jetstream_notifications_by_subject_reach_that_users_connections_once() {
    if !NatsServer::available() {
        return;
    }
    let nats = NatsServer::start();
    // The backend's stream; the consumer's two rules share it (one
    // durable consumer, two filter subjects).
    let rt = runtime();
    rt.block_on(async {
        js(&nats)
            .await
            .create_stream(stream::Config {
                name: "BACKEND".into(),
                subjects: vec!["notify.>".into(), "course.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let dir = scratch("consume-js");
    let config = format!(
        r##"
shards = 2
personal_channel = true

[durable]
dir = "{}"
nats_url = "{}"

[[durable.consume]]
subject = "notify.>"
channel = "#{{key}}"

[[durable.consume]]
subject = "course.>"
channel = "course:{{header:course}}"
"##,
        dir.display(),
        nats.url()
    );
    let server = start(&dir, "consume-js", &config);
    let mut a1 = RawJson::user(&server, "alice", None);
    let mut a2 = RawJson::user(&server, "alice", None);
    // The dead letters, read as a backend would.
    let client = rt.block_on(async_nats::connect(nats.url())).unwrap();
    let mut dead = rt.block_on(client.subscribe("wsedge.inbound.dlq")).unwrap();
    rt.block_on(client.flush()).unwrap();
    let publish = |subject: &str, headers: &[(&str, &str)], payload: &str| {
        rt.block_on(async {
            let mut h = async_nats::HeaderMap::new();
            for (k, v) in headers {
                h.insert(*k, *v);
            }
            let ack = js(&nats)
                .await
                .publish_with_headers(subject.to_owned(), h, payload.to_owned().into())
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(!ack.duplicate, "{subject}: stored");
        })
    };
    publish("notify.alice", &[], r#"{"text":"graded"}"#);
    // The backend's own id: stored twice (two message ids), published
    // once.
    let due = r#"{"text":"due"}"#;
    publish(
        "notify.alice",
        &[("idempotency-key", "n-2"), ("Nats-Msg-Id", "x-1")],
        due,
    );
    publish(
        "notify.alice",
        &[("idempotency-key", "n-2"), ("Nats-Msg-Id", "x-2")],
        due,
    );
    // No `course` header: no channel, ever: dead-lettered; the messages
    // after it still come.
    publish("course.updates", &[], r#"{"text":"lost"}"#);
    publish("notify.alice", &[], r#"{"text":"next"}"#);
    for a in [&mut a1, &mut a2] {
        let pubs = a.pubs_through("#alice", 3);
        let texts: Vec<&str> = pubs
            .iter()
            .map(|p| p["push"]["pub"]["data"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["graded", "due", "next"]);
        // Nothing more on #alice.
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(v)) = a.next_event(until) {
            assert!(v["push"]["pub"].is_null(), "a publication twice: {v}");
        }
    }
    let letter = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), dead.next()).await })
        .expect("a dead letter in time")
        .unwrap();
    let headers = letter.headers.clone().unwrap();
    let header = |k: &str| headers.get(k).map(|v| v.as_str().to_owned());
    assert!(
        header("Wsedge-Dlq-Reason").is_some_and(|r| r.contains("\"course\"")),
        "{headers:?}"
    );
    assert_eq!(header("Wsedge-Dlq-Stream").as_deref(), Some("BACKEND"));
    assert_eq!(header("Wsedge-Dlq-Sequence").as_deref(), Some("4"));
    assert_eq!(&letter.payload[..], br#"{"text":"lost"}"#);
    // The server has nothing left for the group.
    let settled = || {
        rt.block_on(async {
            let s = js(&nats).await.get_stream("BACKEND").await.unwrap();
            let i = s.consumer_info("notification-processors").await.unwrap();
            i.num_pending == 0 && i.num_ack_pending == 0
        })
    };
    server.wait_for("the consumer settled", settled);
    server.wait_for("the counts and the lag", || {
        server.metric("wsedge_durable_consumed_total{source=\"jetstream\",result=\"published\"}")
            == 4.0
            && server
                .metric("wsedge_durable_consumed_total{source=\"jetstream\",result=\"refused\"}")
                == 1.0
            && server.metric("wsedge_durable_consumer_lag{source=\"jetstream\"}") == 0.0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Produces one record with `headers` and `payload` to `partition` of
/// `topic`.
fn produce_to(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    headers: &[(&str, &str)],
    payload: &str,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let r = FutureRecord::<(), _>::to(topic)
        .partition(partition)
        .payload(payload)
        .headers(h);
    runtime()
        .block_on(p.send(r, Duration::from_secs(10)))
        .expect("produced");
}

/// Reads `sub`'s pushes for `quiet` and fails on any publication.
fn assert_no_more_publications(sub: &mut RawJson, quiet: Duration) {
    let until = Instant::now() + quiet;
    while let Ok(Some(v)) = sub.next_event(until) {
        assert!(v["push"]["pub"].is_null(), "a publication too many: {v}");
    }
}

#[test]
fn a_consumer_killed_before_committing_and_restarted_publishes_nothing_twice_to_clients() {
    if !KafkaBroker::available() || !NatsServer::available() {
        return;
    }
    let nats = NatsServer::start();
    let kafka = KafkaBroker::start();
    const TOPIC: &str = "course-updates";
    create_topic(&kafka.bootstrap(), TOPIC, 2);
    // A course channel whose home is n1: its idempotency window outlives
    // n0, the consumer that dies.
    let live: Vec<std::sync::Arc<str>> = vec!["n0".into(), "n1".into()];
    let channel = (0..)
        .map(|i| format!("course:c{i}"))
        .find(|c| {
            wsedge::engine::cluster::placement::home_node(c, &live).map(|h| &**h) == Some("n1")
        })
        .unwrap();
    let course = channel.strip_prefix("course:").unwrap().to_owned();
    // Commits only at a rebalance or a stop: whatever n0 published is
    // uncommitted when it is killed. A dead member leaves the group after
    // 6 s.
    let config = format!(
        r#"
max_commands_per_second = 0

[durable]
kafka_brokers = "{}"
consume_commit_interval = "1h"

[durable.kafka_consumer_config]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500

[[durable.consume]]
topic = "{TOPIC}"
channel = "course:{{header:course}}"
"#,
        kafka.bootstrap()
    );
    let dir = scratch("consume-restart");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(&path, config).unwrap();
    let node = |name: &str| {
        Server::start_with(
            Opts {
                args: vec!["--config".into(), path.to_str().unwrap().into()],
                ..Opts::default()
            }
            .env("WSEDGE_CLUSTER_NATS_URL", &nats.url())
            .env("WSEDGE_CLUSTER_NODE_NAME", name)
            .env("WSEDGE_CLUSTER_CLUSTER_NAME", "consume"),
        )
    };
    let mut nodes = vec![node("n0"), node("n1")];
    // Group joins are slow on the test broker (~23 s the first time).
    let long_wait = |s: &Server, what: &str, f: &dyn Fn(&Server) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !f(s) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                s.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let partitions = |s: &Server| s.metric("wsedge_durable_consumer_partitions{source=\"kafka\"}");
    let published = |s: &Server| {
        s.metric("wsedge_durable_consumed_total{source=\"kafka\",result=\"published\"}")
    };
    for s in &nodes {
        s.wait_for("both nodes in the cluster", || {
            s.metric("wsedge_cluster_nodes") == 2.0
        });
        long_wait(s, "a partition each", &|s| partitions(s) == 1.0);
    }
    let mut sub = RawJson::anon(&nodes[1]);
    let r = sub.call("subscribe", json!({"channel": channel}));
    assert!(r.get("error").is_none(), "{r}");
    let header = [("course", course.as_str())];
    let mut n = 0;
    let mut send = |count: usize| {
        for _ in 0..count {
            for p in 0..2 {
                produce_to(
                    &kafka.bootstrap(),
                    TOPIC,
                    p,
                    &header,
                    &json!({"n": n}).to_string(),
                );
                n += 1;
            }
        }
    };
    let data_of = |pubs: &[Value]| -> Vec<u64> {
        let mut v: Vec<u64> = pubs
            .iter()
            .map(|p| p["push"]["pub"]["data"]["n"].as_u64().unwrap())
            .collect();
        v.sort_unstable();
        v
    };
    // 40 records, 20 per partition: each node publishes its partition's.
    send(20);
    assert_eq!(
        data_of(&sub.pubs_through(&channel, 40)),
        (0..40).collect::<Vec<_>>()
    );
    for s in &nodes {
        s.wait_for("20 published by each node", || published(s) == 20.0);
    }
    let dups_before = nodes[1].metric("wsedge_idempotent_duplicates_total");
    // n0 dies with its 20 records published and not committed: n1 takes
    // its partition and reads them again from the start.
    nodes[0].signal(libc::SIGKILL);
    assert!(nodes[0].wait_exit(Duration::from_secs(10)).is_some());
    long_wait(&nodes[1], "n1 owning both partitions", &|s| {
        partitions(s) == 2.0
    });
    long_wait(&nodes[1], "n0's records read again by n1", &|s| {
        published(s) == 40.0
    });
    // They were repeats of idempotency keys at the home: not published.
    assert_eq!(
        nodes[1].metric("wsedge_idempotent_duplicates_total") - dups_before,
        20.0
    );
    assert_no_more_publications(&mut sub, Duration::from_secs(1));
    // n0 comes back: the partitions split again, each from its committed
    // offset (n1 committed both when they were revoked from it).
    nodes[0] = node("n0");
    nodes[0].wait_for("n0 back in the cluster", || {
        nodes[0].metric("wsedge_cluster_nodes") == 2.0
    });
    long_wait(&nodes[0], "n0 with a partition again", &|s| {
        partitions(s) == 1.0
    });
    long_wait(&nodes[1], "n1 with one partition", &|s| {
        partitions(s) == 1.0
    });
    send(5);
    let pubs = sub.pubs_through(&channel, 50);
    assert_eq!(data_of(&pubs), (40..50).collect::<Vec<_>>());
    nodes[0].wait_for("n0 published only the new records", || {
        published(&nodes[0]) == 5.0
    });
    assert_no_more_publications(&mut sub, Duration::from_secs(1));
    assert_eq!(published(&nodes[0]), 5.0);
    assert_eq!(published(&nodes[1]), 45.0);
    let _ = std::fs::remove_dir_all(&dir);
}
