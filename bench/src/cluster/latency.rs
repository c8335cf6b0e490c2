//! `cluster-latency`: one publisher on `n0` publishing at a fixed rate to
//! a channel homed on `n0`; S subscribers on `n0` (local) and S on `n1`
//! (cross-node: each publication crosses NATS once to `n1`). Latency of
//! each group, the difference (what crossing nodes adds), and what NATS
//! carried per publication. Nodes `n2`… (with `--nodes 3`) have no
//! subscriber and must receive none of the channel's traffic.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::task::LocalSet;

use super::{Cluster, ClusterCpu, ClusterOpts, RECEIVED, SENT, cluster_cpu, node_delta};
use crate::clock::{mono_ns, to_instant};
use crate::driver::{
    CommonArgs, Merged, PubCfg, PubData, Worker, WorkerSpec, background_busy, collect_reports,
    connect_all, open_publisher, percentiles_us, pin_self, print_line, publisher, round, runtime,
    stop_workers,
};
use crate::ipc::{Command, Event, Ready};
use crate::placement::{channel_homed_at, home_index};
use crate::worker::Mode;

/// `wsbench cluster-latency`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterLatencyArgs {
    /// Common options (`--target wsedge`).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Cluster options.
    #[command(flatten)]
    pub cluster: ClusterOpts,
    /// Nodes (`n0`, `n1`, …; at least 2). Nodes beyond `n1` get no
    /// subscriber.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Subscribers on `n0`, the channel's home and the publisher's node.
    #[arg(long, default_value_t = 100)]
    pub local_subs: u64,
    /// Subscribers on `n1`.
    #[arg(long, default_value_t = 100)]
    pub remote_subs: u64,
    /// Publications per second, evenly spaced.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Size of each publication's `data` JSON, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Recorded seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds (published, not recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait for in-flight deliveries after the window.
    #[arg(long, default_value_t = 5.0)]
    pub drain_s: f64,
}

/// One group of subscribers (on one node).
#[derive(Debug, Serialize)]
struct Group {
    node: String,
    subs: u64,
    connected: u64,
    failed: u64,
    closed: u64,
    expected: u64,
    delivered: u64,
    losses: i64,
    gaps: u64,
    out_of_order: u64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    lat_p999_us: f64,
    lat_max_us: f64,
}

/// Per node, cluster messages over the window per publication.
#[derive(Debug, Serialize)]
struct NodeTraffic {
    /// `wsedge_cluster_messages_sent_total{kind}` Δ / publications
    /// (`publish`: on a channel's subject; `to_node`: to a node's home
    /// subject).
    sent_publish_per_pub: f64,
    sent_to_node_per_pub: f64,
    /// `wsedge_cluster_messages_received_total{kind}` Δ / publications.
    received_channel_per_pub: f64,
    received_home_per_pub: f64,
    /// Raw Δ over the window (heartbeats apart).
    sent_publish: u64,
    sent_to_node: u64,
    received_channel: u64,
    received_home: u64,
    heartbeats_sent: u64,
    heartbeats_received: u64,
}

/// The `cluster-latency` result line.
#[derive(Debug, Serialize)]
struct ClusterLatencyResult {
    workload: &'static str,
    target: String,
    nodes: usize,
    history_backend: String,
    channel: String,
    channel_home: String,
    local_subs: u64,
    remote_subs: u64,
    rate: f64,
    payload: usize,
    duration_s: f64,
    pubs: u64,
    pubs_acked: u64,
    pub_errors: u64,
    pub_unacked: u64,
    local: Option<Group>,
    remote: Option<Group>,
    /// remote − local at p50 / p99 (µs); `null` without both groups.
    added_p50_us: Option<f64>,
    added_p99_us: Option<f64>,
    added_p999_us: Option<f64>,
    /// `/varz` Δ over the window.
    nats_in_msgs: u64,
    nats_out_msgs: u64,
    nats_in_bytes: u64,
    nats_out_bytes: u64,
    nats_in_per_pub: f64,
    nats_out_per_pub: f64,
    /// The same without the nodes' heartbeats (Σ sent / received
    /// `kind="heartbeat"` over the window).
    nats_in_per_pub_net: f64,
    nats_out_per_pub_net: f64,
    nats_in_bytes_per_pub: f64,
    nats_out_bytes_per_pub: f64,
    /// Nodes with subscribers of the channel other than the home: one
    /// NATS delivery per publication each is the target.
    interested_remote_nodes: u64,
    per_node: BTreeMap<String, NodeTraffic>,
    /// Nodes without subscribers: Δ`received{kind="channel"}` +
    /// Δ`received{kind="home"}` over the window (must be 0).
    idle_nodes_received: BTreeMap<String, u64>,
    cpu: ClusterCpu,
    workers: usize,
    background_busy: (f64, f64),
}

