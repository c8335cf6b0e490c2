//! `cluster-storm`: three nodes; C clients connect to `n2` and subscribe
//! with recovery to K channels `chat:0` … `chat:{K-1}` (client i to
//! `chat:{i % K}`), which are homed on all three nodes; a publisher on `n0`
//! publishes to every channel throughout. Then the driver SIGKILLs `n2`:
//! every client reconnects at once to `n0` or `n1` (alternating) and
//! resubscribes with `recover` from its last position (worker mode
//! `failover`). Measures how long until every client is subscribed again
//! and receiving, how many recovered, the survivors' CPU, and checks that
//! no client saw an unreported gap or a duplicate.
//!
//! With in-memory history the channels homed on `n2` lose their history
//! and epoch with it: their clients get `recovered: false` (reported, not
//! silent); the others must recover. `--history-backend jetstream` is for
//! a wsedge that keeps history in JetStream.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::LocalSet;

use super::{Cluster, ClusterCpu, ClusterOpts, cluster_cpu};
use crate::clock::mono_ns;
use crate::driver::{
    CommonArgs, PubCfg, PubData, Worker, WorkerSpec, background_busy, collect_reports, connect_all,
    open_publisher, pin_self, print_line, publisher, round, runtime, stop_workers,
};
use crate::ipc::{Command, Event, StormStatus};
use crate::placement::home_index;
use crate::storm::{merged_histograms, ms, status_all};
use crate::target::{metric_sum, scrape};
use crate::worker::Mode;

/// The node that holds every client and is killed.
const VICTIM: usize = 2;

/// `wsbench cluster-storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterStormArgs {
    /// Common options (`--target wsedge`).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Cluster options.
    #[command(flatten)]
    pub cluster: ClusterOpts,
    /// Clients, all on `n2` at first (one wsedge process must hold them
    /// all: below the 20,000 open-file limit).
    #[arg(long, default_value_t = 19_000)]
    pub conns: u64,
    /// Channels `chat:0` … `chat:{K-1}`; client i subscribes to `chat:{i % K}`.
    #[arg(long, default_value_t = 1000)]
    pub channels: u64,
    /// Every channel gets one publication per this many milliseconds
    /// (from a publisher on `n0`), from before the kill to the end.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Size of each publication's `data` JSON, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds of publishing before the kill.
    #[arg(long, default_value_t = 2.0)]
    pub steady_s: f64,
    /// Seconds to wait for every client to be back before giving up.
    #[arg(long, default_value_t = 60.0)]
    pub limit_s: f64,
}

/// The `cluster-storm` result line.
#[derive(Debug, Serialize)]
struct ClusterStormResult {
    workload: &'static str,
    target: String,
    nodes: usize,
    history_backend: String,
    conns: u64,
    channels: u64,
    interval_ms: u64,
    payload: usize,
    victim: String,
    /// Client address of every node (to read the stderr diagnostics, which
    /// name the address a client came back through).
    node_addrs: std::collections::BTreeMap<String, String>,
    /// Channels homed on the victim (placement over the three nodes).
    victim_channels: u64,
    /// Clients subscribed to those.
    victim_clients: u64,
    connected: u64,
    connect_failed: u64,
    steady_delivered_per_s: f64,
    steady_expected_per_s: f64,
    /// Connections lost when the victim died.
    dropped: u64,
    /// From the kill to the last connection noticing.
    t_lost_all_ms: f64,
    /// From the kill until the survivors' live set no longer holds the victim.
    t_live_set_ms: Option<f64>,
    /// From the kill to the last successful (re)subscribe reply.
    t_all_resubscribed_ms: f64,
    /// From the kill until every resubscribed client had a live publication.
    t_all_live_ms: f64,
    resubscribed: u64,
    recovered: u64,
    not_recovered: u64,
    /// Of `not_recovered`: clients of channels homed on the victim (expected
    /// with in-memory history) / of the others (must be 0).
    not_recovered_victim_homed: u64,
    not_recovered_other: u64,
    /// Of `recovered`: clients of channels homed on the victim.
    recovered_victim_homed: u64,
    failures: u64,
    live: u64,
    not_live: u64,
    /// Connections lost again after resubscribing (e.g. closed with 3004).
    lost_again: u64,
    /// Subscribes refused with 100 (temporary) and tried again.
    sub_retries: u64,
    /// Reconnection attempts that failed otherwise and were tried again.
    reconnect_errors: u64,
    recovered_pubs: u64,
    replay_gaps: u64,
    replay_dups: u64,
    push_gaps: u64,
    push_dups: u64,
    sub_p50_ms: f64,
    sub_p99_ms: f64,
    live_p50_ms: f64,
    live_p99_ms: f64,
    /// Survivors' connections at the end (`wsedge_connections`).
    survivor_conns: Vec<u64>,
    /// CPU from the kill until done (or `--limit-s`).
    storm_s: f64,
    storm_cpu: ClusterCpu,
    pubs: u64,
    pub_errors: u64,
    pub_temporary_errors: u64,
    /// Every client back and live; no failure, gap or duplicate; every
    /// client of a channel not homed on the victim recovered.
    ok: bool,
    /// Every client recovered (false with in-memory history: the victim's
    /// channels start a new epoch).
    all_recovered: bool,
    workers: usize,
    background_busy: (f64, f64),
}

