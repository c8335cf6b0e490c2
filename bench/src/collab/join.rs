//! The `collab-join` workload (wsedge only): how long a `collab_join`
//! snapshot takes for a story of S sections.
//!
//! One editor connection (in the driver) fills the story: S sections
//! `sec000`… of `--section-bytes` of JSON each, one `update` per section
//! from `base_version` 0, pipelined 64 at a time. Then N fresh
//! connections are opened (`connect` only), and joined as viewers one
//! after another: each sample is the time from sending `collab_join` to
//! having the whole reply received and parsed (section data included,
//! as a client that renders it would). The joined connections stay open
//! and are not read (their few join events fit in the socket buffers), so
//! the driver's only work during a sample is that sample.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::task::LocalSet;

use super::proto::{
    JoinReply, JoinRole, build_join, build_update, nearest_rank, parse_error_reply,
    parse_join_reply, parse_update_reply,
};
use super::story_namespace;
use crate::clock::mono_ns;
use crate::conn::{Conn, Control, SubOpts, handle_control, open_with};
use crate::driver::{
    CommonArgs, OnOff, background_busy, check_alive, pin_self, print_line, round, runtime,
    start_server_with, stop_server,
};
use crate::procfs::run_seconds;
use crate::scan::{ServerMsg, classify, for_each_object};
use crate::target::Target;
use crate::wsclient::OP_TEXT;

/// `wsbench collab-join`.
#[derive(Debug, Clone, clap::Args)]
pub struct CollabJoinArgs {
    /// Common options (`--workers`, `--concurrency` unused: everything runs
    /// in the driver).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Sections in the story.
    #[arg(long, default_value_t = 200)]
    pub sections: u64,
    /// Bytes of each section's data (JSON `{"t":..,"x":"xx…"}`).
    #[arg(long, default_value_t = 200)]
    pub section_bytes: usize,
    /// Joins timed (each a fresh connection joining as a viewer).
    #[arg(long, default_value_t = 200)]
    pub samples: u64,
    /// The story channel.
    #[arg(long, default_value = "story:join")]
    pub channel: String,
    /// `off`: the namespace gets `join_leave_max_subscribers = 1`, so a
    /// viewer's join is not published to the members already there (the
    /// snapshot alone); `on`: wsedge's default (published while the story
    /// has at most 1,000 members), so join i also costs i − 1 pushes.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub viewer_events: OnOff,
}

/// The `collab-join` result line.
#[derive(Debug, Serialize)]
struct JoinResult {
    workload: &'static str,
    target: String,
    sections: u64,
    section_bytes: usize,
    samples: u64,
    viewer_events: &'static str,
    fill_s: f64,
    fill_errors: u64,
    /// `update` replies during the fill whose version was not 1.
    fill_version_mismatches: u64,
    join_p50_us: f64,
    join_p99_us: f64,
    join_max_us: f64,
    join_mean_us: f64,
    /// The first join (a cold story snapshot).
    join_first_us: f64,
    /// Mean size of the reply object (JSON text).
    reply_bytes: f64,
    /// Fewest sections any reply held (should be `sections`).
    reply_sections_min: usize,
    /// `viewers` in the last reply (should be `samples`, the joiner included or not).
    last_reply_viewers: u64,
    join_errors: u64,
    /// Server CPU over the join phase (the connections were opened before),
    /// per join: scheduler run time of its threads (ns precision).
    server_cpu_per_join_us: f64,
    join_phase_s: f64,
    background_busy: (f64, f64),
}

/// Runs the `collab-join` workload and prints its JSON line.
pub fn collab_join(args: CollabJoinArgs) -> Result<()> {
    pin_self(args.common.gen_cpu)?;
    let rt = runtime()?;
    LocalSet::new().block_on(&rt, join_async(args))
}

/// Reads frames until the reply to command `id` is complete; returns its
/// object (JSON text). An error reply is an error.
async fn read_reply(c: &mut Conn, id: u64) -> Result<Vec<u8>> {
    loop {
        let h = c.reader.next_frame().await?;
        if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
            match ctl {
                Control::Closed(code) => bail!("closed by the server ({code})"),
                Control::Handled => continue,
            }
        }
        let mut found: Option<Result<Vec<u8>>> = None;
        if h.opcode == OP_TEXT {
            for_each_object(c.reader.payload(&h), |o| match classify(o) {
                ServerMsg::Reply { id: i, .. } if i == id && found.is_none() => {
                    found = Some(Ok(o.to_vec()))
                }
                ServerMsg::Error { id: i, .. } if i == id && found.is_none() => {
                    found = Some(Err(anyhow::anyhow!(
                        "error reply: {}",
                        String::from_utf8_lossy(o)
                    )))
                }
                _ => {}
            });
        }
        c.reader.consume(&h);
        if let Some(r) = found {
            return r;
        }
    }
}