/// Runs `cluster-latency` and prints its JSON line.
pub fn cluster_latency(args: ClusterLatencyArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, latency_async(args))
}

async fn connect_group(
    a: &ClusterLatencyArgs,
    cl: &mut Cluster,
    node: usize,
    subs: u64,
    channel: &str,
) -> Result<Option<(Vec<Worker>, Ready)>> {
    if subs == 0 {
        return Ok(None);
    }
    let spec = WorkerSpec::plain(channel, 0, Mode::Subscribe);
    let what = format!("subscribers on n{node}");
    let server = cl.nodes[node].as_mut().expect("running");
    Ok(Some(
        connect_all(&a.common, server, subs, &spec, &what).await?,
    ))
}

async fn window_all(groups: &mut [&mut Vec<Worker>], start_ns: u64, end_ns: u64) -> Result<()> {
    for ws in groups.iter_mut() {
        for w in ws.iter_mut() {
            match w.call(&Command::Window { start_ns, end_ns }).await? {
                Event::Ack => {}
                other => bail!("worker {}: expected ack, got {other:?}", w.id),
            }
        }
    }
    Ok(())
}

async fn received_in_window(ws: &mut [Worker]) -> Result<u64> {
    let mut n = 0;
    for w in ws.iter_mut() {
        n += w.stats().await?.received_in_window;
    }
    Ok(n)
}

fn group(node: &str, subs: u64, ready: &Ready, m: &Merged, pubs: u64) -> Group {
    let (p50, p99, p999, max) = percentiles_us(&m.hist);
    let expected = pubs * ready.ok;
    Group {
        node: node.to_string(),
        subs,
        connected: ready.ok,
        failed: ready.failed,
        closed: m.tot.stats.closed,
        expected,
        delivered: m.tot.stats.received_in_window,
        losses: expected as i64 - m.tot.stats.received_in_window as i64,
        gaps: m.tot.gaps,
        out_of_order: m.tot.out_of_order,
        lat_p50_us: p50,
        lat_p99_us: p99,
        lat_p999_us: p999,
        lat_max_us: max,
    }
}

async fn latency_async(a: ClusterLatencyArgs) -> Result<()> {
    let c = &a.common;
    if a.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if a.duration <= 0.0 || a.rate <= 0.0 || a.rate.is_nan() {
        bail!("--duration and --rate must be positive");
    }
    let background = background_busy(c, 1.0).await?;
    let mut cl = Cluster::start(c, &a.cluster, a.nodes).await?;
    let res = run(&a, &mut cl, background).await;
    cl.stop().await;
    res
}

