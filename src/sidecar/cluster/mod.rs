//! The NATS transport of the cluster, on its own thread (`wsedge-cluster`,
//! a current-thread tokio runtime running `async-nats`): it only moves
//! bytes. What the bytes mean, and every decision about channels, is the
//! no-I/O [`crate::engine::cluster`] and the shards.
//!
//! - **Shards → worker**: one bounded queue of [`ToCluster`] requests
//!   ([`ClusterClient::send`] never blocks: a full queue gives the request
//!   back, counted).
//! - **Worker → shards**: a [`ClusterSink`] the node implements over the
//!   shard inboxes; every call is a non-blocking push.
//! - **Interest routing**: the worker subscribes to a channel's subject
//!   only while some shard has local subscribers of it ([`ToCluster::Watch`]
//!   counts across shards). The net change of each drain of the queue is
//!   applied once, so a storm of on/off pairs costs at most one `SUB` and
//!   one `UNSUB` per channel; an `UNSUB` waits
//!   [`ClusterOptions::unwatch_linger`] in case the channel is wanted again.
//!   A `SUB` reaches NATS before any request queued after its `Watch`:
//!   `async-nats` sends `SUB` and `PUB` through one command queue onto one
//!   connection, in order, and the worker applies a drain's subscribes
//!   before it sends that drain's publishes.
//! - **Membership**: a heartbeat on `node.<self>` every
//!   [`ClusterOptions::heartbeat_interval`]; every node's heartbeats feed a
//!   [`Membership`](crate::engine::cluster::membership::Membership), and
//!   each change of the live set is handed to the sink as a new
//!   [`Placement`] (once at start too: this node alone).
//! - **Connection**: `async-nats` connects in the background
//!   (`retry_on_initial_connect`), so a node starts while NATS is down, and
//!   reconnects by itself, subscribing again to every live subscription on
//!   the new connection. [`ClusterSink::link`] and [`ClusterClient::is_up`]
//!   follow its connected/disconnected events. While the link is down,
//!   outgoing messages are not sent (counted `disconnected`); the
//!   offsets in the frames make any gap visible to the receivers.
//! - **Echo**: the connection is `no_echo`: this node never receives its
//!   own publications. A [`ToCluster::ToNode`] addressed to this node is
//!   handed straight to the sink as if it had arrived on `home.<self>`.
//! - **Server API calls on every node** (`subscribe`, `unsubscribe`,
//!   `disconnect`, `channels`): the API thread hands them to the worker
//!   through [`NodeCaller`] (a bounded queue); the worker publishes them
//!   on `api` with a reply inbox and collects one answer per live node
//!   within `request_timeout`; other nodes' calls are run here through
//!   the [`NodeApi`] the server API sets with
//!   [`ClusterWorker::answer_calls`].
//!
//! Layout: `interest` (the channel counts and the subscriptions they
//! call for; no I/O), `worker` (the thread's loop), `calls` (server API
//! calls to and from the other nodes), `connect` (the `async-nats`
//! options from [`ClusterOptions`]). Metrics:
//! [`crate::metrics::ClusterMetrics`] (`wsedge_cluster_*`).

mod calls;
mod connect;
mod interest;
mod store;
mod worker;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::engine::cluster::members::MemberWrite;
use crate::engine::cluster::placement::Placement;
use crate::engine::cluster::stored::StoreAnswer;
use crate::engine::cluster::subject::{Subjects, is_valid_name};
use crate::metrics::ClusterDrop;
pub use crate::metrics::ClusterMetrics;
pub use calls::{CallRefused, NodeAnswers, NodeApi, NodeCaller};
pub use connect::{NatsAuth, parse_servers, redacted_servers};

