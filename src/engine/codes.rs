//! The one catalogue of wire codes: error replies and disconnect/close codes.
//!
//! Error replies (`{"error": {"code", "message", "temporary"}}`) use codes
//! 100–199; a `temporary` error may succeed if retried. Disconnects use
//! WebSocket close codes: the RFC 6455 range (1000–1015) for transport-level
//! problems and the application range 3000–3999 for protocol-level reasons:
//!
//! | range      | meaning for the client                          |
//! |------------|-------------------------------------------------|
//! | 3000–3499  | reconnect (with backoff) and recover            |
//! | 3500–3999  | do not reconnect: fix the client or credentials |
//! | 4000–4499  | reconnect (a backend's own code, server API)     |
//! | 4500–4999  | do not reconnect (a backend's own code)          |
//!
//! docs/PROTOCOL.md mirrors this file; keep both in step.

/// An error reply code (100–199).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorCode {
    /// 100: the server failed internally; retry later.
    Internal,
    /// 101: the command needs a connection that is authenticated.
    Unauthorized,
    /// 102: the channel's namespace is not configured (strict namespaces).
    UnknownChannel,
    /// 103: the client may not do this.
    PermissionDenied,
    /// 104: the method name is not known.
    UnknownMethod,
    /// 105: the connection is already subscribed to the channel.
    AlreadySubscribed,
    /// 106: a per-connection limit was reached (e.g. subscriptions).
    LimitExceeded,
    /// 107: the command's parameters are malformed.
    BadRequest,
    /// 108: the connection is not subscribed to the channel.
    NotSubscribed,
    /// 109: the channel name is invalid.
    InvalidChannel,
    /// 110: `connect` must be the first command.
    NotConnected,
    /// 111: `connect` was already sent on this connection.
    AlreadyConnected,
    /// 112: the server is overloaded; retry the command later.
    Overloaded,
    /// 113: the server is shutting down; reconnect elsewhere.
    ShuttingDown,
    /// 114: too many commands per second; slow down and retry.
    TooManyRequests,
    /// 115: a `history` position (`since`) is from another epoch or ahead
    /// of the channel: the stream it names is gone.
    UnrecoverablePosition,
    /// 116: the token's `exp` has passed; get a new token and retry
    /// (`connect`, `subscribe`) or send it with `refresh`/`sub_refresh`.
    TokenExpired,
    /// 117: the story has its maximum of editors; retry later, join as a
    /// viewer, or join with `queue: true`.
    EditorsFull,
    /// 118: another member holds the section's lock (the error carries the
    /// holder).
    SectionLocked,
    /// 119: `base_version` is not the section's version and the namespace
    /// rejects conflicts (the error carries the current version and data).
    VersionConflict,
    /// 120: only an editor of the story may do this (lock, unlock, update).
    NotEditor,
    /// 121: a story limit was reached (sections, bytes, the editor queue,
    /// stories on the node).
    StoryLimit,
    /// 122: the channel's namespace is not collaborative.
    NotCollaborative,
    /// 123: a `publish` with `durable_ack` was published, but its durable
    /// sink did not confirm the event (refused it for good, or the spill
    /// could not be synced).
    NotDurable,
    /// 124: an `rpc`'s responder did not answer within `[rpc] timeout`;
    /// retry later (the call may or may not have run).
    RpcTimeout,
    /// 125: no backend listens on the `rpc`'s subject now; retry later.
    NoResponders,
    /// 126: the `rpc`'s responder answered with an error (its
    /// `Wsedge-Error` header, carried in the message), or its reply was
    /// too large to forward.
    RpcError,
    /// 127: `rpc` and `send` are not available on this node (no NATS
    /// configured for them).
    RpcNotConfigured,
}

