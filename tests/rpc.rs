//! Clients' backend calls against a real `nats-server`: `rpc` round trips
//! to a responder (JSON and binary clients), the caller's headers, the
//! timeout, no responders, a responder's error, `send`, the per-connection
//! in-flight bound, parameter checks, anonymous callers, and a node
//! without NATS. Clients are raw JSON clients (no library between the test
//! and the frames); the backends are async-nats clients in the test.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use common::nats_server::NatsServer;
use common::raw_json::RawJson;
use common::{Opts, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsedge::engine::wire::binary::client_frame;
use wsedge::engine::wire::proto;
use wsedge::engine::wire::{ConnectParams, Data, Method};

/// What a backend saw of one message: subject, payload and the headers
/// the node sets.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    subject: String,
    payload: Vec<u8>,
    user: Option<String>,
    client: Option<String>,
    node: Option<String>,
}

impl Seen {
    fn of(msg: &async_nats::Message) -> Seen {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        Seen {
            subject: msg.subject.to_string(),
            payload: msg.payload.to_vec(),
            user: header("Wsedge-User"),
            client: header("Wsedge-Client"),
            node: header("Wsedge-Node"),
        }
    }
}

/// The backends: async-nats subscribers on a runtime of their own,
/// recording what they receive.
struct Backend {
    rt: tokio::runtime::Runtime,
    client: async_nats::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    /// Connects to `nats` and starts the responders: `wsedge.rpc.echo`
    /// (replies with the request's payload), `wsedge.rpc.bytes` (replies
    /// with bytes that are not JSON), `wsedge.rpc.fail` (replies with a
    /// `Wsedge-Error` header), `wsedge.rpc.slow` (never replies), and a
    /// subscriber of `wsedge.send`. Everything they receive is recorded.
    fn start(nats: &NatsServer) -> Backend {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let url = nats.url();
        let client = rt.block_on(async { async_nats::connect(url).await.unwrap() });
        for subject in [
            "wsedge.rpc.echo",
            "wsedge.rpc.bytes",
            "wsedge.rpc.fail",
            "wsedge.rpc.slow",
            "wsedge.send",
        ] {
            let mut sub = rt
                .block_on(client.queue_subscribe(subject, "backends".into()))
                .unwrap();
            let (c, seen) = (client.clone(), seen.clone());
            rt.spawn(async move {
                while let Some(msg) = sub.next().await {
                    seen.lock().unwrap().push(Seen::of(&msg));
                    let Some(reply) = msg.reply.clone() else {
                        continue;
                    };
                    match msg.subject.as_str() {
                        "wsedge.rpc.echo" => c.publish(reply, msg.payload.clone()).await.unwrap(),
                        "wsedge.rpc.bytes" => c
                            .publish(reply, bytes::Bytes::from_static(&[0xff, 0x00, 0x01]))
                            .await
                            .unwrap(),
                        "wsedge.rpc.fail" => {
                            let mut h = HeaderMap::new();
                            h.insert("Wsedge-Error", "400 bad input");
                            c.publish_with_headers(reply, h, bytes::Bytes::new())
                                .await
                                .unwrap()
                        }
                        _ => {} // slow: never answers
                    }
                }
            });
        }
        // The subscriptions are in place before any test call.
        rt.block_on(client.flush()).unwrap();
        Backend { rt, client, seen }
    }

    /// Waits until `n` messages on `subject` were received; returns them.
    fn wait_seen(&self, subject: &str, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<Seen> = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.subject == subject)
                .cloned()
                .collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages on {subject}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let c = self.client.clone();
        let _ = self
            .rt
            .block_on(async move { tokio::time::timeout(Duration::from_secs(1), c.drain()).await });
    }
}

/// A node whose `[rpc]` section is `rpc` (TOML lines), written for `test`.
fn node(rpc: &str, test: &str) -> Server {
    let path = std::env::temp_dir().join(format!("wsedge-rpc-{}-{test}.toml", std::process::id()));
    let config = format!(
        "shards = 2\nmax_commands_per_second = 0\nnode_name = \"edge-rpc\"\n\n[rpc]\n{rpc}\n"
    );
    std::fs::write(&path, config).unwrap();
    Server::start_with(Opts {
        args: vec!["--config".into(), path.to_str().unwrap().into()],
        ..Opts::default()
    })
}

