//! Typed configuration: defaults, then a TOML file (`--config`), then
//! environment variables (`WSEDGE_<KEY>`), then command-line flags.
//! Validated once at start; every default states its reason (also in
//! docs/OPERATIONS.md, "Configuration reference").

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod collab;
pub mod durable;
pub mod rpc;

use crate::auth::AuthConfig;
use crate::engine::access::AccessConfig;
use crate::engine::channel;
use crate::engine::namespace::{
    DEFAULT_NAMESPACE, HistoryBackend, NamespaceError, NamespaceOptions, Namespaces, Priority,
    SubscribeMode,
};
use crate::tls::TlsConfig;
use cluster::ClusterConfig;
use collab::CollabConfig;
use durable::{DurableConfig, DurableTarget};
use rpc::RpcConfig;

/// Which io driver the shard runtimes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only (fail to start if unavailable).
    Uring,
    /// epoll only.
    Epoll,
}

/// How the shards do their socket I/O (independent of [`Driver`], which
/// only picks the monoio runtime's own driver).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SocketIo {
    /// Readiness: the shard's epoll set, `accept4`, `read(2)` into one
    /// per-shard buffer, one `writev(2)` per connection per turn.
    #[default]
    Epoll,
    /// Completions: a per-shard io_uring with multishot accept, multishot
    /// recv into a per-shard provided buffer ring, and the write pass as
    /// send SQEs submitted once per turn (`shard::uring`). TLS connections
    /// stay on the readiness path.
    Uring,
    /// `Uring` when the kernel can run the shards' rings (probed once at
    /// start), else `Epoll`; the log says which and why. Resolved before
    /// the shards start ([`SocketIo::resolve`]): they only see the two
    /// paths.
    Auto,
}

impl SocketIo {
    /// The path the shards take: `Auto` becomes `Uring` if `probe` says
    /// the kernel can run it, else `Epoll` with the probe's error.
    /// `Uring` stays `Uring` (the caller refuses to start if it cannot
    /// run). With TLS on, the shards use epoll whatever `io` says.
    pub fn resolve(
        self,
        tls: bool,
        probe: impl FnOnce() -> std::io::Result<()>,
    ) -> (SocketIo, Option<std::io::Error>) {
        match self {
            SocketIo::Auto if tls => (SocketIo::Epoll, None),
            SocketIo::Auto => match probe() {
                Ok(()) => (SocketIo::Uring, None),
                Err(e) => (SocketIo::Epoll, Some(e)),
            },
            other => (other, None),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Delivery priority of a namespace's publications (`priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespacePriority {
    /// In turn with everything else.
    Normal,
    /// Ahead of normal publications.
    High,
}

/// Where a namespace's history is kept (`history_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceHistoryBackend {
    /// The home shard's memory.
    Memory,
    /// A JetStream stream of the cluster (needs `[cluster] nats_url`).
    Jetstream,
}

/// Who may subscribe to a namespace's channels (`subscribe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceSubscribe {
    /// Any connected client.
    Public,
    /// Connections with a user (not anonymous).
    Authenticated,
    /// Connections presenting a subscription token (`subscribe {token}`).
    Token,
    /// Only server-side subscriptions.
    Server,
}

/// What an update from a stale `base_version` does in a story
/// (`conflict`): docs/COLLABORATION.md has a worked example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceConflict {
    /// Last write wins; the overwritten editor gets a `conflict` push.
    Lww,
    /// Refused with error 119 and the current version and data.
    Reject,
}

impl From<NamespaceConflict> for crate::engine::collab::ConflictPolicy {
    fn from(c: NamespaceConflict) -> Self {
        match c {
            NamespaceConflict::Lww => crate::engine::collab::ConflictPolicy::Lww,
            NamespaceConflict::Reject => crate::engine::collab::ConflictPolicy::Reject,
        }
    }
}

impl From<NamespaceSubscribe> for SubscribeMode {
    fn from(s: NamespaceSubscribe) -> SubscribeMode {
        match s {
            NamespaceSubscribe::Public => SubscribeMode::Public,
            NamespaceSubscribe::Authenticated => SubscribeMode::Authenticated,
            NamespaceSubscribe::Token => SubscribeMode::Token,
            NamespaceSubscribe::Server => SubscribeMode::Server,
        }
    }
}

