//! The `recover-storm` workload (wsedge only): the `storm` workload with
//! recovery. C subscribers over K channels `r:0` … `r:{K-1}` of a
//! namespace `r` with history and `recover`; every connection is dropped
//! at once, the publisher publishes M publications per channel while they
//! are down, then all reconnect and resubscribe with `recover` from the
//! last position they saw while the publisher keeps publishing live.
//! Measures how long until every client has recovered everything it
//! missed and until every client receives live again, and checks that
//! nothing was lost or repeated.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::LocalSet;

use crate::bulk::{Bulk, BulkStats};
use crate::clock::mono_ns;
use crate::driver::{
    CommonArgs, WorkerSpec, background_busy, check_alive, connect_all, cpu_window, open_publisher,
    pin_self, print_line, round, runtime, sample, start_server_with, stop_server, stop_workers,
};
use crate::ipc::{Command, Event, StormStatus};
use crate::storm::{merged_histograms, ms, status_all};
use crate::target::Target;
use crate::worker::Mode;

/// `wsbench recover-storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoverStormArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Subscriber connections (dropped and re-established).
    #[arg(long, default_value_t = 19_000)]
    pub conns: u64,
    /// Channels `r:0` … `r:{K-1}`; connection i subscribes to `r:{i % K}`.
    #[arg(long, default_value_t = 1000)]
    pub channels: u64,
    /// Publications per channel before the drop (seen live).
    #[arg(long, default_value_t = 5)]
    pub pre_pubs: u64,
    /// Publications per channel while every connection is down.
    #[arg(long, default_value_t = 20)]
    pub missed: u64,
    /// From the reconnect command on, one publication per channel every
    /// this many milliseconds (the live stream the recovering clients
    /// must join without a gap or a duplicate).
    #[arg(long, default_value_t = 200)]
    pub live_interval_ms: u64,
    /// Size of each publication's `data` JSON, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publishes sent and not yet answered, at most.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// The namespace's `history_size`.
    #[arg(long, default_value_t = 100)]
    pub history_size: u64,
    /// Seconds to wait for the recovery before giving up.
    #[arg(long, default_value_t = 60.0)]
    pub limit_s: f64,
}

/// The `recover-storm` result line.
#[derive(Debug, Serialize)]
struct RecoverStormResult {
    workload: &'static str,
    target: String,
    conns: u64,
    channels: u64,
    pre_pubs: u64,
    missed: u64,
    live_interval_ms: u64,
    payload: usize,
    connected: u64,
    connect_failed: u64,
    pre_received: u64,
    pre_expected: u64,
    dropped: u64,
    t_close_all_ms: f64,
    t_publish_missed_ms: f64,
    t_all_recovered_ms: f64,
    t_all_live_ms: f64,
    resubscribed: u64,
    recovered: u64,
    not_recovered: u64,
    failures: u64,
    live: u64,
    not_live: u64,
    recovered_pubs: u64,
    recovered_pubs_min: u64,
    replay_gaps: u64,
    replay_dups: u64,
    push_gaps: u64,
    push_dups: u64,
    recover_rate: f64,
    sub_p50_ms: f64,
    sub_p99_ms: f64,
    live_p50_ms: f64,
    live_p99_ms: f64,
    storm_server_cpu_s: f64,
    storm_gen_cpu_s: f64,
    storm_cores_busy: Vec<f64>,
    pubs: u64,
    pub_errors: u64,
    ok: bool,
    workers: usize,
    background_busy: (f64, f64),
}

/// Runs the `recover-storm` workload and prints its JSON line.
pub fn recover_storm(args: RecoverStormArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, recover_storm_async(args))
}

async fn call_all(workers: &mut [crate::driver::Worker], cmd: &Command) -> Result<()> {
    for w in workers.iter_mut() {
        match w.call(cmd).await? {
            Event::Ack => {}
            other => bail!("worker {}: expected ack, got {other:?}", w.id),
        }
    }
    Ok(())
}

