//! The `presence` workload (wsedge only): what presence and join/leave
//! pushes cost. S steady subscribers stay in one channel `p:room` of a
//! namespace with `presence` (and `join_leave` unless `--join-leave off`)
//! while a pool of churn connections in the driver joins and leaves it
//! (`subscribe` / `unsubscribe`), J joins and J leaves per second. Reports
//! the server's CPU per join/leave event and what the steady subscribers
//! receive, next to the naive cost of one frame per event per subscriber.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::task::LocalSet;

use crate::clock::{mono_ns, to_instant};
use crate::conn::{Conn, Control, handle_control, open};
use crate::driver::{
    CommonArgs, OnOff, WorkerSpec, background_busy, check_alive, connect_all, cpu_window, pin_self,
    print_line, round, runtime, sample, start_server_with, stop_server, stop_workers, wsedge_delta,
};
use crate::ipc::Stats;
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::target::Target;
use crate::worker::Mode;
use crate::wsclient::OP_TEXT;

/// The channel every connection joins.
const CHANNEL: &str = "p:room";

/// `wsbench presence`.
#[derive(Debug, Clone, clap::Args)]
pub struct PresenceArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Steady subscribers (stay in the channel for the whole run).
    #[arg(long, default_value_t = 5000)]
    pub subs: u64,
    /// Joins per second (and as many leaves): 2 × J presence events/s.
    #[arg(long, default_value_t = 50.0)]
    pub churn: f64,
    /// Seconds each churn connection stays in the channel (and then out
    /// of it) per cycle; the pool holds 2 × J × hold connections, half of
    /// them in the channel at any time.
    #[arg(long, default_value_t = 1.0)]
    pub hold_s: f64,
    /// Recorded seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of churn before the recording starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// `off`: the namespace has presence without `join_leave` (the cost of
    /// the presence bookkeeping alone).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub join_leave: OnOff,
    /// Most seconds to wait for the joins of the setup to be delivered.
    #[arg(long, default_value_t = 60.0)]
    pub settle_limit_s: f64,
}

/// The `presence` result line.
#[derive(Debug, Serialize)]
struct PresenceResult {
    workload: &'static str,
    target: String,
    join_leave: &'static str,
    subs: u64,
    churn: f64,
    hold_s: f64,
    churners: u64,
    duration_s: f64,
    /// Seconds until the steady subscribers' join pushes stopped arriving.
    setup_s: f64,
    /// Presence pushes one steady subscriber received, on average, during the setup.
    setup_pushes_per_sub: f64,
    events: u64,
    events_per_s: f64,
    event_errors: u64,
    server_cpu_s: f64,
    server_cpu_per_event_us: Option<f64>,
    server_core_busy: f64,
    /// Received by all steady subscribers together, per second.
    bytes_per_s: f64,
    bytes_per_sub_per_s: f64,
    frames_per_sub_per_s: f64,
    /// `join`/`leave` objects per subscriber per second (≈ events/s when every event reaches everyone).
    pushes_per_sub_per_s: f64,
    /// Mean size of one `join`/`leave` push object (JSON text).
    event_bytes: Option<f64>,
    /// Naive: every event its own frame (object + 2-byte header) to every steady subscriber.
    naive_bytes_per_s: Option<f64>,
    naive_frames_per_sub_per_s: f64,
    /// `bytes_per_s / naive_bytes_per_s`.
    bytes_vs_naive: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames_per_write: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_consumer_drops: Option<u64>,
    subs_connected: u64,
    subs_failed: u64,
    subs_closed: u64,
    gen_cpu_s: f64,
    generator_saturated: bool,
    workers: usize,
    background_busy: (f64, f64),
}

/// Runs the `presence` workload and prints its JSON line.
pub fn presence(args: PresenceArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, presence_async(args))
}

/// Churn counters shared by the churn tasks.
#[derive(Default)]
struct Churn {
    /// Acknowledged subscribes + unsubscribes sent inside the window.
    events: Cell<u64>,
    /// Error replies.
    errors: Cell<u64>,
    first_error: std::cell::RefCell<Option<String>>,
}

/// The schedule of the churn pool: global action k happens at
/// `start + k / rate` and is churner `k % pool`'s; each action toggles
/// that churner between subscribed and not.
#[derive(Clone, Copy)]
struct Schedule {
    start_ns: u64,
    /// Actions per second over the whole pool (2 × J).
    rate: f64,
    pool: u64,
    /// No action at or after this.
    end_ns: u64,
    /// Events inside `[win_start, win_end)` are counted.
    win_start: u64,
    win_end: u64,
}

