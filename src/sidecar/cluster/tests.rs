//! The worker against a real `nats-server` (JetStream on, loopback, one
//! per test): membership, interest routing, messages to one node, a NATS
//! restart, a full queue. Without a `nats-server` binary the tests say so
//! loudly and return (CI always has one: `scripts/test-all.sh`).

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::engine::cluster::members::{MemberChange, StoredMember};
use crate::metrics::{ClusterDrop, Received, Sent};

#[allow(dead_code)]
#[path = "../../../tests/common/nats_server.rs"]
mod nats_server;
use nats_server::NatsServer;

/// Longest wait for anything that should happen.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether there is a `nats-server` to test against.
fn have_nats() -> bool {
    NatsServer::available()
}

/// A NATS server, or `None` (with a loud note) if there is no binary.
fn nats() -> Option<NatsServer> {
    have_nats().then(NatsServer::start)
}

/// What a sink saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Msg(Option<String>, Bytes),
    Placement(Vec<String>),
    Link(bool),
    Stored(crate::engine::cluster::stored::StoreAnswer),
}

/// Lets a test hold the worker's thread inside the sink.
struct Gate {
    entered: Mutex<Sender<()>>,
    release: Mutex<Receiver<()>>,
}

struct TestSink {
    tx: Mutex<Sender<Got>>,
    /// Held on a received payload `block`.
    gate: Option<Gate>,
}

impl TestSink {
    fn push(&self, got: Got) {
        let _ = self.tx.lock().unwrap().send(got);
    }
}

impl ClusterSink for TestSink {
    fn received(&self, channel: Option<Arc<str>>, payload: Bytes) -> Result<(), ()> {
        if let Some(gate) = &self.gate
            && payload.as_ref() == b"block"
        {
            gate.entered.lock().unwrap().send(()).unwrap();
            gate.release.lock().unwrap().recv().unwrap();
        }
        self.push(Got::Msg(channel.map(|c| c.to_string()), payload));
        Ok(())
    }

    fn placement(&self, placement: Arc<Placement>) {
        self.push(Got::Placement(
            placement.nodes().map(|n| n.to_string()).collect(),
        ));
    }

    fn link(&self, up: bool) {
        self.push(Got::Link(up));
    }

    fn stored(&self, answer: crate::engine::cluster::stored::StoreAnswer) -> Result<(), ()> {
        self.push(Got::Stored(answer));
        Ok(())
    }
}

/// One worker under test and what its sink saw.
struct Node {
    worker: Option<ClusterWorker>,
    client: ClusterClient,
    rx: Receiver<Got>,
    metrics: ClusterMetrics,
    /// The last link state the sink reported, as seen by [`Node::wait`].
    link: Cell<Option<bool>>,
}

impl Node {
    fn start(url: &str, name: &str, edit: impl FnOnce(&mut ClusterOptions)) -> Node {
        Node::start_gated(url, name, edit, None)
    }

    fn start_gated(
        url: &str,
        name: &str,
        edit: impl FnOnce(&mut ClusterOptions),
        gate: Option<Gate>,
    ) -> Node {
        let mut opts = ClusterOptions::new(url, name);
        // Fast enough for a test, slow enough for a loaded 2-core machine.
        opts.heartbeat_interval = Duration::from_millis(200);
        opts.node_timeout = Duration::from_millis(1500);
        opts.unwatch_linger = Duration::ZERO;
        edit(&mut opts);
        let (tx, rx) = channel();
        let sink = TestSink {
            tx: Mutex::new(tx),
            gate,
        };
        let metrics = ClusterMetrics::default();
        let worker = spawn_cluster_worker(opts, 2, sink, metrics.clone()).expect("spawn");
        Node {
            client: worker.client(),
            worker: Some(worker),
            rx,
            metrics,
            link: Cell::new(None),
        }
    }

    fn send(&self, req: ToCluster) {
        self.client.send(req).expect("queued");
    }

    fn watch(&self, channel: &str, on: bool) {
        self.send(ToCluster::Watch {
            channel: Arc::from(channel),
            on,
        });
    }

    fn publish(&self, channel: &str, payload: &'static [u8]) {
        self.send(ToCluster::Publish {
            channel: Arc::from(channel),
            payload: Bytes::from_static(payload),
        });
    }

