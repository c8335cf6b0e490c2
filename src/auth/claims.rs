//! The claims wsedge reads from a verified token, and their strict types.
//!
//! Connection token (Centrifugo's names): `sub` (user; missing or `""` =
//! anonymous), `exp`, `nbf`, `iat`, `aud`, `iss`, `info` (any JSON, shown in
//! presence), `channels` (server-side subscriptions at connect; not
//! permissions). Subscription token: `sub`, `channel` (required), `exp`,
//! `info`, `aud`, `iss`. Other claims are ignored. A registered claim of the
//! wrong type makes the token invalid rather than being skipped.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use super::error::{InvalidReason, TokenError};

/// What a verified connection token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectClaims {
    /// The user; empty for an anonymous connection (only with
    /// `allow_anonymous`).
    pub sub: String,
    /// Unix seconds after which the connection needs a `refresh`; `None` =
    /// the connection never expires.
    pub exp: Option<u64>,
    /// The `info` claim as its JSON text (object, string, number...), for
    /// presence and join/leave; `None` if absent or `null`.
    pub info: Option<Bytes>,
    /// Channels to subscribe the connection to at connect (server-side
    /// subscriptions). Names are not checked here; the session does.
    pub channels: Vec<String>,
}

/// What a verified subscription token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeClaims {
    /// The user the token was issued to (must equal the connection's user).
    pub sub: String,
    /// The channel the token admits to (must equal the subscribed channel).
    pub channel: String,
    /// Unix seconds after which the subscription needs a `sub_refresh`;
    /// `None` = it never expires.
    pub exp: Option<u64>,
    /// The `info` claim as JSON text: channel-specific info for presence.
    pub info: Option<Bytes>,
}

impl SubscribeClaims {
    /// Checks that the token was issued to `user` for `channel`: the rule
    /// of `subscribe = "token"` namespaces. The session calls this after
    /// [`crate::auth::Verifier::verify_subscribe`].
    pub fn check(&self, user: &str, channel: &str) -> Result<(), TokenError> {
        if self.sub != user {
            return Err(TokenError::Invalid(InvalidReason::WrongUser));
        }
        if self.channel != channel {
            return Err(TokenError::Invalid(InvalidReason::WrongChannel));
        }
        Ok(())
    }
}

/// The payload as decoded: every claim wsedge reads, none it does not.
/// `aud`/`iss` are checked by `jsonwebtoken` before this is used.
#[derive(Debug, Deserialize)]
pub(crate) struct RawClaims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub nbf: Option<u64>,
    /// Read only to insist on its type; not compared with the clock (see
    /// docs/PROTOCOL.md, Credentials: `nbf` says "not before", `iat` does
    /// not).
    #[serde(default, rename = "iat", deserialize_with = "numeric_date")]
    _iat: Option<u64>,
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub channel: Option<String>,
}

impl RawClaims {
    /// `info` as owned JSON text.
    pub fn info_bytes(&self) -> Option<Bytes> {
        self.info
            .as_ref()
            .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()))
    }
}

/// A JWT NumericDate (RFC 7519 §2): non-negative seconds, integer or
/// fractional (truncated). `null` counts as absent.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative NumericDate")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("negative NumericDate"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                Ok(Some(v as u64))
            } else {
                Err(E::custom("NumericDate out of range"))
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}
