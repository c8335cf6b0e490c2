//! The token verifier: one per node, shared by every shard as an `Arc`.
//!
//! Verification is pure CPU (no I/O, no locks, no clock: `now` is an
//! input). Order of checks, so that [`TokenError::Expired`] means "a fresh
//! token from the same issuer would pass":
//!
//! 1. size ([`MAX_TOKEN_BYTES`]), structure and header (`alg` must be one
//!    wsedge implements: `none` never is);
//! 2. key selection: HS* → `hmac_secret`; RS*/PS*/ES*/EdDSA with a `kid`
//!    and a JWKS configured → that JWKS key; otherwise `public_key_file`.
//!    The key's family must match `alg` (no algorithm confusion);
//! 3. signature, then `aud`/`iss` when configured (by `jsonwebtoken`);
//! 4. claim types, `nbf` (with leeway), token type, anonymous `sub`;
//! 5. `exp` (with leeway) last.
//!
//! `iat` is type-checked but not compared with the clock (Centrifugo uses
//! it only for revocation); a token that must not be used early says so
//! with `nbf`.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, Header};
use serde::Deserialize;

use super::claims::{ConnectClaims, RawClaims, SubscribeClaims};
use super::config::AuthConfig;
use super::error::{InvalidReason, TokenError};
use super::jwks::{JwksRefresher, JwksShared, JwksStatus, RefreshOptions};
use super::keys::{ClaimRules, HMAC_ALGS, KeyEntry, key_from_pem, parse_jwks};

