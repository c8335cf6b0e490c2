//! Server API calls on a shard: the shard's side of `crate::bridge::api`.
//! Channel operations run at the channel's home (the sidecar sends them
//! there); user operations run on every shard against the connections of
//! that user found through the shard's user index.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::commands::shard_out;
use super::core::Shard;
use crate::bridge::{ApiAnswer, ApiCall, ApiOp};
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::router::{Answer, SERVER_INITIATED, SubscribeRequest};
use crate::engine::subs::ConnRef;
use crate::engine::wire::json::write_reply;

/// The pseudo-connection server API calls answered later reply to: the
/// router answers it like a client's command, and the shard hands the
/// reply to the waiting call ([`ApiWaiting`]).
pub(crate) const API_CONN: ConnRef = ConnRef {
    idx: u32::MAX,
    generation: u32::MAX,
};

/// Server API calls waiting for the router's answer, by command id on
/// [`API_CONN`]. Every request gets an answer (the home's, or 100 when a
/// node or JetStream does not answer in time), so entries do not stay.
#[derive(Default)]
pub(crate) struct ApiWaiting {
    calls: std::collections::HashMap<u32, tokio::sync::oneshot::Sender<ApiAnswer>>,
    next: u32,
}

impl ApiWaiting {
    fn add(&mut self, reply: tokio::sync::oneshot::Sender<ApiAnswer>) -> u32 {
        self.next = self.next.wrapping_add(1);
        if self.next == crate::engine::router::SERVER_INITIATED {
            self.next = 1;
        }
        self.calls.insert(self.next, reply);
        self.next
    }

    /// The router's reply to call `id`.
    pub(crate) fn answer(&mut self, id: u32, body: crate::engine::wire::ReplyBody<'_>) {
        if let Some(reply) = self.calls.remove(&id) {
            // The sidecar may have given up (timeout): nothing to do then.
            let _ = reply.send(body_json(body));
        }
    }
}

/// The `result` object of an answer, as the JSON form of the wire
/// protocol writes the reply body (one encoder for both).
fn result_json(answer: &Answer) -> ApiAnswer {
    body_json(answer.body())
}

/// The `result` object of a reply body.
fn body_json(body: crate::engine::wire::ReplyBody<'_>) -> ApiAnswer {
    if let crate::engine::wire::ReplyBody::Error(code) = body {
        return Err(code);
    }
    let mut buf = Vec::new();
    write_reply(&mut buf, 0, body);
    let v: Value = serde_json::from_slice(&buf).map_err(|_| ErrorCode::Internal)?;
    let Value::Object(mut o) = v else {
        return Err(ErrorCode::Internal);
    };
    o.remove("id");
    // The one remaining key is the method; its value is the result.
    Ok(o.into_iter()
        .next()
        .map(|(_, v)| v)
        .unwrap_or_else(|| json!({})))
}

impl Shard {
    /// Sends a channel call to the channel's home as a request on
    /// [`API_CONN`], with the checks `Router::api_*` make at the home.
    fn defer_api(&mut self, now: Instant, call: ApiCall) {
        use crate::engine::router::{Msg, ReplyTo};
        let ApiCall { op, reply } = call;
        let channel = match &op {
            ApiOp::Publish { channel, .. }
            | ApiOp::History { channel, .. }
            | ApiOp::HistoryRemove { channel }
            | ApiOp::Presence { channel, .. } => channel.clone(),
            _ => unreachable!("only channel calls are deferred"),
        };
        let refused = match (&op, self.router.namespace_options(&channel)) {
            (_, None) => Some(ErrorCode::UnknownChannel),
            (ApiOp::History { .. }, Some(o)) if !o.keeps_history() => {
                Some(ErrorCode::PermissionDenied)
            }
            (ApiOp::Presence { .. }, Some(o)) if !o.presence => Some(ErrorCode::PermissionDenied),
            _ => None,
        };
        if let Some(code) = refused {
            let _ = reply.send(Err(code));
            return;
        }
        let id = self.api_waiting.add(reply);
        let reply_to = ReplyTo {
            conn: API_CONN,
            cmd_id: id,
        };
        let from = self.id;
        let msg = match op {
            // `high` is not carried across (the namespace's priority
            // applies).
            ApiOp::Publish {
                channel,
                data,
                idempotency_key,
                durable_ack,
                ..
            } => Msg::Publish {
                channel,
                data,
                idempotency_key,
                publisher: None,
                durable_ack,
                from,
                reply_to,
            },
            ApiOp::History { channel, query } => Msg::History {
                channel,
                query: Box::new(query),
                from,
                reply_to,
            },
            ApiOp::Presence { channel, stats } => Msg::PresenceQuery {
                channel,
                stats,
                from,
                reply_to,
            },
            ApiOp::HistoryRemove { channel } => Msg::HistoryRemove {
                channel,
                from,
                reply_to,
            },
            _ => unreachable!("only channel calls are deferred"),
        };
        let mut out = shard_out!(self);
        self.router.request(now, msg, &mut out);
        self.apply_closes();
    }

