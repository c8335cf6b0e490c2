//! The client against the real server binary: connect, subscribe,
//! publish; reconnect and resubscribe after a SIGKILL and restart on the
//! same port; the offline outbox sent once after the restart; recovery
//! after a connection the server API drops; a close that says "do not
//! reconnect"; token refresh; dead-link detection; disconnect and drop.
//!
//! Deadlines are generous (the machine is noisy) and nothing asserts on
//! how long anything took. Each server pings every 2 s (pong within 1 s),
//! so every test also checks that the client answers pings: a client that
//! did not would be closed with 3003, which fails the test's waits.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::time::timeout;
use wsedge_client::{
    Client, ClientEvent, Data, Error, Events, HistoryOptions, Options, OutboxPolicy, State,
    StreamPosition, SubscribeOptions, Subscription, SubscriptionEvent, UnsubscribeReason, codes,
};

/// How long any one expected thing may take.
const WAIT: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
shards = 2
node_name = "edge-rsdk"
ping_interval = "2s"
pong_timeout = "1s"

[[namespace]]
name = "chat"
history_size = 100
history_ttl = "300s"
recover = true

[[namespace]]
name = "room"
presence = true
join_leave = true
"#;

/// Options for tests: reconnect windows capped at 1 s so restarts are
/// noticed quickly.
fn options(user: &str) -> Options {
    Options {
        user: Some(user.into()),
        max_reconnect_delay: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        ..Options::default()
    }
}

async fn connected(server: &support::Server, user: &str) -> (Client, Events) {
    connected_with(server, options(user)).await
}

async fn connected_with(server: &support::Server, opts: Options) -> (Client, Events) {
    let client = Client::new(server.url(), opts);
    let events = client.events();
    timeout(WAIT, client.connect())
        .await
        .expect("connected in time")
        .expect("connect");
    assert_eq!(client.state(), State::Connected);
    (client, events)
}

/// The next subscription event matching `want`; the others are returned
/// too, in order, for checks on what came before.
async fn sub_until(
    sub: &mut Subscription,
    what: &str,
    want: impl Fn(&SubscriptionEvent) -> bool,
) -> (SubscriptionEvent, Vec<SubscriptionEvent>) {
    let mut before = Vec::new();
    loop {
        let ev = timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}; before it: {before:#?}"))
            .unwrap_or_else(|| panic!("subscription ended before {what}; before it: {before:#?}"));
        if want(&ev) {
            return (ev, before);
        }
        before.push(ev);
    }
}

async fn subscribed(sub: &mut Subscription) -> (SubscriptionEvent, Vec<SubscriptionEvent>) {
    sub_until(sub, "Subscribed", |e| {
        matches!(e, SubscriptionEvent::Subscribed { .. })
    })
    .await
}

/// Publications' data, in order, among `events`.
fn data_of(events: &[SubscriptionEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| match e {
            SubscriptionEvent::Publication(p) => p.data.as_json().cloned(),
            _ => None,
        })
        .collect()
}

/// Publications until one with `last` as data; returns all of them (data).
async fn pubs_until(sub: &mut Subscription, last: &Value) -> Vec<Value> {
    let (ev, before) = sub_until(
        sub,
        &format!("publication {last}"),
        |e| matches!(e, SubscriptionEvent::Publication(p) if p.data.as_json() == Some(last)),
    )
    .await;
    let mut all = data_of(&before);
    all.extend(data_of(&[ev]));
    all
}

