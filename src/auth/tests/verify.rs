//! Good tokens of every family and every way a token can be bad.

use jsonwebtoken::Algorithm;
use serde_json::json;

use super::*;
use crate::auth::{InvalidReason as R, MAX_TOKEN_BYTES, TokenError};

fn invalid(r: R) -> Result<(), TokenError> {
    Err(TokenError::Invalid(r))
}

/// `verify_connect` reduced to Ok(()) or the error.
fn connect(v: &Verifier, token: &str) -> Result<(), TokenError> {
    v.verify_connect(token, NOW)
        .map(|c| assert_eq!(c.sub, "alice"))
}

#[test]
fn hmac_family_verifies() {
    let v = verifier(&hmac_config());
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let c = v.verify_connect(&sign(alg, &claims()), NOW).unwrap();
        assert_eq!(c.sub, "alice", "{alg:?}");
        assert_eq!(c.exp, Some(NOW + 600));
        assert_eq!(c.info, None);
        assert!(c.channels.is_empty());
    }
}

#[test]
fn every_public_key_family_verifies() {
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let v = verifier(&public_config(default_public(alg)));
        assert_eq!(connect(&v, &sign(alg, &claims())), Ok(()), "{alg:?}");
    }
}

#[test]
fn hmac_and_public_key_together_each_check_their_own_family() {
    let mut cfg = public_config("ec256_public.pem");
    cfg.hmac_secret = Some(SECRET.into());
    let v = verifier(&cfg);
    assert_eq!(connect(&v, &sign(Algorithm::HS256, &claims())), Ok(()));
    assert_eq!(connect(&v, &sign(Algorithm::ES256, &claims())), Ok(()));
    assert_eq!(
        connect(&v, &sign(Algorithm::RS256, &claims())),
        invalid(R::WrongAlgorithm)
    );
}

#[test]
fn bad_signatures_are_refused() {
    let v = verifier(&hmac_config());
    let other = secret_key(b"another secret, also 32 bytes long!!");
    let t = sign_with(Algorithm::HS256, None, &claims(), &other);
    assert_eq!(connect(&v, &t), invalid(R::BadSignature));

    let v = verifier(&public_config("rsa_public.pem"));
    let other = signing_key(Algorithm::RS256, "rsa_other_private.pem");
    let t = sign_with(Algorithm::RS256, None, &claims(), &other);
    assert_eq!(connect(&v, &t), invalid(R::BadSignature));

    let v = verifier(&public_config("ec256_public.pem"));
    let other = signing_key(Algorithm::ES256, "ec256_other_private.pem");
    let t = sign_with(Algorithm::ES256, None, &claims(), &other);
    assert_eq!(connect(&v, &t), invalid(R::BadSignature));
}

