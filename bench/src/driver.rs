//! The driver: runs the `idle`, `fanout` and `compression` workloads end
//! to end and prints one JSON line per run, and the helpers the other
//! workloads ([`crate::rooms`], [`crate::storm`]) share: worker spawning,
//! the publisher, CPU sampling, noise check.

use std::cell::Cell;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};
use tokio::task::LocalSet;

use crate::clock::{mono_ns, to_instant};
use crate::conn::{Conn, Control, handle_control, open};
use crate::ipc::{Command, Event, Ready, Report, Stats};
use crate::payload::{build_publish, build_publish_rest, feed_items};
use crate::procfs::{CoreTimes, KernelMem, core_times, cpu_seconds, kernel_mem, rss_bytes};
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::target::{
    Server, Target, TargetOpts, metric_sum, scrape, tail, write_config, wsedge_config,
};
use crate::worker::{Mode, new_histogram};
use crate::wsclient::OP_TEXT;

/// Connections per worker when `--workers` is not given. Kept below
/// ~14,000: `connect()` picks ports of one parity first (half of the
/// 28,232-port range for one source address and destination), and beyond
/// that the kernel's port search makes connecting several times slower
/// (15,000 connections from one worker connected at half the rate).
pub const DEFAULT_CONNS_PER_WORKER: u64 = 10_000;
/// Hard cap per worker: each worker must stay below 19,000 descriptors
/// (the open-file limit is 20,000 and cannot be raised).
pub const MAX_CONNS_PER_WORKER: u64 = 18_900;

/// Options shared by every workload.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Server to benchmark.
    #[arg(long, value_enum)]
    pub target: Target,
    /// Worker processes (default: ceil(connections / 10,000)).
    #[arg(long)]
    pub workers: Option<u64>,
    /// Server binaries and pinning.
    #[command(flatten)]
    pub server: TargetOpts,
    /// CPU the driver and the workers are pinned to.
    #[arg(long, default_value_t = 1)]
    pub gen_cpu: usize,
    /// Handshakes in flight at once, per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds a connection may take from connect to subscribe reply.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
}

/// `wsbench idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections to open.
    #[arg(long)]
    pub conns: u64,
    /// Connection i subscribes to `idle:{i % channels}`.
    #[arg(long, default_value_t = 1000)]
    pub channels: u64,
    /// Seconds to let the server settle before the second RSS sample.
    #[arg(long, default_value_t = 3.0)]
    pub settle_s: f64,
}

/// `wsbench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Subscribers of the channel.
    #[arg(long)]
    pub subs: u64,
    /// Size of each publication's `data` JSON, in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Recorded seconds (after the warm-up).
    #[arg(long)]
    pub duration: f64,
    /// Publications per second, evenly spaced; default: flat out.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Flat out: most publications sent and not yet acknowledged.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Warm-up seconds (published, not recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait for in-flight deliveries after the window.
    #[arg(long, default_value_t = 5.0)]
    pub drain_s: f64,
    /// Channel all subscribers join.
    #[arg(long, default_value = "bench")]
    pub channel: String,
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `wsbench compression`: fan-out of realistic JSON items with and without
/// `permessage-deflate`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompressionArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Offer `permessage-deflate` from the subscribers (for wsedge, `off`
    /// also sets `WSEDGE_COMPRESSION=false`; node-ws gets `--compression
    /// on|off`).
    #[arg(long, value_enum)]
    pub deflate: OnOff,
    /// Subscribers of the channel.
    #[arg(long, default_value_t = 1000)]
    pub subs: u64,
    /// Approximate size of each feed item (`data`), bytes.
    #[arg(long, default_value_t = 1500)]
    pub item_bytes: usize,
    /// Different items cycled through (generated deterministically).
    #[arg(long, default_value_t = 64)]
    pub items: usize,
    /// Recorded seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Publications per second, evenly spaced; default: flat out.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Flat out: most publications sent and not yet acknowledged.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Warm-up seconds (published, not recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait for in-flight deliveries after the window.
    #[arg(long, default_value_t = 5.0)]
    pub drain_s: f64,
    /// Subscriber i inflates and verifies (offsets, latency, losses) only
    /// if i % N == 0; the others count compressed pushes by arrival time.
    /// Flat out, inflating every copy costs the generator more than the
    /// server spends sending it.
    #[arg(long, default_value_t = 1)]
    pub inflate_every: u64,
}

/// What the workers' connections do and where they subscribe.
pub(crate) struct WorkerSpec<'a> {
    /// Channel, or prefix when `channels` > 0.
    pub channel: &'a str,
    /// 0: all on `channel`; K: connection i on `{channel}{i % K}`.
    pub channels: u64,
    /// Worker mode.
    pub mode: Mode,
    /// Offer `permessage-deflate`.
    pub deflate: bool,
    /// See [`CompressionArgs::inflate_every`] (1 elsewhere).
    pub inflate_every: u64,
    /// `collab` mode: editors per story (0 elsewhere).
    pub collab_editors: u64,
    /// `failover` mode: where the connections reconnect (empty elsewhere).
    pub reconnect_to: Vec<SocketAddr>,
}

impl<'a> WorkerSpec<'a> {
    /// Connections without permessage-deflate.
    pub(crate) fn plain(channel: &'a str, channels: u64, mode: Mode) -> Self {
        Self {
            channel,
            channels,
            mode,
            deflate: false,
            inflate_every: 1,
            collab_editors: 0,
            reconnect_to: Vec::new(),
        }
    }
}

/// Pins the calling process (all its future threads) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("cpu index")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("sched_setaffinity")?;
    Ok(())
}

