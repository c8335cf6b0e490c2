//! Prometheus metrics, per shard. Exposed by the admin HTTP server at
//! `/metrics` in the Prometheus text format (prometheus-client).
//!
//! Hot-path counts are plain integers in the shard ([`Stats`]) and are
//! added to the shared atomics once per loop turn; rare events (closes,
//! errors, refusals) increment their own counter at once. Every labelled
//! series a shard can produce is created when the shard's handles are made
//! ([`Metrics::shard`]), keyed by typed values ([`Refusal`], [`HandshakeResult`],
//! [`ErrorCode`], close codes, [`ShardMsgKind`]), so the shard thread never
//! takes a family lock or allocates a label, a typo cannot invent a series,
//! and every series is exported at 0 from the start.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::bridge::ShardMsgKind;
use crate::engine::access::Refusal as AccessRefusal;
use crate::engine::codes::{CloseReason, ErrorCode, is_valid_received_close_code};
use crate::engine::ws::handshake::Reject;
use crate::sidecar::tickets::TicketMetrics;

/// `{shard}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    /// Shard index.
    pub shard: String,
}

/// `{shard, <kind>}` where kind is a code, reason or result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardKind {
    /// Shard index.
    pub shard: String,
    /// The code, reason, result or queue.
    pub kind: String,
}

/// `{method, status}` of a server API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    /// API method (`unknown` for a path that names none).
    pub method: String,
    /// How the request ended.
    pub status: String,
}

/// `{result}` of a one-time ticket redemption.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `redeemed` or the error's label.
    pub result: String,
}

/// The counter of `family` for `result` (created at 0 if new).
pub(crate) fn result_counter(family: &Family<ResultLabel, Counter>, result: &str) -> Counter {
    family
        .get_or_create(&ResultLabel {
            result: result.into(),
        })
        .clone()
}

type Counters = Family<ShardLabel, Counter>;
type KindCounters = Family<ShardKind, Counter>;
type Gauges = Family<ShardLabel, Gauge<i64, std::sync::atomic::AtomicI64>>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~3.3 s, doubling.
    Histogram::new((0..17).map(|i| 50e-6 * 2f64.powi(i)))
}

/// Why credentials are refused beyond the token verifier's own reasons.
pub const AUTH_FAILURE_EXTRA: [&str; 8] = [
    "missing",
    "wrong_user",
    "ticket_expired",
    "ticket_unknown",
    "ticket_malformed",
    "ticket_unavailable",
    "ticket_busy",
    "ticket_invalid",
];

/// Every label of `wsedge_auth_failures_total`, each once.
pub fn auth_failure_labels() -> impl Iterator<Item = &'static str> {
    let mut seen: Vec<&'static str> = Vec::new();
    crate::auth::TokenError::all_labels()
        .chain(AUTH_FAILURE_EXTRA)
        .filter(move |l| {
            let new = !seen.contains(l);
            seen.push(l);
            new
        })
}