    fn to_node(&self, node: &str, payload: &'static [u8]) {
        self.send(ToCluster::ToNode {
            node: Arc::from(node),
            payload: Bytes::from_static(payload),
        });
    }

    /// Waits for the first event `f` accepts, skipping the others.
    fn wait<T>(&self, what: &str, f: impl FnMut(&Got) -> Option<T>) -> T {
        self.wait_for(TIMEOUT, f)
            .unwrap_or_else(|| panic!("timed out waiting for {what}"))
    }

    /// The same for at most `limit`; `None` if it did not come.
    fn wait_for<T>(&self, limit: Duration, mut f: impl FnMut(&Got) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.rx.recv_timeout(left).ok()?;
            if let Got::Link(up) = got {
                self.link.set(Some(up));
            }
            if let Some(t) = f(&got) {
                return Some(t);
            }
        }
    }

    /// Waits for a placement of exactly `nodes`.
    fn wait_nodes(&self, nodes: &[&str]) {
        self.wait(&format!("placement {nodes:?}"), |g| {
            matches!(g, Got::Placement(p) if p == nodes).then_some(())
        });
    }

    /// Waits until the sink's last reported link state is `up` (at once
    /// if it already is).
    fn wait_link(&self, up: bool) {
        if self.link.get() != Some(up) {
            self.wait(&format!("link({up})"), |g| {
                (*g == Got::Link(up)).then_some(())
            });
        }
    }

    /// Every message received up to and including the one carrying
    /// `last`.
    fn messages_until(&self, last: &[u8]) -> Vec<(Option<String>, Bytes)> {
        let mut seen = Vec::new();
        self.wait(
            &format!("message {:?}", String::from_utf8_lossy(last)),
            |g| {
                if let Got::Msg(ch, p) = g {
                    seen.push((ch.clone(), p.clone()));
                    return (p.as_ref() == last).then_some(());
                }
                None
            },
        );
        seen
    }

    fn shutdown(&mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown();
        }
    }
}

fn msg(channel: Option<&str>, payload: &'static [u8]) -> (Option<String>, Bytes) {
    (channel.map(str::to_owned), Bytes::from_static(payload))
}

/// Polls `f` until it holds (metrics move on the worker's thread).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_nodes_see_each_other_and_a_stopped_one_leaves_within_node_timeout() {
    let Some(nats) = nats() else { return };
    let mut a = Node::start(&nats.url(), "a", |_| {});
    let mut b = Node::start(&nats.url(), "b", |_| {});
    // At start each is alone, then both see both.
    a.wait_nodes(&["a"]);
    b.wait_nodes(&["b"]);
    a.wait_nodes(&["a", "b"]);
    b.wait_nodes(&["a", "b"]);
    assert_eq!(a.metrics.nodes(), 2);
    assert!(a.client.is_up() && a.metrics.is_up());
    assert!(a.metrics.sent_count(Sent::Heartbeat) > 0);
    assert!(a.metrics.received_count(Received::Heartbeat) > 0);
    let node_timeout = Duration::from_millis(1500);
    let stopped = Instant::now();
    b.shutdown();
    a.wait_nodes(&["a"]);
    let took = stopped.elapsed();
    // b's last heartbeat was at most one interval before the stop; allow
    // the expiry timer and a loaded machine a little more.
    assert!(
        took <= node_timeout + Duration::from_millis(500),
        "b left after {took:?}"
    );
    assert!(
        took >= node_timeout - Duration::from_millis(400),
        "{took:?}"
    );
    assert_eq!(a.metrics.nodes(), 1);
    a.shutdown();
}

