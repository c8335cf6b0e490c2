//! Who may connect, end to end on the raw frame reader: JWT connect and
//! refresh (HS256), the token in the upgrade request, the connect deadline,
//! and one-time tickets redeemed in a real `redis-server`. Every refusal is
//! checked as the client sees it (error reply or close code on the wire)
//! and in the metrics.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::raw_json::RawJson;
use common::redis_server::RedisServer;
use common::{Opts, RawWs, Server};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn jwt_node() -> Server {
    Server::start_with(
        Opts::default()
            .env("WSEDGE_AUTH_MODE", "jwt")
            .env("WSEDGE_AUTH_HMAC_SECRET", SECRET)
            .env("WSEDGE_AUTH_CONNECT_TIMEOUT", "2s")
            .env("WSEDGE_AUTH_REFRESH_GRACE", "1s")
            .env("WSEDGE_AUTH_LEEWAY", "0s"),
    )
}

/// A JSON client that has upgraded but not sent `connect`.
fn fresh(server: &Server) -> RawJson {
    RawJson::unconnected(RawWs::connect(server, Some("edu-matrix-v1.json")))
}

/// Sends `connect` with `params` and returns the close code the server
/// ends the connection with (after any frames).
fn refused(server: &Server, params: Value) -> Option<u16> {
    let mut c = fresh(server);
    c.send("connect", params);
    c.raw.until_close().1
}

/// `wsedge_auth_failures_total{kind}` over every shard (`Server::metric`
/// sums the series whose labels include the ones asked for).
fn failures(server: &Server, kind: &str) -> f64 {
    server.metric(&format!("wsedge_auth_failures_total{{kind=\"{kind}\"}}"))
}

#[test]
fn a_valid_token_names_the_user_and_its_lifetime() {
    let server = jwt_node();
    let exp = now() + 600;
    let t = token(
        json!({"sub": "ann", "exp": exp, "info": {"role": "t"}}),
        SECRET,
    );
    let (_c, r) = RawJson::connect(&server, json!({"token": t, "user": "mallory"}));
    assert_eq!(r["connect"]["user"], "ann", "the token decides, not `user`");
    assert_eq!(r["connect"]["expires"], true);
    let ttl = r["connect"]["ttl"].as_u64().unwrap();
    assert!((598..=600).contains(&ttl), "{r}");
}

#[test]
fn bad_tokens_close_with_3502_and_are_counted() {
    let server = jwt_node();
    let exp = now() + 600;
    let cases = [
        (
            "bad_signature",
            token(
                json!({"sub": "a", "exp": exp}),
                "another-secret-of-at-least-32-bytes!!",
            ),
        ),
        ("malformed", "not.a.jwt".to_string()),
        // alg none: header {"alg":"none"}, no signature.
        (
            "alg_none",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIn0.".to_string(),
        ),
        ("anonymous", token(json!({"sub": "", "exp": exp}), SECRET)),
    ];
    fn kind_of(what: &str) -> &str {
        match what {
            "alg_none" => "alg_not_allowed",
            other => other,
        }
    }
    for (what, t) in &cases {
        let before = failures(&server, kind_of(what));
        assert_eq!(refused(&server, json!({"token": t})), Some(3502), "{what}");
        assert_eq!(
            failures(&server, kind_of(what)) - before,
            1.0,
            "{what} counted once"
        );
    }
    let before = failures(&server, "missing");
    assert_eq!(refused(&server, json!({})), Some(3502), "no token");
    assert_eq!(
        failures(&server, "missing") - before,
        1.0,
        "missing counted"
    );
    // A connected client is untouched by all of it.
    let t = token(json!({"sub": "bob", "exp": exp}), SECRET);
    let (mut bob, _) = RawJson::connect(&server, json!({"token": t}));
    let r = bob.call("ping", json!({}));
    assert!(r.get("ping").is_some(), "{r}");
}

#[test]
fn an_expired_token_is_refused_for_now_and_a_fresh_one_then_connects() {
    let server = jwt_node();
    let mut c = fresh(&server);
    let old = token(json!({"sub": "ann", "exp": now() - 10}), SECRET);
    let r = c.call("connect", json!({"token": old}));
    assert_eq!(r["error"]["code"], 116, "{r}");
    assert_eq!(r["error"]["temporary"], true);
    let t = token(json!({"sub": "ann", "exp": now() + 600}), SECRET);
    let r = c.call("connect", json!({"token": t}));
    assert_eq!(r["connect"]["user"], "ann", "{r}");
}