/// What a shard asks of the NATS worker. Never blocks the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCluster {
    /// This node has (on) or no longer has (off) local subscribers of `channel`:
    /// subscribe to / unsubscribe from `subjects.channel(channel)`. Reference-counted
    /// per channel across shards and batched: the worker applies the net change per
    /// channel once per drain of its queue (a storm of on/off pairs becomes at most one
    /// SUB/UNSUB per channel), and a Watch on reaches the NATS server before any
    /// later ToNode/Publish from the same shard (order of the queue kept).
    ///
    /// A `Watch` given back by [`ClusterClient::send`] must be sent again
    /// later (the shard keeps it pending), or the count goes wrong.
    Watch {
        /// The channel.
        channel: Arc<str>,
        /// Whether the shard now has local subscribers.
        on: bool,
    },
    /// Publish `payload` on the channel's subject (deliveries, sync markers).
    Publish {
        /// The channel.
        channel: Arc<str>,
        /// The frame.
        payload: Bytes,
    },
    /// Publish `payload` on `subjects.home(node)` (messages to one node).
    ToNode {
        /// The node's name.
        node: Arc<str>,
        /// The frame.
        payload: Bytes,
    },
    /// Write publication `offset` of a stored channel to its namespace's
    /// JetStream stream (`history_backend = "jetstream"`); the
    /// acknowledgement goes to [`ClusterSink::stored`]. Writes are sent in
    /// queue order.
    Persist {
        /// The namespace's index ([`ClusterOptions::history_streams`]).
        ns: usize,
        /// The channel.
        channel: Arc<str>,
        /// The channel's epoch (with `offset`, the message id).
        epoch: u64,
        /// The publication's offset.
        offset: u64,
        /// A `StoredPub`, encoded.
        body: Bytes,
    },
    /// Read a stored channel's tail back; the answer goes to
    /// [`ClusterSink::stored`].
    Load {
        /// The namespace's index.
        ns: usize,
        /// The channel.
        channel: Arc<str>,
    },
    /// `history_remove` of a stored channel: write a floor marker at
    /// `floor` (in queue order, after the channel's writes) and purge the
    /// channel's subject below it; the answer (`StoreAnswer::Purged`) goes
    /// to [`ClusterSink::stored`].
    Purge {
        /// The namespace's index.
        ns: usize,
        /// The channel.
        channel: Arc<str>,
        /// The channel's epoch and the last offset given out.
        floor: crate::engine::hub::Position,
    },
    /// Write changes to a stored channel's members to the presence bucket
    /// (in queue order); a write not acknowledged is answered with
    /// `StoreAnswer::MembersUnwritten` through [`ClusterSink::stored`].
    Members {
        /// The changes.
        write: MemberWrite,
    },
}

/// Where the worker hands what arrives. Implemented by the node over the
/// shard inboxes (`src/shard/`), by closures in tests. Called on the
/// worker's thread; every call must return at once.
pub trait ClusterSink: Send + Sync + 'static {
    /// A payload that arrived on a channel subject (`channel` is the
    /// watched channel whose subscription it came through) or on this
    /// node's `home.<self>` subject (`channel` = None). The sink decodes and
    /// routes it; Err = the target inbox was full (the worker counts it as
    /// dropped). (`()`: a full inbox is the only failure, and the worker
    /// only counts it.)
    #[allow(clippy::result_unit_err)]
    fn received(&self, channel: Option<Arc<str>>, payload: Bytes) -> Result<(), ()>;
    /// The answer about a stored channel (for its home shard). Err: the
    /// inbox was full (counted; the home times the request out).
    #[allow(clippy::result_unit_err)]
    fn stored(&self, answer: StoreAnswer) -> Result<(), ()>;
    /// The live set changed: the new placement (every shard gets it).
    fn placement(&self, placement: Arc<Placement>);
    /// The NATS connection came up (true) or was lost (false).
    fn link(&self, up: bool);
}

/// How a node proves itself to NATS (`[cluster]` credentials keys).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum ClusterAuth {
    /// No credentials (or user and password in the URL).
    #[default]
    None,
    /// A NATS `.creds` file (JWT and NKey seed), read at start.
    CredentialsFile(PathBuf),
    /// User and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
}

impl std::fmt::Debug for ClusterAuth {
    /// Never shows a password or token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterAuth::None => f.write_str("None"),
            ClusterAuth::CredentialsFile(p) => f.debug_tuple("CredentialsFile").field(p).finish(),
            ClusterAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &crate::config::REDACTED)
                .finish(),
            ClusterAuth::Token(_) => f
                .debug_tuple("Token")
                .field(&crate::config::REDACTED)
                .finish(),
        }
    }
}

