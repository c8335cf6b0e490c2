//! Native TLS (`wss://`) end to end: the node started with a certificate
//! generated here (`WSEDGE_TLS_CERT_FILE`/`WSEDGE_TLS_KEY_FILE`), talked to
//! by an independent client (Python `websockets` on OpenSSL) and by the raw
//! frame reader over rustls, so frame boundaries, close codes and
//! close_notify are checked byte by byte after decryption.
//!
//! Covered: round trip and a message spanning many TLS records each way,
//! the server's close codes over TLS, close_notify before the end of the
//! stream, a plaintext client and a wrong ALPN on the TLS port (closed,
//! counted, others untouched), a refusal at the connection cap (closed
//! without a plaintext 503), SIGHUP certificate reload (new connections
//! see the new certificate, open ones keep working, a bad file keeps the
//! current one), handshakes beyond `handshakes_per_turn` waiting for the
//! next turn, and a bad certificate file stopping the node at start.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::raw_json::RawJson;
use common::*;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};

/// The Python interpreter with `websockets` installed: `EDGE_TEST_PYTHON`
/// (set by scripts/test-all.sh, which installs it), else `python3`.
fn python() -> String {
    std::env::var("EDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A self-signed certificate for `localhost` in PEM files (removed on
/// drop); `regenerate` writes a new one in place, as a renewal would.
struct Cert {
    dir: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new() -> Cert {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-tls-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cert {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            dir,
            der: CertificateDer::from(Vec::new()),
        };
        c.regenerate();
        c
    }

    fn regenerate(&mut self) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&self.cert_file, ck.cert.pem()).unwrap();
        std::fs::write(&self.key_file, ck.signing_key.serialize_pem()).unwrap();
        self.der = ck.cert.der().clone();
    }

    /// The certificate alone, as a CA file for a client to trust.
    fn ca_file(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::copy(&self.cert_file, &p).unwrap();
        p
    }

    /// SHA-256 of the certificate, in hex (as the Python client prints).
    fn sha256(&self) -> String {
        sha256(&self.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn opts(&self) -> Opts {
        Opts::default()
            .env("WSEDGE_TLS_CERT_FILE", self.cert_file.to_str().unwrap())
            .env("WSEDGE_TLS_KEY_FILE", self.key_file.to_str().unwrap())
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SHA-256 of `data`, through the crypto provider rustls uses.
fn sha256(data: &[u8]) -> Vec<u8> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let suite = provider
        .cipher_suites
        .iter()
        .find(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        .unwrap();
    let rustls::SupportedCipherSuite::Tls13(s) = suite else {
        unreachable!("a TLS 1.3 suite");
    };
    s.common.hash_provider.hash(data).as_ref().to_vec()
}

/// A rustls client trusting only `roots`, offering `alpn`.
fn client(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A JSON client on the raw frame reader over TLS, after `connect`.
fn tls_json(server: &Server, cert: &Cert) -> RawJson {
    let raw = RawWs::connect_tls(
        server.client,
        client(&[&cert.der], &[b"http/1.1"]),
        Some("edu-matrix-v1.json"),
    )
    .expect("TLS connection");
    let mut c = RawJson::unconnected(raw);
    let reply = c.call("connect", json!({}));
    assert!(reply.get("connect").is_some(), "{reply}");
    c
}

/// Runs tests/clients/tls_client.py; its one JSON line.
fn python_client(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/tls_client.py"
        ))
        .args(args)
        .output()
        .expect("run python (scripts/test-all.sh installs it with websockets)");
    assert!(
        out.status.success(),
        "python TLS client failed (needs the `websockets` package):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wss_url(server: &Server) -> String {
    format!("wss://{}/ws", server.client)
}

/// Reads until the peer closes or resets; what arrived.
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("read: {e} (after {got:?})"),
        }
    }
}

#[test]
fn an_independent_client_round_trips_large_messages_and_gets_close_codes_over_tls() {
    let cert = Cert::new();
    let server = Server::start_with(cert.opts().arg("--max-message-size").arg("1048576"));
    let ca = cert.ca_file("ca.pem");
    // 300 kB: about 19 full TLS records each way.
    let seen = python_client(&[
        "roundtrip",
        &wss_url(&server),
        ca.to_str().unwrap(),
        "300000",
    ]);
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(seen["close"], 3501, "{seen}");
    assert_eq!(seen["alpn"], "http/1.1", "{seen}");
    assert_eq!(seen["cert_sha256"], cert.sha256(), "{seen}");
    assert_eq!(
        server.metric("wsedge_tls_handshakes_total{kind=\"ok\"}"),
        1.0
    );
    // This kernel has no tls ULP: the record layer stays in rustls.
    let kernel = server.metric("wsedge_tls_record_layer_total{kind=\"kernel\"}");
    let rustls = server.metric("wsedge_tls_record_layer_total{kind=\"rustls\"}");
    assert_eq!(kernel + rustls, 1.0);
    assert_eq!(server.metric("wsedge_tls_ktls"), kernel);
    assert!(
        server.log.lock().unwrap().contains("TLS on"),
        "the start-up log says TLS is on"
    );
}

#[test]
fn frames_close_codes_and_close_notify_are_exact_on_the_raw_reader_over_tls() {
    let cert = Cert::new();
    let server = Server::start_with(cert.opts().arg("--max-message-size").arg("1048576"));
    let mut a = tls_json(&server, &cert);
    assert_eq!(
        a.raw.tls().unwrap().alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN http/1.1"
    );
    let r = a.call("subscribe", json!({"channel": "tls:raw"}));
    assert!(r.get("subscribe").is_some(), "{r}");
    // A publication much larger than a TLS record arrives as one whole
    // frame (pubs_through checks each publication is alone in its frame,
    // FIN set, uncompressed, one JSON object per line).
    let text: String = (0..200_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let r = a.call(
        "publish",
        json!({"channel": "tls:raw", "data": {"text": text}}),
    );
    assert!(r.get("publish").is_some(), "{r}");
    let pubs = a.pubs_through("tls:raw", 1);
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0]["push"]["pub"]["data"]["text"], text.as_str());

    // A command that is not JSON: the disconnect push, then close 3501,
    // then close_notify (read_frame returns None only on a clean TLS end
    // of stream; a TCP end without close_notify is an error it panics on).
    a.raw.send_text("not json");
    let (frames, code) = a.raw.until_close();
    assert_eq!(code, Some(3501));
    let push = String::from_utf8(frames.last().expect("disconnect push").payload.clone()).unwrap();
    assert!(push.contains("3501"), "{push}");
    a.raw.send_frame(true, 8, &3501u16.to_be_bytes());
    assert!(a.raw.read_frame().is_none(), "nothing after the close");

    // A WebSocket protocol error (reserved opcode 3) over TLS: 1002.
    let mut b = tls_json(&server, &cert);
    b.raw.send_frame(true, 3, b"x");
    let (_, code) = b.raw.until_close();
    assert_eq!(code, Some(1002));
    b.raw.send_frame(true, 8, &1002u16.to_be_bytes());
    assert!(b.raw.read_frame().is_none());
    server.wait_for("both closes counted", || {
        server.metric("wsedge_closes_total{kind=\"3501\"}") == 1.0
            && server.metric("wsedge_closes_total{kind=\"1002\"}") == 1.0
    });
    assert_eq!(
        server.metric("wsedge_tls_handshakes_total{kind=\"ok\"}"),
        2.0
    );
}

