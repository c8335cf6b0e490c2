//! TLS metrics: handshakes by result, TLS failures of established
//! connections, handshakes put off by the per-turn budget, where each
//! connection's record layer went (kernel or rustls), whether kernel TLS
//! is in use, and certificate reloads. Per-shard series are created with
//! the shard's handles ([`Metrics::tls_shard`]), as for the rest of the
//! shard's metrics: counting is an atomic add, never a family lock.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Counters, KindCounters, Metrics, ResultLabel, Series, ShardLabel, kind_counter};
use crate::tls::TlsFailure;

/// How a TLS handshake ended (`tls_handshakes{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandshake {
    /// Finished: the connection speaks TLS.
    Ok,
    /// The connection went away before the handshake finished without a
    /// TLS error: the peer closed, `handshake_timeout` passed, or the
    /// node drained.
    Incomplete,
    /// Refused by TLS, for this reason.
    Failed(TlsFailure),
}

impl TlsHandshake {
    /// Every result; each has a series from the start.
    pub fn all() -> impl Iterator<Item = TlsHandshake> {
        [TlsHandshake::Ok, TlsHandshake::Incomplete]
            .into_iter()
            .chain(TlsFailure::ALL.map(TlsHandshake::Failed))
    }

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            TlsHandshake::Ok => "ok",
            TlsHandshake::Incomplete => "incomplete",
            TlsHandshake::Failed(f) => f.label(),
        }
    }
}

/// The `kind` labels of `tls_record_layer`.
const RECORD_LAYERS: [&str; 2] = ["kernel", "rustls"];

/// The node-wide TLS families (registered with the others).
pub(super) struct TlsFamilies {
    handshakes: KindCounters,
    errors: KindCounters,
    deferred: Counters,
    record_layer: KindCounters,
    ktls: Gauge<i64, std::sync::atomic::AtomicI64>,
    reloads: Family<ResultLabel, Counter>,
}

