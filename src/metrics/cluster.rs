//! Cluster transport metrics (`wsedge_cluster_*`): node-wide, no `shard`
//! label; the `wsedge-cluster` worker ([`crate::sidecar::cluster`]) and the
//! shards' [`ClusterClient`](crate::sidecar::cluster::ClusterClient) count
//! them. [`ClusterMetrics::default`] is standalone (tests); the node takes
//! registered handles from [`Metrics::cluster`], where every labelled
//! series is created, so each is exported at 0 from the start.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Metrics, ReasonLabel};
use crate::engine::cluster::membership::Refusal;

type IntGauge = Gauge<i64, AtomicI64>;

/// `{kind}` of cluster messages sent or received.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// [`Sent::label`] or [`Received::label`].
    pub kind: String,
}

/// `{op}` of subscription changes sent to NATS.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// `sub` or `unsub`.
    pub op: String,
}

/// What the worker published (`wsedge_cluster_messages_sent_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// On a channel's subject (deliveries, sync markers).
    Publish,
    /// On a node's `home.<name>` subject.
    ToNode,
    /// This node's heartbeat.
    Heartbeat,
}

impl Sent {
    /// Every kind, in label order.
    pub const ALL: [Sent; 3] = [Sent::Publish, Sent::ToNode, Sent::Heartbeat];

    /// The `kind` label.
    pub const fn label(self) -> &'static str {
        match self {
            Sent::Publish => "publish",
            Sent::ToNode => "to_node",
            Sent::Heartbeat => "heartbeat",
        }
    }
}

/// What arrived (`wsedge_cluster_messages_received_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// On a watched channel's subject.
    Channel,
    /// On this node's `home.<name>` subject.
    Home,
    /// Another node's heartbeat.
    Heartbeat,
}

impl Received {
    /// Every kind, in label order.
    pub const ALL: [Received; 3] = [Received::Channel, Received::Home, Received::Heartbeat];

    /// The `kind` label.
    pub const fn label(self) -> &'static str {
        match self {
            Received::Channel => "channel",
            Received::Home => "home",
            Received::Heartbeat => "heartbeat",
        }
    }
}

/// Why a cluster message was lost (`wsedge_cluster_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterDrop {
    /// The shards → worker queue was full: the request was given back to
    /// the shard.
    QueueFull,
    /// The sink (a shard's inbox) refused a received message.
    InboxFull,
    /// The NATS connection was down: an outgoing message was not sent.
    Disconnected,
    /// The worker had stopped: the request was given back to the shard.
    Stopped,
    /// `async-nats` dropped a received message because the worker had not
    /// taken the subscription's earlier ones (65,536 waiting).
    SlowConsumer,
    /// An outgoing payload above the server's `max_payload` (1 MiB by
    /// default): not sent.
    TooLarge,
}

impl ClusterDrop {
    /// Every reason, in label order.
    pub const ALL: [ClusterDrop; 6] = [
        ClusterDrop::QueueFull,
        ClusterDrop::InboxFull,
        ClusterDrop::Disconnected,
        ClusterDrop::Stopped,
        ClusterDrop::SlowConsumer,
        ClusterDrop::TooLarge,
    ];

    /// The `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            ClusterDrop::QueueFull => "queue_full",
            ClusterDrop::InboxFull => "inbox_full",
            ClusterDrop::Disconnected => "disconnected",
            ClusterDrop::Stopped => "stopped",
            ClusterDrop::SlowConsumer => "slow_consumer",
            ClusterDrop::TooLarge => "too_large",
        }
    }
}

/// Why a heartbeat did not count
/// (`wsedge_cluster_membership_refused_total{reason}`): the membership's
/// [`Refusal`]s, and heartbeats that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatRefusal {
    /// A refusal of the live set ([`Refusal`]).
    Membership(Refusal),
    /// Not a heartbeat, or sent on another node's subject.
    Malformed,
}

impl HeartbeatRefusal {
    /// Every reason, in label order.
    pub const ALL: [HeartbeatRefusal; 4] = [
        HeartbeatRefusal::Membership(Refusal::Full),
        HeartbeatRefusal::Membership(Refusal::NameClash),
        HeartbeatRefusal::Membership(Refusal::StaleIncarnation),
        HeartbeatRefusal::Malformed,
    ];