/// What the worker needs, resolved from `[cluster]`
/// ([`crate::config::cluster::ClusterConfig::options`]). Every default
/// states its reason there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// NATS servers (`nats://`, `tls://`, or `host:port`), at least one.
    pub servers: Vec<String>,
    /// This node's name (a subject token: [`is_valid_name`]).
    pub node_name: Arc<str>,
    /// The cluster's name: subjects are `wsedge.<cluster_name>.…`.
    pub cluster_name: Arc<str>,
    /// Credentials.
    pub auth: ClusterAuth,
    /// A CA to trust for `tls://` servers (PEM), instead of the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// A node silent this long leaves the live set.
    pub node_timeout: Duration,
    /// How often this node's heartbeat is published (and the NATS client
    /// pings an idle server, so a dead connection is noticed within a few
    /// intervals).
    pub heartbeat_interval: Duration,
    /// How long a shard waits for a home node's answer, and the worker
    /// for every node's answer to a server API call that acts on every
    /// node.
    pub request_timeout: Duration,
    /// Bound of the shards → worker queue.
    pub queue_capacity: usize,
    /// How long a channel subject stays subscribed after its last local
    /// subscriber left. Default 1 s: a client that reconnects (a page
    /// reload, a network switch) finds the subscription still there, and a
    /// reconnect storm spread over many batches costs no `UNSUB`/`SUB`
    /// pairs; a second of a channel's traffic that nobody here wants is
    /// the price.
    pub unwatch_linger: Duration,
    /// The JetStream stream of each namespace, by namespace index
    /// (`NsId::index`): `Some` for `history_backend = "jetstream"`.
    pub history_streams: Vec<Option<HistoryStream>>,
    /// Replicas of each history stream (1 on a single NATS server; 3 on a
    /// JetStream cluster of 3 or more, so a NATS server's loss loses no
    /// history).
    pub history_replicas: usize,
}

/// A namespace whose history is kept in JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryStream {
    /// The namespace's name (in the stream's name and subjects).
    pub namespace: Arc<str>,
    /// `history_size`: messages kept per channel.
    pub size: usize,
    /// `history_ttl`: how long a message is kept.
    pub ttl: Duration,
    /// Whether the namespace counts members (`presence`,
    /// `max_subscribers`): a read-back also reads the channel's members
    /// from the presence bucket.
    pub members: bool,
}

impl ClusterOptions {
    /// Options with every default for node `node_name` and the servers in
    /// `nats_url` (comma-separated).
    pub fn new(nats_url: &str, node_name: &str) -> Self {
        ClusterOptions {
            servers: nats_url
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            node_name: Arc::from(node_name),
            cluster_name: Arc::from("wsedge"),
            auth: ClusterAuth::None,
            tls_ca_file: None,
            node_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            queue_capacity: 65_536,
            unwatch_linger: Duration::from_secs(1),
            history_streams: Vec::new(),
            history_replicas: 1,
        }
    }

    /// Checks what types cannot (the config validates the same keys with
    /// their names; this guards direct use).
    fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("no NATS server given".into());
        }
        parse_servers(&self.servers.join(","))?;
        for (what, name) in [("node", &self.node_name), ("cluster", &self.cluster_name)] {
            if !is_valid_name(name) {
                return Err(format!(
                    "{what} name {name:?} is not 1-64 bytes of A-Z a-z 0-9 _ -"
                ));
            }
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.node_timeout {
            return Err("heartbeat_interval must be above 0 and below node_timeout".into());
        }
        if self.queue_capacity == 0 {
            return Err("queue_capacity must be at least 1".into());
        }
        Ok(())
    }
}

/// A shard's handle on the worker: cheap to clone, never blocks.
#[derive(Clone)]
pub struct ClusterClient {
    tx: mpsc::Sender<ToCluster>,
    up: Arc<AtomicBool>,
    metrics: ClusterMetrics,
}