#[test]
fn plaintext_and_wrong_alpn_clients_on_the_tls_port_are_closed_and_others_keep_working() {
    let cert = Cert::new();
    let server = Server::start_with(cert.opts());
    let mut ok = tls_json(&server, &cert);
    let r = ok.call("subscribe", json!({"channel": "tls:others"}));
    assert!(r.get("subscribe").is_some(), "{r}");

    // A plaintext WebSocket upgrade: no HTTP answer, at most a TLS alert,
    // then the end of the connection.
    let mut plain = TcpStream::connect(server.client).unwrap();
    plain
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let got = read_to_end(&mut plain);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    if !got.is_empty() {
        assert_eq!(got[0], 21, "only a TLS alert record: {got:?}");
    }
    server.wait_for("the plaintext client counted", || {
        server.metric("wsedge_tls_handshakes_total{kind=\"invalid_message\"}") == 1.0
    });

    // A client that offers ALPN without http/1.1 is refused in TLS.
    let e = RawWs::connect_tls(
        server.client,
        client(&[&cert.der], &[b"h2"]),
        Some("edu-matrix-v1.json"),
    )
    .err()
    .expect("ALPN h2 only is refused");
    assert!(e.to_string().contains("NoApplicationProtocol"), "{e}");
    server.wait_for("the ALPN refusal counted", || {
        server.metric("wsedge_tls_handshakes_total{kind=\"no_application_protocol\"}") == 1.0
    });

    // A client that does not trust the certificate: counted as an alert.
    let stranger = Cert::new();
    let e = RawWs::connect_tls(
        server.client,
        client(&[&stranger.der], &[b"http/1.1"]),
        None,
    )
    .err()
    .expect("an untrusted certificate fails the handshake");
    assert!(e.to_string().contains("certificate"), "{e}");
    server.wait_for("the client's alert counted", || {
        server.metric("wsedge_tls_handshakes_total{kind=\"alert\"}") == 1.0
    });

    // The established client never noticed.
    let r = ok.call("publish", json!({"channel": "tls:others", "data": 7}));
    assert!(r.get("publish").is_some(), "{r}");
    let pubs = ok.pubs_through("tls:others", 1);
    assert_eq!(pubs[0]["push"]["pub"]["data"], 7);
    assert_eq!(server.metric("wsedge_tls_errors_total"), 0.0);
}

