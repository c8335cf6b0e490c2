//! The io_uring data path (`io = "uring"`) end to end, whatever `WSEDGE_IO`
//! the rest of the suite runs with: multishot accept, recv into the
//! provided buffer ring (also when it runs dry), batched sends, big
//! messages through short sends, and closing. The whole suite runs on the
//! uring path with `WSEDGE_IO=uring cargo test`: the harness hands its
//! environment to every server it starts.

mod common;

use std::time::{Duration, Instant};

use std::io::{Read, Write};
use std::net::TcpStream;

use common::raw_json::RawJson;
use common::sse::{SseStream, WAIT, post};
use common::{JsonClient, Opts, RawWs, Server};
use serde_json::json;

fn uring_server() -> Server {
    let server = Server::start_with(Opts::default().arg("--io").arg("uring"));
    server.wait_for("both shards on io_uring", || {
        server.log.lock().unwrap().matches("io=\"uring\"").count() == 2
    });
    server
}

#[tokio::test]
async fn uring_serves_pubsub_and_echo_of_big_messages() {
    let server = uring_server();
    let mut a = JsonClient::connect(&server).await;
    let mut b = JsonClient::connect(&server).await;
    b.call("subscribe", json!({"channel": "u"})).await;
    for i in 0..50 {
        a.call("publish", json!({"channel": "u", "data": [i]}))
            .await;
    }
    for i in 0..50 {
        assert_eq!(b.push().await["push"]["pub"]["data"], json!([i]));
    }
    // A publication far bigger than a receive buffer (2 KiB) and than a
    // socket buffer: many recvs in, short sends out, in order.
    let big = "x".repeat(60_000);
    a.call("publish", json!({"channel": "u", "data": big.clone()}))
        .await;
    assert_eq!(b.push().await["push"]["pub"]["data"], json!(big));
}

