//! Close codes, and whether each one advises reconnecting.
//!
//! The server's codes and ranges are those of docs/PROTOCOL.md ("Close
//! codes"). Codes below 1000 are this client's own: they name why *it*
//! dropped a connection (no close frame came from the server), and appear
//! in [`ClientEvent::Disconnected`](crate::ClientEvent::Disconnected) like
//! the server's.

/// In a [`Disconnected`](crate::ClientEvent::Disconnected) event:
/// [`Client::disconnect`](crate::Client::disconnect) was called (or every
/// client handle was dropped).
pub const DISCONNECT_CALLED: u16 = 0;
/// In a [`Connecting`](crate::ClientEvent::Connecting) event:
/// [`Client::connect`](crate::Client::connect) was called.
pub const CONNECT_CALLED: u16 = 0;
/// The connection ended without a close frame (reset, EOF, I/O error).
pub const TRANSPORT_CLOSED: u16 = 1;
/// No frame at all (not even a ping) came from the server within its ping
/// interval plus [`Options::max_server_ping_delay`](crate::Options::max_server_ping_delay).
pub const NO_PING: u16 = 2;
/// Opening the WebSocket or the `connect` command did not complete within
/// [`Options::timeout`](crate::Options::timeout).
pub const CONNECT_TIMEOUT: u16 = 3;
/// The WebSocket could not be opened (refused, DNS, upgrade answered
/// other than 101).
pub const CONNECT_FAILED: u16 = 4;
/// A `subscribe` went unanswered within the command timeout: the client
/// reconnects so that every subscription's state is known again.
pub const SUBSCRIBE_TIMEOUT: u16 = 5;
/// The `connect` command was refused (an error reply); the reason names
/// the error.
pub const CONNECT_REFUSED: u16 = 6;
/// The token provider failed, returned an empty token (unauthorized), or
/// the token expired and there is no provider to get a new one.
pub const TOKEN_UNAVAILABLE: u16 = 7;
/// [`Options::max_reconnect_attempts`](crate::Options::max_reconnect_attempts)
/// consecutive attempts failed.
pub const RECONNECT_EXHAUSTED: u16 = 8;
/// The server sent something this client cannot read (not JSON, an
/// unexpected reply shape).
pub const BAD_PROTOCOL: u16 = 9;
/// TLS failed for good on a `wss://` URL: the server's certificate is not
/// trusted (an unknown CA, expired, another host's name), or the client's
/// [`TlsConfig`](crate::TlsConfig) trusts no root. The client does not
/// reconnect; [`Client::connect`](crate::Client::connect) tries again.
pub const TLS_FAILED: u16 = 10;

/// Whether the server's close `code` advises reconnecting (with backoff,
/// and recovering subscriptions).
///
/// By range: 3000–3499 and 4000–4499 reconnect, 3500–3999 and 4500–4999
/// do not. Among the WebSocket codes, the ones that say the client broke
/// the protocol or sent what the server cannot take (1002 protocol error,
/// 1003 unsupported data, 1007 invalid payload, 1008 policy, 1009 message
/// too big, 1010 missing extension) do not: reconnecting would fail the
/// same way. Every other code (1000, 1001 going away, 1006 abnormal, 1011
/// internal error, 1012–1014 restart/try later) does, as does a code
/// outside every range (a newer server's; the safe side for a client that
/// must stay connected, with backoff bounding the cost).
pub fn reconnect_advised(code: u16) -> bool {
    !matches!(
        code,
        1002 | 1003 | 1007 | 1008 | 1009 | 1010 | 3500..=3999 | 4500..=4999
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_protocol() {
        for code in [3000, 3001, 3002, 3003, 3004, 3005, 3006, 3007, 3008, 3499] {
            assert!(reconnect_advised(code), "{code}");
        }
        for code in [3500, 3501, 3502, 3503, 3504, 3999] {
            assert!(!reconnect_advised(code), "{code}");
        }
        for code in [4000, 4200, 4499] {
            assert!(reconnect_advised(code), "{code}");
        }
        for code in [4500, 4750, 4999] {
            assert!(!reconnect_advised(code), "{code}");
        }
    }

    #[test]
    fn websocket_codes_from_the_table() {
        // PROTOCOL.md: 1001 and 1011 reconnect; 1002, 1003, 1007, 1009 do not.
        assert!(reconnect_advised(1000));
        assert!(reconnect_advised(1001));
        assert!(reconnect_advised(1006));
        assert!(reconnect_advised(1011));
        assert!(!reconnect_advised(1002));
        assert!(!reconnect_advised(1003));
        assert!(!reconnect_advised(1007));
        assert!(!reconnect_advised(1009));
    }
}