    /// Carries out one server API call and answers it.
    pub(crate) fn handle_api(&mut self, call: ApiCall) {
        let now = Instant::now();
        // A channel homed on another node, or kept in JetStream, is asked
        // like a client's command would be (through its relay or its
        // read-back); the answer comes to `API_CONN` later.
        let deferred = match &call.op {
            // A durable_ack publish waits at the home for the sink's
            // confirmation: its answer comes later too.
            ApiOp::Publish {
                durable_ack: true, ..
            } => true,
            ApiOp::Publish { channel, .. }
            | ApiOp::History { channel, .. }
            | ApiOp::HistoryRemove { channel }
            | ApiOp::Presence { channel, .. } => {
                self.router.remote_home(channel).is_some() || self.router.is_stored(channel)
            }
            _ => false,
        };
        if deferred {
            return self.defer_api(now, call);
        }
        let answer = match call.op {
            ApiOp::Publish {
                channel,
                data,
                idempotency_key,
                high,
                ..
            } => {
                let mut out = shard_out!(self);
                let a = self.router.api_publish(
                    now,
                    channel,
                    data,
                    idempotency_key.as_deref(),
                    high,
                    &mut out,
                );
                self.apply_closes();
                result_json(&a)
            }
            ApiOp::History { channel, query } => {
                result_json(&self.router.api_history(now, &channel, &query))
            }
            ApiOp::HistoryRemove { channel } => {
                self.router.api_history_remove(&channel);
                Ok(json!({}))
            }
            ApiOp::Presence { channel, stats } => {
                result_json(&self.router.api_presence(now, &channel, stats))
            }
            ApiOp::Subscribe { user, channel } => {
                for c in self.user_conns(&user) {
                    self.server_subscribe(now, c, &channel);
                }
                Ok(json!({}))
            }
            ApiOp::Unsubscribe { user, channel } => {
                for c in self.user_conns(&user) {
                    self.server_unsubscribe(now, c, &channel);
                }
                Ok(json!({}))
            }
            ApiOp::Disconnect { user, code, reason } => {
                let why = if code == CloseReason::Disconnected.code() {
                    CloseReason::Disconnected
                } else {
                    CloseReason::Custom(code)
                };
                let text = reason.as_deref().unwrap_or(why.reason());
                for c in self.user_conns(&user) {
                    self.close_conn_text(c, why, text);
                }
                Ok(json!({}))
            }
            ApiOp::Channels => {
                let channels: serde_json::Map<String, Value> = self
                    .router
                    .channels()
                    .map(|(name, n)| (name.to_string(), json!({ "num_clients": n })))
                    .collect();
                Ok(json!({ "channels": channels }))
            }
            ApiOp::Info => {
                let mut info = json!({
                    "shard": self.id,
                    "connections": self.conns.len(),
                    "channels_local": self.router.local_channels(),
                    "channels_home": self.router.home_channels(),
                });
                if let Some(c) = &self.cluster {
                    info["cluster_nodes"] = json!(c.live_nodes());
                }
                Ok(info)
            }
        };
        // The sidecar may have given up (timeout): nothing to do then.
        let _ = call.reply.send(answer);
    }

    /// Subscribes local connection `c` to `channel` on the server's
    /// initiative (server API, personal channel); the connection learns of
    /// it through a `subscribe` push.
    /// Unsubscribes `c` from `channel` on the server's initiative (an
    /// `unsubscribe` push tells the client), if it is subscribed.
    pub(crate) fn server_unsubscribe(&mut self, now: Instant, c: ConnRef, channel: &str) {
        if self.router.is_subscribed(c, channel) {
            let who = self.who(c);
            let mut out = shard_out!(self);
            self.router
                .unsubscribe(now, c, SERVER_INITIATED, channel, &who, &mut out);
            self.apply_closes();
        }
    }

    pub(crate) fn server_subscribe(&mut self, now: Instant, c: ConnRef, channel: &str) {
        if self.router.is_subscribed(c, channel) {
            return;
        }
        let who = self.who(c);
        let req = SubscribeRequest {
            channel,
            recover_since: None,
        };
        let mut out = shard_out!(self);
        self.router
            .subscribe(now, c, SERVER_INITIATED, req, &who, &mut out);
        self.apply_closes();
    }

    /// The open connections of `user` on this shard.
    fn user_conns(&self, user: &Arc<str>) -> Vec<ConnRef> {
        self.users.get(user).cloned().unwrap_or_default()
    }

    /// Lists connection `c` under `user` (at `connect`).
    pub(crate) fn index_user(&mut self, user: &Arc<str>, c: ConnRef) {
        self.users.entry(user.clone()).or_default().push(c);
    }

    /// Takes connection `c` off `user`'s list (when it is freed).
    pub(crate) fn unindex_user(&mut self, user: &str, c: ConnRef) {
        if let Some(list) = self.users.get_mut(user) {
            list.retain(|&x| x != c);
            if list.is_empty() {
                self.users.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::hub::Position;

    #[test]
    fn answers_become_result_objects() {
        assert_eq!(
            result_json(&Answer::Publish { offset: 7 }),
            Ok(json!({"offset": 7}))
        );
        assert_eq!(
            result_json(&Answer::PresenceStats {
                num_clients: 3,
                num_users: 2
            }),
            Ok(json!({"num_clients": 3, "num_users": 2}))
        );
        let h = result_json(&Answer::History {
            position: Position {
                epoch: 0xab,
                offset: 4,
            },
            publications: Vec::new(),
        })
        .unwrap();
        assert_eq!(h["epoch"], "00000000000000ab");
        assert_eq!(h["offset"], 4);
        assert_eq!(
            result_json(&Answer::Error(ErrorCode::PermissionDenied)),
            Err(ErrorCode::PermissionDenied)
        );
    }
}