#[test]
fn a_watched_channel_receives_and_an_unwatched_one_does_not() {
    let Some(nats) = nats() else { return };
    let mut a = Node::start(&nats.url(), "a", |_| {});
    let mut b = Node::start(&nats.url(), "b", |_| {});
    a.wait_nodes(&["a", "b"]);
    b.wait_nodes(&["a", "b"]);
    // A Watch on reaches NATS before a's later ToNode: once b has the
    // ToNode, a publication from b on the channel reaches a.
    a.watch("chat:x", true);
    a.watch("chat:y", true);
    a.to_node("b", b"subscribed");
    assert_eq!(b.messages_until(b"subscribed"), [msg(None, b"subscribed")]);
    b.publish("chat:x", b"x1");
    b.publish("chat:y", b"y1");
    assert_eq!(
        a.messages_until(b"y1"),
        [msg(Some("chat:x"), b"x1"), msg(Some("chat:y"), b"y1")]
    );
    assert_eq!(a.metrics.watched(), 2);
    assert_eq!(a.metrics.subscribe_ops(true), 2);

    // Off: x no longer arrives. b's messages keep their order to a, so y2
    // arriving proves x2 (sent before it) was not delivered.
    a.watch("chat:x", false);
    a.to_node("b", b"unwatched");
    b.messages_until(b"unwatched");
    b.publish("chat:x", b"x2");
    b.publish("chat:y", b"y2");
    assert_eq!(a.messages_until(b"y2"), [msg(Some("chat:y"), b"y2")]);
    assert_eq!(a.metrics.subscribe_ops(false), 1);
    assert_eq!(a.metrics.watched(), 1);
    // The channel's subject is the hex of its name; a dot in a name is
    // no subject separator.
    a.watch("chat:a.b", true);
    a.to_node("b", b"dotted");
    b.messages_until(b"dotted");
    b.publish("chat:a.b", b"dot");
    assert_eq!(a.messages_until(b"dot"), [msg(Some("chat:a.b"), b"dot")]);
    // No echo: a's own publication on a channel it watches is not
    // delivered back to it.
    a.publish("chat:y", b"own");
    b.publish("chat:y", b"y3");
    assert_eq!(a.messages_until(b"y3"), [msg(Some("chat:y"), b"y3")]);
    assert_eq!(a.metrics.sent_count(Sent::Publish), 1);
    assert_eq!(b.metrics.received_count(Received::Channel), 0);
    a.shutdown();
    b.shutdown();
}

#[test]
fn ten_thousand_on_off_pairs_cost_at_most_one_sub_and_one_unsub() {
    let Some(nats) = nats() else { return };
    let linger = Duration::from_millis(300);
    let mut a = Node::start(&nats.url(), "a", |o| o.unwatch_linger = linger);
    let mut b = Node::start(&nats.url(), "b", |_| {});
    a.wait_nodes(&["a", "b"]);
    b.wait_nodes(&["a", "b"]);
    for _ in 0..10_000 {
        a.watch("storm", true);
        a.watch("storm", false);
    }
    // A marker to itself behind the burst: once it arrives, the worker
    // has taken the whole burst.
    a.to_node("a", b"burst taken");
    a.messages_until(b"burst taken");
    // Whatever the drains cut the burst into, the channel is subscribed at
    // most once, and unsubscribed once its linger has passed.
    std::thread::sleep(linger + Duration::from_millis(200));
    eventually("the storm to settle", || {
        a.metrics.subscribe_ops(true) == a.metrics.subscribe_ops(false) && a.metrics.watched() == 0
    });
    let (subs, unsubs) = (
        a.metrics.subscribe_ops(true),
        a.metrics.subscribe_ops(false),
    );
    assert!(subs <= 1 && unsubs == subs, "{subs} SUB, {unsubs} UNSUB");
    assert_eq!(a.metrics.watched(), 0);
    // The count is right afterwards: one more on is one subscription that
    // receives.
    a.watch("storm", true);
    a.to_node("b", b"ready");
    b.messages_until(b"ready");
    b.publish("storm", b"after");
    assert_eq!(a.messages_until(b"after"), [msg(Some("storm"), b"after")]);
    assert_eq!(a.metrics.subscribe_ops(true), subs + 1);
    assert_eq!(a.metrics.watched(), 1);
    a.shutdown();
    b.shutdown();
}