impl From<NamespacePriority> for Priority {
    fn from(p: NamespacePriority) -> Priority {
        match p {
            NamespacePriority::Normal => Priority::Normal,
            NamespacePriority::High => Priority::High,
        }
    }
}

/// One `[[namespace]]` table: the options of the channels `name:…`. Every
/// option defaults to what channels did before namespaces (no history, no
/// presence, clients publish), so a namespace only costs what it asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// The namespace (1–64 characters of `A–Z a–z 0–9 _ -`). Required; the
    /// name `default` sets the options of channels without `ns:`.
    pub name: String,
    /// Publications kept per channel. Default 0: history costs memory per
    /// channel, so it is opted into per namespace. Needs `history_ttl`.
    pub history_size: usize,
    /// How long a channel's history is kept after its last publication.
    /// Default 0s, for the same reason; history is kept only when both
    /// `history_size` and `history_ttl` are above 0.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Let a resubscribing client recover the publications it missed.
    /// Default off: it needs history.
    pub recover: bool,
    /// Track who is subscribed. Default off: it costs memory and
    /// cross-shard messages on every subscribe and unsubscribe.
    pub presence: bool,
    /// Push join and leave events to the channel's subscribers. Default
    /// off: it needs presence, and every subscribe becomes a push to every
    /// subscriber.
    pub join_leave: bool,
    /// Above this many subscribers a channel stops sending join/leave
    /// pushes; presence stays exact. Default 1000: each join or leave goes
    /// to every subscriber, so a reconnect wave in a channel of n
    /// subscribers costs n² pushes. 0 = no cap.
    pub join_leave_max_subscribers: usize,
    /// Whether clients may publish. Default true, as before namespaces
    /// existed; false leaves publishing to the server API (feeds,
    /// notifications).
    pub client_publish: bool,
    /// `normal` or `high`. Default `normal`: high priority only means
    /// something if few namespaces have it.
    pub priority: NamespacePriority,
    /// Subscribers one channel may have (0 = unlimited). Default 0: the
    /// per-connection and per-node limits already bound memory.
    pub max_subscribers: usize,
    /// Who may subscribe: `public` (any connected client), `authenticated`
    /// (not anonymous), `token` (a subscription token for the channel) or
    /// `server` (server-side subscriptions only). Default `public`, as
    /// before permissions existed.
    pub subscribe: NamespaceSubscribe,
    /// Make every channel of the namespace a live story session
    /// (docs/COLLABORATION.md): `collab_join`, section locks, versioned
    /// updates. Default off: a story costs a session at its home.
    pub collaboration: bool,
    /// What an update from a stale `base_version` does: `lww` (default,
    /// last write wins and the overwritten editor is alerted) or `reject`
    /// (error 119 with the current version and data; the client rebases).
    pub conflict: NamespaceConflict,
    /// Editors per story at once; more wait in line or get error 117.
    /// Default 10 (the product's cap); viewers are unlimited.
    pub max_editors: usize,
    /// Where the history is kept: `memory` (default: the channel's home
    /// shard; lost with the node) or `jetstream` (a stream per namespace in
    /// the cluster's NATS, written before delivery, so a client whose node
    /// died recovers on another; needs `[cluster] nats_url`).
    pub history_backend: NamespaceHistoryBackend,
    /// Keep every publication for good too: `"jetstream:<subject>"` (a
    /// JetStream record on `<subject>.<channel hex>`) or `"kafka:<topic>"`
    /// (a Kafka record keyed by channel), written through the `[durable]`
    /// spill while the broker is down. Default unset: a durable event
    /// costs a broker write per publication.
    pub durable: Option<String>,
    /// Keep every presence join and leave for good too, in the same forms
    /// as `durable` (`"jetstream:<subject>"` | `"kafka:<topic>"`): events
    /// `presence.join` / `presence.leave`. Needs `presence = true`. A full
    /// sink does not stop a join: the event is counted as refused.
    pub durable_presence: Option<String>,
    /// Send every accepted story update (`story.content.update`) to this
    /// sink instead of the node's embedded buffer, in the same forms as
    /// `durable`. Needs `collaboration = true`. While the sink cannot take
    /// events, updates are refused with 112.
    pub durable_collab: Option<String>,
}