#[test]
fn a_refusal_at_the_connection_cap_closes_without_a_plaintext_answer() {
    let cert = Cert::new();
    let server = Server::start_with(cert.opts().env("WSEDGE_MAX_CONNECTIONS", "1"));
    let mut first = tls_json(&server, &cert);
    // The listener defers accepting until data arrives: send a byte.
    let mut refused = TcpStream::connect(server.client).unwrap();
    refused.write_all(&[22]).unwrap();
    let got = read_to_end(&mut refused);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    server.wait_for("the refusal counted", || {
        server.metric("wsedge_connections_refused_total{kind=\"max_connections\"}") == 1.0
    });
    let r = first.call("ping", json!({}));
    assert!(r.get("ping").is_some(), "{r}");
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let mut cert = Cert::new();
    let server = Server::start_with(cert.opts());
    let old_der = cert.der.clone();
    let old_sha = cert.sha256();
    let mut old = tls_json(&server, &cert);
    let r = old.call("subscribe", json!({"channel": "tls:reload"}));
    assert!(r.get("subscribe").is_some(), "{r}");

    cert.regenerate();
    server.signal(libc::SIGHUP);
    server.wait_for("the reload", || {
        server.metric("wsedge_tls_reloads_total{result=\"ok\"}") == 1.0
    });

    // New connections get the new certificate: an independent client
    // trusting only it connects and sees it; a client trusting only the
    // old one is refused.
    let ca = cert.ca_file("new-ca.pem");
    let seen = python_client(&["hello", &wss_url(&server), ca.to_str().unwrap()]);
    assert_eq!(seen["cert_sha256"], cert.sha256(), "{seen}");
    assert_ne!(cert.sha256(), old_sha);
    let err = RawWs::connect_tls(server.client, client(&[&old_der], &[b"http/1.1"]), None)
        .err()
        .expect("the old certificate is no longer served");
    assert!(err.to_string().contains("certificate"), "{err}");
    let mut new = tls_json(&server, &cert);

    // The connection opened before the reload keeps working, both ways.
    let r = new.call("publish", json!({"channel": "tls:reload", "data": "after"}));
    assert!(r.get("publish").is_some(), "{r}");
    let pubs = old.pubs_through("tls:reload", 1);
    assert_eq!(pubs[0]["push"]["pub"]["data"], "after");
    assert_eq!(
        old.raw.tls().unwrap().peer_certificates().unwrap()[0],
        old_der,
        "the open connection kept its certificate"
    );

    // A broken key file: the reload fails, logged and counted, and the
    // current certificate stays.
    std::fs::write(&cert.key_file, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for("the failed reload", || {
        server.metric("wsedge_tls_reloads_total{result=\"failed\"}") == 1.0
    });
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains("TLS reload failed; keeping the current certificate")
    );
    let mut after = tls_json(&server, &cert);
    let r = after.call("ping", json!({}));
    assert!(r.get("ping").is_some(), "{r}");
    let r = old.call("ping", json!({}));
    assert!(r.get("ping").is_some(), "{r}");
    assert_eq!(
        server.metric("wsedge_tls_reloads_total{result=\"ok\"}"),
        1.0
    );
}

