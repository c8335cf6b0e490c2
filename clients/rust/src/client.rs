//! The public handle.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{self, NewSub, Publish, Request};
use crate::types::{
    ClientEvent, Data, HistoryOptions, HistoryResult, PresenceResult, PresenceStats, PublishResult,
    State,
};
use crate::{Error, Options, SubscribeOptions, Subscription, wire};

/// A wsedge client: one WebSocket connection, kept up by a background
/// task, shared by every clone of this handle (clones are cheap).
///
/// The task starts with [`Client::new`] (inside a Tokio runtime) and ends
/// when every `Client` clone is dropped, closing the connection.
/// [`Client::disconnect`] closes the connection and leaves the client
/// idle until [`Client::connect`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: mpsc::UnboundedSender<Request>,
    state: watch::Receiver<State>,
    next_sub_id: AtomicU64,
}

impl Client {
    /// A client for `url` (`ws://host:port/ws`), disconnected until
    /// [`Client::connect`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (it spawns its task).
    pub fn new(url: impl Into<String>, options: Options) -> Client {
        let (requests, state) = driver::spawn(url.into(), options);
        Client {
            inner: Arc::new(Inner {
                requests,
                state,
                next_sub_id: AtomicU64::new(1),
            }),
        }
    }

    fn request(&self, r: Request) -> Result<(), Error> {
        self.inner.requests.send(r).map_err(|_| Error::Closed)
    }