impl Default for NamespaceConfig {
    /// Every option at its default; `name` empty (a table must name itself).
    fn default() -> Self {
        Self {
            name: String::new(),
            history_size: 0,
            history_ttl: Duration::ZERO,
            recover: false,
            presence: false,
            join_leave: false,
            join_leave_max_subscribers: 1000,
            client_publish: true,
            priority: NamespacePriority::Normal,
            max_subscribers: 0,
            subscribe: NamespaceSubscribe::Public,
            collaboration: false,
            conflict: NamespaceConflict::Lww,
            max_editors: 10,
            history_backend: NamespaceHistoryBackend::Memory,
            durable: None,
            durable_presence: None,
            durable_collab: None,
        }
    }
}

impl NamespaceConfig {
    /// The engine's view of these options, with the default `[collab]`
    /// story limits.
    pub fn options(&self) -> NamespaceOptions {
        self.options_with(&collab::CollabConfig::default())
    }

    /// The engine's view of these options; story limits not set per
    /// namespace come from `[collab]`.
    pub fn options_with(&self, collab: &collab::CollabConfig) -> NamespaceOptions {
        NamespaceOptions {
            history_size: self.history_size,
            history_ttl_ms: u64::try_from(self.history_ttl.as_millis()).unwrap_or(u64::MAX),
            recover: self.recover,
            presence: self.presence,
            join_leave: self.join_leave,
            join_leave_max_subscribers: self.join_leave_max_subscribers,
            client_publish: self.client_publish,
            priority: self.priority.into(),
            max_subscribers: self.max_subscribers,
            subscribe: self.subscribe.into(),
            collab: self
                .collaboration
                .then(|| collab.story_limits(self.conflict.into(), self.max_editors)),
            history_backend: match self.history_backend {
                NamespaceHistoryBackend::Memory => HistoryBackend::Memory,
                NamespaceHistoryBackend::Jetstream => HistoryBackend::Jetstream,
            },
            durable: self.durable.is_some(),
            durable_presence: self.durable_presence.is_some(),
            durable_collab: self.durable_collab.is_some(),
        }
    }
}

/// Which of a namespace's events a durable sink keeps: the key that
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DurableEvents {
    /// `durable`: publications.
    Publications,
    /// `durable_presence`: presence joins and leaves.
    Presence,
    /// `durable_collab`: story updates.
    Collab,
}

impl DurableEvents {
    /// Every kind, in a namespace's key order.
    pub const ALL: [DurableEvents; 3] = [
        DurableEvents::Publications,
        DurableEvents::Presence,
        DurableEvents::Collab,
    ];