/// A node using `nats` for backend calls, with `extra` `[rpc]` keys.
fn node_on(nats: &NatsServer, extra: &str, test: &str) -> Server {
    node(&format!("nats_url = \"{}\"\n{extra}", nats.url()), test)
}

/// Calls until the node's NATS client is connected (it connects in the
/// background at start: until then calls get error 100).
fn until_connected(c: &mut RawJson) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.call("rpc", json!({"method": "echo", "data": 0}));
        if r.get("rpc").is_some() {
            return;
        }
        assert_eq!(r["error"]["code"], 100, "{r}");
        assert!(Instant::now() < deadline, "the node never reached NATS");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn error_code(r: &Value) -> u64 {
    r["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an error: {r}"))
}

#[test]
fn rpc_round_trips_with_the_callers_user_and_client() {
    if !NatsServer::available() {
        return;
    }
    let nats = NatsServer::start();
    let backend = Backend::start(&nats);
    let server = node_on(&nats, "", "round_trip");
    let mut c = RawJson::user(&server, "ann", None);
    until_connected(&mut c);

    // JSON in, the same JSON back (`data`), from the responder.
    let data = json!({"text": "hi ✓", "n": [1, 2.5, null]});
    let r = c.call("rpc", json!({"method": "echo", "data": data}));
    assert_eq!(r["rpc"], json!({"data": data}), "{r}");
    let seen = backend.wait_seen("wsedge.rpc.echo", 2);
    let last = seen.last().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&last.payload).unwrap(),
        data
    );
    assert_eq!(last.user.as_deref(), Some("ann"));
    assert_eq!(last.client.as_deref(), Some(c.id.as_str()));
    assert_eq!(last.node.as_deref(), Some("edge-rpc"));

    // A reply that is not JSON reaches a JSON client as base64.
    let r = c.call("rpc", json!({"method": "bytes"}));
    assert_eq!(r["rpc"], json!({"b64data": "/wAB"}), "{r}");
    // No `data`: the responder gets an empty payload (echoed back empty).
    let r = c.call("rpc", json!({"method": "echo"}));
    assert_eq!(r["rpc"], json!({"b64data": ""}), "{r}");

    // Another user on the other shard is named as itself.
    let mut other = loop {
        let o = RawJson::user(&server, "bob", None);
        if o.shard != c.shard {
            break o;
        }
    };
    let r = other.call("rpc", json!({"method": "echo", "data": "x"}));
    assert_eq!(r["rpc"]["data"], "x", "{r}");
    let seen = backend.wait_seen("wsedge.rpc.echo", 4);
    let last = seen.last().unwrap();
    assert_eq!(last.user.as_deref(), Some("bob"));
    assert_eq!(last.client.as_deref(), Some(other.id.as_str()));

    assert!(server.metric("wsedge_rpc_requests_total{result=\"ok\"}") >= 4.0);
    server.wait_for("no call in flight", || {
        server.metric("wsedge_rpc_in_flight") == 0.0
    });
}

