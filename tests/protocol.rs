//! Wire protocol v1 end to end: both subprotocols, replies, errors and the
//! HTTP upgrade, against the real binary.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use wsedge::engine::wire::binary::client_frame;
use wsedge::engine::wire::proto;
use wsedge::engine::wire::{ConnectParams, Data, Method};

#[tokio::test]
async fn json_protocol_round_trip() {
    let server = Server::start();
    let mut c = JsonClient::connect(&server).await;
    let r = c.call("subscribe", json!({"channel": "chat:room1"})).await;
    assert_eq!(r["subscribe"]["offset"], 0, "{r}");
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_string();
    assert_eq!(epoch.len(), 16);

    // Any JSON value goes through unchanged, the publisher too receives it.
    let data = json!({"text": "hello ✓", "n": [1, 2.5, null, true], "nested": {"a": "\"q\""}});
    let r = c
        .call("publish", json!({"channel": "chat:room1", "data": data}))
        .await;
    assert_eq!(r["publish"]["offset"], 1, "{r}");
    let p = c.push().await;
    assert_eq!(p["push"]["channel"], "chat:room1");
    assert_eq!(p["push"]["pub"]["offset"], 1);
    assert_eq!(p["push"]["pub"]["data"], data);

    let r = c.call("ping", json!({})).await;
    assert_eq!(r, json!({"id": r["id"], "ping": {}}));
    let r = c
        .call("unsubscribe", json!({"channel": "chat:room1"}))
        .await;
    assert_eq!(r["unsubscribe"], json!({}));
    let r = c
        .call("unsubscribe", json!({"channel": "chat:room1"}))
        .await;
    assert_eq!(r["error"]["code"], 108);
}