    /// The namespace key.
    pub const fn key(self) -> &'static str {
        match self {
            DurableEvents::Publications => "durable",
            DurableEvents::Presence => "durable_presence",
            DurableEvents::Collab => "durable_collab",
        }
    }

    /// Namespace `n`'s value of this key.
    pub fn key_of(self, n: &NamespaceConfig) -> Option<&str> {
        match self {
            DurableEvents::Publications => n.durable.as_deref(),
            DurableEvents::Presence => n.durable_presence.as_deref(),
            DurableEvents::Collab => n.durable_collab.as_deref(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Client WebSocket listener. Default `127.0.0.1:8080`: loopback, so a
    /// node started without a config is never exposed by accident.
    pub listen: SocketAddr,
    /// Admin HTTP listener (/healthz, /readyz, /metrics). Default
    /// `127.0.0.1:9090`: separate from clients, loopback only.
    pub admin_listen: SocketAddr,
    /// Number of shards (one thread pinned per core). 0 = one per
    /// available core, the point of thread-per-core.
    pub shards: usize,
    /// io driver. Default `auto`: io_uring where the kernel allows it,
    /// epoll otherwise, so the node starts anywhere.
    pub driver: Driver,
    /// Socket I/O of the shards. Default `epoll`: readiness and
    /// `read`/`writev` (measured against `uring` in bench/RESULTS.md, "io_uring
    /// data path"); `uring` does accepts, reads and writes through a
    /// per-shard io_uring. Where the kernel lacks what it needs (multishot
    /// recv and provided buffer rings, Linux 6.0) or forbids io_uring, the
    /// node exits at start with the reason (exit code 2; `check-config`
    /// too) rather than falling back to `epoll` on its own.
    pub io: SocketIo,
    /// WebSocket path for clients. Default `/ws`, as in the design docs.
    pub ws_path: String,
    /// Optional echo endpoint for conformance runs. Default off: it serves
    /// no product purpose.
    pub echo_path: Option<String>,
    /// Largest client message in bytes; beyond it the connection is closed
    /// with 1009. Default 64 KiB: chat and collaboration commands are a few
    /// KiB, and the cap bounds per-connection memory under attack.
    pub max_message_size: usize,
    /// Largest HTTP upgrade request head. Default 8 KiB: browsers send
    /// ~1 KiB; nginx uses the same default.
    pub max_handshake_bytes: usize,
    /// Time a client has to complete the upgrade. Default 10s: generous for
    /// slow mobile links, short enough that idle sockets cannot pile up.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Interval between server pings. Default 25s: below the 30–60s idle
    /// timeouts of common load balancers and NATs.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed
    /// (3003). Default 10s: a live client answers in well under a second;
    /// this allows for a congested mobile link.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long to wait for the peer's close after ours before dropping
    /// the socket, counted from when ours has reached the peer (while the
    /// peer is still taking our last output, it is re-checked every
    /// `close_timeout` and cut only if it took nothing). Default 5s.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Outbound bytes a connection may have queued before it is dropped as
    /// a slow consumer (3002). Default 1 MiB: about 10,000 typical
    /// publications, seconds of backlog for a live client.
    pub outbound_budget: usize,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it.
    /// Default on: browsers offer it, and JSON compresses 3-10x; every
    /// publication is compressed once, whatever the subscriber count.
    pub compression: bool,
    /// Serve the SSE fallback (server-sent events down, HTTP POSTs up) on
    /// `<ws_path>/sse` for clients that cannot open a WebSocket. Default
    /// on: it is the same protocol, limits and auth on the same port.
    pub sse: bool,
    /// Smallest payload worth compressing, in bytes. Default 256: below
    /// that the deflate block overhead eats most of the gain.
    pub compression_min_size: usize,
    /// zlib level 1 (fastest) to 9 (smallest). Default 1: most of the gain
    /// for a fraction of the CPU, and CPU is what fan-out spends.
    pub compression_level: u32,
    /// Commands one connection may send per second (0 = unlimited). Past
    /// it commands get error 114; past twice it the client is disconnected
    /// (3503). Default 200: interactive clients send a few per second;
    /// trusted high-rate publishers should use a node or listener with the
    /// limit off.
    pub max_commands_per_second: u32,
    /// Subscriptions one connection may hold. Default 256.
    pub max_subscriptions: usize,
    /// Graceful drain: clients are told to reconnect spread over this
    /// period, so they do not all come back at once. Default 10s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Connections the node accepts (all shards). 0 = derived from the
    /// open-file limit minus a reserve, so the node refuses cleanly before
    /// the kernel refuses it.
    pub max_connections: usize,
    /// Refuse new connections while the process RSS is above this many
    /// bytes. 0 = off.
    pub max_memory: u64,
    /// Capacity of each shard's inbox (cross-shard messages). Default
    /// 65,536: absorbs bursts of a full second of heavy fan-out traffic.
    pub inbox_capacity: usize,
    /// Listen backlog. Default 4096: storms of reconnects queue in the
    /// kernel instead of being refused.
    pub backlog: u32,
    /// A channel no shard listens to is forgotten (new epoch) after this.
    /// Default 5m.
    #[serde(with = "humantime_serde")]
    pub channel_idle_ttl: Duration,
    /// Node name reported to clients. Default: the host name.
    pub node_name: String,
    /// Log format. Default text; `json` for log shippers.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax). Default `info`.
    pub log_level: String,
    /// Refuse channels whose `ns:` is not a configured namespace (error
    /// 102). Default off: such channels take the `default` namespace's
    /// options, so a node without namespaces accepts every valid channel
    /// name, as it did before namespaces existed.
    pub strict_namespaces: bool,
    /// Bytes of publications the history of all channels on the node may
    /// hold together. Default 256 MiB: one bound over every history ring,
    /// so many channels with history cannot exhaust the node's memory.
    pub history_memory_limit: u64,
    /// Most publications one recovery returns; a longer gap is not
    /// recovered and the client starts afresh. Default 300, as Centrifugo:
    /// a reconnect catches up without one client flooding its connection.
    pub recovery_max_publications: usize,
    /// Largest `limit` one history call may ask for. Default 300: bounds
    /// the size of one reply; the same figure as recovery.
    pub history_max_publications: usize,
    /// How long a publish's idempotency key is remembered: a repeat within
    /// it is acknowledged without publishing twice. Default 5m, as
    /// Centrifugo: covers a client's retries across a reconnect.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Idempotency keys remembered per node; past it the oldest are
    /// forgotten early. Default 100,000: memory stays bounded whatever the
    /// publish rate, and it holds a full window at 300 keyed publishes per
    /// second.
    pub idempotency_max_keys: usize,
    /// Server HTTP API listener. Default `127.0.0.1:9091`: loopback, next
    /// to the admin port; the API publishes and disconnects, so it must
    /// never be exposed by accident.
    pub api_listen: SocketAddr,
    /// Key every server API call must present. Default none: every API
    /// call is refused with 401, so the API is closed until a key is set.
    /// Printable ASCII without spaces (it travels in an HTTP header). Set it
    /// with `WSEDGE_API_KEY` rather than in a file (taken verbatim, never
    /// parsed as a number or list); `check-config` prints it redacted.
    pub api_key: Option<String>,
    /// Largest server API request body, in bytes. Default 1 MiB: room for a
    /// batch of publications while bounding memory per request.
    pub api_max_body: usize,
    /// Subscribe every connection of user U to its personal channel
    /// `<personal_channel_prefix>U`. Default off: it costs a subscription
    /// per connection and only helps apps that push to users.
    pub personal_channel: bool,
    /// Prefix of personal channels; `<prefix>U` must be a valid channel
    /// name. Default `#`: short, and `#alice` is a valid channel of the
    /// `default` namespace. A prefix like `user:` gives personal channels
    /// a namespace of their own.
    pub personal_channel_prefix: String,
    /// The `[[namespace]]` tables. Default none: every channel has the
    /// default options (no history, no presence, clients may publish), as
    /// before namespaces existed.
    pub namespace: Vec<NamespaceConfig>,
    /// `[auth]`: who may connect (tokens, tickets). Default mode `none`.
    pub auth: AuthConfig,
    /// `[access]`: IP and Origin filters, per-IP and per-user limits.
    /// Default: everything allowed, no limit.
    pub access: AccessConfig,
    /// `[tls]`: native `wss://` (certificate and key files). Default off.
    pub tls: TlsConfig,
    /// `[collab]`: where live story state is written behind (Redis) and
    /// how long it stays. Default: `[auth] redis_url` if set, else memory
    /// only.
    pub collab: CollabConfig,
    /// `[cluster]`: joining other nodes through NATS. Default: no
    /// `nats_url`, the node is alone and needs nothing external.
    pub cluster: ClusterConfig,
    /// `[durable]`: the spill and connections of the namespaces'
    /// `durable` sinks. Unused without a durable namespace.
    pub durable: DurableConfig,
    /// `[rpc]`: clients' `rpc` and `send` to backends over NATS. Default:
    /// on with the cluster's (or the durable sinks') NATS, off without one.
    pub rpc: RpcConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid"),
            admin_listen: "127.0.0.1:9090".parse().expect("valid"),
            shards: 0,
            driver: Driver::Auto,
            io: SocketIo::Epoll,
            ws_path: "/ws".into(),
            echo_path: None,
            max_message_size: 64 * 1024,
            max_handshake_bytes: 8 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            outbound_budget: 1024 * 1024,
            compression: true,
            sse: true,
            compression_min_size: 256,
            compression_level: 1,
            max_commands_per_second: 200,
            max_subscriptions: 256,
            drain_timeout: Duration::from_secs(10),
            max_connections: 0,
            max_memory: 0,
            inbox_capacity: 65_536,
            backlog: 4096,
            channel_idle_ttl: Duration::from_secs(300),
            node_name: hostname(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            strict_namespaces: false,
            history_memory_limit: 256 * 1024 * 1024,
            recovery_max_publications: 300,
            history_max_publications: 300,
            idempotency_window: Duration::from_secs(300),
            idempotency_max_keys: 100_000,
            api_listen: "127.0.0.1:9091".parse().expect("valid"),
            api_key: None,
            api_max_body: 1024 * 1024,
            personal_channel: false,
            personal_channel_prefix: "#".into(),
            namespace: Vec::new(),
            auth: AuthConfig::default(),
            access: AccessConfig::default(),
            tls: TlsConfig::default(),
            collab: CollabConfig::default(),
            cluster: ClusterConfig::default(),
            durable: DurableConfig::default(),
            rpc: RpcConfig::default(),
        }
    }
}

fn hostname() -> String {
    host_name().unwrap_or_else(|| "wsedge".into())
}

/// The machine's host name, if it can be read and is not empty.
pub(crate) fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
}