#[test]
fn tampered_payload_is_refused() {
    let v = verifier(&public_config("ed25519_public.pem"));
    let good = sign(Algorithm::EdDSA, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(json!({"sub": "root", "exp": NOW + 600}).to_string());
    let t = format!("{}.{}.{}", parts[0], evil, parts[2]);
    assert_eq!(connect(&v, &t), invalid(R::BadSignature));
    // A signature from another token over the same header.
    let other = sign(Algorithm::EdDSA, &json!({"sub": "root", "exp": NOW + 600}));
    let other_sig = other.rsplit('.').next().unwrap();
    let t = format!("{}.{}.{}", parts[0], parts[1], other_sig);
    assert_eq!(connect(&v, &t), invalid(R::BadSignature));
}

#[test]
fn alg_none_and_unknown_algorithms_are_refused() {
    let v = verifier(&hmac_config());
    for alg in ["none", "None", "NONE", "HS1", "ES512", "RSA-OAEP", ""] {
        let t = raw_token(&json!({"alg": alg, "typ": "JWT"}), &claims(), b"");
        assert_eq!(connect(&v, &t), invalid(R::AlgNotAllowed), "{alg}");
        let t = raw_token(&json!({"alg": alg}), &claims(), b"sig");
        assert_eq!(connect(&v, &t), invalid(R::AlgNotAllowed), "{alg}");
    }
    // Without the signature part at all.
    let t = raw_token(&json!({"alg": "none"}), &claims(), b"");
    let t = t.trim_end_matches('.');
    assert_eq!(connect(&v, t), invalid(R::Malformed));
}

#[test]
fn wrong_algorithm_for_the_key_is_refused() {
    // ES384 token, P-256 key: same family, wrong curve.
    let v = verifier(&public_config("ec256_public.pem"));
    assert_eq!(
        connect(&v, &sign(Algorithm::ES384, &claims())),
        invalid(R::WrongAlgorithm)
    );
    // The P-384 key the other way round.
    let v = verifier(&public_config("ec384_public.pem"));
    assert_eq!(
        connect(&v, &sign(Algorithm::ES256, &claims())),
        invalid(R::WrongAlgorithm)
    );
    // An RSA token where only a secret is configured, and vice versa.
    let v = verifier(&hmac_config());
    assert_eq!(
        connect(&v, &sign(Algorithm::RS256, &claims())),
        invalid(R::WrongAlgorithm)
    );
    assert_eq!(
        connect(&v, &sign(Algorithm::EdDSA, &claims())),
        invalid(R::WrongAlgorithm)
    );
    let v = verifier(&public_config("ed25519_public.pem"));
    assert_eq!(
        connect(&v, &sign(Algorithm::HS256, &claims())),
        invalid(R::WrongAlgorithm)
    );
    assert_eq!(
        connect(&v, &sign(Algorithm::ES256, &claims())),
        invalid(R::WrongAlgorithm)
    );
}

#[test]
fn algorithm_confusion_hs_token_signed_with_the_public_key_is_refused() {
    // The classic attack: HMAC over the token using the server's public
    // key (PEM text, or its DER) as the "secret".
    for public in ["rsa_public.pem", "ec256_public.pem", "ed25519_public.pem"] {
        let pem = fixture(public);
        let v = verifier(&public_config(public));
        for alg in [Algorithm::HS256, Algorithm::HS512] {
            let t = sign_with(alg, None, &claims(), &secret_key(&pem));
            assert_eq!(
                connect(&v, &t),
                invalid(R::WrongAlgorithm),
                "{public} {alg:?}"
            );
        }
        // With a secret configured too, the HS token goes to the secret
        // and fails there.
        let mut cfg = public_config(public);
        cfg.hmac_secret = Some(SECRET.into());
        let v = verifier(&cfg);
        let t = sign_with(Algorithm::HS256, None, &claims(), &secret_key(&pem));
        assert_eq!(connect(&v, &t), invalid(R::BadSignature), "{public}");
    }
}

#[test]
fn expiry_with_leeway() {
    let v = verifier(&hmac_config()); // leeway 5s
    let at = |exp: u64| sign(Algorithm::HS256, &json!({"sub": "alice", "exp": exp}));
    assert_eq!(connect(&v, &at(NOW)), Ok(()));
    assert_eq!(connect(&v, &at(NOW - 5)), Ok(()), "within leeway");
    assert_eq!(connect(&v, &at(NOW - 6)), Err(TokenError::Expired));
    assert_eq!(connect(&v, &at(0)), Err(TokenError::Expired));
    // Fractional NumericDate.
    let t = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "exp": (NOW - 10) as f64 + 0.5}),
    );
    assert_eq!(connect(&v, &t), Err(TokenError::Expired));
    // No exp: never expires.
    let t = sign(Algorithm::HS256, &json!({"sub": "alice"}));
    assert_eq!(v.verify_connect(&t, u64::MAX).unwrap().exp, None);
    // exp near u64::MAX does not overflow.
    assert_eq!(connect(&v, &at(u64::MAX)), Ok(()));
    // Expired is temporary, Invalid is not.
    assert!(TokenError::Expired.temporary());
    assert!(!TokenError::Invalid(R::BadSignature).temporary());
}

#[test]
fn not_yet_valid_with_leeway() {
    let v = verifier(&hmac_config());
    let at = |nbf: u64| {
        sign(
            Algorithm::HS256,
            &json!({"sub": "alice", "nbf": nbf, "exp": NOW + 60}),
        )
    };
    assert_eq!(connect(&v, &at(NOW)), Ok(()));
    assert_eq!(connect(&v, &at(NOW + 5)), Ok(()), "within leeway");
    assert_eq!(connect(&v, &at(NOW + 6)), invalid(R::NotYetValid));
    // iat in the future is not a reason (nbf is the claim for that).
    let t = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "iat": NOW + 3600}),
    );
    assert_eq!(connect(&v, &t), Ok(()));
}