async fn event_until(
    events: &mut Events,
    what: &str,
    want: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let mut before = Vec::new();
    loop {
        let ev = timeout(WAIT, events.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}; before it: {before:#?}"))
            .expect("client task ended");
        if want(&ev) {
            return ev;
        }
        before.push(ev);
    }
}

async fn state_becomes(client: &Client, state: State) {
    let mut watch = client.watch_state();
    timeout(WAIT, watch.wait_for(|s| *s == state))
        .await
        .unwrap_or_else(|_| panic!("state {state:?} within {WAIT:?}"))
        .expect("client task ended");
}

fn recover() -> SubscribeOptions {
    SubscribeOptions {
        recover: true,
        ..SubscribeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscribe_publish_receive() {
    let server = server_or_skip!(CONFIG);
    let (alice, mut alice_events) = connected(&server, "alice").await;
    let (bob, _) = connected(&server, "bob").await;

    let ClientEvent::Connected(info) = event_until(&mut alice_events, "Connected", |e| {
        matches!(e, ClientEvent::Connected(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(info.user, "alice");
    assert_eq!(info.node, "edge-rsdk");
    assert_eq!(info.ping, 2);

    let mut sub = alice.subscribe("chat:basic", recover()).await.unwrap();
    let (ev, _) = subscribed(&mut sub).await;
    assert!(
        matches!(
            ev,
            SubscriptionEvent::Subscribed {
                recovering: false,
                recoverable: true,
                ..
            }
        ),
        "{ev:?}"
    );
    // A second subscription to the same channel is refused locally.
    let again = alice
        .subscribe("chat:basic", SubscribeOptions::default())
        .await;
    assert_eq!(
        again.err(),
        Some(Error::AlreadySubscribed("chat:basic".into()))
    );

    let published = bob
        .publish("chat:basic", json!({"text": "hi"}), None)
        .await
        .unwrap();
    assert_eq!(published.idempotency_key.len(), 32, "{published:?}");
    let (ev, _) = sub_until(&mut sub, "the publication", |e| {
        matches!(e, SubscriptionEvent::Publication(_))
    })
    .await;
    let SubscriptionEvent::Publication(p) = ev else {
        unreachable!()
    };
    assert_eq!(p.offset, published.offset);
    assert_eq!(p.data, Data::Json(json!({"text": "hi"})));
    assert_eq!(sub.position().map(|p| p.offset), Some(published.offset));

    // The same key again is accepted once: the original offset, nothing new.
    let key = Some("rsdk-key-1".to_string());
    let first = bob
        .publish("chat:basic", json!(2), key.clone())
        .await
        .unwrap();
    let repeat = bob.publish("chat:basic", json!(2), key).await.unwrap();
    assert_eq!(first.offset, repeat.offset);
    let history = alice
        .history("chat:basic", HistoryOptions::default())
        .await
        .unwrap();
    let data: Vec<Value> = history
        .publications
        .iter()
        .filter_map(|p| p.data.as_json().cloned())
        .collect();
    assert_eq!(data, [json!({"text": "hi"}), json!(2)]);
    assert_eq!(history.offset, first.offset);

    // Presence, in a namespace that has it.
    let mut room = alice
        .subscribe("room:1", SubscribeOptions::default())
        .await
        .unwrap();
    subscribed(&mut room).await;
    let stats = bob.presence_stats("room:1").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));
    let presence = bob.presence("room:1").await.unwrap();
    assert_eq!(presence.len(), 1);
    assert_eq!(presence.values().next().unwrap().info.user, "alice");
    let mut bob_room = bob
        .subscribe("room:1", SubscribeOptions::default())
        .await
        .unwrap();
    subscribed(&mut bob_room).await;
    let (join, _) = sub_until(
        &mut room,
        "bob's join",
        |e| matches!(e, SubscriptionEvent::Join(i) if i.user == "bob"),
    )
    .await;
    assert!(matches!(join, SubscriptionEvent::Join(_)));

    // Errors come back typed: presence where the namespace has none (103),
    // rpc on a node without NATS (127).
    let e = bob.presence("chat:basic").await.unwrap_err();
    assert_eq!(e.code(), Some(103), "{e:?}");
    let e = bob.rpc("rooms.list", json!({})).await.unwrap_err();
    assert_eq!(e.code(), Some(127), "{e:?}");
    bob.ping().await.unwrap();

    // Unsubscribing ends the stream.
    bob_room.unsubscribe().await;
    let (leave, _) = sub_until(
        &mut room,
        "bob's leave",
        |e| matches!(e, SubscriptionEvent::Leave(i) if i.user == "bob"),
    )
    .await;
    assert!(matches!(leave, SubscriptionEvent::Leave(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resubscribes_after_a_server_restart() {
    let mut server = server_or_skip!(CONFIG);
    let (alice, mut alice_events) = connected(&server, "alice").await;
    let (bob, _) = connected(&server, "bob").await;
    let mut sub = alice.subscribe("chat:restart", recover()).await.unwrap();
    subscribed(&mut sub).await;
    bob.publish("chat:restart", json!("before"), None)
        .await
        .unwrap();
    assert_eq!(
        pubs_until(&mut sub, &json!("before")).await,
        [json!("before")]
    );
    let before = sub.position().unwrap();

    server.kill();
    let ev = event_until(&mut alice_events, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            ev,
            ClientEvent::Disconnected {
                reconnect: true,
                ..
            }
        ),
        "{ev:?}"
    );
    state_becomes(&alice, State::Connecting).await;

    server.restart();
    event_until(&mut alice_events, "Connected again", |e| {
        matches!(e, ClientEvent::Connected(_))
    })
    .await;
    // Resubscribed by itself, asking to recover from where it was; the
    // restarted node has a new epoch, so nothing can be recovered.
    let (ev, _) = subscribed(&mut sub).await;
    let SubscriptionEvent::Subscribed {
        recovering,
        recovered,
        position,
        ..
    } = ev
    else {
        unreachable!()
    };
    assert!(recovering);
    assert!(!recovered);
    assert_ne!(position.epoch, before.epoch);

    state_becomes(&bob, State::Connected).await;
    bob.publish("chat:restart", json!("after"), None)
        .await
        .unwrap();
    assert_eq!(
        pubs_until(&mut sub, &json!("after")).await,
        [json!("after")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_made_while_the_server_is_down_are_sent_once() {
    let mut server = server_or_skip!(CONFIG);
    let channel = "chat:outbox";
    let (carol, _) = connected(&server, "carol").await;
    let publisher_opts = Options {
        outbox_capacity: 3,
        outbox_policy: OutboxPolicy::RejectNew,
        ..options("pub")
    };
    let (publisher, _) = connected_with(&server, publisher_opts).await;
    let mut carol_sub = carol.subscribe(channel, recover()).await.unwrap();
    subscribed(&mut carol_sub).await;

    server.kill();
    state_becomes(&publisher, State::Connecting).await;
    // Three publishes, their requests made (one poll) before the fourth's.
    let three = futures_util::future::join_all(
        (1..=3).map(|i| publisher.publish(channel, json!({"n": i}), None)),
    );
    tokio::pin!(three);
    std::future::poll_fn(|cx| {
        assert!(
            three.as_mut().poll(cx).is_pending(),
            "answered while the server is down"
        );
        std::task::Poll::Ready(())
    })
    .await;
    // The outbox holds three: a fourth is refused at once.
    let refused = timeout(WAIT, publisher.publish(channel, json!({"n": 4}), None))
        .await
        .expect("refused at once");
    assert_eq!(refused.unwrap_err(), Error::OutboxFull);

    server.restart();
    let offsets: Vec<u64> = timeout(WAIT, three)
        .await
        .expect("outbox publishes answered in time")
        .into_iter()
        .map(|r| r.expect("outbox publish accepted").offset)
        .collect();
    // Sent in order, each once: offsets 1, 2, 3 of the restarted node's
    // channel, and the channel's position is 3 (nothing went twice).
    assert_eq!(offsets, [1, 2, 3]);

    // Another subscriber, new on the restarted node, recovering from the
    // start of the channel's epoch, sees each exactly once...
    let (dave, _) = connected(&server, "dave").await;
    let position = dave
        .history(
            channel,
            HistoryOptions {
                limit: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(position.offset, 3);
    let since = StreamPosition {
        epoch: position.epoch,
        offset: 0,
    };
    let mut dave_sub = dave
        .subscribe(
            channel,
            SubscribeOptions {
                recover: true,
                since: Some(since),
                token: None,
                token_provider: None,
            },
        )
        .await
        .unwrap();
    let (ev, _) = subscribed(&mut dave_sub).await;
    assert!(
        matches!(
            ev,
            SubscriptionEvent::Subscribed {
                recovering: true,
                recovered: true,
                ..
            }
        ),
        "{ev:?}"
    );
    // The subscriber from before the kill resubscribes by itself (waited
    // for here, so the next publication reaches it live).
    let (ev, _) = subscribed(&mut carol_sub).await;
    let SubscriptionEvent::Subscribed { position, .. } = ev else {
        unreachable!()
    };

    // Then a live publication: dave gets it after the recovered ones...
    publisher
        .publish(channel, json!({"n": 5}), None)
        .await
        .unwrap();
    assert_eq!(
        pubs_until(&mut dave_sub, &json!({"n": 5})).await,
        [
            json!({"n": 1}),
            json!({"n": 2}),
            json!({"n": 3}),
            json!({"n": 5})
        ]
    );

    // ...and carol too: what she saw after her resubscribe has no
    // duplicates and nothing at or before her new position.
    let (_, before) = sub_until(
        &mut carol_sub,
        "publication 5",
        |e| matches!(e, SubscriptionEvent::Publication(p) if p.offset == 4),
    )
    .await;
    let mut seen: Vec<u64> = before
        .iter()
        .filter_map(|e| match e {
            SubscriptionEvent::Publication(p) => Some(p.offset),
            _ => None,
        })
        .collect();
    seen.push(4);
    assert!(
        seen.iter().all(|o| *o > position.offset),
        "{seen:?} after {position:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_what_a_dropped_connection_missed() {
    let server = server_or_skip!(CONFIG);
    let channel = "chat:recover";
    let (alice, mut alice_events) = connected(&server, "alice").await;
    let (bob, _) = connected(&server, "bob").await;
    let mut sub = alice.subscribe(channel, recover()).await.unwrap();
    subscribed(&mut sub).await;
    for i in 1..=2 {
        bob.publish(channel, json!(i), None).await.unwrap();
    }
    assert_eq!(pubs_until(&mut sub, &json!(2)).await, [json!(1), json!(2)]);

    // The backend drops alice's connections (3006: reconnect).
    let r = server.api("disconnect", r#"{"user": "alice"}"#);
    assert_eq!(r["result"], json!({}), "{r}");
    let ev = event_until(&mut alice_events, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    assert_eq!(
        ev,
        ClientEvent::Disconnected {
            code: 3006,
            reason: "disconnected".into(),
            reconnect: true
        }
    );
    // Published while alice is away (or, on a fast reconnect, just after:
    // either way she must see each once, in order).
    for i in 3..=4 {
        bob.publish(channel, json!(i), None).await.unwrap();
    }
    let (ev, _) = subscribed(&mut sub).await;
    assert!(
        matches!(
            ev,
            SubscriptionEvent::Subscribed {
                recovering: true,
                recovered: true,
                ..
            }
        ),
        "{ev:?}"
    );
    bob.publish(channel, json!(5), None).await.unwrap();
    assert_eq!(
        pubs_until(&mut sub, &json!(5)).await,
        [json!(3), json!(4), json!(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_says_do_not_reconnect_is_final() {
    let server = server_or_skip!(CONFIG);
    let (eve, mut events) = connected(&server, "eve").await;
    let r = server.api(
        "disconnect",
        r#"{"user": "eve", "code": 4501, "reason": "banned"}"#,
    );
    assert_eq!(r["result"], json!({}), "{r}");
    let ev = event_until(&mut events, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    assert_eq!(
        ev,
        ClientEvent::Disconnected {
            code: 4501,
            reason: "banned".into(),
            reconnect: false
        }
    );
    state_becomes(&eve, State::Disconnected).await;
    let e = eve.publish("chat:x", json!(1), None).await.unwrap_err();
    assert_eq!(
        e,
        Error::Disconnected {
            code: 4501,
            reason: "banned".into()
        }
    );
    let e = eve.ping().await.unwrap_err();
    assert!(matches!(e, Error::Disconnected { code: 4501, .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_then_connect_again_and_drop_ends_the_task() {
    let server = server_or_skip!(CONFIG);
    let (client, mut events) = connected(&server, "frank").await;
    let mut sub = client.subscribe("chat:again", recover()).await.unwrap();
    subscribed(&mut sub).await;

    client.disconnect().await;
    assert_eq!(client.state(), State::Disconnected);
    let ev = event_until(&mut events, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    assert_eq!(
        ev,
        ClientEvent::Disconnected {
            code: codes::DISCONNECT_CALLED,
            reason: "disconnect called".into(),
            reconnect: false
        }
    );
    let e = client
        .publish("chat:again", json!(1), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Disconnected { code: 0, .. }), "{e:?}");

    // Connecting again resubscribes.
    timeout(WAIT, client.connect()).await.unwrap().unwrap();
    let (ev, _) = subscribed(&mut sub).await;
    assert!(matches!(ev, SubscriptionEvent::Subscribed { .. }), "{ev:?}");
    client
        .publish("chat:again", json!("x"), None)
        .await
        .unwrap();
    assert_eq!(pubs_until(&mut sub, &json!("x")).await, [json!("x")]);

    // Dropping the last handle ends the task: the streams end.
    drop(client);
    timeout(WAIT, async {
        while events.next().await.is_some() {}
        while sub.next().await.is_some() {}
    })
    .await
    .expect("the task ended and closed the streams");
}

/// A dead link (the server stopped, its sockets open) is noticed from the
/// missing pings; once the server continues, the client reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_detected_and_left() {
    let server = server_or_skip!(CONFIG);
    let opts = Options {
        max_server_ping_delay: Duration::from_secs(1),
        timeout: Duration::from_secs(3),
        ..options("gina")
    };
    let (client, mut events) = connected_with(&server, opts).await;
    server.signal("STOP");
    let ev = event_until(&mut events, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    server.signal("CONT");
    assert!(
        matches!(
            ev,
            ClientEvent::Disconnected {
                code: codes::NO_PING,
                reconnect: true,
                ..
            }
        ),
        "{ev:?}"
    );
    event_until(&mut events, "Connected again", |e| {
        matches!(e, ClientEvent::Connected(_))
    })
    .await;
    client.ping().await.unwrap();
}

// ---- tokens -----------------------------------------------------------

const SECRET: &str = "rsdk-test-secret-rsdk-test-secret-0123";

fn jwt_config() -> String {
    format!(
        r#"
shards = 2
ping_interval = "2s"
pong_timeout = "1s"

[auth]
mode = "jwt"
hmac_secret = "{SECRET}"
leeway = "0s"
refresh_grace = "1s"

[[namespace]]
name = "private"
subscribe = "token"
"#
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub` expiring in `ttl` seconds.
fn token(sub: &str, ttl: u64) -> String {
    sign(&json!({"sub": sub, "exp": unix_now() + ttl}))
}

/// An HS256 subscription token for `sub` and `channel`, expiring at `exp`.
fn sub_token(sub: &str, channel: &str, exp: u64) -> String {
    sign(&json!({"sub": sub, "channel": channel, "exp": exp}))
}

/// `claims` signed with HS256 and the test secret.
fn sign(claims: &Value) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let header = B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mac = hmac_sha256(SECRET.as_bytes(), signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(mac))
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner_hash = Sha256::new()
        .chain_update(&inner)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer)
        .chain_update(inner_hash)
        .finalize()
        .to_vec()
}

/// Short-lived tokens from a provider are refreshed before they expire:
/// the connection outlives several of them without a disconnect (without
/// refresh the server closes it with 3007 once `exp` + 1 s passes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_before_they_expire() {
    let server = server_or_skip!(&jwt_config());
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let opts = Options {
        max_reconnect_delay: Duration::from_secs(1),
        ..Options::default()
    }
    .with_token_provider(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(token("tess", 4))
        }
    });
    let (client, mut events) = connected_with(&server, opts).await;
    let ClientEvent::Connected(info) = event_until(&mut events, "Connected", |e| {
        matches!(e, ClientEvent::Connected(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(info.user, "tess");
    assert!(info.expires, "{info:?}");

    // Four tokens of 4 s each: well past the first one's exp + grace.
    timeout(WAIT, async {
        while calls.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the provider was asked for four tokens");
    client.ping().await.unwrap();
    // Nothing but the first Connected so far: no disconnect, no error.
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = timeout(Duration::from_millis(1), events.next()).await {
        seen.push(ev);
    }
    assert!(seen.is_empty(), "{seen:#?}");
    assert_eq!(client.state(), State::Connected);
}

/// A static token the server refuses (bad signature) is a 3502 close:
/// do not reconnect, and `connect` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_final() {
    let server = server_or_skip!(&jwt_config());
    let mut bad = token("mallory", 60);
    bad.push('x');
    let client = Client::new(
        server.url(),
        Options {
            token: Some(bad),
            ..Options::default()
        },
    );
    let mut events = client.events();
    let e = timeout(WAIT, client.connect()).await.unwrap().unwrap_err();
    assert!(matches!(e, Error::Disconnected { code: 3502, .. }), "{e:?}");
    let ev = event_until(&mut events, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            ev,
            ClientEvent::Disconnected {
                code: 3502,
                reconnect: false,
                ..
            }
        ),
        "{ev:?}"
    );
    assert_eq!(client.state(), State::Disconnected);
}

// ---- subscription tokens ------------------------------------------------

/// A client of user `tess` on the JWT node (a connection token that does
/// not expire).
async fn tess(server: &support::Server) -> (Client, Events) {
    let opts = Options {
        token: Some(sign(&json!({"sub": "tess"}))),
        max_reconnect_delay: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        ..Options::default()
    };
    connected_with(server, opts).await
}

/// Waits until `calls` reaches `n`.
async fn calls_reach(calls: &AtomicU32, n: u32) {
    timeout(WAIT, async {
        while calls.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the token provider was not called {n} times"));
}

/// A subscription whose tokens last 3 s each is renewed before each one
/// expires (`sub_refresh`), and again after a renewal refused with 116 (the
/// provider handed out an expired token once): it outlives several tokens
/// and the server's `exp` + 1 s grace, and still receives publications.
/// Without renewals the server would end it with an `unsubscribe` push at
/// the first token's `exp` + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_tokens_are_renewed_before_they_expire_and_after_116() {
    let server = server_or_skip!(&jwt_config());
    let (client, mut events) = tess(&server).await;
    let channel = "private:renewed";
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let options = SubscribeOptions::default().with_token_provider(move |channel: String| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            // The second token has expired already: its renewal gets 116.
            let exp = if n == 2 {
                unix_now() - 30
            } else {
                unix_now() + 3
            };
            Ok(sub_token("tess", &channel, exp))
        }
    });
    let mut sub = client.subscribe(channel, options).await.unwrap();
    let (ev, before) = subscribed(&mut sub).await;
    assert!(before.is_empty(), "{before:#?}");
    assert!(matches!(ev, SubscriptionEvent::Subscribed { .. }), "{ev:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The refused renewal is reported, then renewed with the next token.
    let (ev, before) = sub_until(&mut sub, "the 116", |e| {
        matches!(e, SubscriptionEvent::Error(_))
    })
    .await;
    assert!(before.is_empty(), "{before:#?}");
    assert_eq!(
        match &ev {
            SubscriptionEvent::Error(e) => e.code(),
            _ => None,
        },
        Some(116),
        "{ev:?}"
    );
    // Six tokens: well past the first one's exp + grace (and the expired
    // one's). Each renewal is a sub_refresh the server accepted, or the
    // next would not have been asked for in time.
    let started = std::time::Instant::now();
    calls_reach(&calls, 6).await;
    assert!(
        started.elapsed() > Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    client.publish(channel, json!("alive"), None).await.unwrap();
    let (_, before) = sub_until(
        &mut sub,
        "the publication",
        |e| matches!(e, SubscriptionEvent::Publication(p) if p.data.as_json() == Some(&json!("alive"))),
    )
    .await;
    assert!(before.is_empty(), "no unsubscribe, no error: {before:#?}");
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = timeout(Duration::from_millis(1), events.next()).await {
        seen.push(ev);
    }
    assert!(
        seen.iter().all(|e| matches!(
            e,
            ClientEvent::Connecting { .. } | ClientEvent::Connected(_)
        )),
        "{seen:#?}"
    );
    assert_eq!(client.state(), State::Connected);
}

/// A renewal that cannot get a token is reported on the subscription
/// (`Error::Token`, retried), and once the token expires the server ends
/// the subscription: `Unsubscribed(TokenExpired)`, the connection stays.
/// A provider that answers with an empty token ends the subscription at
/// once (`Unauthorized`), and its `unsubscribe` reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_subscription_token_renewals_are_reported() {
    let server = server_or_skip!(&jwt_config());
    let (client, _) = tess(&server).await;

    let failing = "private:failing";
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let options = SubscribeOptions::default().with_token_provider(move |channel: String| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                Ok(sub_token("tess", &channel, unix_now() + 2))
            } else {
                Err("the token backend is down".into())
            }
        }
    });
    let mut sub = client.subscribe(failing, options).await.unwrap();
    subscribed(&mut sub).await;
    let (ev, _) = sub_until(&mut sub, "the provider's failure", |e| {
        matches!(e, SubscriptionEvent::Error(_))
    })
    .await;
    assert!(
        matches!(&ev, SubscriptionEvent::Error(Error::Token(m)) if m.contains("the token backend is down") && m.contains(failing)),
        "{ev:?}"
    );
    let (ev, before) = sub_until(&mut sub, "the end", |e| {
        matches!(e, SubscriptionEvent::Unsubscribed(_))
    })
    .await;
    assert_eq!(
        ev,
        SubscriptionEvent::Unsubscribed(UnsubscribeReason::TokenExpired)
    );
    assert!(
        before
            .iter()
            .all(|e| matches!(e, SubscriptionEvent::Error(Error::Token(_)))),
        "{before:#?}"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2);
    assert!(
        timeout(WAIT, sub.next()).await.unwrap().is_none(),
        "the stream ended"
    );
    client.ping().await.unwrap();
    assert_eq!(client.state(), State::Connected);

    // An empty token on renewal: unauthorized, unsubscribed by the client.
    let refused = "private:refused";
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let options = SubscribeOptions::default().with_token_provider(move |channel: String| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Ok(if n == 1 {
                sub_token("tess", &channel, unix_now() + 2)
            } else {
                String::new()
            })
        }
    });
    let mut sub = client.subscribe(refused, options).await.unwrap();
    subscribed(&mut sub).await;
    let (ev, _) = sub_until(&mut sub, "the end", |e| {
        matches!(e, SubscriptionEvent::Unsubscribed(_))
    })
    .await;
    assert_eq!(
        ev,
        SubscriptionEvent::Unsubscribed(UnsubscribeReason::Unauthorized)
    );
    // The client's unsubscribe went out: subscribing again is not 105.
    let again = SubscribeOptions {
        token: Some(sub_token("tess", refused, unix_now() + 60)),
        ..SubscribeOptions::default()
    };
    let mut sub = client.subscribe(refused, again).await.unwrap();
    let (ev, before) = subscribed(&mut sub).await;
    assert!(before.is_empty(), "{before:#?}");
    assert!(matches!(ev, SubscriptionEvent::Subscribed { .. }), "{ev:?}");
}
