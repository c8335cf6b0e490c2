//! The answer to a one-time ticket redemption, on its way from the ticket
//! sidecar (`crate::sidecar::tickets`) back to the shard that asked.
//!
//! A client sends `connect {ticket}`; the shard hands the ticket to the
//! sidecar, keeps the connection pending, and later pops a
//! [`ShardMsg::Ticket`](super::ShardMsg::Ticket) carrying a
//! [`TicketAnswer`]: the ticket's claims, or why there are none.
//! [`TicketError::verdict`] says what the client is told.

use bytes::Bytes;

use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::subs::ConnRef;

/// The claims a backend stored with a ticket: the same shape as a connect
/// JWT's claims (`{"sub", "info"?, "channels"?, "exp"?}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TicketClaims {
    /// The user id (`sub`); empty (or absent) means anonymous.
    pub sub: String,
    /// `info`, as the JSON text the backend wrote (shown in presence);
    /// `None` when absent or `null`.
    pub info: Option<Bytes>,
    /// Server-side subscriptions to make at connect (`channels`), as
    /// written; channel names are not checked here.
    pub channels: Vec<String>,
    /// When the connection's credentials expire (`exp`, Unix seconds), to
    /// be treated like a connect JWT's `exp`. The ticket's own lifetime is
    /// its Redis TTL, not this.
    pub exp: Option<u64>,
}

/// Why a ticket gave no claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketError {
    /// The ticket was already used, expired, or never existed.
    Unknown,
    /// The ticket existed (and is now gone) but its value is not valid
    /// claims JSON, is too large, or is not a string in Redis.
    Malformed,
    /// Redis could not be reached or did not answer within the timeout.
    Unavailable,
    /// The sidecar's queue was full; nothing was sent to Redis.
    Busy,
    /// The ticket string is empty, too long or has characters other than
    /// printable ASCII without spaces; nothing was sent to Redis.
    Invalid,
}

/// What the client is told about a failed redemption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketVerdict {
    /// Close the connection (the credentials are bad: do not retry them).
    Close(CloseReason),
    /// Reply to `connect` with this error (temporary: retry later); the
    /// connection stays open, still not connected.
    Retry(ErrorCode),
}

impl TicketError {
    /// Every error, for metrics.
    pub const ALL: [TicketError; 5] = [
        TicketError::Unknown,
        TicketError::Malformed,
        TicketError::Unavailable,
        TicketError::Busy,
        TicketError::Invalid,
    ];

    /// The `result` label in metrics.
    pub const fn label(self) -> &'static str {
        match self {
            TicketError::Unknown => "unknown",
            TicketError::Malformed => "malformed",
            TicketError::Unavailable => "unavailable",
            TicketError::Busy => "busy",
            TicketError::Invalid => "invalid",
        }
    }

    /// What the client is told: bad credentials (unknown, malformed,
    /// invalid) close with 3502; Redis trouble answers error 100 and a
    /// full queue error 112, both temporary.
    pub const fn verdict(self) -> TicketVerdict {
        match self {
            TicketError::Unknown | TicketError::Malformed | TicketError::Invalid => {
                TicketVerdict::Close(CloseReason::InvalidToken)
            }
            TicketError::Unavailable => TicketVerdict::Retry(ErrorCode::Internal),
            TicketError::Busy => TicketVerdict::Retry(ErrorCode::Overloaded),
        }
    }
}

/// The result of one redemption, for the connection that sent the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketAnswer {
    /// The connection that is waiting.
    pub conn: ConnRef,
    /// Its `connect` command's id.
    pub id: u32,
    /// The claims, or why there are none.
    pub result: Result<TicketClaims, TicketError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_verdicts_follow_the_catalogue() {
        let labels: std::collections::HashSet<_> = TicketError::ALL.map(|e| e.label()).into();
        assert_eq!(labels.len(), TicketError::ALL.len());
        for e in TicketError::ALL {
            match e.verdict() {
                TicketVerdict::Close(r) => {
                    assert_eq!(r.code(), 3502, "{e:?}");
                    assert!(!r.reconnect(), "bad credentials are not retried");
                }
                TicketVerdict::Retry(code) => assert!(code.temporary(), "{e:?}"),
            }
        }
        assert_eq!(
            TicketError::Unavailable.verdict(),
            TicketVerdict::Retry(ErrorCode::Internal)
        );
        assert_eq!(
            TicketError::Busy.verdict(),
            TicketVerdict::Retry(ErrorCode::Overloaded)
        );
    }
}
