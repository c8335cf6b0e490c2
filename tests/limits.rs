//! Bad input and resource limits: oversized messages, bad UTF-8, slow
//! consumers, heartbeats, connection caps and running out of descriptors.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn oversized_message_closes_with_1009() {
    let server = Server::start();
    let mut c = RawWs::connect(&server, Some("edu-matrix-v1.json"));
    c.send_frame(true, 1, &vec![b' '; 70_000]);
    let (_, code) = c.until_close();
    assert_eq!(code, Some(1009));
    server.wait_for("close metric", || {
        server.metric("wsedge_closes_total{kind=\"1009\"}") >= 1.0
    });
}

#[test]
fn max_message_size_is_configurable() {
    let server = Server::start_with(Opts::default().arg("--max-message-size").arg("1000"));
    let mut c = RawWs::connect(&server, Some("edu-matrix-v1.json"));
    c.send_frame(false, 1, &[b' '; 600]);
    c.send_frame(true, 0, &[b' '; 600]);
    let (_, code) = c.until_close();
    assert_eq!(code, Some(1009));
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = Server::start();
    let mut c = RawWs::connect(&server, Some("edu-matrix-v1.json"));
    c.send_frame(true, 1, &[b'{', 0xff, 0xfe, b'}']);
    let (_, code) = c.until_close();
    assert_eq!(code, Some(1007));
    server.wait_for("close metric", || {
        server.metric("wsedge_closes_total{kind=\"1007\"}") >= 1.0
    });
}

#[test]
fn protocol_violation_closes_with_1002_and_client_close_is_echoed() {
    let server = Server::start();
    let mut c = RawWs::connect(&server, None);
    c.send_frame(true, 0x3, b"");
    assert_eq!(c.until_close().1, Some(1002));
    let mut c = RawWs::connect(&server, None);
    c.send_frame(true, 8, &4000u16.to_be_bytes());
    assert_eq!(c.until_close().1, Some(4000));
    // ...and the server then closes the TCP connection.
    assert!(c.read_frame().is_none());
}

#[tokio::test]
async fn slow_consumer_is_dropped_and_told_to_reconnect() {
    let server = Server::start_with(
        Opts::default()
            .env("WSEDGE_OUTBOUND_BUDGET", "65536")
            .env("WSEDGE_MAX_COMMANDS_PER_SECOND", "0"),
    );
    // A subscriber that stops reading.
    let mut slow = RawWs::connect(&server, Some("edu-matrix-v1.json"));
    slow.send_text(
        "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"firehose\"}}",
    );
    // Wait until subscribed (its replies are read later).
    server.wait_for("subscription", || {
        server.metric("wsedge_channels_local") >= 1.0
    });
    let mut fast = JsonClient::connect(&server).await;
    fast.call("subscribe", json!({"channel": "firehose"})).await;
    let mut publisher = JsonClient::connect(&server).await;
    let blob = "x".repeat(8000);
    let mut sent = 0u64;
    while server.metric("wsedge_slow_consumer_drops_total") < 1.0 {
        let r = publisher
            .call("publish", json!({"channel": "firehose", "data": blob}))
            .await;
        sent = r["publish"]["offset"].as_u64().unwrap();
        let p = fast.push().await;
        assert_eq!(
            p["push"]["pub"]["offset"], sent,
            "the fast subscriber keeps up"
        );
        assert!(sent < 100_000, "slow consumer never dropped");
    }
    // The fast subscriber is unaffected by the drop.
    let r = publisher
        .call("publish", json!({"channel": "firehose", "data": 1}))
        .await;
    let p = fast.push().await;
    assert_eq!(p["push"]["pub"]["offset"], r["publish"]["offset"]);
    // The slow one finds, after the data already in flight, a disconnect
    // push (reconnect) and a close frame with 3002.
    let (frames, code) = slow.until_close();
    assert_eq!(code, Some(3002));
    let last = String::from_utf8(frames.last().unwrap().payload.clone()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["push"]["disconnect"]["code"], 3002);
    assert_eq!(v["push"]["disconnect"]["reconnect"], true);
    assert!(frames.len() < sent as usize + 2, "queued data was dropped");
    assert!(server.metric("wsedge_closes_total{kind=\"3002\"}") >= 1.0);
}

#[test]
fn silent_client_is_closed_after_pong_timeout() {
    let server = Server::start_with(
        Opts::default()
            .env("WSEDGE_PING_INTERVAL", "2s")
            .env("WSEDGE_PONG_TIMEOUT", "1s"),
    );
    let mut c = RawWs::connect(&server, Some("edu-matrix-v1.json"));
    c.send_text("{\"id\":1,\"connect\":{}}");
    // The server pings; this client never answers.
    let mut saw_ping = false;
    let mut code = None;
    while let Some(f) = c.read_frame() {
        match f.opcode {
            9 => saw_ping = true,
            8 => {
                code = Some(u16::from_be_bytes([f.payload[0], f.payload[1]]));
                break;
            }
            _ => {}
        }
    }
    assert!(saw_ping);
    assert_eq!(code, Some(3003));
}

