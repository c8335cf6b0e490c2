//! Subscriptions: registering, (re)subscribing with recovery, their
//! pushes, and their end.
//!
//! Each subscription tracks its stream position (epoch, last offset seen)
//! and resubscribes after every reconnect; with `recover` it asks for what
//! it missed from there, so its handle sees each publication once.

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::requests::PendingKind;
use super::{Driver, Link};
use crate::error::{Error, ServerError};
use crate::types::{ClientEvent, Publication, Push, StreamPosition};
use crate::wire;
use crate::{SubscribeOptions, SubscriptionEvent, UnsubscribeReason};

/// The driver's side of one subscription.
pub(super) struct Sub {
    /// Tells this subscription from a later one to the same channel.
    id: u64,
    options: SubscribeOptions,
    events: mpsc::UnboundedSender<SubscriptionEvent>,
    position: watch::Sender<Option<StreamPosition>>,
    status: SubStatus,
    /// Consecutive temporary failures, for the retry backoff.
    attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubStatus {
    /// Not subscribed on this connection (none yet, or a retry waits).
    Waiting,
    /// `subscribe` command `id` sent or queued.
    Subscribing(u32),
    Subscribed,
}

impl Sub {
    fn send(&self, event: SubscriptionEvent) {
        let _ = self.events.send(event);
    }

    /// Whether a publication at `offset` was already seen (recovery and
    /// live delivery meet without duplicates by the server's promise;
    /// this keeps the handle's promise whatever happens).
    fn seen(&self, offset: u64) -> bool {
        offset != 0
            && self
                .position
                .borrow()
                .as_ref()
                .is_some_and(|p| p.offset >= offset)
    }

    fn advance(&self, offset: u64) {
        if offset == 0 {
            return;
        }
        self.position.send_if_modified(|p| match p {
            Some(p) if p.offset < offset => {
                p.offset = offset;
                true
            }
            _ => false,
        });
    }
}

impl Driver {
    pub(super) fn register(
        &mut self,
        channel: String,
        id: u64,
        options: SubscribeOptions,
        events: mpsc::UnboundedSender<SubscriptionEvent>,
        position: watch::Sender<Option<StreamPosition>>,
        reply: oneshot::Sender<Result<(), Error>>,
    ) {
        if self.subs.contains_key(&channel) {
            let _ = reply.send(Err(Error::AlreadySubscribed(channel)));
            return;
        }
        if options.recover {
            position.send_replace(options.since.clone());
        }
        let sub = Sub {
            id,
            options,
            events,
            position,
            status: SubStatus::Waiting,
            attempts: 0,
        };
        self.subs.insert(channel.clone(), sub);
        let _ = reply.send(Ok(()));
        if matches!(self.link, Link::Open { .. }) {
            self.send_subscribe(&channel);
        }
    }

    /// The handle unsubscribed (or was dropped).
    pub(super) fn unregister(&mut self, channel: &str, id: u64) {
        let Some(sub) = self.subs.get(channel).filter(|s| s.id == id) else {
            return;
        };
        let sent = sub.status != SubStatus::Waiting;
        self.subs.remove(channel);
        // A subscribe sent on this connection is followed by its
        // unsubscribe (in order; its reply is then ignored).
        if sent && matches!(self.link, Link::Open { .. }) {
            self.enqueue(
                "unsubscribe",
                &json!({ "channel": channel }),
                PendingKind::Ignore,
            );
        }
    }

    fn send_subscribe(&mut self, channel: &str) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        let mut params = json!({ "channel": channel });
        if let Some(t) = &sub.options.token {
            params["token"] = t.clone().into();
        }
        let position = sub.position.borrow().clone();
        let recovering = sub.options.recover && position.is_some();
        if let Some(p) = position.filter(|_| recovering) {
            params["recover"] = true.into();
            params["epoch"] = p.epoch.into();
            params["offset"] = p.offset.into();
        }
        let kind = PendingKind::Subscribe {
            channel: channel.into(),
            sub_id: sub.id,
            recovering,
        };
        let id = self.enqueue("subscribe", &params, kind);
        if let Some(sub) = self.subs.get_mut(channel) {
            sub.status = SubStatus::Subscribing(id);
        }
    }

    /// Connected: every subscription subscribes again.
    pub(super) fn resubscribe_all(&mut self) {
        let mut channels: Vec<String> = self.subs.keys().cloned().collect();
        channels.sort_unstable();
        for c in channels {
            self.send_subscribe(&c);
        }
    }

