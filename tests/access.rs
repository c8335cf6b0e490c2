//! The `[access]` rules end to end, on raw sockets: the address filter,
//! the per-IP rate and cap, the `Origin` allow-list, the client behind a
//! trusted proxy (`X-Forwarded-For`, PROXY v2), and the per-user
//! connection cap and publish rate. Every refusal is checked on the wire
//! (HTTP status, error reply, close code) and in the metrics, and clients
//! already connected keep being served.
//!
//! Loopback is all of 127.0.0.0/8, so a test picks the client address a
//! connection comes from: 127.0.0.1 plays one client (or the trusted load
//! balancer), 127.0.0.2 another.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::raw_json::RawJson;
use common::{Opts, RawWs, Server, upgrade_from};
use serde_json::json;

const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A node with `[access]` keys set through `WSEDGE_ACCESS_<KEY>`.
fn node(shards: &str, access: &[(&str, &str)]) -> Server {
    let mut opts = Opts {
        args: vec!["--shards".into(), shards.into()],
        ..Opts::default()
    };
    for (k, v) in access {
        opts = opts.env(&format!("WSEDGE_ACCESS_{}", k.to_ascii_uppercase()), v);
    }
    Server::start_with(opts)
}

/// The status of the answer to an upgrade from `from` with `headers`.
fn status(server: &Server, from: Option<IpAddr>, headers: &str) -> u16 {
    status_of(&upgrade_from(server, from, b"", headers).0)
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An upgraded, connected JSON client from `from`, sending `prefix` and
/// `headers` with its upgrade.
fn client(
    server: &Server,
    from: Option<IpAddr>,
    prefix: &[u8],
    headers: &str,
    user: &str,
) -> RawJson {
    let (head, s) = upgrade_from(server, from, prefix, headers);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut c = RawJson::unconnected(RawWs::from_upgraded(s));
    let r = c.call("connect", json!({"user": user}));
    assert!(r["connect"]["client"].is_string(), "{r}");
    c
}

/// Still served: a `ping` command gets its answer.
fn alive(c: &mut RawJson) {
    let r = c.call("ping", json!({}));
    assert_eq!(r["ping"], json!({}), "{r}");
}

fn refused(server: &Server, kind: &str) -> f64 {
    server.metric(&format!(
        "wsedge_connections_refused_total{{kind=\"{kind}\"}}"
    ))
}

fn handshakes(server: &Server, kind: &str) -> f64 {
    server.metric(&format!("wsedge_handshakes_total{{kind=\"{kind}\"}}"))
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) naming
/// `source` as the client.
fn proxy_v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[test]
fn a_denied_address_gets_403_before_the_upgrade_and_others_are_untouched() {
    let server = node("2", &[("ip_deny", "[\"127.0.0.1/32\"]")]);
    let mut other = client(&server, Some(OTHER), b"", "", "");
    let (head, _s) = upgrade_from(&server, None, b"", "");
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert!(!head.contains("Retry-After"), "{head}");
    assert_eq!(status(&server, None, ""), 403);
    assert_eq!(refused(&server, "ip_denied"), 2.0);
    assert_eq!(handshakes(&server, "forbidden"), 2.0);
    // Refused before anything was allocated: only the other client counts.
    assert_eq!(server.metric("wsedge_connections"), 1.0);
    alive(&mut other);
}

#[test]
fn only_allowed_networks_may_connect() {
    let server = node("2", &[("ip_allow", "[\"127.0.0.2/32\"]")]);
    assert_eq!(status(&server, None, ""), 403);
    assert_eq!(refused(&server, "ip_not_allowed"), 1.0);
    let mut c = client(&server, Some(OTHER), b"", "", "");
    alive(&mut c);
}

#[test]
fn a_fast_address_gets_429_others_do_not_and_the_log_says_it_once() {
    // One new connection per 100 s after a burst of 3: the fourth is too
    // fast however slow the machine.
    let server = node(
        "1",
        &[
            ("per_ip_connection_rate", "0.01"),
            ("per_ip_connection_burst", "3"),
        ],
    );
    let mut held: Vec<RawJson> = (0..3).map(|_| client(&server, None, b"", "", "")).collect();
    let (head, _s) = upgrade_from(&server, None, b"", "");
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    for _ in 0..19 {
        assert_eq!(status(&server, None, ""), 429);
    }
    assert_eq!(refused(&server, "ip_rate"), 20.0);
    assert_eq!(handshakes(&server, "too_many_requests"), 20.0);
    // Another address has its own bucket; connected clients are served.
    let mut other = client(&server, Some(OTHER), b"", "", "");
    alive(&mut other);
    for c in &mut held {
        alive(c);
    }
    // Logged once for the interval, not once per refusal.
    server.wait_for("the refusal log line", || {
        server.log.lock().unwrap().contains("ip_rate=20")
    });
    let log = server.log.lock().unwrap().clone();
    assert_eq!(log.matches("[access] refused").count(), 1, "{log}");
}

#[test]
fn an_address_at_its_cap_gets_503_until_one_of_its_connections_closes() {
    let server = node("2", &[("per_ip_max_connections", "2")]);
    let mut a = client(&server, None, b"", "", "");
    let b = client(&server, None, b"", "", "");
    let (head, _s) = upgrade_from(&server, None, b"", "");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    assert_eq!(refused(&server, "ip_connections"), 1.0);
    assert_eq!(handshakes(&server, "unavailable"), 1.0);
    alive(&mut a);
    let mut other = client(&server, Some(OTHER), b"", "", "");
    alive(&mut other);
    // Closing one gives its place back (released exactly once: the cap
    // holds again after the new one).
    b.close();
    server.wait_for("the closed connection freed", || {
        server.metric("wsedge_connections") == 2.0
    });
    let mut again = client(&server, None, b"", "", "");
    alive(&mut again);
    assert_eq!(status(&server, None, ""), 503);
    assert_eq!(refused(&server, "ip_connections"), 2.0);
}

#[test]
fn origins_outside_the_allow_list_get_403() {
    let server = node(
        "2",
        &[(
            "allowed_origins",
            "[\"https://app.example.com\", \"https://*.example.com\"]",
        )],
    );
    let mut before = client(
        &server,
        None,
        b"",
        "Origin: https://app.example.com\r\n",
        "",
    );
    let (head, _s) = upgrade_from(&server, None, b"", "Origin: https://evil.example\r\n");
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(
        status(&server, None, "Origin: http://app.example.com\r\n"),
        403,
        "the scheme is part of the origin"
    );
    assert_eq!(
        status(&server, None, "Origin: https://example.com\r\n"),
        403,
        "a wildcard is for subdomains only"
    );
    assert_eq!(refused(&server, "origin_refused"), 3.0);
    for ok in ["Origin: https://eu.app.example.com\r\n", ""] {
        let mut c = client(&server, None, b"", ok, "");
        alive(&mut c);
    }
    alive(&mut before);
}

#[test]
fn x_forwarded_for_names_the_client_only_from_a_trusted_proxy() {
    let server = node(
        "2",
        &[
            ("trusted_proxies", "[\"127.0.0.1/32\"]"),
            ("ip_deny", "[\"203.0.113.7/32\"]"),
            ("per_ip_max_connections", "1"),
        ],
    );
    // Through the proxy: the client it names is denied...
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    assert_eq!(status(&server, None, &xff("203.0.113.7")), 403);
    assert_eq!(refused(&server, "ip_denied"), 1.0);
    // ... a forged entry left of the proxy's own is never looked at ...
    assert_eq!(
        status(&server, None, &xff("198.51.100.1, 203.0.113.7")),
        403
    );
    // ... and each client behind the proxy has its own cap.
    let mut c1 = client(&server, None, b"", &xff("198.51.100.1"), "");
    assert_eq!(status(&server, None, &xff("198.51.100.1")), 503);
    let mut c2 = client(&server, None, b"", &xff("198.51.100.2"), "");
    assert_eq!(refused(&server, "ip_connections"), 1.0);
    // From an untrusted peer the header is ignored: not denied, and
    // counted as the peer itself (whose cap then holds).
    let mut spoof = client(&server, Some(OTHER), b"", &xff("203.0.113.7"), "");
    assert_eq!(status(&server, Some(OTHER), &xff("198.51.100.3")), 503);
    assert_eq!(refused(&server, "ip_denied"), 2.0);
    assert_eq!(refused(&server, "ip_connections"), 2.0);
    for c in [&mut c1, &mut c2, &mut spoof] {
        alive(c);
    }
}

#[test]
fn a_proxy_v2_header_from_a_trusted_proxy_names_the_client() {
    let server = node(
        "2",
        &[
            ("trusted_proxies", "[\"127.0.0.1/32\"]"),
            ("proxy_protocol", "true"),
            ("ip_deny", "[\"203.0.113.7/32\"]"),
            ("per_ip_max_connections", "1"),
        ],
    );
    let denied = upgrade_from(&server, None, &proxy_v2([203, 0, 113, 7], 5000), "").0;
    assert!(denied.starts_with("HTTP/1.1 403 "), "{denied}");
    assert_eq!(refused(&server, "ip_denied"), 1.0);
    let mut c = client(&server, None, &proxy_v2([198, 51, 100, 9], 5001), "", "");
    // The client's cap, not the proxy's: the same client again is over
    // it, another behind the same proxy is not.
    let again = upgrade_from(&server, None, &proxy_v2([198, 51, 100, 9], 5002), "").0;
    assert!(again.starts_with("HTTP/1.1 503 "), "{again}");
    // A header in pieces, with the request in the same write as its end.
    let mut s = common::connect_from(server.client, None);
    let header = proxy_v2([198, 51, 100, 10], 5003);
    s.write_all(&header[..7]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut rest = header[7..].to_vec();
    rest.extend_from_slice(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    s.write_all(&rest).unwrap();
    let head = common::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut pieces = RawJson::unconnected(RawWs::from_upgraded(s));
    let r = pieces.call("connect", json!({}));
    assert!(r["connect"]["client"].is_string(), "{r}");
    alive(&mut pieces);
    // A trusted proxy that sends no header: 400, counted.
    let (head, _s) = upgrade_from(&server, None, b"", "");
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert_eq!(refused(&server, "proxy_header"), 1.0);
    // Anyone else is a direct client and sends none.
    let mut direct = client(&server, Some(OTHER), b"", "", "");
    alive(&mut direct);
    alive(&mut c);
}

#[test]
fn a_user_over_its_connection_cap_gets_106_then_3504() {
    let server = node("2", &[("per_user_max_connections", "2")]);
    let mut ann: Vec<RawJson> = (0..2)
        .map(|_| RawJson::user(&server, "ann", None))
        .collect();
    let (_, s) = upgrade_from(&server, None, b"", "");
    let mut third = RawJson::unconnected(RawWs::from_upgraded(s));
    let id = third.send("connect", json!({"user": "ann"}));
    let (frames, code) = third.raw.until_close();
    assert_eq!(code, Some(3504));
    let texts: Vec<String> = frames
        .iter()
        .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
        .collect();
    let reply: serde_json::Value = texts
        .iter()
        .flat_map(|t| t.split('\n'))
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|v: &serde_json::Value| v["id"] == id)
        .unwrap_or_else(|| panic!("no connect reply: {texts:?}"));
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    assert_eq!(reply["error"]["temporary"], false, "{reply}");
    assert!(
        texts.iter().any(|t| t.contains("\"code\":3504")),
        "a disconnect push first: {texts:?}"
    );
    assert_eq!(refused(&server, "user_connections"), 1.0);
    assert_eq!(server.metric("wsedge_closes_total{kind=\"3504\"}"), 1.0);
    // Other users and anonymous connections are not counted against ann.
    let mut bob = RawJson::user(&server, "bob", None);
    let mut anon: Vec<RawJson> = (0..3).map(|_| RawJson::anon(&server)).collect();
    for c in ann.iter_mut().chain(anon.iter_mut()) {
        alive(c);
    }
    alive(&mut bob);
    // One of ann's closes: its place is given back.
    ann.pop().unwrap().close();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut back = loop {
        let (_, s) = upgrade_from(&server, None, b"", "");
        let mut c = RawJson::unconnected(RawWs::from_upgraded(s));
        let id = c.send("connect", json!({"user": "ann"}));
        let r = c.wait("connect reply", |v| v["id"] == id);
        if r["connect"]["client"].is_string() {
            break c;
        }
        assert!(Instant::now() < deadline, "the cap was not released: {r}");
        std::thread::sleep(Duration::from_millis(50));
    };
    alive(&mut back);
}

#[test]
fn a_user_over_its_publish_rate_gets_114_on_this_shard() {
    // One shard: both of ann's connections share her budget there.
    let server = node(
        "1",
        &[
            ("per_user_publish_rate", "0.01"),
            ("per_user_publish_burst", "3"),
        ],
    );
    let mut ann = RawJson::user(&server, "ann", None);
    let mut ann2 = RawJson::user(&server, "ann", None);
    let publish = |c: &mut RawJson| c.call("publish", json!({"channel": "room", "data": {}}));
    for _ in 0..3 {
        let r = publish(&mut ann);
        assert!(r["publish"]["offset"].is_u64(), "{r}");
    }
    let r = publish(&mut ann);
    assert_eq!(r["error"]["code"], 114, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    let r = publish(&mut ann2);
    assert_eq!(r["error"]["code"], 114, "across her connections: {r}");
    assert_eq!(refused(&server, "user_publish_rate"), 2.0);
    assert_eq!(
        server.metric("wsedge_error_replies_total{kind=\"114\"}"),
        2.0
    );
    // Refused publishes cost nothing else: ann stays connected and may
    // do anything but publish; bob has a budget of his own, and anonymous
    // publishers are not limited per user.
    alive(&mut ann);
    let r = ann.call("subscribe", json!({"channel": "room"}));
    assert!(r["subscribe"].is_object(), "{r}");
    let mut bob = RawJson::user(&server, "bob", None);
    let mut anon = RawJson::anon(&server);
    for (c, n) in [(&mut bob, 3), (&mut anon, 10)] {
        for _ in 0..n {
            let r = publish(c);
            assert!(r["publish"]["offset"].is_u64(), "{r}");
        }
    }
    assert_eq!(publish(&mut bob)["error"]["code"], 114);
    assert_eq!(refused(&server, "user_publish_rate"), 3.0);
}
