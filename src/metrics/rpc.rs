//! Backend call metrics (`wsedge_rpc_*`): node-wide, no `shard` label;
//! the `wsedge-rpc` worker and the shards' [`RpcClient`] count them
//! (`crate::sidecar::rpc`). Every labelled series is created in
//! [`Metrics::rpc`], so each is exported at 0 from the start.
//!
//! [`RpcClient`]: crate::sidecar::rpc::RpcClient

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Metrics, ResultLabel, result_counter};
use crate::sidecar::rpc::RpcMetrics;

/// The registered families.
pub(super) struct RpcFamilies {
    requests: Family<ResultLabel, Counter>,
    sends: Family<ResultLabel, Counter>,
    in_flight: Gauge<i64, AtomicI64>,
    answers_lost: Counter,
}

impl RpcFamilies {
    pub(super) fn register(r: &mut Registry) -> Self {
        let f = Self {
            requests: Family::default(),
            sends: Family::default(),
            in_flight: Gauge::default(),
            answers_lost: Counter::default(),
        };
        r.register(
            "rpc_requests",
            "Client rpc calls by result (ok, timeout, no_responders, error, unavailable, refused)",
            f.requests.clone(),
        );
        r.register(
            "rpc_sends",
            "Client send calls by result (ok, unavailable, refused)",
            f.sends.clone(),
        );
        r.register(
            "rpc_in_flight",
            "Backend calls (rpc and send) the node holds: waiting for the worker, at NATS, or for a shard's inbox",
            f.in_flight.clone(),
        );
        r.register(
            "rpc_answers_lost",
            "Backend call answers dropped because the shard's inbox stayed full (the client got error 112)",
            f.answers_lost.clone(),
        );
        f
    }
}

impl Metrics {
    /// Handles for the backend call worker; every `result` series is
    /// created now (exported at 0 from the start).
    pub fn rpc(&self) -> RpcMetrics {
        let f = &self.rpc;
        let series = result_counter;
        RpcMetrics::from_parts(
            RpcMetrics::REQUEST_RESULTS.map(|r| series(&f.requests, r)),
            RpcMetrics::SEND_RESULTS.map(|r| series(&f.sends, r)),
            f.in_flight.clone(),
            f.answers_lost.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_at_zero() {
        let m = Metrics::new();
        let _rpc = m.rpc();
        let text = m.encode();
        for r in RpcMetrics::REQUEST_RESULTS {
            let line = format!("wsedge_rpc_requests_total{{result=\"{r}\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
        for r in RpcMetrics::SEND_RESULTS {
            let line = format!("wsedge_rpc_sends_total{{result=\"{r}\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
        assert!(text.contains("wsedge_rpc_in_flight 0"));
        assert!(text.contains("wsedge_rpc_answers_lost_total 0"));
    }
}
