//! Clients' backend calls on the shard: `rpc` and `send` are checked
//! (configured, who may call, the connection's in-flight bound for `rpc`),
//! handed to the RPC sidecar (`crate::sidecar::rpc`) without waiting, and
//! answered when its [`RpcAnswer`] comes back through the inbox.
//!
//! The connection's count of `rpc`s in flight (`Conn::rpc_in_flight`)
//! goes up when the sidecar takes one and down with its answer (`send`s
//! are not counted: NATS takes them at once). Every call the sidecar takes
//! is answered once: with its outcome, or — when that answer met a full
//! inbox — through `Inbox::rpc_lost` with error 112. A connection that
//! closes takes its count with it; a late answer finds no connection (its
//! generation no longer matches) and is dropped.

use std::sync::Arc;

use bytes::Bytes;

use super::core::{Shard, client_id, slot_ref};
use crate::bridge::{CallKind, RpcAnswer};
use crate::engine::codes::ErrorCode;
use crate::engine::subs::ConnRef;
use crate::engine::wire::{Method, ReplyBody};
use crate::sidecar::rpc::{RpcCall, RpcRefused, RpcRequest, header_safe};

impl Shard {
    /// An `rpc` or `send` command from connection `c` (other methods are
    /// ignored).
    pub(crate) fn backend_call(&mut self, c: ConnRef, id: u32, method: Method<'_>) {
        let (call, data) = match method {
            Method::Rpc { method, data } => (
                RpcCall::Request {
                    method: method.into_owned(),
                },
                data,
            ),
            Method::Send { data } => (RpcCall::Send, data),
            _ => return,
        };
        let kind = call.kind();
        if let Err(code) = self.may_call(c, kind) {
            return self.reply(c, id, ReplyBody::Error(code));
        }
        let user = slot_ref(&self.conns, c)
            .and_then(|conn| conn.session.identity())
            .map_or_else(|| Arc::from(""), |i| i.user.clone());
        let req = RpcRequest {
            shard: self.id,
            conn: c,
            id,
            call,
            payload: Bytes::copy_from_slice(data.as_bytes()),
            user,
            client: client_id(self.node_nonce, self.id, c.generation),
        };
        let submitted = match &self.ctx.rpc {
            Some(rpc) => rpc.submit(req),
            None => Err(RpcRefused::Stopped),
        };
        match submitted {
            Ok(()) => {
                if let (CallKind::Rpc, Some(conn)) = (kind, self.conn_mut(c)) {
                    conn.rpc_in_flight += 1;
                }
            }
            Err(RpcRefused::Busy) => self.reply(c, id, ReplyBody::Error(ErrorCode::Overloaded)),
            Err(RpcRefused::Stopped) => self.reply(c, id, ReplyBody::Error(ErrorCode::Internal)),
        }
    }

    /// Whether connection `c` may make a backend call now: the node has
    /// NATS for them (127), the connection has a user or anonymous calls
    /// are allowed, and its user can be named in a header (103), and, for
    /// an `rpc`, it has fewer than `max_in_flight` unanswered (114).
    fn may_call(&self, c: ConnRef, kind: CallKind) -> Result<(), ErrorCode> {
        if self.ctx.rpc.is_none() {
            return Err(ErrorCode::RpcNotConfigured);
        }
        let cfg = &self.ctx.config.rpc;
        let Some(conn) = slot_ref(&self.conns, c) else {
            return Err(ErrorCode::Internal);
        };
        let user = conn.session.identity().map_or("", |i| &i.user);
        if (user.is_empty() && !cfg.allow_anonymous) || !header_safe(user) {
            return Err(ErrorCode::PermissionDenied);
        }
        if kind == CallKind::Rpc && usize::from(conn.rpc_in_flight) >= cfg.max_in_flight {
            return Err(ErrorCode::TooManyRequests);
        }
        Ok(())
    }

    /// A backend call's answer: frees the connection's slot (an `rpc`'s)
    /// and replies.
    pub(crate) fn on_rpc_answer(&mut self, answer: RpcAnswer) {
        if self.rpc_answered(answer.conn, answer.kind) {
            self.reply(answer.conn, answer.id, answer.outcome.reply());
        }
    }

    /// A backend call whose answer was lost to a full inbox: frees the
    /// slot and answers error 112 (temporary).
    pub(crate) fn on_rpc_lost(&mut self, c: ConnRef, id: u32, kind: CallKind) {
        if self.rpc_answered(c, kind) {
            self.reply(c, id, ReplyBody::Error(ErrorCode::Overloaded));
        }
    }

    /// Frees one of `c`'s in-flight slots if an `rpc` answered; false when
    /// `c` is gone.
    fn rpc_answered(&mut self, c: ConnRef, kind: CallKind) -> bool {
        let Some(conn) = self.conn_mut(c) else {
            return false;
        };
        if kind == CallKind::Rpc {
            conn.rpc_in_flight = conn.rpc_in_flight.saturating_sub(1);
        }
        true
    }
}
