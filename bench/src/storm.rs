//! The `storm` workload: C subscribers of one channel while a publisher
//! publishes every 50 ms; then every client connection is dropped at once
//! (abortive close: RST, no close handshake, as after a network blip) and
//! immediately reconnects, `connect`s and resubscribes. Measures how long
//! until every client is subscribed again and receiving new publications.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::LocalSet;

use crate::clock::mono_ns;
use crate::driver::{
    CommonArgs, PubCfg, PubData, WorkerSpec, background_busy, check_alive, connect_all, cpu_window,
    open_publisher, pin_self, print_line, publisher, round, runtime, sample, start_server,
    stop_server, stop_workers,
};
use crate::ipc::{Command, Event, StormStatus};
use crate::worker::{Mode, new_histogram};

/// `wsbench storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Subscriber connections (dropped and re-established).
    #[arg(long, default_value_t = 19_000)]
    pub conns: u64,
    /// Milliseconds between publications.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Seconds of steady publishing before the drop.
    #[arg(long, default_value_t = 1.0)]
    pub steady_s: f64,
    /// Seconds to wait for the recovery before giving up.
    #[arg(long, default_value_t = 60.0)]
    pub limit_s: f64,
}

/// The `storm` result line.
#[derive(Debug, Serialize)]
struct StormResult {
    workload: &'static str,
    target: String,
    conns: u64,
    interval_ms: u64,
    steady_delivered_per_s: f64,
    steady_expected_per_s: f64,
    connected: u64,
    connect_failed: u64,
    dropped: u64,
    t_close_all_ms: f64,
    t_all_subscribed_ms: f64,
    t_all_receiving_ms: f64,
    resubscribed: u64,
    receiving: u64,
    failures: u64,
    not_receiving: u64,
    reconnect_rate: f64,
    sub_p50_ms: f64,
    sub_p99_ms: f64,
    recv_p50_ms: f64,
    recv_p99_ms: f64,
    storm_server_cpu_s: f64,
    storm_gen_cpu_s: f64,
    storm_cores_busy: Vec<f64>,
    pubs: u64,
    pub_errors: u64,
    recovered: bool,
    workers: usize,
    background_busy: (f64, f64),
}

/// The workers' subscribe and receive histograms merged (and their errors
/// printed).
pub(crate) fn merged_histograms(st: &[StormStatus]) -> (Histogram<u64>, Histogram<u64>) {
    let mut sub_h: Histogram<u64> = new_histogram();
    let mut recv_h: Histogram<u64> = new_histogram();
    for s in st {
        for (v, n) in &s.sub_hist {
            sub_h.saturating_record_n(*v, *n);
        }
        for (v, n) in &s.recv_hist {
            recv_h.saturating_record_n(*v, *n);
        }
        for e in &s.errors {
            eprintln!("wsbench: storm error: {e}");
        }
    }
    (sub_h, recv_h)
}

/// Runs the `storm` workload and prints its JSON line.
pub fn storm(args: StormArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, storm_async(args))
}

/// Every worker's [`StormStatus`].
pub(crate) async fn status_all(workers: &mut [crate::driver::Worker]) -> Result<Vec<StormStatus>> {
    let mut v = Vec::new();
    for w in workers.iter_mut() {
        match w.call(&Command::StormStatus).await? {
            Event::Storm(s) => v.push(s),
            other => bail!("worker {}: expected storm status, got {other:?}", w.id),
        }
    }
    Ok(v)
}

/// Nanoseconds as milliseconds, one decimal.
pub(crate) fn ms(ns: u64) -> f64 {
    round(ns as f64 / 1e6, 1)
}

