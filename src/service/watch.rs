//! The main thread's watch over the running node, called every ~50 ms from
//! its loop: reads every shard's loop-turn counter, logs and counts
//! stalls, keeps the per-shard turn-age gauges, and talks to the service
//! manager (`READY=1` once every shard serves, `WATCHDOG=1` while every
//! shard turns, `STATUS=` lines, `STOPPING=1` at the drain).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::liveness::{Change, Liveness, Pinger, stall_threshold};
use super::notify::Notifier;
use crate::metrics::{LivenessMetrics, Metrics};
use crate::shard::Shared;

/// How often `STATUS=` is refreshed when it changed.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The main thread's watch (see the module doc).
pub struct Watch {
    shared: Arc<Shared>,
    notifier: Notifier,
    liveness: Liveness,
    pinger: Option<Pinger>,
    metrics: LivenessMetrics,
    ready_sent: bool,
    stopping: bool,
    status: String,
    next_status: Instant,
}

impl Watch {
    /// Starts watching `shared`'s shards at `now`.
    pub fn new(shared: Arc<Shared>, metrics: &Metrics, notifier: Notifier, now: Instant) -> Self {
        let shards = shared.turns.len();
        let watchdog = notifier.watchdog();
        let stall_after = stall_threshold(watchdog);
        info!(
            notify = notifier.active(),
            watchdog_ms = watchdog.map(|w| w.as_millis() as u64),
            stall_after_ms = stall_after.as_millis() as u64,
            "watching the shard loops"
        );
        Self {
            liveness: Liveness::new(shards, stall_after, now),
            pinger: watchdog.map(|w| Pinger::new(w, now)),
            metrics: metrics.liveness(shards),
            notifier,
            shared,
            ready_sent: false,
            stopping: false,
            status: String::new(),
            next_status: now,
        }
    }

    /// One look at the shards at `now`; `finished(i)` says whether shard
    /// `i`'s thread has ended (it is then no longer watched).
    pub fn tick(&mut self, now: Instant, finished: impl Fn(usize) -> bool) {
        for i in 0..self.shared.turns.len() {
            if finished(i) {
                self.liveness.finished(i);
                continue;
            }
            let change = self.liveness.observe(now, i, self.shared.turns.read(i));
            // The age first, so a scrape that sees the stall counted sees
            // the age that caused it.
            self.metrics
                .turn_age(i, self.liveness.idle(i, now).as_secs_f64());
            match change {
                Some(Change::Stalled { shard, idle }) => {
                    self.metrics.stalled(shard);
                    error!(
                        shard,
                        idle_ms = idle.as_millis() as u64,
                        watchdog = self.pinger.is_some(),
                        "shard loop is not turning; watchdog pings withheld until it does"
                    );
                }
                Some(Change::Recovered { shard, idle }) => {
                    warn!(
                        shard,
                        idle_ms = idle.as_millis() as u64,
                        "shard loop is turning again"
                    );
                }
                None => {}
            }
        }
        if !self.ready_sent && !self.stopping && self.shared.ready() {
            self.ready_sent = true;
            let status = self.status_line();
            self.notifier.ready(&status);
            self.status = status;
            self.next_status = now + STATUS_EVERY;
            if self.notifier.active() {
                info!("READY=1 sent to the service manager");
            }
        }
        if self.ready_sent
            && let Some(p) = &mut self.pinger
            && p.should_ping(now, self.liveness.all_turning())
        {
            self.notifier.ping();
        }
        if self.ready_sent && now >= self.next_status {
            self.next_status = now + STATUS_EVERY;
            let status = self.status_line();
            if status != self.status {
                self.notifier.status(&status);
                self.status = status;
            }
        }
    }

    /// The drain starts: `STOPPING=1`.
    pub fn stopping(&mut self) {
        self.stopping = true;
        let status = self.status_line();
        self.notifier.stopping(&status);
        self.status = status;
    }

    /// A reload starts: `RELOADING=1`.
    pub fn reloading(&mut self) {
        if self.ready_sent && !self.stopping {
            self.notifier.reloading();
        }
    }

    /// A reload ended: `READY=1` again, with `summary` as the status until
    /// the next refresh.
    pub fn reloaded(&mut self, summary: &str) {
        if self.ready_sent && !self.stopping {
            self.notifier.ready(summary);
            self.status = summary.to_owned();
            self.next_status = Instant::now() + STATUS_EVERY;
        }
    }

    fn status_line(&self) -> String {
        let open = self.shared.open_connections();
        let shards = self.shared.turns.len();
        let mut s = if self.stopping {
            format!("draining: {open} connections left")
        } else {
            format!(
                "serving {open} connections (cap {}) on {shards} shards",
                self.shared.max_connections()
            )
        };
        let stalled: Vec<String> = self.liveness.stalled().map(|i| i.to_string()).collect();
        if !stalled.is_empty() {
            s.push_str(&format!("; shard {} not turning", stalled.join(",")));
        }
        s
    }
}