impl TlsFamilies {
    /// Registers the TLS families in `r`.
    pub(super) fn register(r: &mut Registry) -> Self {
        let handshakes = KindCounters::default();
        r.register(
            "tls_handshakes",
            "TLS handshakes by result: ok, incomplete (closed or timed out before the end), or why TLS refused the peer",
            handshakes.clone(),
        );
        let errors = KindCounters::default();
        r.register(
            "tls_errors",
            "Established TLS connections closed on a TLS failure, by reason",
            errors.clone(),
        );
        let deferred = Counters::default();
        r.register(
            "tls_handshakes_deferred",
            "TLS handshake steps put off to a later loop turn by tls.handshakes_per_turn",
            deferred.clone(),
        );
        let record_layer = KindCounters::default();
        r.register(
            "tls_record_layer",
            "TLS connections by where their record layer went after the handshake (kernel = kTLS, rustls = user space)",
            record_layer.clone(),
        );
        let ktls = Gauge::default();
        r.register(
            "tls_ktls",
            "1 when new TLS connections are handed to kernel TLS (tls.ktls = auto and the kernel offers it), else 0",
            ktls.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        r.register(
            "tls_reloads",
            "Certificate reloads (SIGHUP) by result (ok, failed: the previous certificate stays)",
            reloads.clone(),
        );
        for result in ["ok", "failed"] {
            // Created now so both are exported at 0.
            let _ = reloads.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        Self {
            handshakes,
            errors,
            deferred,
            record_layer,
            ktls,
            reloads,
        }
    }
}

impl Metrics {
    /// One shard's TLS handles; every `{shard, kind}` series is created
    /// now (exported at 0 from the start).
    pub fn tls_shard(&self, shard: usize) -> TlsShardMetrics {
        let f = &self.tls;
        let l = ShardLabel {
            shard: shard.to_string(),
        };
        let s = l.shard.as_str();
        TlsShardMetrics {
            handshakes: Series::new(
                &f.handshakes,
                s,
                TlsHandshake::all().map(|h| (h, h.label())),
            ),
            errors: Series::new(&f.errors, s, TlsFailure::ALL.map(|e| (e, e.label()))),
            deferred: f.deferred.get_or_create(&l).clone(),
            record_layer: RECORD_LAYERS.map(|k| kind_counter(&f.record_layer, s, k)),
        }
    }

    /// Records whether new TLS connections use kernel TLS (set once at
    /// start).
    pub fn set_ktls(&self, on: bool) {
        self.tls.ktls.set(on as i64);
    }

    /// Counts a certificate reload.
    pub fn tls_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.tls
            .reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

/// One shard's TLS metric handles: atomics resolved at construction.
pub struct TlsShardMetrics {
    handshakes: Series<TlsHandshake>,
    errors: Series<TlsFailure>,
    deferred: Counter,
    record_layer: [Counter; 2],
}

impl TlsShardMetrics {
    /// A handshake ended with `result`.
    pub fn handshake(&self, result: TlsHandshake) {
        count(&self.handshakes, result);
    }

    /// An established connection failed in TLS.
    pub fn error(&self, reason: TlsFailure) {
        count(&self.errors, reason);
    }

    /// A handshake step waits for the next turn.
    pub fn deferred(&self) {
        self.deferred.inc();
    }

    /// A connection's record layer settled: in the kernel, or in rustls.
    pub fn record_layer(&self, kernel: bool) {
        self.record_layer[usize::from(!kernel)].inc();
    }
}

/// Increments `key`'s pre-created counter (every key of these series is
/// created from its `ALL`, so a miss is a bug).
fn count<K: Copy + PartialEq + std::fmt::Debug>(series: &Series<K>, key: K) {
    match series.get(key) {
        Some(c) => {
            c.inc();
        }
        None => debug_assert!(false, "metrics: {key:?} has no pre-created series"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn tls_series_exist_at_zero_and_count_apart() {
        let m = Arc::new(Metrics::new());
        let s0 = m.tls_shard(0);
        let _s1 = m.tls_shard(1);
        let text = m.encode();
        for shard in [0, 1] {
            for h in TlsHandshake::all() {
                let line = format!(
                    "wsedge_tls_handshakes_total{{shard=\"{shard}\",kind=\"{}\"}} 0",
                    h.label()
                );
                assert!(text.contains(&line), "{line}\n{text}");
            }
            for k in RECORD_LAYERS {
                let line =
                    format!("wsedge_tls_record_layer_total{{shard=\"{shard}\",kind=\"{k}\"}} 0");
                assert!(text.contains(&line), "{line}");
            }
        }
        assert!(text.contains("wsedge_tls_reloads_total{result=\"failed\"} 0"));
        assert!(text.contains("wsedge_tls_ktls 0"));
        s0.handshake(TlsHandshake::Ok);
        s0.handshake(TlsHandshake::Failed(TlsFailure::InvalidMessage));
        s0.error(TlsFailure::DecryptError);
        s0.deferred();
        s0.record_layer(false);
        m.tls_reload(true);
        m.set_ktls(true);
        let text = m.encode();
        for line in [
            "wsedge_tls_handshakes_total{shard=\"0\",kind=\"ok\"} 1",
            "wsedge_tls_handshakes_total{shard=\"0\",kind=\"invalid_message\"} 1",
            "wsedge_tls_handshakes_total{shard=\"1\",kind=\"ok\"} 0",
            "wsedge_tls_errors_total{shard=\"0\",kind=\"decrypt_error\"} 1",
            "wsedge_tls_handshakes_deferred_total{shard=\"0\"} 1",
            "wsedge_tls_record_layer_total{shard=\"0\",kind=\"rustls\"} 1",
            "wsedge_tls_record_layer_total{shard=\"0\",kind=\"kernel\"} 0",
            "wsedge_tls_reloads_total{result=\"ok\"} 1",
            "wsedge_tls_ktls 1",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