impl Schedule {
    fn at(&self, i: u64, m: u64) -> u64 {
        self.start_ns + ((i + m * self.pool) as f64 * 1e9 / self.rate) as u64
    }
}

/// One churn connection: subscribes and unsubscribes on schedule, reads
/// (and drops) the pushes it gets while subscribed.
async fn churner(mut c: Conn, i: u64, sch: Schedule, ch: Rc<Churn>) -> Result<()> {
    let channel_json = serde_json::to_string(CHANNEL)?;
    let mut subscribed = false;
    let mut next_id: u64 = 2;
    // id -> counted (sent inside the window)
    let mut pending: HashMap<u64, bool> = HashMap::new();
    let mut m: u64 = 0;
    let sleep = tokio::time::sleep_until(to_instant(sch.at(i, 0)));
    tokio::pin!(sleep);
    let mut acting = true;
    loop {
        tokio::select! {
            biased;
            h = c.reader.next_frame() => {
                let h = h?;
                if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
                    match ctl {
                        Control::Closed(code) => bail!("churn connection closed ({code})"),
                        Control::Handled => continue,
                    }
                }
                if h.opcode == OP_TEXT {
                    for_each_object(c.reader.payload(&h), |o| match classify(o) {
                        ServerMsg::Reply { id, .. } => {
                            let counted = pending.remove(&id) == Some(true);
                            ch.events.set(ch.events.get() + u64::from(counted));
                        }
                        ServerMsg::Error { id, .. } => {
                            pending.remove(&id);
                            ch.errors.set(ch.errors.get() + 1);
                            ch.first_error
                                .borrow_mut()
                                .get_or_insert_with(|| String::from_utf8_lossy(o).into_owned());
                        }
                        _ => {}
                    });
                }
                c.reader.consume(&h);
            }
            () = &mut sleep, if acting => {
                let t = mono_ns();
                if t >= sch.end_ns {
                    acting = false;
                    continue;
                }
                let method = if subscribed { "unsubscribe" } else { "subscribe" };
                let cmd = format!("{{\"id\":{next_id},\"{method}\":{{\"channel\":{channel_json}}}}}");
                c.writer.send(OP_TEXT, cmd.as_bytes()).await?;
                pending.insert(next_id, t >= sch.win_start && t < sch.win_end);
                next_id += 1;
                subscribed = !subscribed;
                m += 1;
                sleep.as_mut().reset(to_instant(sch.at(i, m)));
            }
        }
    }
}

/// Sums every worker's running counters.
pub(crate) async fn stats_all(workers: &mut [crate::driver::Worker]) -> Result<Stats> {
    let mut t = Stats::default();
    for w in workers.iter_mut() {
        let s = w.stats().await?;
        t.bytes += s.bytes;
        t.frames += s.frames;
        t.other_pushes += s.other_pushes;
        t.other_push_bytes += s.other_push_bytes;
        t.closed += s.closed;
    }
    Ok(t)
}