async fn recover_storm_async(a: RecoverStormArgs) -> Result<()> {
    let c = &a.common;
    if c.target != Target::Wsedge {
        bail!("recover-storm runs on wsedge only (the baselines have no history)");
    }
    if a.channels == 0 || a.missed == 0 || a.live_interval_ms == 0 {
        bail!("--channels, --missed and --live-interval-ms must be positive");
    }
    let tables = format!(
        "[[namespace]]\nname = \"r\"\nhistory_size = {}\nhistory_ttl = \"5m\"\nrecover = true",
        a.history_size
    );
    let background = background_busy(c, 1.0).await?;
    let mut server = start_server_with(c, None, "", &tables).await?;
    let spec = WorkerSpec::plain("r:", a.channels, Mode::Recover);
    let (mut workers, ready) = connect_all(c, &mut server, a.conns, &spec, "subscribers").await?;
    let mut publ = Bulk::new(open_publisher(&server).await?, a.window);
    let mut pstats = BulkStats::default();

    // Before the drop: every subscriber sees a few publications live.
    let pre_expected = ready.ok * a.pre_pubs;
    let mut pre_received = 0;
    if a.pre_pubs > 0 {
        pstats.add(&publ.round("r:", a.channels, a.pre_pubs, a.payload).await?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            pre_received = 0;
            for w in workers.iter_mut() {
                pre_received += w.stats().await?.received;
            }
            if pre_received >= pre_expected || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if pre_received < pre_expected {
            eprintln!(
                "wsbench: WARNING only {pre_received} of {pre_expected} publications before the drop arrived"
            );
        }
    }

    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let s0 = sample(&server, &pids).await?;
    let t_drop = mono_ns();
    call_all(&mut workers, &Command::Drop).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.limit_s);
    loop {
        let st = status_all(&mut workers).await?;
        if st.iter().all(|s| s.dropped >= s.live_at_drop) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the connections did not all close within --limit-s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the server a moment to see the resets before publishing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t_pub0 = mono_ns();
    pstats.add(&publ.round("r:", a.channels, a.missed, a.payload).await?);
    let t_publish_missed_ms = ms(mono_ns() - t_pub0);

    call_all(&mut workers, &Command::Reconnect).await?;
    let t_reconnect = mono_ns();
    let stop = Rc::new(Cell::new(false));
    let live_task = {
        let stop = stop.clone();
        let (channels, payload) = (a.channels, a.payload);
        let every = Duration::from_millis(a.live_interval_ms);
        tokio::task::spawn_local(async move {
            let mut ls = BulkStats::default();
            let mut next = tokio::time::Instant::now();
            while !stop.get() {
                ls.add(&publ.round("r:", channels, 1, payload).await?);
                next += every;
                tokio::time::sleep_until(next).await;
            }
            anyhow::Ok(ls)
        })
    };

    let mut st: Vec<StormStatus>;
    let mut done = false;
    let mut last_print = mono_ns();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = status_all(&mut workers).await?;
        let live_at_drop: u64 = st.iter().map(|s| s.live_at_drop).sum();
        let finished: u64 = st.iter().map(|s| s.resubscribed + s.failed).sum();
        let ok: u64 = st.iter().map(|s| s.resubscribed).sum();
        let recv: u64 = st.iter().map(|s| s.receiving).sum();
        if finished >= live_at_drop && recv >= ok {
            done = true;
            break;
        }
        if mono_ns() - last_print > 2_000_000_000 {
            last_print = mono_ns();
            eprintln!(
                "wsbench: recover-storm: resubscribed {ok}/{live_at_drop}, live {recv} after {:.1} s",
                (mono_ns() - t_reconnect) as f64 / 1e9
            );
        }
        if tokio::time::Instant::now() >= deadline || server.exited().is_some() {
            break;
        }
    }
    let s1 = sample(&server, &pids).await?;
    let storm_secs = (mono_ns() - t_drop) as f64 / 1e9;
    stop.set(true);
    pstats.add(&live_task.await.context("live publisher task")??);
    check_alive(&mut server)?;
    if let Some(e) = &pstats.first_error {
        eprintln!("wsbench: {} publish error(s), first: {e}", pstats.errors);
    }

    let max_of = |f: fn(&StormStatus) -> u64| st.iter().map(f).max().unwrap_or(0);
    let sum_of = |f: fn(&StormStatus) -> u64| st.iter().map(f).sum::<u64>();
    let (sub_h, recv_h) = merged_histograms(&st);
    let since = |t: u64, from: u64| {
        if t == 0 {
            0.0
        } else {
            ms(t.saturating_sub(from))
        }
    };
    let resub = sum_of(|s| s.resubscribed);
    let live = sum_of(|s| s.receiving);
    let recovered = sum_of(|s| s.recovered);
    let not_recovered = sum_of(|s| s.not_recovered);
    let failures = sum_of(|s| s.failed);
    let (replay_gaps, replay_dups) = (sum_of(|s| s.replay_gaps), sum_of(|s| s.replay_dups));
    let (push_gaps, push_dups) = (sum_of(|s| s.gaps), sum_of(|s| s.dups));
    let t_rec = since(max_of(|s| s.last_sub_ns), t_reconnect);
    let cpu = cpu_window(&s0, &s1, c, storm_secs);
    let q = |h: &Histogram<u64>, p: f64| round(h.value_at_quantile(p) as f64 / 1e6, 1);
    let ok = done
        && not_recovered == 0
        && failures == 0
        && replay_gaps + replay_dups + push_gaps + push_dups == 0
        && resub == ready.ok
        && live == resub;
    let res = RecoverStormResult {
        workload: "recover-storm",
        target: c.target.to_string(),
        conns: a.conns,
        channels: a.channels,
        pre_pubs: a.pre_pubs,
        missed: a.missed,
        live_interval_ms: a.live_interval_ms,
        payload: a.payload,
        connected: ready.ok,
        connect_failed: ready.failed,
        pre_received,
        pre_expected,
        dropped: sum_of(|s| s.dropped),
        t_close_all_ms: since(max_of(|s| s.closed_all_ns), t_drop),
        t_publish_missed_ms,
        t_all_recovered_ms: t_rec,
        t_all_live_ms: since(max_of(|s| s.last_recv_ns), t_reconnect),
        resubscribed: resub,
        recovered,
        not_recovered,
        failures,
        live,
        not_live: resub - live.min(resub),
        recovered_pubs: sum_of(|s| s.recovered_pubs),
        recovered_pubs_min: recovered * a.missed,
        replay_gaps,
        replay_dups,
        push_gaps,
        push_dups,
        recover_rate: round(resub as f64 / (t_rec / 1e3).max(1e-9), 1),
        sub_p50_ms: q(&sub_h, 0.5),
        sub_p99_ms: q(&sub_h, 0.99),
        live_p50_ms: q(&recv_h, 0.5),
        live_p99_ms: q(&recv_h, 0.99),
        storm_server_cpu_s: round(cpu.server_cpu_s, 2),
        storm_gen_cpu_s: round(cpu.gen_cpu_s, 2),
        storm_cores_busy: cpu.cores_busy,
        pubs: pstats.sent,
        pub_errors: pstats.errors,
        ok,
        workers: workers.len(),
        background_busy: background,
    };
    print_line(&res)?;
    stop_workers(workers).await;
    stop_server(server).await;
    Ok(())
}