    /// The `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            HeartbeatRefusal::Membership(Refusal::Full) => "full",
            HeartbeatRefusal::Membership(Refusal::NameClash) => "name_clash",
            HeartbeatRefusal::Membership(Refusal::StaleIncarnation) => "stale_incarnation",
            HeartbeatRefusal::Malformed => "malformed",
        }
    }

    const fn slot(self) -> usize {
        match self {
            HeartbeatRefusal::Membership(Refusal::Full) => 0,
            HeartbeatRefusal::Membership(Refusal::NameClash) => 1,
            HeartbeatRefusal::Membership(Refusal::StaleIncarnation) => 2,
            HeartbeatRefusal::Malformed => 3,
        }
    }
}

/// How a server API call sent to every other node ended, for
/// `wsedge_cluster_api_calls_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiCall {
    /// Every live node answered.
    Complete,
    /// Some did not answer within `request_timeout`.
    Partial,
    /// Not sent: NATS unreachable.
    Unreachable,
    /// Not sent: the queue to the worker was full.
    Busy,
}

impl ApiCall {
    /// Every result, in slot order.
    pub const ALL: [ApiCall; 4] = [
        ApiCall::Complete,
        ApiCall::Partial,
        ApiCall::Unreachable,
        ApiCall::Busy,
    ];

    /// The `result` label.
    pub const fn label(self) -> &'static str {
        match self {
            ApiCall::Complete => "complete",
            ApiCall::Partial => "partial",
            ApiCall::Unreachable => "unreachable",
            ApiCall::Busy => "busy",
        }
    }
}

/// How another node's server API call run here ended, for
/// `wsedge_cluster_api_served_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiServed {
    /// Answered with a result.
    Ok,
    /// Answered with an error from the call itself.
    Error,
    /// Refused with 112: too many peer calls running.
    Busy,
}

impl ApiServed {
    /// Every result, in slot order.
    pub const ALL: [ApiServed; 3] = [ApiServed::Ok, ApiServed::Error, ApiServed::Busy];

    /// The `result` label.
    pub const fn label(self) -> &'static str {
        match self {
            ApiServed::Ok => "ok",
            ApiServed::Error => "error",
            ApiServed::Busy => "busy",
        }
    }
}

/// The cluster transport's counters and gauges. Cheap to clone (every
/// handle is shared).
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    nats_up: IntGauge,
    nodes: IntGauge,
    sent: [Counter; 3],
    received: [Counter; 3],
    bytes_sent: Counter,
    bytes_received: Counter,
    watched: IntGauge,
    subscribe_ops: [Counter; 2],
    dropped: [Counter; 6],
    reconnects: Counter,
    refused: [Counter; 4],
    /// forwarded, failed, late, misrouted.
    requests: [Counter; 4],
    resyncs: Counter,
    decode_errors: Counter,
    /// Writes: ok, failed.
    history_writes: [Counter; 2],
    /// Read-backs: ok, failed.
    history_loads: [Counter; 2],
    history_resets: Counter,
    /// Presence bucket writes: delta, whole, lost.
    presence_writes: [Counter; 3],
    /// Members read back: restored, stale.
    presence_read: [Counter; 2],
    api_calls: [Counter; 4],
    api_served: [Counter; 3],
}

impl ClusterMetrics {
    /// Counts a server API call sent to every other node.
    pub fn api_call(&self, result: ApiCall) {
        self.api_calls[result as usize].inc();
    }

    /// Counts another node's server API call run here.
    pub fn api_served(&self, result: ApiServed) {
        self.api_served[result as usize].inc();
    }

    /// Moves a router's cluster counts to `wsedge_cluster_requests_total`
    /// and `wsedge_cluster_resyncs_total`.
    pub fn router(&self, s: &crate::engine::router::ClusterStats) {
        for (c, n) in self
            .requests
            .iter()
            .zip([s.forwarded, s.failed, s.late, s.misrouted])
        {
            if n > 0 {
                c.inc_by(n);
            }
        }
        if s.resyncs > 0 {
            self.resyncs.inc_by(s.resyncs);
        }
        let h = &s.stored;
        for (c, n) in self.history_writes.iter().zip([h.writes, h.write_failures]) {
            if n > 0 {
                c.inc_by(n);
            }
        }
        for (c, n) in self.history_loads.iter().zip([h.loads, h.load_failures]) {
            if n > 0 {
                c.inc_by(n);
            }
        }
        if h.resets > 0 {
            self.history_resets.inc_by(h.resets);
        }
        let m = &s.mirror;
        let delta = m.writes.saturating_sub(m.whole);
        for (c, n) in self.presence_writes.iter().zip([delta, m.whole, m.lost]) {
            if n > 0 {
                c.inc_by(n);
            }
        }
        for (c, n) in self.presence_read.iter().zip([m.restored, m.stale]) {
            if n > 0 {
                c.inc_by(n);
            }
        }
    }