async fn run(a: &ClusterLatencyArgs, cl: &mut Cluster, background: (f64, f64)) -> Result<()> {
    let c = &a.common;
    let channel = channel_homed_at("chat:lat-", 0, &cl.names);
    eprintln!(
        "wsbench: channel {channel}: home {}",
        cl.names[home_index(&channel, &cl.names).expect("nodes")]
    );
    let mut local = connect_group(a, cl, 0, a.local_subs, &channel).await?;
    let mut remote = connect_group(a, cl, 1, a.remote_subs, &channel).await?;
    let publ = open_publisher(cl.node(0)).await?;
    let start_ns = mono_ns() + (a.warmup * 1e9) as u64 + 50_000_000;
    let end_ns = start_ns + (a.duration * 1e9) as u64;
    {
        let mut groups: Vec<&mut Vec<Worker>> = local
            .iter_mut()
            .chain(remote.iter_mut())
            .map(|(w, _)| w)
            .collect();
        window_all(&mut groups, start_ns, end_ns).await?;
    }
    let cfg = PubCfg {
        channels_json: vec![serde_json::to_string(&channel)?],
        data: PubData::Padded(a.payload),
        rate: Some(a.rate),
        window: 64,
        start_ns,
        end_ns: Rc::new(Cell::new(end_ns)),
        drain: Duration::from_secs_f64(a.drain_s),
    };
    let pub_task = tokio::task::spawn_local(publisher(publ, cfg));
    let pids: Vec<u32> = local
        .iter()
        .chain(remote.iter())
        .flat_map(|(ws, _)| ws.iter().map(|w| w.pid))
        .collect();

    tokio::time::sleep_until(to_instant(start_ns)).await;
    let s0 = cl.sample(&pids).await?;
    tokio::time::sleep_until(to_instant(end_ns)).await;
    let s1 = cl.sample(&pids).await?;
    let ps = pub_task.await.context("publisher task")??;
    cl.check_alive()?;
    if let Some(e) = &ps.first_error {
        eprintln!("wsbench: {} publish error(s), first: {e}", ps.errors);
    }

    // Drain: every subscriber has every in-window publication, or time out.
    let deadline = to_instant(end_ns) + Duration::from_secs_f64(a.drain_s);
    for g in [&mut local, &mut remote].into_iter().flatten() {
        let expected = ps.in_window * g.1.ok;
        while received_in_window(&mut g.0).await? < expected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut local_m = None;
    if let Some((ws, ready)) = local.as_mut() {
        local_m = Some(group(
            "n0",
            a.local_subs,
            ready,
            &collect_reports(ws).await?,
            ps.in_window,
        ));
    }
    let mut remote_m = None;
    if let Some((ws, ready)) = remote.as_mut() {
        remote_m = Some(group(
            "n1",
            a.remote_subs,
            ready,
            &collect_reports(ws).await?,
            ps.in_window,
        ));
    }
    let added = |f: fn(&Group) -> f64| match (&local_m, &remote_m) {
        (Some(l), Some(r)) => Some(round(f(r) - f(l), 1)),
        _ => None,
    };

    let pubs = ps.in_window.max(1) as f64;
    let per = |x: f64| round(x / pubs, 3);
    let (v0, v1) = (s0.varz, s1.varz);
    let mut per_node = BTreeMap::new();
    let mut idle = BTreeMap::new();
    let (mut hb_sent, mut hb_recv) = (0.0, 0.0);
    for (i, name) in cl.names.iter().enumerate() {
        let d = |metric: &str, kind: &str| node_delta(&s0, &s1, i, metric, kind);
        hb_sent += d(SENT, "heartbeat");
        hb_recv += d(RECEIVED, "heartbeat");
        let t = NodeTraffic {
            sent_publish_per_pub: per(d(SENT, "publish")),
            sent_to_node_per_pub: per(d(SENT, "to_node")),
            received_channel_per_pub: per(d(RECEIVED, "channel")),
            received_home_per_pub: per(d(RECEIVED, "home")),
            sent_publish: d(SENT, "publish") as u64,
            sent_to_node: d(SENT, "to_node") as u64,
            received_channel: d(RECEIVED, "channel") as u64,
            received_home: d(RECEIVED, "home") as u64,
            heartbeats_sent: d(SENT, "heartbeat") as u64,
            heartbeats_received: d(RECEIVED, "heartbeat") as u64,
        };
        if i >= 2 {
            idle.insert(name.clone(), t.received_channel + t.received_home);
        }
        per_node.insert(name.clone(), t);
    }
    let in_msgs = v1.in_msgs - v0.in_msgs;
    let out_msgs = v1.out_msgs - v0.out_msgs;
    let workers = local
        .iter()
        .chain(remote.iter())
        .map(|(w, _)| w.len())
        .sum();
    let res = ClusterLatencyResult {
        workload: "cluster-latency",
        target: c.target.to_string(),
        nodes: a.nodes,
        history_backend: a.cluster.history_backend.name().to_string(),
        channel: channel.clone(),
        channel_home: "n0".to_string(),
        local_subs: a.local_subs,
        remote_subs: a.remote_subs,
        rate: a.rate,
        payload: a.payload,
        duration_s: a.duration,
        pubs: ps.in_window,
        pubs_acked: ps.acked,
        pub_errors: ps.errors,
        pub_unacked: ps.unacked,
        added_p50_us: added(|g| g.lat_p50_us),
        added_p99_us: added(|g| g.lat_p99_us),
        added_p999_us: added(|g| g.lat_p999_us),
        local: local_m,
        remote: remote_m,
        nats_in_msgs: in_msgs,
        nats_out_msgs: out_msgs,
        nats_in_bytes: v1.in_bytes - v0.in_bytes,
        nats_out_bytes: v1.out_bytes - v0.out_bytes,
        nats_in_per_pub: per(in_msgs as f64),
        nats_out_per_pub: per(out_msgs as f64),
        nats_in_per_pub_net: per(in_msgs as f64 - hb_sent),
        nats_out_per_pub_net: per(out_msgs as f64 - hb_recv),
        nats_in_bytes_per_pub: round((v1.in_bytes - v0.in_bytes) as f64 / pubs, 1),
        nats_out_bytes_per_pub: round((v1.out_bytes - v0.out_bytes) as f64 / pubs, 1),
        interested_remote_nodes: u64::from(a.remote_subs > 0),
        per_node,
        idle_nodes_received: idle,
        cpu: cluster_cpu(&s0, &s1, c, a.duration),
        workers,
        background_busy: background,
    };
    print_line(&res)?;
    for (ws, _) in [local, remote].into_iter().flatten() {
        stop_workers(ws).await;
    }
    Ok(())
}