/// Command-line overrides; only the flags given are applied.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// `--shards`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// `--driver`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// `--io`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<SocketIo>,
    /// `--echo-path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo_path: Option<String>,
    /// `--max-message-size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// A configuration problem, reported once at start.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The sections whose keys come from `WSEDGE_<SECTION>_<KEY>`.
const SECTIONS: [&str; 7] = [
    "auth_", "access_", "tls_", "collab_", "cluster_", "durable_", "rpc_",
];

/// Largest number of shards (home interest sets are 64-bit masks).
pub const MAX_SHARDS: usize = 64;

/// The environment variable holding the server API key.
pub const API_KEY_ENV: &str = "WSEDGE_API_KEY";

/// What `to_toml` prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// `url` with what sits between `://` and `@` (user and password)
/// replaced by [`REDACTED`]; unchanged without credentials.
pub fn redact_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{REDACTED}@{host}"),
        None => url.to_owned(),
    }
}

impl Namespaces {
    /// The namespaces of `cfg`. Cannot fail for a configuration that passed
    /// [`Config::validate`].
    pub fn from_config(cfg: &Config) -> Result<Namespaces, NamespaceError> {
        let options: Vec<(&str, NamespaceOptions)> = cfg
            .namespace
            .iter()
            .map(|n| (n.name.as_str(), n.options_with(&cfg.collab)))
            .collect();
        Namespaces::new(cfg.strict_namespaces, options)
    }
}

