//! io_uring data path metrics (`io = "uring"`): per shard, what the ring
//! did and what went wrong (`wsedge_uring_*{shard}`). The series exist
//! only on shards that run a ring ([`Metrics::uring_shard`]), each at 0
//! from the start; a node on `io = "epoll"` exports none.

use prometheus_client::registry::Registry;

use super::{Counters, KindCounters, Metrics, ShardLabel, kind_counter};
use prometheus_client::metrics::counter::Counter;

/// The `kind` labels of `uring_events`, in [`UringShardMetrics::events`]'
/// order.
pub const URING_EVENTS: [&str; 8] = [
    "enobufs",
    "rearm",
    "cq_overflow",
    "short_send",
    "send_error",
    "recv_error",
    "accept_error",
    "unexpected",
];

/// The node-wide io_uring families.
pub(super) struct UringFamilies {
    enters: Counters,
    events: KindCounters,
}

impl UringFamilies {
    pub(super) fn register(r: &mut Registry) -> Self {
        let enters = Counters::default();
        r.register(
            "uring_enters",
            "io_uring_enter calls of the shard's own ring (io = \"uring\"): about one per loop turn with I/O to submit",
            enters.clone(),
        );
        let events = KindCounters::default();
        r.register(
            "uring_events",
            "io_uring data path events by kind: enobufs (a recv found the provided buffer ring empty; re-armed), rearm (a multishot recv armed again), cq_overflow (completions waited on the kernel's overflow list), short_send (the rest written later), send_error / recv_error (the connection was freed), accept_error (out of descriptors or memory included), unexpected (a completion that fit nothing; never expected)",
            events.clone(),
        );
        Self { enters, events }
    }
}

impl Metrics {
    /// One shard's io_uring handles; every series is created now.
    pub fn uring_shard(&self, shard: usize) -> UringShardMetrics {
        let f = &self.uring;
        let s = shard.to_string();
        UringShardMetrics {
            enters: f
                .enters
                .get_or_create(&ShardLabel { shard: s.clone() })
                .clone(),
            events: URING_EVENTS.map(|k| kind_counter(&f.events, &s, k)),
        }
    }
}

/// One shard's io_uring metric handles.
pub struct UringShardMetrics {
    /// `io_uring_enter` calls.
    pub enters: Counter,
    /// Events, in [`URING_EVENTS`]' order.
    pub events: [Counter; URING_EVENTS.len()],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uring_series_exist_at_zero_and_count() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(!text.contains("wsedge_uring_events_total{"), "{text}");
        let s = m.uring_shard(1);
        let text = m.encode();
        for k in URING_EVENTS {
            let line = format!("wsedge_uring_events_total{{shard=\"1\",kind=\"{k}\"}} 0");
            assert!(text.contains(&line), "{line}\n{text}");
        }
        s.enters.inc_by(3);
        s.events[4].inc();
        let text = m.encode();
        assert!(
            text.contains("wsedge_uring_enters_total{shard=\"1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("wsedge_uring_events_total{shard=\"1\",kind=\"send_error\"} 1"),
            "{text}"
        );
    }
}
