//! The server HTTP API against the real binary: authentication, the HTTP
//! statuses of requests it cannot run, command-level errors, and calls
//! that reach the shards (`info`, `publish`).

mod common;

use common::{JsonClient, Opts, RawWs, Server, TIMEOUT, api_post, http_exchange};
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "test-key-0123";

fn server_with_key() -> Server {
    Server::start_with(
        Opts::default()
            .env("WSEDGE_API_KEY", KEY)
            .env("WSEDGE_NODE_NAME", "edge-test"),
    )
}

fn requests(s: &Server, method: &str, status: &str) -> f64 {
    s.metric(&format!(
        "wsedge_api_requests_total{{method=\"{method}\",status=\"{status}\"}}"
    ))
}

#[test]
fn no_key_configured_refuses_every_call() {
    let s = Server::start();
    for key in [Some(KEY), Some(""), None] {
        let (status, body) = api_post(&s, "info", key, "{}");
        assert_eq!(status, 401, "key {key:?}: {body}");
        assert_eq!(body["error"]["code"], 401, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no api_key"),
            "{body}"
        );
    }
    assert_eq!(requests(&s, "info", "unauthorized"), 3.0);
}

#[test]
fn wrong_or_missing_key_is_401() {
    let s = server_with_key();
    for key in [Some("test-key-0124"), Some("test-key-012"), None] {
        let (status, body) = api_post(&s, "info", key, "{}");
        assert_eq!(status, 401, "key {key:?}: {body}");
        assert_eq!(body["error"]["code"], 401, "{body}");
    }
    // The wrong scheme is refused too.
    let (status, _, _) = http_exchange(
        s.api,
        &format!("POST /api/info HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 2\r\n"),
        b"{}",
    );
    assert_eq!(status, 401);
    // Unauthenticated callers learn nothing about methods.
    assert_eq!(api_post(&s, "nope", None, "{}").0, 401);
}

#[test]
fn requests_it_cannot_run_get_http_errors() {
    let s = Server::start_with(
        Opts::default()
            .env("WSEDGE_API_KEY", KEY)
            .env("WSEDGE_API_MAX_BODY", "1024"),
    );
    let auth = format!("Authorization: apikey {KEY}\r\n");

    let (status, body) = api_post(&s, "nope", Some(KEY), "{}");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], 404);

    let (status, headers, _) =
        http_exchange(s.api, &format!("GET /api/info HTTP/1.1\r\n{auth}"), b"");
    assert_eq!(status, 405);
    assert!(
        headers.to_ascii_lowercase().contains("allow: post"),
        "{headers}"
    );

    let (status, body) = api_post(&s, "publish", Some(KEY), r#"{"channel": "a", "data": }"#);
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("invalid JSON: "), "{msg}");
    assert!(msg.contains("column"), "names where: {msg}");

    // Declared too large: refused before the body is sent.
    let (status, _, body) = http_exchange(
        s.api,
        &format!("POST /api/publish HTTP/1.1\r\n{auth}Content-Length: 1025\r\n"),
        b"",
    );
    assert_eq!(status, 413, "{body}");
    // Chunked, found too large while reading.
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(1100));
    let chunked = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let (status, _, body) = http_exchange(
        s.api,
        &format!("POST /api/publish HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n"),
        chunked.as_bytes(),
    );
    assert_eq!(status, 413, "{body}");

    assert_eq!(requests(&s, "unknown", "not_found"), 1.0);
    assert_eq!(requests(&s, "info", "method_not_allowed"), 1.0);
    assert_eq!(requests(&s, "publish", "bad_request"), 1.0);
    assert_eq!(requests(&s, "publish", "too_large"), 2.0);
}

