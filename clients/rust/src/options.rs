//! The client's configuration, each default with its reason.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::{OutboxPolicy, StreamPosition, TlsConfig};

/// The error a token provider may fail with.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// The future a token provider returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// An async callback that gets a fresh connection token (from the
/// application's backend): called before connecting when there is no
/// token or it has expired, after the server answers error 116, and before
/// the token expires (for `refresh`). An empty token means "unauthorized":
/// the client disconnects and stops. A failure is reported as an
/// [`Error::Token`](crate::Error::Token) event and retried with backoff.
#[derive(Clone)]
pub struct TokenProvider(pub(crate) Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    /// Wraps an async closure.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(f())))
    }

    pub(crate) fn call(&self) -> TokenFuture {
        (self.0)()
    }
}

/// An async callback that gets a subscription token for a channel (from
/// the application's backend), for namespaces with `subscribe = "token"`:
/// called with the channel before subscribing when there is no token or it
/// has expired, after the server answers error 116, and before the token's
/// `exp` (for the protocol's `sub_refresh`). An empty token means
/// "unauthorized": the subscription ends with
/// [`UnsubscribeReason::Unauthorized`](crate::UnsubscribeReason::Unauthorized).
/// A failure is reported as a
/// [`SubscriptionEvent::Error`](crate::SubscriptionEvent::Error) with
/// [`Error::Token`](crate::Error::Token) and retried with backoff.
#[derive(Clone)]
pub struct SubTokenProvider(pub(crate) Arc<dyn Fn(String) -> TokenFuture + Send + Sync>);

impl SubTokenProvider {
    /// Wraps an async closure called with the channel.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        SubTokenProvider(Arc::new(move |channel| Box::pin(f(channel))))
    }

    pub(crate) fn call(&self, channel: &str) -> TokenFuture {
        (self.0)(channel.to_owned())
    }
}

impl fmt::Debug for SubTokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubTokenProvider(..)")
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

/// How a [`Client`](crate::Client) connects and behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// A connection token (JWT) for `connect`. Default none: nodes with
    /// `[auth] mode = "none"` need none.
    pub token: Option<String>,
    /// Gets tokens when `token` is missing or expired, and refreshes them
    /// before they expire. Default none: a static token cannot be
    /// refreshed, and the server closes the connection (3007) once it
    /// expires.
    pub token_provider: Option<TokenProvider>,
    /// The user id for `connect`, taken as given by nodes without
    /// authentication. Default none (anonymous).
    pub user: Option<String>,
    /// Any JSON shown to others in presence (nodes without authentication).
    pub info: Option<Value>,
    /// The client's name in `connect`. Default `"rust"`.
    pub name: String,
    /// The client's version in `connect`. Default this crate's version.
    pub version: String,
    /// How long a command may wait for its answer, and a connection attempt
    /// (WebSocket upgrade, then `connect`) for each step. Default 5 s
    /// (centrifuge-js's): a live server answers in milliseconds, and a
    /// call made while connecting waits this long for the connection.
    pub timeout: Duration,
    /// The first reconnect window's ceiling. Default 500 ms (centrifuge-js):
    /// a restarted node is usually back within a second.
    pub min_reconnect_delay: Duration,
    /// The largest reconnect window. Default 20 s (centrifuge-js): long
    /// outages cost a client at most one attempt every 20 s.
    pub max_reconnect_delay: Duration,
    /// Consecutive failed connection attempts after which the client gives
    /// up (state [`State::Disconnected`](crate::State::Disconnected)).
    /// Default none: a client keeps trying for as long as it exists.
    pub max_reconnect_attempts: Option<u32>,
    /// How much longer than the server's ping interval (from its `connect`
    /// reply) the client waits for any frame before it declares the link
    /// dead and reconnects. Default 10 s (centrifuge-js's
    /// `maxServerPingDelay`; the server's own `pong_timeout`).
    pub max_server_ping_delay: Duration,
    /// Publishes the offline outbox holds while not connected. Default
    /// 1000: minutes of a chat user's messages, a few hundred KiB at most.
    pub outbox_capacity: usize,
    /// What a full outbox does with one more publish. Default
    /// [`OutboxPolicy::RejectNew`]: nothing accepted is silently lost.
    pub outbox_policy: OutboxPolicy,
    /// Commands the client sends per second at most (0 = no limit).
    /// Default 100: half the server's default `max_commands_per_second`
    /// (200), so flushing a full outbox never gets error 114 or the 3503
    /// close (see the `rate` module's docs for why half).
    pub max_commands_per_second: u32,
    /// The certificate authorities trusted on `wss://` URLs. Default
    /// [`TlsConfig::default`]: the public roots, as a browser would.
    pub tls: TlsConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token: None,
            token_provider: None,
            user: None,
            info: None,
            name: "rust".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            timeout: Duration::from_secs(5),
            min_reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(20),
            max_reconnect_attempts: None,
            max_server_ping_delay: Duration::from_secs(10),
            outbox_capacity: 1000,
            outbox_policy: OutboxPolicy::RejectNew,
            max_commands_per_second: 100,
            tls: TlsConfig::default(),
        }
    }
}

impl Options {
    /// Sets [`Options::token_provider`] from an async closure.
    pub fn with_token_provider<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        self.token_provider = Some(TokenProvider::new(f));
        self
    }
}

/// How a [`Subscription`](crate::Subscription) subscribes.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Resubscribe with `recover` after a reconnect, from the last
    /// position seen, so missed publications arrive first (in namespaces
    /// with `recover = true`; a plain subscribe elsewhere). Default false.
    pub recover: bool,
    /// Recover from this position on the first subscribe too (the
    /// position the application's state was loaded at). Needs `recover`.
    pub since: Option<StreamPosition>,
    /// A subscription token, for namespaces with `subscribe = "token"`.
    /// Without a `token_provider` it is sent as is on every subscribe, and
    /// the server ends the subscription once it expires.
    pub token: Option<String>,
    /// Gets subscription tokens when `token` is missing or expired, and
    /// renews them before they expire (`sub_refresh`), so the subscription
    /// outlives every single token. Default none.
    pub token_provider: Option<SubTokenProvider>,
}

impl SubscribeOptions {
    /// Sets [`SubscribeOptions::token_provider`] from an async closure
    /// called with the channel.
    pub fn with_token_provider<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        self.token_provider = Some(SubTokenProvider::new(f));
        self
    }
}
