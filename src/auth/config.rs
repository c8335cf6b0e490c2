//! The `[auth]` configuration section: how clients prove who they are.
//!
//! Every key is also settable as `WSEDGE_AUTH_<KEY>` (see [`merge_env`]).
//! [`AuthConfig::validate`] checks what types cannot; files named here are
//! read by [`crate::auth::Verifier::new`], which reports unreadable or
//! malformed keys with the file's path.

use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that set `[auth]` keys.
pub const ENV_PREFIX: &str = "WSEDGE_AUTH_";

/// The environment variable whose value is taken verbatim as `hmac_secret`
/// (the generic provider would read `0123` as the number 123).
pub const HMAC_SECRET_ENV: &str = "WSEDGE_AUTH_HMAC_SECRET";

/// Shortest accepted `hmac_secret`, in bytes: RFC 7518 §3.2 requires an
/// HMAC key at least as long as the hash output (32 bytes for HS256).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Largest accepted `leeway`: beyond a few minutes `exp` stops meaning much.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// How a connection proves its identity (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No credentials: every connection is anonymous and may do what the
    /// namespaces allow anonymous users. The default, for local use.
    #[default]
    None,
    /// `connect {token}` carries a JWT.
    Jwt,
    /// `connect {ticket}` carries a one-time ticket redeemed in Redis.
    Ticket,
    /// Either of the two; a connect with both is refused.
    JwtOrTicket,
}

impl AuthMode {
    /// Whether JWTs are accepted (also decides whether a verifier is built).
    pub const fn accepts_jwt(self) -> bool {
        matches!(self, AuthMode::Jwt | AuthMode::JwtOrTicket)
    }

    /// Whether Redis tickets are accepted.
    pub const fn accepts_ticket(self) -> bool {
        matches!(self, AuthMode::Ticket | AuthMode::JwtOrTicket)
    }

    /// The name as written in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
            AuthMode::Ticket => "ticket",
            AuthMode::JwtOrTicket => "jwt_or_ticket",
        }
    }
}

/// The `[auth]` section. Every default states its reason; the embedded
/// default is `mode = "none"` so the README's first command needs no keys.
/// `Debug` hides `hmac_secret` and a `redis_url` with credentials, so the
/// config can be logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `jwt`, `ticket` or `jwt_or_ticket`. Default `none`: a node
    /// started without a config is for local use (and listens on loopback).
    pub mode: AuthMode,
    /// Shared secret for HS256/HS384/HS512 tokens, at least 32 bytes.
    /// Default unset. Prefer `WSEDGE_AUTH_HMAC_SECRET` to a file on disk.
    pub hmac_secret: Option<String>,
    /// PEM public key (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`): RSA
    /// (RS256/384/512, PS256/384/512), EC P-256 (ES256), EC P-384 (ES384)
    /// or Ed25519 (EdDSA). Default unset.
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document (`{"keys": [...]}`) read once at start; tokens name
    /// their key with `kid`. Default unset.
    pub jwks_file: Option<PathBuf>,
    /// An `https://` URL serving a JWKS, fetched off the shard threads at
    /// start, every 5 minutes, and when a token names an unknown `kid`
    /// (at most once per 10 s). Default unset.
    pub jwks_url: Option<String>,
    /// PEM file of the CA certificate(s) to trust for `jwks_url` instead of
    /// the system roots (a private PKI, or tests). Default unset: the
    /// system's trust store.
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `aud` of every token (connection and subscription). Default
    /// unset: `aud` is not checked, as in Centrifugo.
    pub audience: Option<String>,
    /// Required `iss` of every token. Default unset: `iss` is not checked.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`. Default 5s: NTP keeps
    /// servers within milliseconds, and a short leeway keeps an expired
    /// token useless almost at once. At most 5 minutes.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Accept tokens with an empty `sub` (anonymous users). Default false:
    /// a token should name a user unless the operator says otherwise.
    pub allow_anonymous: bool,
    /// Redis for one-time tickets (`redis://host:port/db`). Default unset;
    /// required by the `ticket` modes.
    pub redis_url: Option<String>,
    /// Time a connection has to complete `connect` before it is closed.
    /// Default 10s, Centrifugo's `stale_close_delay`: ample for a client
    /// that fetches a token first, short enough that idle sockets cannot
    /// pile up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time after a connection's `exp` during which a `refresh` is still
    /// accepted; past it the connection is closed as expired. Default 25s,
    /// Centrifugo's grace: room for a client to fetch a new token on a
    /// slow link.
    #[serde(with = "humantime_serde")]
    pub refresh_grace: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            hmac_secret: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(5),
            allow_anonymous: false,
            redis_url: None,
            connect_timeout: Duration::from_secs(10),
            refresh_grace: Duration::from_secs(25),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |set: bool| if set { "<hidden>" } else { "<unset>" };
        let redis = match &self.redis_url {
            Some(url) if url.contains('@') => Some("<hidden: has credentials>"),
            other => other.as_deref(),
        };
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("hmac_secret", &hidden(self.hmac_secret.is_some()))
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_ca_file", &self.jwks_ca_file)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("redis_url", &redis)
            .field("connect_timeout", &self.connect_timeout)
            .field("refresh_grace", &self.refresh_grace)
            .finish()
    }
}