#[test]
fn timeouts_no_responders_and_responder_errors_have_their_codes() {
    if !NatsServer::available() {
        return;
    }
    let mut nats = NatsServer::start();
    let _backend = Backend::start(&nats);
    let server = node_on(&nats, "timeout = \"300ms\"", "errors");
    let mut c = RawJson::user(&server, "ann", None);
    until_connected(&mut c);

    let started = Instant::now();
    let r = c.call("rpc", json!({"method": "slow", "data": 1}));
    assert_eq!(
        r["error"],
        json!({"code": 124, "message": "rpc timeout", "temporary": true})
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    let r = c.call("rpc", json!({"method": "nobody.listens", "data": 1}));
    assert_eq!(
        r["error"],
        json!({"code": 125, "message": "no responders", "temporary": true})
    );

    let r = c.call("rpc", json!({"method": "fail", "data": 1}));
    assert_eq!(
        r["error"],
        json!({"code": 126, "message": "400 bad input", "temporary": false})
    );

    // Methods must be subject suffixes.
    for bad in ["", "a..b", "a.*", ">", "a b", ".a", &"m".repeat(65)] {
        let r = c.call("rpc", json!({"method": bad, "data": 1}));
        assert_eq!(error_code(&r), 107, "{bad:?}: {r}");
    }
    let r = c.call("rpc", json!({"data": 1}));
    assert_eq!(error_code(&r), 107, "{r}");

    for result in ["timeout", "no_responders", "error"] {
        let m = format!("wsedge_rpc_requests_total{{result=\"{result}\"}}");
        assert_eq!(server.metric(&m), 1.0, "{m}");
    }

    // NATS gone: calls are answered at once, error 100 (temporary).
    nats.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let r = c.call("rpc", json!({"method": "echo", "data": 1}));
        if error_code(&r) == 100 {
            assert!(started.elapsed() < Duration::from_millis(250));
            let r = c.call("send", json!({"data": 1}));
            assert_eq!(error_code(&r), 100, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "still {r} with NATS down");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.metric("wsedge_rpc_requests_total{result=\"unavailable\"}") >= 1.0);
}

#[test]
fn send_reaches_the_backends_in_order_with_headers() {
    if !NatsServer::available() {
        return;
    }
    let nats = NatsServer::start();
    let backend = Backend::start(&nats);
    let server = node_on(&nats, "", "send");
    let mut c = RawJson::user(&server, "ann", None);
    until_connected(&mut c);
    let ids: Vec<u32> = (0..50)
        .map(|i| c.send("send", json!({"data": {"n": i}})))
        .collect();
    for id in ids {
        let r = c.wait("send reply", |v| v["id"] == id);
        assert_eq!(r["send"], json!({}), "{r}");
    }
    let seen = backend.wait_seen("wsedge.send", 50);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            serde_json::from_slice::<Value>(&s.payload).unwrap(),
            json!({"n": i}),
            "in order"
        );
        assert_eq!(s.user.as_deref(), Some("ann"));
        assert_eq!(s.client.as_deref(), Some(c.id.as_str()));
        assert_eq!(s.node.as_deref(), Some("edge-rpc"));
    }
    assert_eq!(server.metric("wsedge_rpc_sends_total{result=\"ok\"}"), 50.0);
}

#[test]
fn a_connection_has_at_most_max_in_flight_calls() {
    if !NatsServer::available() {
        return;
    }
    let nats = NatsServer::start();
    let backend = Backend::start(&nats);
    let server = node_on(&nats, "timeout = \"2s\"", "in_flight");
    let mut c = RawJson::user(&server, "ann", None);
    until_connected(&mut c);
    let before = backend.wait_seen("wsedge.rpc.slow", 0).len();
    // 16 calls nobody answers hold every slot; the 17th is refused at once.
    let ids: Vec<u32> = (0..16)
        .map(|i| c.send("rpc", json!({"method": "slow", "data": i})))
        .collect();
    let r = c.call("rpc", json!({"method": "echo", "data": "17th"}));
    assert_eq!(
        r["error"],
        json!({"code": 114, "message": "too many requests", "temporary": true}),
        "{r}"
    );
    // Sends are not counted: NATS takes them at once.
    let r = c.call("send", json!({"data": "still sent"}));
    assert_eq!(r["send"], json!({}), "{r}");
    // Other connections are not affected.
    let mut other = RawJson::user(&server, "bob", None);
    let r = other.call("rpc", json!({"method": "echo", "data": 1}));
    assert_eq!(r["rpc"]["data"], 1, "{r}");
    backend.wait_seen("wsedge.rpc.slow", before + 16);
    assert_eq!(server.metric("wsedge_rpc_in_flight"), 16.0);
    // Each times out, and its slot is free again.
    for id in ids {
        let r = c.wait("a timeout", |v| v["id"] == id);
        assert_eq!(error_code(&r), 124, "{r}");
    }
    let r = c.call("rpc", json!({"method": "echo", "data": "again"}));
    assert_eq!(r["rpc"]["data"], "again", "{r}");
    // The rpc thread frees a call's slot (and the gauge) just after it
    // hands the answer over, so the client may see the answer first.
    server.wait_for("no call in flight", || {
        server.metric("wsedge_rpc_in_flight") == 0.0
    });
}

