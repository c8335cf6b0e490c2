//! Operator metrics kept by `main`: whether every shard's loop is turning
//! (stalls and the age of each shard's last turn, as the watchdog sees
//! them) and configuration reloads. Per-shard series are created once, for
//! every shard, by [`Metrics::liveness`], so the watchdog's updates are
//! atomic stores.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Counters, Metrics, ResultLabel, ShardLabel};

type SecondsGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The node-wide operator families (registered with the others).
pub(super) struct OpsFamilies {
    stalls: Counters,
    turn_age: Family<ShardLabel, SecondsGauge>,
    reloads: Family<ResultLabel, Counter>,
    restart_pending: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl OpsFamilies {
    /// Registers the operator families in `r`.
    pub(super) fn register(r: &mut Registry) -> Self {
        let stalls = Counters::default();
        r.register(
            "shard_stalls",
            "Times a shard's loop was seen not turning for longer than the stall threshold (watchdog pings are withheld while any shard is stalled)",
            stalls.clone(),
        );
        let turn_age = Family::<ShardLabel, SecondsGauge>::default();
        r.register(
            "shard_last_turn_age_seconds",
            "Seconds since the shard's loop last began a turn, as last seen by the main thread (every 50 ms); an idle shard turns at least once a second",
            turn_age.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result (ok, failed: the file did not load or validate, nothing changed)",
            reloads.clone(),
        );
        for result in ["ok", "failed"] {
            // Created now so both are exported at 0.
            let _ = reloads.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        let restart_pending = Gauge::default();
        r.register(
            "config_restart_pending",
            "1 when the configuration file, as last reloaded, changes settings that take effect only on restart",
            restart_pending.clone(),
        );
        Self {
            stalls,
            turn_age,
            reloads,
            restart_pending,
        }
    }
}

/// The watchdog's handles, one of each per shard, by shard index.
pub struct LivenessMetrics {
    stalls: Box<[Counter]>,
    turn_age: Box<[SecondsGauge]>,
}

impl LivenessMetrics {
    /// Shard `shard` was found stalled.
    pub fn stalled(&self, shard: usize) {
        self.stalls[shard].inc();
    }

    /// Shard `shard` last began a turn `seconds` ago.
    pub fn turn_age(&self, shard: usize, seconds: f64) {
        self.turn_age[shard].set(seconds);
    }
}

impl Metrics {
    /// The watchdog's handles for `shards` shards; every series is created
    /// now (exported at 0 from the start).
    pub fn liveness(&self, shards: usize) -> LivenessMetrics {
        let labels = (0..shards).map(|i| ShardLabel {
            shard: i.to_string(),
        });
        let (stalls, turn_age) = labels
            .map(|l| {
                (
                    self.ops.stalls.get_or_create(&l).clone(),
                    self.ops.turn_age.get_or_create(&l).clone(),
                )
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        LivenessMetrics {
            stalls: stalls.into(),
            turn_age: turn_age.into(),
        }
    }

    /// Counts a configuration reload.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.ops
            .reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Records whether the file asks for settings only a restart applies.
    pub fn set_restart_pending(&self, pending: bool) {
        self.ops.restart_pending.set(pending as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_has_its_series_from_the_start() {
        let m = Metrics::new();
        let live = m.liveness(2);
        let text = m.encode();
        for shard in ["0", "1"] {
            assert!(text.contains(&format!("wsedge_shard_stalls_total{{shard=\"{shard}\"}} 0")));
            assert!(text.contains(&format!(
                "wsedge_shard_last_turn_age_seconds{{shard=\"{shard}\"}} 0.0"
            )));
        }
        live.stalled(1);
        live.turn_age(0, 2.5);
        m.config_reload(false);
        m.set_restart_pending(true);
        let text = m.encode();
        assert!(
            text.contains("wsedge_shard_stalls_total{shard=\"1\"} 1"),
            "{text}"
        );
        assert!(text.contains("wsedge_shard_stalls_total{shard=\"0\"} 0"));
        assert!(text.contains("wsedge_shard_last_turn_age_seconds{shard=\"0\"} 2.5"));
        assert!(text.contains("wsedge_config_reloads_total{result=\"failed\"} 1"));
        assert!(text.contains("wsedge_config_reloads_total{result=\"ok\"} 0"));
        assert!(text.contains("wsedge_config_restart_pending 1"));
    }
}
