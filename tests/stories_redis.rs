//! The story worker (`sidecar::stories`) against a real `redis-server`:
//! write then load round trips (sections, locks, unlock, clear) and the
//! documented hash layout, coalescing counted in Redis's own command
//! statistics, TTL while editors are present and after, Redis killed and
//! restarted (bounded, recovered), Redis stalled (loads time out), fields
//! and keys written by someone else, a full queue that never blocks and
//! converges, shutdown flushing, and answers in real shard inboxes with
//! the exported metrics.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis_server::RedisServer;
use wsedge::bridge::{Inbox, ShardMsg};
use wsedge::sidecar::stories::{
    InboxSink, LockRecord, SectionRecord, StoryChange, StoryClient, StoryDrop, StoryLoad,
    StoryLoadAnswer, StoryMetrics, StoryOptions, StoryRecord, StoryStoreError, StorySync,
    StoryWorker, StoryWrite, StoryWriteError, StoryWriteOutcome, spawn_story_worker,
};

/// Generous upper bound for "answered at all".
const ANSWER: Duration = Duration::from_secs(15);

struct Fixture {
    redis: RedisServer,
    worker: Option<StoryWorker>,
    client: StoryClient,
    answers: Receiver<StoryLoadAnswer>,
    metrics: StoryMetrics,
    next_request: std::cell::Cell<u64>,
}

fn fixture(opts: StoryOptions) -> Fixture {
    let redis = RedisServer::start();
    let (tx, answers) = channel();
    let tx = Mutex::new(tx);
    let sink = move |_shard: usize, a: Box<StoryLoadAnswer>| {
        let _ = tx.lock().unwrap().send(*a);
        Ok(())
    };
    let metrics = StoryMetrics::default();
    let worker = spawn_story_worker(&redis.url(), opts, sink, metrics.clone()).unwrap();
    Fixture {
        client: worker.client(),
        worker: Some(worker),
        redis,
        answers,
        metrics,
        next_request: 1.into(),
    }
}

fn redis_cmd<T: redis::FromRedisValue>(url: &str, args: &[&str]) -> T {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut con).unwrap()
}