/// One worker process and its pipes.
pub(crate) struct Worker {
    /// Index (source address 127.0.0.(2+id)).
    pub id: usize,
    /// Process id.
    pub pid: u32,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    pub(crate) async fn send(&mut self, cmd: &Command) -> Result<()> {
        let mut s = serde_json::to_string(cmd)?;
        s.push('\n');
        self.stdin.write_all(s.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    pub(crate) async fn recv(&mut self) -> Result<Event> {
        let line = self
            .lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("worker {} exited unexpectedly", self.id))?;
        serde_json::from_str(&line).with_context(|| format!("worker {} sent {line:?}", self.id))
    }

    pub(crate) async fn call(&mut self, cmd: &Command) -> Result<Event> {
        self.send(cmd).await?;
        self.recv().await
    }

    pub(crate) async fn stats(&mut self) -> Result<Stats> {
        match self.call(&Command::Stats).await? {
            Event::Stats(s) => Ok(s),
            other => bail!("worker {}: expected stats, got {other:?}", self.id),
        }
    }
}

/// Splits `total` connections over `n` workers as evenly as possible.
fn plan(total: u64, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| total / n + u64::from(i < total % n))
        .collect()
}

fn worker_count(total: u64, asked: Option<u64>) -> Result<u64> {
    let n = asked
        .unwrap_or_else(|| total.div_ceil(DEFAULT_CONNS_PER_WORKER))
        .max(1);
    if n > 250 {
        bail!("at most 250 workers (source addresses 127.0.0.2-251)");
    }
    if total.div_ceil(n) > MAX_CONNS_PER_WORKER {
        bail!(
            "{} connections per worker exceeds {MAX_CONNS_PER_WORKER} (fd limit); use more --workers",
            total.div_ceil(n)
        );
    }
    Ok(n)
}