impl Config {
    /// Loads defaults < file < `WSEDGE_*` environment < flags, then
    /// validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        // `WSEDGE_AUTH_*`, `WSEDGE_ACCESS_*`, `WSEDGE_TLS_*`,
        // `WSEDGE_COLLAB_*` and `WSEDGE_CLUSTER_*` set keys of their
        // sections (`WSEDGE_TLS_CERT_FILE` → `tls.cert_file`).
        fig = fig.merge(
            Env::prefixed("WSEDGE_")
                .ignore(&["CONFIG", "API_KEY"])
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    !SECTIONS.iter().any(|s| k.starts_with(s))
                }),
        );
        for section in ["access", "tls", "collab", "durable", "rpc"] {
            let prefix = format!("WSEDGE_{}_", section.to_ascii_uppercase());
            fig = fig.merge(Env::prefixed(&prefix).map(move |k| format!("{section}.{k}").into()));
        }
        fig = crate::auth::config::merge_env(fig).map_err(ConfigError)?;
        fig = cluster::merge_env(fig).map_err(ConfigError)?;
        // The key is taken verbatim: the Env provider would read `0123` as
        // the number 123 and `[a]` as a list.
        if let Some(key) = std::env::var_os(API_KEY_ENV) {
            let key = key
                .into_string()
                .map_err(|_| ConfigError(format!("{API_KEY_ENV} is not valid UTF-8")))?;
            fig = fig.merge(Serialized::default("api_key", key));
        }
        fig = fig.merge(Serialized::defaults(overrides));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.shards > MAX_SHARDS {
            return err(format!(
                "shards = {} is above the maximum of {MAX_SHARDS}",
                self.shards
            ));
        }
        for (name, path) in [
            ("ws_path", Some(&self.ws_path)),
            ("echo_path", self.echo_path.as_ref()),
        ] {
            if let Some(p) = path
                && (!p.starts_with('/') || p.contains(['?', '#', ' ']))
            {
                return err(format!(
                    "{name} = {p:?} must be an absolute path without query"
                ));
            }
        }
        if self.echo_path.as_deref() == Some(self.ws_path.as_str()) {
            return err("echo_path must differ from ws_path".into());
        }
        if self.max_message_size < 125 || self.max_message_size > 256 * 1024 * 1024 {
            return err(format!(
                "max_message_size = {} must be between 125 bytes and 256 MiB",
                self.max_message_size
            ));
        }
        if !(512..=1024 * 1024).contains(&self.max_handshake_bytes) {
            return err("max_handshake_bytes must be between 512 bytes and 1 MiB".into());
        }
        let secs = |d: Duration| d.as_secs();
        if secs(self.ping_interval) < 2 || secs(self.ping_interval) > 3600 {
            return err("ping_interval must be between 2s and 1h (whole seconds)".into());
        }
        if secs(self.pong_timeout) < 1 || self.pong_timeout >= self.ping_interval {
            return err("pong_timeout must be at least 1s and below ping_interval".into());
        }
        if secs(self.handshake_timeout) < 1 || secs(self.close_timeout) < 1 {
            return err("handshake_timeout and close_timeout must be at least 1s".into());
        }
        if self.outbound_budget < 1024 {
            return err("outbound_budget must be at least 1 KiB".into());
        }
        if !(1..=9).contains(&self.compression_level) {
            return err("compression_level must be between 1 and 9".into());
        }
        if self.max_commands_per_second > crate::engine::limits::MAX_COMMANDS_PER_SECOND {
            return err(format!(
                "max_commands_per_second = {} is above {}; use 0 for no limit",
                self.max_commands_per_second,
                crate::engine::limits::MAX_COMMANDS_PER_SECOND
            ));
        }
        if self.max_subscriptions == 0 {
            return err("max_subscriptions must be at least 1".into());
        }
        if self.inbox_capacity < 64 {
            return err("inbox_capacity must be at least 64".into());
        }
        if self.backlog == 0 {
            return err("backlog must be at least 1".into());
        }
        if self.node_name.is_empty() || self.node_name.len() > 64 {
            return err("node_name must be 1-64 bytes".into());
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return err("listen and admin_listen must differ".into());
        }
        for (name, other) in [("listen", self.listen), ("admin_listen", self.admin_listen)] {
            if self.api_listen == other && other.port() != 0 {
                return err(format!("api_listen and {name} must differ"));
            }
        }
        self.validate_channels()?;
        self.validate_api()?;
        self.validate_security()?;
        self.cluster.validate().map_err(ConfigError)?;
        self.validate_durable()?;
        self.validate_rpc().map_err(ConfigError)?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| ConfigError(format!("log_level {:?}: {e}", self.log_level)))?;
        Ok(())
    }

    /// Namespaces, history, idempotency and personal channels.
    fn validate_channels(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.namespace.iter().any(|n| n.name.is_empty()) {
            return err("every [[namespace]] needs a name".into());
        }
        let namespaces = Namespaces::from_config(self).map_err(|e| ConfigError(e.to_string()))?;
        if self.history_memory_limit == 0
            && let Some((_, name, _)) = namespaces.iter().find(|(_, _, o)| o.keeps_history())
        {
            return err(format!(
                "history_memory_limit = 0 leaves no room for the history of namespace {name:?}"
            ));
        }
        if self.cluster.nats_url.is_none()
            && let Some((_, name, _)) = namespaces
                .iter()
                .find(|(_, _, o)| o.history_backend == HistoryBackend::Jetstream)
        {
            return err(format!(
                "namespace {name:?}: history_backend = \"jetstream\" needs [cluster] nats_url \
                 (the history is kept in the cluster's JetStream)"
            ));
        }
        if self.recovery_max_publications == 0 || self.history_max_publications == 0 {
            return err(
                "recovery_max_publications and history_max_publications must be at least 1".into(),
            );
        }
        if self.idempotency_window < Duration::from_secs(1)
            || self.idempotency_window > Duration::from_secs(24 * 3600)
        {
            return err("idempotency_window must be between 1s and 24h".into());
        }
        if self.idempotency_max_keys == 0 {
            return err("idempotency_max_keys must be at least 1".into());
        }
        let prefix = &self.personal_channel_prefix;
        if prefix.is_empty() || !channel::is_valid_channel(&format!("{prefix}u")) {
            return err(format!(
                "personal_channel_prefix = {prefix:?}: <prefix><user> must be a valid channel \
                 name (docs/PROTOCOL.md, Channels), e.g. \"#\" or \"user:\""
            ));
        }
        if self.personal_channel
            && self.strict_namespaces
            && let Some(ns) = channel::namespace(prefix)
            && ns != DEFAULT_NAMESPACE
            && !self.namespace.iter().any(|n| n.name == ns)
        {
            return err(format!(
                "personal_channel_prefix = {prefix:?} is in namespace {ns:?}, which is not \
                 configured, and strict_namespaces would refuse it"
            ));
        }
        Ok(())
    }

    /// The namespaces' `durable` sinks and the `[durable]` section.
    fn validate_durable(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        self.durable.validate().map_err(ConfigError)?;
        for n in &self.namespace {
            if n.durable_presence.is_some() && !n.presence {
                return err(format!(
                    "namespace {:?}: durable_presence needs presence = true",
                    n.name
                ));
            }
            if n.durable_collab.is_some() && !n.collaboration {
                return err(format!(
                    "namespace {:?}: durable_collab needs collaboration = true",
                    n.name
                ));
            }
        }
        for (name, _, target) in self.durable_targets()? {
            match target {
                DurableTarget::Jetstream(_)
                    if self.durable.nats_url.is_none() && self.cluster.nats_url.is_none() =>
                {
                    return err(format!(
                        "namespace {name:?}: a jetstream durable sink needs [durable] nats_url \
                         or [cluster] nats_url"
                    ));
                }
                DurableTarget::Kafka(_) if self.durable.kafka_brokers.is_none() => {
                    return err(format!(
                        "namespace {name:?}: a kafka durable sink needs [durable] kafka_brokers"
                    ));
                }
                DurableTarget::Jetstream(_) | DurableTarget::Kafka(_) => {}
            }
        }
        if self.durable.consume.iter().any(|r| r.subject.is_some())
            && self.durable.nats_url.is_none()
            && self.cluster.nats_url.is_none()
        {
            return err(
                "[[durable.consume]] subject rules need [durable] nats_url or [cluster] nats_url"
                    .into(),
            );
        }
        Ok(())
    }

    /// Each durable sink of each namespace: its name, which events go
    /// there and where, in configuration order.
    pub fn durable_targets(
        &self,
    ) -> Result<Vec<(&str, DurableEvents, DurableTarget)>, ConfigError> {
        let mut out = Vec::new();
        for n in &self.namespace {
            for events in DurableEvents::ALL {
                let Some(value) = events.key_of(n) else {
                    continue;
                };
                let target = DurableTarget::parse(value).map_err(|e| {
                    // The parser names the key `durable`.
                    let e = e.replacen("durable = ", &format!("{} = ", events.key()), 1);
                    ConfigError(format!("namespace {:?}: {e}", n.name))
                })?;
                out.push((n.name.as_str(), events, target));
            }
        }
        Ok(out)
    }

    /// The `[auth]`, `[access]` and `[tls]` sections.
    fn validate_security(&self) -> Result<(), ConfigError> {
        self.auth
            .validate()
            .map_err(|e| ConfigError(format!("auth: {e}")))?;
        self.access
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        self.tls
            .validate()
            .map_err(|e| ConfigError(format!("tls: {e}")))?;
        self.collab.validate().map_err(ConfigError)?;
        Ok(())
    }

    /// The server API's key and body limit.
    fn validate_api(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.api_key
            && (key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()))
        {
            // Never echo the key itself.
            return Err(ConfigError(
                "api_key must be non-empty printable ASCII without spaces (unset it to close \
                 the API)"
                    .into(),
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.api_max_body) {
            return Err(ConfigError(
                "api_max_body must be between 1 KiB and 256 MiB".into(),
            ));
        }
        Ok(())
    }

    /// The Redis that story state is written behind to: `[collab]
    /// redis_url`, else `[auth] redis_url`; `None`: stories live in memory
    /// only.
    pub fn story_redis_url(&self) -> Option<&str> {
        self.collab
            .redis_url
            .as_deref()
            .or(self.auth.redis_url.as_deref())
            .filter(|u| !u.is_empty())
    }

    /// Shards to run: `shards`, or one per available core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_SHARDS)
        }
    }

    /// The effective configuration as TOML (for `check-config`), with
    /// `api_key`, `hmac_secret`, the cluster's password and token and the
    /// credentials in Redis and NATS URLs shown as [`REDACTED`]: never
    /// print a secret.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.api_key.is_some() {
            shown.api_key = Some(REDACTED.into());
        }
        if shown.auth.hmac_secret.is_some() {
            shown.auth.hmac_secret = Some(REDACTED.into());
        }
        for url in [&mut shown.auth.redis_url, &mut shown.collab.redis_url]
            .into_iter()
            .flatten()
        {
            *url = redact_url_credentials(url);
        }
        shown.cluster = shown.cluster.redacted();
        shown.durable = shown.durable.redacted();
        shown.rpc = shown.rpc.redacted();
        toml::to_string_pretty(&shown).expect("config serializes")
    }
}

#[cfg(test)]
mod tests;