#[test]
fn to_node_reaches_only_that_node() {
    let Some(nats) = nats() else { return };
    let mut a = Node::start(&nats.url(), "a", |_| {});
    let mut b = Node::start(&nats.url(), "b", |_| {});
    let mut c = Node::start(&nats.url(), "c", |_| {});
    // Each node's home SUB was sent before its first heartbeat, so once
    // every node has seen every other, every home is subscribed.
    for n in [&a, &b, &c] {
        n.wait_nodes(&["a", "b", "c"]);
    }
    a.to_node("c", b"1");
    a.to_node("b", b"2");
    a.to_node("c", b"3");
    a.to_node("b", b"4");
    // To itself: straight to its own sink, as if from home.a.
    a.to_node("a", b"self");
    assert_eq!(c.messages_until(b"3"), [msg(None, b"1"), msg(None, b"3")]);
    assert_eq!(b.messages_until(b"4"), [msg(None, b"2"), msg(None, b"4")]);
    assert_eq!(a.messages_until(b"self"), [msg(None, b"self")]);
    assert_eq!(a.metrics.sent_count(Sent::ToNode), 4);
    assert_eq!(b.metrics.received_count(Received::Home), 2);
    assert_eq!(c.metrics.received_count(Received::Home), 2);
    assert_eq!(a.metrics.received_count(Received::Home), 0);
    for n in [&mut a, &mut b, &mut c] {
        n.shutdown();
    }
}

#[test]
fn after_a_nats_restart_links_come_back_and_watched_channels_still_receive() {
    let Some(mut nats) = nats() else { return };
    let mut a = Node::start(&nats.url(), "a", |_| {});
    let mut b = Node::start(&nats.url(), "b", |_| {});
    a.wait_nodes(&["a", "b"]);
    b.wait_nodes(&["a", "b"]);
    a.wait_link(true);
    a.watch("r", true);
    a.to_node("b", b"ready");
    b.messages_until(b"ready");

    nats.stop();
    a.wait_link(false);
    b.wait_link(false);
    assert!(!a.client.is_up());
    // Nothing is sent while the link is down: counted, not queued.
    a.to_node("b", b"lost");
    eventually("the drop to be counted", || {
        a.metrics.dropped_count(ClusterDrop::Disconnected) == 1
    });
    nats.restart();
    a.wait_link(true);
    b.wait_link(true);
    assert!(a.client.is_up());
    assert!(a.metrics.reconnects() >= 1);
    // a's subscriptions were made again on its new connection before
    // anything it sends after; b may reconnect a little later, so a
    // probes until b hears it.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        a.to_node("b", b"probe");
        let heard = b.wait_for(Duration::from_millis(200), |g| {
            matches!(g, Got::Msg(None, p) if p.as_ref() == b"probe").then_some(())
        });
        if heard.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never heard a after the restart"
        );
    }
    b.publish("r", b"after restart");
    assert_eq!(
        a.messages_until(b"after restart"),
        [msg(Some("r"), b"after restart")]
    );
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_node_starts_while_nats_is_down_and_connects_when_it_comes() {
    let Some(mut nats) = nats() else { return };
    nats.stop();
    let started = Instant::now();
    let mut a = Node::start(&nats.url(), "a", |_| {});
    assert!(started.elapsed() < Duration::from_secs(1), "spawn waited");
    a.wait_nodes(&["a"]);
    assert!(!a.client.is_up());
    a.publish("c", b"while down");
    eventually("the drop to be counted", || {
        a.metrics.dropped_count(ClusterDrop::Disconnected) == 1
    });
    nats.restart();
    a.wait_link(true);
    assert!(a.client.is_up());
    assert_eq!(
        a.metrics.reconnects(),
        0,
        "the first connection is no reconnect"
    );
    a.shutdown();
}

#[test]
fn a_full_queue_gives_the_request_back_and_counts_it() {
    let Some(nats) = nats() else { return };
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let gate = Gate {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    };
    let mut a = Node::start_gated(&nats.url(), "a", |o| o.queue_capacity = 4, Some(gate));
    // Hold the worker's thread inside the sink: nothing drains the queue.
    a.to_node("a", b"block");
    entered
        .recv_timeout(TIMEOUT)
        .expect("the worker reached the sink");
    for p in [b"1", b"2", b"3", b"4"] {
        a.to_node("a", p);
    }
    let extra = ToCluster::ToNode {
        node: Arc::from("a"),
        payload: Bytes::from_static(b"5"),
    };
    let start = Instant::now();
    assert_eq!(a.client.send(extra.clone()), Err(extra.clone()));
    assert!(start.elapsed() < Duration::from_millis(100), "never blocks");
    assert_eq!(a.metrics.dropped_count(ClusterDrop::QueueFull), 1);
    release.send(()).unwrap();
    assert_eq!(
        a.messages_until(b"4"),
        [
            msg(None, b"block"),
            msg(None, b"1"),
            msg(None, b"2"),
            msg(None, b"3"),
            msg(None, b"4"),
        ]
    );
    // A stopped worker gives requests back too, counted apart.
    a.shutdown();
    assert_eq!(a.client.send(extra.clone()), Err(extra));
    assert_eq!(a.metrics.dropped_count(ClusterDrop::Stopped), 1);
    assert!(!a.client.is_up());
}

