//! Verification keys and the algorithms each one may be used with.
//!
//! A key is never used outside its own family: an HMAC secret checks only
//! HS256/384/512, an RSA key only RS*/PS*, a P-256 key only ES256, a P-384
//! key only ES384, an Ed25519 key only EdDSA. That table, not the token's
//! header, decides; it is what makes algorithm confusion (an HS token
//! "signed" with an RSA public key as the secret) impossible. Keys in a
//! token's own header (`jwk`, `jku`, `x5u`, `x5c`) are never used.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Shortest RSA modulus accepted from a JWKS: 2048 bits, the minimum the
/// crypto backend verifies (smaller keys would fail every token).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One usable key: the key, and the validation (allowed algorithms,
/// audience, issuer) `jsonwebtoken` applies with it.
pub(crate) struct KeyEntry {
    pub key: DecodingKey,
    pub validation: Validation,
}

/// The parts of validation shared by every key: audience and issuer.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClaimRules {
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl KeyEntry {
    /// A key allowed for `algorithms` (all of one family). Time claims are
    /// checked by the verifier against its `now` input, so `jsonwebtoken`
    /// is told to skip them (it would read the system clock).
    pub fn new(key: DecodingKey, algorithms: Vec<Algorithm>, rules: &ClaimRules) -> KeyEntry {
        let mut v = Validation::new(algorithms[0]);
        v.algorithms = algorithms;
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
        match &rules.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".into());
                v.validate_aud = true;
            }
            // Centrifugo's rule: `aud` is checked only when configured.
            None => v.validate_aud = false,
        }
        if let Some(iss) = &rules.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        KeyEntry { key, validation: v }
    }

    /// Whether this key may check a token with header `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }
}

/// The algorithms of an HMAC secret.
pub(crate) const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
/// The algorithms of an RSA key.
pub(crate) const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Loads a PEM public key (RSA, EC P-256/P-384, Ed25519; SPKI `PUBLIC KEY`
/// or PKCS#1 `RSA PUBLIC KEY`) and the algorithms it serves.
pub(crate) fn key_from_pem(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    // A private key would parse as a key of its family and then fail every
    // signature; say what is wrong instead (and keep private keys off edges).
    if memchr::memmem::find(pem, b"PRIVATE KEY").is_some() {
        return Err("this is a private key: give the public half \
                    (openssl pkey -in key.pem -pubout)"
            .into());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, RSA_ALGS.to_vec()));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The SPKI bit string is the uncompressed point 04 || x || y.
        let point = key.try_get_as_bytes().map_err(|e| e.to_string())?;
        return match point.len() {
            65 => Ok((key, vec![Algorithm::ES256])),
            97 => Ok((key, vec![Algorithm::ES384])),
            n => Err(format!(
                "EC key with a {n}-byte point: only uncompressed P-256 (ES256) and P-384 (ES384) \
                 keys are supported"
            )),
        };
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        let len = key.try_get_as_bytes().map_err(|e| e.to_string())?.len();
        if len != 32 {
            return Err(format!("Ed25519 key of {len} bytes, expected 32"));
        }
        return Ok((key, vec![Algorithm::EdDSA]));
    }
    Err("not a PEM public key of a supported type (RSA, EC P-256/P-384, Ed25519)".into())
}

/// A JWKS document, each key kept as JSON until it is understood, so one
/// key of an unknown type does not sink the set.
#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Keys by `kid`, as read from a JWKS.
#[derive(Default)]
pub(crate) struct KeySet {
    pub keys: HashMap<String, KeyEntry>,
    /// Keys in the document that were skipped (no `kid`, not for
    /// signatures, unsupported type or curve, weak, malformed), with why.
    pub skipped: Vec<String>,
}

/// Parses a JWKS document. Fails only if the document itself is not a
/// JWKS or no key in it is usable.
pub(crate) fn parse_jwks(text: &[u8], rules: &ClaimRules) -> Result<KeySet, String> {
    let raw: RawJwks =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut set = KeySet::default();
    for (i, value) in raw.keys.into_iter().enumerate() {
        match serde_json::from_value::<Jwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|jwk| entry_from_jwk(&jwk, rules))
        {
            Ok((kid, entry)) => {
                if set.keys.insert(kid.clone(), entry).is_some() {
                    set.skipped
                        .push(format!("key {i}: duplicate kid {kid:?}, the later kept"));
                }
            }
            Err(why) => set.skipped.push(format!("key {i}: {why}")),
        }
    }
    if set.keys.is_empty() {
        return Err(format!(
            "no usable key in the JWKS ({} skipped: {})",
            set.skipped.len(),
            set.skipped.join("; ")
        ));
    }
    Ok(set)
}

/// One JWK to a key entry, or why it is skipped.
fn entry_from_jwk(jwk: &Jwk, rules: &ClaimRules) -> Result<(String, KeyEntry), String> {
    let kid = match &jwk.common.key_id {
        Some(kid) if !kid.is_empty() => kid.clone(),
        _ => return Err("no kid (tokens could not name it)".into()),
    };
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err(format!("kid {kid:?}: not a signature key (use)"));
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64_len(&p.n);
            if n < MIN_RSA_MODULUS_BYTES {
                return Err(format!("kid {kid:?}: RSA modulus of {} bits", n * 8));
            }
            RSA_ALGS.to_vec()
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (alg, coord) = match p.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                _ => return Err(format!("kid {kid:?}: unsupported curve {:?}", p.curve)),
            };
            if base64_len(&p.x) != coord || base64_len(&p.y) != coord {
                return Err(format!("kid {kid:?}: EC coordinates of the wrong length"));
            }
            vec![alg]
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("kid {kid:?}: unsupported curve {:?}", p.curve));
            }
            if base64_len(&p.x) != 32 {
                return Err(format!("kid {kid:?}: Ed25519 key of the wrong length"));
            }
            vec![Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "kid {kid:?}: symmetric (oct) keys are not taken from a JWKS; use hmac_secret"
            ));
        }
        _ => return Err(format!("kid {kid:?}: unsupported key type")),
    };
    // A key that names its algorithm is used with that one only.
    let algs = match jwk.common.key_algorithm {
        None => family,
        Some(named) => match Algorithm::try_from(named) {
            Ok(alg) if family.contains(&alg) => vec![alg],
            _ => return Err(format!("kid {kid:?}: alg {named} does not fit the key")),
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("kid {kid:?}: {e}"))?;
    Ok((kid, KeyEntry::new(key, algs, rules)))
}

/// Decoded length of base64url text (unpadded), without decoding.
fn base64_len(s: &str) -> usize {
    let s = s.trim_end_matches('=');
    s.len() * 3 / 4
}