    /// A retry's time came.
    pub(super) fn retry_subscribe(&mut self, channel: &str, id: u64) {
        let due = self
            .subs
            .get(channel)
            .is_some_and(|s| s.id == id && s.status == SubStatus::Waiting);
        if due && matches!(self.link, Link::Open { .. }) {
            self.send_subscribe(channel);
        }
    }

    /// The connection dropped: nothing is subscribed any more.
    pub(super) fn subs_connection_lost(&mut self) {
        for sub in self.subs.values_mut() {
            sub.status = SubStatus::Waiting;
        }
    }

    pub(super) fn on_subscribe_reply(
        &mut self,
        channel: &str,
        sub_id: u64,
        recovering: bool,
        result: Result<Value, ServerError>,
    ) {
        let Some(sub) = self.subs.get_mut(channel).filter(|s| s.id == sub_id) else {
            return; // unsubscribed meanwhile (its unsubscribe follows)
        };
        let reply = match result {
            Ok(v) => wire::subscribe_result(&v).map_err(Error::Protocol),
            Err(e) => Err(Error::Server(e)),
        };
        match reply {
            Ok(r) => {
                sub.status = SubStatus::Subscribed;
                sub.attempts = 0;
                sub.send(SubscriptionEvent::Subscribed {
                    recovering,
                    recovered: recovering && r.recovered,
                    recoverable: r.recoverable,
                    position: r.position.clone(),
                });
                if recovering {
                    for p in r.publications {
                        if !sub.seen(p.offset) {
                            sub.advance(p.offset);
                            sub.send(SubscriptionEvent::Publication(p));
                        }
                    }
                }
                sub.position.send_replace(Some(r.position));
            }
            Err(e) if e.is_temporary() => {
                sub.status = SubStatus::Waiting;
                let delay = self.backoff.delay(sub.attempts, &mut self.rng);
                sub.attempts = sub.attempts.saturating_add(1);
                sub.send(SubscriptionEvent::Error(e));
                let at = Instant::now() + delay;
                self.sub_retries.push((at, channel.into(), sub_id));
            }
            Err(e) => {
                let sub = self.subs.remove(channel).expect("looked up above");
                let reason = match e {
                    Error::Server(s) => UnsubscribeReason::Refused(s),
                    other => {
                        sub.send(SubscriptionEvent::Error(other));
                        UnsubscribeReason::Refused(ServerError {
                            code: 0,
                            message: "unreadable subscribe reply".into(),
                            temporary: false,
                            details: Default::default(),
                        })
                    }
                };
                sub.send(SubscriptionEvent::Unsubscribed(reason));
            }
        }
    }

    /// A push other than `disconnect`.
    pub(super) fn on_push(&mut self, channel: String, kind: String, body: Value) {
        let push = match wire::push(&kind, body) {
            Ok(p) => p,
            Err(e) => {
                self.emit(ClientEvent::Error(Error::Protocol(e)));
                return;
            }
        };
        let Some(sub) = self.subs.get_mut(&channel) else {
            self.emit(ClientEvent::Push {
                channel,
                body: push,
            });
            return;
        };
        match push {
            Push::Publication(p) => deliver(sub, p),
            Push::Join(info) => sub.send(SubscriptionEvent::Join(info)),
            Push::Leave(info) => sub.send(SubscriptionEvent::Leave(info)),
            Push::State { info, state } => sub.send(SubscriptionEvent::State { info, state }),
            Push::Subscribe {
                position,
                recoverable,
            } => {
                sub.status = SubStatus::Subscribed;
                sub.send(SubscriptionEvent::Subscribed {
                    recovering: false,
                    recovered: false,
                    recoverable,
                    position: position.clone(),
                });
                sub.position.send_replace(Some(position));
            }
            Push::Unsubscribe => {
                let sub = self.subs.remove(&channel).expect("looked up above");
                sub.send(SubscriptionEvent::Unsubscribed(UnsubscribeReason::Server));
            }
            Push::Other { kind, body } => sub.send(SubscriptionEvent::Other { kind, body }),
        }
    }
}

fn deliver(sub: &mut Sub, p: Publication) {
    if sub.seen(p.offset) {
        return;
    }
    sub.advance(p.offset);
    sub.send(SubscriptionEvent::Publication(p));
}