#[test]
fn credentials_are_presented_and_wrong_ones_never_connect() {
    if !have_nats() {
        return;
    }
    let nats = NatsServer::start_with(&["--user", "edge", "--pass", "s3cret"]);
    let user = |password: &str| {
        let password = password.to_owned();
        move |o: &mut ClusterOptions| {
            o.auth = ClusterAuth::UserPassword {
                user: "edge".into(),
                password,
            }
        }
    };
    let mut good = Node::start(&nats.url(), "good", user("s3cret"));
    let mut bad = Node::start(&nats.url(), "bad", user("wrong"));
    good.wait_link(true);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!bad.client.is_up());
    assert!(!bad.metrics.is_up());
    good.shutdown();
    bad.shutdown();
}

#[test]
fn bad_options_are_refused_at_spawn() {
    let sink = || TestSink {
        tx: Mutex::new(channel().0),
        gate: None,
    };
    let spawn = |edit: &dyn Fn(&mut ClusterOptions)| {
        let mut o = ClusterOptions::new("nats://127.0.0.1:1", "a");
        edit(&mut o);
        spawn_cluster_worker(o, 1, sink(), ClusterMetrics::default())
            .err()
            .map(|e| (e.kind(), e.to_string()))
    };
    for (edit, want) in [
        (
            &(|o: &mut ClusterOptions| o.servers.clear()) as &dyn Fn(&mut ClusterOptions),
            "no NATS server",
        ),
        (&|o| o.node_name = Arc::from("a.b"), "node name"),
        (&|o| o.cluster_name = Arc::from(""), "cluster name"),
        (
            &|o| o.heartbeat_interval = o.node_timeout,
            "heartbeat_interval",
        ),
        (&|o| o.queue_capacity = 0, "queue_capacity"),
        (&|o| o.servers = vec!["http://x".into()], "http://x"),
        (
            &|o| o.auth = ClusterAuth::CredentialsFile("/nonexistent/x.creds".into()),
            "credentials_file",
        ),
        (
            &|o| o.tls_ca_file = Some("/nonexistent/ca.pem".into()),
            "tls_ca_file",
        ),
    ] {
        let (kind, text) = spawn(edit).expect(want);
        assert!(text.contains(want), "{text} should name {want}");
        if want != "credentials_file" {
            assert_eq!(kind, io::ErrorKind::InvalidInput, "{text}");
        }
    }
    let e = spawn_cluster_worker(
        ClusterOptions::new("nats://127.0.0.1:1", "a"),
        0,
        sink(),
        ClusterMetrics::default(),
    )
    .err()
    .expect("zero shards");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    // Secrets never show in Debug.
    let o = ClusterOptions {
        auth: ClusterAuth::Token("tok-123".into()),
        ..ClusterOptions::new("nats://127.0.0.1:1", "a")
    };
    assert!(!format!("{o:?}").contains("tok-123"));
    let o = ClusterAuth::UserPassword {
        user: "u".into(),
        password: "pw-456".into(),
    };
    assert!(!format!("{o:?}").contains("pw-456"));
}

/// A node whose namespace 0 keeps its history in JetStream (5 per channel).
fn history_node(url: &str, name: &str) -> Node {
    Node::start(url, name, |o| {
        o.history_streams = vec![Some(HistoryStream {
            namespace: Arc::from("feed"),
            size: 5,
            ttl: Duration::from_secs(60),
            members: true,
        })];
    })
}