#[tokio::test]
async fn several_commands_in_one_frame_get_replies_in_one_frame() {
    let server = Server::start();
    let mut c = JsonClient::connect(&server).await;
    c.send_raw("{\"id\":10,\"ping\":{}}\n{\"id\":11,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":12,\"ping\":{}}")
        .await;
    let m = next(&mut c.ws).await;
    let Message::Text(t) = m else { panic!("{m:?}") };
    let lines: Vec<serde_json::Value> = t
        .as_str()
        .split('\n')
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The subscribe may be answered later (its channel's home may be on the
    // other shard); the pings come back batched in this frame.
    assert!(lines.iter().any(|v| v["id"] == 10));
    assert!(lines.iter().any(|v| v["id"] == 12));
}

#[tokio::test]
async fn errors_are_replies_with_codes() {
    let server = Server::start();
    let mut ws = connect(&server, Some("edu-matrix-v1.json")).await;
    // Anything before connect is refused.
    ws.send(Message::text(
        "{\"id\":1,\"subscribe\":{\"channel\":\"a\"}}",
    ))
    .await
    .unwrap();
    let Message::Text(t) = next(&mut ws).await else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["id"], 1);
    assert_eq!(v["error"]["code"], 110);
    assert_eq!(v["error"]["temporary"], false);
    drop(ws);

    let mut c = JsonClient::connect(&server).await;
    let r = c.call("teleport", json!({})).await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    assert_eq!(r["error"]["message"], "unknown method");
    let r = c.call("subscribe", json!({"chan": "x"})).await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    let r = c
        .call("subscribe", json!({"channel": "bad channel!"}))
        .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let r = c
        .call("publish", json!({"channel": "a:b:c", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let r = c.call("connect", json!({})).await;
    assert_eq!(r["error"]["code"], 111, "{r}");
    c.call("subscribe", json!({"channel": "dup"})).await;
    let r = c.call("subscribe", json!({"channel": "dup"})).await;
    assert_eq!(r["error"]["code"], 105, "{r}");
    server.wait_for("error metrics", || {
        server.metric("wsedge_error_replies_total{kind=\"104\"}") >= 1.0
    });
}

#[tokio::test]
async fn malformed_json_closes_with_bad_request() {
    let server = Server::start();
    let mut c = JsonClient::connect(&server).await;
    c.send_raw("this is not json").await;
    let (seen, code) = c.close_code().await;
    assert_eq!(code, Some(3501));
    let d = seen
        .iter()
        .find(|v| v["push"]["disconnect"].is_object())
        .expect("disconnect push");
    assert_eq!(d["push"]["disconnect"]["code"], 3501);
    assert_eq!(d["push"]["disconnect"]["reconnect"], false);
}

#[tokio::test]
async fn binary_frame_on_json_connection_is_unsupported() {
    let server = Server::start();
    let mut c = JsonClient::connect(&server).await;
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let (_, code) = c.close_code().await;
    assert_eq!(code, Some(1003));
}

#[tokio::test]
async fn no_subprotocol_means_json() {
    let server = Server::start();
    let mut ws = connect(&server, None).await;
    ws.send(Message::text("{\"id\":1,\"connect\":{}}"))
        .await
        .unwrap();
    let Message::Text(t) = next(&mut ws).await else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["connect"]["ping"], 25);
}

fn server_frame(m: &Message) -> proto::ServerFrame<'_> {
    let Message::Binary(b) = m else {
        panic!("expected binary, got {m:?}")
    };
    flatbuffers::root::<proto::ServerFrame>(b).expect("valid ServerFrame")
}

#[tokio::test]
async fn binary_protocol_round_trip() {
    let server = Server::start();
    let mut ws = connect(&server, Some("edu-matrix-v1")).await;
    let frame = client_frame(&[
        (1, Method::Connect(ConnectParams::default())),
        (
            2,
            Method::Subscribe {
                channel: "bin:1".into(),
                recover: false,
                since: None,
                token: None,
            },
        ),
    ]);
    ws.send(Message::binary(frame)).await.unwrap();
    let mut got_connect = false;
    let mut got_sub = false;
    while !(got_connect && got_sub) {
        let m = next(&mut ws).await;
        let sf = server_frame(&m);
        for msg in sf.messages().unwrap() {
            let r = msg.reply().expect("reply");
            match r.id() {
                1 => {
                    assert!(r.result_as_connect().unwrap().client().is_some());
                    got_connect = true;
                }
                2 => {
                    assert_eq!(r.result_as_subscribe().unwrap().offset(), 0);
                    got_sub = true;
                }
                other => panic!("unexpected id {other}"),
            }
        }
    }
    // Opaque binary data, and JSON data, both reach a binary subscriber as bytes.
    let payload = [0u8, 159, 146, 150, 255];
    let frame = client_frame(&[(
        3,
        Method::Publish {
            channel: "bin:1".into(),
            data: Data::Bytes(&payload),
            idempotency_key: None,
            durable_ack: false,
        },
    )]);
    ws.send(Message::binary(frame)).await.unwrap();
    let mut got_reply = false;
    let mut got_pub = false;
    while !(got_reply && got_pub) {
        let m = next(&mut ws).await;
        for msg in server_frame(&m).messages().unwrap() {
            if let Some(r) = msg.reply() {
                assert_eq!(r.id(), 3);
                assert_eq!(r.result_as_publish().unwrap().offset(), 1);
                got_reply = true;
            }
            if let Some(p) = msg.push_() {
                assert_eq!(p.channel(), Some("bin:1"));
                let publication = p.body_as_pub().unwrap();
                assert_eq!(publication.offset(), 1);
                assert_eq!(publication.data().unwrap().bytes(), &payload);
                got_pub = true;
            }
        }
    }
    // Unknown method from a binary client.
    let frame = client_frame(&[(4, Method::Ping)]);
    ws.send(Message::binary(frame)).await.unwrap();
    let m = next(&mut ws).await;
    let sf = server_frame(&m);
    assert!(
        sf.messages()
            .unwrap()
            .get(0)
            .reply()
            .unwrap()
            .result_as_ping()
            .is_some()
    );
}

#[tokio::test]
async fn json_and_binary_subscribers_see_the_same_publication() {
    let server = Server::start();
    let mut j = JsonClient::connect(&server).await;
    j.call("subscribe", json!({"channel": "mix"})).await;
    let mut b = connect(&server, Some("edu-matrix-v1")).await;
    b.send(Message::binary(client_frame(&[
        (1, Method::Connect(ConnectParams::default())),
        (
            2,
            Method::Subscribe {
                channel: "mix".into(),
                recover: false,
                since: None,
                token: None,
            },
        ),
    ])))
    .await
    .unwrap();
    let mut replies = 0;
    while replies < 2 {
        let m = next(&mut b).await;
        replies += server_frame(&m).messages().unwrap().len();
    }
    // Binary publisher, non-JSON bytes: JSON subscribers get base64.
    b.send(Message::binary(client_frame(&[(
        3,
        Method::Publish {
            channel: "mix".into(),
            data: Data::Bytes(&[0xff, 0x00]),
            idempotency_key: None,
            durable_ack: false,
        },
    )])))
    .await
    .unwrap();
    let p = j.push().await;
    assert_eq!(p["push"]["pub"]["b64data"], "/wA=");
    // JSON publisher: binary subscribers get the JSON text as bytes.
    j.call("publish", json!({"channel": "mix", "data": {"k": 1}}))
        .await;
    let p = j.push().await;
    assert_eq!(p["push"]["pub"]["data"], json!({"k": 1}));
    loop {
        let m = next(&mut b).await;
        let sf = server_frame(&m);
        let found = sf
            .messages()
            .unwrap()
            .iter()
            .filter_map(|m| m.push_())
            .find_map(|p| {
                let publication = p.body_as_pub()?;
                (publication.offset() == 2).then(|| publication.data().unwrap().bytes().to_vec())
            });
        if let Some(data) = found {
            assert_eq!(data, br#"{"k":1}"#);
            break;
        }
    }
}

#[test]
fn http_upgrade_answers() {
    let server = Server::start();
    let r = raw_request(server.client, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 426 "), "{r}");
    assert!(r.contains("Sec-WebSocket-Version: 13"));
    let r = raw_request(server.client, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let r = raw_request(
        server.client,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    let r = raw_request(server.client, "POST /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    let big = format!("GET /ws HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000));
    let r = raw_request(server.client, &big);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    // The echo endpoint is off unless configured.
    let r = raw_request(server.client, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    server.wait_for("handshake metrics", || {
        server.metric("wsedge_handshakes_total{kind=\"upgrade_required\"}") >= 1.0
            && server.metric("wsedge_handshakes_total{kind=\"not_found\"}") >= 2.0
            && server.metric("wsedge_handshakes_total{kind=\"headers_too_large\"}") >= 1.0
    });
}

#[test]
fn handshake_timeout_drops_stalled_upgrades() {
    let server = Server::start_with(Opts::default().env("WSEDGE_HANDSHAKE_TIMEOUT", "1s"));
    let mut s = std::net::TcpStream::connect(server.client).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Half a request, then nothing (a socket that sends nothing at all
    // stays in the kernel under TCP_DEFER_ACCEPT).
    use std::io::{Read, Write};
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = [0u8; 16];
    // The server closes the socket without a word once the timeout passes.
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    server.wait_for("timeout metric", || {
        server.metric("wsedge_handshakes_total{kind=\"timeout\"}") >= 1.0
    });
}