impl ErrorCode {
    /// Every code, for documentation tests and metrics.
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownChannel,
        ErrorCode::PermissionDenied,
        ErrorCode::UnknownMethod,
        ErrorCode::AlreadySubscribed,
        ErrorCode::LimitExceeded,
        ErrorCode::BadRequest,
        ErrorCode::NotSubscribed,
        ErrorCode::InvalidChannel,
        ErrorCode::NotConnected,
        ErrorCode::AlreadyConnected,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManyRequests,
        ErrorCode::UnrecoverablePosition,
        ErrorCode::TokenExpired,
        ErrorCode::EditorsFull,
        ErrorCode::SectionLocked,
        ErrorCode::VersionConflict,
        ErrorCode::NotEditor,
        ErrorCode::StoryLimit,
        ErrorCode::NotCollaborative,
        ErrorCode::NotDurable,
        ErrorCode::RpcTimeout,
        ErrorCode::NoResponders,
        ErrorCode::RpcError,
        ErrorCode::RpcNotConfigured,
    ];

    /// The numeric code on the wire.
    pub const fn code(self) -> u32 {
        match self {
            ErrorCode::Internal => 100,
            ErrorCode::Unauthorized => 101,
            ErrorCode::UnknownChannel => 102,
            ErrorCode::PermissionDenied => 103,
            ErrorCode::UnknownMethod => 104,
            ErrorCode::AlreadySubscribed => 105,
            ErrorCode::LimitExceeded => 106,
            ErrorCode::BadRequest => 107,
            ErrorCode::NotSubscribed => 108,
            ErrorCode::InvalidChannel => 109,
            ErrorCode::NotConnected => 110,
            ErrorCode::AlreadyConnected => 111,
            ErrorCode::Overloaded => 112,
            ErrorCode::ShuttingDown => 113,
            ErrorCode::TooManyRequests => 114,
            ErrorCode::UnrecoverablePosition => 115,
            ErrorCode::TokenExpired => 116,
            ErrorCode::EditorsFull => 117,
            ErrorCode::SectionLocked => 118,
            ErrorCode::VersionConflict => 119,
            ErrorCode::NotEditor => 120,
            ErrorCode::StoryLimit => 121,
            ErrorCode::NotCollaborative => 122,
            ErrorCode::NotDurable => 123,
            ErrorCode::RpcTimeout => 124,
            ErrorCode::NoResponders => 125,
            ErrorCode::RpcError => 126,
            ErrorCode::RpcNotConfigured => 127,
        }
    }

    /// The human-readable message sent with the code.
    pub const fn message(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal server error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownChannel => "unknown channel",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::UnknownMethod => "unknown method",
            ErrorCode::AlreadySubscribed => "already subscribed",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::NotSubscribed => "not subscribed",
            ErrorCode::InvalidChannel => "invalid channel name",
            ErrorCode::NotConnected => "connect first",
            ErrorCode::AlreadyConnected => "already connected",
            ErrorCode::Overloaded => "server overloaded, retry",
            ErrorCode::ShuttingDown => "server shutting down",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::UnrecoverablePosition => "unrecoverable position",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::EditorsFull => "editors full",
            ErrorCode::SectionLocked => "section locked",
            ErrorCode::VersionConflict => "version conflict",
            ErrorCode::NotEditor => "not an editor",
            ErrorCode::StoryLimit => "story limit",
            ErrorCode::NotCollaborative => "not a collaborative channel",
            ErrorCode::NotDurable => "published, but the durable sink did not confirm it",
            ErrorCode::RpcTimeout => "rpc timeout",
            ErrorCode::NoResponders => "no responders",
            ErrorCode::RpcError => "rpc error",
            ErrorCode::RpcNotConfigured => "rpc not configured",
        }
    }

    /// Whether retrying the same command later may succeed.
    pub const fn temporary(self) -> bool {
        matches!(
            self,
            ErrorCode::Internal
                | ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManyRequests
                | ErrorCode::TokenExpired
                | ErrorCode::EditorsFull
                | ErrorCode::RpcTimeout
                | ErrorCode::NoResponders
        )
    }
}

