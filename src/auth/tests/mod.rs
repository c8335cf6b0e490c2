//! Unit tests of `auth`: every bad credential, every algorithm family,
//! configuration, JWKS files, and random input. Keys are the PEM fixtures
//! in tests/fixtures/auth/ (see the README there).

mod config;
mod jwks_file;
mod random;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::{AuthConfig, AuthMode, Verifier};

/// A 32-byte HMAC secret (the minimum accepted).
pub(super) const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The clock of every test: 2025-01-01T00:00:00Z.
pub(super) const NOW: u64 = 1_735_689_600;

pub(super) fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

pub(super) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap()
}

/// A file in the temp dir, unique per call, with `contents`.
pub(super) fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "wsedge-auth-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

/// The signing key of a fixture private key file, for `alg`.
pub(super) fn signing_key(alg: Algorithm, private_pem: &str) -> EncodingKey {
    let pem = fixture(private_pem);
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => unreachable!("use a secret"),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

/// The fixture private key that signs `alg` by default.
pub(super) fn default_private(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ec256_private.pem",
        Algorithm::ES384 => "ec384_private.pem",
        Algorithm::EdDSA => "ed25519_private.pem",
        _ => "rsa_private.pem",
    }
}

/// The fixture public key that verifies `alg` by default.
pub(super) fn default_public(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ec256_public.pem",
        Algorithm::ES384 => "ec384_public.pem",
        Algorithm::EdDSA => "ed25519_public.pem",
        _ => "rsa_public.pem",
    }
}

/// A token over `claims`, signed with `key`, header `alg` (and `kid`).
pub(super) fn sign_with(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &Value,
    key: &EncodingKey,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token signed by the default key of `alg` (or [`SECRET`] for HS*).
pub(super) fn sign(alg: Algorithm, claims: &Value) -> String {
    sign_with(alg, None, claims, &default_key(alg))
}

/// An HMAC signing key.
pub(super) fn secret_key(secret: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(secret).unwrap()
}

pub(super) fn default_key(alg: Algorithm) -> EncodingKey {
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        secret_key(SECRET.as_bytes())
    } else {
        signing_key(alg, default_private(alg))
    }
}

/// A token from raw header and payload JSON and a raw signature.
pub(super) fn raw_token(header: &Value, payload: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// `[auth]` in jwt mode with the HMAC secret only.
pub(super) fn hmac_config() -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        hmac_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

/// `[auth]` in jwt mode with one fixture public key only.
pub(super) fn public_config(public_pem: &str) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        public_key_file: Some(fixture_path(public_pem)),
        ..AuthConfig::default()
    }
}

pub(super) fn verifier(cfg: &AuthConfig) -> Verifier {
    Verifier::new(cfg).unwrap()
}

/// Ordinary connection claims valid at [`NOW`].
pub(super) fn claims() -> Value {
    json!({"sub": "alice", "exp": NOW + 600, "iat": NOW - 5})
}
