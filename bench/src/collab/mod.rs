//! The story collaboration workloads (wsedge only, issue 9;
//! docs/COLLABORATION.md):
//!
//! - `collab-fanout`: one story, E editors each sending U updates/s to
//!   their own section, V viewers: update-to-viewer latency, updates/s,
//!   server CPU per update.
//! - `collab-many`: K stories of E editors + V viewers each (defaults
//!   1,000 × (3 + 20) = 23,000 connections over several worker
//!   processes): the same figures, plus server memory per connection.
//! - `collab-join` ([`join`]): the `collab_join` snapshot round trip for a
//!   story of S sections.
//!
//! The first two share one driver ([`collab_fanout`], [`collab_many`]):
//! the workers' connections ([`crate::worker`]'s `collab` mode) join the
//! stories, the driver waits until the join events have been delivered,
//! then tells the editors to start; the window opens after `--warmup`.
//!
//! Layout: [`proto`] (commands, scanning, reply parsing), [`join`].

pub mod join;
pub mod proto;

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::task::LocalSet;

use crate::clock::{mono_ns, to_instant};
use crate::driver::{
    CommonArgs, WorkerSpec, background_busy, check_alive, collect_reports, connect_all, cpu_window,
    percentiles_us, pin_self, print_line, round, runtime, sample, start_server_with, stop_server,
    stop_workers, wsedge_delta,
};
use crate::ipc::{Command, Event};
use crate::presence::stats_all;
use crate::procfs::{cpu_seconds, open_file_limit, rss_bytes};
use crate::target::{Target, metric_sum};
use crate::worker::Mode;
use proto::expected_deliveries;

/// The `[[namespace]]` table of the story namespace every collab workload
/// configures (the issue 9 contract), with `max_editors` when the
/// workload needs more than the default 10.
pub fn story_namespace(editors: u64) -> String {
    let mut t = String::from(
        "[[namespace]]\nname = \"story\"\ncollaboration = true\nhistory_size = 100\n\
         history_ttl = \"5m\"\nrecover = true\npresence = false\n",
    );
    if editors > 10 {
        t.push_str(&format!("max_editors = {editors}\n"));
    }
    t
}

/// Descriptors a wsedge process needs besides its client connections
/// (listeners, admin, event fds, log, Redis), with room to spare.
const SERVER_SPARE_FDS: u64 = 100;

/// `wsbench collab-fanout` / `collab-many`. Unset options take the
/// scenario's defaults (fanout / many).
#[derive(Debug, Clone, clap::Args)]
pub struct CollabArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Stories [fanout 1, many 1000].
    #[arg(long)]
    pub stories: Option<u64>,
    /// Editors per story [fanout 10, many 3].
    #[arg(long)]
    pub editors: Option<u64>,
    /// Viewers per story [fanout 5000, many 20].
    #[arg(long)]
    pub viewers: Option<u64>,
    /// Updates per second per editor [fanout 5, many 1].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Size of each update's `data` JSON, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Recorded seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of updates before the recording starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Most seconds to wait for in-flight deliveries after the window.
    #[arg(long, default_value_t = 5.0)]
    pub drain_s: f64,
    /// Most seconds to wait for the setup's join events to be delivered.
    #[arg(long, default_value_t = 120.0)]
    pub settle_limit_s: f64,
    /// The story channel (one story) or channel prefix (story k is
    /// `<prefix><k>`) [fanout `story:bench`, many `story:b`].
    #[arg(long)]
    pub channel: Option<String>,
}

/// Which collab load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Fanout,
    Many,
}

/// [`CollabArgs`] with the scenario's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    stories: u64,
    editors: u64,
    viewers: u64,
    rate: f64,
    channel: String,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "collab-fanout",
            Scenario::Many => "collab-many",
        }
    }

    fn plan(self, a: &CollabArgs) -> Plan {
        let (k, e, v, u, ch) = match self {
            Scenario::Fanout => (1, 10, 5000, 5.0, "story:bench"),
            Scenario::Many => (1000, 3, 20, 1.0, "story:b"),
        };
        Plan {
            stories: a.stories.unwrap_or(k),
            editors: a.editors.unwrap_or(e),
            viewers: a.viewers.unwrap_or(v),
            rate: a.rate.unwrap_or(u),
            channel: a.channel.clone().unwrap_or_else(|| ch.to_string()),
        }
    }
}

