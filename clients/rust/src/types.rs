//! The data the client hands out: states, events, publications, results.
//!
//! Field names follow docs/PROTOCOL.md.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// Where the client's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected and not trying: before [`Client::connect`](crate::Client::connect),
    /// after [`Client::disconnect`](crate::Client::disconnect), or after a
    /// close that advises not to reconnect.
    Disconnected,
    /// Opening a connection, or waiting to retry after a failed one.
    Connecting,
    /// Connected: the `connect` command was accepted.
    Connected,
}

/// A position in a channel's stream: its epoch (16 hex characters, changes
/// when the channel's history is lost) and the offset of the last
/// publication seen (offsets start at 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The channel's epoch.
    pub epoch: String,
    /// The last offset seen.
    pub offset: u64,
}

/// A payload: JSON as published, or bytes that are not JSON (the wire's
/// `b64data`, decoded).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// A JSON value (`data` on the wire).
    Json(Value),
    /// Bytes that are not JSON (`b64data` on the wire).
    Bytes(Vec<u8>),
}

impl Data {
    /// The JSON value, if this is JSON.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Data::Json(v) => Some(v),
            Data::Bytes(_) => None,
        }
    }

    /// The bytes, if these are not JSON.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Data::Json(_) => None,
            Data::Bytes(b) => Some(b),
        }
    }

    /// Deserializes the payload (JSON as is; bytes parsed as JSON text).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match self {
            Data::Json(v) => T::deserialize(v),
            Data::Bytes(b) => serde_json::from_slice(b),
        }
    }
}

/// A publication in a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// Its offset in the channel (the channel's position after it).
    pub offset: u64,
    /// Its payload.
    pub data: Data,
}

/// A connection as others see it (presence, join/leave).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientInfo {
    /// The user id (`""` when anonymous).
    pub user: String,
    /// The connection's client id.
    pub client: String,
    /// The JSON `info` given at connect (or the token's), if any.
    pub info: Option<Value>,
}

/// The server's answer to `connect`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectInfo {
    /// This connection's client id (unique per node).
    pub client: String,
    /// The node's name.
    pub node: String,
    /// The user id the server assigned (`""` when anonymous).
    pub user: String,
    /// The server's ping interval in seconds.
    pub ping: u64,
    /// Whether the credentials expire.
    pub expires: bool,
    /// Seconds until they do, when they do.
    pub ttl: Option<u64>,
}

/// A push for a channel the client has no [`Subscription`](crate::Subscription)
/// for (server-side subscriptions: token `channels`, personal channels, the
/// server API), and pushes of kinds this client does not model.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// A publication.
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
    /// The server subscribed this connection to the channel.
    Subscribe {
        /// The channel's position at the subscription.
        position: StreamPosition,
        /// Whether the channel keeps history and allows recovery.
        recoverable: bool,
    },
    /// The server unsubscribed this connection from the channel.
    Unsubscribe,
    /// Any other push (`promoted`, `conflict`, a newer server's kinds):
    /// its type and body.
    Other {
        /// The push type (the body's key).
        kind: String,
        /// The body.
        body: Value,
    },
}

/// What the client reports on its event stream ([`Client::events`](crate::Client::events)).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Opening a connection (first attempt, or a reconnect); `code` and
    /// `reason` say why (for a reconnect: the disconnect's).
    Connecting {
        /// The cause's code (the server's, or one of [`crate::codes`]).
        code: u16,
        /// Why.
        reason: String,
    },
    /// Connected.
    Connected(ConnectInfo),
    /// A connection ended. `reconnect` says whether the client will
    /// reconnect by itself (the server's advice, or the close code's).
    Disconnected {
        /// The close code (the server's, or one of [`crate::codes`]).
        code: u16,
        /// Why.
        reason: String,
        /// Whether the client reconnects.
        reconnect: bool,
    },
    /// Something failed that no caller is waiting for: a connection
    /// attempt, a token refresh.
    Error(Error),
    /// A push for a channel without a [`Subscription`](crate::Subscription).
    Push {
        /// The channel (`""` for pushes without one).
        channel: String,
        /// The push.
        body: Push,
    },
}

/// The result of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    /// The publication's offset in the channel (the original one when the
    /// server had already accepted this idempotency key).
    pub offset: u64,
    /// The idempotency key it was sent with.
    pub idempotency_key: String,
}

/// What [`Client::history`](crate::Client::history) asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryOptions {
    /// At most this many publications (default and cap: the server's
    /// `history_max_publications`); `Some(0)` asks for the position only.
    pub limit: Option<u32>,
    /// Only publications after this position (from the same epoch).
    pub since: Option<StreamPosition>,
    /// Newest first.
    pub reverse: bool,
}

/// A channel's kept publications and current position.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryResult {
    /// The publications, oldest first (newest first with `reverse`).
    pub publications: Vec<Publication>,
    /// The channel's epoch.
    pub epoch: String,
    /// The channel's current offset.
    pub offset: u64,
}

/// One connection in a channel's presence.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEntry {
    /// The connection.
    pub info: ClientInfo,
    /// Its presence state in the channel, if one is set.
    pub state: Option<String>,
}

/// Who is in a channel now, by client id.
pub type PresenceResult = BTreeMap<String, PresenceEntry>;

/// How many are in a channel now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct PresenceStats {
    /// Connections.
    pub num_clients: u64,
    /// Distinct users.
    pub num_users: u64,
}
