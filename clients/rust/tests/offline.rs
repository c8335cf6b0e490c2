//! What the client does with no server to reach (a loopback port nothing
//! listens on): no binary needed. Giving up after
//! `max_reconnect_attempts`, the outbox's drop policy, calls that time out
//! waiting for a connection, what `disconnect` does to queued work, an
//! unauthorized token provider, calls on a client never connected.

use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::time::Duration;

use serde_json::json;
use tokio::time::timeout;
use wsedge_client::{Client, ClientEvent, Error, Options, OutboxPolicy, State, codes};

const WAIT: Duration = Duration::from_secs(30);

/// A URL whose port nothing listens on (bound, then released).
fn nowhere() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("ws://127.0.0.1:{port}/ws")
}

/// `fut`, polled once (so its request is made), to await later.
async fn started<F: Future + Unpin>(mut fut: F) -> F {
    std::future::poll_fn(|cx| {
        assert!(Pin::new(&mut fut).poll(cx).is_pending(), "answered at once");
        std::task::Poll::Ready(())
    })
    .await;
    fut
}

fn fast() -> Options {
    Options {
        min_reconnect_delay: Duration::from_millis(10),
        max_reconnect_delay: Duration::from_millis(50),
        ..Options::default()
    }
}

#[tokio::test]
async fn gives_up_after_max_reconnect_attempts() {
    let client = Client::new(
        nowhere(),
        Options {
            max_reconnect_attempts: Some(3),
            ..fast()
        },
    );
    let mut events = client.events();
    let e = timeout(WAIT, client.connect()).await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Disconnected {
                code: codes::RECONNECT_EXHAUSTED,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(client.state(), State::Disconnected);
    let mut connecting = 0;
    let mut errors = 0;
    loop {
        let ev = timeout(WAIT, events.next()).await.unwrap().unwrap();
        match ev {
            ClientEvent::Connecting { .. } => connecting += 1,
            ClientEvent::Error(Error::Transport(_)) => errors += 1,
            ClientEvent::Disconnected {
                code, reconnect, ..
            } => {
                assert_eq!(code, codes::RECONNECT_EXHAUSTED);
                assert!(!reconnect);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // The first attempt and three reconnects, each refused.
    assert_eq!(connecting, 4);
    assert_eq!(errors, 4);
}

#[tokio::test]
async fn outbox_drop_oldest_then_disconnect_fails_the_rest() {
    let client = Client::new(
        nowhere(),
        Options {
            outbox_capacity: 2,
            outbox_policy: OutboxPolicy::DropOldest,
            ..fast()
        },
    );
    // connect() would wait for a server that never comes: start it aside.
    let connecting = {
        let c = client.clone();
        tokio::spawn(async move { c.connect().await })
    };
    let mut watch = client.watch_state();
    timeout(WAIT, watch.wait_for(|s| *s == State::Connecting))
        .await
        .unwrap()
        .unwrap();
    // Three publishes, each made (polled once) before the next.
    let first = started(Box::pin(client.publish("chat:a", json!(1), None))).await;
    let second = started(Box::pin(client.publish("chat:a", json!(2), None))).await;
    let third = started(Box::pin(client.publish("chat:a", json!(3), None))).await;
    // With two queued, the third evicts the oldest.
    let evicted = timeout(WAIT, first).await.unwrap();
    assert_eq!(evicted.unwrap_err(), Error::OutboxDropped);

    client.disconnect().await;
    assert_eq!(client.state(), State::Disconnected);
    for rest in [second, third] {
        let e = timeout(WAIT, rest).await.unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Disconnected {
                    code: codes::DISCONNECT_CALLED,
                    ..
                }
            ),
            "{e:?}"
        );
    }
    let e = timeout(WAIT, connecting)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
}

#[tokio::test]
async fn calls_while_connecting_time_out() {
    let client = Client::new(
        nowhere(),
        Options {
            timeout: Duration::from_millis(200),
            ..fast()
        },
    );
    let c = client.clone();
    let _connecting = tokio::spawn(async move { c.connect().await });
    let mut watch = client.watch_state();
    timeout(WAIT, watch.wait_for(|s| *s == State::Connecting))
        .await
        .unwrap()
        .unwrap();
    let e = timeout(WAIT, client.ping()).await.unwrap().unwrap_err();
    assert_eq!(e, Error::Timeout);
    let e = timeout(WAIT, client.presence_stats("room:1"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e, Error::Timeout);
}

#[tokio::test]
async fn an_empty_token_means_unauthorized() {
    let client = Client::new(
        nowhere(),
        fast().with_token_provider(|| async { Ok(String::new()) }),
    );
    let e = timeout(WAIT, client.connect()).await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Disconnected {
                code: codes::TOKEN_UNAVAILABLE,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(client.state(), State::Disconnected);
}

#[tokio::test]
async fn a_failing_token_provider_is_retried() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = calls.clone();
    let client = Client::new(
        nowhere(),
        Options {
            max_reconnect_attempts: Some(2),
            ..fast()
        }
        .with_token_provider(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err("backend down".into()) }
        }),
    );
    let mut events = client.events();
    let e = timeout(WAIT, client.connect()).await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Disconnected {
                code: codes::RECONNECT_EXHAUSTED,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    let ev = timeout(WAIT, async {
        loop {
            if let Some(ClientEvent::Error(e)) = events.next().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ev, Error::Token("backend down".into()));
}

#[tokio::test]
async fn calls_before_connect_fail_at_once() {
    let client = Client::new(nowhere(), Options::default());
    assert_eq!(client.state(), State::Disconnected);
    let e = client.publish("chat:a", json!(1), None).await.unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
    let e = client.ping().await.unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
    // Subscribing needs no connection: it waits for one.
    let sub = client
        .subscribe("chat:a", Default::default())
        .await
        .unwrap();
    assert_eq!(sub.channel(), "chat:a");
    assert_eq!(sub.position(), None);
}