/// The `collab-fanout` / `collab-many` result line.
#[derive(Debug, Serialize)]
struct CollabResult {
    workload: &'static str,
    target: String,
    stories: u64,
    editors_per_story: u64,
    viewers_per_story: u64,
    rate_per_editor: f64,
    payload: usize,
    duration_s: f64,
    conns: u64,
    /// Updates sent with a send time in the window.
    updates_sent: u64,
    /// Of those, accepted (a successful reply).
    updates: u64,
    updates_per_s: f64,
    update_errors: u64,
    /// Updates sent (all) without any reply at the end.
    update_unanswered: u64,
    /// Replies whose version was not base_version + 1.
    version_mismatches: u64,
    duplicates: u64,
    /// Update events whose version did not follow the member's last one
    /// of that section (from its snapshot on) by exactly 1.
    version_skips: u64,
    /// Update pushes the viewers must receive: Σ stories accepted
    /// in-window updates × viewers.
    expected: u64,
    delivered: u64,
    losses: i64,
    delivered_per_s: f64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    lat_p999_us: f64,
    lat_max_us: f64,
    /// Editor-side update round trip (send to reply).
    ack_p50_us: f64,
    ack_p99_us: f64,
    ack_max_us: f64,
    server_cpu_s: f64,
    server_cpu_per_update_us: Option<f64>,
    server_cpu_per_delivery_ns: Option<f64>,
    server_core_busy: f64,
    gen_cpu_s: f64,
    gen_core_busy: f64,
    generator_saturated: bool,
    /// Server VmRSS before any connection, after the setup (joins
    /// delivered), after the window.
    rss_before: u64,
    rss_after_setup: u64,
    rss_end: u64,
    /// (rss_after_setup − rss_before) / connected: user-space memory per
    /// story member, stories included.
    rss_per_conn: f64,
    /// From the first connect to the last join event delivered.
    setup_s: f64,
    setup_server_cpu_s: f64,
    /// Join events one member received during the setup, on average.
    setup_events_per_conn: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames_per_write: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_consumer_drops: Option<u64>,
    /// The server's own publish-to-last-write delay over the window (upper
    /// bound of the bucket, ms), as for `fanout`: a tail here is the
    /// server's, not the generator's.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_write_p99_le_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_write_p999_le_ms: Option<f64>,
    /// wsedge's own figures: Δ`wsedge_collab_updates_total` over the
    /// window (≈ `updates`), `wsedge_collab_conflicts_total` at the end (0
    /// here: every editor writes its own section), and the gauges
    /// `wsedge_collab_members` / `wsedge_collab_stories` at the window's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_updates: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_conflicts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_members: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_stories: Option<u64>,
    conns_connected: u64,
    conns_failed: u64,
    conns_closed: u64,
    gaps: u64,
    out_of_order: u64,
    /// Update events without a parsable `t`.
    no_t: u64,
    workers: usize,
    shards: usize,
    background_busy: (f64, f64),
}

/// Runs `collab-fanout` and prints its JSON line.
pub fn collab_fanout(a: CollabArgs) -> Result<()> {
    run(a, Scenario::Fanout)
}

/// Runs `collab-many` and prints its JSON line.
pub fn collab_many(a: CollabArgs) -> Result<()> {
    run(a, Scenario::Many)
}

fn run(a: CollabArgs, sc: Scenario) -> Result<()> {
    pin_self(a.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, load_async(a, sc))
}

/// Waits until the members' non-update pushes (the setup's join events)
/// have not grown for 1 s, or `limit` passed; returns their count.
async fn settle(workers: &mut [crate::driver::Worker], limit: f64) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(limit);
    let (mut last, mut still) = (stats_all(workers).await?.other_pushes, 0);
    while still < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = stats_all(workers).await?.other_pushes;
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    if still < 5 {
        eprintln!("wsbench: join events still arriving after {limit} s; starting anyway");
    }
    Ok(last)
}