/// A reason the server ends a connection. Each maps to one WebSocket close
/// code; the application ones (3000–3999) are also sent first as a
/// `disconnect` push so clients without close-code access learn the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// 1000: normal closure (echo of a client close without a code).
    Normal,
    /// 1001: the server is shutting down (graceful drain); reconnect.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
    /// 1003: a data type the endpoint does not accept (e.g. binary on a
    /// JSON connection).
    UnsupportedData,
    /// 1007: a text message (or close reason) was not valid UTF-8.
    InvalidPayload,
    /// 1008: policy violation.
    PolicyViolation,
    /// 1009: a message exceeded the configured maximum size.
    MessageTooBig,
    /// 1011: unexpected server condition.
    InternalError,
    /// 3001: server shutdown, sent in the `disconnect` push before 1001.
    Shutdown,
    /// 3002: the client did not read fast enough; its queued data was dropped.
    SlowConsumer,
    /// 3003: the client did not answer a ping within `pong_timeout`.
    NoPong,
    /// 3004: the server lost messages for one of the client's channels
    /// (internal queue overflow); reconnect and recover.
    InsufficientState,
    /// 3005: the server is overloaded; reconnect with backoff.
    ServerOverloaded,
    /// 3006: the server disconnected the client on a backend's request
    /// (server API `disconnect`); reconnecting is allowed.
    Disconnected,
    /// 3007: the connection's token expired and no `refresh` came within
    /// `refresh_grace`; reconnect with a new token.
    TokenExpired,
    /// 3008: the connection did not complete `connect` within
    /// `connect_timeout`; reconnect and send `connect` first.
    ConnectTimeout,
    /// 3501: the client sent a malformed command frame.
    BadRequest,
    /// 3502: the client's credentials were rejected.
    InvalidToken,
    /// 3503: the client flooded the server with commands (more than twice
    /// the per-second limit).
    Flood,
    /// 3504: the user already has `per_user_max_connections` connections
    /// open on the node (sent after error 106 in the `connect` reply). Not
    /// a reconnect code: the user's other connections must close first.
    ConnectionLimit,
    /// A code a backend chose through the server API `disconnect`
    /// (3000–4999; reconnect by range, see [`CloseReason::reconnect`]).
    Custom(u16),
}

impl CloseReason {
    /// Every reason, for documentation tests.
    pub const ALL: [CloseReason; 20] = [
        CloseReason::Normal,
        CloseReason::GoingAway,
        CloseReason::ProtocolError,
        CloseReason::UnsupportedData,
        CloseReason::InvalidPayload,
        CloseReason::PolicyViolation,
        CloseReason::MessageTooBig,
        CloseReason::InternalError,
        CloseReason::Shutdown,
        CloseReason::SlowConsumer,
        CloseReason::NoPong,
        CloseReason::InsufficientState,
        CloseReason::ServerOverloaded,
        CloseReason::Disconnected,
        CloseReason::TokenExpired,
        CloseReason::ConnectTimeout,
        CloseReason::BadRequest,
        CloseReason::InvalidToken,
        CloseReason::Flood,
        CloseReason::ConnectionLimit,
    ];

