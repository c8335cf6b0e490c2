//! Keys from a JWKS document (file), selected by `kid`.

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm};
use serde_json::{Value, json};

use super::*;
use crate::auth::{InvalidReason as R, TokenError};

/// The public JWK of a fixture private key, with `kid` (and `alg` if
/// `name_alg`).
pub(in crate::auth) fn jwk(alg: Algorithm, private_pem: &str, kid: &str, name_alg: bool) -> Value {
    let mut jwk = Jwk::from_encoding_key(&signing_key(alg, private_pem), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    if !name_alg {
        jwk.common.key_algorithm = None;
    }
    serde_json::to_value(jwk).unwrap()
}

fn jwks_config(doc: &Value) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        jwks_file: Some(temp_file("jwks.json", doc.to_string().as_bytes())),
        ..AuthConfig::default()
    }
}

fn standard_set() -> Value {
    json!({"keys": [
        jwk(Algorithm::RS256, "rsa_private.pem", "rsa-1", false),
        jwk(Algorithm::ES256, "ec256_private.pem", "ec-1", true),
        jwk(Algorithm::ES384, "ec384_private.pem", "ec-2", false),
        jwk(Algorithm::EdDSA, "ed25519_private.pem", "ed-1", true),
    ]})
}

fn signed(alg: Algorithm, kid: Option<&str>) -> String {
    sign_with(alg, kid, &claims(), &default_key(alg))
}

#[test]
fn keys_are_found_by_kid() {
    let v = verifier(&jwks_config(&standard_set()));
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::RS512, "rsa-1"),
        (Algorithm::PS384, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::ES384, "ec-2"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let c = v.verify_connect(&signed(alg, Some(kid)), NOW);
        assert_eq!(c.map(|c| c.sub), Ok("alice".to_string()), "{alg:?} {kid}");
    }
    let status = v.jwks_status().unwrap();
    assert!(status.loaded);
    assert_eq!(status.keys, 4);
}

#[test]
fn unknown_or_missing_kid_and_mismatched_keys_are_refused() {
    let v = verifier(&jwks_config(&standard_set()));
    let t = signed(Algorithm::ES256, Some("ec-9"));
    assert_eq!(
        v.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::UnknownKid))
    );
    // A file is not refreshed: no request is counted.
    assert_eq!(v.jwks_status().unwrap().refresh_requests, 0);
    // No kid, and no static public key to fall back on.
    let t = signed(Algorithm::ES256, None);
    assert_eq!(
        v.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::UnknownKid))
    );
    // The kid of a key of another family or curve.
    let t = signed(Algorithm::ES256, Some("rsa-1"));
    assert_eq!(
        v.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::WrongAlgorithm))
    );
    let t = signed(Algorithm::ES256, Some("ec-2"));
    assert_eq!(
        v.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::WrongAlgorithm))
    );
    // A JWK that names its alg (ec-1: ES256) is used with that one only;
    // ed-1 names EdDSA. An RSA JWK naming RS256 refuses PS256:
    let doc = json!({"keys": [jwk(Algorithm::RS256, "rsa_private.pem", "r", true)]});
    let v2 = verifier(&jwks_config(&doc));
    assert!(
        v2.verify_connect(&signed(Algorithm::RS256, Some("r")), NOW)
            .is_ok()
    );
    let t = signed(Algorithm::PS256, Some("r"));
    assert_eq!(
        v2.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::WrongAlgorithm))
    );
    // The right kid, a signature from another key.
    let other = signing_key(Algorithm::RS256, "rsa_other_private.pem");
    let t = sign_with(Algorithm::RS256, Some("rsa-1"), &claims(), &other);
    assert_eq!(
        v.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::BadSignature))
    );
}