/// Every metric family.
pub struct Metrics {
    registry: Registry,
    connections: Gauges,
    accepted: Counters,
    refused: KindCounters,
    auth_failures: KindCounters,
    handshakes: KindCounters,
    messages_in: Counters,
    bytes_in: Counters,
    frames_out: Counters,
    bytes_out: Counters,
    writes: Counters,
    deliveries: Counters,
    publications: Counters,
    encodes: KindCounters,
    slow_drops: Counters,
    error_replies: KindCounters,
    closes: KindCounters,
    queue_full: KindCounters,
    gaps: Counters,
    duplicates: Counters,
    recoveries: KindCounters,
    presence_pushes: Counters,
    history_bytes: Gauges,
    history_publications: Gauges,
    history_evictions: KindCounters,
    channels_local: Gauges,
    channels_home: Gauges,
    inbox_depth: Gauges,
    latency: Family<ShardLabel, Histogram, fn() -> Histogram>,
    api_requests: Family<ApiLabel, Counter>,
    ticket_results: Family<ResultLabel, Counter>,
    ticket_dropped: Counter,
    ticket_in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    tls: tls::TlsFamilies,
    stories: stories::StoryFamilies,
    ops: ops::OpsFamilies,
    collab: collab::CollabFamilies,
    cluster: cluster::ClusterFamilies,
    durable: durable::DurableFamilies,
    rpc: rpc::RpcFamilies,
    sse: sse::SseFamilies,
    uring: uring::UringFamilies,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! reg {
    ($r:expr, $name:literal, $help:literal, $m:expr) => {{
        let m = $m;
        $r.register($name, $help, m.clone());
        m
    }};
}

impl Metrics {
    /// Registers every family under the `wsedge_` prefix.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("wsedge");
        Self {
            connections: reg!(
                r,
                "connections",
                "Open client connections (WebSocket established or handshaking)",
                Gauges::default()
            ),
            accepted: reg!(
                r,
                "connections_accepted",
                "TCP connections accepted",
                Counters::default()
            ),
            refused: reg!(
                r,
                "connections_refused",
                "Clients refused by reason: the node's limits (fd_limit, max_connections, memory, \
                 draining) and the [access] rules (ip_denied, ip_not_allowed, origin_refused, \
                 ip_rate, ip_connections, table_full, user_connections, user_publish_rate, \
                 proxy_header)",
                KindCounters::default()
            ),
            auth_failures: reg!(
                r,
                "auth_failures",
                "Credentials refused at connect or refresh, by reason (token errors, ticket_*, missing)",
                KindCounters::default()
            ),
            handshakes: reg!(
                r,
                "handshakes",
                "WebSocket handshakes by result",
                KindCounters::default()
            ),
            messages_in: reg!(
                r,
                "messages_received",
                "WebSocket data messages received",
                Counters::default()
            ),
            bytes_in: reg!(
                r,
                "bytes_received",
                "Bytes read from client sockets",
                Counters::default()
            ),
            frames_out: reg!(
                r,
                "frames_sent",
                "WebSocket frames written to client sockets",
                Counters::default()
            ),
            bytes_out: reg!(
                r,
                "bytes_sent",
                "Bytes written to client sockets",
                Counters::default()
            ),
            writes: reg!(
                r,
                "socket_writes",
                "writev calls on client sockets (frames_sent / socket_writes = batch size)",
                Counters::default()
            ),
            deliveries: reg!(
                r,
                "deliveries",
                "Publication frames queued to subscribers",
                Counters::default()
            ),
            publications: reg!(
                r,
                "publications",
                "Publications accepted by their home shard",
                Counters::default()
            ),
            encodes: reg!(
                r,
                "publication_encodes",
                "Publication encodings by wire format (once per publication, never per subscriber)",
                KindCounters::default()
            ),
            slow_drops: reg!(
                r,
                "slow_consumer_drops",
                "Connections dropped for exceeding the outbound budget",
                Counters::default()
            ),
            error_replies: reg!(
                r,
                "error_replies",
                "Error replies sent, by error code",
                KindCounters::default()
            ),
            closes: reg!(
                r,
                "closes",
                "Connections closed, by close code (1006 = without a close frame; other peer codes in 3000-4999 as other_3000_4999)",
                KindCounters::default()
            ),
            queue_full: reg!(
                r,
                "queue_full",
                "Cross-shard messages refused by a full inbox, by message kind",
                KindCounters::default()
            ),
            gaps: reg!(
                r,
                "delivery_gaps",
                "Channel streams found with missing offsets on a shard (subscribers told to recover)",
                Counters::default()
            ),
            duplicates: reg!(
                r,
                "idempotent_duplicates",
                "Publishes dropped as repeats of an idempotency key (the original offset was returned)",
                Counters::default()
            ),
            recoveries: reg!(
                r,
                "recoveries",
                "Subscriptions that asked to recover, by result (recovered, not_recovered)",
                KindCounters::default()
            ),
            presence_pushes: reg!(
                r,
                "presence_pushes",
                "Coalesced presence frames (join/leave/state) sent from a channel's home to a shard",
                Counters::default()
            ),
            history_bytes: reg!(
                r,
                "history_bytes",
                "Bytes the shard's history rings hold (payload plus per-entry overhead)",
                Gauges::default()
            ),
            history_publications: reg!(
                r,
                "history_publications",
                "Publications the shard's history rings hold",
                Gauges::default()
            ),
            history_evictions: reg!(
                r,
                "history_evictions",
                "Publications dropped from history, by reason (size, ttl, memory)",
                KindCounters::default()
            ),
            channels_local: reg!(
                r,
                "channels_local",
                "Channels with subscribers on the shard",
                Gauges::default()
            ),
            channels_home: reg!(
                r,
                "channels_home",
                "Channels the shard is home for",
                Gauges::default()
            ),
            inbox_depth: reg!(
                r,
                "inbox_depth",
                "Messages waiting in the shard's inbox",
                Gauges::default()
            ),
            latency: reg!(
                r,
                "publish_to_write_seconds",
                "Time from a publication's acceptance to the end of the shard's write pass that sent it",
                Family::<ShardLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                    latency_histogram
                )
            ),
            api_requests: reg!(
                r,
                "api_requests",
                "Server API requests, by method and how they ended",
                Family::<ApiLabel, Counter>::default()
            ),
            ticket_results: reg!(
                r,
                "ticket_redemptions",
                "One-time ticket redemptions by result (redeemed, unknown, malformed, unavailable, busy, invalid)",
                Family::<ResultLabel, Counter>::default()
            ),
            ticket_dropped: reg!(
                r,
                "ticket_answers_dropped",
                "Ticket redemption answers dropped because the shard's inbox stayed full",
                Counter::default()
            ),
            ticket_in_flight: reg!(
                r,
                "ticket_redemptions_in_flight",
                "Ticket redemptions waiting for Redis or for a shard's inbox",
                Gauge::default()
            ),
            tls: tls::TlsFamilies::register(&mut r),
            stories: stories::StoryFamilies::register(&mut r),
            ops: ops::OpsFamilies::register(&mut r),
            collab: collab::CollabFamilies::register(&mut r),
            cluster: cluster::ClusterFamilies::register(&mut r),
            durable: durable::DurableFamilies::register(&mut r),
            rpc: rpc::RpcFamilies::register(&mut r),
            sse: sse::SseFamilies::register(&mut r),
            uring: uring::UringFamilies::register(&mut r),
            registry: r,
        }
    }

    /// Exports the running durable sinks' worker metrics
    /// (`wsedge_durable_*{sink}`), read at each scrape.
    pub fn durable_sinks(
        &self,
        sinks: &[(&'static str, crate::sidecar::durable::worker::DurableClient)],
    ) {
        self.durable.sources.set(sinks);
    }

    /// Exports the durable consumers' metrics (`wsedge_durable_consumer_*`,
    /// `wsedge_durable_consumed_total`, labelled `source = kafka |
    /// jetstream`), read at each scrape.
    pub fn durable_consumers(&self, sources: &[crate::sidecar::durable::consume::ConsumerSource]) {
        self.durable.sources.set_consumers(sources);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Handles for one shard. Every `{shard, kind}` series the shard can
    /// produce is created here, once, so the shard's per-event methods
    /// touch only atomics (no family lock, no allocation) and every series
    /// is exported at 0 from the start.
    pub fn shard(self: &Arc<Self>, shard: usize) -> ShardMetrics {
        let l = ShardLabel {
            shard: shard.to_string(),
        };
        let s = l.shard.as_str();
        let encodes = ENCODE_FORMS.map(|form| kind_counter(&self.encodes, s, form));
        ShardMetrics {
            refused: Series::new(&self.refused, s, Refusal::ALL.map(|r| (r, r.label()))),
            auth_failures: Series::new(
                &self.auth_failures,
                s,
                auth_failure_labels().map(|l| (l, l)),
            ),
            handshakes: Series::new(
                &self.handshakes,
                s,
                HandshakeResult::all().map(|h| (h, h.label())),
            ),
            error_replies: Series::new(
                &self.error_replies,
                s,
                ErrorCode::ALL.map(|c| (c, c.code().to_string())),
            ),
            closes: Series::new(
                &self.closes,
                s,
                known_close_codes().into_iter().map(|c| (c, c.to_string())),
            ),
            close_other: kind_counter(&self.closes, s, CLOSE_OTHER),
            queue_full: Series::new(
                &self.queue_full,
                s,
                ShardMsgKind::ALL.map(|k| (k, k.label())),
            ),
            encodes,
            connections: self.connections.get_or_create(&l).clone(),
            accepted: self.accepted.get_or_create(&l).clone(),
            messages_in: self.messages_in.get_or_create(&l).clone(),
            bytes_in: self.bytes_in.get_or_create(&l).clone(),
            frames_out: self.frames_out.get_or_create(&l).clone(),
            bytes_out: self.bytes_out.get_or_create(&l).clone(),
            writes: self.writes.get_or_create(&l).clone(),
            deliveries: self.deliveries.get_or_create(&l).clone(),
            publications: self.publications.get_or_create(&l).clone(),
            slow_drops: self.slow_drops.get_or_create(&l).clone(),
            gaps: self.gaps.get_or_create(&l).clone(),
            duplicates: self.duplicates.get_or_create(&l).clone(),
            recoveries: ["recovered", "not_recovered"]
                .map(|k| kind_counter(&self.recoveries, s, k)),
            presence_pushes: self.presence_pushes.get_or_create(&l).clone(),
            history_bytes: self.history_bytes.get_or_create(&l).clone(),
            history_publications: self.history_publications.get_or_create(&l).clone(),
            history_evictions: ["size", "ttl", "memory"]
                .map(|k| kind_counter(&self.history_evictions, s, k)),
            channels_local: self.channels_local.get_or_create(&l).clone(),
            channels_home: self.channels_home.get_or_create(&l).clone(),
            inbox_depth: self.inbox_depth.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
            collab: self.collab.shard(&l),
            durable: ["queued", "refused"]
                .map(|k| kind_counter(&self.durable.publications, &l.shard, k)),
            durable_presence: ["queued", "refused"]
                .map(|k| kind_counter(&self.durable.presence, &l.shard, k)),
            durable_stories: ["queued", "refused"]
                .map(|k| kind_counter(&self.durable.stories, &l.shard, k)),
            shard: l.shard,
        }
    }
}

impl Metrics {
    /// Handles for the server API: one counter per `{method, status}` pair,
    /// every pair created now (exported at 0 from the start), so counting
    /// a request is one atomic add without a family lock.
    pub fn api(&self, methods: &[&str], statuses: &[&str]) -> ApiMetrics {
        let grid = methods
            .iter()
            .flat_map(|m| {
                statuses.iter().map(move |s| {
                    self.api_requests
                        .get_or_create(&ApiLabel {
                            method: (*m).to_owned(),
                            status: (*s).to_owned(),
                        })
                        .clone()
                })
            })
            .collect();
        ApiMetrics {
            grid,
            width: statuses.len(),
        }
    }
}

impl Metrics {
    /// Handles for the ticket worker; every `result` series is created now
    /// (exported at 0 from the start).
    pub fn tickets(&self) -> TicketMetrics {
        let results = TicketMetrics::RESULTS.map(|r| {
            self.ticket_results
                .get_or_create(&ResultLabel { result: r.into() })
                .clone()
        });
        TicketMetrics::from_parts(
            results,
            self.ticket_dropped.clone(),
            self.ticket_in_flight.clone(),
        )
    }
}

/// The server API's request counters, indexed by the positions of the
/// method and status in the lists given to [`Metrics::api`].
#[derive(Clone)]
pub struct ApiMetrics {
    grid: Box<[Counter]>,
    width: usize,
}

impl ApiMetrics {
    /// Counts one request.
    ///
    /// # Panics
    /// If either index is beyond its list.
    pub fn request(&self, method: usize, status: usize) {
        assert!(status < self.width, "api status index out of range");
        self.grid[method * self.width + status].inc();
    }
}

/// The `kind` labels of `publication_encodes`, in the order of
/// [`Stats::encodes`].
pub const ENCODE_FORMS: [&str; 4] = ["json", "binary", "json_deflate", "binary_deflate"];

/// The `closes` kind that counts every close code a peer may legally send
/// in the application range (3000–4999) but that is not in the catalogue,
/// so a peer cannot create thousands of series.
pub const CLOSE_OTHER: &str = "other_3000_4999";

/// Every close code with a series of its own: the codes the server closes
/// with or announces ([`CloseReason`]), 1005 (peer close without a code),
/// 1006 (peer gone without a close) and every RFC 6455 code a peer may
/// send (1000–1003, 1007–1011). Sorted, without duplicates.
pub fn known_close_codes() -> Vec<u16> {
    let mut codes: Vec<u16> = (1000..=1015)
        .filter(|&c| is_valid_received_close_code(c))
        .chain([1005, 1006])
        .chain(
            CloseReason::ALL
                .iter()
                .flat_map(|r| [r.code(), r.close_code()]),
        )
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// Why a connection was refused (`connections_refused{kind}`): the node's
/// own limits before the handshake, and the `[access]` rules (at accept, at
/// the upgrade, at `connect`, on publish), labelled by
/// [`AccessRefusal::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process ran out of file descriptors.
    FdLimit,
    /// The node-wide connection cap was reached.
    MaxConnections,
    /// The memory cap was exceeded.
    Memory,
    /// The shard is draining.
    Draining,
    /// An `[access]` rule refused the client.
    Access(AccessRefusal),
}

impl Refusal {
    /// Every refusal; each has a series from the start.
    pub const ALL: [Refusal; 4 + AccessRefusal::COUNT] = {
        let mut all = [Refusal::FdLimit; 4 + AccessRefusal::COUNT];
        all[1] = Refusal::MaxConnections;
        all[2] = Refusal::Memory;
        all[3] = Refusal::Draining;
        let mut i = 0;
        while i < AccessRefusal::COUNT {
            all[4 + i] = Refusal::Access(AccessRefusal::ALL[i]);
            i += 1;
        }
        all
    };

    /// The `kind` label.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::FdLimit => "fd_limit",
            Refusal::MaxConnections => "max_connections",
            Refusal::Memory => "memory",
            Refusal::Draining => "draining",
            Refusal::Access(r) => r.label(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How a WebSocket handshake ended (`handshakes{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// The connection was upgraded.
    Ok,
    /// The request did not arrive within `handshake_timeout`.
    Timeout,
    /// The peer went away (or the socket failed) mid-handshake.
    Aborted,
    /// The request was answered with an HTTP error.
    Rejected(Reject),
}

impl HandshakeResult {
    /// Every result; each has a series from the start.
    pub fn all() -> impl Iterator<Item = HandshakeResult> {
        [
            HandshakeResult::Ok,
            HandshakeResult::Timeout,
            HandshakeResult::Aborted,
        ]
        .into_iter()
        .chain(Reject::ALL.map(HandshakeResult::Rejected))
    }

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::Aborted => "aborted",
            HandshakeResult::Rejected(r) => r.label(),
        }
    }
}

impl From<Reject> for HandshakeResult {
    fn from(r: Reject) -> Self {
        HandshakeResult::Rejected(r)
    }
}

/// The counter of one `{shard, kind}` series, created if new.
fn kind_counter(family: &KindCounters, shard: &str, kind: &str) -> Counter {
    family
        .get_or_create(&ShardKind {
            shard: shard.to_owned(),
            kind: kind.to_owned(),
        })
        .clone()
}

/// The pre-created counters of one `{shard, kind}` family, found by key.
/// The family is kept for the fallback of a key that was not pre-created
/// (a catalogue's `ALL` missing an entry): that key is still counted, with
/// the family lock taken once per event.
struct Series<K> {
    family: KindCounters,
    counters: Box<[(K, Counter)]>,
}

impl<K: Copy + PartialEq> Series<K> {
    fn new<L: AsRef<str>>(
        family: &KindCounters,
        shard: &str,
        keys: impl IntoIterator<Item = (K, L)>,
    ) -> Self {
        let counters = keys
            .into_iter()
            .map(|(k, label)| (k, kind_counter(family, shard, label.as_ref())))
            .collect();
        Self {
            family: family.clone(),
            counters,
        }
    }

    /// The counter for `key`, if it was pre-created. A linear scan: the
    /// longest series set (close codes) has about twenty entries.
    fn get(&self, key: K) -> Option<&Counter> {
        self.counters
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c)
    }
}

/// Hot-path counts accumulated during one loop turn.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Frames fully written.
    pub frames_out: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// writev calls.
    pub writes: u64,
    /// Publication frames queued to subscribers.
    pub deliveries: u64,
    /// Publications accepted at home.
    pub publications: u64,
    /// Encodings per form, in the order of [`ENCODE_FORMS`].
    pub encodes: [u64; 4],
    /// Delivery gaps found.
    pub gaps: u64,
    /// Publishes dropped as idempotent repeats.
    pub duplicates: u64,
    /// Recoveries: [recovered, not recovered].
    pub recoveries: [u64; 2],
    /// Presence frames sent to shards.
    pub presence_pushes: u64,
    /// History evictions since the last flush: [size, ttl, memory].
    pub history_evictions: [u64; 3],
}

/// One shard's metric handles. Every method is a few atomic operations on
/// handles resolved at construction: no lock, no allocation.
pub struct ShardMetrics {
    shard: String,
    /// Open connections on the shard.
    pub connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    accepted: Counter<u64, AtomicU64>,
    messages_in: Counter,
    bytes_in: Counter,
    frames_out: Counter,
    bytes_out: Counter,
    writes: Counter,
    deliveries: Counter,
    publications: Counter,
    slow_drops: Counter,
    gaps: Counter,
    duplicates: Counter,
    recoveries: [Counter; 2],
    presence_pushes: Counter,
    /// Bytes held by the shard's history.
    pub history_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Publications held by the shard's history.
    pub history_publications: Gauge<i64, std::sync::atomic::AtomicI64>,
    history_evictions: [Counter; 3],
    /// Channels with local subscribers.
    pub channels_local: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Channels this shard is home for.
    pub channels_home: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Inbox depth.
    pub inbox_depth: Gauge<i64, std::sync::atomic::AtomicI64>,
    latency: Histogram,
    encodes: [Counter; 4],
    refused: Series<Refusal>,
    auth_failures: Series<&'static str>,
    handshakes: Series<HandshakeResult>,
    error_replies: Series<ErrorCode>,
    closes: Series<u16>,
    close_other: Counter,
    queue_full: Series<ShardMsgKind>,
    /// Live stories.
    pub collab: CollabShardMetrics,
    /// Durable publications queued, refused.
    durable: [Counter; 2],
    /// Durable presence events queued, refused.
    durable_presence: [Counter; 2],
    /// Story updates queued with, or refused by, a `durable_collab` sink.
    durable_stories: [Counter; 2],
}

impl ShardMetrics {
    /// Increments `key`'s counter in `series`. A key missing from its
    /// catalogue's `ALL` is a bug (debug builds stop on it); release builds
    /// still count it, through the family lock.
    fn count<K: Copy + PartialEq + fmt::Debug>(
        &self,
        series: &Series<K>,
        key: K,
        label: impl FnOnce() -> String,
    ) {
        match series.get(key) {
            Some(c) => {
                c.inc();
            }
            None => {
                debug_assert!(false, "metrics: {key:?} has no pre-created series");
                self.count_slow(series, label());
            }
        }
    }

    fn count_slow<K>(&self, series: &Series<K>, kind: String) {
        series
            .family
            .get_or_create(&ShardKind {
                shard: self.shard.clone(),
                kind,
            })
            .inc();
    }

    /// Adds a turn's counts and resets them.
    pub fn flush(&self, s: &mut Stats) {
        let add = |c: &Counter, v: u64| {
            if v > 0 {
                c.inc_by(v);
            }
        };
        add(&self.accepted, s.accepted);
        add(&self.messages_in, s.messages_in);
        add(&self.bytes_in, s.bytes_in);
        add(&self.frames_out, s.frames_out);
        add(&self.bytes_out, s.bytes_out);
        add(&self.writes, s.writes);
        add(&self.deliveries, s.deliveries);
        add(&self.publications, s.publications);
        for (c, &v) in self.encodes.iter().zip(&s.encodes) {
            add(c, v);
        }
        add(&self.gaps, s.gaps);
        add(&self.duplicates, s.duplicates);
        for (c, &v) in self.recoveries.iter().zip(&s.recoveries) {
            add(c, v);
        }
        add(&self.presence_pushes, s.presence_pushes);
        for (c, &v) in self.history_evictions.iter().zip(&s.history_evictions) {
            add(c, v);
        }
        *s = Stats::default();
    }

    /// Credentials were refused (`reason`: one of [`auth_failure_labels`]).
    pub fn auth_failure(&self, reason: &'static str) {
        self.count(&self.auth_failures, reason, || reason.to_owned());
    }

    /// A connection was refused.
    pub fn refused(&self, reason: Refusal) {
        self.count(&self.refused, reason, || reason.label().to_owned());
    }

    /// A handshake finished with `result` (a [`Reject`] converts).
    pub fn handshake(&self, result: impl Into<HandshakeResult>) {
        let result = result.into();
        self.count(&self.handshakes, result, || result.label().to_owned());
    }

    /// An error reply was sent.
    pub fn error_reply(&self, code: ErrorCode) {
        self.count(&self.error_replies, code, || code.code().to_string());
    }

    /// A durable namespace's publication went to its sink's queue
    /// (`queued`), or was refused (its publisher gets 112).
    pub fn durable_publication(&self, queued: bool) {
        self.durable[usize::from(!queued)].inc();
    }

    /// A durable presence event went to its sink's queue, or was refused.
    pub fn durable_presence(&self, queued: bool) {
        self.durable_presence[usize::from(!queued)].inc();
    }

    /// A story update went to its `durable_collab` sink's queue, or the
    /// sink had no room (the update is refused).
    pub fn durable_story(&self, queued: bool) {
        self.durable_stories[usize::from(!queued)].inc();
    }

    /// A durable event went to the sink (`kept`), or pushed out the oldest.
    pub fn durable_event(&self, kept: bool) {
        self.collab.durable_event(kept);
    }

    /// A connection closed with `code`. Codes outside the known set (see
    /// [`known_close_codes`]) in 3000–4999 are counted as [`CLOSE_OTHER`].
    pub fn close(&self, code: u16) {
        match self.closes.get(code) {
            Some(c) => {
                c.inc();
            }
            None if (3000..=4999).contains(&code) => {
                self.close_other.inc();
            }
            // Not a code a peer may send nor one the server uses: cannot
            // happen today; still counted under its own code.
            None => self.count_slow(&self.closes, code.to_string()),
        }
    }

    /// A cross-shard message of kind `what` could not be queued.
    pub fn queue_full(&self, what: ShardMsgKind) {
        self.count(&self.queue_full, what, || what.label().to_owned());
    }

    /// A slow consumer was dropped.
    pub fn slow_drop(&self) {
        self.slow_drops.inc();
    }

    /// Records one publish-to-write latency.
    pub fn latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }
}

mod cluster;
mod collab;
mod durable;
mod ops;
mod rpc;
mod sse;
mod stories;
mod tls;
mod uring;
pub use cluster::{
    ApiCall, ApiServed, ClusterDrop, ClusterMetrics, HeartbeatRefusal, KindLabel, OpLabel,
    Received, Sent,
};
pub use collab::CollabShardMetrics;
pub use ops::LivenessMetrics;
pub use sse::{PostResult, SseMetrics};
pub use stories::{ErrorLabel, ReasonLabel};
pub use tls::{TlsHandshake, TlsShardMetrics};
pub use uring::{URING_EVENTS, UringShardMetrics};

#[cfg(test)]
mod tests;
