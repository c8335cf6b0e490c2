//! JWKS over real HTTPS: a local TLS server (tokio-rustls, certificate from
//! a CA generated with rcgen) serves the key set; the verifier's refresher
//! loads it, refreshes on an unknown `kid` (rate-limited), keeps the old
//! set when a fetch fails, and refuses a server it cannot trust.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use wsedge::auth::{AuthConfig, AuthMode, InvalidReason, RefreshOptions, TokenError, Verifier};

const NOW: u64 = 1_735_689_600;

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
    std::fs::read(dir.join(name)).unwrap()
}

fn key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).unwrap(),
        _ => EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap(),
    }
}

fn jwk(alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&key(alg), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn token(alg: Algorithm, kid: &str) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &json!({"sub": "alice", "exp": NOW + 60}), &key(alg)).unwrap()
}

/// A tiny HTTPS server answering every request with `body` (status 200,
/// or 500 when the body is empty). Counts requests.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    ca_file: std::path::PathBuf,
}

impl JwksServer {
    fn start(body: &Value) -> JwksServer {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let srv_key = KeyPair::generate().unwrap();
        let srv_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let srv_cert = srv_params.signed_by(&srv_key, &*ca).unwrap();
        let ca_file = std::env::temp_dir().join(format!(
            "wsedge-jwks-ca-{}-{}.pem",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let tls = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(srv_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(srv_key.serialize_der())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let body = Arc::new(Mutex::new(body.to_string()));
        let requests = Arc::new(AtomicUsize::new(0));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (b, r) = (body.clone(), requests.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let (acceptor, b, r) = (acceptor.clone(), b.clone(), r.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let body = b.lock().unwrap().clone();
                        let status = if body.is_empty() {
                            "500 Oops"
                        } else {
                            "200 OK"
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(resp.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
        });
        JwksServer {
            addr,
            body,
            requests,
            ca_file,
        }
    }

    fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn config(&self, with_ca: bool) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            jwks_url: Some(format!("https://{}/.well-known/jwks.json", self.addr)),
            jwks_ca_file: with_ca.then(|| self.ca_file.clone()),
            ..AuthConfig::default()
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

fn fast() -> RefreshOptions {
    RefreshOptions {
        interval: Duration::from_secs(60),
        min_interval: Duration::from_millis(300),
        timeout: Duration::from_secs(3),
        max_bytes: 64 * 1024,
    }
}

/// Polls `f` for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn unknown_kid_triggers_one_rate_limited_refresh() {
    let server = JwksServer::start(&json!({"keys": [jwk(Algorithm::ES256, "ec-1")]}));
    let v = Verifier::new(&server.config(true)).unwrap();
    let refresher = v
        .spawn_jwks_refresh(fast())
        .unwrap()
        .expect("a URL is configured");
    assert!(
        refresher.wait_loaded(Duration::from_secs(10)),
        "{:?}",
        v.jwks_status()
    );
    assert_eq!(
        v.verify_connect(&token(Algorithm::ES256, "ec-1"), NOW)
            .unwrap()
            .sub,
        "alice"
    );
    assert_eq!(server.requests(), 1);

    // The issuer rotates in a new key; the first token naming it is
    // refused (the verify call does not wait) and asks for a refresh.
    server.set(
        &json!({"keys": [jwk(Algorithm::ES256, "ec-1"), jwk(Algorithm::EdDSA, "ed-1")]})
            .to_string(),
    );
    let new = token(Algorithm::EdDSA, "ed-1");
    let refused = v.verify_connect(&new, NOW);
    assert_eq!(refused, Err(TokenError::Invalid(InvalidReason::UnknownKid)));
    eventually("the refresh", || v.jwks_status().unwrap().fetch_ok == 2);
    assert_eq!(v.verify_connect(&new, NOW).unwrap().sub, "alice");
    assert_eq!(
        v.verify_connect(&token(Algorithm::ES256, "ec-1"), NOW)
            .unwrap()
            .sub,
        "alice"
    );

    // A flood of made-up kids costs at most one fetch per min_interval.
    let before = server.requests();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(1500) {
        let t = token(Algorithm::EdDSA, &format!("made-up-{n}"));
        let r = v.verify_connect(&t, NOW);
        assert_eq!(r, Err(TokenError::Invalid(InvalidReason::UnknownKid)));
        n += 1;
    }
    std::thread::sleep(Duration::from_millis(400));
    eventually("a refresh for the flood", || server.requests() > before);
    let fetched = server.requests() - before;
    let allowed = (start.elapsed().as_millis() / 300) as usize + 1;
    assert!(
        fetched <= allowed,
        "{fetched} fetches for {n} tokens, allowed {allowed}"
    );

    // A failing endpoint keeps the keys we have.
    server.set("");
    let failed = v.jwks_status().unwrap().fetch_failed;
    let _ = v.verify_connect(&token(Algorithm::EdDSA, "another"), NOW);
    eventually("the failed fetch", || {
        v.jwks_status().unwrap().fetch_failed > failed
    });
    assert_eq!(v.verify_connect(&new, NOW).unwrap().sub, "alice");
    server.set("{\"keys\": \"garbage\"}");
    let failed = v.jwks_status().unwrap().fetch_failed;
    std::thread::sleep(Duration::from_millis(700));
    let _ = v.verify_connect(&token(Algorithm::EdDSA, "again"), NOW);
    eventually("the bad document", || {
        v.jwks_status().unwrap().fetch_failed > failed
    });
    assert_eq!(v.verify_connect(&new, NOW).unwrap().sub, "alice");
    assert_eq!(v.jwks_status().unwrap().keys, 2);

    // Dropping the refresher stops its thread promptly.
    let start = Instant::now();
    drop(refresher);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn an_untrusted_server_is_never_believed() {
    let server = JwksServer::start(&json!({"keys": [jwk(Algorithm::RS256, "rsa-1")]}));
    // Without jwks_ca_file the system roots do not know the test CA.
    let v = Verifier::new(&server.config(false)).unwrap();
    let refresher = v.spawn_jwks_refresh(fast()).unwrap().unwrap();
    assert!(!refresher.wait_loaded(Duration::from_millis(1500)));
    let s = refresher.status();
    assert!(!s.loaded && s.fetch_failed >= 1 && s.fetch_ok == 0, "{s:?}");
    assert_eq!(
        server.requests(),
        0,
        "no request reaches an untrusted server"
    );
    let t = token(Algorithm::RS256, "rsa-1");
    assert_eq!(v.verify_connect(&t, NOW), Err(TokenError::Unavailable));

    // With it, the same server is fine.
    let v = Verifier::new(&server.config(true)).unwrap();
    let refresher = v.spawn_jwks_refresh(fast()).unwrap().unwrap();
    assert!(refresher.wait_loaded(Duration::from_secs(10)));
    assert_eq!(v.verify_connect(&t, NOW).unwrap().sub, "alice");
}

#[test]
fn no_url_no_refresher() {
    let cfg = AuthConfig {
        mode: AuthMode::Jwt,
        hmac_secret: Some("0123456789abcdef0123456789abcdef".into()),
        ..AuthConfig::default()
    };
    let v = Verifier::new(&cfg).unwrap();
    assert!(
        v.spawn_jwks_refresh(RefreshOptions::default())
            .unwrap()
            .is_none()
    );
    assert_eq!(v.jwks_status(), None);
}