fn persist(n: &Node, channel: &str, epoch: u64, offset: u64) {
    let p = crate::engine::cluster::stored::StoredPub {
        epoch,
        offset,
        data: crate::engine::wire::publication::PubData {
            bytes: Bytes::from(format!("{{\"o\":{offset}}}")),
            is_json: true,
        },
        key: None,
    };
    n.send(ToCluster::Persist {
        ns: 0,
        channel: Arc::from(channel),
        epoch,
        offset,
        body: p.encode().into(),
    });
}

fn persisted(n: &Node, want: u64) -> bool {
    use crate::engine::cluster::stored::StoreAnswer;
    n.wait(&format!("the answer for offset {want}"), |g| match g {
        Got::Stored(StoreAnswer::Persisted { offset, ok, .. }) if *offset == want => Some(*ok),
        _ => None,
    })
}

fn tail(n: &Node, channel: &str) -> Vec<u64> {
    tail_and_floor(n, channel).0
}

#[test]
fn history_writes_are_read_back_trimmed_and_a_second_writer_of_an_offset_is_fenced() {
    let Some(nats) = nats() else { return };
    let mut a = history_node(&nats.url(), "a");
    let mut b = history_node(&nats.url(), "b");
    a.wait_link(true);
    b.wait_link(true);
    // Nothing stored yet: an empty tail, not an error.
    assert_eq!(tail(&a, "feed:x"), Vec::<u64>::new());
    for offset in 1..=7 {
        persist(&a, "feed:x", 9, offset);
    }
    for offset in 1..=7 {
        assert!(persisted(&a, offset), "offset {offset} stored");
    }
    // `history_size` = 5 per channel: the oldest two are gone; another
    // node reads the same tail.
    assert_eq!(tail(&b, "feed:x"), vec![3, 4, 5, 6, 7]);
    assert_eq!(tail(&a, "feed:y"), Vec::<u64>::new(), "channels are apart");
    // A second home writing an offset already stored is refused, and the
    // stream keeps the first.
    persist(&b, "feed:x", 9, 7);
    assert!(!persisted(&b, 7), "the duplicate offset is fenced");
    assert_eq!(tail(&a, "feed:x"), vec![3, 4, 5, 6, 7]);
    a.shutdown();
    b.shutdown();
}

/// The tail's offsets and the floor's offset.
fn tail_and_floor(n: &Node, channel: &str) -> (Vec<u64>, Option<u64>) {
    use crate::engine::cluster::stored::StoreAnswer;
    n.send(ToCluster::Load {
        ns: 0,
        channel: Arc::from(channel),
    });
    n.wait("the tail", |g| match g {
        Got::Stored(StoreAnswer::Loaded { result, floor, .. }) => Some((
            result
                .as_ref()
                .expect("read back")
                .iter()
                .map(|p| p.offset)
                .collect(),
            floor.map(|f| f.offset),
        )),
        _ => None,
    })
}

#[test]
fn a_history_floor_purges_what_is_before_it_and_stays_until_trimmed() {
    use crate::engine::cluster::stored::StoreAnswer;
    let Some(nats) = nats() else { return };
    let mut a = history_node(&nats.url(), "a");
    a.wait_link(true);
    for offset in 1..=3 {
        persist(&a, "feed:f", 4, offset);
    }
    // The purge is queued behind the writes: it covers them.
    a.send(ToCluster::Purge {
        ns: 0,
        channel: Arc::from("feed:f"),
        floor: crate::engine::hub::Position {
            epoch: 4,
            offset: 3,
        },
    });
    for offset in 1..=3 {
        assert!(persisted(&a, offset));
    }
    let ok = a.wait("the purge", |g| match g {
        Got::Stored(StoreAnswer::Purged { ok, .. }) => Some(*ok),
        _ => None,
    });
    assert!(ok);
    assert_eq!(tail_and_floor(&a, "feed:f"), (vec![], Some(3)));
    persist(&a, "feed:f", 4, 4);
    assert!(persisted(&a, 4));
    assert_eq!(tail_and_floor(&a, "feed:f"), (vec![4], Some(3)));
    // `history_size` (5) trims the floor away like any old message.
    for offset in 5..=8 {
        persist(&a, "feed:f", 4, offset);
        assert!(persisted(&a, offset));
    }
    assert_eq!(tail_and_floor(&a, "feed:f"), (vec![4, 5, 6, 7, 8], None));
    a.shutdown();
}