    /// The code in the `disconnect` push (and, for application reasons, in
    /// the close frame).
    pub const fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::GoingAway => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::UnsupportedData => 1003,
            CloseReason::InvalidPayload => 1007,
            CloseReason::PolicyViolation => 1008,
            CloseReason::MessageTooBig => 1009,
            CloseReason::InternalError => 1011,
            CloseReason::Shutdown => 3001,
            CloseReason::SlowConsumer => 3002,
            CloseReason::NoPong => 3003,
            CloseReason::InsufficientState => 3004,
            CloseReason::ServerOverloaded => 3005,
            CloseReason::Disconnected => 3006,
            CloseReason::TokenExpired => 3007,
            CloseReason::ConnectTimeout => 3008,
            CloseReason::BadRequest => 3501,
            CloseReason::InvalidToken => 3502,
            CloseReason::Flood => 3503,
            CloseReason::ConnectionLimit => 3504,
            CloseReason::Custom(code) => code,
        }
    }

    /// The code of the WebSocket close frame. Shutdown announces 3001 in the
    /// push but closes with the standard 1001 "going away".
    pub const fn close_code(self) -> u16 {
        match self {
            CloseReason::Shutdown => 1001,
            other => other.code(),
        }
    }

    /// Short reason text carried in the push and the close frame.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseReason::Normal => "",
            CloseReason::GoingAway => "going away",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::UnsupportedData => "unsupported data",
            CloseReason::InvalidPayload => "invalid payload",
            CloseReason::PolicyViolation => "policy violation",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::InternalError => "internal error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::NoPong => "no pong",
            CloseReason::InsufficientState => "insufficient state",
            CloseReason::ServerOverloaded => "server overloaded",
            CloseReason::Disconnected => "disconnected",
            CloseReason::TokenExpired => "token expired",
            CloseReason::ConnectTimeout => "connect timeout",
            CloseReason::BadRequest => "bad request",
            CloseReason::InvalidToken => "invalid token",
            CloseReason::Flood => "too many requests",
            CloseReason::ConnectionLimit => "connection limit",
            CloseReason::Custom(_) => "disconnected",
        }
    }

    /// Whether the client should reconnect. Application codes follow the
    /// range rule (3000–3499 and 4000–4499 reconnect, 3500–3999 and
    /// 4500–4999 do not); of the RFC codes only 1001 and 1011 invite a
    /// reconnect.
    pub const fn reconnect(self) -> bool {
        let code = self.code();
        match code {
            3000..=3499 | 4000..=4499 => true,
            3500..=3999 | 4500..=4999 => false,
            _ => matches!(self, CloseReason::GoingAway | CloseReason::InternalError),
        }
    }

    /// Whether the server sends a `disconnect` push before the close frame.
    /// Transport-level failures (bad frames) get only the close frame, since
    /// the stream may no longer be trusted.
    pub const fn sends_push(self) -> bool {
        self.code() >= 3000
    }
}

/// Whether a close code received from a peer is acceptable (RFC 6455 §7.4).
pub fn is_valid_received_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_in_range() {
        let codes: HashSet<u32> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        assert!(codes.iter().all(|c| (100..200).contains(c)));
        let close: HashSet<u16> = CloseReason::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(close.len(), CloseReason::ALL.len());
    }

    /// docs/PROTOCOL.md's error table has a row for every code, with the
    /// same `temporary` answer.
    #[test]
    fn protocol_doc_lists_every_error_code() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        for c in ErrorCode::ALL {
            let prefix = format!("| {} |", c.code());
            let row = doc
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no row for {c:?}"));
            let temporary = row.split('|').nth(3).map(str::trim);
            let want = if c.temporary() { "yes" } else { "no" };
            assert_eq!(temporary, Some(want), "{c:?}: {row}");
        }
    }

    #[test]
    fn reconnect_follows_ranges() {
        assert!(CloseReason::SlowConsumer.reconnect());
        assert!(CloseReason::Shutdown.reconnect());
        assert!(CloseReason::GoingAway.reconnect());
        assert!(!CloseReason::BadRequest.reconnect());
        assert!(!CloseReason::InvalidToken.reconnect());
        assert!(!CloseReason::ConnectionLimit.reconnect());
        assert!(CloseReason::TokenExpired.reconnect());
        assert!(ErrorCode::TokenExpired.temporary());
        assert!(!CloseReason::ProtocolError.reconnect());
        assert_eq!(CloseReason::Shutdown.close_code(), 1001);
        assert_eq!(CloseReason::SlowConsumer.close_code(), 3002);
    }

    #[test]
    fn received_close_codes() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_received_close_code(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000,
        ] {
            assert!(!is_valid_received_close_code(bad), "{bad}");
        }
    }
}
