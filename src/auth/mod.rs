//! Who a connection is: JWT verification for `connect` and `subscribe`
//! tokens, and the `[auth]` configuration.
//!
//! Layout:
//! - [`config`]: [`AuthConfig`] (`[auth]`, `WSEDGE_AUTH_*`) and its checks.
//! - [`verifier`]: [`Verifier`], the pure, shared token check
//!   (`verify_connect`, `verify_subscribe`); `now` is an input.
//! - [`claims`]: what a verified token grants ([`ConnectClaims`],
//!   [`SubscribeClaims`]).
//! - [`error`]: [`TokenError`]: expired (refresh and retry), unavailable
//!   (retry), invalid (close 3502), each with a metrics label.
//! - `keys`: which key checks which algorithm; PEM and JWKS parsing.
//! - [`jwks`]: the swappable JWKS key set and its HTTPS refresher thread.
//!
//! Signatures and header/`aud`/`iss` checks are the `jsonwebtoken` crate's,
//! on the aws-lc-rs backend. The shards call [`Verifier`] directly: one
//! verification is tens of microseconds at most and never waits on I/O.

pub mod claims;
pub mod config;
pub mod error;
pub mod jwks;
mod keys;
pub mod verifier;

#[cfg(test)]
mod tests;

pub use claims::{ConnectClaims, SubscribeClaims};
pub use config::{AuthConfig, AuthMode};
pub use error::{InvalidReason, TokenError};
pub use jwks::{JwksRefresher, JwksStatus, RefreshOptions};
pub use verifier::{MAX_TOKEN_BYTES, Verifier};
