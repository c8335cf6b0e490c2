//! The SSE fallback on the wire (docs/PROTOCOL.md, "SSE fallback"): raw
//! event streams read chunk by chunk and command posts written by hand,
//! against the real binary with two shards.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::raw_json::RawJson;
use common::sse::{Event, SseStream, open_raw, post, post_with};
use common::{Opts, Server, api_post};
use serde_json::json;

const KEY: &str = "sse-test-key";

fn server() -> Server {
    Server::start_with(Opts::default().env("WSEDGE_API_KEY", KEY))
}

#[test]
fn a_stream_is_the_protocol_as_events_and_posts_feed_it() {
    let s = server();
    let mut st = SseStream::open(&s);
    let head = st.head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(!st.node.is_empty());

    let reply = st.call(&s, "connect", json!({"user": "ann"}));
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    let reply = st.call(&s, "subscribe", json!({"channel": "room"}));
    assert!(reply.get("error").is_none(), "{reply}");

    // A WebSocket client's publication reaches the stream as a push, and
    // the stream's reaches the WebSocket client.
    let (mut ws, _) = RawJson::connect(&s, json!({"user": "bob"}));
    ws.call("subscribe", json!({"channel": "room"}));
    ws.call(
        "publish",
        json!({"channel": "room", "data": {"from": "ws"}}),
    );
    let push = st.push();
    assert_eq!(push["push"]["channel"], "room", "{push}");
    assert_eq!(push["push"]["pub"]["data"]["from"], "ws", "{push}");
    let reply = st.call(
        &s,
        "publish",
        json!({"channel": "room", "data": {"from": "sse"}}),
    );
    assert!(reply.get("error").is_none(), "{reply}");
    let got = ws.wait("the stream's publication", |v| {
        v["push"]["pub"]["data"]["from"] == "sse"
    });
    assert_eq!(got["push"]["channel"], "room", "{got}");

    // Several commands in one post: one reply each, in order, batched into
    // one event of several data lines.
    let body = (10..15)
        .map(|id| json!({"id": id, "ping": {}}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let (status, answer) = post(s.client, &st.session, body.as_bytes());
    assert_eq!(status, 204, "{answer}");
    let mut ids = Vec::new();
    while ids.len() < 5 {
        // Skipping the stream's own publication, echoed as a push.
        if let Some(id) = st.recv()["id"].as_u64() {
            ids.push(id);
        }
    }
    assert_eq!(ids, vec![10, 11, 12, 13, 14]);
    assert!(
        st.log.iter().any(|e| e.matches("data: ").count() == 5),
        "the replies of one post share an event: {:?}",
        st.log
    );
}

#[test]
fn posts_reach_their_stream_in_order_from_either_shard() {
    let s = server();
    // Streams on both shards.
    let mut streams = Vec::new();
    let mut shards = BTreeSet::new();
    while shards.len() < 2 {
        assert!(streams.len() < 40, "every stream landed on one shard");
        let st = SseStream::open(&s);
        shards.insert(st.shard());
        streams.push(st);
    }
    for (i, st) in streams.iter_mut().enumerate() {
        st.call(&s, "connect", json!({"user": format!("u{i}")}));
    }
    // Each post is a new connection, so posts land on both shards; each
    // waits for the one before (as the SDK does).
    let mut posted = 0;
    for st in streams.iter_mut() {
        for n in 0..20 {
            let body = json!({"id": 100 + n, "ping": {}}).to_string();
            let (status, answer) = post(s.client, &st.session, body.as_bytes());
            assert_eq!(status, 204, "{answer}");
            posted += 1;
        }
        let ids: Vec<u64> = (0..20).map(|_| st.recv()["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, (100..120).collect::<Vec<_>>());
    }
    assert_eq!(
        s.metric("wsedge_sse_posts_total{result=\"ok\"}"),
        (posted + streams.len()) as f64,
        "each post counted once (the connects included)"
    );
    assert_eq!(s.metric("wsedge_sse_streams"), streams.len() as f64);
    drop(streams);
    s.wait_for("the streams to be forgotten", || {
        s.metric("wsedge_sse_streams") == 0.0
    });
}

#[test]
fn bad_posts_get_clear_answers() {
    // Short enough to wait out below, long enough that a post passed to the
    // other shard is answered before it on a loaded machine.
    let s = Server::start_with(Opts::default().env("WSEDGE_HANDSHAKE_TIMEOUT", "3s"));
    let mut st = SseStream::open(&s);
    st.call(&s, "connect", json!({}));
    let ping = br#"{"id":1,"ping":{}}"#;

    // The right place with the wrong secret, a made-up id, garbage.
    let mut parts: Vec<&str> = st.session.split('.').collect();
    let forged = "AAAAAAAAAAAAAAAAAAAAAA";
    assert_ne!(parts[3], forged);
    parts[3] = forged;
    for id in [
        parts.join("."),
        "0.1.1.AAAAAAAAAAAAAAAAAAAAAA".into(),
        "x".into(),
    ] {
        let (status, answer) = post(s.client, &id, ping);
        assert_eq!(status, 404, "{id}: {answer}");
    }
    assert_eq!(s.metric("wsedge_sse_posts_total{result=\"unknown\"}"), 3.0);

    // Too large (over max_message_size, 64 KiB), no length, a chunked body,
    // the wrong methods.
    let big = vec![b' '; 64 * 1024 + 1];
    let (status, answer) = post(s.client, &st.session, &big);
    assert_eq!(status, 413, "{answer}");
    let path = format!("/ws/sse/{}", st.session);
    let no_length = format!("POST {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(common::raw_request(s.client, &no_length).starts_with("HTTP/1.1 400 "));
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    assert!(common::raw_request(s.client, &chunked).starts_with("HTTP/1.1 400 "));
    let get_post = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(common::raw_request(s.client, &get_post).starts_with("HTTP/1.1 405 "));
    let (status, _) = post_with(s.client, "/ws/sse", "", ping);
    assert_eq!(status, 405);

    // A body that never completes: dropped at the handshake deadline and
    // counted.
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(s.client).unwrap();
    write!(
        sock,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"id\":"
    )
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert_eq!(s.metric("wsedge_sse_posts_total{result=\"expired\"}"), 1.0);

    // A post of bad JSON closes the stream as a WebSocket would (3501), and
    // the stream is then unknown.
    let (status, answer) = post(s.client, &st.session, b"{not json");
    assert_eq!(status, 204, "{answer}");
    let (code, _) = st.close_event();
    assert_eq!(code, 3501);
    assert!(st.eof_within(Duration::from_secs(5)));
    let (status, _) = post(s.client, &st.session, ping);
    assert_eq!(status, 404);
    // Nothing of this hurt the other shard's or anyone else's service.
    let mut again = SseStream::open(&s);
    assert!(again.call(&s, "connect", json!({}))["connect"].is_object());
}

#[test]
fn a_stream_ends_with_a_close_event_and_the_last_chunk() {
    let s = Server::start_with(
        Opts::default()
            .env("WSEDGE_API_KEY", KEY)
            .env("WSEDGE_AUTH_CONNECT_TIMEOUT", "1s"),
    );
    // A server API disconnect: the `disconnect` push, then the close event
    // with the same code.
    let mut st = SseStream::open(&s);
    st.call(&s, "connect", json!({"user": "carol"}));
    let (status, reply) = api_post(&s, "disconnect", Some(KEY), r#"{"user":"carol"}"#);
    assert_eq!(status, 200, "{reply}");
    let push = st.push();
    assert_eq!(push["push"]["disconnect"]["code"], 3006, "{push}");
    let (code, _) = st.close_event();
    assert_eq!(code, 3006);
    assert!(st.eof_within(Duration::from_secs(5)));

    // No connect in time: 3008, as on WebSocket.
    let mut late = SseStream::open(&s);
    let (code, _) = late.close_event();
    assert_eq!(code, 3008);
}

#[test]
fn keepalives_are_comments_that_need_no_answer() {
    let s = Server::start_with(
        Opts::default()
            .env("WSEDGE_PING_INTERVAL", "2s")
            .env("WSEDGE_PONG_TIMEOUT", "1s")
            // The heartbeat's first deadline follows the connect deadline.
            .env("WSEDGE_AUTH_CONNECT_TIMEOUT", "1s"),
    );
    let mut st = SseStream::open(&s);
    st.call(&s, "connect", json!({}));
    // Three ping intervals: a WebSocket client that never answers is
    // closed with 3003 after the first; the stream just gets its comments.
    let mut pings = 0;
    while pings < 3 {
        match st.next_event_within(Duration::from_secs(4)) {
            Some(Event::Comment(c)) => {
                assert_eq!(c, "ping");
                pings += 1;
            }
            other => panic!("expected a keepalive, got {other:?}; log {:?}", st.log),
        }
    }
    assert!(st.call(&s, "ping", json!({})).get("error").is_none());
}

#[test]
fn origins_follow_the_access_rules_and_get_cors_headers() {
    let s = Server::start_with(Opts::default().env(
        "WSEDGE_ACCESS_ALLOWED_ORIGINS",
        "[\"https://app.example.com\"]",
    ));
    let (_, head, _) = open_raw(s.client, "Origin: https://evil.example\r\n");
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let mut st = SseStream::open_with(&s, "Origin: https://app.example.com\r\n");
    assert!(
        st.head
            .contains("Access-Control-Allow-Origin: https://app.example.com\r\n"),
        "{}",
        st.head
    );
    let body = br#"{"id":1,"connect":{}}"#;
    let path = format!("/ws/sse/{}", st.session);
    let (status, answer) = post_with(s.client, &path, "Origin: https://evil.example\r\n", body);
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = post_with(s.client, &path, "Origin: https://app.example.com\r\n", body);
    assert_eq!(status, 204, "{answer}");
    assert!(
        answer.contains("Access-Control-Allow-Origin: https://app.example.com\r\n"),
        "{answer}"
    );
    assert!(st.reply(1)["connect"].is_object());
}

#[test]
fn the_fallback_can_be_switched_off() {
    let s = Server::start_with(Opts::default().env("WSEDGE_SSE", "false"));
    let (_, head, _) = open_raw(s.client, "");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
}
