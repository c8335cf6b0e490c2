//! Subscriptions: registering, (re)subscribing with recovery, their
//! pushes, and their end.
//!
//! Each subscription tracks its stream position (epoch, last offset seen)
//! and resubscribes after every reconnect; with `recover` it asks for what
//! it missed from there, so its handle sees each publication once.
//!
//! A subscription with a token provider (namespaces with `subscribe =
//! "token"`) gets its token before subscribing when it has none or it
//! expired (or the server said 116), and renews it with `sub_refresh`
//! before its `exp`, so the server never ends it (an `unsubscribe` push at
//! `exp` + `refresh_grace`). At most one token fetch per subscription is in
//! flight; its result is used for what the subscription needs when it
//! arrives ([`TokenUse`]).

use std::time::Duration;

use futures_core::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};

use super::requests::{NewSub, PendingKind};
use super::{Driver, Link, unix_now};
use crate::error::{Error, ServerError, TOKEN_EXPIRED};
use crate::jwt;
use crate::types::{ClientEvent, Publication, Push, StreamPosition};
use crate::wire;
use crate::{SubTokenProvider, SubscribeOptions, SubscriptionEvent, UnsubscribeReason};

/// The kind of the internal event that carries a `collab_join` reply to a
/// story's handle.
pub(crate) const COLLAB_JOIN: &str = "collab_join";

/// A subscription token fetch that finished.
pub(super) struct SubTokenDone {
    channel: String,
    sub_id: u64,
    result: Result<String, Error>,
}

/// What a subscription's token fetch is for (the latest need wins: a
/// renewal overtaken by a reconnect serves the resubscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenUse {
    /// The next `subscribe`.
    Subscribe,
    /// A `sub_refresh` of the current subscription.
    Refresh,
}