#[test]
fn audience_is_checked_only_when_configured() {
    let mut cfg = hmac_config();
    let with = |aud: serde_json::Value| {
        sign(
            Algorithm::HS256,
            &json!({"sub": "alice", "exp": NOW + 60, "aud": aud}),
        )
    };
    let without = sign(Algorithm::HS256, &json!({"sub": "alice", "exp": NOW + 60}));
    // Not configured: any aud (or none) passes.
    let v = verifier(&cfg);
    assert_eq!(connect(&v, &with(json!("elsewhere"))), Ok(()));
    assert_eq!(connect(&v, &without), Ok(()));

    cfg.audience = Some("wsedge".into());
    let v = verifier(&cfg);
    assert_eq!(connect(&v, &with(json!("wsedge"))), Ok(()));
    assert_eq!(connect(&v, &with(json!(["api", "wsedge"]))), Ok(()));
    assert_eq!(
        connect(&v, &with(json!("elsewhere"))),
        invalid(R::WrongAudience)
    );
    assert_eq!(
        connect(&v, &with(json!(["api"]))),
        invalid(R::WrongAudience)
    );
    assert_eq!(
        connect(&v, &without),
        invalid(R::WrongAudience),
        "missing aud"
    );
    // An aud that is not a string or list is no audience at all.
    assert_eq!(connect(&v, &with(json!(42))), invalid(R::WrongAudience));
}

#[test]
fn issuer_is_checked_only_when_configured() {
    let mut cfg = hmac_config();
    cfg.issuer = Some("https://auth.example.com".into());
    let v = verifier(&cfg);
    let with = |iss: &str| sign(Algorithm::HS256, &json!({"sub": "alice", "iss": iss}));
    assert_eq!(connect(&v, &with("https://auth.example.com")), Ok(()));
    assert_eq!(
        connect(&v, &with("https://evil.example.com")),
        invalid(R::WrongIssuer)
    );
    let t = sign(Algorithm::HS256, &json!({"sub": "alice"}));
    assert_eq!(connect(&v, &t), invalid(R::WrongIssuer), "missing iss");
}

#[test]
fn expired_is_reported_only_when_nothing_else_is_wrong() {
    let mut cfg = hmac_config();
    cfg.audience = Some("wsedge".into());
    let v = verifier(&cfg);
    let old = NOW - 3600;
    let t = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "exp": old, "aud": "other"}),
    );
    assert_eq!(connect(&v, &t), invalid(R::WrongAudience));
    let t = sign(
        Algorithm::HS256,
        &json!({"sub": "", "exp": old, "aud": "wsedge"}),
    );
    assert_eq!(connect(&v, &t), invalid(R::Anonymous));
    let other = secret_key(b"another secret, also 32 bytes long!!");
    let t = sign_with(
        Algorithm::HS256,
        None,
        &json!({"sub": "alice", "exp": old}),
        &other,
    );
    assert_eq!(connect(&v, &t), invalid(R::BadSignature));
}

#[test]
fn anonymous_only_when_allowed() {
    let mut cfg = hmac_config();
    let empty = sign(Algorithm::HS256, &json!({"sub": "", "exp": NOW + 60}));
    let missing = sign(Algorithm::HS256, &json!({"exp": NOW + 60}));
    let null = sign(Algorithm::HS256, &json!({"sub": null}));
    let v = verifier(&cfg);
    assert!(!v.allow_anonymous());
    for t in [&empty, &missing, &null] {
        assert_eq!(
            v.verify_connect(t, NOW),
            Err(TokenError::Invalid(R::Anonymous))
        );
    }
    cfg.allow_anonymous = true;
    let v = verifier(&cfg);
    assert!(v.allow_anonymous());
    for t in [&empty, &missing, &null] {
        assert_eq!(v.verify_connect(t, NOW).unwrap().sub, "");
    }
}

#[test]
fn connect_claims_carry_info_and_channels() {
    let v = verifier(&hmac_config());
    let t = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "info": {"name": "Alice", "n": [1, 2]},
                "channels": ["news", "chat:lobby"], "extra": {"ignored": true}}),
    );
    let c = v.verify_connect(&t, NOW).unwrap();
    let info: serde_json::Value = serde_json::from_slice(c.info.as_ref().unwrap()).unwrap();
    assert_eq!(info, json!({"name": "Alice", "n": [1, 2]}));
    assert_eq!(
        c.channels,
        vec!["news".to_string(), "chat:lobby".to_string()]
    );
    let t = sign(Algorithm::HS256, &json!({"sub": "alice", "info": "plain"}));
    assert_eq!(
        v.verify_connect(&t, NOW).unwrap().info.as_deref(),
        Some(&b"\"plain\""[..])
    );
    let t = sign(Algorithm::HS256, &json!({"sub": "alice", "info": null}));
    assert_eq!(v.verify_connect(&t, NOW).unwrap().info, None);
}

