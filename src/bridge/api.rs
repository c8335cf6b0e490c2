//! Server API calls on their way from the API sidecar to the shards, and
//! their answers on the way back.
//!
//! The sidecar decodes and checks an HTTP request, then sends one
//! [`ApiCall`] to the shard(s) that can answer it: a channel's home for
//! `publish`, `history`, `history_remove`, `presence`, `presence_stats`;
//! every shard for `subscribe`, `unsubscribe`, `disconnect` (users are
//! spread over shards), `channels` and `info`. Each shard answers on the
//! call's own one-shot channel with an [`ApiAnswer`]; the sidecar merges
//! the answers of a call sent to every shard. A shard never waits on the
//! sidecar: the one-shot send never blocks.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::engine::codes::ErrorCode;
use crate::engine::history::HistoryQuery;
use crate::engine::wire::publication::PubData;

/// One operation of the server API, as a shard carries it out.
#[derive(Debug, Clone)]
pub enum ApiOp {
    /// At the channel's home: publish (as a client would, but allowed in
    /// namespaces with `client_publish = false`). `high` raises this
    /// publication's priority above its namespace's.
    Publish {
        /// Channel name (valid; its namespace exists).
        channel: Arc<str>,
        /// Payload.
        data: PubData,
        /// Drop repeats of this key within the idempotency window.
        idempotency_key: Option<Box<str>>,
        /// Deliver ahead of normal data.
        high: bool,
        /// Answer once the durable sink confirmed the event (a `durable`
        /// namespace).
        durable_ack: bool,
    },
    /// At the channel's home: read history.
    History {
        /// Channel name.
        channel: Arc<str>,
        /// What to read.
        query: HistoryQuery,
    },
    /// At the channel's home: forget the channel's history.
    HistoryRemove {
        /// Channel name.
        channel: Arc<str>,
    },
    /// At the channel's home: `presence` (`stats: false`) or
    /// `presence_stats`.
    Presence {
        /// Channel name.
        channel: Arc<str>,
        /// Counts only.
        stats: bool,
    },
    /// On every shard: subscribe every connection of `user` to `channel`
    /// (each gets a `subscribe` push).
    Subscribe {
        /// User id.
        user: Arc<str>,
        /// Channel name.
        channel: Arc<str>,
    },
    /// On every shard: unsubscribe every connection of `user` from
    /// `channel` (each gets an `unsubscribe` push).
    Unsubscribe {
        /// User id.
        user: Arc<str>,
        /// Channel name.
        channel: Arc<str>,
    },
    /// On every shard: close every connection of `user` with the
    /// `disconnect` push and `code` (default 3006) in it and the close
    /// frame.
    Disconnect {
        /// User id.
        user: Arc<str>,
        /// 3000–4999 (`CloseReason::Disconnected` when the caller gave none).
        code: u16,
        /// Reason text, at most 123 bytes (the catalogue's when none).
        reason: Option<Arc<str>>,
    },
    /// On every shard: the channels with local subscribers, with their
    /// local subscriber counts (the sidecar adds them up).
    Channels,
    /// On every shard: its counts (the sidecar adds them up).
    Info,
}

/// A shard's answer to one [`ApiOp`]: the method's `result` object, or an
/// error in the wire catalogue.
pub type ApiAnswer = Result<Value, ErrorCode>;

/// An API operation with the one-shot channel its answer goes back on.
#[derive(Debug)]
pub struct ApiCall {
    /// What to do.
    pub op: ApiOp,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ApiAnswer>,
}