#[test]
fn refresh_moves_the_expiry_and_needs_the_same_user() {
    let server = jwt_node();
    let t = token(json!({"sub": "ann", "exp": now() + 600}), SECRET);
    let (mut c, _) = RawJson::connect(&server, json!({"token": t}));
    let t2 = token(json!({"sub": "ann", "exp": now() + 1200}), SECRET);
    let r = c.call("refresh", json!({"token": t2}));
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    assert!(r["refresh"]["ttl"].as_u64().unwrap() > 1000, "{r}");
    let expired = token(json!({"sub": "ann", "exp": now() - 5}), SECRET);
    let r = c.call("refresh", json!({"token": expired}));
    assert_eq!(r["error"]["code"], 116, "{r}");
    let other = token(json!({"sub": "bob", "exp": now() + 600}), SECRET);
    c.send("refresh", json!({"token": other}));
    assert_eq!(c.raw.until_close().1, Some(3502));
}

#[test]
fn a_connection_whose_token_expires_unrefreshed_is_closed_with_3007() {
    let server = jwt_node();
    // Expires in 1 s, grace 1 s: closed about 2 s after connecting.
    let t = token(json!({"sub": "ann", "exp": now() + 1}), SECRET);
    let (mut c, r) = RawJson::connect(&server, json!({"token": t}));
    assert_eq!(r["connect"]["expires"], true);
    let (frames, code) = c.raw.until_close();
    assert_eq!(code, Some(3007), "{} frames before the close", frames.len());
    let push: Vec<Value> = frames
        .iter()
        .filter(|f| f.opcode == 1)
        .map(|f| serde_json::from_slice(&f.payload).unwrap())
        .collect();
    assert!(
        push.iter().any(|p| p["push"]["disconnect"]["code"] == 3007
            && p["push"]["disconnect"]["reconnect"] == true),
        "{push:?}"
    );
}

#[test]
fn no_connect_within_the_deadline_closes_with_3008() {
    let server = jwt_node();
    let mut c = fresh(&server);
    assert_eq!(c.raw.until_close().1, Some(3008));
}

#[test]
fn the_token_may_ride_the_upgrade_request() {
    let server = jwt_node();
    let t = token(json!({"sub": "ann", "exp": now() + 600}), SECRET);
    // As a subprotocol: only the wire form is echoed (checked in
    // `connect_path`'s 101 parsing by the reply below).
    let raw = RawWs::connect(&server, Some(&format!("edu-matrix-v1.json, bearer.{t}")));
    let mut c = RawJson::unconnected(raw);
    let r = c.call("connect", json!({}));
    assert_eq!(r["connect"]["user"], "ann", "{r}");
    // As a query parameter.
    let raw = RawWs::connect_path(
        &server,
        &format!("/ws?token={t}"),
        Some("edu-matrix-v1.json"),
        None,
    );
    let mut c = RawJson::unconnected(raw);
    let r = c.call("connect", json!({}));
    assert_eq!(r["connect"]["user"], "ann", "{r}");
}

fn redis_set(url: &str, key: &str, value: &str) {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("EX")
        .arg(30)
        .query(&mut con)
        .unwrap();
}

