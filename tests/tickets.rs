//! The ticket worker (`sidecar::tickets`) against a real `redis-server`:
//! one-time use, unknown and expired tickets, malformed claims, ticket
//! strings refused before Redis, Redis killed and restarted, Redis
//! stalled, a full queue, the in-flight bound, many threads at once,
//! shutdown, and answers pushed into real shard inboxes.

mod common;

use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use wsedge::bridge::{Inbox, ShardMsg};
use wsedge::engine::subs::ConnRef;
use wsedge::sidecar::tickets::{
    InboxSink, TicketAnswer, TicketClient, TicketError, TicketMetrics, TicketOptions,
    TicketRequest, TicketWorker, spawn_ticket_worker,
};

/// Generous upper bound for "answered at all".
const ANSWER: Duration = Duration::from_secs(15);

struct Fixture {
    redis: RedisServer,
    worker: Option<TicketWorker>,
    client: TicketClient,
    answers: Receiver<TicketAnswer>,
    metrics: TicketMetrics,
}

fn fixture(opts: TicketOptions) -> Fixture {
    let redis = RedisServer::start();
    let (tx, answers) = channel();
    let tx = Mutex::new(tx);
    let sink = move |_shard: usize, a: Box<TicketAnswer>| {
        let _ = tx.lock().unwrap().send(*a);
        Ok(())
    };
    let metrics = TicketMetrics::default();
    let worker = spawn_ticket_worker(&redis.url(), opts, sink, metrics.clone()).unwrap();
    Fixture {
        client: worker.client(),
        worker: Some(worker),
        redis,
        answers,
        metrics,
    }
}

