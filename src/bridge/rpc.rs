//! The answer to a backend call (`rpc` or `send`), on its way from the
//! RPC sidecar (`crate::sidecar::rpc`) back to the shard that asked.
//!
//! The shard hands the call to the sidecar, counts an `rpc` against the
//! connection's in-flight bound, and later pops a
//! [`ShardMsg::Rpc`](super::ShardMsg::Rpc) carrying an [`RpcAnswer`]; the
//! answer frees the slot and becomes the reply ([`RpcOutcome::reply`]).
//! An answer that meets a full inbox loses its payload but not its slot:
//! the sidecar hands the shard `(conn, id, kind)` through
//! [`Inbox::rpc_lost`](super::Inbox::rpc_lost) (never refused), and the
//! client gets error 112.

use crate::engine::codes::ErrorCode;
use crate::engine::subs::ConnRef;
use crate::engine::wire::ReplyBody;
use crate::engine::wire::publication::PubData;

/// Which command a backend call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `rpc`: counted against the connection's `[rpc] max_in_flight`
    /// until answered.
    Rpc,
    /// `send`: not counted (NATS takes it at once; the node-wide bound
    /// and the command rate bound it).
    Send,
}

/// How a backend call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcOutcome {
    /// `rpc`: the responder's reply (`is_json` decided once, off the
    /// shard).
    Reply(PubData),
    /// `send`: handed to the NATS client.
    Sent,
    /// `rpc`: no reply within `[rpc] timeout` (124).
    Timeout,
    /// `rpc`: nobody listens on the subject (125).
    NoResponders,
    /// `rpc`: the responder answered with a `Wsedge-Error` header (its
    /// text), or the reply was too large to forward (126).
    Failed(String),
    /// NATS cannot be reached now (100).
    Unavailable,
}

impl RpcOutcome {
    /// The reply the client gets.
    pub fn reply(&self) -> ReplyBody<'_> {
        match self {
            RpcOutcome::Reply(d) => ReplyBody::Rpc {
                data: &d.bytes,
                is_json: d.is_json,
            },
            RpcOutcome::Sent => ReplyBody::Send,
            RpcOutcome::Timeout => ReplyBody::Error(ErrorCode::RpcTimeout),
            RpcOutcome::NoResponders => ReplyBody::Error(ErrorCode::NoResponders),
            RpcOutcome::Failed(text) if text.is_empty() => ReplyBody::Error(ErrorCode::RpcError),
            RpcOutcome::Failed(text) => ReplyBody::ErrorMessage {
                code: ErrorCode::RpcError,
                message: text,
            },
            RpcOutcome::Unavailable => ReplyBody::Error(ErrorCode::Internal),
        }
    }
}

/// The result of one backend call, for the connection that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcAnswer {
    /// The connection that asked (its in-flight slot is freed).
    pub conn: ConnRef,
    /// The command's id.
    pub id: u32,
    /// Which command it was.
    pub kind: CallKind,
    /// How it ended.
    pub outcome: RpcOutcome,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn outcomes_become_their_documented_replies() {
        let reply = RpcOutcome::Reply(PubData {
            bytes: Bytes::from_static(b"{}"),
            is_json: true,
        });
        assert_eq!(
            reply.reply(),
            ReplyBody::Rpc {
                data: b"{}",
                is_json: true
            }
        );
        assert_eq!(RpcOutcome::Sent.reply(), ReplyBody::Send);
        let code = |o: RpcOutcome| match o.reply() {
            ReplyBody::Error(c) | ReplyBody::ErrorMessage { code: c, .. } => c.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code(RpcOutcome::Timeout), 124);
        assert_eq!(code(RpcOutcome::NoResponders), 125);
        assert_eq!(code(RpcOutcome::Failed(String::new())), 126);
        assert_eq!(code(RpcOutcome::Unavailable), 100);
        assert_eq!(
            RpcOutcome::Failed("400 bad input".into()).reply(),
            ReplyBody::ErrorMessage {
                code: ErrorCode::RpcError,
                message: "400 bad input"
            }
        );
    }
}