/// How many times Redis has run `command` (`INFO commandstats`).
fn calls(url: &str, command: &str) -> u64 {
    let info: String = redis_cmd(url, &["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

fn section(id: &str, version: u64, data: &str, writer: &str) -> SectionRecord {
    SectionRecord {
        id: id.into(),
        version,
        data: Bytes::copy_from_slice(data.as_bytes()),
        writer: writer.into(),
    }
}

fn lock(section: &str, user: &str, client: &str, expires_ms: u64) -> LockRecord {
    LockRecord {
        section: section.into(),
        user: user.into(),
        client: client.into(),
        expires_ms,
    }
}

impl Fixture {
    fn url(&self) -> String {
        self.redis.url()
    }

    /// Queues a delta for a story Redis is in step with.
    fn send(&self, channel: &str, changes: Vec<StoryChange>, active: bool) {
        let mut sync = self.client.synced();
        let delta = StoryWrite {
            channel: channel.into(),
            changes,
            active,
        };
        let whole = delta.is_whole();
        let out = self.client.write(&mut sync, delta, || panic!("not behind"));
        let expect = if whole {
            StoryWriteOutcome::QueuedWhole
        } else {
            StoryWriteOutcome::Queued
        };
        assert_eq!(out, expect);
    }

    fn ask(&self, channel: &str) -> u64 {
        let request = self.next_request.get();
        self.next_request.set(request + 1);
        self.client
            .load(StoryLoad {
                shard: 0,
                request,
                channel: channel.into(),
            })
            .unwrap_or_else(|r| panic!("refused at once: {:?}", r.error));
        request
    }

    fn answer(&self) -> StoryLoadAnswer {
        self.answers
            .recv_timeout(ANSWER)
            .expect("an answer within the bound")
    }

    fn load(&self, channel: &str) -> Result<Option<StoryRecord>, StoryStoreError> {
        let request = self.ask(channel);
        let a = self.answer();
        assert_eq!((a.request, &*a.channel), (request, channel));
        a.result
    }

    /// Loads until Redis answers (after an outage).
    fn load_eventually(&self, channel: &str) -> Option<StoryRecord> {
        let deadline = Instant::now() + ANSWER;
        loop {
            match self.load(channel) {
                Ok(r) => return r,
                Err(e) => assert_eq!(e, StoryStoreError::Unavailable),
            }
            assert!(Instant::now() < deadline, "Redis did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn write_then_load_round_trips_sections_locks_unlock_and_clear() {
    let f = fixture(StoryOptions::default());
    assert_eq!(f.load("story:1"), Ok(None), "never written");
    let a = section("a", 1, r#"{"text":"Hello","photos":[]}"#, "ann");
    let b = section("b", 4, r#""plain""#, "bob");
    let la = lock("a", "ann", "c-ann", 1_900_000_000_000);
    f.send(
        "story:1",
        vec![
            StoryChange::Section(a.clone()),
            StoryChange::Section(b.clone()),
            StoryChange::Lock(la.clone()),
        ],
        true,
    );
    // Read-your-writes: the load follows the write on the same queue.
    let rec = f.load("story:1").unwrap().expect("stored");
    assert_eq!(
        rec,
        StoryRecord {
            channel: "story:1".into(),
            sections: vec![a.clone(), b.clone()],
            locks: vec![la.clone()],
            active: true,
        }
    );
    // The documented layout, as another node or an operator sees it.
    let key = "wsedge:story:story:1";
    let raw: String = redis_cmd(&f.url(), &["HGET", key, "s:a"]);
    assert_eq!(raw, r#"{"v":1,"w":"ann","d":{"text":"Hello","photos":[]}}"#);
    let raw: String = redis_cmd(&f.url(), &["HGET", key, "l:a"]);
    assert_eq!(raw, r#"{"u":"ann","c":"c-ann","e":1900000000000}"#);

    let b5 = section("b", 5, "[1,2]", "ann");
    f.send(
        "story:1",
        vec![
            StoryChange::Unlock {
                section: "a".into(),
            },
            StoryChange::Section(b5.clone()),
            StoryChange::Lock(lock("b", "ann", "c-ann", 7)),
        ],
        true,
    );
    let rec = f.load("story:1").unwrap().unwrap();
    assert_eq!(rec.sections, vec![a.clone(), b5]);
    assert_eq!(rec.locks, vec![lock("b", "ann", "c-ann", 7)]);

    // A whole rewrite replaces everything, atomically.
    f.send(
        "story:1",
        StoryWrite::whole(StoryRecord {
            channel: "story:1".into(),
            sections: vec![section("z", 9, "null", "cy")],
            locks: vec![],
            active: true,
        })
        .changes,
        true,
    );
    let rec = f.load("story:1").unwrap().unwrap();
    assert_eq!(rec.sections, vec![section("z", 9, "null", "cy")]);
    assert!(rec.locks.is_empty());

    f.send("story:1", vec![StoryChange::Clear], true);
    assert_eq!(f.load("story:1"), Ok(None), "cleared");
    assert_eq!(redis_cmd::<i64>(&f.url(), &["EXISTS", key]), 0);
    assert_eq!(f.metrics.loads(Ok(true)), 3);
    assert_eq!(f.metrics.loads(Ok(false)), 2);
    assert_eq!(f.metrics.malformed_fields(), 0);
}

#[test]
fn many_changes_coalesce_into_one_command() {
    let f = fixture(StoryOptions {
        flush_interval: Duration::from_secs(1),
        ..Default::default()
    });
    for v in 1..=1000 {
        let s = section("intro", v, &format!("{{\"n\":{v}}}"), "ann");
        f.send("story:c", vec![StoryChange::Section(s)], true);
    }
    let rec = f.load("story:c").unwrap().unwrap();
    assert_eq!(
        rec.sections,
        vec![section("intro", 1000, r#"{"n":1000}"#, "ann")]
    );
    assert_eq!(calls(&f.url(), "hset"), 1, "1,000 changes, one HSET");
    assert_eq!(calls(&f.url(), "exec"), 1, "one batch");
    assert_eq!(f.metrics.writes(), 1);

    // 300 stories: a full batch of 256 goes at once, the other 44 at the
    // flush interval.
    for i in 0..300 {
        let s = section("s", 1, "1", "u");
        f.send(&format!("story:m{i}"), vec![StoryChange::Section(s)], true);
    }
    let deadline = Instant::now() + ANSWER;
    while f.metrics.writes() < 301 {
        assert!(Instant::now() < deadline, "{} writes", f.metrics.writes());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(calls(&f.url(), "exec"), 3, "1 + 256 + 44");
    assert_eq!(calls(&f.url(), "hset"), 301);
    for i in [0, 150, 255, 256, 298] {
        assert!(f.load(&format!("story:m{i}")).unwrap().is_some(), "m{i}");
    }
}

#[test]
fn no_ttl_while_editors_are_present_then_story_ttl() {
    let f = fixture(StoryOptions::default());
    let key = "wsedge:story:story:t";
    let s = || StoryChange::Section(section("a", 1, "{}", "ann"));
    f.send("story:t", vec![s()], true);
    assert!(f.load("story:t").unwrap().unwrap().active);
    assert_eq!(redis_cmd::<i64>(&f.url(), &["TTL", key]), -1);
    // The last editor leaves: a write with no changes says so.
    f.send("story:t", vec![], false);
    let rec = f.load("story:t").unwrap().unwrap();
    assert!(!rec.active);
    assert_eq!(rec.sections.len(), 1);
    let ttl: i64 = redis_cmd(&f.url(), &["TTL", key]);
    assert!((3590..=3600).contains(&ttl), "TTL {ttl}");
    // An editor comes back.
    f.send("story:t", vec![s()], true);
    assert!(f.load("story:t").unwrap().unwrap().active);
    assert_eq!(redis_cmd::<i64>(&f.url(), &["TTL", key]), -1);
}

#[test]
fn a_short_ttl_expires_the_story() {
    let f = fixture(StoryOptions {
        story_ttl: Duration::from_millis(200),
        ..Default::default()
    });
    f.send(
        "story:e",
        vec![StoryChange::Section(section("a", 1, "1", "u"))],
        false,
    );
    assert!(f.load("story:e").unwrap().is_some());
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(f.load("story:e"), Ok(None));
}

#[test]
fn writes_made_while_redis_is_down_arrive_when_it_is_back_within_the_bound() {
    let mut f = fixture(StoryOptions {
        max_pending_stories: 3,
        ..Default::default()
    });
    let s = |v| StoryChange::Section(section("a", v, "{}", "ann"));
    f.send("story:before", vec![s(1)], true);
    assert!(f.load("story:before").unwrap().is_some());
    let mut sync = f.client.synced();

    f.redis.kill();
    // A load while Redis is down fails promptly, and again at once.
    let t = Instant::now();
    assert_eq!(f.load("story:before"), Err(StoryStoreError::Unavailable));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(f.load("story:before"), Err(StoryStoreError::Unavailable));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );

    // Five stories change while Redis is down; three may wait.
    for i in 0..5 {
        f.send(&format!("story:d{i}"), vec![s(i + 10)], true);
    }
    let deadline = Instant::now() + ANSWER;
    while f.metrics.dropped(StoryDrop::PendingOverflow) < 2
        || f.metrics.write_errors(StoryWriteError::Unavailable) == 0
    {
        assert!(Instant::now() < deadline, "the overflow and a failed batch");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        f.client.is_behind(&sync),
        "a loss makes every story's next write whole"
    );
    assert!(f.metrics.pending() >= 1 && f.metrics.pending() <= 3);

    f.redis.restart();
    // The restarted server is empty; what waited arrives.
    for i in 2..5 {
        let rec = f
            .load_eventually(&format!("story:d{i}"))
            .unwrap_or_else(|| panic!("story:d{i} arrived"));
        assert_eq!(rec.sections[0].version, i + 10);
    }
    assert_eq!(f.metrics.dropped(StoryDrop::PendingOverflow), 2);
    for i in 0..2 {
        assert_eq!(f.load(&format!("story:d{i}")), Ok(None), "d{i} was dropped");
    }
    // The next write of a story behind is whole, and then it is in step.
    let whole = StoryRecord {
        channel: "story:before".into(),
        sections: vec![section("a", 2, "{}", "ann")],
        locks: vec![],
        active: true,
    };
    let delta = StoryWrite {
        channel: "story:before".into(),
        changes: vec![s(2)],
        active: true,
    };
    let out = f.client.write(&mut sync, delta, || whole.clone());
    assert_eq!(out, StoryWriteOutcome::QueuedWhole);
    assert!(!f.client.is_behind(&sync));
    assert_eq!(f.load("story:before").unwrap(), Some(whole));
    let deadline = Instant::now() + ANSWER;
    while f.metrics.pending() != 0 {
        assert!(Instant::now() < deadline, "pending {}", f.metrics.pending());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn redis_down_at_start_is_not_fatal() {
    let mut f = fixture(StoryOptions::default());
    f.redis.kill();
    f.send(
        "story:s",
        vec![StoryChange::Section(section("a", 1, "1", "u"))],
        true,
    );
    assert_eq!(f.load("story:s"), Err(StoryStoreError::Unavailable));
    f.redis.restart();
    assert!(f.load_eventually("story:s").is_some());
}

#[test]
fn a_stalled_redis_answers_loads_at_the_timeout_and_catches_up() {
    let f = fixture(StoryOptions {
        timeout: Duration::from_millis(300),
        ..Default::default()
    });
    assert_eq!(f.load("warm"), Ok(None));
    f.redis.pause(true);
    let t = Instant::now();
    f.send(
        "story:p",
        vec![StoryChange::Section(section("a", 1, "1", "u"))],
        true,
    );
    assert_eq!(f.load("story:p"), Err(StoryStoreError::Unavailable));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "answered at the timeout, not before nor much after: {waited:?}"
    );
    f.redis.pause(false);
    let rec = f.load_eventually("story:p").expect("the write arrived");
    assert_eq!(rec.sections[0].version, 1);
}

#[test]
fn what_someone_else_wrote_is_skipped_and_counted() {
    let f = fixture(StoryOptions::default());
    let key = "wsedge:story:story:x";
    redis_cmd::<()>(
        &f.url(),
        &[
            "HSET",
            key,
            "s:good",
            r#"{"v":2,"w":"ann","d":{"k":1},"future":true}"#,
            "s:bad",
            "not json",
            "s:wrong",
            r#"{"v":"2","w":"ann","d":1}"#,
            "l:bad",
            "{}",
            "l:good",
            r#"{"u":"ann","c":"c1","e":5}"#,
            "x:later",
            "anything",
            "s:",
            r#"{"v":1,"w":"a","d":1}"#,
        ],
    );
    let rec = f.load("story:x").unwrap().unwrap();
    assert_eq!(rec.sections, vec![section("good", 2, r#"{"k":1}"#, "ann")]);
    assert_eq!(rec.locks, vec![lock("good", "ann", "c1", 5)]);
    assert_eq!(f.metrics.malformed_fields(), 4);

    // A key of another type: the load says malformed...
    redis_cmd::<()>(&f.url(), &["SET", "wsedge:story:story:str", "x"]);
    assert_eq!(f.load("story:str"), Err(StoryStoreError::Malformed));
    assert_eq!(f.metrics.loads(Err(StoryStoreError::Malformed)), 1);
    // ...and a write to it is refused by Redis, dropped and counted,
    // without holding up the other stories of its batch.
    let epoch = f.client.loss_epoch();
    f.send(
        "story:str",
        vec![StoryChange::Section(section("a", 1, "1", "u"))],
        true,
    );
    f.send(
        "story:fine",
        vec![StoryChange::Section(section("a", 1, "1", "u"))],
        true,
    );
    assert!(f.load("story:fine").unwrap().is_some());
    assert_eq!(f.metrics.write_errors(StoryWriteError::Refused), 1);
    assert_eq!(f.metrics.dropped(StoryDrop::Refused), 1);
    assert!(f.client.loss_epoch() > epoch);
    let s: String = redis_cmd(&f.url(), &["GET", "wsedge:story:story:str"]);
    assert_eq!(s, "x", "untouched");
}

/// A shard's story session, as far as persistence goes: the state, its
/// sync, and writes that fall back to whole rewrites after a loss.
struct Session {
    channel: &'static str,
    versions: BTreeMap<String, u64>,
    sync: StorySync,
}

fn record_of(channel: &str, versions: &BTreeMap<String, u64>) -> StoryRecord {
    StoryRecord {
        channel: channel.into(),
        sections: versions
            .iter()
            .map(|(id, v)| section(id, *v, &v.to_string(), "w"))
            .collect(),
        locks: vec![],
        active: true,
    }
}

impl Session {
    fn record(&self) -> StoryRecord {
        record_of(self.channel, &self.versions)
    }

    fn update(&mut self, client: &StoryClient, id: String) -> StoryWriteOutcome {
        let v = self.versions.entry(id.clone()).or_insert(0);
        *v += 1;
        let delta = StoryWrite {
            channel: self.channel.into(),
            changes: vec![StoryChange::Section(section(&id, *v, &v.to_string(), "w"))],
            active: true,
        };
        let (channel, versions) = (self.channel, &self.versions);
        client.write(&mut self.sync, delta, || record_of(channel, versions))
    }
}

#[test]
fn a_full_queue_is_counted_never_blocks_and_the_story_converges() {
    let f = fixture(StoryOptions {
        queue_capacity: 1,
        ..Default::default()
    });
    let mut s = Session {
        channel: "story:q",
        versions: BTreeMap::new(),
        sync: StorySync::DIRTY,
    };
    let t = Instant::now();
    let mut dropped = 0;
    for i in 0..30_000u32 {
        if let StoryWriteOutcome::Dropped(reason) = s.update(&f.client, format!("s{}", i % 20)) {
            assert_eq!(reason, StoryDrop::QueueFull);
            dropped += 1;
        }
    }
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    assert!(dropped > 0, "a queue of 1 under a tight loop fills");
    assert_eq!(f.metrics.dropped(StoryDrop::QueueFull), dropped);
    // One more change, retried until the queue takes it (as the next
    // change of a live story would come).
    let deadline = Instant::now() + ANSWER;
    while let StoryWriteOutcome::Dropped(_) = s.update(&f.client, "s0".into()) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    let deadline = Instant::now() + ANSWER;
    let rec = loop {
        match f.client.load(StoryLoad {
            shard: 0,
            request: 1,
            channel: "story:q".into(),
        }) {
            Ok(()) => break f.answer().result.unwrap().expect("stored"),
            Err(r) => assert_eq!(r.error, StoryStoreError::Busy),
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(rec, s.record(), "Redis holds exactly the session's story");
}

#[test]
fn shutdown_flushes_what_is_buffered_and_then_refuses() {
    let mut f = fixture(StoryOptions {
        flush_interval: Duration::from_secs(30),
        ..Default::default()
    });
    f.send(
        "story:z",
        vec![StoryChange::Section(section("a", 3, "1", "u"))],
        true,
    );
    f.worker.take().unwrap().shutdown();
    let raw: String = redis_cmd(&f.url(), &["HGET", "wsedge:story:story:z", "s:a"]);
    assert_eq!(raw, r#"{"v":3,"w":"u","d":1}"#);
    assert_eq!(f.metrics.dropped(StoryDrop::Stopped), 0);
    let mut sync = f.client.synced();
    let out = f.client.write(
        &mut sync,
        StoryWrite {
            channel: "story:z".into(),
            changes: vec![],
            active: false,
        },
        || panic!("not behind"),
    );
    assert_eq!(out, StoryWriteOutcome::Dropped(StoryDrop::Stopped));
    let r = f
        .client
        .load(StoryLoad {
            shard: 0,
            request: 9,
            channel: "story:z".into(),
        })
        .unwrap_err();
    assert_eq!(r.error, StoryStoreError::Unavailable);
}

#[test]
fn shutdown_with_redis_down_is_bounded_and_counts_what_is_left() {
    let mut f = fixture(StoryOptions {
        timeout: Duration::from_millis(300),
        flush_interval: Duration::from_secs(30),
        ..Default::default()
    });
    assert_eq!(f.load("warm"), Ok(None));
    f.redis.kill();
    for i in 0..3 {
        f.send(
            &format!("story:left{i}"),
            vec![StoryChange::Section(section("a", 1, "1", "u"))],
            true,
        );
    }
    let t = Instant::now();
    f.worker.take().unwrap().shutdown();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(f.metrics.dropped(StoryDrop::Stopped), 3);
    assert_eq!(f.metrics.pending(), 0);
}

#[test]
fn answers_reach_shard_inboxes_and_metrics_are_exported() {
    let redis = RedisServer::start();
    let inboxes: Arc<[Arc<Inbox>]> = (0..2)
        .map(|_| Arc::new(Inbox::new(1).unwrap()))
        .collect::<Vec<_>>()
        .into();
    // Shard 1's inbox is full for the whole test.
    inboxes[1].push(ShardMsg::Drain).unwrap();
    let metrics = wsedge::metrics::Metrics::new();
    let sm = metrics.stories();
    let worker = spawn_story_worker(
        &redis.url(),
        StoryOptions::default(),
        InboxSink(inboxes.clone()),
        sm.clone(),
    )
    .unwrap();
    let client = worker.client();
    let mut sync = client.synced();
    let delta = StoryWrite {
        channel: "story:i".into(),
        changes: vec![StoryChange::Section(section("a", 1, "{}", "u"))],
        active: true,
    };
    assert_eq!(
        client.write(&mut sync, delta, || panic!("not behind")),
        StoryWriteOutcome::Queued
    );
    client
        .load(StoryLoad {
            shard: 0,
            request: 5,
            channel: "story:i".into(),
        })
        .unwrap();
    let deadline = Instant::now() + ANSWER;
    let msg = loop {
        if let Some(msg) = inboxes[0].pop() {
            break msg;
        }
        assert!(Instant::now() < deadline, "no answer in shard 0's inbox");
        std::thread::sleep(Duration::from_millis(5));
    };
    match msg {
        ShardMsg::StoryLoaded(a) => {
            assert_eq!(a.request, 5);
            assert_eq!(a.result.unwrap().unwrap().sections[0].version, 1);
        }
        other => panic!("expected a story answer, got {other:?}"),
    }
    client
        .load(StoryLoad {
            shard: 1,
            request: 6,
            channel: "story:none".into(),
        })
        .unwrap();
    while sm.answers_dropped() == 0 {
        assert!(Instant::now() < deadline, "the drop was never counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(inboxes[1].pop(), Some(ShardMsg::Drain)));
    assert!(inboxes[1].pop().is_none(), "dropped, not queued");
    worker.shutdown();

    let text = metrics.encode();
    for line in [
        "wsedge_story_writes_total 1",
        "wsedge_story_loads_total{result=\"found\"} 1",
        "wsedge_story_loads_total{result=\"absent\"} 1",
        "wsedge_story_loads_total{result=\"unavailable\"} 0",
        "wsedge_story_loads_total{result=\"busy\"} 0",
        "wsedge_story_loads_total{result=\"malformed\"} 0",
        "wsedge_story_write_errors_total{error=\"unavailable\"} 0",
        "wsedge_story_write_errors_total{error=\"refused\"} 0",
        "wsedge_story_writes_dropped_total{reason=\"queue_full\"} 0",
        "wsedge_story_writes_dropped_total{reason=\"pending_overflow\"} 0",
        "wsedge_story_writes_dropped_total{reason=\"refused\"} 0",
        "wsedge_story_writes_dropped_total{reason=\"invalid\"} 0",
        "wsedge_story_writes_dropped_total{reason=\"stopped\"} 0",
        "wsedge_story_malformed_fields_total 0",
        "wsedge_story_load_answers_dropped_total 1",
        "wsedge_story_pending 0",
        "wsedge_story_batch_seconds_bucket{le=\"0.0001\"}",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}
