//! The JetStream consumer: its options and the consumer it wants (pure),
//! and against a real `nats-server` (JetStream on, loopback, one per
//! test): messages reach the node with their fields; `Ok` acks, a
//! dropped ack comes again, `Err` dead-letters and terms; the lag; an
//! incompatible existing consumer is left alone; a stop hands what it
//! held to the next consumer at once. Without a `nats-server` binary the
//! server tests say so loudly and return.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use super::run::{consumer_config, incompatible};
use super::*;
use crate::sidecar::durable::worker::default_connect_options;

#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../../../../tests/common/nats_server.rs"]
mod nats_server;
use nats_server::NatsServer;

/// Longest wait for anything that should happen.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The consumer's name in these tests.
const GROUP: &str = "grp";

fn opts(url: &str) -> JsInboundOptions {
    JsInboundOptions::new(url, GROUP, vec![("notify.>".into(), None)])
}

#[test]
fn options_are_checked() {
    assert_eq!(opts("nats://127.0.0.1:4222").validate(), Ok(()));
    type Change = fn(&mut JsInboundOptions);
    let bad: [(&str, Change); 8] = [
        ("nats_url", |o| o.nats_url = "http://x".into()),
        ("durable", |o| o.durable = "a.b".into()),
        ("subjects is empty", |o| o.subjects.clear()),
        ("not a NATS subject", |o| o.subjects[0].0 = "a..b".into()),
        ("not a stream name", |o| {
            o.subjects[0].1 = Some("A B".into())
        }),
        ("overlaps", |o| o.subjects.push(("notify.a".into(), None))),
        ("dead_letter", |o| o.dead_letter = "dlq.>".into()),
        ("retry_min", |o| o.retry_max = Duration::ZERO),
    ];
    for (want, change) in bad {
        let mut o = opts("nats://127.0.0.1:4222");
        change(&mut o);
        let e = o.validate().unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn the_consumer_wsedge_creates_and_the_ones_it_accepts() {
    let o = opts("nats://127.0.0.1:4222");
    let one = consumer_config(&o, &["notify.>".into()]);
    assert_eq!(one.durable_name.as_deref(), Some(GROUP));
    assert_eq!(one.ack_policy, consumer::AckPolicy::Explicit);
    assert_eq!(one.ack_wait, Duration::from_secs(30));
    assert_eq!(one.max_ack_pending, 4_096);
    assert_eq!(one.filter_subject, "notify.>");
    assert!(one.filter_subjects.is_empty());
    let two = consumer_config(&o, &["a.>".into(), "b.*".into()]);
    assert_eq!(two.filter_subject, "");
    assert_eq!(two.filter_subjects, ["a.>", "b.*"]);
    // What the server gives back for them.
    let as_existing = |c: &consumer::pull::Config| consumer::Config {
        durable_name: c.durable_name.clone(),
        ack_policy: c.ack_policy,
        filter_subject: c.filter_subject.clone(),
        filter_subjects: c.filter_subjects.clone(),
        max_ack_pending: 10,
        ..Default::default()
    };
    assert_eq!(incompatible(&as_existing(&one), &["notify.>".into()]), None);
    assert_eq!(
        incompatible(&as_existing(&two), &["b.*".into(), "a.>".into()]),
        None
    );
    // A single filter given as a list is the same filter.
    let listed = consumer::Config {
        filter_subjects: vec!["notify.>".into()],
        ..as_existing(&one)
    };
    assert_eq!(incompatible(&listed, &["notify.>".into()]), None);
    let why = |c: consumer::Config| incompatible(&c, &["notify.>".into()]).unwrap();
    assert!(why(as_existing(&two)).contains("filters"));
    assert!(
        why(consumer::Config {
            filter_subject: String::new(),
            ..as_existing(&one)
        })
        .contains("filters")
    );
    assert!(
        why(consumer::Config {
            ack_policy: consumer::AckPolicy::All,
            ..as_existing(&one)
        })
        .contains("ack policy")
    );
    assert!(
        why(consumer::Config {
            deliver_subject: Some("x".into()),
            ..as_existing(&one)
        })
        .contains("push")
    );
    assert!(
        why(consumer::Config {
            headers_only: true,
            ..as_existing(&one)
        })
        .contains("headers only")
    );
}

/// A server with stream `BACKEND` over `notify.>`, and a runtime for the
/// test's own clients.
struct Setup {
    nats: NatsServer,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    fn start() -> Option<Setup> {
        if !NatsServer::available() {
            return None;
        }
        let s = Setup {
            nats: NatsServer::start(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        s.rt.block_on(async {
            s.js()
                .await
                .create_stream(stream::Config {
                    name: "BACKEND".into(),
                    subjects: vec!["notify.>".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
        });
        Some(s)
    }

    async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.nats.url()).await.unwrap())
    }

    /// Publishes to `subject` with `headers`, stored.
    fn publish(&self, subject: &str, headers: &[(&str, &str)], payload: &str) {
        self.rt.block_on(async {
            let mut h = async_nats::HeaderMap::new();
            for (k, v) in headers {
                h.insert(*k, *v);
            }
            self.js()
                .await
                .publish_with_headers(subject.to_owned(), h, payload.to_owned().into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    }

    /// The consumer's info.
    fn info(&self) -> consumer::Info {
        self.rt.block_on(async {
            let s = self.js().await.get_stream("BACKEND").await.unwrap();
            s.consumer_info(GROUP).await.unwrap()
        })
    }

    /// The next record from `q`.
    fn recv(&self, q: &mut JsQueue) -> (JsRecord, InboundAck) {
        self.rt
            .block_on(async { tokio::time::timeout(TIMEOUT, q.recv()).await })
            .expect("a record in time")
            .expect("the queue open")
    }

    /// Whether `q` stays empty for `d`.
    fn quiet(&self, q: &mut JsQueue, d: Duration) -> bool {
        self.rt
            .block_on(async { tokio::time::timeout(d, q.recv()).await })
            .is_err()
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn messages_are_acked_retried_and_dead_lettered() {
    let Some(s) = Setup::start() else { return };
    // The dead letters, read as a backend would.
    let (client, mut dead) = s.rt.block_on(async {
        let c = async_nats::connect(s.nats.url()).await.unwrap();
        let sub = c.subscribe(INBOUND_DEAD_LETTER).await.unwrap();
        c.flush().await.unwrap();
        (c, sub)
    });
    s.publish("notify.alice", &[("team", "red")], r#"{"n":1}"#);
    s.publish("notify.bob", &[], "two");
    s.publish("notify.carol", &[("Nats-Msg-Id", "m-3")], "three");
    let mut o = opts(&s.nats.url());
    o.retry_min = Duration::from_millis(20);
    let (mut q, metrics, thread) = start(o, default_connect_options).unwrap();
    let (a, ack_a) = s.recv(&mut q);
    assert_eq!(
        (
            a.stream.as_str(),
            a.sequence,
            a.subject.as_str(),
            a.delivered
        ),
        ("BACKEND", 1, "notify.alice", 1)
    );
    assert_eq!(a.header("team").as_deref(), Some("red"));
    assert_eq!(&a.payload[..], br#"{"n":1}"#);
    let (b, ack_b) = s.recv(&mut q);
    let (c, ack_c) = s.recv(&mut q);
    assert_eq!((b.sequence, c.sequence), (2, 3));
    ack_a.send(Ok(())).unwrap();
    // Not now: comes again, after the others, delivered twice.
    drop(ack_b);
    ack_c.send(Err("no such course".into())).unwrap();
    let (again, ack_again) = s.recv(&mut q);
    assert_eq!((again.sequence, again.delivered), (2, 2));
    ack_again.send(Ok(())).unwrap();
    let letter =
        s.rt.block_on(async { tokio::time::timeout(TIMEOUT, dead.next()).await })
            .expect("a dead letter in time")
            .unwrap();
    let h = letter.headers.clone().unwrap();
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(get("Wsedge-Dlq-Reason").as_deref(), Some("no such course"));
    assert_eq!(get("Wsedge-Dlq-Stream").as_deref(), Some("BACKEND"));
    assert_eq!(get("Wsedge-Dlq-Sequence").as_deref(), Some("3"));
    assert_eq!(get("Wsedge-Dlq-Subject").as_deref(), Some("notify.carol"));
    assert_eq!(get("Wsedge-Dlq-Msg-Id").as_deref(), Some("m-3"));
    assert_eq!(get("Nats-Msg-Id").as_deref(), Some("wsedge-dlq:BACKEND:3"));
    assert_eq!(&letter.payload[..], b"three");
    // Everything settled: nothing pending on the server, nothing more here.
    eventually("the consumer settled", || {
        let i = s.info();
        i.num_pending == 0 && i.num_ack_pending == 0
    });
    assert_eq!(s.info().ack_floor.stream_sequence, 3);
    eventually("the lag read", || metrics.snapshot().lag == 0);
    assert!(s.quiet(&mut q, Duration::from_millis(300)));
    let m = metrics.snapshot();
    assert_eq!(
        (m.received, m.acknowledged, m.redelivered, m.dead_lettered),
        (4, 2, 1, 1)
    );
    // A new message is counted in the lag until it is settled.
    s.publish("notify.dave", &[], "four");
    let (d, ack_d) = s.recv(&mut q);
    eventually("the lag counts it", || metrics.snapshot().lag == 1);
    assert_eq!(metrics.snapshot().in_flight, 1);
    ack_d.send(Ok(())).unwrap();
    assert_eq!(d.sequence, 4);
    eventually("the lag back to 0", || metrics.snapshot().lag == 0);
    thread.shutdown();
    drop(client);
}

#[test]
fn an_incompatible_consumer_is_left_as_it_is() {
    let Some(s) = Setup::start() else { return };
    s.rt.block_on(async {
        let st = s.js().await.get_stream("BACKEND").await.unwrap();
        st.create_consumer(consumer::pull::Config {
            durable_name: Some(GROUP.into()),
            filter_subject: "notify.x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    s.publish("notify.alice", &[], "1");
    let (mut q, metrics, thread) = start(opts(&s.nats.url()), default_connect_options).unwrap();
    assert!(s.quiet(&mut q, Duration::from_millis(1500)));
    assert_eq!(metrics.snapshot().received, 0);
    let i = s.info();
    assert_eq!(i.config.filter_subject, "notify.x", "not changed");
    assert_eq!(i.num_pending, 0, "its own filter takes nothing");
    thread.shutdown();
}

#[test]
fn a_stop_hands_what_it_held_to_the_next_consumer_at_once() {
    let Some(s) = Setup::start() else { return };
    s.publish("notify.alice", &[], "1");
    let (mut q, _, thread) = start(opts(&s.nats.url()), default_connect_options).unwrap();
    let (first, held) = s.recv(&mut q);
    let started = Instant::now();
    thread.shutdown();
    drop(held);
    // The next node of the group has it well before ack_wait (30 s).
    let (mut q2, _, thread2) = start(opts(&s.nats.url()), default_connect_options).unwrap();
    let (again, ack) = s.recv(&mut q2);
    assert_eq!((again.sequence, again.delivered), (first.sequence, 2));
    assert!(started.elapsed() < Duration::from_secs(15));
    ack.send(Ok(())).unwrap();
    eventually("acknowledged", || s.info().num_ack_pending == 0);
    thread2.shutdown();
}
