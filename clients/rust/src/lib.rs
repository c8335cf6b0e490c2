//! A Rust client for wsedge, over the JSON wire form (subprotocol
//! `edu-matrix-v1.json`, docs/PROTOCOL.md).
//!
//! # Layout
//!
//! - [`client`](Client) — the public handle; [`subscription`](Subscription)
//!   — a subscription's handle and events; [`story`](Story) — a story
//!   membership (collaboration) over a `collab_join` subscription;
//!   [`tls`](TlsConfig) — the roots trusted on `wss://`.
//! - `driver/` — the one background task that owns the socket and all
//!   state: the connection's life (`mod.rs`), requests and replies
//!   (`requests.rs`), subscriptions and their token renewal (`subs.rs`),
//!   the connection token refresh (`refresh.rs`).
//! - No I/O, unit-tested alone: `wire` (JSON frames in and out),
//!   `backoff` (full jitter), [`codes`] (close codes' reconnect advice),
//!   `jwt` (a token's `exp`), `outbox` (bounded, with a drop policy),
//!   `rate` (the client's own command rate).
//! - [`Options`] with each default's reason; the public data types;
//!   [`Error`].
//!
//! # Model
//!
//! centrifuge-js's: a [`Client`] keeps one connection up (states
//! [`State::Disconnected`], [`State::Connecting`], [`State::Connected`]),
//! reconnecting with full-jitter exponential backoff as the server's close
//! codes advise; [`Subscription`]s survive reconnects and recover what
//! they missed; publishes made while the connection is down wait in a
//! bounded outbox and go out once, in order, with their idempotency keys.
//!
//! ```no_run
//! use wsedge_client::{Client, Options, SubscribeOptions, SubscriptionEvent};
//!
//! # async fn demo() -> Result<(), wsedge_client::Error> {
//! let client = Client::new("ws://127.0.0.1:8080/ws", Options::default());
//! client.connect().await?;
//! let mut sub = client
//!     .subscribe("chat:lobby", SubscribeOptions { recover: true, ..Default::default() })
//!     .await?;
//! client.publish("chat:lobby", serde_json::json!({"text": "hi"}), None).await?;
//! while let Some(event) = sub.next().await {
//!     if let SubscriptionEvent::Publication(p) = event {
//!         println!("{}: {:?}", p.offset, p.data);
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod backoff;
mod client;
pub mod codes;
mod driver;
mod error;
mod jwt;
mod options;
mod outbox;
mod rate;
mod story;
mod subscription;
mod tls;
mod types;
mod wire;

pub use client::{Client, Events};
pub use error::{Error, ServerError};
pub use options::{
    Options, SubTokenProvider, SubscribeOptions, TokenError, TokenFuture, TokenProvider,
};
pub use outbox::OutboxPolicy;
pub use story::{
    Holder, LockGrant, Section, Story, StoryEvent, StoryOptions, StoryRole, StorySnapshot,
    UpdateResult,
};
pub use subscription::{Subscription, SubscriptionEvent, UnsubscribeReason};
pub use tls::TlsConfig;
pub use types::{
    ClientEvent, ClientInfo, ConnectInfo, Data, HistoryOptions, HistoryResult, PresenceEntry,
    PresenceResult, PresenceStats, Publication, PublishResult, Push, State, StreamPosition,
};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
