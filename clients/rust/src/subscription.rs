//! A subscription's handle: its events, its position, its end.

use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::Error;
use crate::driver::Request;
use crate::error::ServerError;
use crate::types::{ClientInfo, Publication, StreamPosition};

/// What happens in a subscription, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionEvent {
    /// Subscribed (first time, or again after a reconnect). Publications
    /// after `position` follow. With `recovering` (a resubscribe with
    /// [`SubscribeOptions::recover`](crate::SubscribeOptions::recover)),
    /// `recovered` says whether every missed publication follows (they
    /// come next, oldest first); `recovered: false` after a gap means the
    /// application should reload the channel's state.
    Subscribed {
        /// Whether this subscribe asked to recover from a known position.
        recovering: bool,
        /// Whether everything missed was recovered.
        recovered: bool,
        /// Whether the channel's namespace keeps history and allows recovery.
        recoverable: bool,
        /// The channel's position at this subscribe.
        position: StreamPosition,
    },
    /// A publication (recovered or live), each offset once.
    Publication(Publication),
    /// A connection joined the channel's presence.
    Join(ClientInfo),
    /// A connection left it.
    Leave(ClientInfo),
    /// A member's presence state changed (`""` = cleared).
    State {
        /// The member.
        info: ClientInfo,
        /// Its state.
        state: String,
    },
    /// Something failed that the client retries with backoff: a subscribe
    /// refused with a temporary error, the token provider (an
    /// [`Error::Token`](crate::Error::Token)), a token renewal
    /// (`sub_refresh`) refused or unanswered. Also sent just before an
    /// [`UnsubscribeReason::Unauthorized`] end, and for a renewal the
    /// server refused for good (the subscription then lasts until the
    /// current token expires).
    Error(Error),
    /// The subscription ended; no event follows and the stream ends.
    Unsubscribed(UnsubscribeReason),
    /// Another push on the channel (`promoted`, `conflict`...).
    Other {
        /// The push type.
        kind: String,
        /// Its body.
        body: Value,
    },
}

/// Why a subscription ended.
#[derive(Debug, Clone, PartialEq)]
pub enum UnsubscribeReason {
    /// The server unsubscribed this connection (server API).
    Server,
    /// The server ended the subscription because its token expired
    /// without a renewal (no token provider, or renewals kept failing:
    /// the [`SubscriptionEvent::Error`]s before say why).
    TokenExpired,
    /// The subscription token provider gave an empty token: the user may
    /// not subscribe (the client unsubscribed).
    Unauthorized,
    /// The server refused the subscribe with a permanent error (permission
    /// denied, invalid channel...).
    Refused(ServerError),
}

/// A subscription to one channel, from [`Client::subscribe`](crate::Client::subscribe).
///
/// Read its events with [`Subscription::next`] (or as a
/// [`Stream`](futures_core::Stream)); they are buffered without bound
/// until read, so keep reading. It survives reconnects: after each one the
/// client subscribes again (recovering, with
/// [`SubscribeOptions::recover`](crate::SubscribeOptions::recover)).
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    id: u64,
    events: mpsc::UnboundedReceiver<SubscriptionEvent>,
    position: watch::Receiver<Option<StreamPosition>>,
    requests: mpsc::WeakUnboundedSender<Request>,
    /// Unsubscribe on drop.
    active: bool,
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        id: u64,
        events: mpsc::UnboundedReceiver<SubscriptionEvent>,
        position: watch::Receiver<Option<StreamPosition>>,
        requests: mpsc::WeakUnboundedSender<Request>,
    ) -> Self {
        Self {
            channel,
            id,
            events,
            position,
            requests,
            active: true,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The last position seen (epoch and offset of the last publication
    /// delivered, or of the subscribe); what a recovery starts from.
    pub fn position(&self) -> Option<StreamPosition> {
        self.position.borrow().clone()
    }

    /// The next event; `None` once the subscription has ended (after
    /// [`SubscriptionEvent::Unsubscribed`], or when the client is gone).
    pub async fn next(&mut self) -> Option<SubscriptionEvent> {
        self.events.recv().await
    }

    /// Unsubscribes and waits until the client has taken note (the
    /// `unsubscribe` command goes out if the channel was subscribed).
    pub async fn unsubscribe(mut self) {
        self.active = false;
        let (done, wait) = oneshot::channel();
        if let Some(tx) = self.requests.upgrade() {
            let request = Request::Unsubscribe {
                channel: self.channel.clone(),
                id: self.id,
                done: Some(done),
            };
            if tx.send(request).is_ok() {
                let _ = wait.await;
            }
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = SubscriptionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        if let Some(tx) = self.requests.upgrade() {
            let _ = tx.send(Request::Unsubscribe {
                channel: std::mem::take(&mut self.channel),
                id: self.id,
                done: None,
            });
        }
    }
}