#[test]
fn uring_reads_every_connection_when_the_buffer_ring_runs_dry() {
    let server = uring_server();
    // More connections sending at once than the shards have receive
    // buffers (512 each): some recvs end with ENOBUFS and are re-armed;
    // every request is still answered.
    let n = 1500;
    let mut conns: Vec<RawWs> = (0..n)
        .map(|_| RawWs::connect(&server, Some("edu-matrix-v1.json")))
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.send_text(&format!(
            "{{\"id\":1,\"connect\":{{}}}}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"dry{}\"}}}}",
            i % 7
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in conns.iter_mut() {
        let mut replies = 0;
        while replies < 2 {
            let f = c
                .read_frame_before(deadline)
                .expect("answered in time")
                .expect("a frame");
            let text = String::from_utf8_lossy(&f.payload).to_string();
            replies += text.lines().filter(|l| l.contains("\"id\":")).count();
        }
    }
    server.wait_for("every connection counted", || {
        server.metric("wsedge_connections") as usize >= n
    });
    drop(conns);
    server.wait_for("every connection freed after the peers closed", || {
        server.metric("wsedge_connections") == 0.0
    });
}

#[tokio::test]
async fn uring_server_close_reaches_the_client_and_drain_stops() {
    let mut server = Server::start_with(
        Opts::default()
            .arg("--io")
            .arg("uring")
            .env("WSEDGE_DRAIN_TIMEOUT", "2s"),
    );
    let mut c = JsonClient::connect(&server).await;
    c.call("subscribe", json!({"channel": "d"})).await;
    server.signal(libc::SIGTERM);
    let (_pushes, code) = c.close_code().await;
    assert_eq!(code, Some(1001), "going away on drain");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exited after the drain");
    assert!(status.success());
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("io_uring counts"), "{log}");
}

/// The SSE fallback on the io_uring path, on the raw wire: streams on
/// both shards get their session event, posts (answered `204`, then
/// closed by the server) run their commands on the stream whichever shard
/// reads them, a post whose body spans several receive buffers and
/// arrives in pieces is read whole, and publications cross between a
/// stream and a WebSocket client both ways.
#[test]
fn uring_serves_the_sse_fallback() {
    let server = uring_server();
    let mut streams = Vec::new();
    let mut shards = std::collections::BTreeSet::new();
    while shards.len() < 2 {
        assert!(streams.len() < 40, "every stream landed on one shard");
        let st = SseStream::open(&server);
        shards.insert(st.shard());
        streams.push(st);
    }
    for (i, st) in streams.iter_mut().enumerate() {
        let reply = st.call(&server, "connect", json!({"user": format!("u{i}")}));
        assert!(reply["connect"]["client"].is_string(), "{reply}");
        let reply = st.call(&server, "subscribe", json!({"channel": "sse-u"}));
        assert!(reply.get("error").is_none(), "{reply}");
    }
    // Each post is a connection of its own, so posts are read on both
    // shards; in order, as each waits for the one before.
    let st = &mut streams[0];
    for n in 0..10 {
        let body = json!({"id": 100 + n, "ping": {}}).to_string();
        let (status, answer) = post(server.client, &st.session, body.as_bytes());
        assert_eq!(status, 204, "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
    }
    let ids: Vec<u64> = (0..10).map(|_| st.recv()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (100..110).collect::<Vec<_>>());

    // A WebSocket client's publication reaches every stream...
    let (mut ws, _) = RawJson::connect(&server, json!({"user": "ws"}));
    ws.call("subscribe", json!({"channel": "sse-u"}));
    ws.call(
        "publish",
        json!({"channel": "sse-u", "data": {"from": "ws"}}),
    );
    for st in streams.iter_mut() {
        let push = st.push();
        assert_eq!(push["push"]["pub"]["data"]["from"], "ws", "{push}");
    }

    // ...and a stream's publication, posted in pieces with a body over
    // three receive buffers (2 KiB each), reaches the WebSocket client.
    let big = "s".repeat(7000);
    let body =
        json!({"id": 7, "publish": {"channel": "sse-u", "data": {"from": "sse", "big": big}}})
            .to_string();
    let head = format!(
        "POST /ws/sse/{} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        streams[0].session,
        body.len()
    );
    let mut sock = TcpStream::connect(server.client).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(head.as_bytes()).unwrap();
    let (first, rest) = body.as_bytes().split_at(100);
    sock.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    sock.write_all(rest).unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer)
        .expect("the server closes the post after its answer");
    assert!(answer.starts_with("HTTP/1.1 204 "), "{answer}");
    let reply = streams[0].reply(7);
    assert!(reply.get("error").is_none(), "{reply}");
    let got = ws.wait("the stream's publication", |v| {
        v["push"]["pub"]["data"]["from"] == "sse"
    });
    assert_eq!(got["push"]["pub"]["data"]["big"], json!(big));

    assert_eq!(
        server.metric("wsedge_sse_streams"),
        streams.len() as f64,
        "one gauge per open stream"
    );
    drop(streams);
    drop(ws);
    server.wait_for("the streams and posts to be freed", || {
        server.metric("wsedge_sse_streams") == 0.0 && server.metric("wsedge_connections") == 0.0
    });
    // The ring's own metrics: it did the I/O, and nothing went wrong on
    // the way (a peer's close is not an error).
    assert!(server.metric("wsedge_uring_enters_total") > 0.0);
    for kind in ["send_error", "unexpected"] {
        let n = server.metric(&format!("wsedge_uring_events_total{{kind=\"{kind}\"}}"));
        assert_eq!(n, 0.0, "{kind}");
    }
}

/// `io = "auto"` on this machine (whose kernel runs the rings, as the
/// rest of this file shows): both shards on io_uring, said in the log,
/// and the ring is what moves the bytes.
#[tokio::test]
async fn auto_takes_uring_where_the_kernel_runs_it() {
    let server = Server::start_with(Opts::default().arg("--io").arg("auto"));
    server.wait_for("both shards on io_uring", || {
        server.log.lock().unwrap().matches("io=\"uring\"").count() == 2
    });
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains("io auto: the shards use io_uring"),
        "{}",
        server.log.lock().unwrap()
    );
    let mut a = JsonClient::connect(&server).await;
    a.call("subscribe", json!({"channel": "auto"})).await;
    a.call("publish", json!({"channel": "auto", "data": 1}))
        .await;
    assert_eq!(a.push().await["push"]["pub"]["data"], json!(1));
    assert!(server.metric("wsedge_uring_enters_total") > 0.0);
    // A reload compares the configuration as written (`auto`), not the
    // path it resolved to: nothing is reported as waiting for a restart.
    server.signal(libc::SIGHUP);
    server.wait_for("the reload", || {
        server.metric("wsedge_config_reloads_total{result=\"ok\"}") == 1.0
    });
    assert_eq!(server.metric("wsedge_config_restart_pending"), 0.0);
}

/// Where io_uring is unavailable (simulated: the probe answers no, as
/// with `kernel.io_uring_disabled`), `auto` runs on epoll and says why,
/// while `uring` refuses to start (exit 2) rather than run something else.
#[cfg(feature = "test-hooks")]
#[tokio::test]
async fn auto_falls_back_to_epoll_where_io_uring_is_unavailable_and_uring_refuses() {
    let server = Server::start_with(
        Opts::default()
            .arg("--io")
            .arg("auto")
            .env("EDGE_TEST_URING_UNAVAILABLE", "1"),
    );
    server.wait_for("both shards on epoll", || {
        server.log.lock().unwrap().matches("io=\"epoll\"").count() == 2
    });
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("io_uring is unavailable here, the shards use epoll"),
        "{log}"
    );
    assert!(
        log.contains("EDGE_TEST_URING_UNAVAILABLE"),
        "the reason is logged: {log}"
    );
    let mut a = JsonClient::connect(&server).await;
    a.call("subscribe", json!({"channel": "auto"})).await;
    a.call("publish", json!({"channel": "auto", "data": 2}))
        .await;
    assert_eq!(a.push().await["push"]["pub"]["data"], json!(2));
    assert_eq!(server.metric("wsedge_uring_enters_total"), 0.0);

    let (code, err) = common::run_expecting_exit(
        std::process::Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .args(["--io", "uring", "--listen", "127.0.0.1:0"])
            .env("EDGE_TEST_URING_UNAVAILABLE", "1"),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("io_uring unavailable"), "{err}");
    // check-config says what `auto` would do.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["--io", "auto", "check-config"])
        .env("EDGE_TEST_URING_UNAVAILABLE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("io = \"auto\" will use epoll"), "{err}");
}
