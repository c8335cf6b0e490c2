//! Why a token was refused, split by what the client should do next.

use std::fmt;

/// A refused token. The session maps each kind to one answer:
///
/// | kind            | at `connect`                         | meaning for the client |
/// |-----------------|--------------------------------------|------------------------|
/// | [`Expired`]     | error 109-style reply, `temporary`   | fetch a new token, retry |
/// | [`Unavailable`] | error reply, `temporary`             | retry later (keys not loaded yet) |
/// | [`Invalid`]     | close 3502                           | do not retry this token |
///
/// [`Expired`]: TokenError::Expired
/// [`Unavailable`]: TokenError::Unavailable
/// [`Invalid`]: TokenError::Invalid
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenError {
    /// Signature and claims are fine but `exp` (plus leeway) has passed. It
    /// is reported only when nothing else is wrong, so a new token from the
    /// same issuer fixes it.
    Expired,
    /// The token names a JWKS key (`kid`) but no key set has been fetched
    /// yet (the JWKS URL has not answered since start). Temporary.
    Unavailable,
    /// Everything else; the reason is for metrics and logs, never sent to
    /// the client in more detail than "invalid token".
    Invalid(InvalidReason),
}

impl TokenError {
    /// A short stable label for a metrics counter (`reason="..."`).
    pub const fn label(self) -> &'static str {
        match self {
            TokenError::Expired => "expired",
            TokenError::Unavailable => "keys_unavailable",
            TokenError::Invalid(r) => r.label(),
        }
    }

    /// Whether retrying with a fresh token (or later) may succeed.
    pub const fn temporary(self) -> bool {
        !matches!(self, TokenError::Invalid(_))
    }

    /// Every label, for registering metric series up front.
    pub fn all_labels() -> impl Iterator<Item = &'static str> {
        [TokenError::Expired, TokenError::Unavailable]
            .into_iter()
            .chain(InvalidReason::ALL.into_iter().map(TokenError::Invalid))
            .map(TokenError::label)
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Expired => f.write_str("token expired"),
            TokenError::Unavailable => f.write_str("token keys not loaded yet"),
            TokenError::Invalid(r) => write!(f, "invalid token: {}", r.describe()),
        }
    }
}

impl std::error::Error for TokenError {}

impl From<InvalidReason> for TokenError {
    fn from(r: InvalidReason) -> Self {
        TokenError::Invalid(r)
    }
}

/// Why a token is invalid (terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    /// Not three base64url parts, undecodable header, bad `crit`, or empty.
    Malformed,
    /// Longer than [`crate::auth::MAX_TOKEN_BYTES`]; refused before decoding.
    TooLong,
    /// `alg` is `none` or not an algorithm wsedge implements.
    AlgNotAllowed,
    /// `alg` is real but no configured key is of that kind (an HS token
    /// against an RSA key: algorithm confusion), or the JWKS key's own
    /// `alg`/curve differs.
    WrongAlgorithm,
    /// The signature does not verify with the selected key.
    BadSignature,
    /// The selected key could not be used (a configuration problem, e.g. a
    /// JWKS key that is not a valid point or modulus).
    KeyError,
    /// The token names a `kid` the key set does not have (a refresh of the
    /// JWKS URL has been requested), or names none while only a JWKS could
    /// check it.
    UnknownKid,
    /// `nbf` is later than now plus leeway.
    NotYetValid,
    /// `aud` is missing or not the configured audience.
    WrongAudience,
    /// `iss` is missing or not the configured issuer.
    WrongIssuer,
    /// A claim has the wrong type (`exp` as a string, `channels` not a list
    /// of strings, duplicate keys, payload not a JSON object).
    BadClaims,
    /// `sub` is empty and `allow_anonymous` is off.
    Anonymous,
    /// A subscription token used to connect (it has `channel`), or a
    /// connection token used to subscribe (it has none).
    WrongTokenType,
    /// Subscription token: `sub` is not the connection's user.
    WrongUser,
    /// Subscription token: `channel` is not the channel subscribed to.
    WrongChannel,
}

impl InvalidReason {
    /// Every reason, for metrics registration and documentation tests.
    pub const ALL: [InvalidReason; 15] = [
        InvalidReason::Malformed,
        InvalidReason::TooLong,
        InvalidReason::AlgNotAllowed,
        InvalidReason::WrongAlgorithm,
        InvalidReason::BadSignature,
        InvalidReason::KeyError,
        InvalidReason::UnknownKid,
        InvalidReason::NotYetValid,
        InvalidReason::WrongAudience,
        InvalidReason::WrongIssuer,
        InvalidReason::BadClaims,
        InvalidReason::Anonymous,
        InvalidReason::WrongTokenType,
        InvalidReason::WrongUser,
        InvalidReason::WrongChannel,
    ];

    /// A short stable label for metrics.
    pub const fn label(self) -> &'static str {
        match self {
            InvalidReason::Malformed => "malformed",
            InvalidReason::TooLong => "too_long",
            InvalidReason::AlgNotAllowed => "alg_not_allowed",
            InvalidReason::WrongAlgorithm => "wrong_algorithm",
            InvalidReason::BadSignature => "bad_signature",
            InvalidReason::KeyError => "key_error",
            InvalidReason::UnknownKid => "unknown_kid",
            InvalidReason::NotYetValid => "not_yet_valid",
            InvalidReason::WrongAudience => "wrong_audience",
            InvalidReason::WrongIssuer => "wrong_issuer",
            InvalidReason::BadClaims => "bad_claims",
            InvalidReason::Anonymous => "anonymous",
            InvalidReason::WrongTokenType => "wrong_token_type",
            InvalidReason::WrongUser => "wrong_user",
            InvalidReason::WrongChannel => "wrong_channel",
        }
    }

    /// A sentence for logs.
    pub const fn describe(self) -> &'static str {
        match self {
            InvalidReason::Malformed => "malformed",
            InvalidReason::TooLong => "too long",
            InvalidReason::AlgNotAllowed => "algorithm not allowed",
            InvalidReason::WrongAlgorithm => "no key for this algorithm",
            InvalidReason::BadSignature => "bad signature",
            InvalidReason::KeyError => "key unusable",
            InvalidReason::UnknownKid => "unknown kid",
            InvalidReason::NotYetValid => "not yet valid (nbf)",
            InvalidReason::WrongAudience => "wrong audience",
            InvalidReason::WrongIssuer => "wrong issuer",
            InvalidReason::BadClaims => "bad claims",
            InvalidReason::Anonymous => "anonymous not allowed",
            InvalidReason::WrongTokenType => "wrong token type",
            InvalidReason::WrongUser => "token for another user",
            InvalidReason::WrongChannel => "token for another channel",
        }
    }
}