#[test]
fn tickets_are_redeemed_once_in_redis() {
    let mut redis = RedisServer::start();
    let server = Server::start_with(
        Opts::default()
            .env("WSEDGE_AUTH_MODE", "ticket")
            .env("WSEDGE_AUTH_REDIS_URL", &redis.url()),
    );
    redis_set(
        &redis.url(),
        "wsedge:ticket:t-1",
        r#"{"sub":"ann","info":{"k":1},"channels":["news"]}"#,
    );
    let (mut c, r) = RawJson::connect(&server, json!({"ticket": "t-1"}));
    assert_eq!(r["connect"]["user"], "ann", "{r}");
    assert_eq!(r["connect"]["expires"], false);
    // The claims' channels: a server-side subscription after the reply.
    let p = c.wait("subscribe push", |v| v["push"]["subscribe"].is_object());
    assert_eq!(p["push"]["channel"], "news", "{p}");
    // Used: refused for good.
    assert_eq!(refused(&server, json!({"ticket": "t-1"})), Some(3502));
    assert_eq!(
        refused(&server, json!({"ticket": "never-issued"})),
        Some(3502)
    );
    assert_eq!(
        refused(&server, json!({"ticket": "bad ticket"})),
        Some(3502)
    );
    // Redis down: a temporary error, the connection stays and may retry.
    redis.kill();
    let mut d = fresh(&server);
    let r = d.call("connect", json!({"ticket": "t-2"}));
    assert_eq!(r["error"]["temporary"], true, "{r}");
    redis.restart();
    redis_set(&redis.url(), "wsedge:ticket:t-2", r#"{"sub":"bob"}"#);
    // The worker reconnects on its own; until then the error stays temporary.
    let mut r = Value::Null;
    for _ in 0..20 {
        r = d.call("connect", json!({"ticket": "t-2"}));
        if r["error"]["temporary"] != true {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(r["connect"]["user"], "bob", "{r}");
    // The first client was never disturbed.
    let r = c.call("ping", json!({}));
    assert!(r.get("ping").is_some(), "{r}");
}

/// Positions of `"id":N,` for each id in `text`, in the order given.
fn reply_order(text: &str, ids: &[u32]) -> Vec<usize> {
    ids.iter()
        .map(|id| {
            text.find(&format!("{{\"id\":{id},"))
                .unwrap_or_else(|| panic!("no reply #{id} in:\n{text}"))
        })
        .collect()
}

#[test]
fn commands_pipelined_behind_a_ticket_connect_wait_for_it_and_run_in_order() {
    let redis = RedisServer::start();
    let server = Server::start_with(
        Opts::default()
            .env("WSEDGE_AUTH_MODE", "ticket")
            .env("WSEDGE_AUTH_REDIS_URL", &redis.url()),
    );
    redis_set(&redis.url(), "wsedge:ticket:p-1", r#"{"sub":"ann"}"#);
    // Redis stopped: the connect stays pending while more commands arrive,
    // in the same message and in the next one.
    redis.pause(true);
    let mut c = fresh(&server);
    c.raw.send_text(concat!(
        "{\"id\":1,\"connect\":{\"ticket\":\"p-1\"}}\n",
        "{\"id\":2,\"ping\":{}}\n",
        "{\"id\":3,\"subscribe\":{\"channel\":\"news\"}}"
    ));
    c.raw.send_text("{\"id\":4,\"ping\":{}}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    redis.pause(false);
    let r = c.wait("connect reply", |v| v["id"] == 1);
    assert_eq!(r["connect"]["user"], "ann", "{r}");
    for id in [2, 4] {
        let r = c.wait("ping reply", |v| v["id"] == id);
        assert!(r.get("ping").is_some(), "{r}");
    }
    let r = c.wait("subscribe reply", |v| v["id"] == 3);
    assert!(r["subscribe"].is_object(), "{r}");
    // Pings are answered on the spot, so their replies show the order the
    // commands ran in (a subscribe's reply may come from another shard,
    // later: replies are matched by id).
    let order = reply_order(&c.seen(), &[1, 2, 4]);
    assert!(order.is_sorted(), "ran out of order: {}", c.seen());

    // Refused for now (Redis stalled past the ticket timeout): the held
    // subscribe then runs unconnected and gets 110, as after a JWT refusal.
    redis.pause(true);
    let mut d = fresh(&server);
    d.raw.send_text(
        "{\"id\":1,\"connect\":{\"ticket\":\"p-2\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"news\"}}",
    );
    let r = d.wait("connect reply", |v| v["id"] == 1);
    assert_eq!(r["error"]["temporary"], true, "{r}");
    let r = d.wait("subscribe reply", |v| v["id"] == 2);
    assert_eq!(r["error"]["code"], 110, "{r}");

    // More than max_message_size (64 KiB) held before the answer: 3503.
    let mut e = fresh(&server);
    let big = format!(
        "{{\"id\":2,\"publish\":{{\"channel\":\"news\",\"data\":\"{}\"}}}}",
        "x".repeat(40_000)
    );
    e.raw.send_text(&format!(
        "{{\"id\":1,\"connect\":{{\"ticket\":\"p-3\"}}}}\n{big}"
    ));
    e.raw.send_text(&big);
    assert_eq!(e.raw.until_close().1, Some(3503));
    redis.pause(false);
    // The first client was never disturbed.
    let r = c.call("ping", json!({}));
    assert!(r.get("ping").is_some(), "{r}");
}

/// A JWT node with namespaces of each `subscribe` mode.
fn permissions_node() -> Server {
    let dir = std::env::temp_dir().join(format!("wsedge-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("permissions.toml");
    std::fs::write(
        &path,
        r#"
[auth]
mode = "jwt"
allow_anonymous = true
refresh_grace = "1s"
leeway = "0s"

[[namespace]]
name = "members"
subscribe = "authenticated"

[[namespace]]
name = "private"
subscribe = "token"

[[namespace]]
name = "feed"
subscribe = "server"
"#,
    )
    .unwrap();
    Server::start_with(
        Opts {
            args: vec!["--config".into(), path.to_str().unwrap().into()],
            ..Opts::default()
        }
        .env("WSEDGE_AUTH_HMAC_SECRET", SECRET),
    )
}

fn sub(c: &mut RawJson, channel: &str, token: Option<&str>) -> Value {
    let mut p = json!({"channel": channel});
    if let Some(t) = token {
        p["token"] = t.into();
    }
    c.call("subscribe", p)
}

#[test]
fn namespaces_decide_who_may_subscribe() {
    let server = permissions_node();
    let exp = now() + 600;
    let ann_t = token(json!({"sub": "ann", "exp": exp}), SECRET);
    let anon_t = token(json!({"sub": "", "exp": exp}), SECRET);
    let (mut ann, _) = RawJson::connect(&server, json!({"token": ann_t}));
    let (mut anon, _) = RawJson::connect(&server, json!({"token": anon_t}));

    // authenticated: users yes, anonymous no.
    assert!(sub(&mut ann, "members:a", None)["subscribe"].is_object());
    assert_eq!(sub(&mut anon, "members:a", None)["error"]["code"], 103);
    // server: nobody by request.
    assert_eq!(sub(&mut ann, "feed:a", None)["error"]["code"], 103);
    // token: only with a token for this user and channel.
    let sub_t = |user: &str, channel: &str, exp: u64| {
        token(json!({"sub": user, "channel": channel, "exp": exp}), SECRET)
    };
    assert_eq!(
        sub(&mut ann, "private:a", None)["error"]["code"],
        103,
        "no token"
    );
    let bob = sub_t("bob", "private:a", exp);
    assert_eq!(
        sub(&mut ann, "private:a", Some(&bob))["error"]["code"],
        103,
        "another user's"
    );
    let other = sub_t("ann", "private:b", exp);
    assert_eq!(
        sub(&mut ann, "private:a", Some(&other))["error"]["code"],
        103,
        "another channel's"
    );
    let old = sub_t("ann", "private:a", now() - 5);
    let r = sub(&mut ann, "private:a", Some(&old));
    assert_eq!(
        (r["error"]["code"].clone(), r["error"]["temporary"].clone()),
        (json!(116), json!(true))
    );
    // A connection token is not a subscription token.
    assert_eq!(
        sub(&mut ann, "private:a", Some(&ann_t))["error"]["code"],
        103
    );
    let good = sub_t("ann", "private:a", exp);
    assert!(sub(&mut ann, "private:a", Some(&good))["subscribe"].is_object());
    let r = ann.call(
        "sub_refresh",
        json!({"channel": "private:a", "token": sub_t("ann", "private:a", exp + 600)}),
    );
    assert_eq!(r["sub_refresh"]["expires"], true, "{r}");
    // Public channels stay public; sub_refresh there: never expires.
    assert!(sub(&mut anon, "chat:a", None)["subscribe"].is_object());
    let r = anon.call("sub_refresh", json!({"channel": "chat:a", "token": "x"}));
    assert_eq!(r["sub_refresh"]["expires"], false, "{r}");
    let r = anon.call("sub_refresh", json!({"channel": "chat:b", "token": "x"}));
    assert_eq!(r["error"]["code"], 108, "not subscribed");
}

#[test]
fn an_unrenewed_subscription_token_ends_the_subscription_not_the_connection() {
    let server = permissions_node();
    let t = token(json!({"sub": "ann", "exp": now() + 600}), SECRET);
    let (mut ann, _) = RawJson::connect(&server, json!({"token": t}));
    // Expires in 1 s, grace 1 s.
    let s = token(
        json!({"sub": "ann", "channel": "private:a", "exp": now() + 1}),
        SECRET,
    );
    assert!(sub(&mut ann, "private:a", Some(&s))["subscribe"].is_object());
    let p = ann.wait("unsubscribe push", |v| v["push"]["unsubscribe"].is_object());
    assert_eq!(p["push"]["channel"], "private:a", "{p}");
    // The connection itself goes on.
    let r = ann.call("ping", json!({}));
    assert!(r.get("ping").is_some(), "{r}");
}
