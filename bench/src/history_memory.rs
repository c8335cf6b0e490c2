//! The `history-memory` workload (wsedge only): what a retained
//! publication costs in server memory. wsedge runs with a namespace `h`
//! keeping `history_size` publications per channel for an hour; one
//! pipelined publisher fills K channels `h:0` … `h:{K-1}` with that many
//! publications each, and the server's RSS before and after gives bytes per
//! retained publication.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::task::LocalSet;

use crate::bulk::Bulk;
use crate::driver::{
    CommonArgs, background_busy, check_alive, open_publisher, pin_self, print_line, round, runtime,
    sample, start_server_with, stop_server,
};
use crate::procfs::{cpu_seconds, rss_bytes};
use crate::target::{Target, metric_sum};

/// Accounted bytes per history entry on top of its payload in wsedge's
/// store (`ENTRY_OVERHEAD`); used only to size `history_memory_limit` so
/// the store-wide limit never evicts during the run.
const WSEDGE_ENTRY_OVERHEAD: u64 = 128;

/// `wsbench history-memory`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryMemoryArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Channels `h:0` … `h:{K-1}`.
    #[arg(long, default_value_t = 10_000)]
    pub channels: u64,
    /// Publications per channel; also the namespace's `history_size`, so
    /// every one of them is retained.
    #[arg(long, default_value_t = 100)]
    pub pubs_per_channel: u64,
    /// Size of each publication's `data` JSON, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publishes sent and not yet answered, at most.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Seconds between the last publish reply and the second RSS sample.
    #[arg(long, default_value_t = 2.0)]
    pub settle_s: f64,
    /// Channels (spread evenly) whose `history` is read back at the end to
    /// check everything is retained.
    #[arg(long, default_value_t = 10)]
    pub check_channels: u64,
}

/// The `history-memory` result line.
#[derive(Debug, Serialize)]
struct HistoryMemoryResult {
    workload: &'static str,
    target: String,
    channels: u64,
    pubs_per_channel: u64,
    payload: usize,
    publications: u64,
    pub_errors: u64,
    rss_before: u64,
    rss_after: u64,
    rss_delta: i64,
    bytes_per_pub: f64,
    /// `bytes_per_pub` minus the payload: what retaining costs beyond the data.
    overhead_per_pub: f64,
    publish_s: f64,
    publish_rate: f64,
    publish_server_cpu_s: f64,
    publish_server_cpu_per_pub_us: f64,
    /// Σ `history` lengths of the checked channels, and what they should be.
    history_checked: u64,
    history_expected: u64,
    history_memory_limit: u64,
    /// wsedge's own accounting, when `/metrics` has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_history_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_history_publications: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_history_evicted: Option<u64>,
    background_busy: (f64, f64),
}

/// Runs the `history-memory` workload and prints its JSON line.
pub fn history_memory(args: HistoryMemoryArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, history_memory_async(args))
}

/// The sum of the first of `names` that `/metrics` has, if any.
fn first_metric(text: &str, names: &[&str]) -> Option<u64> {
    names.iter().find_map(|n| {
        text.lines()
            .any(|l| l.starts_with(&format!("{n} ")) || l.starts_with(&format!("{n}{{")))
            .then(|| metric_sum(text, n) as u64)
    })
}

async fn history_memory_async(a: HistoryMemoryArgs) -> Result<()> {
    let c = &a.common;
    if c.target != Target::Wsedge {
        bail!("history-memory runs on wsedge only (the baselines keep no history)");
    }
    if a.channels == 0 || a.pubs_per_channel == 0 {
        bail!("--channels and --pubs-per-channel must be positive");
    }
    let publications = a.channels * a.pubs_per_channel;
    let limit = (2 * publications * (a.payload as u64 + WSEDGE_ENTRY_OVERHEAD)).max(256 << 20);
    let top = format!("history_memory_limit = {limit}");
    let tables = format!(
        "[[namespace]]\nname = \"h\"\nhistory_size = {}\nhistory_ttl = \"1h\"",
        a.pubs_per_channel
    );
    let background = background_busy(c, 1.0).await?;
    let mut server = start_server_with(c, None, &top, &tables).await?;
    let mut publ = Bulk::new(open_publisher(&server).await?, a.window);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(server.pid)?;
    let cpu0 = cpu_seconds(server.pid)?;
    let t0 = std::time::Instant::now();
    let ps = publ
        .round("h:", a.channels, a.pubs_per_channel, a.payload)
        .await?;
    let publish_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid)? - cpu0;
    if let Some(e) = &ps.first_error {
        eprintln!("wsbench: {} publish error(s), first: {e}", ps.errors);
    }
    eprintln!("wsbench: {} publications in {publish_s:.2} s", ps.acked);
    tokio::time::sleep(Duration::from_secs_f64(a.settle_s)).await;
    let rss_after = rss_bytes(server.pid)?;
    check_alive(&mut server)?;

    // One history reply holds at most `history_max_publications` (300).
    let k = a.check_channels.min(a.channels);
    let per = a.pubs_per_channel.min(300);
    let mut checked = 0;
    for i in 0..k {
        let ch = format!("h:{}", i * a.channels / k.max(1));
        checked += publ.history_len(&ch, per as u32).await?;
    }
    let metrics = sample(&server, &[]).await?.metrics.unwrap_or_default();
    let delta = rss_after as i64 - rss_before as i64;
    let per_pub = delta as f64 / ps.acked.max(1) as f64;
    let res = HistoryMemoryResult {
        workload: "history-memory",
        target: c.target.to_string(),
        channels: a.channels,
        pubs_per_channel: a.pubs_per_channel,
        payload: a.payload,
        publications: ps.acked,
        pub_errors: ps.errors,
        rss_before,
        rss_after,
        rss_delta: delta,
        bytes_per_pub: round(per_pub, 1),
        overhead_per_pub: round(per_pub - a.payload as f64, 1),
        publish_s: round(publish_s, 3),
        publish_rate: round(ps.acked as f64 / publish_s.max(1e-9), 1),
        publish_server_cpu_s: round(cpu, 2),
        publish_server_cpu_per_pub_us: round(cpu * 1e6 / ps.acked.max(1) as f64, 3),
        history_checked: checked,
        history_expected: k * per,
        history_memory_limit: limit,
        server_history_bytes: first_metric(&metrics, &["wsedge_history_bytes"]),
        server_history_publications: first_metric(&metrics, &["wsedge_history_publications"]),
        server_history_evicted: first_metric(
            &metrics,
            &[
                "wsedge_history_evicted_total",
                "wsedge_history_evictions_total",
            ],
        ),
        background_busy: background,
    };
    print_line(&res)?;
    stop_server(server).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_metric;

    #[test]
    fn optional_metrics() {
        let m =
            "# HELP x\nwsedge_history_bytes{shard=\"0\"} 10\nwsedge_history_bytes{shard=\"1\"} 5\n";
        assert_eq!(first_metric(m, &["wsedge_history_bytes"]), Some(15));
        assert_eq!(first_metric(m, &["wsedge_history_publications"]), None);
    }
}
