//! What handles ask the driver for, and the replies to it.

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{Driver, Link};
use crate::codes;
use crate::error::{Error, ServerError};
use crate::outbox::Admission;
use crate::types::{ClientEvent, PublishResult, State, StreamPosition};
use crate::{SubscribeOptions, SubscriptionEvent};

/// A request from a handle.
pub(crate) enum Request {
    /// Connect (if not already), answered once connected or given up.
    Connect(oneshot::Sender<Result<(), Error>>),
    /// Disconnect, answered once the socket is closed.
    Disconnect(oneshot::Sender<()>),
    /// Report events to this listener.
    Listen(mpsc::UnboundedSender<ClientEvent>),
    /// Register a subscription.
    Subscribe(NewSub),
    /// Drop subscription `id` of `channel`.
    Unsubscribe {
        channel: String,
        id: u64,
        done: Option<oneshot::Sender<()>>,
    },
    /// Publish (through the outbox).
    Publish(Publish),
    /// Any other command: its method, params and the reply's result object.
    Call {
        method: &'static str,
        params: Value,
        reply: oneshot::Sender<Result<Value, Error>>,
    },
}

/// A subscription to register (with `join`: a story membership, whose
/// subscribe is `collab_join` with these extra params).
pub(crate) struct NewSub {
    pub channel: String,
    pub id: u64,
    pub options: SubscribeOptions,
    pub join: Option<Value>,
    pub events: mpsc::UnboundedSender<SubscriptionEvent>,
    pub position: watch::Sender<Option<StreamPosition>>,
    pub reply: oneshot::Sender<Result<(), Error>>,
}

/// A publish on its way: kept until answered, so a connection lost
/// before the answer resends it with the same key.
pub(crate) struct Publish {
    pub channel: String,
    pub data: Value,
    pub key: String,
    pub reply: oneshot::Sender<Result<PublishResult, Error>>,
}

/// A call made while connecting.
pub(super) struct Waiting {
    pub deadline: Instant,
    pub method: &'static str,
    pub params: Value,
    pub reply: oneshot::Sender<Result<Value, Error>>,
}

/// A command sent (or queued to be) on the current connection.
pub(super) struct Pending {
    /// Issue order, to requeue publishes in order.
    pub seq: u64,
    pub kind: PendingKind,
}

/// What a reply is for.
pub(super) enum PendingKind {
    Connect,
    Subscribe {
        channel: String,
        sub_id: u64,
        recovering: bool,
    },
    Publish(Publish),
    Call(oneshot::Sender<Result<Value, Error>>),
    Refresh,
    /// A subscription token's renewal.
    SubRefresh {
        channel: String,
        sub_id: u64,
    },
    /// Nobody waits (an `unsubscribe`).
    Ignore,
}

impl Driver {
    pub(super) fn on_request(&mut self, request: Request) {
        match request {
            Request::Connect(reply) => {
                if self.state() == State::Connected {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.connect_waiters.push(reply);
                if matches!(self.link, Link::Idle) {
                    self.attempts = 0;
                    self.emit(ClientEvent::Connecting {
                        code: codes::CONNECT_CALLED,
                        reason: "connect called".into(),
                    });
                    self.start_opening();
                }
            }
            Request::Disconnect(done) => {
                self.disconnect_acks.push(done);
                if matches!(self.link, Link::Idle) {
                    return;
                }
                let reason = "disconnect called".into();
                self.drop_link(codes::DISCONNECT_CALLED, reason, false);
            }
            Request::Listen(l) => self.listeners.push(l),
            Request::Subscribe(new) => self.register(new),
            Request::Unsubscribe { channel, id, done } => {
                self.unregister(&channel, id);
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
            Request::Publish(p) => {
                if matches!(self.link, Link::Idle) {
                    let (code, reason) = self.last_disconnect.clone();
                    let _ = p.reply.send(Err(Error::Disconnected { code, reason }));
                    return;
                }
                match self.outbox.push(p) {
                    Admission::Queued => {}
                    Admission::QueuedEvicting(old) => {
                        let _ = old.reply.send(Err(Error::OutboxDropped));
                    }
                    Admission::Rejected(p) => {
                        let _ = p.reply.send(Err(Error::OutboxFull));
                    }
                }
            }
            Request::Call {
                method,
                params,
                reply,
            } => match self.link {
                Link::Idle => {
                    let (code, reason) = self.last_disconnect.clone();
                    let _ = reply.send(Err(Error::Disconnected { code, reason }));
                }
                Link::Open { .. } => {
                    self.enqueue(method, &params, PendingKind::Call(reply));
                }
                _ => self.waiting.push_back(Waiting {
                    deadline: Instant::now() + self.opts.timeout,
                    method,
                    params,
                    reply,
                }),
            },
        }
    }

    pub(super) fn on_reply(&mut self, kind: PendingKind, result: Result<Value, ServerError>) {
        match kind {
            PendingKind::Connect => self.on_connect_reply(result),
            PendingKind::Subscribe {
                channel,
                sub_id,
                recovering,
            } => self.on_subscribe_reply(&channel, sub_id, recovering, result),
            PendingKind::Publish(p) => {
                let answer = match result {
                    Ok(v) => match v.get("offset").and_then(Value::as_u64) {
                        Some(offset) => Ok(PublishResult {
                            offset,
                            idempotency_key: p.key,
                        }),
                        None => Err(Error::Protocol(format!("publish reply {v}"))),
                    },
                    Err(e) => Err(Error::Server(e)),
                };
                let _ = p.reply.send(answer);
            }
            PendingKind::Call(reply) => {
                let _ = reply.send(result.map_err(Error::Server));
            }
            PendingKind::Refresh => self.on_refresh_reply(result),
            PendingKind::SubRefresh { channel, sub_id } => {
                self.on_sub_refresh_reply(&channel, sub_id, result);
            }
            PendingKind::Ignore => {}
        }
    }

    /// A written command went unanswered for the command timeout.
    pub(super) fn on_timeout(&mut self, kind: PendingKind) {
        match kind {
            PendingKind::Connect => {
                let reason = "no connect reply".into();
                self.drop_link(codes::CONNECT_TIMEOUT, reason, true);
            }
            // A subscription in an unknown state: reconnect, so that every
            // subscription is known again (centrifuge-js does the same).
            PendingKind::Subscribe { channel, .. } => {
                let reason = format!("no subscribe reply for {channel:?}");
                self.drop_link(codes::SUBSCRIBE_TIMEOUT, reason, true);
            }
            PendingKind::Publish(p) => {
                let _ = p.reply.send(Err(Error::Timeout));
            }
            PendingKind::Call(reply) => {
                let _ = reply.send(Err(Error::Timeout));
            }
            PendingKind::Refresh => {
                self.emit(ClientEvent::Error(Error::Timeout));
                self.retry_refresh();
            }
            PendingKind::SubRefresh { channel, sub_id } => {
                self.on_sub_refresh_timeout(&channel, sub_id);
            }
            PendingKind::Ignore => {}
        }
    }
}