    /// Counts bytes from another node that were not a valid message.
    pub fn decode_error(&self) {
        self.decode_errors.inc();
    }

    /// Sets `wsedge_cluster_nats_up`.
    pub fn set_up(&self, up: bool) {
        self.nats_up.set(i64::from(up));
    }

    /// Sets `wsedge_cluster_nodes` (the live set, this node included).
    pub fn set_nodes(&self, n: usize) {
        self.nodes.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one message of `bytes` payload bytes sent.
    pub fn sent(&self, kind: Sent, bytes: usize) {
        self.sent[kind as usize].inc();
        self.bytes_sent.inc_by(bytes as u64);
    }

    /// Counts one message of `bytes` payload bytes received.
    pub fn received(&self, kind: Received, bytes: usize) {
        self.received[kind as usize].inc();
        self.bytes_received.inc_by(bytes as u64);
    }

    /// Sets `wsedge_cluster_watched_channels` (channel subjects subscribed).
    pub fn set_watched(&self, n: usize) {
        self.watched.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a `SUB` (`true`) or `UNSUB` (`false`) of a channel subject.
    pub fn subscribe_op(&self, sub: bool) {
        self.subscribe_ops[usize::from(!sub)].inc();
    }

    /// Counts `n` messages lost for `reason`.
    pub fn dropped(&self, reason: ClusterDrop, n: u64) {
        self.dropped[reason as usize].inc_by(n);
    }

    /// Counts a reconnect (a connection after the first).
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Counts a heartbeat that did not count.
    pub fn refused(&self, reason: HeartbeatRefusal) {
        self.refused[reason.slot()].inc();
    }

    /// `wsedge_cluster_nats_up`.
    pub fn is_up(&self) -> bool {
        self.nats_up.get() == 1
    }

    /// `wsedge_cluster_nodes`.
    pub fn nodes(&self) -> i64 {
        self.nodes.get()
    }

    /// Messages of `kind` sent.
    pub fn sent_count(&self, kind: Sent) -> u64 {
        self.sent[kind as usize].get()
    }

    /// Messages of `kind` received.
    pub fn received_count(&self, kind: Received) -> u64 {
        self.received[kind as usize].get()
    }

    /// Payload bytes sent and received.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_sent.get(), self.bytes_received.get())
    }

    /// `wsedge_cluster_watched_channels`.
    pub fn watched(&self) -> i64 {
        self.watched.get()
    }

    /// `SUB`s (`true`) or `UNSUB`s (`false`) of channel subjects so far.
    pub fn subscribe_ops(&self, sub: bool) -> u64 {
        self.subscribe_ops[usize::from(!sub)].get()
    }

    /// Messages lost for `reason`.
    pub fn dropped_count(&self, reason: ClusterDrop) -> u64 {
        self.dropped[reason as usize].get()
    }

    /// Reconnects so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }

    /// Heartbeats refused for `reason`.
    pub fn refused_count(&self, reason: HeartbeatRefusal) -> u64 {
        self.refused[reason.slot()].get()
    }
}

/// The registered cluster families.
pub(super) struct ClusterFamilies {
    nats_up: IntGauge,
    nodes: IntGauge,
    sent: Family<KindLabel, Counter>,
    received: Family<KindLabel, Counter>,
    bytes_sent: Counter,
    bytes_received: Counter,
    watched: IntGauge,
    subscribe_ops: Family<OpLabel, Counter>,
    dropped: Family<ReasonLabel, Counter>,
    reconnects: Counter,
    refused: Family<ReasonLabel, Counter>,
    requests: Family<ResultLabel, Counter>,
    resyncs: Counter,
    decode_errors: Counter,
    history_writes: Family<ResultLabel, Counter>,
    history_loads: Family<ResultLabel, Counter>,
    history_resets: Counter,
    presence_writes: Family<ResultLabel, Counter>,
    presence_read: Family<ResultLabel, Counter>,
    api_calls: Family<ResultLabel, Counter>,
    api_served: Family<ResultLabel, Counter>,
}

/// The `result` label of `wsedge_cluster_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    result: String,
}