#[test]
fn hs_tokens_with_kid_go_to_the_secret_not_the_jwks() {
    let mut cfg = jwks_config(&standard_set());
    cfg.hmac_secret = Some(SECRET.into());
    let v = verifier(&cfg);
    let t = sign_with(
        Algorithm::HS256,
        Some("rsa-1"),
        &claims(),
        &default_key(Algorithm::HS256),
    );
    assert_eq!(v.verify_connect(&t, NOW).map(|c| c.sub), Ok("alice".into()));
    // And a static public key serves asymmetric tokens without kid.
    cfg.public_key_file = Some(fixture_path("ed25519_public.pem"));
    let v = verifier(&cfg);
    assert!(
        v.verify_connect(&signed(Algorithm::EdDSA, None), NOW)
            .is_ok()
    );
    assert!(
        v.verify_connect(&signed(Algorithm::EdDSA, Some("ed-1")), NOW)
            .is_ok()
    );
}

#[test]
fn unusable_keys_are_skipped_and_an_empty_set_is_an_error() {
    let mut doc = standard_set();
    let keys = doc["keys"].as_array_mut().unwrap();
    let mut enc = jwk(Algorithm::RS256, "rsa_other_private.pem", "enc", false);
    enc["use"] = json!("enc");
    keys.push(enc);
    let mut nokid = jwk(Algorithm::ES256, "ec256_other_private.pem", "x", false);
    nokid.as_object_mut().unwrap().remove("kid");
    keys.push(nokid);
    keys.push(json!({"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}));
    keys.push(json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}));
    keys.push(json!({"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": "AAAA"}));
    keys.push(json!({"kty": "RSA", "kid": "weak", "n": "AQAB", "e": "AQAB"}));
    keys.push(json!({"kty": "XYZ", "kid": "alien"}));
    keys.push(json!({"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"}));
    keys.push(json!("not an object"));
    let v = verifier(&jwks_config(&doc));
    assert_eq!(v.jwks_status().unwrap().keys, 4);
    for kid in ["enc", "sym", "p521", "short", "weak", "alien", "oaep"] {
        let t = signed(Algorithm::RS256, Some(kid));
        assert_eq!(
            v.verify_connect(&t, NOW),
            Err(TokenError::Invalid(R::UnknownKid)),
            "{kid}"
        );
    }

    for bad in [
        json!({"keys": []}),
        json!({"keys": [{"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}]}),
        json!({"nokeys": 1}),
        json!([1, 2]),
    ] {
        let err = Verifier::new(&jwks_config(&bad)).unwrap_err();
        assert!(err.starts_with("auth.jwks_file"), "{err}");
    }
    let cfg = AuthConfig {
        jwks_file: Some(temp_file("jwks.json", b"{not json")),
        ..jwks_config(&json!({}))
    };
    assert!(Verifier::new(&cfg).unwrap_err().contains("not a JWKS"));
}

#[test]
fn jwk_alg_must_fit_the_key() {
    let mut k = jwk(Algorithm::ES256, "ec256_private.pem", "ec", true);
    k["alg"] = serde_json::to_value(KeyAlgorithm::RS256).unwrap();
    let doc = json!({"keys": [k, jwk(Algorithm::EdDSA, "ed25519_private.pem", "ed", true)]});
    let v = verifier(&jwks_config(&doc));
    assert_eq!(v.jwks_status().unwrap().keys, 1);
    let t = signed(Algorithm::ES256, Some("ec"));
    assert_eq!(
        v.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::UnknownKid))
    );
}

#[test]
fn unloaded_url_set_is_unavailable_and_asks_for_a_refresh() {
    let cfg = AuthConfig {
        mode: AuthMode::Jwt,
        jwks_url: Some("https://127.0.0.1:9/jwks.json".into()),
        ..AuthConfig::default()
    };
    let v = verifier(&cfg);
    let t = signed(Algorithm::ES256, Some("ec-1"));
    assert_eq!(v.verify_connect(&t, NOW), Err(TokenError::Unavailable));
    assert!(TokenError::Unavailable.temporary());
    assert_eq!(v.verify_connect(&t, NOW), Err(TokenError::Unavailable));
    let s = v.jwks_status().unwrap();
    assert!(!s.loaded);
    // Coalesced: the refresher has not run, so the flag is still up.
    assert_eq!(s.refresh_requests, 1);
}