#[test]
fn bad_commands_get_error_replies_with_200() {
    let s = server_with_key();
    let call = |m: &str, b: &str| {
        let (status, body) = api_post(&s, m, Some(KEY), b);
        assert_eq!(status, 200, "{m} {b}: {body}");
        body
    };
    let e = call("publish", r#"{"channel": "a"}"#);
    assert_eq!(e["error"]["code"], 107, "{e}");
    assert_eq!(e["error"]["temporary"], false);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("data"),
        "{e}"
    );
    assert_eq!(
        call("publish", r#"{"channel": "a b", "data": 1}"#)["error"]["code"],
        109
    );
    assert_eq!(
        call(
            "history",
            r#"{"channel": "a", "since": {"epoch": "zz", "offset": 1}}"#
        )["error"]["code"],
        107
    );
    assert_eq!(call("disconnect", r#"{"user": 5}"#)["error"]["code"], 107);
    let b = call(
        "batch",
        r#"{"commands": [{"method": "nope"}, {"method": "publish", "params": {"channel": "a"}}]}"#,
    );
    assert_eq!(
        b["result"]["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["error"]["code"].clone())
            .collect::<Vec<_>>(),
        [json!(104), json!(107)],
        "{b}"
    );
    assert_eq!(requests(&s, "publish", "error"), 2.0);
    assert_eq!(requests(&s, "batch", "ok"), 1.0);
}

/// Needs the shard side of the API (answers `info`).
#[test]
fn info_reports_node_and_shards() {
    let s = server_with_key();
    let (status, body) = api_post(&s, "info", Some(KEY), "");
    assert_eq!(status, 200, "{body}");
    let r = &body["result"];
    assert_eq!(r["node"], "edge-test", "{body}");
    assert_eq!(r["shards"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(r["connections"], 0, "{body}");
    assert!(r["uptime_seconds"].is_u64(), "{body}");
    assert_eq!(requests(&s, "info", "ok"), 1.0);
}

/// Needs the shard side of the API (answers `publish`).
#[tokio::test]
async fn publish_reaches_subscribers() {
    let s = server_with_key();
    let mut c = JsonClient::connect(&s).await;
    let r = c.call("subscribe", json!({"channel": "news"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let mut offsets: Vec<Value> = Vec::new();
    for i in 1..=2 {
        let body = format!(r#"{{"channel": "news", "data": {{"n": {i}}}}}"#);
        // A blocking call is fine here: the server is another process and
        // its pushes wait in the socket.
        let (status, reply) = api_post(&s, "publish", Some(KEY), &body);
        assert_eq!(status, 200, "{reply}");
        offsets.push(reply["result"]["offset"].clone());
        assert!(reply["result"]["offset"].is_u64(), "{reply}");
    }
    assert_eq!(offsets, [json!(1), json!(2)]);
    for i in 1..=2 {
        let p = tokio::time::timeout(TIMEOUT, c.push()).await.expect("push");
        assert_eq!(p["push"]["pub"]["data"], json!({"n": i}), "{p}");
    }
}

#[test]
fn api_address_in_use_fails_clearly() {
    // wsedge nodes share their ports on purpose (SO_REUSEPORT, for restarts
    // without downtime); "in use" means another program holds the port.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, err) = common::run_expecting_exit(
        std::process::Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("WSEDGE_API_LISTEN", other.local_addr().unwrap().to_string()),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot bind the server API listener"), "{err}");
}

/// The JSON objects of one raw text frame (one per line).
fn objects(f: &common::RawFrame) -> Vec<Value> {
    assert_eq!(f.opcode, 1, "a text frame");
    std::str::from_utf8(&f.payload)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Reads raw frames until `want` matches an object; fails with what came.
fn read_until(ws: &mut RawWs, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let f = ws
            .read_frame()
            .unwrap_or_else(|| panic!("end of stream waiting for {what}: {seen:?}"));
        for v in objects(&f) {
            if want(&v) {
                return v;
            }
            seen.push(v);
        }
    }
    panic!("no {what} in {seen:?}");
}

/// A backend notifies a user through the personal channel, subscribes and
/// unsubscribes the user's connections, and disconnects them — checked on
/// the wire with a raw client.
#[test]
fn personal_channel_and_user_operations_on_the_wire() {
    let s = Server::start_with(
        Opts::default()
            .env("WSEDGE_API_KEY", KEY)
            .env("WSEDGE_PERSONAL_CHANNEL", "true")
            .env("WSEDGE_SHARDS", "2"),
    );
    let mut ws = RawWs::connect(&s, Some("edu-matrix-v1.json"));
    ws.s.set_read_timeout(Some(TIMEOUT)).unwrap();
    ws.send_text(r#"{"id":1,"connect":{"user":"ann"}}"#);
    let r = read_until(&mut ws, "connect reply", |v| v["id"] == 1);
    assert_eq!(r["connect"]["user"], "ann", "{r}");
    let p = read_until(&mut ws, "personal subscribe push", |v| !v["push"].is_null());
    assert_eq!(p["push"]["channel"], "#ann", "{p}");
    assert_eq!(p["push"]["subscribe"]["recovered"], false, "{p}");

    let (status, reply) = api_post(
        &s,
        "publish",
        Some(KEY),
        r##"{"channel":"#ann","data":{"note":"hi"}}"##,
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    let p = read_until(&mut ws, "personal publication", |v| {
        !v["push"]["pub"].is_null()
    });
    assert_eq!(
        p,
        json!({"push": {"channel": "#ann", "pub": {"offset": 1, "data": {"note": "hi"}}}})
    );

    let (status, reply) = api_post(
        &s,
        "subscribe",
        Some(KEY),
        r#"{"user":"ann","channel":"news"}"#,
    );
    assert_eq!((status, &reply["result"]), (200, &json!({})), "{reply}");
    let p = read_until(&mut ws, "subscribe push", |v| {
        !v["push"]["subscribe"].is_null()
    });
    assert_eq!(p["push"]["channel"], "news", "{p}");
    let (_, reply) = api_post(&s, "publish", Some(KEY), r#"{"channel":"news","data":2}"#);
    assert!(reply["result"]["offset"].is_u64(), "{reply}");
    let p = read_until(&mut ws, "news publication", |v| !v["push"]["pub"].is_null());
    assert_eq!(p["push"]["channel"], "news");
    let (_, reply) = api_post(&s, "channels", Some(KEY), "{}");
    assert_eq!(
        reply["result"]["channels"]["news"]["num_clients"], 1,
        "{reply}"
    );
    let (_, reply) = api_post(
        &s,
        "unsubscribe",
        Some(KEY),
        r#"{"user":"ann","channel":"news"}"#,
    );
    assert_eq!(reply["result"], json!({}), "{reply}");
    let p = read_until(&mut ws, "unsubscribe push", |v| {
        !v["push"]["unsubscribe"].is_null()
    });
    assert_eq!(p, json!({"push": {"channel": "news", "unsubscribe": {}}}));

    let (_, reply) = api_post(&s, "disconnect", Some(KEY), r#"{"user":"ann"}"#);
    assert_eq!(reply["result"], json!({}), "{reply}");
    let (frames, code) = ws.until_close();
    let last = frames.last().map(objects).unwrap_or_default();
    assert_eq!(
        last.last().map(|v| v["push"]["disconnect"]["code"].clone()),
        Some(json!(3006)),
        "{last:?}"
    );
    assert_eq!(code, Some(3006));

    // A backend's own code and reason reach the client in the push and the
    // close frame.
    let mut bob = RawWs::connect(&s, Some("edu-matrix-v1.json"));
    bob.s.set_read_timeout(Some(TIMEOUT)).unwrap();
    bob.send_text(r#"{"id":1,"connect":{"user":"bob"}}"#);
    read_until(&mut bob, "connect reply", |v| v["id"] == 1);
    let (_, reply) = api_post(
        &s,
        "disconnect",
        Some(KEY),
        r#"{"user":"bob","code":4501,"reason":"banned"}"#,
    );
    assert_eq!(reply["result"], json!({}), "{reply}");
    let d = read_until(&mut bob, "disconnect push", |v| {
        !v["push"]["disconnect"].is_null()
    });
    assert_eq!(
        d["push"]["disconnect"],
        json!({"code": 4501, "reason": "banned", "reconnect": false})
    );
    let (_, code) = bob.until_close();
    assert_eq!(code, Some(4501));
}