impl ClusterFamilies {
    /// Registers the families in `r`.
    pub(super) fn register(r: &mut Registry) -> Self {
        let f = Self {
            nats_up: IntGauge::default(),
            nodes: IntGauge::default(),
            sent: Family::default(),
            received: Family::default(),
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            watched: IntGauge::default(),
            subscribe_ops: Family::default(),
            dropped: Family::default(),
            reconnects: Counter::default(),
            refused: Family::default(),
            requests: Family::default(),
            resyncs: Counter::default(),
            decode_errors: Counter::default(),
            history_writes: Family::default(),
            history_loads: Family::default(),
            history_resets: Counter::default(),
            presence_writes: Family::default(),
            presence_read: Family::default(),
            api_calls: Family::default(),
            api_served: Family::default(),
        };
        r.register(
            "cluster_api_calls",
            "Server API calls that act on every node (subscribe, unsubscribe, disconnect, channels) sent from here to the other nodes, by result: complete (every live node answered), partial (some did not answer within request_timeout; the caller got 100 naming them), unreachable (NATS down: acted on this node only, the caller got 100), busy (the queue to the cluster worker was full: the caller got 112)",
            f.api_calls.clone(),
        );
        r.register(
            "cluster_api_served",
            "Other nodes' server API calls run on this node's shards, by result: ok, error (the call's own error, sent back), busy (more than 64 running at once: answered 112)",
            f.api_served.clone(),
        );
        r.register(
            "cluster_history_writes",
            "Publications of history_backend = \"jetstream\" channels written to JetStream by their home here, by result: ok (acknowledged, then delivered), failed (NATS down, refused, no acknowledgement within the timeout, or failed behind one that did; the publisher got 100)",
            f.history_writes.clone(),
        );
        r.register(
            "cluster_history_loads",
            "Stored channel tails read back from JetStream by a home here (a first use, a new home, a reload after a failed write), by result: ok, failed (the waiting requests got 100)",
            f.history_loads.clone(),
        );
        r.register(
            "cluster_history_resets",
            "Stored channels whose state read back from JetStream differed from what their subscribers had (a hole after a failed write, lost history): the subscribers were told to recover",
            f.history_resets.clone(),
        );
        r.register(
            "cluster_presence_writes",
            "Writes of a stored channel's members to the presence bucket by their home here (one per channel per 50 ms tick with changes), by result: delta (the changed members), whole (every member: after a lost write, or the refresh every 8 h), lost (the cluster queue refused a write or JetStream did not acknowledge one it took: the channel's next write is whole)",
            f.presence_writes.clone(),
        );
        r.register(
            "cluster_presence_read",
            "Members read back from the presence bucket by a home here that took a stored channel, by result: restored (their node is live: put back without a join event), stale (their node, or that incarnation of it, is gone: removed from the bucket)",
            f.presence_read.clone(),
        );
        r.register(
            "cluster_requests",
            "Requests for channels homed on another node, by result: forwarded, failed (answered 100: NATS down, queue full, or no answer within request_timeout), late (an answer after its request was answered 100), misrouted (a request from another node for a channel not homed here, answered 100)",
            f.requests.clone(),
        );
        r.register(
            "cluster_resyncs",
            "Times a channel's subscribers on this node were told to recover (3004) because of the cluster: a delivery gap or new epoch seen by a relay, or a channel whose home moved",
            f.resyncs.clone(),
        );
        r.register(
            "cluster_decode_errors",
            "Messages from other nodes that were not valid (dropped)",
            f.decode_errors.clone(),
        );
        r.register(
            "cluster_nats_up",
            "1 while the node's NATS connection is up (0 without a cluster, or while NATS is unreachable)",
            f.nats_up.clone(),
        );
        r.register(
            "cluster_nodes",
            "Nodes in the live set as this node sees it, itself included",
            f.nodes.clone(),
        );
        r.register(
            "cluster_messages_sent",
            "Messages published to NATS by kind: publish (a channel's subject), to_node (a node's home subject), heartbeat",
            f.sent.clone(),
        );
        r.register(
            "cluster_messages_received",
            "Messages received from NATS by kind: channel (a watched channel), home (requests to this node), heartbeat",
            f.received.clone(),
        );
        r.register(
            "cluster_bytes_sent",
            "Payload bytes published to NATS",
            f.bytes_sent.clone(),
        );
        r.register(
            "cluster_bytes_received",
            "Payload bytes received from NATS",
            f.bytes_received.clone(),
        );
        r.register(
            "cluster_watched_channels",
            "Channel subjects this node is subscribed to (channels with local subscribers, and for a short linger after the last leaves)",
            f.watched.clone(),
        );
        r.register(
            "cluster_subscribe_ops",
            "Subscription changes sent to NATS by op (sub, unsub); on/off storms are netted per channel before they get here",
            f.subscribe_ops.clone(),
        );
        r.register(
            "cluster_dropped",
            "Cluster messages lost by reason: queue_full (shards to worker queue, given back to the shard), inbox_full (a received message the shard inbox refused), disconnected (not sent while NATS was down), stopped (the worker had stopped), slow_consumer (received but dropped by the NATS client: the worker fell behind), too_large (above the server's max_payload)",
            f.dropped.clone(),
        );
        r.register(
            "cluster_reconnects",
            "NATS connections made after the first",
            f.reconnects.clone(),
        );
        r.register(
            "cluster_membership_refused",
            "Heartbeats that did not count, by reason: full (too many nodes), name_clash (another process uses this node's name), stale_incarnation, malformed",
            f.refused.clone(),
        );
        f
    }
}

