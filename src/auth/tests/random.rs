//! Seeded random input: random bytes and mutated valid tokens never panic
//! and never verify. Plus a timing printout (ignored by default).

use jsonwebtoken::Algorithm;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::auth::TokenError;

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

/// One random change to a token: flip a bit, replace, insert or delete a
/// base64url character, truncate, or swap two parts.
fn mutate(rng: &mut StdRng, token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    match rng.random_range(0..6) {
        0 => {
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let i = rng.random_range(0..b.len());
            b[i] = B64URL[rng.random_range(0..B64URL.len())];
        }
        2 => {
            let i = rng.random_range(0..=b.len());
            b.insert(i, B64URL[rng.random_range(0..B64URL.len())]);
        }
        3 => {
            let i = rng.random_range(0..b.len());
            b.remove(i);
        }
        4 => b.truncate(rng.random_range(0..b.len())),
        _ => {
            let mut parts: Vec<&str> = token.split('.').collect();
            let n = parts.len();
            parts.swap(rng.random_range(0..n), rng.random_range(0..n));
            b = parts.join(".").into_bytes();
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn random_bytes_never_verify() {
    let mut cfg = public_config("ec256_public.pem");
    cfg.hmac_secret = Some(SECRET.into());
    let v = verifier(&cfg);
    let mut rng = StdRng::seed_from_u64(0x3502);
    for _ in 0..20_000 {
        let len = rng.random_range(0..300);
        let s: String = if rng.random_bool(0.5) {
            (0..len)
                .map(|_| B64URL[rng.random_range(0..B64URL.len())] as char)
                .collect()
        } else {
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        assert!(v.verify_connect(&s, NOW).is_err(), "{s:?}");
        assert!(v.verify_subscribe(&s, NOW).is_err(), "{s:?}");
    }
}

#[test]
fn mutated_tokens_never_verify() {
    let mut cfg = public_config("ec256_public.pem");
    cfg.hmac_secret = Some(SECRET.into());
    let v = verifier(&cfg);
    let mut rng = StdRng::seed_from_u64(8);
    let tokens = [
        sign(Algorithm::HS256, &claims()),
        sign(Algorithm::ES256, &claims()),
    ];
    let mut refused = std::collections::HashMap::<&str, usize>::new();
    for i in 0..4_000 {
        let good = &tokens[i % 2];
        let mut t = mutate(&mut rng, good);
        for _ in 0..rng.random_range(0..3) {
            if !t.is_empty() {
                t = mutate(&mut rng, &t);
            }
        }
        match v.verify_connect(&t, NOW) {
            Err(e) => *refused.entry(e.label()).or_default() += 1,
            // Only a no-op mutation (a swap of a part with itself, or a
            // flip undone) may verify, and then it is the original token.
            // Base64url's last character carries spare bits: changing
            // them decodes to the same bytes, so an equal decoding passes.
            Ok(c) => {
                assert_eq!(c.sub, "alice");
                assert!(same_decoding(&t, good), "{t} verified");
            }
        }
    }
    assert!(refused.values().sum::<usize>() > 3_500, "{refused:?}");
    assert!(
        refused.len() >= 3,
        "mutations reach several checks: {refused:?}"
    );
}

/// Whether `a` and `b` decode to the same three byte strings.
fn same_decoding(a: &str, b: &str) -> bool {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let dec = |s: &str| -> Option<Vec<Vec<u8>>> {
        s.split('.').map(|p| lenient.decode(p).ok()).collect()
    };
    dec(a).is_some() && dec(a) == dec(b)
}

/// Prints how long one verification takes (not asserted). Run with
/// `cargo test --release --lib auth::tests::random::timing -- --ignored --nocapture`.
#[test]
#[ignore = "timing printout, run by hand in release mode"]
fn timing() {
    let mut cfg = public_config("ec256_public.pem");
    cfg.hmac_secret = Some(SECRET.into());
    let v = verifier(&cfg);
    for (alg, cfg_key) in [
        (Algorithm::HS256, None),
        (Algorithm::ES256, None),
        (Algorithm::RS256, Some("rsa_public.pem")),
        (Algorithm::EdDSA, Some("ed25519_public.pem")),
    ] {
        let owned;
        let v = match cfg_key {
            None => &v,
            Some(k) => {
                owned = verifier(&public_config(k));
                &owned
            }
        };
        let t = sign(alg, &claims());
        let n = if alg == Algorithm::HS256 {
            200_000
        } else {
            20_000
        };
        let start = std::time::Instant::now();
        for _ in 0..n {
            assert!(v.verify_connect(std::hint::black_box(&t), NOW).is_ok());
        }
        let per = start.elapsed() / n;
        println!(
            "{alg:?}: {per:?} per verify_connect ({} bytes token)",
            t.len()
        );
    }
    let bad = sign(Algorithm::HS256, &claims()).replace('.', "..");
    let start = std::time::Instant::now();
    for _ in 0..200_000 {
        assert!(matches!(
            v.verify_connect(&bad, NOW),
            Err(TokenError::Invalid(_))
        ));
    }
    println!("malformed: {:?} per refusal", start.elapsed() / 200_000);
}
