//! The `rooms` workload: C connections in R rooms (connection i in
//! `room:{i % R}`), every connection publishing to its own room at a fixed
//! rate; every publication must reach every member of its room, the
//! publisher included.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::task::LocalSet;

use crate::clock::{mono_ns, to_instant};
use crate::driver::{
    CommonArgs, WorkerSpec, background_busy, check_alive, collect_reports, connect_all, cpu_window,
    per_msg_ns, percentiles_us, pin_self, print_line, round, runtime, sample, start_server,
    stop_server, stop_workers, wsedge_delta,
};
use crate::ipc::{Command, Event};
use crate::worker::Mode;

/// `wsbench rooms`.
#[derive(Debug, Clone, clap::Args)]
pub struct RoomsArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections (each is a member of one room and publishes to it).
    #[arg(long, default_value_t = 10_000)]
    pub conns: u64,
    /// Rooms (channels `room:0` … `room:{R-1}`).
    #[arg(long, default_value_t = 1000)]
    pub rooms: u64,
    /// Publications per second per connection (phases spread evenly).
    #[arg(long, default_value_t = 0.5)]
    pub rate_per_conn: f64,
    /// Size of each publication's `data` JSON, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Recorded seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds (published, not recorded; default: one period).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seconds to wait for in-flight deliveries after the window.
    #[arg(long, default_value_t = 5.0)]
    pub drain_s: f64,
}

/// The `rooms` result line.
#[derive(Debug, Serialize)]
struct RoomsResult {
    workload: &'static str,
    target: String,
    conns: u64,
    rooms: u64,
    rate_per_conn: f64,
    payload: usize,
    duration_s: f64,
    pubs: u64,
    pubs_sent: u64,
    expected: u64,
    delivered: u64,
    delivered_per_s: f64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    lat_p999_us: f64,
    lat_max_us: f64,
    losses: i64,
    server_cpu_s: f64,
    server_cpu_per_msg_ns: Option<f64>,
    server_core_busy: f64,
    server_core_per_msg_ns: Option<f64>,
    gen_cpu_s: f64,
    gen_core_busy: f64,
    generator_saturated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames_per_write: Option<f64>,
    /// wsedge's own publish-to-last-write p99 / p99.9 (bucket bound, ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    server_write_p99_le_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_write_p999_le_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_consumer_drops: Option<u64>,
    conns_connected: u64,
    conns_failed: u64,
    conns_closed: u64,
    gaps: u64,
    out_of_order: u64,
    pub_errors: u64,
    pub_unacked: u64,
    workers: usize,
    background_busy: (f64, f64),
}

/// Runs the `rooms` workload and prints its JSON line.
pub fn rooms(args: RoomsArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, rooms_async(args))
}

async fn rooms_async(a: RoomsArgs) -> Result<()> {
    let c = &a.common;
    if a.duration <= 0.0 || a.rate_per_conn <= 0.0 || a.rooms == 0 {
        bail!("--duration, --rate-per-conn and --rooms must be positive");
    }
    let warmup = a.warmup.unwrap_or(1.0 / a.rate_per_conn);
    let background = background_busy(c, 1.0).await?;
    let mut server = start_server(c, None).await?;
    let spec = WorkerSpec::plain("room:", a.rooms, Mode::Rooms);
    let (mut workers, ready) = connect_all(c, &mut server, a.conns, &spec, "members").await?;

    let pub_start = mono_ns() + 100_000_000;
    let start_ns = pub_start + (warmup * 1e9) as u64;
    let end_ns = start_ns + (a.duration * 1e9) as u64;
    for w in workers.iter_mut() {
        for cmd in [
            Command::Window { start_ns, end_ns },
            Command::Publish {
                start_ns: pub_start,
                end_ns,
                rate_per_conn: a.rate_per_conn,
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
    tokio::time::sleep_until(to_instant(start_ns)).await;
    let s0 = sample(&server, &pids).await?;
    tokio::time::sleep_until(to_instant(end_ns)).await;
    let s1 = sample(&server, &pids).await?;
    check_alive(&mut server)?;

    // Drain: until the in-window count stops growing for 0.5 s (or the limit).
    let deadline = to_instant(end_ns) + Duration::from_secs_f64(a.drain_s);
    let (mut last, mut still) = (0u64, 0u32);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = 0;
        for w in workers.iter_mut() {
            got += w.stats().await?.received_in_window;
        }
        still = if got == last { still + 1 } else { 0 };
        last = got;
        if still >= 5 || tokio::time::Instant::now() >= deadline {
            break;
        }
    }

    let m = collect_reports(&mut workers).await?;
    let tot = &m.tot;
    let expected: u64 = tot
        .room_pubs
        .iter()
        .zip(&tot.room_members)
        .map(|(p, n)| p * n)
        .sum();
    let pubs: u64 = tot.room_pubs.iter().sum();
    let delivered = tot.stats.received_in_window;
    let cpu = cpu_window(&s0, &s1, c, a.duration);
    let (p50, p99, p999, max) = percentiles_us(&m.hist);
    let wd = wsedge_delta(&s0, &s1);
    let res = RoomsResult {
        workload: "rooms",
        target: c.target.to_string(),
        conns: a.conns,
        rooms: a.rooms,
        rate_per_conn: a.rate_per_conn,
        payload: a.payload,
        duration_s: a.duration,
        pubs,
        pubs_sent: tot.pubs_sent_in_window,
        expected,
        delivered,
        delivered_per_s: round(delivered as f64 / a.duration, 1),
        lat_p50_us: p50,
        lat_p99_us: p99,
        lat_p999_us: p999,
        lat_max_us: max,
        losses: expected as i64 - delivered as i64,
        server_cpu_s: round(cpu.server_cpu_s, 2),
        server_cpu_per_msg_ns: per_msg_ns(cpu.server_cpu_s, delivered),
        server_core_busy: round(cpu.server_core_busy, 3),
        server_core_per_msg_ns: per_msg_ns(cpu.server_core_s, delivered),
        gen_cpu_s: round(cpu.gen_cpu_s, 2),
        gen_core_busy: round(cpu.gen_core_busy, 3),
        generator_saturated: cpu.generator_saturated,
        writes: wd.writes,
        frames_per_write: wd.frames_per_write,
        server_write_p99_le_ms: wd.server_write_p99_le_ms,
        server_write_p999_le_ms: wd.server_write_p999_le_ms,
        slow_consumer_drops: wd.slow_consumer_drops,
        conns_connected: ready.ok,
        conns_failed: ready.failed,
        conns_closed: tot.stats.closed,
        gaps: tot.gaps,
        out_of_order: tot.out_of_order,
        pub_errors: tot.pub_errors,
        pub_unacked: tot
            .pubs_sent
            .saturating_sub(tot.pubs_acked + tot.pub_errors),
        workers: workers.len(),
        background_busy: background,
    };
    print_line(&res)?;
    stop_workers(workers).await;
    stop_server(server).await;
    Ok(())
}
