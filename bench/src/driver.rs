//! The driver: runs the `idle` and `fanout` workloads end to end and prints
//! one JSON line per run.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
use crate::procfs::{CoreTimes, KernelMem, core_times, cpu_seconds, kernel_mem, rss_bytes};
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::target::{Server, Target, TargetOpts, metric_sum, scrape, tail};
use crate::worker::new_histogram;
use crate::wsclient::OP_TEXT;

/// Connections per worker when `--workers` is not given.
pub const DEFAULT_CONNS_PER_WORKER: u64 = 15_000;
/// Hard cap per worker: each worker must stay below 19,000 descriptors
/// (the open-file limit is 20,000 and cannot be raised).
pub const MAX_CONNS_PER_WORKER: u64 = 18_900;

/// Options shared by every workload.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Server to benchmark.
    #[arg(long, value_enum)]
    pub target: Target,
    /// Worker processes (default: ceil(connections / 15,000)).
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

/// Pins the calling process (all its future threads) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("cpu index")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("sched_setaffinity")?;
    Ok(())
}

/// One worker process and its pipes.
struct Worker {
    id: usize,
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn send(&mut self, cmd: &Command) -> Result<()> {
        let mut s = serde_json::to_string(cmd)?;
        s.push('\n');
        self.stdin.write_all(s.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Event> {
        let line = self
            .lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("worker {} exited unexpectedly", self.id))?;
        serde_json::from_str(&line).with_context(|| format!("worker {} sent {line:?}", self.id))
    }

    async fn call(&mut self, cmd: &Command) -> Result<Event> {
        self.send(cmd).await?;
        self.recv().await
    }

    async fn stats(&mut self) -> Result<Stats> {
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
async fn spawn_workers(
    c: &CommonArgs,
    server: SocketAddr,
    total: u64,
    channel: &str,
    channels: u64,
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
            .args(["--channel", channel])
            .args(["--channels", &channels.to_string()])
            .args(["--concurrency", &c.concurrency.to_string()])
            .args(["--timeout-s", &c.timeout_s.to_string()])
            .stdin(std::process::Stdio::piped())
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
async fn wait_ready(workers: &mut [Worker]) -> Result<Ready> {
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

async fn stop_workers(workers: Vec<Worker>) {
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

async fn stop_server(server: Server) {
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

fn check_alive(server: &mut Server) -> Result<()> {
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

/// Busy fraction of the server and generator CPUs over `secs` before the
/// run starts: anything above a few percent is foreign load that will
/// distort the results (a warning goes to stderr).
async fn background_busy(c: &CommonArgs, secs: f64) -> Result<(f64, f64)> {
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

fn print_line<T: Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn runtime() -> Result<tokio::runtime::Runtime> {
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
}

/// Runs the `idle` workload and prints its JSON line.
pub fn idle(args: IdleArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    runtime()?.block_on(idle_async(args))
}

async fn idle_async(a: IdleArgs) -> Result<()> {
    let c = &a.common;
    let background = background_busy(c, 1.0).await?;
    let mut server = Server::start(c.target, &c.server).await?;
    eprintln!(
        "wsbench: {} pid {} on {} (log {})",
        c.target,
        server.pid,
        server.client,
        server.log.display()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(server.pid)?;
    let kernel_before = kernel_mem()?;

    let server_cpu0 = cpu_seconds(server.pid)?;
    let mut workers = spawn_workers(c, server.client, a.conns, "idle:", a.channels.max(1)).await?;
    let ready = wait_ready(&mut workers).await?;
    check_alive(&mut server)?;
    let connect_server_cpu_s = cpu_seconds(server.pid)? - server_cpu0;
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
    };
    print_line(&res)?;
    stop_workers(workers).await;
    stop_server(server).await;
    Ok(())
}

/// What the publisher did.
#[derive(Debug, Default)]
struct PubStats {
    sent: u64,
    in_window: u64,
    first_win_id: Option<u64>,
    last_win_id: u64,
    lo: Option<u64>,
    hi: Option<u64>,
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    unacked: u64,
}

/// Appends the `publish` command for publication `id`: its `data` is
/// `{"t":<t>,"p":"xx…"}`, padded to `payload` bytes (or the minimum).
fn build_publish(out: &mut Vec<u8>, id: u64, channel_json: &str, t: u64, payload: usize) {
    use std::io::Write as _;
    let digits = t.checked_ilog10().unwrap_or(0) as usize + 1;
    let pad = payload.saturating_sub(13 + digits);
    write!(
        out,
        "{{\"id\":{id},\"publish\":{{\"channel\":{channel_json},\"data\":{{\"t\":{t},\"p\":\""
    )
    .expect("Vec write");
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}}}");
}

struct PubCfg {
    channel_json: String,
    payload: usize,
    rate: Option<f64>,
    window: usize,
    start_ns: u64,
    end_ns: u64,
    drain: Duration,
}

/// Publishes until `end_ns`, then waits (up to `drain`) for the last acks.
async fn publisher(mut c: Conn, cfg: PubCfg) -> Result<PubStats> {
    let mut st = PubStats::default();
    let mut next_id: u64 = 2;
    let mut inflight: u64 = 0;
    let mut msg = Vec::with_capacity(cfg.payload + 128);
    let t0 = mono_ns();
    let period_ns = cfg.rate.map(|r| 1e9 / r);
    let mut scheduled: u64 = 0;
    let stop = to_instant(cfg.end_ns);

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
                ServerMsg::Error { .. } => {
                    *inflight = inflight.saturating_sub(1);
                    st.errors += 1;
                    if st.first_error.is_none() {
                        st.first_error = Some(String::from_utf8_lossy(o).into_owned());
                    }
                }
                _ => {}
            });
        };

    loop {
        let now = mono_ns();
        if now >= cfg.end_ns {
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
            if t >= cfg.end_ns {
                break;
            }
            msg.clear();
            build_publish(&mut msg, next_id, &cfg.channel_json, t, cfg.payload);
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
struct Sample {
    server_cpu: f64,
    gen_cpu: f64,
    server_core: CoreTimes,
    gen_core: CoreTimes,
    metrics: Option<String>,
}

async fn sample(server: &Server, worker_pids: &[u32], cpus: (usize, usize)) -> Result<Sample> {
    let server_core = core_times(cpus.0)?;
    let gen_core = core_times(cpus.1)?;
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
        server_core,
        gen_core,
        metrics,
    })
}

/// The `fanout` result line.
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
    losses: i64,
    server_cpu_s: f64,
    server_cpu_per_msg_ns: f64,
    gen_cpu_s: f64,
    generator_saturated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames_per_write: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_consumer_drops: Option<u64>,
    recv_per_s: f64,
    server_core_busy: f64,
    server_core_per_msg_ns: f64,
    gen_core_busy: f64,
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
}

/// Runs the `fanout` workload and prints its JSON line.
pub fn fanout(args: FanoutArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, fanout_async(args))
}

async fn fanout_async(a: FanoutArgs) -> Result<()> {
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
    let mut server = Server::start(c.target, &c.server).await?;
    eprintln!(
        "wsbench: {} pid {} on {} (log {})",
        c.target,
        server.pid,
        server.client,
        server.log.display()
    );
    let mut workers = spawn_workers(c, server.client, a.subs, &a.channel, 0).await?;
    let ready = wait_ready(&mut workers).await?;
    check_alive(&mut server)?;
    eprintln!(
        "wsbench: {} subscribers ready ({} failed) in {:.2} s",
        ready.ok,
        ready.failed,
        ready.last_ready_ns.saturating_sub(ready.first_connect_ns) as f64 / 1e9
    );

    let publ = open(
        server.client,
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        u64::MAX / 3,
        None,
    )
    .await
    .context("opening the publisher connection")?;
    let start_ns = mono_ns() + (a.warmup * 1e9) as u64 + 50_000_000;
    let end_ns = start_ns + (a.duration * 1e9) as u64;
    for w in workers.iter_mut() {
        match w.call(&Command::Window { start_ns, end_ns }).await? {
            Event::Ack => {}
            other => bail!("worker {}: expected ack, got {other:?}", w.id),
        }
    }
    let cfg = PubCfg {
        channel_json: serde_json::to_string(&a.channel)?,
        payload: a.payload,
        rate: a.rate,
        window: a.window.max(1),
        start_ns,
        end_ns,
        drain: Duration::from_secs_f64(a.drain_s),
    };
    let pub_task = tokio::task::spawn_local(publisher(publ, cfg));
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();

    tokio::time::sleep_until(to_instant(start_ns)).await;
    let cpus = (c.server.server_cpu, c.gen_cpu);
    let s0 = sample(&server, &pids, cpus).await?;
    tokio::time::sleep_until(to_instant(end_ns)).await;
    let s1 = sample(&server, &pids, cpus).await?;
    let ps = pub_task.await.context("publisher task")??;
    check_alive(&mut server)?;

    // Wait for in-flight deliveries of the window's publications.
    let expected = ps.in_window * ready.ok;
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

    let mut hist: Histogram<u64> = new_histogram();
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
        tot.stats.received += r.stats.received;
        tot.stats.received_in_window += r.stats.received_in_window;
        tot.stats.received_during_window += r.stats.received_during_window;
        tot.stats.closed += r.stats.closed;
        tot.gaps += r.gaps;
        tot.out_of_order += r.out_of_order;
        tot.no_t += r.no_t;
        min_off = min_off.min(r.min_offset.unwrap_or(u64::MAX));
        max_off = max_off.max(r.max_offset.unwrap_or(0));
        for (k, v) in r.closes {
            eprintln!("wsbench: worker {}: {v} connection(s) ended: {k}", w.id);
        }
        for e in r.errors {
            eprintln!("wsbench: worker {}: error: {e}", w.id);
        }
    }
    if let (Some(lo), Some(hi)) = (ps.lo, ps.hi)
        && tot.stats.received_in_window > 0
        && (min_off < lo || max_off > hi)
    {
        eprintln!(
            "wsbench: WARNING subscribers counted offsets {min_off}..={max_off} outside the window's {lo}..={hi}"
        );
    }
    if let Some(e) = &ps.first_error {
        eprintln!("wsbench: {} publish error(s), first: {e}", ps.errors);
    }

    let delivered = tot.stats.received_in_window;
    let server_core_busy = s1.server_core.busy_since(&s0.server_core);
    let gen_core_busy = s1.gen_core.busy_since(&s0.gen_core);
    let server_cpu_s = s1.server_cpu - s0.server_cpu;
    let gen_cpu_s = s1.gen_cpu - s0.gen_cpu;
    let us = |q: f64| round(hist.value_at_quantile(q) as f64 / 1000.0, 1);
    let (writes, fpw, drops) = match (&s0.metrics, &s1.metrics) {
        (Some(m0), Some(m1)) => {
            let d = |name: &str| metric_sum(m1, name) - metric_sum(m0, name);
            let w = d("wsedge_socket_writes_total");
            let f = d("wsedge_frames_sent_total");
            let drops = metric_sum(m1, "wsedge_slow_consumer_drops_total");
            (
                Some(w as u64),
                Some(if w > 0.0 { round(f / w, 2) } else { 0.0 }),
                Some(drops as u64),
            )
        }
        _ => (None, None, None),
    };
    let res = FanoutResult {
        workload: "fanout",
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
        lat_p50_us: us(0.5),
        lat_p99_us: us(0.99),
        lat_p999_us: us(0.999),
        lat_max_us: round(hist.max() as f64 / 1000.0, 1),
        losses: (ps.in_window * ready.ok) as i64 - delivered as i64,
        server_cpu_s: round(server_cpu_s, 2),
        server_cpu_per_msg_ns: round(server_cpu_s * 1e9 / (delivered.max(1) as f64), 1),
        gen_cpu_s: round(gen_cpu_s, 2),
        generator_saturated: gen_cpu_s >= 0.95 * a.duration || gen_core_busy >= 0.95,
        writes,
        frames_per_write: fpw,
        slow_consumer_drops: drops,
        recv_per_s: round(tot.stats.received_during_window as f64 / a.duration, 1),
        server_core_busy: round(server_core_busy, 3),
        server_core_per_msg_ns: round(
            server_core_busy * a.duration * 1e9 / (delivered.max(1) as f64),
            1,
        ),
        gen_core_busy: round(gen_core_busy, 3),
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
    fn publish_payload_size() {
        for payload in [40, 100, 1000] {
            let mut out = Vec::new();
            build_publish(&mut out, 7, "\"bench\"", 123_456_789_012, payload);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let data = serde_json::to_string(&v["publish"]["data"]).unwrap();
            assert_eq!(data.len(), payload, "{data}");
            assert_eq!(v["publish"]["data"]["t"], 123_456_789_012u64);
        }
    }

    #[test]
    fn plans() {
        assert_eq!(plan(19_000, 2), vec![9_500, 9_500]);
        assert_eq!(plan(5, 2), vec![3, 2]);
        assert_eq!(worker_count(2_000, None).unwrap(), 1);
        assert_eq!(worker_count(19_000, None).unwrap(), 2);
        assert!(worker_count(40_000, Some(2)).is_err());
    }
}