/// Spawns the workers (pinned to `gen_cpu`), each opening its share of
/// `total` connections from its own source address 127.0.0.(2+w).
pub(crate) async fn spawn_workers(
    c: &CommonArgs,
    server: SocketAddr,
    total: u64,
    spec: &WorkerSpec<'_>,
) -> Result<Vec<Worker>> {
    let n = worker_count(total, c.workers)?;
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    let mut base = 0;
    for (i, count) in plan(total, n).into_iter().enumerate() {
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
        let mut cmd = Process::new("taskset");
        cmd.arg("-c")
            .arg(c.gen_cpu.to_string())
            .arg(&exe)
            .arg("worker")
            .args(["--server", &server.to_string()])
            .args(["--src", &src.to_string()])
            .args(["--conns", &count.to_string()])
            .args(["--base", &base.to_string()])
            .args(["--total", &total.to_string()])
            .args(["--channel", spec.channel])
            .args(["--channels", &spec.channels.to_string()])
            .args(["--concurrency", &c.concurrency.to_string()])
            .args(["--timeout-s", &c.timeout_s.to_string()])
            .args([
                "--mode",
                match spec.mode {
                    Mode::Subscribe => "subscribe",
                    Mode::Rooms => "rooms",
                    Mode::Storm => "storm",
                    Mode::Recover => "recover",
                    Mode::Failover => "failover",
                    Mode::Collab => "collab",
                },
            ]);
        if spec.mode == Mode::Collab {
            cmd.args(["--collab-editors", &spec.collab_editors.to_string()]);
        }
        if !spec.reconnect_to.is_empty() {
            let to: Vec<String> = spec.reconnect_to.iter().map(|a| a.to_string()).collect();
            cmd.args(["--reconnect-to", &to.join(",")]);
        }
        if spec.deflate {
            cmd.arg("--deflate");
            cmd.args(["--inflate-every", &spec.inflate_every.max(1).to_string()]);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning a worker")?;
        let pid = child.id().ok_or_else(|| anyhow!("worker exited at once"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        workers.push(Worker {
            id: i,
            pid,
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
        base += count;
    }
    Ok(workers)
}

/// Waits for every worker's [`Ready`] and merges them.
pub(crate) async fn wait_ready(workers: &mut [Worker]) -> Result<Ready> {
    let mut all = Ready {
        first_connect_ns: u64::MAX,
        ..Ready::default()
    };
    for w in workers.iter_mut() {
        match w.recv().await? {
            Event::Ready(r) => {
                all.ok += r.ok;
                all.failed += r.failed;
                all.first_connect_ns = all.first_connect_ns.min(r.first_connect_ns);
                all.last_ready_ns = all.last_ready_ns.max(r.last_ready_ns);
                for e in r.errors {
                    if all.errors.len() < 10 && !all.errors.contains(&e) {
                        all.errors.push(e);
                    }
                }
            }
            other => bail!("worker {}: expected ready, got {other:?}", w.id),
        }
    }
    if !all.errors.is_empty() {
        eprintln!(
            "wsbench: {} connection(s) failed; errors: {:?}",
            all.failed, all.errors
        );
    }
    Ok(all)
}

/// Tells every worker to exit (killing it after 10 s).
pub(crate) async fn stop_workers(workers: Vec<Worker>) {
    for mut w in workers {
        let _ = w.send(&Command::Exit).await;
        drop(w.stdin);
        if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.kill().await;
        }
    }
}

/// SIGTERM to the server (SIGKILL after 15 s); prints its log tail if it
/// did not exit cleanly.
pub(crate) async fn stop_server(server: Server) {
    let log = server.log.clone();
    let target = server.target;
    match server.stop(Duration::from_secs(15)).await {
        Ok((st, forced)) => {
            use std::os::unix::process::ExitStatusExt as _;
            // The baseline has no SIGTERM handler: dying of it is its clean exit.
            let clean = st.success() || st.signal() == Some(nix::libc::SIGTERM);
            if forced || !clean {
                eprintln!(
                    "wsbench: {target} exit: {st}{}; log {}:\n{}",
                    if forced {
                        " (killed after SIGTERM grace)"
                    } else {
                        ""
                    },
                    log.display(),
                    tail(&log, 15)
                );
            } else {
                eprintln!("wsbench: {target} stopped cleanly; log {}", log.display());
            }
        }
        Err(e) => eprintln!("wsbench: stopping {target}: {e:#}"),
    }
}

/// Fails (with the log tail) if the server has exited.
pub(crate) fn check_alive(server: &mut Server) -> Result<()> {
    if let Some(st) = server.exited() {
        bail!(
            "{} exited during the run ({st}); log {}:\n{}",
            server.target,
            server.log.display(),
            tail(&server.log, 30)
        );
    }
    Ok(())
}

/// Starts the server under test (see [`Server::start`]) and says where.
pub(crate) async fn start_server(c: &CommonArgs, deflate: Option<bool>) -> Result<Server> {
    start_server_with(c, deflate, "", "").await
}

/// [`start_server`] with a wsedge configuration file: `top` (top-level
/// keys), `--wsedge-config-extra`, then `tables` (`[[namespace]]` tables);
/// no file when all three are empty.
pub(crate) async fn start_server_with(
    c: &CommonArgs,
    deflate: Option<bool>,
    top: &str,
    tables: &str,
) -> Result<Server> {
    let text = wsedge_config(top, c.server.wsedge_config_extra.as_deref(), tables);
    let path = if text.is_empty() {
        None
    } else {
        let p = write_config(&text)?;
        eprintln!(
            "wsbench: wsedge config {}:\n{}",
            p.display(),
            text.trim_end()
        );
        Some(p)
    };
    let server = Server::start(c.target, &c.server, deflate, path.as_deref()).await?;
    eprintln!(
        "wsbench: {} pid {} on {} (log {})",
        c.target,
        server.pid,
        server.client,
        server.log.display()
    );
    Ok(server)
}

/// Spawns the workers for `n` connections as `spec` says, waits until all
/// are set up, checks the server survived it and says how long it took.
pub(crate) async fn connect_all(
    c: &CommonArgs,
    server: &mut Server,
    n: u64,
    spec: &WorkerSpec<'_>,
    what: &str,
) -> Result<(Vec<Worker>, Ready)> {
    let mut workers = spawn_workers(c, server.client, n, spec).await?;
    let ready = wait_ready(&mut workers).await?;
    check_alive(server)?;
    eprintln!(
        "wsbench: {} {what} ready ({} failed) in {:.2} s",
        ready.ok,
        ready.failed,
        ready.last_ready_ns.saturating_sub(ready.first_connect_ns) as f64 / 1e9
    );
    Ok((workers, ready))
}

/// The publisher's own connection, from 127.0.0.1 (the workers use
/// 127.0.0.2 and up), not subscribed to anything.
pub(crate) async fn open_publisher(server: &Server) -> Result<Conn> {
    open(
        server.client,
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        u64::MAX / 3,
        None,
        false,
    )
    .await
    .context("opening the publisher connection")
}

/// Busy fraction of the server and generator CPUs over `secs` before the
/// run starts: anything above a few percent is foreign load that will
/// distort the results (a warning goes to stderr).
pub(crate) async fn background_busy(c: &CommonArgs, secs: f64) -> Result<(f64, f64)> {
    let s0 = (core_times(c.server.server_cpu)?, core_times(c.gen_cpu)?);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let s1 = (core_times(c.server.server_cpu)?, core_times(c.gen_cpu)?);
    let b = (
        round(s1.0.busy_since(&s0.0), 3),
        round(s1.1.busy_since(&s0.1), 3),
    );
    if b.0 > 0.05 || b.1 > 0.05 {
        eprintln!(
            "wsbench: WARNING the CPUs are already busy before the run (cpu{} {:.0}%, cpu{} {:.0}%): \
             other processes will distort the results",
            c.server.server_cpu,
            b.0 * 100.0,
            c.gen_cpu,
            b.1 * 100.0
        );
    }
    Ok(b)
}

/// Prints one JSON result line on stdout.
pub(crate) fn print_line<T: Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Rounds to `digits` decimals.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// A current-thread tokio runtime.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// Kernel memory breakdown printed with the idle result.
#[derive(Debug, Serialize)]
struct KernelDetail {
    before: KernelMem,
    after: KernelMem,
}

/// The `idle` result line.
#[derive(Debug, Serialize)]
struct IdleResult {
    workload: &'static str,
    target: String,
    conns: u64,
    rss_before: u64,
    rss_after: u64,
    rss_per_conn: f64,
    kernel_before: u64,
    kernel_after: u64,
    kernel_per_conn: f64,
    connect_rate: f64,
    elapsed_s: f64,
    connected: u64,
    failed: u64,
    closed_while_idle: u64,
    connect_server_cpu_s: f64,
    connect_gen_cpu_s: f64,
    workers: usize,
    background_busy: (f64, f64),
    kernel_detail: KernelDetail,
    /// The server's system calls during the connect phase
    /// (`WSBENCH_COUNT_SYSCALLS=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_syscalls: Option<crate::syscalls::SyscallCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_syscalls_per_conn: Option<f64>,
    /// Kernel memory of the waits (epoll items, io_uring requests) per
    /// connection; not in `kernel_per_conn`.
    kernel_wait_per_conn: f64,
}

/// Runs the `idle` workload and prints its JSON line.
pub fn idle(args: IdleArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    runtime()?.block_on(idle_async(args))
}

async fn idle_async(a: IdleArgs) -> Result<()> {
    let c = &a.common;
    let background = background_busy(c, 1.0).await?;
    let mut server = start_server(c, None).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(server.pid)?;
    let kernel_before = kernel_mem()?;

    let server_cpu0 = cpu_seconds(server.pid)?;
    let spec = WorkerSpec::plain("idle:", a.channels.max(1), Mode::Subscribe);
    let counter = crate::syscalls::SyscallCounter::start(server.pid);
    let (mut workers, ready) = connect_all(c, &mut server, a.conns, &spec, "connections").await?;
    let connect_server_cpu_s = cpu_seconds(server.pid)? - server_cpu0;
    let syscalls = counter.and_then(crate::syscalls::SyscallCounter::stop);
    let mut connect_gen_cpu_s = 0.0;
    for w in &workers {
        connect_gen_cpu_s += cpu_seconds(w.pid)?;
    }
    let elapsed_s = ready.last_ready_ns.saturating_sub(ready.first_connect_ns) as f64 / 1e9;

    tokio::time::sleep(Duration::from_secs_f64(a.settle_s)).await;
    let rss_after = rss_bytes(server.pid)?;
    let kernel_after = kernel_mem()?;
    let mut closed = 0;
    for w in workers.iter_mut() {
        closed += w.stats().await?.closed;
    }
    check_alive(&mut server)?;

    let n = ready.ok.max(1) as f64;
    let res = IdleResult {
        workload: "idle",
        target: c.target.to_string(),
        conns: a.conns,
        rss_before,
        rss_after,
        rss_per_conn: round((rss_after as f64 - rss_before as f64) / n, 1),
        kernel_before: kernel_before.total(),
        kernel_after: kernel_after.total(),
        kernel_per_conn: round(
            (kernel_after.total() as f64 - kernel_before.total() as f64) / n,
            1,
        ),
        connect_rate: round(ready.ok as f64 / elapsed_s.max(1e-9), 1),
        elapsed_s: round(elapsed_s, 3),
        connected: ready.ok,
        failed: ready.failed,
        closed_while_idle: closed,
        connect_server_cpu_s: round(connect_server_cpu_s, 2),
        connect_gen_cpu_s: round(connect_gen_cpu_s, 2),
        workers: workers.len(),
        background_busy: background,
        kernel_detail: KernelDetail {
            before: kernel_before,
            after: kernel_after,
        },
        kernel_wait_per_conn: round(
            (kernel_after.wait as f64 - kernel_before.wait as f64) / n,
            1,
        ),
        connect_syscalls_per_conn: syscalls.as_ref().map(|s| round(s.total as f64 / n, 2)),
        connect_syscalls: syscalls,
    };
    print_line(&res)?;
    stop_workers(workers).await;
    stop_server(server).await;
    Ok(())
}

/// What the publisher did.
#[derive(Debug, Default)]
pub(crate) struct PubStats {
    /// Publications sent.
    pub sent: u64,
    /// Publish error replies.
    pub errors: u64,
    /// Of those, error 100 (temporary).
    pub temporary_errors: u64,
    /// The first error reply.
    pub first_error: Option<String>,
    /// Unacknowledged after the drain.
    pub unacked: u64,
    /// Publications sent with `t` in the window.
    pub in_window: u64,
    first_win_id: Option<u64>,
    last_win_id: u64,
    /// Lowest offset acknowledged for an in-window publication.
    pub lo: Option<u64>,
    /// Highest offset acknowledged for an in-window publication.
    pub hi: Option<u64>,
    /// Publish replies (success).
    pub acked: u64,
}

/// What each publication's `data` is.
#[derive(Debug, Clone)]
pub(crate) enum PubData {
    /// `{"t":..,"p":"xx…"}` padded to this many bytes.
    Padded(usize),
    /// `{"t":..,<item>` cycling through these feed items.
    Items(Rc<Vec<String>>),
}

/// Publisher settings.
pub(crate) struct PubCfg {
    /// The channels, JSON-quoted: publication k goes to the (k mod n)-th.
    pub channels_json: Vec<String>,
    /// The `data` of each publication.
    pub data: PubData,
    /// Publications per second, or flat out.
    pub rate: Option<f64>,
    /// Flat out: unacknowledged publishes at most.
    pub window: usize,
    /// Window start (`CLOCK_MONOTONIC` ns).
    pub start_ns: u64,
    /// Publishing stops at this time; may be moved earlier while running.
    pub end_ns: Rc<Cell<u64>>,
    /// How long to wait for the last acknowledgements.
    pub drain: Duration,
}

/// Publishes until `end_ns`, then waits (up to `drain`) for the last acks.
pub(crate) async fn publisher(mut c: Conn, cfg: PubCfg) -> Result<PubStats> {
    let mut st = PubStats::default();
    let mut next_id: u64 = 2;
    let mut inflight: u64 = 0;
    let mut msg = Vec::with_capacity(4096);
    let t0 = mono_ns();
    let period_ns = cfg.rate.map(|r| 1e9 / r);
    let mut scheduled: u64 = 0;

    let process =
        |c: &mut Conn, h: &crate::wsclient::FrameHeader, st: &mut PubStats, inflight: &mut u64| {
            for_each_object(c.reader.payload(h), |o| match classify(o) {
                ServerMsg::Reply { id, offset } if id >= 2 => {
                    *inflight = inflight.saturating_sub(1);
                    st.acked += 1;
                    if let (Some(first), Some(off)) = (st.first_win_id, offset)
                        && id >= first
                        && id <= st.last_win_id
                    {
                        st.lo = Some(st.lo.map_or(off, |l| l.min(off)));
                        st.hi = Some(st.hi.map_or(off, |h| h.max(off)));
                    }
                }
                ServerMsg::Error { code, .. } => {
                    *inflight = inflight.saturating_sub(1);
                    st.errors += 1;
                    if code == 100 {
                        st.temporary_errors += 1;
                    }
                    if st.first_error.is_none() {
                        st.first_error = Some(String::from_utf8_lossy(o).into_owned());
                    }
                }
                _ => {}
            });
        };

    loop {
        let end_ns = cfg.end_ns.get();
        let stop = to_instant(end_ns);
        let now = mono_ns();
        if now >= end_ns {
            break;
        }
        // Send what is due.
        loop {
            let due = match period_ns {
                None => inflight < cfg.window as u64,
                Some(p) => (t0 as f64 + scheduled as f64 * p) as u64 <= mono_ns(),
            };
            if !due {
                break;
            }
            let t = mono_ns();
            if t >= end_ns {
                break;
            }
            let channel_json =
                &cfg.channels_json[(st.sent % cfg.channels_json.len() as u64) as usize];
            msg.clear();
            match &cfg.data {
                PubData::Padded(n) => build_publish(&mut msg, next_id, channel_json, t, *n),
                PubData::Items(items) => build_publish_rest(
                    &mut msg,
                    next_id,
                    channel_json,
                    t,
                    &items[(next_id as usize) % items.len()],
                ),
            }
            c.writer.queue(OP_TEXT, &msg);
            if t >= cfg.start_ns {
                st.first_win_id.get_or_insert(next_id);
                st.last_win_id = next_id;
                st.in_window += 1;
            }
            next_id += 1;
            st.sent += 1;
            inflight += 1;
            scheduled += 1;
            if c.writer.queued() >= 64 * 1024 {
                break;
            }
        }
        c.writer.flush().await?;
        let wake = match period_ns {
            Some(p) => to_instant((t0 as f64 + scheduled as f64 * p) as u64).min(stop),
            None => stop,
        };
        tokio::select! {
            biased;
            h = c.reader.next_frame() => {
                let mut h = h?;
                loop {
                    if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
                        if let Control::Closed(code) = ctl {
                            bail!("publisher connection closed by the server (code {code})");
                        }
                    } else {
                        process(&mut c, &h, &mut st, &mut inflight);
                        c.reader.consume(&h);
                    }
                    if !c.reader.has_frame() {
                        break;
                    }
                    h = c.reader.next_frame().await?;
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    // Drain the remaining acknowledgements.
    let deadline = tokio::time::Instant::now() + cfg.drain;
    while inflight > 0 {
        tokio::select! {
            h = c.reader.next_frame() => {
                let h = h?;
                if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
                    if let Control::Closed(code) = ctl {
                        bail!("publisher connection closed by the server (code {code})");
                    }
                } else {
                    process(&mut c, &h, &mut st, &mut inflight);
                    c.reader.consume(&h);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    st.unacked = inflight;
    Ok(st)
}

/// CPU and metrics at one instant.
pub(crate) struct Sample {
    server_cpu: f64,
    gen_cpu: f64,
    cores: Vec<CoreTimes>,
    /// wsedge's `/metrics` text.
    pub metrics: Option<String>,
}

/// Samples CPU times (server, generator = driver + workers, every core)
/// and, for wsedge, `/metrics`.
pub(crate) async fn sample(server: &Server, worker_pids: &[u32]) -> Result<Sample> {
    let mut cores = Vec::new();
    for cpu in 0..crate::procfs::cpus_online() {
        cores.push(core_times(cpu)?);
    }
    let server_cpu = cpu_seconds(server.pid)?;
    let mut gen_cpu = cpu_seconds(std::process::id())?;
    for &p in worker_pids {
        gen_cpu += cpu_seconds(p)?;
    }
    let metrics = match server.admin {
        Some(a) if server.target == Target::Wsedge => Some(scrape(a).await?),
        _ => None,
    };
    Ok(Sample {
        server_cpu,
        gen_cpu,
        cores,
        metrics,
    })
}

/// CPU use between two [`Sample`]s.
#[derive(Debug, Clone)]
pub(crate) struct CpuWindow {
    /// Server utime + stime, s.
    pub server_cpu_s: f64,
    /// Driver + workers utime + stime, s.
    pub gen_cpu_s: f64,
    /// Busy fraction of every CPU (softirq included).
    pub cores_busy: Vec<f64>,
    /// Σ busy fraction over the server's CPUs.
    pub server_core_busy: f64,
    /// Busy fraction of the generator's CPU.
    pub gen_core_busy: f64,
    /// Busy seconds of the server's CPUs, minus the generator's CPU time
    /// when it shares one of them (`--shards 2`).
    pub server_core_s: f64,
    /// Generator CPU time / all busy CPU time.
    pub gen_share: f64,
    /// The generator (not the server) limits the run.
    pub generator_saturated: bool,
}

/// CPU use between samples `s0` and `s1`, `secs` apart.
pub(crate) fn cpu_window(s0: &Sample, s1: &Sample, c: &CommonArgs, secs: f64) -> CpuWindow {
    let cores_busy: Vec<f64> = s1
        .cores
        .iter()
        .zip(&s0.cores)
        .map(|(b, a)| b.busy_since(a))
        .collect();
    let server_cpus = c.server.server_cpus();
    let server_core_busy: f64 = server_cpus.iter().filter_map(|&i| cores_busy.get(i)).sum();
    let gen_core_busy = cores_busy.get(c.gen_cpu).copied().unwrap_or(0.0);
    let gen_cpu_s = s1.gen_cpu - s0.gen_cpu;
    let shared = server_cpus.contains(&c.gen_cpu);
    let server_core_s = (server_core_busy * secs - if shared { gen_cpu_s } else { 0.0 }).max(0.0);
    let all_busy_s: f64 = cores_busy.iter().sum::<f64>() * secs;
    CpuWindow {
        server_cpu_s: s1.server_cpu - s0.server_cpu,
        gen_cpu_s,
        cores_busy: cores_busy.iter().map(|b| round(*b, 3)).collect(),
        server_core_busy,
        gen_core_busy,
        server_core_s,
        gen_share: if all_busy_s > 0.0 {
            gen_cpu_s / all_busy_s
        } else {
            0.0
        },
        generator_saturated: gen_cpu_s >= 0.95 * secs || gen_core_busy >= 0.95,
    }
}

/// Sums the lines of metric `name` whose labels contain `label`.
pub(crate) fn metric_labeled(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') && r.contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// wsedge figures over a window, from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WsedgeDelta {
    /// Δ`wsedge_socket_writes_total`.
    pub writes: Option<u64>,
    /// Δframes / Δwrites.
    pub frames_per_write: Option<f64>,
    /// `wsedge_slow_consumer_drops_total` at the end.
    pub slow_consumer_drops: Option<u64>,
    /// Δ`wsedge_publication_encodes_total{kind="json_deflate"}`.
    pub json_deflate_encodes: Option<u64>,
    /// The server's own publish-to-last-write latency over the window,
    /// from `wsedge_publish_to_write_seconds`: the upper bound (ms) of the
    /// bucket holding the 99th / 99.9th percentile (buckets double from
    /// 50 µs). Tells server-side delay apart from the generator's.
    pub server_write_p99_le_ms: Option<f64>,
    pub server_write_p999_le_ms: Option<f64>,
}

/// Cumulative bucket counts of histogram `name`, summed over label sets
/// (shards), by upper bound.
fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = l
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|v| {
                if v == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    v.parse().ok()
                }
            })
        else {
            continue;
        };
        let Some(n) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        match by_le.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += n,
            None => by_le.push((le, n)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// Upper bound (ms) of the bucket holding quantile `q` of the
/// observations made between `m0` and `m1`.
fn histogram_quantile_le_ms(m0: &str, m1: &str, name: &str, q: f64) -> Option<f64> {
    let (b0, b1) = (histogram_buckets(m0, name), histogram_buckets(m1, name));
    let delta: Vec<(f64, f64)> = b1
        .iter()
        .map(|&(le, c1)| {
            let c0 = b0.iter().find(|(b, _)| *b == le).map_or(0.0, |x| x.1);
            (le, c1 - c0)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| {
        if le.is_finite() {
            round(le * 1000.0, 3)
        } else {
            f64::INFINITY
        }
    })
}

const LATENCY: &str = "wsedge_publish_to_write_seconds";

/// wsedge's counters between two samples (all `None` for the baselines).
pub(crate) fn wsedge_delta(s0: &Sample, s1: &Sample) -> WsedgeDelta {
    match (&s0.metrics, &s1.metrics) {
        (Some(m0), Some(m1)) => {
            let d = |name: &str| metric_sum(m1, name) - metric_sum(m0, name);
            let w = d("wsedge_socket_writes_total");
            let f = d("wsedge_frames_sent_total");
            let enc =
                |m: &str| metric_labeled(m, "wsedge_publication_encodes_total", "json_deflate");
            WsedgeDelta {
                writes: Some(w as u64),
                frames_per_write: Some(if w > 0.0 { round(f / w, 2) } else { 0.0 }),
                slow_consumer_drops: Some(metric_sum(m1, "wsedge_slow_consumer_drops_total") as u64),
                json_deflate_encodes: Some((enc(m1) - enc(m0)) as u64),
                server_write_p99_le_ms: histogram_quantile_le_ms(m0, m1, LATENCY, 0.99),
                server_write_p999_le_ms: histogram_quantile_le_ms(m0, m1, LATENCY, 0.999),
            }
        }
        _ => WsedgeDelta::default(),
    }
}

/// Merged worker reports.
#[derive(Debug)]
pub(crate) struct Merged {
    /// Summed counters (and concatenated per-room vectors summed).
    pub tot: Report,
    /// Merged latency histogram.
    pub hist: Histogram<u64>,
    /// Lowest / highest in-window offset seen.
    pub offsets: (u64, u64),
    /// `collab-*`: merged editor `update` round-trip histogram (ns).
    pub ack_hist: Histogram<u64>,
}

/// Collects and merges every worker's [`Report`]; prints their errors.
pub(crate) async fn collect_reports(workers: &mut [Worker]) -> Result<Merged> {
    let mut hist: Histogram<u64> = new_histogram();
    let mut ack_hist: Histogram<u64> = new_histogram();
    let mut tot = Report::default();
    let (mut min_off, mut max_off) = (u64::MAX, 0u64);
    for w in workers.iter_mut() {
        let r = match w.call(&Command::Report).await? {
            Event::Report(r) => r,
            other => bail!("worker {}: expected report, got {other:?}", w.id),
        };
        for (v, n) in &r.hist {
            hist.saturating_record_n(*v, *n);
        }
        for (v, n) in &r.collab.ack_hist {
            ack_hist.saturating_record_n(*v, *n);
        }
        tot.collab.add_counts(&r.collab);
        tot.stats.received += r.stats.received;
        tot.stats.received_in_window += r.stats.received_in_window;
        tot.stats.received_during_window += r.stats.received_during_window;
        tot.stats.closed += r.stats.closed;
        tot.stats.bytes += r.stats.bytes;
        tot.stats.bytes_during_window += r.stats.bytes_during_window;
        tot.gaps += r.gaps;
        tot.out_of_order += r.out_of_order;
        tot.no_t += r.no_t;
        tot.deflate_conns += r.deflate_conns;
        tot.compressed_msgs += r.compressed_msgs;
        tot.pubs_sent += r.pubs_sent;
        tot.pubs_sent_in_window += r.pubs_sent_in_window;
        tot.pubs_acked += r.pubs_acked;
        tot.pub_errors += r.pub_errors;
        for (dst, src) in [
            (&mut tot.room_pubs, &r.room_pubs),
            (&mut tot.room_members, &r.room_members),
            (&mut tot.channel_recovered, &r.channel_recovered),
            (&mut tot.channel_not_recovered, &r.channel_not_recovered),
        ] {
            if dst.len() < src.len() {
                dst.resize(src.len(), 0);
            }
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
        min_off = min_off.min(r.min_offset.unwrap_or(u64::MAX));
        max_off = max_off.max(r.max_offset.unwrap_or(0));
        for (k, v) in r.closes {
            eprintln!("wsbench: worker {}: {v} connection(s) ended: {k}", w.id);
        }
        for e in r.errors {
            eprintln!("wsbench: worker {}: error: {e}", w.id);
        }
    }
    Ok(Merged {
        tot,
        hist,
        offsets: (min_off, max_off),
        ack_hist,
    })
}

/// `secs` per delivered message in ns, `None` when nothing was delivered.
pub(crate) fn per_msg_ns(secs: f64, delivered: u64) -> Option<f64> {
    (delivered > 0).then(|| round(secs * 1e9 / delivered as f64, 1))
}

/// Latency percentiles in µs: p50, p99, p99.9, max.
pub(crate) fn percentiles_us(h: &Histogram<u64>) -> (f64, f64, f64, f64) {
    let us = |q: f64| round(h.value_at_quantile(q) as f64 / 1000.0, 1);
    (
        us(0.5),
        us(0.99),
        us(0.999),
        round(h.max() as f64 / 1000.0, 1),
    )
}

/// The `fanout` / `compression` result line.
#[derive(Debug, Serialize)]
struct FanoutResult {
    workload: &'static str,
    target: String,
    subs: u64,
    rate: serde_json::Value,
    payload: usize,
    duration_s: f64,
    pubs: u64,
    delivered: u64,
    delivered_per_s: f64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    lat_p999_us: f64,
    lat_max_us: f64,
    /// Among the verifying subscribers.
    losses: i64,
    /// Subscribers that verified every push (see `--inflate-every`).
    verifiers: u64,
    server_cpu_s: f64,
    server_cpu_per_msg_ns: Option<f64>,
    server_cpu_per_recv_ns: Option<f64>,
    gen_cpu_s: f64,
    generator_saturated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames_per_write: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_write_p99_le_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_write_p999_le_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_consumer_drops: Option<u64>,
    recv_per_s: f64,
    server_core_busy: f64,
    server_core_per_msg_ns: Option<f64>,
    gen_core_busy: f64,
    cores_busy: Vec<f64>,
    gen_share: f64,
    shards: usize,
    /// CPUs the server was pinned to.
    server_cores: usize,
    wire_bytes: u64,
    wire_bytes_per_msg: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    deflate: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deflate_conns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compressed_msgs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_deflate_encodes: Option<u64>,
    subs_connected: u64,
    subs_failed: u64,
    subs_closed: u64,
    gaps: u64,
    out_of_order: u64,
    pub_errors: u64,
    pub_unacked: u64,
    window_offsets: Option<(u64, u64)>,
    workers: usize,
    background_busy: (f64, f64),
    /// The server's system calls over the window, counted from just after
    /// its start (`WSBENCH_COUNT_SYSCALLS=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    syscalls: Option<crate::syscalls::SyscallCounts>,
    /// `syscalls.total` per push received while they were counted
    /// (received per second × seconds counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    syscalls_per_recv: Option<f64>,
}

/// What distinguishes `compression` from plain `fanout`.
struct FanoutExtra {
    workload: &'static str,
    data: PubData,
    /// `None`: no offer, target defaults; `Some(on)`: see [`Server::start`].
    deflate: Option<bool>,
    /// See [`CompressionArgs::inflate_every`].
    inflate_every: u64,
}

/// Runs the `fanout` workload and prints its JSON line.
pub fn fanout(args: FanoutArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    let extra = FanoutExtra {
        workload: "fanout",
        data: PubData::Padded(args.payload),
        deflate: None,
        inflate_every: 1,
    };
    LocalSet::new().block_on(&rt, fanout_async(args, extra))
}

/// Runs the `compression` workload and prints its JSON line.
pub fn compression(a: CompressionArgs) -> Result<()> {
    pin_self(a.common.gen_cpu)?;
    let rt = runtime()?;
    let items = feed_items(a.items.max(1), a.item_bytes);
    // `payload` reports the mean `data` size: `{"t":<16 digits>,` + item.
    let mean = items.iter().map(|i| i.len()).sum::<usize>() / items.len() + 22;
    let f = FanoutArgs {
        common: a.common,
        subs: a.subs,
        payload: mean,
        duration: a.duration,
        rate: a.rate,
        window: a.window,
        warmup: a.warmup,
        drain_s: a.drain_s,
        channel: "feed".to_string(),
    };
    let extra = FanoutExtra {
        workload: "compression",
        data: PubData::Items(Rc::new(items)),
        deflate: Some(a.deflate == OnOff::On),
        inflate_every: a.inflate_every.max(1),
    };
    LocalSet::new().block_on(&rt, fanout_async(f, extra))
}

async fn fanout_async(a: FanoutArgs, x: FanoutExtra) -> Result<()> {
    let c = &a.common;
    if a.duration <= 0.0 || a.warmup < 0.0 {
        bail!("--duration must be positive and --warmup non-negative");
    }
    if let Some(r) = a.rate
        && (r.is_nan() || r <= 0.0)
    {
        bail!("--rate must be positive");
    }
    let background = background_busy(c, 1.0).await?;
    let mut server = start_server(c, x.deflate).await?;
    let spec = WorkerSpec {
        channel: &a.channel,
        channels: 0,
        mode: Mode::Subscribe,
        deflate: x.deflate == Some(true),
        inflate_every: x.inflate_every,
        collab_editors: 0,
        reconnect_to: Vec::new(),
    };
    let (mut workers, ready) = connect_all(c, &mut server, a.subs, &spec, "subscribers").await?;
    let publ = open_publisher(&server).await?;
    let start_ns = mono_ns() + (a.warmup * 1e9) as u64 + 50_000_000;
    let end_ns = start_ns + (a.duration * 1e9) as u64;
    for w in workers.iter_mut() {
        match w.call(&Command::Window { start_ns, end_ns }).await? {
            Event::Ack => {}
            other => bail!("worker {}: expected ack, got {other:?}", w.id),
        }
    }
    let cfg = PubCfg {
        channels_json: vec![serde_json::to_string(&a.channel)?],
        data: x.data.clone(),
        rate: a.rate,
        window: a.window.max(1),
        start_ns,
        end_ns: Rc::new(Cell::new(end_ns)),
        drain: Duration::from_secs_f64(a.drain_s),
    };
    let pub_task = tokio::task::spawn_local(publisher(publ, cfg));
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();

    tokio::time::sleep_until(to_instant(start_ns)).await;
    let s0 = sample(&server, &pids).await?;
    let counter = crate::syscalls::SyscallCounter::start(server.pid);
    tokio::time::sleep_until(to_instant(end_ns)).await;
    let syscalls = counter.and_then(crate::syscalls::SyscallCounter::stop);
    let s1 = sample(&server, &pids).await?;
    let ps = pub_task.await.context("publisher task")??;
    check_alive(&mut server)?;

    // Wait for in-flight deliveries of the window's publications (to the
    // verifying subscribers: all of them unless `--inflate-every`).
    let mut verifiers = 0;
    for w in workers.iter_mut() {
        verifiers += w.stats().await?.verifiers;
    }
    let expected = ps.in_window * verifiers;
    let deadline = to_instant(end_ns) + Duration::from_secs_f64(a.drain_s);
    loop {
        let mut got = 0;
        for w in workers.iter_mut() {
            got += w.stats().await?.received_in_window;
        }
        if got >= expected || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let m = collect_reports(&mut workers).await?;
    let (min_off, max_off) = m.offsets;
    if let (Some(lo), Some(hi)) = (ps.lo, ps.hi)
        && m.tot.stats.received_in_window > 0
        && (min_off < lo || max_off > hi)
    {
        eprintln!(
            "wsbench: WARNING subscribers counted offsets {min_off}..={max_off} outside the window's {lo}..={hi}"
        );
    }
    if let Some(e) = &ps.first_error {
        eprintln!("wsbench: {} publish error(s), first: {e}", ps.errors);
    }

    let tot = &m.tot;
    // Sampled verification: only the verifiers count pushes by their
    // publication time, so throughput and CPU per message use what every
    // subscriber received while the window was open.
    let sampled = verifiers < ready.ok;
    let delivered = if sampled {
        tot.stats.received_during_window
    } else {
        tot.stats.received_in_window
    };
    let cpu = cpu_window(&s0, &s1, c, a.duration);
    let (p50, p99, p999, max) = percentiles_us(&m.hist);
    let wd = wsedge_delta(&s0, &s1);
    let compression = x.deflate.is_some();
    let res = FanoutResult {
        workload: x.workload,
        target: c.target.to_string(),
        subs: a.subs,
        rate: match a.rate {
            Some(r) => serde_json::json!(r),
            None => serde_json::json!("flat"),
        },
        payload: a.payload,
        duration_s: a.duration,
        pubs: ps.in_window,
        delivered,
        delivered_per_s: round(delivered as f64 / a.duration, 1),
        lat_p50_us: p50,
        lat_p99_us: p99,
        lat_p999_us: p999,
        lat_max_us: max,
        losses: expected as i64 - tot.stats.received_in_window as i64,
        verifiers,
        server_cpu_s: round(cpu.server_cpu_s, 2),
        server_cpu_per_msg_ns: per_msg_ns(cpu.server_cpu_s, delivered),
        server_cpu_per_recv_ns: per_msg_ns(cpu.server_cpu_s, tot.stats.received_during_window),
        gen_cpu_s: round(cpu.gen_cpu_s, 2),
        generator_saturated: cpu.generator_saturated,
        writes: wd.writes,
        frames_per_write: wd.frames_per_write,
        server_write_p99_le_ms: wd.server_write_p99_le_ms,
        server_write_p999_le_ms: wd.server_write_p999_le_ms,
        slow_consumer_drops: wd.slow_consumer_drops,
        recv_per_s: round(tot.stats.received_during_window as f64 / a.duration, 1),
        server_core_busy: round(cpu.server_core_busy, 3),
        server_core_per_msg_ns: per_msg_ns(cpu.server_core_s, delivered),
        gen_core_busy: round(cpu.gen_core_busy, 3),
        cores_busy: cpu.cores_busy.clone(),
        gen_share: round(cpu.gen_share, 3),
        shards: c.server.shards,
        server_cores: c.server.server_cpus().len(),
        wire_bytes: tot.stats.bytes_during_window,
        wire_bytes_per_msg: round(
            tot.stats.bytes_during_window as f64 / tot.stats.received_during_window.max(1) as f64,
            1,
        ),
        deflate: x.deflate.map(|d| if d { "on" } else { "off" }),
        deflate_conns: compression.then_some(tot.deflate_conns),
        compressed_msgs: compression.then_some(tot.compressed_msgs),
        json_deflate_encodes: if compression {
            wd.json_deflate_encodes
        } else {
            None
        },
        subs_connected: ready.ok,
        subs_failed: ready.failed,
        subs_closed: tot.stats.closed,
        gaps: tot.gaps,
        out_of_order: tot.out_of_order,
        pub_errors: ps.errors,
        pub_unacked: ps.unacked,
        window_offsets: ps.lo.zip(ps.hi),
        workers: workers.len(),
        background_busy: background,
        syscalls_per_recv: syscalls.as_ref().map(|s| {
            let recv = tot.stats.received_during_window as f64 / a.duration * s.secs;
            round(s.total as f64 / recv.max(1.0), 5)
        }),
        syscalls,
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
    fn plans() {
        assert_eq!(plan(19_000, 2), vec![9_500, 9_500]);
        assert_eq!(plan(5, 2), vec![3, 2]);
        assert_eq!(worker_count(2_000, None).unwrap(), 1);
        assert_eq!(worker_count(19_000, None).unwrap(), 2);
        assert_eq!(worker_count(15_000, None).unwrap(), 2);
        assert_eq!(worker_count(10_000, None).unwrap(), 1);
        assert!(worker_count(40_000, Some(2)).is_err());
    }

    #[test]
    fn labeled_metric() {
        let t = "wsedge_publication_encodes_total{kind=\"json\"} 5\nwsedge_publication_encodes_total{kind=\"json_deflate\"} 7\n";
        assert_eq!(
            metric_labeled(t, "wsedge_publication_encodes_total", "\"json_deflate\""),
            7.0
        );
    }

    #[test]
    fn histogram_quantile_over_a_window() {
        let h = |a: u32, b: u32, c: u32| {
            format!(
                "# TYPE wsedge_publish_to_write_seconds histogram\n\
                 wsedge_publish_to_write_seconds_bucket{{shard=\"0\",le=\"0.0001\"}} {a}\n\
                 wsedge_publish_to_write_seconds_bucket{{shard=\"0\",le=\"0.0002\"}} {b}\n\
                 wsedge_publish_to_write_seconds_bucket{{shard=\"0\",le=\"+Inf\"}} {c}\n\
                 wsedge_publish_to_write_seconds_sum{{shard=\"0\"}} 1.0\n"
            )
        };
        // Before: 10 fast. After: 10 + 980 fast, 10 + 20 slower, 10 + 1000 in all.
        let (m0, m1) = (h(10, 10, 10), h(990, 1000, 1010));
        let q = |q| histogram_quantile_le_ms(&m0, &m1, LATENCY, q);
        assert_eq!(q(0.5), Some(0.1));
        assert_eq!(q(0.99), Some(0.2));
        assert_eq!(q(0.999), Some(f64::INFINITY));
        assert_eq!(histogram_quantile_le_ms(&m0, &m0, LATENCY, 0.99), None);
    }
}