/// Gets a subscription token within `limit`.
fn fetch_sub_token(
    provider: SubTokenProvider,
    channel: String,
    sub_id: u64,
    limit: Duration,
) -> BoxFuture<'static, SubTokenDone> {
    Box::pin(async move {
        let result = match timeout(limit, provider.call(&channel)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(Error::Token(format!(
                "subscription token for {channel:?}: {e}"
            ))),
            Err(_) => Err(Error::Token(format!(
                "the subscription token provider timed out for {channel:?}"
            ))),
        };
        SubTokenDone {
            channel,
            sub_id,
            result,
        }
    })
}

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
    /// The subscription token (the options', then the provider's).
    token: Option<String>,
    /// The server said 116: get a new token before subscribing again.
    token_stale: bool,
    /// A token fetch in flight, and what for.
    fetching: Option<TokenUse>,
    /// When to renew the token (while subscribed).
    pub(super) refresh_at: Option<Instant>,
    /// Consecutive failed renewals, for their backoff.
    refresh_attempts: u32,
    /// A story membership: `collab_join` with these params (role, queue)
    /// instead of `subscribe`, `collab_leave` instead of `unsubscribe`.
    join: Option<Value>,
    /// Publications that arrived while the subscribe was unanswered,
    /// delivered after its reply (those at or before the reply's position
    /// are dropped). A `collab_join` with commands pipelined behind it can
    /// be answered after their publications.
    early: Vec<Publication>,
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

    /// Whether the next subscribe needs a token from the provider first.
    fn needs_token(&self) -> bool {
        self.options.token_provider.is_some()
            && match &self.token {
                None => true,
                Some(_) if self.token_stale => true,
                Some(t) => jwt::expiry(t).is_some_and(|exp| exp <= unix_now() + 1),
            }
    }

    /// Schedules the token's renewal before it expires: `ttl` seconds from
    /// now by the server's count, else the token's `exp`. Nothing without
    /// a provider, or for a token that does not expire.
    fn schedule_refresh(&mut self, ttl: Option<u64>) {
        self.refresh_at = None;
        if self.options.token_provider.is_none() {
            return;
        }
        let remaining = match ttl {
            Some(s) => s,
            None => match self.token.as_deref().and_then(jwt::expiry) {
                Some(exp) => exp.saturating_sub(unix_now()),
                None => return,
            },
        };
        let delay = jwt::refresh_delay(Duration::from_secs(remaining));
        self.refresh_at = Some(Instant::now() + delay);
    }

    /// Whether the token's `exp` has passed (why the server would end the
    /// subscription by itself).
    fn token_expired(&self) -> bool {
        self.token
            .as_deref()
            .and_then(jwt::expiry)
            .is_some_and(|exp| exp <= unix_now())
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
    pub(super) fn register(&mut self, new: NewSub) {
        let NewSub {
            channel,
            id,
            options,
            join,
            events,
            position,
            reply,
        } = new;
        if self.subs.contains_key(&channel) {
            let _ = reply.send(Err(Error::AlreadySubscribed(channel)));
            return;
        }
        if options.recover {
            position.send_replace(options.since.clone());
        }
        let sub = Sub {
            id,
            token: options.token.clone().filter(|t| !t.is_empty()),
            options,
            events,
            position,
            status: SubStatus::Waiting,
            attempts: 0,
            token_stale: false,
            fetching: None,
            refresh_at: None,
            refresh_attempts: 0,
            join,
            early: Vec::new(),
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
        let method = if sub.join.is_some() {
            "collab_leave"
        } else {
            "unsubscribe"
        };
        self.subs.remove(channel);
        // A subscribe sent on this connection is followed by its
        // unsubscribe (in order; its reply is then ignored).
        if sent && matches!(self.link, Link::Open { .. }) {
            self.enqueue(method, &json!({ "channel": channel }), PendingKind::Ignore);
        }
    }

    /// Subscribes now, or first gets a token when one is needed (the
    /// subscribe then goes out when it comes).
    fn send_subscribe(&mut self, channel: &str) {
        let limit = self.opts.timeout;
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if sub.fetching.is_some() {
            sub.fetching = Some(TokenUse::Subscribe);
            sub.status = SubStatus::Waiting;
            return;
        }
        if sub.needs_token() {
            let provider = sub.options.token_provider.clone().expect("needs_token");
            sub.fetching = Some(TokenUse::Subscribe);
            sub.status = SubStatus::Waiting;
            let job = fetch_sub_token(provider, channel.into(), sub.id, limit);
            self.sub_jobs.push(job);
            return;
        }
        let mut params = json!({ "channel": channel });
        if let Some(t) = &sub.token {
            params["token"] = t.clone().into();
        }
        if let Some(Value::Object(join)) = &sub.join {
            for (k, v) in join {
                params[k] = v.clone();
            }
        }
        let method = if sub.join.is_some() {
            "collab_join"
        } else {
            "subscribe"
        };
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
        let id = self.enqueue(method, &params, kind);
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

    /// The connection dropped: nothing is subscribed any more (token
    /// fetches in flight go on, for the resubscribe).
    pub(super) fn subs_connection_lost(&mut self) {
        for sub in self.subs.values_mut() {
            sub.status = SubStatus::Waiting;
            sub.refresh_at = None;
            sub.refresh_attempts = 0;
            sub.early.clear();
        }
    }

    /// Renewals that are due: get a new token for each (`sub_refresh`
    /// follows when it comes).
    pub(super) fn sub_refreshes_due(&mut self, now: Instant) {
        let limit = self.opts.timeout;
        let open = matches!(self.link, Link::Open { .. });
        for (channel, sub) in &mut self.subs {
            if sub.refresh_at.is_none_or(|t| t > now) {
                continue;
            }
            sub.refresh_at = None;
            if !open || sub.status != SubStatus::Subscribed || sub.fetching.is_some() {
                continue;
            }
            let Some(provider) = sub.options.token_provider.clone() else {
                continue;
            };
            sub.fetching = Some(TokenUse::Refresh);
            let job = fetch_sub_token(provider, channel.clone(), sub.id, limit);
            self.sub_jobs.push(job);
        }
    }

    /// The earliest renewal due.
    pub(super) fn next_sub_refresh(&self) -> Option<Instant> {
        self.subs.values().filter_map(|s| s.refresh_at).min()
    }

    /// A subscription token fetch finished.
    pub(super) fn on_sub_token(&mut self, done: SubTokenDone) {
        let SubTokenDone {
            channel,
            sub_id,
            result,
        } = done;
        let open = matches!(self.link, Link::Open { .. });
        let Some(sub) = self.subs.get_mut(&channel).filter(|s| s.id == sub_id) else {
            return; // unsubscribed meanwhile
        };
        let Some(purpose) = sub.fetching.take() else {
            return;
        };
        match result {
            Ok(t) if t.is_empty() => {
                let e = Error::Token(format!(
                    "unauthorized: the token provider gave no token for {channel:?}"
                ));
                sub.send(SubscriptionEvent::Error(e));
                self.end_subscription(&channel, UnsubscribeReason::Unauthorized);
            }
            Ok(t) => {
                sub.token = Some(t.clone());
                sub.token_stale = false;
                match purpose {
                    // Not connected: the resubscribe after the connect
                    // sends it.
                    TokenUse::Subscribe if open && sub.status == SubStatus::Waiting => {
                        self.send_subscribe(&channel);
                    }
                    TokenUse::Refresh if open && sub.status == SubStatus::Subscribed => {
                        let kind = PendingKind::SubRefresh {
                            channel: channel.clone(),
                            sub_id,
                        };
                        let params = json!({ "channel": channel, "token": t });
                        self.enqueue("sub_refresh", &params, kind);
                    }
                    _ => {}
                }
            }
            Err(e) => {
                sub.send(SubscriptionEvent::Error(e));
                match purpose {
                    TokenUse::Subscribe => {
                        let delay = self.backoff.delay(sub.attempts, &mut self.rng);
                        sub.attempts = sub.attempts.saturating_add(1);
                        self.sub_retries
                            .push((Instant::now() + delay, channel, sub_id));
                    }
                    TokenUse::Refresh => self.retry_sub_refresh(&channel),
                }
            }
        }
    }

    /// Tries the renewal again after a backoff delay (while subscribed).
    fn retry_sub_refresh(&mut self, channel: &str) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if sub.status != SubStatus::Subscribed {
            return;
        }
        let delay = self.backoff.delay(sub.refresh_attempts, &mut self.rng);
        sub.refresh_attempts = sub.refresh_attempts.saturating_add(1);
        sub.refresh_at = Some(Instant::now() + delay);
    }

    /// The `sub_refresh` reply.
    pub(super) fn on_sub_refresh_reply(
        &mut self,
        channel: &str,
        sub_id: u64,
        result: Result<Value, ServerError>,
    ) {
        let Some(sub) = self.subs.get_mut(channel).filter(|s| s.id == sub_id) else {
            return;
        };
        match result {
            Ok(v) => {
                sub.refresh_attempts = 0;
                if v.get("expires").and_then(Value::as_bool).unwrap_or(false) {
                    sub.schedule_refresh(v.get("ttl").and_then(Value::as_u64));
                }
            }
            Err(e) => {
                // 116: the new token had expired too (a slow provider, a
                // clock ahead): get another one. Other temporary errors:
                // the same, later. A permanent refusal (103: a token the
                // server does not accept) is the application's to fix;
                // the server ends the subscription at the old token's
                // `exp` (UnsubscribeReason::TokenExpired).
                let again = e.temporary || e.code == TOKEN_EXPIRED;
                if e.code == TOKEN_EXPIRED {
                    sub.token_stale = true;
                }
                sub.send(SubscriptionEvent::Error(Error::Server(e)));
                if again {
                    self.retry_sub_refresh(channel);
                }
            }
        }
    }

    /// A `sub_refresh` went unanswered within the command timeout.
    pub(super) fn on_sub_refresh_timeout(&mut self, channel: &str, sub_id: u64) {
        let Some(sub) = self.subs.get(channel).filter(|s| s.id == sub_id) else {
            return;
        };
        sub.send(SubscriptionEvent::Error(Error::Timeout));
        self.retry_sub_refresh(channel);
    }

    /// Ends a subscription from the client's side: its `unsubscribe` goes
    /// out if the channel was subscribed, and its handle learns `reason`.
    fn end_subscription(&mut self, channel: &str, reason: UnsubscribeReason) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        let (id, events) = (sub.id, sub.events.clone());
        self.unregister(channel, id);
        let _ = events.send(SubscriptionEvent::Unsubscribed(reason));
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
            Ok(v) => wire::subscribe_result(&v)
                .map(|r| (r, v))
                .map_err(Error::Protocol),
            Err(e) => Err(Error::Server(e)),
        };
        match reply {
            Ok((r, v)) => {
                if sub.join.is_some() {
                    // The story's snapshot, for its handle (before the
                    // events after it).
                    sub.send(SubscriptionEvent::Other {
                        kind: COLLAB_JOIN.into(),
                        body: v,
                    });
                }
                sub.status = SubStatus::Subscribed;
                sub.attempts = 0;
                sub.schedule_refresh(None);
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
                for p in std::mem::take(&mut sub.early) {
                    deliver(sub, p);
                }
            }
            // An expired token and a provider for a new one: subscribe
            // again with it, without troubling the application.
            Err(Error::Server(e))
                if e.code == TOKEN_EXPIRED && sub.options.token_provider.is_some() =>
            {
                sub.status = SubStatus::Waiting;
                sub.early.clear();
                sub.token_stale = true;
                let delay = self.backoff.delay(sub.attempts, &mut self.rng);
                sub.attempts = sub.attempts.saturating_add(1);
                let at = Instant::now() + delay;
                self.sub_retries.push((at, channel.into(), sub_id));
            }
            // 116 without a provider: the same token would be refused
            // again, so it is final (below).
            Err(e) if e.is_temporary() && e.code() != Some(TOKEN_EXPIRED) => {
                sub.status = SubStatus::Waiting;
                sub.early.clear();
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
            Push::Publication(p) if matches!(sub.status, SubStatus::Subscribing(_)) => {
                sub.early.push(p);
            }
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
                let reason = if sub.token_expired() {
                    UnsubscribeReason::TokenExpired
                } else {
                    UnsubscribeReason::Server
                };
                sub.send(SubscriptionEvent::Unsubscribed(reason));
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