#[test]
fn history_requests_fail_at_once_while_nats_is_down() {
    let Some(mut nats) = nats() else { return };
    let mut a = history_node(&nats.url(), "a");
    a.wait_link(true);
    nats.stop();
    a.wait_link(false);
    persist(&a, "feed:z", 1, 1);
    assert!(!persisted(&a, 1));
    use crate::engine::cluster::stored::StoreAnswer;
    a.send(ToCluster::Load {
        ns: 0,
        channel: Arc::from("feed:z"),
    });
    let failed = a.wait("the failed read-back", |g| match g {
        Got::Stored(StoreAnswer::Loaded { result, .. }) => Some(result.is_err()),
        _ => None,
    });
    assert!(failed);
    write_members(&a, "feed:z", false, vec![put("c1", None)]);
    a.wait("the unwritten members", |g| {
        matches!(g, Got::Stored(StoreAnswer::MembersUnwritten { channel }) if &**channel == "feed:z")
            .then_some(())
    });
    a.shutdown();
}

fn put(client: &str, state: Option<&str>) -> MemberChange {
    MemberChange::Put(StoredMember {
        client: Arc::from(client),
        user: Arc::from("ann"),
        info: None,
        state: state.map(Arc::from),
        state_ttl_ms: None,
        node: Arc::from("a"),
        incarnation: 5,
        shard: 0,
        conn: crate::engine::subs::ConnRef {
            idx: 1,
            generation: 1,
        },
    })
}

fn write_members(n: &Node, channel: &str, whole: bool, changes: Vec<MemberChange>) {
    n.send(ToCluster::Members {
        write: MemberWrite {
            channel: Arc::from(channel),
            whole,
            changes,
        },
    });
}

/// The members read back with `channel`'s tail: (client, state), sorted.
fn members(n: &Node, channel: &str) -> Vec<(String, Option<String>)> {
    use crate::engine::cluster::stored::StoreAnswer;
    n.send(ToCluster::Load {
        ns: 0,
        channel: Arc::from(channel),
    });
    let mut m = n.wait("the members", |g| match g {
        Got::Stored(StoreAnswer::Loaded {
            result, members, ..
        }) => {
            assert!(result.is_ok(), "read back");
            Some(
                members
                    .iter()
                    .map(|m| (m.client.to_string(), m.state.as_deref().map(String::from)))
                    .collect::<Vec<_>>(),
            )
        }
        _ => None,
    });
    m.sort();
    m
}

/// Reads `channel`'s members from `n` until they are `want` (another
/// node's writes land in the bucket a moment after they are sent).
fn members_become(n: &Node, channel: &str, want: &[(&str, Option<&str>)]) {
    let want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(c, s)| (c.to_string(), s.map(String::from)))
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = members(n, channel);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members {got:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn members_are_written_removed_rewritten_whole_and_read_back_with_the_tail() {
    use crate::engine::cluster::stored::StoreAnswer;
    let Some(nats) = nats() else { return };
    let mut a = history_node(&nats.url(), "a");
    let mut b = history_node(&nats.url(), "b");
    a.wait_link(true);
    b.wait_link(true);
    assert_eq!(
        members(&b, "feed:m"),
        vec![],
        "an empty bucket reads as none"
    );
    write_members(
        &a,
        "feed:m",
        false,
        vec![put("c1", None), put("c2", None), put("c3", None)],
    );
    write_members(
        &a,
        "feed:m",
        false,
        vec![
            MemberChange::Remove(Arc::from("c2")),
            put("c1", Some("typing")),
        ],
    );
    // Read by another node: the last value per member, the removed one
    // gone.
    members_become(&b, "feed:m", &[("c1", Some("typing")), ("c3", None)]);
    assert_eq!(members(&b, "feed:n"), vec![], "channels are apart");
    // A whole write replaces everything the channel had.
    write_members(&a, "feed:m", true, vec![put("c9", None)]);
    members_become(&b, "feed:m", &[("c9", None)]);
    // Nothing came back unwritten.
    assert!(
        a.wait_for(Duration::from_millis(200), |g| {
            matches!(g, Got::Stored(StoreAnswer::MembersUnwritten { .. })).then_some(())
        })
        .is_none()
    );
    a.shutdown();
    b.shutdown();
}