/// Longest token accepted, in bytes; longer ones are refused before any
/// decoding. 16 KiB holds a token with hundreds of `channels` and a large
/// `info`, and bounds the work an attacker can ask for per attempt.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Checks connection and subscription JWTs against the configured keys.
pub struct Verifier {
    hmac: Option<KeyEntry>,
    public: Option<KeyEntry>,
    jwks: Option<Arc<JwksShared>>,
    leeway: u64,
    allow_anonymous: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field(
                "public",
                &self.public.as_ref().map(|e| &e.validation.algorithms),
            )
            .field("jwks", &self.jwks.as_ref().map(|j| j.url.as_deref()))
            .field("leeway", &self.leeway)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier from `[auth]`: validates it, reads
    /// `public_key_file`, `jwks_file` and `jwks_ca_file`. A `jwks_url` set
    /// starts empty; [`Verifier::spawn_jwks_refresh`] fills it. Errors name
    /// the key and file.
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, String> {
        cfg.validate()?;
        if !cfg.has_jwt_keys() {
            return Err(
                "no JWT key configured (auth.hmac_secret, auth.public_key_file, \
                        auth.jwks_file or auth.jwks_url)"
                    .into(),
            );
        }
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err("jsonwebtoken has no crypto provider (build feature)".into());
        }
        let rules = ClaimRules {
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
        };
        let hmac = match &cfg.hmac_secret {
            None => None,
            Some(secret) => {
                let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| format!("auth.hmac_secret: {e}"))?;
                Some(KeyEntry::new(key, HMAC_ALGS.to_vec(), &rules))
            }
        };
        let public = match &cfg.public_key_file {
            None => None,
            Some(path) => {
                let pem = read(path, "public_key_file")?;
                let (key, algs) = key_from_pem(&pem)
                    .map_err(|e| format!("auth.public_key_file {}: {e}", path.display()))?;
                Some(KeyEntry::new(key, algs, &rules))
            }
        };
        let jwks = if let Some(path) = &cfg.jwks_file {
            let text = read(path, "jwks_file")?;
            let set = parse_jwks(&text, &rules)
                .map_err(|e| format!("auth.jwks_file {}: {e}", path.display()))?;
            for why in &set.skipped {
                tracing::warn!(file = %path.display(), "JWKS key skipped: {why}");
            }
            Some(Arc::new(JwksShared::new(Some(set), None, None, rules)))
        } else if let Some(url) = &cfg.jwks_url {
            let ca = match &cfg.jwks_ca_file {
                Some(path) => Some(read(path, "jwks_ca_file")?),
                None => None,
            };
            Some(Arc::new(JwksShared::new(
                None,
                Some(url.clone()),
                ca,
                rules,
            )))
        } else {
            None
        };
        Ok(Verifier {
            hmac,
            public,
            jwks,
            leeway: cfg.leeway.as_secs(),
            allow_anonymous: cfg.allow_anonymous,
        })
    }

    /// Starts the background fetcher for `jwks_url` (thread `wsedge-jwks`);
    /// `Ok(None)` if no URL is configured. Keep the handle for as long as
    /// the verifier is used: dropping it stops refreshing.
    pub fn spawn_jwks_refresh(
        &self,
        opts: RefreshOptions,
    ) -> Result<Option<JwksRefresher>, String> {
        match &self.jwks {
            Some(shared) if shared.url.is_some() => {
                JwksRefresher::spawn(shared.clone(), opts).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Whether tokens with an empty `sub` are accepted (and, for the
    /// session, whether a `connect` without credentials may be anonymous).
    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// The JWKS source's counters, if one is configured.
    pub fn jwks_status(&self) -> Option<JwksStatus> {
        self.jwks.as_ref().map(|j| j.status())
    }

    /// Verifies a connection token at unix time `now_unix` (seconds).
    pub fn verify_connect(&self, token: &str, now_unix: u64) -> Result<ConnectClaims, TokenError> {
        let c = self.verify_raw(token, now_unix)?;
        if c.channel.is_some() {
            return Err(InvalidReason::WrongTokenType.into());
        }
        let info = c.info_bytes();
        let sub = c.sub.unwrap_or_default();
        if sub.is_empty() && !self.allow_anonymous {
            return Err(InvalidReason::Anonymous.into());
        }
        self.check_exp(c.exp, now_unix)?;
        Ok(ConnectClaims {
            sub,
            exp: c.exp,
            info,
            channels: c.channels.unwrap_or_default(),
        })
    }

    /// Verifies a subscription token at `now_unix`. The caller then checks
    /// user and channel with [`SubscribeClaims::check`].
    pub fn verify_subscribe(
        &self,
        token: &str,
        now_unix: u64,
    ) -> Result<SubscribeClaims, TokenError> {
        let c = self.verify_raw(token, now_unix)?;
        let info = c.info_bytes();
        let Some(channel) = c.channel.filter(|ch| !ch.is_empty()) else {
            return Err(InvalidReason::WrongTokenType.into());
        };
        self.check_exp(c.exp, now_unix)?;
        Ok(SubscribeClaims {
            sub: c.sub.unwrap_or_default(),
            channel,
            exp: c.exp,
            info,
        })
    }

    fn check_exp(&self, exp: Option<u64>, now: u64) -> Result<(), TokenError> {
        match exp {
            Some(exp) if now > exp.saturating_add(self.leeway) => Err(TokenError::Expired),
            _ => Ok(()),
        }
    }

    /// Steps 1–4 of the module doc.
    fn verify_raw(&self, token: &str, now: u64) -> Result<RawClaims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(InvalidReason::TooLong.into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| header_error(token, &e))?;
        let claims = self.decode(token, &header)?;
        if let Some(nbf) = claims.nbf
            && nbf > now.saturating_add(self.leeway)
        {
            return Err(InvalidReason::NotYetValid.into());
        }
        Ok(claims)
    }

    /// Picks the key (step 2) and checks signature, `aud`, `iss` (step 3).
    fn decode(&self, token: &str, header: &Header) -> Result<RawClaims, TokenError> {
        let alg = header.alg;
        let hmac = HMAC_ALGS.contains(&alg);
        if let (false, Some(kid), Some(jwks)) = (hmac, &header.kid, &self.jwks) {
            let guard = jwks.keys.load();
            let Some(set) = guard.as_ref() else {
                jwks.request_refresh();
                return Err(TokenError::Unavailable);
            };
            return match set.keys.get(kid.as_str()) {
                Some(entry) => decode_with(entry, alg, token),
                None => {
                    jwks.request_refresh();
                    Err(InvalidReason::UnknownKid.into())
                }
            };
        }
        let entry = if hmac { &self.hmac } else { &self.public };
        match entry {
            Some(entry) => decode_with(entry, alg, token),
            // An asymmetric token without `kid` while only a JWKS is set.
            None if !hmac && self.jwks.is_some() => Err(InvalidReason::UnknownKid.into()),
            None => Err(InvalidReason::WrongAlgorithm.into()),
        }
    }
}

fn decode_with(entry: &KeyEntry, alg: Algorithm, token: &str) -> Result<RawClaims, TokenError> {
    if !entry.allows(alg) {
        return Err(InvalidReason::WrongAlgorithm.into());
    }
    jsonwebtoken::decode::<RawClaims>(token, &entry.key, &entry.validation)
        .map(|data| data.claims)
        .map_err(|e| TokenError::Invalid(decode_reason(&e)))
}

/// Maps `jsonwebtoken`'s error kinds to ours.
fn decode_reason(e: &JwtError) -> InvalidReason {
    match e.kind() {
        ErrorKind::InvalidSignature => InvalidReason::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => InvalidReason::WrongAlgorithm,
        ErrorKind::InvalidAudience => InvalidReason::WrongAudience,
        ErrorKind::InvalidIssuer => InvalidReason::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => InvalidReason::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => InvalidReason::WrongIssuer,
        // The header parsed already, so a JSON error is the payload's.
        ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::Json(_) => InvalidReason::BadClaims,
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => InvalidReason::KeyError,
        _ => InvalidReason::Malformed,
    }
}

/// A header that did not decode: name `alg: none` (or any algorithm wsedge
/// does not implement) apart from plain garbage.
fn header_error(token: &str, e: &JwtError) -> TokenError {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    if matches!(e.kind(), ErrorKind::Json(_)) {
        let alg = token
            .split('.')
            .next()
            .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
            .and_then(|json| serde_json::from_slice::<AlgOnly>(&json).ok());
        if let Some(AlgOnly { alg }) = alg
            && alg.parse::<Algorithm>().is_err()
        {
            return InvalidReason::AlgNotAllowed.into();
        }
    }
    InvalidReason::Malformed.into()
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("auth.{key} {}: {e}", path.display()))
}