async fn presence_async(a: PresenceArgs) -> Result<()> {
    let c = &a.common;
    if c.target != Target::Wsedge {
        bail!("presence runs on wsedge only (the baselines have no presence)");
    }
    if a.churn <= 0.0 || a.hold_s <= 0.0 || a.duration <= 0.0 || a.warmup < 0.0 {
        bail!("--churn, --hold-s and --duration must be positive, --warmup non-negative");
    }
    let jl = a.join_leave == OnOff::On;
    let tables = format!(
        "[[namespace]]\nname = \"p\"\npresence = true\njoin_leave = {jl}\n{}",
        if jl {
            "join_leave_max_subscribers = 100000"
        } else {
            ""
        }
    );
    let background = background_busy(c, 1.0).await?;
    let mut server = start_server_with(c, None, "", &tables).await?;
    let spec = WorkerSpec::plain(CHANNEL, 0, Mode::Subscribe);
    let t_setup = mono_ns();
    let (mut workers, ready) = connect_all(c, &mut server, a.subs, &spec, "subscribers").await?;
    // The setup's own join wave (S²/2 pushes with join/leave): wait until
    // it has been delivered (no new push for 1 s).
    let settle_deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.settle_limit_s);
    let (mut last, mut still) = (stats_all(&mut workers).await?.other_pushes, 0);
    while still < 5 && tokio::time::Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = stats_all(&mut workers).await?.other_pushes;
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    let setup_s = (mono_ns() - t_setup) as f64 / 1e9 - 1.0;
    let setup_pushes = last;
    check_alive(&mut server)?;

    let pool = ((2.0 * a.churn * a.hold_s).round() as u64).max(2);
    let mut conns = Vec::new();
    for i in 0..pool {
        conns.push(
            open(
                server.client,
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                u64::MAX / 5 + i,
                None,
                false,
            )
            .await?,
        );
    }
    let start_ns = mono_ns() + 100_000_000;
    let win_start = start_ns + (a.warmup * 1e9) as u64;
    let win_end = win_start + (a.duration * 1e9) as u64;
    let sch = Schedule {
        start_ns,
        rate: 2.0 * a.churn,
        pool,
        end_ns: win_end,
        win_start,
        win_end,
    };
    let churn = Rc::new(Churn::default());
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| tokio::task::spawn_local(churner(conn, i as u64, sch, churn.clone())))
        .collect();

    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    tokio::time::sleep_until(to_instant(win_start)).await;
    let s0 = sample(&server, &pids).await?;
    let w0 = stats_all(&mut workers).await?;
    tokio::time::sleep_until(to_instant(win_end)).await;
    let s1 = sample(&server, &pids).await?;
    let w1 = stats_all(&mut workers).await?;
    // The last acknowledgements.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in &tasks {
        if t.is_finished() {
            bail!("a churn connection ended early (see the server log)");
        }
    }
    for t in tasks {
        t.abort();
    }
    check_alive(&mut server)?;
    if let Some(e) = churn.first_error.borrow().as_ref() {
        eprintln!("wsbench: {} churn error(s), first: {e}", churn.errors.get());
    }

    let d = a.duration;
    let n = ready.ok.max(1) as f64;
    let events = churn.events.get();
    let events_per_s = events as f64 / d;
    let cpu = cpu_window(&s0, &s1, c, d);
    let wd = wsedge_delta(&s0, &s1);
    let pushes = w1.other_pushes - w0.other_pushes;
    let push_bytes = w1.other_push_bytes - w0.other_push_bytes;
    let bytes_per_s = (w1.bytes - w0.bytes) as f64 / d;
    let event_bytes = (pushes > 0).then(|| push_bytes as f64 / pushes as f64);
    // A frame header is 2 bytes below 126 bytes of payload, 4 up to 64 KiB.
    let naive_bytes_per_s = event_bytes.map(|b| {
        let hdr = if b < 126.0 { 2.0 } else { 4.0 };
        events_per_s * n * (b + hdr)
    });
    let res = PresenceResult {
        workload: "presence",
        target: c.target.to_string(),
        join_leave: if jl { "on" } else { "off" },
        subs: a.subs,
        churn: a.churn,
        hold_s: a.hold_s,
        churners: pool,
        duration_s: d,
        setup_s: round(setup_s.max(0.0), 2),
        setup_pushes_per_sub: round(setup_pushes as f64 / n, 1),
        events,
        events_per_s: round(events_per_s, 1),
        event_errors: churn.errors.get(),
        server_cpu_s: round(cpu.server_cpu_s, 3),
        server_cpu_per_event_us: (events > 0)
            .then(|| round(cpu.server_cpu_s * 1e6 / events as f64, 2)),
        server_core_busy: round(cpu.server_core_busy, 3),
        bytes_per_s: round(bytes_per_s, 1),
        bytes_per_sub_per_s: round(bytes_per_s / n, 1),
        frames_per_sub_per_s: round((w1.frames - w0.frames) as f64 / n / d, 2),
        pushes_per_sub_per_s: round(pushes as f64 / n / d, 2),
        event_bytes: event_bytes.map(|b| round(b, 1)),
        naive_bytes_per_s: naive_bytes_per_s.map(|b| round(b, 1)),
        naive_frames_per_sub_per_s: round(events_per_s, 1),
        bytes_vs_naive: naive_bytes_per_s
            .filter(|&nb| nb > 0.0)
            .map(|nb| round(bytes_per_s / nb, 3)),
        writes: wd.writes,
        frames_per_write: wd.frames_per_write,
        slow_consumer_drops: wd.slow_consumer_drops,
        subs_connected: ready.ok,
        subs_failed: ready.failed,
        subs_closed: w1.closed,
        gen_cpu_s: round(cpu.gen_cpu_s, 2),
        generator_saturated: cpu.generator_saturated,
        workers: workers.len(),
        background_busy: background,
    };
    print_line(&res)?;
    stop_workers(workers).await;
    stop_server(server).await;
    Ok(())
}