/// Runs `cluster-storm` and prints its JSON line.
pub fn cluster_storm(args: ClusterStormArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, storm_async(args))
}

async fn storm_async(a: ClusterStormArgs) -> Result<()> {
    if a.channels == 0 || a.interval_ms == 0 {
        bail!("--channels and --interval-ms must be positive");
    }
    let background = background_busy(&a.common, 1.0).await?;
    let mut cl = Cluster::start(&a.common, &a.cluster, 3).await?;
    let res = run(&a, &mut cl, background).await;
    cl.stop().await;
    res
}

async fn received(workers: &mut [Worker]) -> Result<u64> {
    let mut n = 0;
    for w in workers.iter_mut() {
        n += w.stats().await?.received;
    }
    Ok(n)
}

async fn run(a: &ClusterStormArgs, cl: &mut Cluster, background: (f64, f64)) -> Result<()> {
    let c = &a.common;
    let node_addrs = cl
        .names
        .iter()
        .zip(&cl.nodes)
        .filter_map(|(n, s)| Some((n.clone(), s.as_ref()?.client.to_string())))
        .collect();
    let victim_homed: Vec<bool> = (0..a.channels)
        .map(|k| home_index(&format!("chat:{k}"), &cl.names) == Some(VICTIM))
        .collect();
    let victim_channels = victim_homed.iter().filter(|&&v| v).count() as u64;
    let victim_clients = (0..a.conns)
        .filter(|g| victim_homed[(g % a.channels) as usize])
        .count() as u64;
    eprintln!(
        "wsbench: {victim_channels} of {} channels homed on {}",
        a.channels, cl.names[VICTIM]
    );
    let spec = WorkerSpec {
        reconnect_to: vec![cl.node(0).client, cl.node(1).client],
        ..WorkerSpec::plain("chat:", a.channels, Mode::Failover)
    };
    let server = cl.nodes[VICTIM].as_mut().expect("running");
    let (mut workers, ready) = connect_all(c, server, a.conns, &spec, "clients on n2").await?;
    let publ = open_publisher(cl.node(0)).await?;
    let end = Rc::new(Cell::new(u64::MAX));
    let cfg = PubCfg {
        channels_json: (0..a.channels).map(|k| format!("\"chat:{k}\"")).collect(),
        data: PubData::Padded(a.payload),
        rate: Some(a.channels as f64 * 1000.0 / a.interval_ms as f64),
        window: 64,
        start_ns: u64::MAX,
        end_ns: end.clone(),
        drain: Duration::from_secs(3),
    };
    let pub_task = tokio::task::spawn_local(publisher(publ, cfg));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (r0, t0) = (received(&mut workers).await?, mono_ns());
    tokio::time::sleep(Duration::from_secs_f64(a.steady_s)).await;
    let (r1, t1) = (received(&mut workers).await?, mono_ns());
    let steady_per_s = (r1 - r0) as f64 / ((t1 - t0) as f64 / 1e9);
    cl.check_alive()?;

    // The kill: the workers note the time and their live connections,
    // then n2 dies.
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let s0 = cl.sample(&pids).await?;
    for w in workers.iter_mut() {
        match w.call(&Command::Drop).await? {
            Event::Ack => {}
            other => bail!("worker {}: expected ack, got {other:?}", w.id),
        }
    }
    let t_kill = mono_ns();
    let mut victim = cl.nodes[VICTIM].take().expect("running");
    victim.kill().await?;
    eprintln!("wsbench: killed n2 (pid {})", victim.pid);

    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.limit_s);
    let mut done = false;
    let mut st: Vec<StormStatus>;
    let mut t_live_set: Option<u64> = None;
    let mut last_print = mono_ns();
    let mut last_scrape = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = status_all(&mut workers).await?;
        if t_live_set.is_none() && mono_ns() - last_scrape > 100_000_000 {
            last_scrape = mono_ns();
            let mut gone = true;
            for i in 0..2 {
                let m = scrape(cl.node(i).admin.expect("admin")).await?;
                gone &= metric_sum(&m, "wsedge_cluster_nodes") as usize == 2;
            }
            if gone {
                t_live_set = Some(mono_ns());
            }
        }
        let sum = |f: fn(&StormStatus) -> u64| st.iter().map(f).sum::<u64>();
        let live_at_drop = sum(|s| s.live_at_drop);
        let (dropped, lost_now) = (sum(|s| s.dropped), sum(|s| s.lost_now));
        let (resub, failed, recv) = (
            sum(|s| s.resubscribed),
            sum(|s| s.failed),
            sum(|s| s.receiving),
        );
        if dropped >= live_at_drop
            && lost_now == 0
            && resub + failed >= live_at_drop
            && recv >= resub
        {
            done = true;
            break;
        }
        if mono_ns() - last_print > 2_000_000_000 {
            last_print = mono_ns();
            eprintln!(
                "wsbench: cluster-storm: lost {dropped}/{live_at_drop}, resubscribed {resub}, \
                 live {recv}, retries {} after {:.1} s",
                sum(|s| s.sub_retries),
                (mono_ns() - t_kill) as f64 / 1e9
            );
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        cl.check_alive()?;
    }
    let storm_s = (mono_ns() - t_kill) as f64 / 1e9;
    let s1 = cl.sample(&pids).await?;
    // A little more live traffic after the recovery, for gaps and repeats.
    tokio::time::sleep(Duration::from_millis(2 * a.interval_ms.min(2000))).await;
    end.set(mono_ns());
    let ps = pub_task.await.context("publisher task")??;
    cl.check_alive()?;
    if let Some(e) = &ps.first_error {
        eprintln!(
            "wsbench: {} publish error(s) ({} temporary), first: {e}",
            ps.errors, ps.temporary_errors
        );
    }
    let st = status_all(&mut workers).await?;
    let m = collect_reports(&mut workers).await?;
    let mut survivor_conns = Vec::new();
    for i in 0..2 {
        let text = scrape(cl.node(i).admin.expect("admin")).await?;
        survivor_conns.push(metric_sum(&text, "wsedge_connections") as u64);
    }

    let (mut rec_victim, mut not_rec_victim, mut not_rec_other) = (0, 0, 0);
    for (k, &v) in victim_homed.iter().enumerate() {
        let r = m.tot.channel_recovered.get(k).copied().unwrap_or(0);
        let n = m.tot.channel_not_recovered.get(k).copied().unwrap_or(0);
        if v {
            rec_victim += r;
            not_rec_victim += n;
        } else {
            not_rec_other += n;
        }
    }
    let sum = |f: fn(&StormStatus) -> u64| st.iter().map(f).sum::<u64>();
    let max_of = |f: fn(&StormStatus) -> u64| st.iter().map(f).max().unwrap_or(0);
    let since = |t: u64| {
        if t == 0 {
            0.0
        } else {
            ms(t.saturating_sub(t_kill))
        }
    };
    let (sub_h, recv_h) = merged_histograms(&st);
    let q = |h: &Histogram<u64>, p: f64| round(h.value_at_quantile(p) as f64 / 1e6, 1);
    let resub = sum(|s| s.resubscribed);
    let live = sum(|s| s.receiving);
    let (recovered, not_recovered) = (sum(|s| s.recovered), sum(|s| s.not_recovered));
    let failures = sum(|s| s.failed);
    let (replay_gaps, replay_dups) = (sum(|s| s.replay_gaps), sum(|s| s.replay_dups));
    let (push_gaps, push_dups) = (sum(|s| s.gaps), sum(|s| s.dups));
    let ok = done
        && failures == 0
        && replay_gaps + replay_dups + push_gaps + push_dups == 0
        && resub == ready.ok
        && live == resub
        && not_rec_other == 0;
    let res = ClusterStormResult {
        workload: "cluster-storm",
        target: c.target.to_string(),
        nodes: 3,
        history_backend: a.cluster.history_backend.name().to_string(),
        conns: a.conns,
        channels: a.channels,
        interval_ms: a.interval_ms,
        payload: a.payload,
        victim: cl.names[VICTIM].clone(),
        node_addrs,
        victim_channels,
        victim_clients,
        connected: ready.ok,
        connect_failed: ready.failed,
        steady_delivered_per_s: round(steady_per_s, 1),
        steady_expected_per_s: round(ready.ok as f64 * 1000.0 / a.interval_ms as f64, 1),
        dropped: sum(|s| s.dropped),
        t_lost_all_ms: since(max_of(|s| s.closed_all_ns)),
        t_live_set_ms: t_live_set.map(since),
        t_all_resubscribed_ms: since(max_of(|s| s.last_sub_ns)),
        t_all_live_ms: since(max_of(|s| s.last_recv_ns)),
        resubscribed: resub,
        recovered,
        not_recovered,
        not_recovered_victim_homed: not_rec_victim,
        not_recovered_other: not_rec_other,
        recovered_victim_homed: rec_victim,
        failures,
        live,
        not_live: resub - live.min(resub),
        lost_again: sum(|s| s.lost_again),
        sub_retries: sum(|s| s.sub_retries),
        reconnect_errors: sum(|s| s.reconnect_errors),
        recovered_pubs: sum(|s| s.recovered_pubs),
        replay_gaps,
        replay_dups,
        push_gaps,
        push_dups,
        sub_p50_ms: q(&sub_h, 0.5),
        sub_p99_ms: q(&sub_h, 0.99),
        live_p50_ms: q(&recv_h, 0.5),
        live_p99_ms: q(&recv_h, 0.99),
        survivor_conns,
        storm_s: round(storm_s, 2),
        storm_cpu: cluster_cpu(&s0, &s1, c, storm_s),
        pubs: ps.sent,
        pub_errors: ps.errors,
        pub_temporary_errors: ps.temporary_errors,
        ok,
        all_recovered: done && not_recovered == 0 && failures == 0,
        workers: workers.len(),
        background_busy: background,
    };
    print_line(&res)?;
    stop_workers(workers).await;
    Ok(())
}