async fn load_async(a: CollabArgs, sc: Scenario) -> Result<()> {
    let c = &a.common;
    if c.target != Target::Wsedge {
        bail!(
            "{} runs on wsedge only (the baselines have no stories)",
            sc.name()
        );
    }
    let p = sc.plan(&a);
    if p.stories == 0 || p.editors == 0 || p.rate.is_nan() || p.rate <= 0.0 {
        bail!("--stories, --editors and --rate must be positive");
    }
    if a.duration <= 0.0 || a.warmup < 0.0 {
        bail!("--duration must be positive and --warmup non-negative");
    }
    let total = p.stories * (p.editors + p.viewers);
    // The server is one process: every member is one of its descriptors.
    if let Some(limit) = open_file_limit()
        && total + SERVER_SPARE_FDS > limit
    {
        bail!(
            "{total} story members exceed what one server process can hold: its open-file \
             limit is {limit} (inherited from here), less ~{SERVER_SPARE_FDS} for its own \
             descriptors; lower --stories or --viewers (e.g. --viewers {}) or raise the limit",
            ((limit - SERVER_SPARE_FDS) / p.stories).saturating_sub(p.editors)
        );
    }
    let background = background_busy(c, 1.0).await?;
    let mut server = start_server_with(c, None, "", &story_namespace(p.editors)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(server.pid)?;
    let cpu0 = cpu_seconds(server.pid)?;
    let spec = WorkerSpec {
        channel: &p.channel,
        channels: if p.stories == 1 { 0 } else { p.stories },
        mode: Mode::Collab,
        deflate: false,
        inflate_every: 1,
        collab_editors: p.editors,
        reconnect_to: Vec::new(),
    };
    let t_setup = mono_ns();
    let (mut workers, ready) = connect_all(c, &mut server, total, &spec, "story members").await?;
    let setup_events = settle(&mut workers, a.settle_limit_s).await?;
    // The settle ends 1 s after the last join event arrived.
    let setup_s = ((mono_ns() - t_setup) as f64 / 1e9 - 1.0).max(0.0);
    let setup_server_cpu_s = cpu_seconds(server.pid)? - cpu0;
    let rss_after_setup = rss_bytes(server.pid)?;
    check_alive(&mut server)?;

    let start_ns = mono_ns() + 300_000_000;
    let win_start = start_ns + (a.warmup * 1e9) as u64;
    let win_end = win_start + (a.duration * 1e9) as u64;
    for w in workers.iter_mut() {
        for cmd in [
            Command::Window {
                start_ns: win_start,
                end_ns: win_end,
            },
            Command::Publish {
                start_ns,
                end_ns: win_end,
                rate_per_conn: p.rate,
                payload: a.payload,
            },
        ] {
            match w.call(&cmd).await? {
                Event::Ack => {}
                other => bail!("worker {}: expected ack, got {other:?}", w.id),
            }
        }
    }
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    tokio::time::sleep_until(to_instant(win_start)).await;
    let s0 = sample(&server, &pids).await?;
    tokio::time::sleep_until(to_instant(win_end)).await;
    let s1 = sample(&server, &pids).await?;
    // Drain: until the in-window receipts stop growing for 0.5 s.
    let deadline = to_instant(win_end) + Duration::from_secs_f64(a.drain_s);
    let (mut last, mut still) = (0, 0);
    while still < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = stats_all(&mut workers).await?.received_in_window;
        still = if got == last { still + 1 } else { 0 };
        last = got;
    }
    let rss_end = rss_bytes(server.pid)?;
    check_alive(&mut server)?;
    let m = collect_reports(&mut workers).await?;

    let tot = &m.tot;
    let d = a.duration;
    let updates: u64 = tot.room_pubs.iter().sum();
    let expected = expected_deliveries(&tot.room_pubs, &tot.room_members);
    let delivered = tot.stats.received_in_window;
    let cpu = cpu_window(&s0, &s1, c, d);
    let wd = wsedge_delta(&s0, &s1);
    let (p50, p99, p999, max) = percentiles_us(&m.hist);
    let (a50, a99, _, amax) = percentiles_us(&m.ack_hist);
    let n = ready.ok.max(1) as f64;
    let metric = |m: &Option<String>, name: &str| m.as_deref().map(|t| metric_sum(t, name) as u64);
    let res = CollabResult {
        workload: sc.name(),
        target: c.target.to_string(),
        stories: p.stories,
        editors_per_story: p.editors,
        viewers_per_story: p.viewers,
        rate_per_editor: p.rate,
        payload: a.payload,
        duration_s: d,
        conns: total,
        updates_sent: tot.pubs_sent_in_window,
        updates,
        updates_per_s: round(updates as f64 / d, 1),
        update_errors: tot.pub_errors,
        update_unanswered: tot
            .pubs_sent
            .saturating_sub(tot.pubs_acked + tot.pub_errors),
        version_mismatches: tot.collab.version_mismatches,
        duplicates: tot.collab.duplicates,
        version_skips: tot.collab.version_skips,
        expected,
        delivered,
        losses: expected as i64 - delivered as i64,
        delivered_per_s: round(delivered as f64 / d, 1),
        lat_p50_us: p50,
        lat_p99_us: p99,
        lat_p999_us: p999,
        lat_max_us: max,
        ack_p50_us: a50,
        ack_p99_us: a99,
        ack_max_us: amax,
        server_cpu_s: round(cpu.server_cpu_s, 3),
        server_cpu_per_update_us: (updates > 0)
            .then(|| round(cpu.server_cpu_s * 1e6 / updates as f64, 2)),
        server_cpu_per_delivery_ns: (delivered > 0)
            .then(|| round(cpu.server_cpu_s * 1e9 / delivered as f64, 1)),
        server_core_busy: round(cpu.server_core_busy, 3),
        gen_cpu_s: round(cpu.gen_cpu_s, 2),
        gen_core_busy: round(cpu.gen_core_busy, 3),
        generator_saturated: cpu.generator_saturated,
        rss_before,
        rss_after_setup,
        rss_end,
        rss_per_conn: round((rss_after_setup as f64 - rss_before as f64) / n, 1),
        setup_s: round(setup_s, 2),
        setup_server_cpu_s: round(setup_server_cpu_s, 2),
        setup_events_per_conn: round(setup_events as f64 / n, 1),
        writes: wd.writes,
        frames_per_write: wd.frames_per_write,
        slow_consumer_drops: wd.slow_consumer_drops,
        server_write_p99_le_ms: wd.server_write_p99_le_ms,
        server_write_p999_le_ms: wd.server_write_p999_le_ms,
        server_updates: metric(&s1.metrics, "wsedge_collab_updates_total")
            .zip(metric(&s0.metrics, "wsedge_collab_updates_total"))
            .map(|(b, a)| b.saturating_sub(a)),
        server_conflicts: metric(&s1.metrics, "wsedge_collab_conflicts_total"),
        server_members: metric(&s1.metrics, "wsedge_collab_members"),
        server_stories: metric(&s1.metrics, "wsedge_collab_stories"),
        conns_connected: ready.ok,
        conns_failed: ready.failed,
        conns_closed: tot.stats.closed,
        gaps: tot.gaps,
        out_of_order: tot.out_of_order,
        no_t: tot.no_t,
        workers: workers.len(),
        shards: c.server.shards,
        background_busy: background,
    };
    print_line(&res)?;
    stop_workers(workers).await;
    stop_server(server).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_table() {
        let t = story_namespace(10);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "[[namespace]]",
                "name = \"story\"",
                "collaboration = true",
                "history_size = 100",
                "history_ttl = \"5m\"",
                "recover = true",
                "presence = false",
            ]
        );
        assert!(story_namespace(12).ends_with("presence = false\nmax_editors = 12\n"));
    }

    #[test]
    fn scenario_defaults() {
        let a = CollabArgs {
            common: CommonArgs {
                target: Target::Wsedge,
                workers: None,
                server: crate::target::TargetOpts {
                    wsedge_bin: "w".into(),
                    baseline_bin: None,
                    tungstenite_bin: None,
                    node_bin: "node".into(),
                    bun_bin: None,
                    server_cpu: 0,
                    shards: 1,
                    server_cores: None,
                    wsedge_config_extra: None,
                },
                gen_cpu: 1,
                concurrency: 256,
                timeout_s: 30,
            },
            stories: None,
            editors: None,
            viewers: Some(500),
            rate: None,
            payload: 100,
            duration: 10.0,
            warmup: 2.0,
            drain_s: 5.0,
            settle_limit_s: 120.0,
            channel: None,
        };
        assert_eq!(
            Scenario::Fanout.plan(&a),
            Plan {
                stories: 1,
                editors: 10,
                viewers: 500,
                rate: 5.0,
                channel: "story:bench".into()
            }
        );
        let m = Scenario::Many.plan(&a);
        assert_eq!((m.stories, m.editors, m.rate), (1000, 3, 1.0));
        assert_eq!(m.channel, "story:b");
    }
}