#[test]
fn claims_of_the_wrong_type_are_refused() {
    let v = verifier(&hmac_config());
    for payload in [
        json!({"sub": "alice", "exp": "tomorrow"}),
        json!({"sub": "alice", "exp": -1}),
        json!({"sub": "alice", "exp": [1]}),
        json!({"sub": "alice", "nbf": "now"}),
        json!({"sub": "alice", "iat": {"t": 1}}),
        json!({"sub": 42}),
        json!({"sub": "alice", "channels": "news"}),
        json!({"sub": "alice", "channels": [1, 2]}),
        json!(["sub", "alice"]),
        json!("alice"),
    ] {
        let t = sign(Algorithm::HS256, &payload);
        assert_eq!(
            v.verify_connect(&t, NOW),
            Err(TokenError::Invalid(R::BadClaims)),
            "{payload}"
        );
    }
    // A claim given twice is ambiguous: refused.
    let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","sub":"root"}"#);
    let msg = format!("{head}.{body}");
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &secret_key(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    let t = format!("{msg}.{sig}");
    assert!(matches!(
        v.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::BadClaims))
    ));
}

#[test]
fn malformed_tokens_are_refused() {
    let v = verifier(&hmac_config());
    let good = sign(Algorithm::HS256, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    for t in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        "a.b.c".into(),
        "...".into(),
        format!("{good}.{}", parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}!", parts[0], parts[1], parts[2]),
        format!(" {good}"),
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("{"), parts[1], parts[2]),
        raw_token(&json!({"typ": "JWT"}), &claims(), b"x"),
        raw_token(&json!({"alg": "HS256", "crit": ["exp"]}), &claims(), b"x"),
    ] {
        let r = v.verify_connect(&t, NOW);
        assert!(
            matches!(r, Err(TokenError::Invalid(R::Malformed | R::BadSignature))),
            "{t:?}: {r:?}"
        );
    }
    let long = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
    assert_eq!(
        v.verify_connect(&long, NOW),
        Err(TokenError::Invalid(R::TooLong))
    );
}

#[test]
fn subscription_tokens() {
    let v = verifier(&public_config("ec256_public.pem"));
    let t = sign(
        Algorithm::ES256,
        &json!({"sub": "alice", "channel": "room:1", "exp": NOW + 60, "info": {"role": "mod"}}),
    );
    let s = v.verify_subscribe(&t, NOW).unwrap();
    assert_eq!(
        (s.sub.as_str(), s.channel.as_str(), s.exp),
        ("alice", "room:1", Some(NOW + 60))
    );
    assert_eq!(s.info.as_deref(), Some(&br#"{"role":"mod"}"#[..]));
    assert_eq!(s.check("alice", "room:1"), Ok(()));
    assert_eq!(
        s.check("bob", "room:1"),
        Err(TokenError::Invalid(R::WrongUser))
    );
    assert_eq!(
        s.check("alice", "room:2"),
        Err(TokenError::Invalid(R::WrongChannel))
    );
    // A subscription token is not a connection token and vice versa.
    assert_eq!(
        v.verify_connect(&t, NOW),
        Err(TokenError::Invalid(R::WrongTokenType))
    );
    let c = sign(Algorithm::ES256, &claims());
    assert_eq!(
        v.verify_subscribe(&c, NOW),
        Err(TokenError::Invalid(R::WrongTokenType))
    );
    let empty = sign(Algorithm::ES256, &json!({"sub": "alice", "channel": ""}));
    assert_eq!(
        v.verify_subscribe(&empty, NOW),
        Err(TokenError::Invalid(R::WrongTokenType))
    );
    // Expiry and the other checks apply as for connect.
    assert_eq!(v.verify_subscribe(&t, NOW + 66), Err(TokenError::Expired));
    let anon = sign(Algorithm::ES256, &json!({"channel": "room:1"}));
    let s = v.verify_subscribe(&anon, NOW).unwrap();
    assert_eq!(s.check("", "room:1"), Ok(()));
    assert_eq!(
        s.check("alice", "room:1"),
        Err(TokenError::Invalid(R::WrongUser))
    );
}

#[test]
fn labels_are_unique_and_stable() {
    let labels: Vec<&str> = TokenError::all_labels().collect();
    let set: std::collections::HashSet<&str> = labels.iter().copied().collect();
    assert_eq!(set.len(), labels.len());
    assert_eq!(labels.len(), R::ALL.len() + 2);
    assert_eq!(TokenError::Expired.label(), "expired");
    assert_eq!(
        TokenError::Invalid(R::AlgNotAllowed).label(),
        "alg_not_allowed"
    );
    assert!(
        labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
}

#[test]
fn verifier_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Verifier>();
    let v = std::sync::Arc::new(verifier(&hmac_config()));
    let t = sign(Algorithm::HS256, &claims());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (v, t) = (v.clone(), t.clone());
            std::thread::spawn(move || v.verify_connect(&t, NOW).unwrap().sub)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), "alice");
    }
}
