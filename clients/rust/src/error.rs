//! The client's errors.

use std::fmt;

/// An error reply from the server: `{"code", "message", "temporary"}` and
/// any extra fields (docs/PROTOCOL.md, "Error codes").
#[derive(Debug, Clone, PartialEq)]
pub struct ServerError {
    /// The wire code (100–199).
    pub code: u32,
    /// The server's message.
    pub message: String,
    /// Whether the same command may succeed later (retry with backoff).
    pub temporary: bool,
    /// Fields besides `code`, `message` and `temporary` (`holder` for 118;
    /// `version` and `data` for 119); an empty object when none.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server error {}: {}", self.code, self.message)?;
        if self.temporary {
            f.write_str(" (temporary)")?;
        }
        Ok(())
    }
}

/// Error code 116: the token expired.
pub(crate) const TOKEN_EXPIRED: u32 = 116;

/// What can go wrong with a call, a subscription or the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The server answered the command with an error.
    Server(ServerError),
    /// No answer within [`Options::timeout`](crate::Options::timeout) (for
    /// a call made while connecting: no connection within it). For a
    /// publish, the outcome is unknown; repeating it with the same
    /// idempotency key is safe.
    Timeout,
    /// The connection dropped before the answer came; the outcome is
    /// unknown. (Publishes are not answered with this: they are resent
    /// after the reconnect with their idempotency key.)
    ConnectionLost,
    /// The client is disconnected: [`Client::disconnect`](crate::Client::disconnect)
    /// was called, or the server closed the connection with a code that
    /// says not to reconnect, or reconnecting gave up. `code` and `reason`
    /// are those of the disconnect (see [`crate::codes`]).
    Disconnected {
        /// The close code (the server's, or one of [`crate::codes`]).
        code: u16,
        /// Why.
        reason: String,
    },
    /// The offline outbox is full and its policy is
    /// [`OutboxPolicy::RejectNew`](crate::OutboxPolicy::RejectNew): the
    /// publish was not queued.
    OutboxFull,
    /// The publish was evicted from the full outbox by a newer one
    /// ([`OutboxPolicy::DropOldest`](crate::OutboxPolicy::DropOldest)); it
    /// was never sent.
    OutboxDropped,
    /// This client already has a subscription to the channel.
    AlreadySubscribed(String),
    /// The client's background task has ended (every [`Client`](crate::Client)
    /// handle was dropped).
    Closed,
    /// The WebSocket failed (connect refused, upgrade not accepted, I/O).
    Transport(String),
    /// The token provider failed, or gave an empty token (unauthorized).
    Token(String),
    /// TLS on a `wss://` URL: the server's certificate is not trusted, the
    /// handshake failed, or a [`TlsConfig`](crate::TlsConfig) could not be
    /// made (a bad CA PEM).
    Tls(String),
    /// The server sent something this client cannot read.
    Protocol(String),
    /// The data could not be encoded as JSON.
    Encode(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Server(e) => e.fmt(f),
            Error::Timeout => f.write_str("timed out"),
            Error::ConnectionLost => f.write_str("connection lost before the answer"),
            Error::Disconnected { code, reason } => write!(f, "disconnected ({code}: {reason})"),
            Error::OutboxFull => f.write_str("offline outbox full"),
            Error::OutboxDropped => f.write_str("evicted from the offline outbox"),
            Error::AlreadySubscribed(c) => write!(f, "already subscribed to {c:?}"),
            Error::Closed => f.write_str("client closed"),
            Error::Transport(m) => write!(f, "transport: {m}"),
            Error::Token(m) => write!(f, "token: {m}"),
            Error::Tls(m) => write!(f, "TLS: {m}"),
            Error::Protocol(m) => write!(f, "protocol: {m}"),
            Error::Encode(m) => write!(f, "encode: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Whether trying again later may succeed: a temporary server error,
    /// a timeout, or a lost connection.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Server(e) => e.temporary,
            Error::Timeout | Error::ConnectionLost | Error::Transport(_) => true,
            _ => false,
        }
    }

    /// The server error code, if this is a server error.
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Server(e) => Some(e.code),
            _ => None,
        }
    }
}