/// Fills the story: one update per section, `window` unanswered at most.
/// Returns (errors, version mismatches); notes the first error.
async fn fill(c: &mut Conn, channel_json: &str, a: &CollabJoinArgs) -> Result<(u64, u64)> {
    const WINDOW: u64 = 64;
    let (mut errors, mut mismatches) = (0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut msg = Vec::with_capacity(a.section_bytes + 256);
    let mut next: u64 = 0;
    let mut answered: u64 = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered < a.sections {
        while next < a.sections && next - answered < WINDOW {
            msg.clear();
            let id = 3 + next;
            let section = format!("sec{next:03}");
            let op_id = format!("fill-{next}");
            build_update(
                &mut msg,
                id,
                channel_json,
                &section,
                0,
                mono_ns(),
                a.section_bytes,
                &op_id,
            );
            c.writer.queue(OP_TEXT, &msg);
            next += 1;
        }
        c.writer.flush().await?;
        let h = tokio::time::timeout_at(deadline, c.reader.next_frame())
            .await
            .context("filling the story: no reply within 60 s")??;
        if let Some(ctl) = handle_control(&mut c.reader, &mut c.writer, &h).await? {
            match ctl {
                Control::Closed(code) => bail!("editor closed by the server ({code})"),
                Control::Handled => continue,
            }
        }
        if h.opcode == OP_TEXT {
            for_each_object(c.reader.payload(&h), |o| {
                if let Some(r) = parse_update_reply(o) {
                    if r.id >= 3 {
                        answered += 1;
                        mismatches += u64::from(r.version != 1);
                    }
                } else if let Some(e) = parse_error_reply(o)
                    && e.id >= 3
                {
                    answered += 1;
                    errors += 1;
                    first_error.get_or_insert_with(|| String::from_utf8_lossy(o).into_owned());
                }
            });
        }
        c.reader.consume(&h);
    }
    if let Some(e) = first_error {
        eprintln!("wsbench: {errors} fill error(s), first: {e}");
    }
    Ok((errors, mismatches))
}

async fn join_async(a: CollabJoinArgs) -> Result<()> {
    let c = &a.common;
    if c.target != Target::Wsedge {
        bail!("collab-join runs on wsedge only (the baselines have no stories)");
    }
    if a.samples == 0 || a.sections == 0 {
        bail!("--samples and --sections must be positive");
    }
    let background = background_busy(c, 1.0).await?;
    let mut tables = story_namespace(1);
    if a.viewer_events == OnOff::Off {
        tables.push_str("join_leave_max_subscribers = 1\n");
    }
    let mut server = start_server_with(c, None, "", &tables).await?;
    let local = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let channel_json = serde_json::to_string(&a.channel)?;

    let editor_opts = SubOpts {
        collab: Some(JoinRole::Editor),
        user: Some("filler".into()),
        ..SubOpts::default()
    };
    let mut editor = open_with(
        server.client,
        local,
        u64::MAX / 7,
        Some(&a.channel),
        false,
        &editor_opts,
    )
    .await
    .context("the filling editor")?;
    let t0 = mono_ns();
    let (fill_errors, fill_mismatches) = fill(&mut editor, &channel_json, &a).await?;
    let fill_s = (mono_ns() - t0) as f64 / 1e9;
    eprintln!(
        "wsbench: story filled with {} sections in {fill_s:.3} s",
        a.sections
    );

    let mut conns = Vec::with_capacity(a.samples as usize);
    for i in 0..a.samples {
        let opts = SubOpts {
            user: Some(format!("v{i}")),
            ..SubOpts::default()
        };
        conns.push(open_with(server.client, local, 1000 + i, None, false, &opts).await?);
    }
    check_alive(&mut server)?;

    let mut times = Vec::with_capacity(conns.len());
    let (mut bytes, mut errors, mut min_sections, mut viewers) = (0u64, 0u64, usize::MAX, 0);
    let mut msg = Vec::new();
    let cpu0 = run_seconds(server.pid)?;
    let p0 = mono_ns();
    for conn in conns.iter_mut() {
        msg.clear();
        build_join(&mut msg, 2, &channel_json, JoinRole::Viewer);
        let t = mono_ns();
        conn.writer.send(OP_TEXT, &msg).await?;
        let res: Result<(JoinReply, usize)> =
            tokio::time::timeout(Duration::from_secs(10), read_reply(conn, 2))
                .await
                .context("no collab_join reply within 10 s")
                .and_then(|r| r)
                .and_then(|o| Ok((parse_join_reply(&o)?, o.len())));
        let dt = mono_ns() - t;
        match res {
            Ok((r, len)) => {
                times.push(dt);
                bytes += len as u64;
                min_sections = min_sections.min(r.sections.len());
                viewers = r.viewers;
                if r.role != "viewer" {
                    errors += 1;
                    eprintln!("wsbench: joined as {:?}, not viewer", r.role);
                }
            }
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("wsbench: join failed: {e:#}");
                }
            }
        }
    }
    let phase_s = (mono_ns() - p0) as f64 / 1e9;
    let cpu = run_seconds(server.pid)? - cpu0;
    check_alive(&mut server)?;

    let first = times.first().copied().unwrap_or(0);
    let n = times.len().max(1) as f64;
    let mean = times.iter().sum::<u64>() as f64 / n;
    times.sort_unstable();
    let us = |v: Option<u64>| round(v.unwrap_or(0) as f64 / 1e3, 1);
    let res = JoinResult {
        workload: "collab-join",
        target: c.target.to_string(),
        sections: a.sections,
        section_bytes: a.section_bytes,
        samples: a.samples,
        viewer_events: if a.viewer_events == OnOff::On {
            "on"
        } else {
            "off"
        },
        fill_s: round(fill_s, 3),
        fill_errors,
        fill_version_mismatches: fill_mismatches,
        join_p50_us: us(nearest_rank(&times, 0.5)),
        join_p99_us: us(nearest_rank(&times, 0.99)),
        join_max_us: us(times.last().copied()),
        join_mean_us: round(mean / 1e3, 1),
        join_first_us: us(Some(first)),
        reply_bytes: round(bytes as f64 / n, 1),
        reply_sections_min: if min_sections == usize::MAX {
            0
        } else {
            min_sections
        },
        last_reply_viewers: viewers,
        join_errors: errors,
        server_cpu_per_join_us: round(cpu * 1e6 / a.samples as f64, 2),
        join_phase_s: round(phase_s, 3),
        background_busy: background,
    };
    print_line(&res)?;
    drop(conns);
    drop(editor);
    stop_server(server).await;
    Ok(())
}
