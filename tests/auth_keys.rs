//! Bad credentials against public keys, end to end on the raw frame reader:
//! a node verifying RS256 with a PEM key (audience and issuer required), and
//! a node with a JWKS file. Each bad token is answered on the wire with close
//! 3502, counted under its own `kind` exactly once, and leaves a connected
//! client untouched.

mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::raw_json::RawJson;
use common::{Opts, RawWs, Server};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

fn private_key(alg: Algorithm, file: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(file)).unwrap();
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        other => panic!("no fixture for {other:?}"),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

/// Sends `connect {token}` on a fresh upgrade and returns the close code.
fn close_code(server: &Server, token: &str) -> Option<u16> {
    let mut c = RawJson::unconnected(RawWs::connect(server, Some("edu-matrix-v1.json")));
    c.send("connect", json!({"token": token}));
    c.raw.until_close().1
}

/// `wsedge_auth_failures_total{kind}` over every shard (`Server::metric`
/// sums the series whose labels include the ones asked for).
fn failures(server: &Server, kind: &str) -> f64 {
    server.metric(&format!("wsedge_auth_failures_total{{kind=\"{kind}\"}}"))
}

/// Refuses `token` with 3502 and counts it once under `kind`.
fn assert_refused(server: &Server, what: &str, token: &str, kind: &str) {
    let before = failures(server, kind);
    assert_eq!(close_code(server, token), Some(3502), "{what}");
    assert_eq!(
        failures(server, kind) - before,
        1.0,
        "{what}: counted as {kind}"
    );
}

#[test]
fn rs256_node_refuses_each_bad_token_under_its_own_kind() {
    let server = Server::start_with(
        Opts::default()
            .env("WSEDGE_AUTH_MODE", "jwt")
            .env(
                "WSEDGE_AUTH_PUBLIC_KEY_FILE",
                fixture("rsa_public.pem").to_str().unwrap(),
            )
            .env("WSEDGE_AUTH_AUDIENCE", "edu-matrix")
            .env("WSEDGE_AUTH_ISSUER", "https://id.example.com")
            .env("WSEDGE_AUTH_LEEWAY", "0s"),
    );
    let t = now();
    let good =
        json!({"sub": "ann", "exp": t + 600, "aud": "edu-matrix", "iss": "https://id.example.com"});
    let rsa = private_key(Algorithm::RS256, "rsa_private.pem");

    // A good token first: the node really verifies RS256.
    let (mut ann, r) = RawJson::connect(
        &server,
        json!({"token": sign(Algorithm::RS256, None, &good, &rsa)}),
    );
    assert_eq!(r["connect"]["user"], "ann", "{r}");

    // Algorithm confusion: an HS256 token whose secret is the public key's
    // PEM text (what a naive verifier would accept).
    let pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        None,
        &good,
        &EncodingKey::from_secret(&pem).unwrap(),
    );
    assert_refused(
        &server,
        "HS256 against an RSA key",
        &confused,
        "wrong_algorithm",
    );
    let es = sign(
        Algorithm::ES256,
        None,
        &good,
        &private_key(Algorithm::ES256, "ec256_private.pem"),
    );
    assert_refused(&server, "ES256 against an RSA key", &es, "wrong_algorithm");
    let other = sign(
        Algorithm::RS256,
        None,
        &good,
        &private_key(Algorithm::RS256, "rsa_other_private.pem"),
    );
    assert_refused(&server, "another RSA key", &other, "bad_signature");

    let mut claims = good.clone();
    claims["nbf"] = json!(t + 300);
    let nbf = sign(Algorithm::RS256, None, &claims, &rsa);
    assert_refused(&server, "nbf in the future", &nbf, "not_yet_valid");

    let mut claims = good.clone();
    claims["aud"] = json!("another-app");
    let aud = sign(Algorithm::RS256, None, &claims, &rsa);
    assert_refused(&server, "another audience", &aud, "wrong_audience");

    let mut claims = good.clone();
    claims["iss"] = json!("https://evil.example.com");
    let iss = sign(Algorithm::RS256, None, &claims, &rsa);
    assert_refused(&server, "another issuer", &iss, "wrong_issuer");

    // An expired token is not closed: a temporary error, so the client
    // fetches a fresh token and retries on the same connection.
    let mut claims = good.clone();
    claims["exp"] = json!(t - 60);
    let mut c = RawJson::unconnected(RawWs::connect(&server, Some("edu-matrix-v1.json")));
    let r = c.call(
        "connect",
        json!({"token": sign(Algorithm::RS256, None, &claims, &rsa)}),
    );
    assert_eq!(r["error"]["code"], 116, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    let r = c.call(
        "connect",
        json!({"token": sign(Algorithm::RS256, None, &good, &rsa)}),
    );
    assert_eq!(r["connect"]["user"], "ann", "{r}");

    let r = ann.call("ping", json!({}));
    assert!(
        r.get("ping").is_some(),
        "the first client is untouched: {r}"
    );
}

#[test]
fn jwks_node_picks_keys_by_kid_and_refuses_an_unknown_one() {
    let mut jwk = Jwk::from_encoding_key(
        &private_key(Algorithm::ES256, "ec256_private.pem"),
        Algorithm::ES256,
    )
    .unwrap();
    jwk.common.key_id = Some("ec-1".into());
    let dir = tempfile_dir();
    let path = dir.join("jwks.json");
    std::fs::write(&path, json!({"keys": [jwk]}).to_string()).unwrap();
    let server = Server::start_with(
        Opts::default()
            .env("WSEDGE_AUTH_MODE", "jwt")
            .env("WSEDGE_AUTH_JWKS_FILE", path.to_str().unwrap()),
    );
    let claims = json!({"sub": "kim", "exp": now() + 600});
    let ec = private_key(Algorithm::ES256, "ec256_private.pem");

    let (mut kim, r) = RawJson::connect(
        &server,
        json!({"token": sign(Algorithm::ES256, Some("ec-1"), &claims, &ec)}),
    );
    assert_eq!(r["connect"]["user"], "kim", "{r}");

    let unknown = sign(Algorithm::ES256, Some("ec-9"), &claims, &ec);
    assert_refused(&server, "kid not in the set", &unknown, "unknown_kid");
    let other = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &claims,
        &EncodingKey::from_ec_pem(&std::fs::read(fixture("ec256_other_private.pem")).unwrap())
            .unwrap(),
    );
    assert_refused(&server, "known kid, another key", &other, "bad_signature");

    let r = kim.call("ping", json!({}));
    assert!(
        r.get("ping").is_some(),
        "the first client is untouched: {r}"
    );
}

/// A fresh directory under the system temp dir for this test run.
fn tempfile_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("wsedge-auth-keys-{}-{}", std::process::id(), now()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