fn request(id: u32, ticket: &str) -> TicketRequest {
    TicketRequest {
        shard: 0,
        conn: ConnRef {
            idx: id,
            generation: 1,
        },
        id,
        ticket: ticket.into(),
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

/// `SET wsedge:ticket:<t> <json> EX 30`, as a backend would.
fn issue(url: &str, ticket: &str, claims: &str) {
    let key = format!("wsedge:ticket:{ticket}");
    redis_cmd::<()>(url, &["SET", &key, claims, "EX", "30"]);
}

/// How many `GETDEL`s Redis has run.
fn getdel_calls(url: &str) -> u64 {
    let info: String = redis_cmd(url, &["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_getdel:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

impl Fixture {
    fn url(&self) -> String {
        self.redis.url()
    }

    fn redeem(&self, id: u32, ticket: &str) -> TicketAnswer {
        self.client
            .redeem(request(id, ticket))
            .unwrap_or_else(|r| panic!("refused at once: {:?}", r.error));
        self.answer()
    }

    fn answer(&self) -> TicketAnswer {
        self.answers
            .recv_timeout(ANSWER)
            .expect("an answer within the bound")
    }

    /// Retries (as a client would) until `ticket`, issued fresh before
    /// every try, is redeemed.
    fn redeem_eventually(&self, ticket: &str) -> TicketAnswer {
        let deadline = Instant::now() + ANSWER;
        let mut id = 10_000;
        loop {
            issue(&self.url(), ticket, r#"{"sub":"back"}"#);
            let a = self.redeem(id, ticket);
            if a.result.is_ok() {
                return a;
            }
            assert_eq!(a.result, Err(TicketError::Unavailable));
            assert!(Instant::now() < deadline, "Redis did not come back");
            std::thread::sleep(Duration::from_millis(100));
            id += 1;
        }
    }
}

#[test]
fn a_ticket_works_once() {
    let f = fixture(TicketOptions::default());
    issue(
        &f.url(),
        "t-1",
        r#"{"sub":"42","info":{"name":"Ann"},"channels":["news"],"exp":1900000000}"#,
    );
    let a = f.redeem(1, "t-1");
    assert_eq!((a.conn.idx, a.id), (1, 1));
    let claims = a.result.expect("claims");
    assert_eq!(claims.sub, "42");
    assert_eq!(claims.info.as_deref(), Some(&br#"{"name":"Ann"}"#[..]));
    assert_eq!(claims.channels, ["news"]);
    assert_eq!(claims.exp, Some(1_900_000_000));
    let exists: i64 = redis_cmd(&f.url(), &["EXISTS", "wsedge:ticket:t-1"]);
    assert_eq!(exists, 0, "GETDEL removed it");

    let again = f.redeem(2, "t-1");
    assert_eq!(again.result, Err(TicketError::Unknown), "second use");
    let never = f.redeem(3, "never-issued");
    assert_eq!(never.result, Err(TicketError::Unknown));
    assert_eq!(f.metrics.redeemed(), 1);
    assert_eq!(f.metrics.failed(TicketError::Unknown), 2);
}

#[test]
fn malformed_claims_are_refused_and_consumed() {
    let f = fixture(TicketOptions::default());
    issue(&f.url(), "bad-json", "{not json");
    issue(&f.url(), "bad-type", r#"{"sub":42}"#);
    let key = "wsedge:ticket:a-hash";
    redis_cmd::<()>(&f.url(), &["HSET", key, "sub", "42"]);
    for (id, t) in [(1, "bad-json"), (2, "bad-type"), (3, "a-hash")] {
        assert_eq!(f.redeem(id, t).result, Err(TicketError::Malformed), "{t}");
    }
    assert_eq!(f.redeem(4, "bad-json").result, Err(TicketError::Unknown));
    assert_eq!(f.metrics.failed(TicketError::Malformed), 3);
    assert_eq!(f.metrics.failed(TicketError::Unknown), 1);
    assert_eq!(f.metrics.failed(TicketError::Unavailable), 0);
}

#[test]
fn an_expired_ticket_is_unknown() {
    let f = fixture(TicketOptions::default());
    let key = "wsedge:ticket:short";
    redis_cmd::<()>(&f.url(), &["SET", key, r#"{"sub":"u"}"#, "PX", "50"]);
    let deadline = Instant::now() + ANSWER;
    while redis_cmd::<i64>(&f.url(), &["EXISTS", key]) == 1 {
        assert!(Instant::now() < deadline, "the TTL never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(f.redeem(1, "short").result, Err(TicketError::Unknown));
}

#[test]
fn invalid_ticket_strings_never_reach_redis() {
    let f = fixture(TicketOptions::default());
    issue(&f.url(), "ok", "{}");
    assert!(f.redeem(1, "ok").result.is_ok());
    let before = getdel_calls(&f.url());
    assert_eq!(before, 1);
    let long = "x".repeat(257);
    for bad in ["", "two words", "new\nline", "*\r\nFLUSHALL", "ünï", &long] {
        let r = f.client.redeem(request(2, bad)).expect_err(bad);
        assert_eq!(r.error, TicketError::Invalid, "{bad:?}");
        assert_eq!(r.into_answer().result, Err(TicketError::Invalid));
    }
    assert_eq!(getdel_calls(&f.url()), before);
    assert_eq!(f.metrics.failed(TicketError::Invalid), 6);
    assert!(
        f.answers.try_recv().is_err(),
        "nothing goes through the sink"
    );
}

#[test]
fn redis_down_is_temporary_and_recovers_on_the_same_port() {
    let mut f = fixture(TicketOptions::default());
    issue(&f.url(), "before", r#"{"sub":"a"}"#);
    assert!(f.redeem(1, "before").result.is_ok());

    f.redis.kill();
    for id in 2..5 {
        let a = f.redeem(id, "any");
        assert_eq!(a.result, Err(TicketError::Unavailable), "try {id}");
    }
    assert!(f.metrics.failed(TicketError::Unavailable) >= 3);

    f.redis.restart();
    let a = f.redeem_eventually("after");
    assert_eq!(a.result.unwrap().sub, "back");
    assert_eq!(f.redeem(99, "after").result, Err(TicketError::Unknown));
}

#[test]
fn redis_down_at_start_is_not_fatal() {
    let mut f = fixture(TicketOptions::default());
    f.redis.kill();
    assert_eq!(f.redeem(1, "x").result, Err(TicketError::Unavailable));
    f.redis.restart();
    assert!(f.redeem_eventually("later").result.is_ok());
}

#[test]
fn a_stalled_redis_times_out() {
    let f = fixture(TicketOptions {
        timeout: Duration::from_millis(300),
        ..Default::default()
    });
    assert_eq!(f.redeem(1, "warm").result, Err(TicketError::Unknown));
    f.redis.pause(true);
    assert_eq!(f.redeem(2, "x").result, Err(TicketError::Unavailable));
    f.redis.pause(false);
    assert!(f.redeem_eventually("resumed").result.is_ok());
}

#[test]
fn a_full_queue_answers_busy_at_once() {
    let f = fixture(TicketOptions {
        queue_capacity: 2,
        max_in_flight: 1,
        timeout: Duration::from_secs(60),
    });
    assert_eq!(f.redeem(1, "warm").result, Err(TicketError::Unknown));
    f.redis.pause(true);
    let mut accepted = 0;
    let mut busy = 0;
    for id in 0..10 {
        match f.client.redeem(request(100 + id, "t")) {
            Ok(()) => accepted += 1,
            Err(r) => {
                assert_eq!(r.error, TicketError::Busy);
                busy += 1;
            }
        }
    }
    // One in flight, one taken off the queue and waiting for a slot, two
    // queued: at most four get in, however fast the worker is.
    assert!((1..=4).contains(&accepted), "accepted {accepted}");
    assert_eq!(busy, 10 - accepted);
    assert_eq!(f.metrics.failed(TicketError::Busy), busy);
    f.redis.pause(false);
    for _ in 0..accepted {
        assert_eq!(f.answer().result, Err(TicketError::Unknown));
    }
}

#[test]
fn in_flight_redemptions_are_bounded() {
    let f = fixture(TicketOptions {
        queue_capacity: 64,
        max_in_flight: 4,
        timeout: Duration::from_secs(60),
    });
    assert_eq!(f.redeem(1, "warm").result, Err(TicketError::Unknown));
    f.redis.pause(true);
    for id in 0..40 {
        f.client.redeem(request(100 + id, "t")).expect("queued");
    }
    let deadline = Instant::now() + ANSWER;
    while f.metrics.in_flight() < 4 {
        assert!(Instant::now() < deadline, "never reached 4 in flight");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut peak = 0;
    for _ in 0..50 {
        peak = peak.max(f.metrics.in_flight());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(peak, 4, "never more than max_in_flight");
    f.redis.pause(false);
    let mut ids: Vec<u32> = (0..40).map(|_| f.answer().id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (100..140).collect::<Vec<_>>());
    assert_eq!(getdel_calls(&f.url()), 41);
    // A task leaves the gauge just after its answer was delivered.
    while f.metrics.in_flight() != 0 {
        assert!(
            Instant::now() < deadline + ANSWER,
            "in-flight never went back to 0"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_redemptions_of_one_ticket_succeed_once() {
    let f = fixture(TicketOptions::default());
    const TICKETS: u32 = 200;
    for t in 0..TICKETS {
        issue(&f.url(), &format!("c-{t}"), &format!(r#"{{"sub":"u{t}"}}"#));
    }
    // Four "shards" each try every ticket.
    std::thread::scope(|s| {
        for shard in 0..4 {
            let client = f.client.clone();
            s.spawn(move || {
                for t in 0..TICKETS {
                    let mut req = request(t, &format!("c-{t}"));
                    req.shard = shard;
                    // The queue (1024) holds everything; no Busy here.
                    client.redeem(req).expect("queued");
                }
            });
        }
    });
    let mut wins = vec![0u32; TICKETS as usize];
    for _ in 0..TICKETS * 4 {
        let a = f.answer();
        match a.result {
            Ok(c) => {
                assert_eq!(c.sub, format!("u{}", a.id));
                wins[a.id as usize] += 1;
            }
            Err(e) => assert_eq!(e, TicketError::Unknown),
        }
    }
    assert!(
        wins.iter().all(|&w| w == 1),
        "each ticket redeemed exactly once"
    );
    assert_eq!(f.metrics.redeemed(), u64::from(TICKETS));
    assert_eq!(
        f.metrics.failed(TicketError::Unknown),
        u64::from(TICKETS) * 3
    );
}

#[test]
fn shutdown_answers_everything_queued() {
    let mut f = fixture(TicketOptions {
        queue_capacity: 16,
        max_in_flight: 1,
        timeout: Duration::from_millis(500),
    });
    assert_eq!(f.redeem(1, "warm").result, Err(TicketError::Unknown));
    f.redis.pause(true);
    for id in 0..5 {
        f.client.redeem(request(100 + id, "t")).expect("queued");
    }
    f.worker.take().unwrap().shutdown();
    for _ in 0..5 {
        assert_eq!(f.answer().result, Err(TicketError::Unavailable));
    }
    let r = f.client.redeem(request(200, "t")).expect_err("stopped");
    assert_eq!(r.error, TicketError::Unavailable);
    f.redis.pause(false);
}

#[test]
fn answers_reach_shard_inboxes_and_full_ones_are_counted() {
    let redis = RedisServer::start();
    let inboxes: Arc<[Arc<Inbox>]> = (0..2)
        .map(|_| Arc::new(Inbox::new(1).unwrap()))
        .collect::<Vec<_>>()
        .into();
    // Shard 1's inbox is full for the whole test.
    inboxes[1].push(ShardMsg::Drain).unwrap();
    let metrics = wsedge::metrics::Metrics::new();
    let tm = metrics.tickets();
    let worker = spawn_ticket_worker(
        &redis.url(),
        TicketOptions::default(),
        InboxSink(inboxes.clone()),
        tm.clone(),
    )
    .unwrap();
    let client = worker.client();
    issue(&redis.url(), "to-0", r#"{"sub":"zero"}"#);
    client.redeem(request(5, "to-0")).unwrap();
    let deadline = Instant::now() + ANSWER;
    let answer = loop {
        if let Some(msg) = inboxes[0].pop() {
            break msg;
        }
        assert!(Instant::now() < deadline, "no answer in shard 0's inbox");
        std::thread::sleep(Duration::from_millis(5));
    };
    match answer {
        ShardMsg::Ticket(a) => {
            assert_eq!(a.id, 5);
            assert_eq!(a.result.unwrap().sub, "zero");
        }
        other => panic!("expected a ticket answer, got {other:?}"),
    }

    let mut to_1 = request(6, "to-1");
    to_1.shard = 1;
    client.redeem(to_1).unwrap();
    while tm.dropped() == 0 {
        assert!(Instant::now() < deadline, "the drop was never counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(inboxes[1].pop(), Some(ShardMsg::Drain)));
    assert!(
        inboxes[1].pop().is_none(),
        "the answer was dropped, not queued"
    );
    worker.shutdown();

    let text = metrics.encode();
    for line in [
        "wsedge_ticket_redemptions_total{result=\"redeemed\"} 1",
        "wsedge_ticket_redemptions_total{result=\"unknown\"} 1",
        "wsedge_ticket_redemptions_total{result=\"malformed\"} 0",
        "wsedge_ticket_answers_dropped_total 1",
        "wsedge_ticket_redemptions_in_flight 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}