impl Metrics {
    /// Handles for the cluster worker and its clients; every labelled
    /// series is created now (exported at 0 from the start).
    pub fn cluster(&self) -> ClusterMetrics {
        let f = &self.cluster;
        let kind = |fam: &Family<KindLabel, Counter>, k: &str| {
            fam.get_or_create(&KindLabel { kind: k.into() }).clone()
        };
        let reason = |fam: &Family<ReasonLabel, Counter>, r: &str| {
            fam.get_or_create(&ReasonLabel { reason: r.into() }).clone()
        };
        ClusterMetrics {
            nats_up: f.nats_up.clone(),
            nodes: f.nodes.clone(),
            sent: Sent::ALL.map(|k| kind(&f.sent, k.label())),
            received: Received::ALL.map(|k| kind(&f.received, k.label())),
            bytes_sent: f.bytes_sent.clone(),
            bytes_received: f.bytes_received.clone(),
            watched: f.watched.clone(),
            subscribe_ops: ["sub", "unsub"].map(|op| {
                f.subscribe_ops
                    .get_or_create(&OpLabel { op: op.into() })
                    .clone()
            }),
            dropped: ClusterDrop::ALL.map(|d| reason(&f.dropped, d.label())),
            reconnects: f.reconnects.clone(),
            refused: HeartbeatRefusal::ALL.map(|r| reason(&f.refused, r.label())),
            requests: ["forwarded", "failed", "late", "misrouted"].map(|r| {
                f.requests
                    .get_or_create(&ResultLabel { result: r.into() })
                    .clone()
            }),
            resyncs: f.resyncs.clone(),
            decode_errors: f.decode_errors.clone(),
            history_writes: ["ok", "failed"].map(|r| {
                f.history_writes
                    .get_or_create(&ResultLabel { result: r.into() })
                    .clone()
            }),
            history_loads: ["ok", "failed"].map(|r| {
                f.history_loads
                    .get_or_create(&ResultLabel { result: r.into() })
                    .clone()
            }),
            history_resets: f.history_resets.clone(),
            presence_writes: ["delta", "whole", "lost"].map(|r| {
                f.presence_writes
                    .get_or_create(&ResultLabel { result: r.into() })
                    .clone()
            }),
            presence_read: ["restored", "stale"].map(|r| {
                f.presence_read
                    .get_or_create(&ResultLabel { result: r.into() })
                    .clone()
            }),
            api_calls: ApiCall::ALL.map(|r| {
                f.api_calls
                    .get_or_create(&ResultLabel {
                        result: r.label().into(),
                    })
                    .clone()
            }),
            api_served: ApiServed::ALL.map(|r| {
                f.api_served
                    .get_or_create(&ResultLabel {
                        result: r.label().into(),
                    })
                    .clone()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_and_labels_line_up() {
        for (i, k) in Sent::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i);
        }
        for (i, k) in Received::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i);
        }
        for (i, d) in ClusterDrop::ALL.into_iter().enumerate() {
            assert_eq!(d as usize, i);
        }
        for (i, r) in HeartbeatRefusal::ALL.into_iter().enumerate() {
            assert_eq!(r.slot(), i);
        }
        for (i, r) in ApiCall::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
        }
        for (i, r) in ApiServed::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
        }
        let m = Metrics::new();
        let c = m.cluster();
        let text = m.encode();
        for line in [
            "wsedge_cluster_nats_up 0",
            "wsedge_cluster_nodes 0",
            "wsedge_cluster_messages_sent_total{kind=\"publish\"} 0",
            "wsedge_cluster_messages_sent_total{kind=\"to_node\"} 0",
            "wsedge_cluster_messages_sent_total{kind=\"heartbeat\"} 0",
            "wsedge_cluster_messages_received_total{kind=\"channel\"} 0",
            "wsedge_cluster_messages_received_total{kind=\"home\"} 0",
            "wsedge_cluster_messages_received_total{kind=\"heartbeat\"} 0",
            "wsedge_cluster_bytes_sent_total 0",
            "wsedge_cluster_bytes_received_total 0",
            "wsedge_cluster_watched_channels 0",
            "wsedge_cluster_subscribe_ops_total{op=\"sub\"} 0",
            "wsedge_cluster_subscribe_ops_total{op=\"unsub\"} 0",
            "wsedge_cluster_dropped_total{reason=\"queue_full\"} 0",
            "wsedge_cluster_dropped_total{reason=\"inbox_full\"} 0",
            "wsedge_cluster_dropped_total{reason=\"disconnected\"} 0",
            "wsedge_cluster_dropped_total{reason=\"stopped\"} 0",
            "wsedge_cluster_dropped_total{reason=\"slow_consumer\"} 0",
            "wsedge_cluster_dropped_total{reason=\"too_large\"} 0",
            "wsedge_cluster_reconnects_total 0",
            "wsedge_cluster_membership_refused_total{reason=\"full\"} 0",
            "wsedge_cluster_membership_refused_total{reason=\"name_clash\"} 0",
            "wsedge_cluster_membership_refused_total{reason=\"stale_incarnation\"} 0",
            "wsedge_cluster_membership_refused_total{reason=\"malformed\"} 0",
            "wsedge_cluster_api_calls_total{result=\"complete\"} 0",
            "wsedge_cluster_api_calls_total{result=\"busy\"} 0",
            "wsedge_cluster_api_served_total{result=\"ok\"} 0",
            "wsedge_cluster_api_served_total{result=\"busy\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        c.set_up(true);
        c.set_nodes(3);
        c.sent(Sent::ToNode, 10);
        c.received(Received::Heartbeat, 7);
        c.subscribe_op(false);
        c.dropped(ClusterDrop::InboxFull, 2);
        c.refused(HeartbeatRefusal::Membership(Refusal::NameClash));
        c.api_call(ApiCall::Partial);
        c.api_served(ApiServed::Error);
        let text = m.encode();
        for line in [
            "wsedge_cluster_nats_up 1",
            "wsedge_cluster_nodes 3",
            "wsedge_cluster_messages_sent_total{kind=\"to_node\"} 1",
            "wsedge_cluster_messages_received_total{kind=\"heartbeat\"} 1",
            "wsedge_cluster_bytes_sent_total 10",
            "wsedge_cluster_bytes_received_total 7",
            "wsedge_cluster_subscribe_ops_total{op=\"unsub\"} 1",
            "wsedge_cluster_dropped_total{reason=\"inbox_full\"} 2",
            "wsedge_cluster_membership_refused_total{reason=\"name_clash\"} 1",
            "wsedge_cluster_api_calls_total{result=\"partial\"} 1",
            "wsedge_cluster_api_served_total{result=\"error\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert_eq!(c.sent_count(Sent::ToNode), 1);
        assert_eq!(c.dropped_count(ClusterDrop::InboxFull), 2);
    }
}