impl ClusterClient {
    /// Queues `req`; gives it back when the queue is full or the worker stopped
    /// (counted), never blocks.
    pub fn send(&self, req: ToCluster) -> Result<(), ToCluster> {
        self.tx.try_send(req).map_err(|e| match e {
            TrySendError::Full(req) => {
                self.metrics.dropped(ClusterDrop::QueueFull, 1);
                req
            }
            TrySendError::Closed(req) => {
                self.metrics.dropped(ClusterDrop::Stopped, 1);
                req
            }
        })
    }

    /// Whether the NATS connection is up right now (an AtomicBool the worker sets).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// The running worker thread. Dropping it stops the worker without
/// waiting; [`ClusterWorker::shutdown`] stops it and waits.
pub struct ClusterWorker {
    client: ClusterClient,
    node_name: Arc<str>,
    incarnation: u64,
    subjects: Subjects,
    caller: NodeCaller,
    node_api: Arc<OnceLock<Arc<dyn NodeApi>>>,
    worker: super::WorkerThread,
}

impl ClusterWorker {
    /// A handle for a shard.
    pub fn client(&self) -> ClusterClient {
        self.client.clone()
    }

    /// The server API's handle for calls that act on every node.
    pub fn caller(&self) -> NodeCaller {
        self.caller.clone()
    }

    /// Lets other nodes' server API calls run here through `api` (until
    /// it is set, they are answered with error 100). Set once; later
    /// calls are ignored.
    pub fn answer_calls(&self, api: Arc<dyn NodeApi>) {
        let _ = self.node_api.set(api);
    }

    /// This node's name in the cluster.
    pub fn node_name(&self) -> &Arc<str> {
        &self.node_name
    }

    /// This process's incarnation (random per start).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The cluster's subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Stops taking requests, sends what is queued and flushes the
    /// connection for at most [`SHUTDOWN_FLUSH`], then joins the thread.
    pub fn shutdown(self) {
        self.worker.shutdown();
    }
}

/// Longest the worker spends on its way out (sending what is queued,
/// flushing the connection).
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Starts the cluster worker thread (`wsedge-cluster`) for a node of
/// `shards` shards. Returns at once: the connection is made in the
/// background, and retried until NATS answers. Refuses (`InvalidInput`)
/// invalid options, and a credentials or CA file that cannot be read.
pub fn spawn_cluster_worker(
    opts: ClusterOptions,
    shards: u16,
    sink: impl ClusterSink,
    metrics: ClusterMetrics,
) -> io::Result<ClusterWorker> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    opts.validate().map_err(invalid)?;
    if shards == 0 {
        return Err(invalid("a node has at least one shard".into()));
    }
    let subjects = Subjects::new(&opts.cluster_name).map_err(|e| invalid(e.to_string()))?;
    let servers = parse_servers(&opts.servers.join(",")).map_err(invalid)?;
    let up = Arc::new(AtomicBool::new(false));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let connect = connect::connect_options(&opts, events_tx)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let (calls_tx, calls_rx) = mpsc::channel(calls::CALL_QUEUE);
    let node_api = Arc::new(OnceLock::new());
    let incarnation = rand::random::<u64>();
    metrics.set_up(false);
    let node_name = opts.node_name.clone();
    let worker = worker::Worker::new(
        worker::Setup {
            opts,
            shards,
            incarnation,
            subjects: subjects.clone(),
            up: up.clone(),
            calls: calls_rx,
            node_api: node_api.clone(),
        },
        rx,
        Arc::new(sink),
        metrics.clone(),
    );
    let worker = super::WorkerThread::spawn("wsedge-cluster", runtime, move |stop| {
        worker.run(servers, connect, events_rx, stop)
    })?;
    Ok(ClusterWorker {
        caller: NodeCaller {
            tx: calls_tx,
            up: up.clone(),
            metrics: metrics.clone(),
        },
        node_api,
        client: ClusterClient { tx, up, metrics },
        node_name,
        incarnation,
        subjects,
        worker,
    })
}

#[cfg(test)]
mod tests;