    /// Connects, and resolves once connected. Through failures it keeps
    /// trying with backoff (a server that is down makes this wait; bound it
    /// with `tokio::time::timeout` if needed; the client keeps trying
    /// either way); it fails only when the client gives up: a close or a
    /// refusal that advises not to reconnect, `max_reconnect_attempts`
    /// reached, or [`Client::disconnect`] called meanwhile.
    pub async fn connect(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Connect(tx))?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Closes the connection (a close frame with 1000) and stops
    /// reconnecting; resolves once the socket is closed. Calls waiting for
    /// a connection, and publishes in the outbox, fail with
    /// [`Error::Disconnected`]. Subscriptions stay, and subscribe again on
    /// the next [`Client::connect`].
    pub async fn disconnect(&self) {
        let (tx, rx) = oneshot::channel();
        if self.request(Request::Disconnect(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The connection's state now.
    pub fn state(&self) -> State {
        *self.inner.state.borrow()
    }

    /// A watch on the state, to await changes
    /// (`watch.wait_for(|s| *s == State::Connected)`).
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.inner.state.clone()
    }

    /// The client's events from now on (connecting, connected,
    /// disconnected, errors, pushes for channels without a
    /// [`Subscription`]). Each call gets its own stream; events are
    /// buffered until read, so drop the stream when done with it.
    pub fn events(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.request(Request::Listen(tx));
        Events { rx }
    }

    /// Subscribes to `channel`. Returns at once with the [`Subscription`]:
    /// the subscribe goes out when connected, and its outcome is the
    /// subscription's first event ([`SubscriptionEvent::Subscribed`](crate::SubscriptionEvent::Subscribed),
    /// or an error). Fails only if this client already has a subscription
    /// to the channel.
    pub async fn subscribe(
        &self,
        channel: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        self.subscribe_with(channel.into(), options, None).await
    }

    /// [`Client::subscribe`], or with `join` a story membership.
    pub(crate) async fn subscribe_with(
        &self,
        channel: String,
        options: SubscribeOptions,
        join: Option<Value>,
    ) -> Result<Subscription, Error> {
        let id = self.inner.next_sub_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (position_tx, position_rx) = watch::channel(None);
        let (reply, answer) = oneshot::channel();
        let subscription = Subscription::new(
            channel.clone(),
            id,
            events_rx,
            position_rx,
            self.inner.requests.downgrade(),
        );
        self.request(Request::Subscribe(NewSub {
            channel,
            id,
            options,
            join,
            events: events_tx,
            position: position_tx,
            reply,
        }))?;
        answer.await.map_err(|_| Error::Closed)??;
        Ok(subscription)
    }

    /// Publishes `data` (anything serializable to JSON) on `channel`.
    ///
    /// Without an `idempotency_key` the client makes one (random, 128
    /// bits), so a publish resent after a dropped connection is accepted
    /// once. While connecting, the publish waits in the offline outbox
    /// (bounded: [`Options::outbox_capacity`]) and goes out, in order,
    /// once connected. Resolves to the publication's offset, or to why it
    /// was not published: a server error, [`Error::OutboxFull`] /
    /// [`Error::OutboxDropped`], [`Error::Disconnected`] (the client is,
    /// or went, disconnected), [`Error::Timeout`] (sent, unanswered: the
    /// outcome is unknown; repeating it with the same key is safe).
    pub async fn publish(
        &self,
        channel: impl Into<String>,
        data: impl Serialize,
        idempotency_key: Option<String>,
    ) -> Result<PublishResult, Error> {
        let data = serde_json::to_value(data).map_err(|e| Error::Encode(e.to_string()))?;
        let key = idempotency_key.unwrap_or_else(new_idempotency_key);
        let (reply, answer) = oneshot::channel();
        self.request(Request::Publish(Publish {
            channel: channel.into(),
            data,
            key,
            reply,
        }))?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Sends a command and returns its result object. Made while
    /// connecting, it waits up to [`Options::timeout`] for the connection.
    pub(crate) async fn call(&self, method: &'static str, params: Value) -> Result<Value, Error> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Call {
            method,
            params,
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// A channel's kept publications and current position.
    pub async fn history(
        &self,
        channel: &str,
        options: HistoryOptions,
    ) -> Result<HistoryResult, Error> {
        let mut params = json!({ "channel": channel });
        if let Some(l) = options.limit {
            params["limit"] = l.into();
        }
        if let Some(s) = options.since {
            params["since"] = json!({"epoch": s.epoch, "offset": s.offset});
        }
        if options.reverse {
            params["reverse"] = true.into();
        }
        let v = self.call("history", params).await?;
        wire::history_result(&v).map_err(Error::Protocol)
    }

    /// Who is in a channel now (namespaces with `presence`).
    pub async fn presence(&self, channel: &str) -> Result<PresenceResult, Error> {
        let v = self.call("presence", json!({ "channel": channel })).await?;
        wire::presence_result(&v).map_err(Error::Protocol)
    }

    /// How many connections and users are in a channel now.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, Error> {
        let v = self
            .call("presence_stats", json!({ "channel": channel }))
            .await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Sets this connection's presence state in a subscribed channel
    /// (`""` clears it), for `ttl` seconds if given.
    pub async fn presence_state(
        &self,
        channel: &str,
        state: &str,
        ttl: Option<u32>,
    ) -> Result<(), Error> {
        let mut params = json!({ "channel": channel, "state": state });
        if let Some(t) = ttl {
            params["ttl"] = t.into();
        }
        self.call("presence_state", params).await.map(drop)
    }

    /// Calls the application's backends (`rpc` over the node's NATS) and
    /// returns their reply.
    pub async fn rpc(&self, method: &str, data: impl Serialize) -> Result<Data, Error> {
        let data = serde_json::to_value(data).map_err(|e| Error::Encode(e.to_string()))?;
        let v = self
            .call("rpc", json!({ "method": method, "data": data }))
            .await?;
        wire::data(&v).map_err(Error::Protocol)
    }

    /// Sends a message to the application's backends, without a reply;
    /// resolves once the node has handed it to NATS.
    pub async fn send(&self, data: impl Serialize) -> Result<(), Error> {
        let data = serde_json::to_value(data).map_err(|e| Error::Encode(e.to_string()))?;
        self.call("send", json!({ "data": data })).await.map(drop)
    }

    /// An application-level round trip.
    pub async fn ping(&self) -> Result<(), Error> {
        self.call("ping", json!({})).await.map(drop)
    }
}

/// A random idempotency key: 128 bits, hex.
fn new_idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A client's event stream, from [`Client::events`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` once the client's task has ended.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
