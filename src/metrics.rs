//! Prometheus metrics, per shard. Exposed by the admin HTTP server at
//! `/metrics` in the Prometheus text format (prometheus-client).
//!
//! Hot-path counts are plain integers in the shard ([`Stats`]) and are
//! added to the shared atomics once per loop turn; rare events (closes,
//! errors, refusals) go straight to their labelled family.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

type Counters = Family<ShardLabel, Counter>;
type KindCounters = Family<ShardKind, Counter>;
type Gauges = Family<ShardLabel, Gauge<i64, std::sync::atomic::AtomicI64>>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~3.3 s, doubling.
    Histogram::new((0..17).map(|i| 50e-6 * 2f64.powi(i)))
}

/// Every metric family.
pub struct Metrics {
    registry: Registry,
    connections: Gauges,
    accepted: Counters,
    refused: KindCounters,
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
    channels_local: Gauges,
    channels_home: Gauges,
    inbox_depth: Gauges,
    latency: Family<ShardLabel, Histogram, fn() -> Histogram>,
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
                "Connections refused by reason (fd_limit, max_connections, memory, draining)",
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
                "Connections closed, by close code (1006 = without a close frame)",
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
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Handles for one shard.
    pub fn shard(self: &Arc<Self>, shard: usize) -> ShardMetrics {
        let l = ShardLabel {
            shard: shard.to_string(),
        };
        ShardMetrics {
            shard: l.shard.clone(),
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
            channels_local: self.channels_local.get_or_create(&l).clone(),
            channels_home: self.channels_home.get_or_create(&l).clone(),
            inbox_depth: self.inbox_depth.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
            all: self.clone(),
        }
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
    /// Encodings per form: [json, binary, json_deflate, binary_deflate].
    pub encodes: [u64; 4],
}

/// One shard's metric handles.
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
    /// Channels with local subscribers.
    pub channels_local: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Channels this shard is home for.
    pub channels_home: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Inbox depth.
    pub inbox_depth: Gauge<i64, std::sync::atomic::AtomicI64>,
    latency: Histogram,
    all: Arc<Metrics>,
}

impl ShardMetrics {
    fn kind(&self, kind: impl Into<String>) -> ShardKind {
        ShardKind {
            shard: self.shard.clone(),
            kind: kind.into(),
        }
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
        for (i, name) in ["json", "binary", "json_deflate", "binary_deflate"]
            .iter()
            .enumerate()
        {
            if s.encodes[i] > 0 {
                self.all
                    .encodes
                    .get_or_create(&self.kind(*name))
                    .inc_by(s.encodes[i]);
            }
        }
        *s = Stats::default();
    }

    /// A connection was refused.
    pub fn refused(&self, reason: &str) {
        self.all.refused.get_or_create(&self.kind(reason)).inc();
    }

    /// A handshake finished with `result`.
    pub fn handshake(&self, result: &str) {
        self.all.handshakes.get_or_create(&self.kind(result)).inc();
    }

    /// An error reply was sent.
    pub fn error_reply(&self, code: u32) {
        self.all
            .error_replies
            .get_or_create(&self.kind(code.to_string()))
            .inc();
    }

    /// A connection closed with `code`.
    pub fn close(&self, code: u16) {
        self.all
            .closes
            .get_or_create(&self.kind(code.to_string()))
            .inc();
    }

    /// A cross-shard message could not be queued.
    pub fn queue_full(&self, what: &str) {
        self.all.queue_full.get_or_create(&self.kind(what)).inc();
    }

    /// A slow consumer was dropped.
    pub fn slow_drop(&self) {
        self.slow_drops.inc();
    }

    /// A delivery gap was found.
    pub fn gap(&self) {
        self.gaps.inc();
    }

    /// Records one publish-to-write latency.
    pub fn latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_families_and_labels() {
        let m = Arc::new(Metrics::new());
        let s = m.shard(1);
        let mut st = Stats {
            deliveries: 5,
            encodes: [1, 1, 0, 0],
            ..Default::default()
        };
        s.flush(&mut st);
        s.close(1009);
        s.latency(0.001);
        let text = m.encode();
        assert!(
            text.contains("wsedge_deliveries_total{shard=\"1\"} 5"),
            "{text}"
        );
        assert!(text.contains("wsedge_publication_encodes_total{shard=\"1\",kind=\"json\"} 1"));
        assert!(text.contains("wsedge_closes_total{shard=\"1\",kind=\"1009\"} 1"));
        assert!(text.contains("wsedge_publish_to_write_seconds_count{shard=\"1\"} 1"));
        assert_eq!(st.deliveries, 0);
    }
}
