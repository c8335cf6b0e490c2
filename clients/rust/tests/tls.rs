//! `wss://` against the real server binary with native TLS (`[tls]`) and a
//! self-signed certificate made here (rcgen, as the node's own
//! tests/tls.rs): a client that trusts it (as a private CA) connects,
//! subscribes, publishes and receives; a client that trusts another CA, or
//! only the public roots, is refused with a TLS error and does not retry.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tokio::time::timeout;
use wsedge_client::{
    Client, ClientEvent, Error, Options, State, SubscribeOptions, SubscriptionEvent, TlsConfig,
    codes,
};

const WAIT: Duration = Duration::from_secs(30);

/// A self-signed certificate for `localhost`: its PEM, and the key's.
fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// A directory of its own for this test's files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wsedge-client-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A TLS node with the certificate `cert` (PEM) and its key.
fn tls_config(name: &str, cert: &str, key: &str) -> String {
    let d = dir(name);
    let (cert_file, key_file) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    format!(
        r#"
shards = 2
ping_interval = "2s"
pong_timeout = "1s"

[tls]
cert_file = "{}"
key_file = "{}"

[[namespace]]
name = "chat"
history_size = 10
history_ttl = "60s"
recover = true
"#,
        cert_file.display(),
        key_file.display()
    )
}

fn wss_url(server: &support::Server) -> String {
    format!("wss://localhost:{}/ws", server.client.port())
}

fn options(user: &str, tls: TlsConfig) -> Options {
    Options {
        user: Some(user.into()),
        max_reconnect_delay: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        tls,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_private_ca_subscribes_publishes_and_receives() {
    let (cert, key) = self_signed();
    let server = server_or_skip!(&tls_config("ok", &cert, &key));
    let ca = TlsConfig::private_ca_pem(&cert).unwrap();

    let alice = Client::new(wss_url(&server), options("alice", ca.clone()));
    let mut alice_events = alice.events();
    timeout(WAIT, alice.connect()).await.unwrap().unwrap();
    let bob = Client::new(wss_url(&server), options("bob", ca));
    timeout(WAIT, bob.connect()).await.unwrap().unwrap();

    let first = timeout(WAIT, alice_events.next()).await.unwrap().unwrap();
    assert!(matches!(first, ClientEvent::Connecting { .. }), "{first:?}");
    let ev = timeout(WAIT, alice_events.next()).await.unwrap().unwrap();
    let ClientEvent::Connected(info) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(info.user, "alice");

    let mut sub = alice
        .subscribe(
            "chat:tls",
            SubscribeOptions {
                recover: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ev = timeout(WAIT, sub.next()).await.unwrap().unwrap();
    assert!(matches!(ev, SubscriptionEvent::Subscribed { .. }), "{ev:?}");

    // Several publications, one large enough to span TLS records.
    let big = "x".repeat(40_000);
    let mut offsets = Vec::new();
    for data in [json!({"n": 1}), json!({"big": big}), json!({"n": 3})] {
        offsets.push(bob.publish("chat:tls", data, None).await.unwrap().offset);
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        match timeout(WAIT, sub.next()).await.unwrap().unwrap() {
            SubscriptionEvent::Publication(p) => got.push(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.iter().map(|p| p.offset).collect::<Vec<_>>(), offsets);
    assert_eq!(got[0].data.as_json(), Some(&json!({"n": 1})));
    assert_eq!(got[1].data.as_json(), Some(&json!({"big": big})));
    assert_eq!(got[2].data.as_json(), Some(&json!({"n": 3})));

    // Still up across a few of the server's pings (answered over TLS).
    tokio::time::sleep(Duration::from_secs(3)).await;
    alice.ping().await.unwrap();
    assert_eq!(alice.state(), State::Connected);
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = timeout(Duration::from_millis(1), alice_events.next()).await {
        seen.push(ev);
    }
    assert!(seen.is_empty(), "{seen:#?}");
}

/// Refused for good with a TLS error naming the cause: `connect` fails,
/// an `Error::Tls` event and a final `Disconnected` come, no retry.
async fn refused(url: String, tls: TlsConfig) {
    let client = Client::new(url, options("mallory", tls));
    let mut events = client.events();
    let e = timeout(WAIT, client.connect()).await.unwrap().unwrap_err();
    let Error::Disconnected { code, reason } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*code, codes::TLS_FAILED, "{e:?}");
    // (rustls says UnknownIssuer for the public roots, BadSignature for
    // another self-signed CA of the same name as rcgen's.)
    assert!(
        reason.contains("not trusted") && reason.contains("invalid peer certificate"),
        "{reason}"
    );
    let mut seen = Vec::new();
    loop {
        let ev = timeout(WAIT, events.next()).await.unwrap().unwrap();
        let last = matches!(ev, ClientEvent::Disconnected { .. });
        seen.push(ev);
        if last {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|ev| matches!(ev, ClientEvent::Error(Error::Tls(m)) if m.contains("not trusted"))),
        "{seen:#?}"
    );
    assert!(
        matches!(
            seen.last(),
            Some(ClientEvent::Disconnected {
                code: codes::TLS_FAILED,
                reconnect: false,
                ..
            })
        ),
        "{seen:#?}"
    );
    assert_eq!(client.state(), State::Disconnected);
    // No further attempt.
    assert!(
        timeout(Duration::from_secs(2), events.next())
            .await
            .is_err(),
        "an event after the final disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_clearly() {
    let (cert, key) = self_signed();
    let server = server_or_skip!(&tls_config("wrong", &cert, &key));
    let (other, _) = self_signed();
    refused(wss_url(&server), TlsConfig::private_ca_pem(&other).unwrap()).await;
    // The public roots do not know a self-signed certificate either.
    refused(wss_url(&server), TlsConfig::default()).await;
    // The same server, trusted, still serves (the refusals harmed nothing).
    let client = Client::new(
        wss_url(&server),
        options("alice", TlsConfig::default().add_ca_pem(&cert).unwrap()),
    );
    timeout(WAIT, client.connect()).await.unwrap().unwrap();
    client.ping().await.unwrap();
}