#[tokio::test]
async fn answering_client_stays_connected() {
    let server = Server::start_with(
        Opts::default()
            .env("WSEDGE_PING_INTERVAL", "2s")
            .env("WSEDGE_PONG_TIMEOUT", "1s"),
    );
    let mut c = JsonClient::connect(&server).await;
    // tungstenite answers pings as long as we keep reading.
    for _ in 0..3 {
        c.idle_for(Duration::from_millis(1500)).await;
        let r = c.call("ping", json!({})).await;
        assert!(r["ping"].is_object());
    }
    assert_eq!(server.metric("wsedge_closes_total{kind=\"3003\"}"), 0.0);
}

#[test]
fn connection_cap_answers_503() {
    let server = Server::start_with(Opts::default().env("WSEDGE_MAX_CONNECTIONS", "3"));
    let held: Vec<RawWs> = (0..3).map(|_| RawWs::connect(&server, None)).collect();
    let r = raw_request(server.client, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    assert!(server.metric("wsedge_connections_refused_total{kind=\"max_connections\"}") >= 1.0);
    drop(held);
    server.wait_for("slots freed", || server.metric("wsedge_connections") == 0.0);
    let _again = RawWs::connect(&server, None);
}

#[tokio::test]
async fn flood_beyond_the_fd_limit_keeps_existing_clients_served() {
    // 256 descriptors for the whole process; the cap is set above it so
    // the kernel's limit is what the flood hits.
    let mut server = Server::start_with(Opts {
        nofile: Some(256),
        ..Opts::default()
            .env("WSEDGE_MAX_CONNECTIONS", "100000")
            .env("WSEDGE_HANDSHAKE_TIMEOUT", "2s")
    });
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = JsonClient::connect(&server).await;
        c.call("subscribe", json!({"channel": "survivors"})).await;
        clients.push(c);
    }
    // Flood: far more sockets than the server has descriptors, each with
    // the start of an upgrade (a silent socket stays in the kernel under
    // TCP_DEFER_ACCEPT and never costs the server a descriptor).
    let mut flood = Vec::new();
    for _ in 0..600 {
        if let Ok(mut s) = std::net::TcpStream::connect(server.client) {
            use std::io::Write;
            let _ = s.write_all(b"GET /ws HTTP/1.1\r\n");
            flood.push(s);
        }
    }
    server.wait_for("fd_limit refusals", || {
        server.metric("wsedge_connections_refused_total{kind=\"fd_limit\"}") >= 1.0
    });
    // Refused sockets got a 503 or were closed; the ones the server could
    // still accept are dropped by the handshake timeout; none hangs.
    let mut answered_503 = 0;
    for s in flood.iter_mut().rev().take(50) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf)
            && buf[..n].starts_with(b"HTTP/1.1 503")
        {
            answered_503 += 1;
        }
    }
    assert!(answered_503 > 0, "no refused socket got a 503");
    // Existing clients are still fully served.
    let r = clients[0]
        .call(
            "publish",
            json!({"channel": "survivors", "data": "still here"}),
        )
        .await;
    let off = r["publish"]["offset"].clone();
    for c in clients.iter_mut() {
        let p = c.push().await;
        assert_eq!(p["push"]["pub"]["offset"], off);
    }
    // Once the flood goes away, new clients are accepted again.
    drop(flood);
    let start = std::time::Instant::now();
    loop {
        let mut req = std::net::TcpStream::connect(server.client).unwrap();
        req.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        use std::io::Write;
        req.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = req.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 426") {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "server never recovered: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "server still running"
    );
}

#[tokio::test]
async fn command_flood_gets_errors_then_a_close() {
    let server = Server::start_with(Opts::default().env("WSEDGE_MAX_COMMANDS_PER_SECOND", "20"));
    let mut c = JsonClient::connect(&server).await;
    // 100 pings in one frame: within the second, 19 more run (connect was
    // the first), the next 20 are refused with 114, then the client is cut
    // off with 3503.
    let frame: Vec<String> = (100..200)
        .map(|i| format!("{{\"id\":{i},\"ping\":{{}}}}"))
        .collect();
    c.send_raw(&frame.join("\n")).await;
    let (seen, code) = c.close_code().await;
    assert_eq!(code, Some(3503));
    let ok = seen.iter().filter(|v| v["ping"].is_object()).count();
    let refused = seen.iter().filter(|v| v["error"]["code"] == 114).count();
    assert!((18..=20).contains(&ok), "{ok} pings ran");
    assert_eq!(refused, 20);
    assert!(
        seen.iter()
            .all(|v| v["error"]["code"] != 114 || v["error"]["temporary"] == true)
    );
    let d = seen
        .iter()
        .find(|v| v["push"]["disconnect"].is_object())
        .unwrap();
    assert_eq!(d["push"]["disconnect"]["code"], 3503);
    assert_eq!(d["push"]["disconnect"]["reconnect"], false);
    server.wait_for("flood metrics", || {
        server.metric("wsedge_error_replies_total{kind=\"114\"}") == 20.0
            && server.metric("wsedge_closes_total{kind=\"3503\"}") == 1.0
    });
}