impl AuthConfig {
    /// Whether any JWT key source is configured.
    pub fn has_jwt_keys(&self) -> bool {
        self.hmac_secret.is_some()
            || self.public_key_file.is_some()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }

    /// Checks what types alone cannot. Errors name the `auth.` key.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode.accepts_jwt() && !self.has_jwt_keys() {
            return Err(format!(
                "auth.mode = \"{}\" needs a key: set auth.hmac_secret, auth.public_key_file, \
                 auth.jwks_file or auth.jwks_url",
                self.mode.as_str()
            ));
        }
        if self.mode.accepts_ticket() && self.redis_url.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "auth.mode = \"{}\" needs auth.redis_url",
                self.mode.as_str()
            ));
        }
        if let Some(secret) = &self.hmac_secret
            && secret.len() < MIN_HMAC_SECRET_BYTES
        {
            return Err(format!(
                "auth.hmac_secret is {} bytes; HS256 needs at least {MIN_HMAC_SECRET_BYTES} \
                 (RFC 7518 §3.2)",
                secret.len()
            ));
        }
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return Err("set auth.jwks_file or auth.jwks_url, not both".into());
        }
        if let Some(url) = &self.jwks_url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("auth.jwks_url = {url:?} is not a URL: {e}"))?;
            if parsed.scheme() != "https" {
                return Err(format!(
                    "auth.jwks_url = {url:?} must be https:// (keys fetched in clear could be \
                     replaced on the way)"
                ));
            }
            if parsed.host_str().is_none() {
                return Err(format!("auth.jwks_url = {url:?} has no host"));
            }
        }
        if self.jwks_ca_file.is_some() && self.jwks_url.is_none() {
            return Err("auth.jwks_ca_file is only used with auth.jwks_url".into());
        }
        for (key, value) in [("audience", &self.audience), ("issuer", &self.issuer)] {
            if value.as_deref() == Some("") {
                return Err(format!("auth.{key} is empty; remove it or give a value"));
            }
        }
        if self.leeway > MAX_LEEWAY {
            return Err(format!(
                "auth.leeway = {} is above the maximum of 5m",
                humantime_serde::re::humantime::format_duration(self.leeway)
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err("auth.connect_timeout must be above 0".into());
        }
        Ok(())
    }
}

/// Merges `WSEDGE_AUTH_<KEY>` variables into `fig` as `auth.<key>`.
/// `WSEDGE_AUTH_HMAC_SECRET` is taken verbatim (a secret of digits stays a
/// string). The caller's generic `WSEDGE_` provider must skip the
/// `AUTH_` variables (e.g. `.filter(|k| !k.as_str().starts_with("auth_"))`),
/// or the top-level config would see an unknown key `auth_mode`.
pub fn merge_env(fig: Figment) -> Result<Figment, String> {
    let fig = fig.merge(
        Env::prefixed(ENV_PREFIX)
            .ignore(&["HMAC_SECRET"])
            .map(|key| format!("auth.{key}").into()),
    );
    match std::env::var_os(HMAC_SECRET_ENV) {
        None => Ok(fig),
        Some(secret) => {
            let secret = secret
                .into_string()
                .map_err(|_| format!("{HMAC_SECRET_ENV} is not valid UTF-8"))?;
            Ok(fig.merge(Serialized::default("auth.hmac_secret", secret)))
        }
    }
}