async fn storm_async(a: StormArgs) -> Result<()> {
    let c = &a.common;
    let background = background_busy(c, 1.0).await?;
    let mut server = start_server(c, None).await?;
    let spec = WorkerSpec::plain("storm", 0, Mode::Storm);
    let (mut workers, ready) = connect_all(c, &mut server, a.conns, &spec, "subscribers").await?;
    let publ = open_publisher(&server).await?;
    let end = Rc::new(Cell::new(u64::MAX));
    let cfg = PubCfg {
        channels_json: vec!["\"storm\"".to_string()],
        data: PubData::Padded(60),
        rate: Some(1000.0 / a.interval_ms.max(1) as f64),
        window: 64,
        start_ns: u64::MAX,
        end_ns: end.clone(),
        drain: Duration::from_secs(2),
    };
    let pub_task = tokio::task::spawn_local(publisher(publ, cfg));
    // Steady state: does the server keep up with the publication stream
    // before the drop? (subs × 1000/interval deliveries per second.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received = async |workers: &mut [crate::driver::Worker]| -> Result<u64> {
        let mut n = 0;
        for w in workers.iter_mut() {
            n += w.stats().await?.received;
        }
        Ok(n)
    };
    let (r0, t0) = (received(&mut workers).await?, mono_ns());
    tokio::time::sleep(Duration::from_secs_f64(a.steady_s)).await;
    let (r1, t1) = (received(&mut workers).await?, mono_ns());
    let steady_per_s = (r1 - r0) as f64 / ((t1 - t0) as f64 / 1e9);
    if r1 == 0 && ready.ok > 0 {
        eprintln!("wsbench: WARNING no publication received before the drop");
    }

    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let s0 = sample(&server, &pids).await?;
    let t_cmd = mono_ns();
    for w in workers.iter_mut() {
        match w.call(&Command::Drop).await? {
            Event::Ack => {}
            other => bail!("worker {}: expected ack, got {other:?}", w.id),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.limit_s);
    let mut recovered = false;
    let mut st;
    let mut last_print = mono_ns();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = status_all(&mut workers).await?;
        let live: u64 = st.iter().map(|s| s.live_at_drop).sum();
        let dropped: u64 = st.iter().map(|s| s.dropped).sum();
        let done: u64 = st.iter().map(|s| s.resubscribed + s.failed).sum();
        let ok: u64 = st.iter().map(|s| s.resubscribed).sum();
        let recv: u64 = st.iter().map(|s| s.receiving).sum();
        if dropped >= live && done >= live && recv >= ok {
            recovered = true;
            break;
        }
        if mono_ns() - last_print > 2_000_000_000 {
            last_print = mono_ns();
            eprintln!(
                "wsbench: storm: dropped {dropped}/{live}, resubscribed {ok}, receiving {recv} after {:.1} s",
                (mono_ns() - t_cmd) as f64 / 1e9
            );
        }
        if tokio::time::Instant::now() >= deadline || server.exited().is_some() {
            break;
        }
    }
    let s1 = sample(&server, &pids).await?;
    let storm_secs = (mono_ns() - t_cmd) as f64 / 1e9;
    end.set(mono_ns());
    let ps = pub_task.await.context("publisher task")??;
    check_alive(&mut server)?;

    let drop_ns = st.iter().map(|s| s.drop_ns).min().unwrap_or(t_cmd);
    let max_of = |f: fn(&StormStatus) -> u64| st.iter().map(f).max().unwrap_or(0);
    let sum_of = |f: fn(&StormStatus) -> u64| st.iter().map(f).sum::<u64>();
    let (sub_h, recv_h) = merged_histograms(&st);
    let since = |t: u64| {
        if t == 0 {
            0.0
        } else {
            ms(t.saturating_sub(drop_ns))
        }
    };
    let resub = sum_of(|s| s.resubscribed);
    let receiving = sum_of(|s| s.receiving);
    let t_sub = since(max_of(|s| s.last_sub_ns));
    let cpu = cpu_window(&s0, &s1, c, storm_secs);
    let q = |h: &Histogram<u64>, p: f64| round(h.value_at_quantile(p) as f64 / 1e6, 1);
    let res = StormResult {
        workload: "storm",
        target: c.target.to_string(),
        conns: a.conns,
        interval_ms: a.interval_ms,
        steady_delivered_per_s: round(steady_per_s, 1),
        steady_expected_per_s: round(ready.ok as f64 * 1000.0 / a.interval_ms.max(1) as f64, 1),
        connected: ready.ok,
        connect_failed: ready.failed,
        dropped: sum_of(|s| s.dropped),
        t_close_all_ms: since(max_of(|s| s.closed_all_ns)),
        t_all_subscribed_ms: t_sub,
        t_all_receiving_ms: since(max_of(|s| s.last_recv_ns)),
        resubscribed: resub,
        receiving,
        failures: sum_of(|s| s.failed),
        not_receiving: resub - receiving.min(resub),
        reconnect_rate: round(resub as f64 / (t_sub / 1e3).max(1e-9), 1),
        sub_p50_ms: q(&sub_h, 0.5),
        sub_p99_ms: q(&sub_h, 0.99),
        recv_p50_ms: q(&recv_h, 0.5),
        recv_p99_ms: q(&recv_h, 0.99),
        storm_server_cpu_s: round(cpu.server_cpu_s, 2),
        storm_gen_cpu_s: round(cpu.gen_cpu_s, 2),
        storm_cores_busy: cpu.cores_busy,
        pubs: ps.sent,
        pub_errors: ps.errors,
        recovered,
        workers: workers.len(),
        background_busy: background,
    };
    print_line(&res)?;
    stop_workers(workers).await;
    stop_server(server).await;
    Ok(())
}