#[test]
fn handshakes_beyond_the_turn_budget_wait_for_the_next_turn() {
    const N: usize = 6;
    let cert = Cert::new();
    let mut opts = cert.opts().env("WSEDGE_TLS_HANDSHAKES_PER_TURN", "1");
    opts.args = vec!["--shards".into(), "1".into()];
    let server = Server::start_with(opts);
    // Stopped, the node cannot read: every ClientHello is waiting when it
    // resumes, so its first turn with them can advance only one.
    server.stop();
    let config = client(&[&cert.der], &[b"http/1.1"]);
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..N)
        .map(|_| {
            let config = config.clone();
            let addr = server.client;
            let sent = sent_tx.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut conn = rustls::ClientConnection::new(config, name).unwrap();
                conn.write_tls(&mut s).unwrap(); // the ClientHello
                sent.send(()).unwrap();
                let mut st = rustls::Stream::new(&mut conn, &mut s);
                st.write_all(
                    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                      Sec-WebSocket-Version: 13\r\n\r\n",
                )
                .unwrap();
                st.flush().unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    st.read_exact(&mut b).unwrap();
                    head.push(b[0]);
                }
                String::from_utf8(head).unwrap()
            })
        })
        .collect();
    for _ in 0..N {
        sent_rx.recv_timeout(TIMEOUT).unwrap();
    }
    // Let the last ClientHello reach the listener's queue.
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGCONT);
    let start = Instant::now();
    for c in clients {
        let head = c.join().unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
    assert!(start.elapsed() < TIMEOUT);
    let deferred = server.metric("wsedge_tls_handshakes_deferred_total");
    assert!(
        deferred >= (N - 1) as f64,
        "{deferred} handshake steps deferred"
    );
    assert_eq!(
        server.metric("wsedge_tls_handshakes_total{kind=\"ok\"}"),
        N as f64
    );
}

#[test]
fn a_bad_certificate_file_stops_the_node_at_start_and_fails_check_config() {
    let cert = Cert::new();
    std::fs::write(&cert.cert_file, "no certificate here").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("WSEDGE_API_LISTEN", "127.0.0.1:0")
        .env("WSEDGE_TLS_CERT_FILE", &cert.cert_file)
        .env("WSEDGE_TLS_KEY_FILE", &cert.key_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no CERTIFICATE block"), "{err}");
    // check-config (the unit's ExecStartPre) refuses it too.
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .arg("check-config")
        .env("WSEDGE_TLS_CERT_FILE", &cert.cert_file)
        .env("WSEDGE_TLS_KEY_FILE", &cert.key_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no CERTIFICATE block"), "{err}");
}