#[test]
fn anonymous_callers_need_allow_anonymous() {
    if !NatsServer::available() {
        return;
    }
    let nats = NatsServer::start();
    let backend = Backend::start(&nats);
    let strict = node_on(&nats, "", "anon_default");
    let mut user = RawJson::user(&strict, "ann", None);
    until_connected(&mut user);
    let mut anon = RawJson::anon(&strict);
    for (method, params) in [
        ("rpc", json!({"method": "echo", "data": 1})),
        ("send", json!({"data": 1})),
    ] {
        let r = anon.call(method, params);
        assert_eq!(error_code(&r), 103, "{method}: {r}");
    }

    let open = node_on(&nats, "allow_anonymous = true", "anon_allowed");
    let mut anon = RawJson::anon(&open);
    until_connected(&mut anon);
    let r = anon.call("rpc", json!({"method": "echo", "data": "anon"}));
    assert_eq!(r["rpc"]["data"], "anon", "{r}");
    let seen = backend.wait_seen("wsedge.rpc.echo", 3);
    let last = seen.last().unwrap();
    assert_eq!(last.user.as_deref(), Some(""), "an empty Wsedge-User");
    assert_eq!(last.client.as_deref(), Some(anon.id.as_str()));
}

#[test]
fn without_nats_rpc_and_send_are_not_configured() {
    let server = node("", "unconfigured");
    let mut c = RawJson::user(&server, "ann", None);
    for (method, params) in [
        ("rpc", json!({"method": "echo", "data": 1})),
        ("send", json!({"data": 1})),
    ] {
        let r = c.call(method, params);
        assert_eq!(
            r["error"],
            json!({"code": 127, "message": "rpc not configured", "temporary": false}),
            "{method}: {r}"
        );
    }
    // The method is still checked first.
    let r = c.call("rpc", json!({"method": "a..b"}));
    assert_eq!(error_code(&r), 107, "{r}");
}

#[tokio::test]
async fn a_binary_client_gets_the_reply_as_bytes() {
    if !NatsServer::available() {
        return;
    }
    let nats = NatsServer::start();
    let backend = tokio::task::spawn_blocking({
        let url = nats.url();
        move || {
            // A backend on its own runtime (the test's is single-threaded).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let client = rt.block_on(async_nats::connect(url)).unwrap();
            let mut sub = rt.block_on(client.subscribe("wsedge.rpc.echo")).unwrap();
            rt.spawn({
                let client = client.clone();
                async move {
                    while let Some(m) = sub.next().await {
                        if let Some(reply) = m.reply {
                            client.publish(reply, m.payload).await.unwrap();
                        }
                    }
                }
            });
            rt.block_on(client.flush()).unwrap();
            rt
        }
    })
    .await
    .unwrap();
    let server = node_on(&nats, "allow_anonymous = true", "binary");
    let mut ws = common::connect(&server, Some("edu-matrix-v1")).await;
    ws.send(Message::binary(client_frame(&[(
        1,
        Method::Connect(ConnectParams::default()),
    )])))
    .await
    .unwrap();
    let m = common::next(&mut ws).await;
    assert!(reply_of(&m, 1).result_as_connect().is_some());
    let payload = [0u8, 159, 146, 150, 255];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 2;
    loop {
        let frame = client_frame(&[(
            id,
            Method::Rpc {
                method: "echo".into(),
                data: Data::Bytes(&payload),
            },
        )]);
        ws.send(Message::binary(frame)).await.unwrap();
        let m = common::next(&mut ws).await;
        let r = reply_of(&m, id);
        if let Some(rpc) = r.result_as_rpc() {
            assert_eq!(rpc.data().unwrap().bytes(), &payload);
            break;
        }
        // The node is still connecting to NATS.
        assert_eq!(r.error().map(|e| e.code()), Some(100));
        assert!(Instant::now() < deadline, "the node never reached NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
        id += 1;
    }
    let frame = client_frame(&[(
        100,
        Method::Send {
            data: Data::Bytes(b"x"),
        },
    )]);
    ws.send(Message::binary(frame)).await.unwrap();
    let m = common::next(&mut ws).await;
    assert!(reply_of(&m, 100).result_as_send().is_some());
    drop(ws);
    drop(server);
    tokio::task::spawn_blocking(move || drop(backend))
        .await
        .unwrap();
}

/// The reply to `id` in a binary message holding one.
fn reply_of(m: &Message, id: u32) -> proto::Reply<'_> {
    let Message::Binary(b) = m else {
        panic!("expected a binary frame, got {m:?}")
    };
    let frame = flatbuffers::root::<proto::ServerFrame>(b).expect("a valid ServerFrame");
    let msgs = frame.messages().unwrap();
    assert_eq!(msgs.len(), 1);
    let r = msgs.get(0).reply().expect("a reply");
    assert_eq!(r.id(), id);
    r
}
