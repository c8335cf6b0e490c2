//! Reading a token's expiry, without verifying it.
//!
//! The client only needs `exp` to know when to ask for a new token; the
//! server verifies the signature. A token that is not a JWS compact
//! serialization, or whose payload has no numeric `exp`, "never expires"
//! as far as scheduling goes (the server's `connect` reply still says
//! whether it does, with `ttl`).

use std::time::Duration;

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// base64url, with or without padding (RFC 7515 says without; some
/// issuers pad anyway).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `exp` claim (seconds since the Unix epoch) of a JWT, read from its
/// payload without checking the signature. `None` when the token is not
/// three dot-separated parts, the payload is not base64url JSON, or `exp`
/// is missing or not a non-negative number.
pub fn expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = BASE64URL.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && exp >= 0.0).then(|| exp.floor() as u64)
}

/// How long to wait, with `remaining` left on the credentials, before
/// refreshing them: ten seconds before they expire, or half-way when
/// less than twenty seconds remain, so a refresh always starts before
/// `exp` (the server's `refresh_grace` then covers a slow token provider).
pub fn refresh_delay(remaining: Duration) -> Duration {
    let lead = (remaining / 2).min(Duration::from_secs(10));
    remaining - lead
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn token(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp() {
        assert_eq!(
            expiry(&token(r#"{"sub":"ann","exp":1764700042}"#)),
            Some(1764700042)
        );
        assert_eq!(expiry(&token(r#"{"exp":1764700042.9}"#)), Some(1764700042));
        // Padded base64url is read too.
        let padded = format!(
            "e30.{}.x",
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":12}"#)
        );
        assert!(padded.contains('='), "{padded}");
        assert_eq!(expiry(&padded), Some(12));
        // Characters of the URL-safe alphabet ('-' and '_').
        let t = token(r#"{"sub":"~~~>>>???","exp":5}"#);
        assert!(t.contains('-') || t.contains('_'), "{t}");
        assert_eq!(expiry(&t), Some(5));
    }

    #[test]
    fn no_exp_is_none() {
        assert_eq!(expiry(&token(r#"{"sub":"ann"}"#)), None);
        assert_eq!(expiry(&token(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry(&token(r#"{"exp":-1}"#)), None);
        assert_eq!(expiry(&token(r#"[1,2]"#)), None);
        assert_eq!(expiry(&token("not json")), None);
        assert_eq!(expiry("opaque-session-token"), None);
        assert_eq!(expiry("a.b"), None);
        assert_eq!(expiry("a.b.c.d"), None);
        assert_eq!(expiry("a.%%%.c"), None);
        assert_eq!(expiry(""), None);
    }

    #[test]
    fn refresh_starts_before_expiry() {
        assert_eq!(
            refresh_delay(Duration::from_secs(3600)),
            Duration::from_secs(3590)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(20)),
            Duration::from_secs(10)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
        assert_eq!(refresh_delay(Duration::ZERO), Duration::ZERO);
        for s in 1..100 {
            let remaining = Duration::from_secs(s);
            assert!(refresh_delay(remaining) < remaining, "{s}");
        }
    }
}
