//! The kernel floor probe (`wsbench floor`): what one `write` of a small
//! WebSocket frame to a loopback TCP socket costs, with no server at all.
//!
//! One process, pinned to one CPU, opens N loopback socket pairs, then per
//! round writes one 130-byte frame to each of the N sockets with a plain
//! `write` (batch 1) or 16 frames per socket with one `writev` (batch 16),
//! timing only the writes (wall clock, this thread's CPU time and the
//! core's busy time from `/proc/stat`, which includes softirq). The receive
//! sides are drained between rounds, untimed. On loopback the receive path
//! runs inside the sender's `write` (softirq), so this is the floor a
//! fan-out server pays per socket write on this machine.

use std::io::{IoSlice, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;

use crate::driver::{pin_self, print_line, round};
use crate::procfs::core_times;

/// `wsbench floor`.
#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Socket pairs (each pair is 2 descriptors; at most 9,900 under the
    /// 20,000 fd limit).
    #[arg(long, default_value_t = 9_900)]
    pub sockets: usize,
    /// Frames per write, comma-separated (1 = plain `write`, more = `writev`).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batch: Vec<usize>,
    /// Bytes per frame (a 2-byte header + payload).
    #[arg(long, default_value_t = 130)]
    pub frame_bytes: usize,
    /// Timed rounds per batch size (each round writes once to every socket).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// CPU the probe is pinned to.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// CPU whose load is checked beside `--cpu` for the noise check.
    #[arg(long, default_value_t = 1)]
    pub other_cpu: usize,
}

/// Figures for one batch size.
#[derive(Debug, Serialize)]
struct BatchResult {
    batch: usize,
    writes: u64,
    msgs: u64,
    us_per_write: f64,
    us_per_msg: f64,
    thread_cpu_us_per_write: f64,
    thread_cpu_us_per_msg: f64,
    core_us_per_write: f64,
    core_us_per_msg: f64,
    core_busy: f64,
    wall_s: f64,
}

/// The `floor` result line.
#[derive(Debug, Serialize)]
struct FloorResult {
    workload: &'static str,
    target: &'static str,
    sockets: usize,
    frame_bytes: usize,
    rounds: usize,
    cpu: usize,
    results: Vec<BatchResult>,
    background_busy: (f64, f64),
}

fn thread_cpu_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Reads everything pending on every receiver (non-blocking).
fn drain(rx: &mut [TcpStream], buf: &mut [u8]) -> Result<u64> {
    let mut total = 0;
    for s in rx.iter_mut() {
        loop {
            match s.read(buf) {
                Ok(0) => bail!("receiver closed"),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("draining"),
            }
        }
    }
    Ok(total)
}

/// Runs the floor probe and prints its JSON line.
pub fn floor(a: FloorArgs) -> Result<()> {
    if a.sockets == 0 || a.sockets > 9_900 {
        bail!("--sockets must be 1..=9900 (two descriptors per pair, fd limit 20,000)");
    }
    if !(4..=65_535).contains(&a.frame_bytes) {
        bail!("--frame-bytes must be 4..=65535");
    }
    pin_self(a.cpu)?;
    let b0 = (core_times(a.cpu)?, core_times(a.other_cpu)?);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let b1 = (core_times(a.cpu)?, core_times(a.other_cpu)?);
    let background = (
        round(b1.0.busy_since(&b0.0), 3),
        round(b1.1.busy_since(&b0.1), 3),
    );
    if background.0 > 0.05 || background.1 > 0.05 {
        eprintln!(
            "wsbench: WARNING the CPUs are already busy before the run ({:.0}%, {:.0}%)",
            background.0 * 100.0,
            background.1 * 100.0
        );
    }

    // A server frame: text, FIN, unmasked.
    let mut frame = vec![b'x'; a.frame_bytes];
    frame[0] = 0x81;
    if a.frame_bytes - 2 <= 125 {
        frame[1] = (a.frame_bytes - 2) as u8;
    } else {
        frame[1] = 126;
        frame[2..4].copy_from_slice(&((a.frame_bytes - 4) as u16).to_be_bytes());
    }

    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    let addr = listener.local_addr()?;
    let mut tx = Vec::with_capacity(a.sockets);
    let mut rx = Vec::with_capacity(a.sockets);
    for _ in 0..a.sockets {
        let c = TcpStream::connect(addr).context("connect")?;
        let (s, _) = listener.accept().context("accept")?;
        // The server side writes, as a server would, with Nagle off.
        s.set_nodelay(true)?;
        c.set_nonblocking(true)?;
        tx.push(s);
        rx.push(c);
    }
    drop(listener);
    eprintln!("wsbench: floor: {} socket pairs open", a.sockets);

    let mut buf = vec![0u8; 64 * 1024];
    let mut results = Vec::new();
    for &batch in &a.batch {
        let batch = batch.max(1);
        let slices: Vec<IoSlice<'_>> = (0..batch).map(|_| IoSlice::new(&frame)).collect();
        let want = (a.frame_bytes * batch) as u64;
        // One untimed warm-up round.
        let (mut wall, mut cpu, mut core_busy, mut core_total) = (0f64, 0u64, 0u64, 0u64);
        for round_i in 0..=a.rounds {
            drain(&mut rx, &mut buf)?;
            let c0 = core_times(a.cpu)?;
            let t0 = Instant::now();
            let u0 = thread_cpu_ns();
            for s in tx.iter_mut() {
                let n = if batch == 1 {
                    s.write(&frame)?
                } else {
                    s.write_vectored(&slices)?
                };
                if n as u64 != want {
                    bail!("short write: {n} of {want} bytes");
                }
            }
            let u1 = thread_cpu_ns();
            let t1 = Instant::now();
            let c1 = core_times(a.cpu)?;
            if round_i > 0 {
                wall += (t1 - t0).as_secs_f64();
                cpu += u1 - u0;
                core_busy += c1.busy - c0.busy;
                core_total += c1.total - c0.total;
            }
        }
        drain(&mut rx, &mut buf)?;
        let writes = (a.sockets * a.rounds) as u64;
        let msgs = writes * batch as u64;
        let tick_s = 1.0 / crate::procfs::clk_tck();
        let core_s = core_busy as f64 * tick_s;
        results.push(BatchResult {
            batch,
            writes,
            msgs,
            us_per_write: round(wall * 1e6 / writes as f64, 3),
            us_per_msg: round(wall * 1e6 / msgs as f64, 3),
            thread_cpu_us_per_write: round(cpu as f64 / 1e3 / writes as f64, 3),
            thread_cpu_us_per_msg: round(cpu as f64 / 1e3 / msgs as f64, 3),
            core_us_per_write: round(core_s * 1e6 / writes as f64, 3),
            core_us_per_msg: round(core_s * 1e6 / msgs as f64, 3),
            core_busy: round(
                if core_total > 0 {
                    core_busy as f64 / core_total as f64
                } else {
                    0.0
                },
                3,
            ),
            wall_s: round(wall, 4),
        });
    }
    print_line(&FloorResult {
        workload: "floor",
        target: "kernel",
        sockets: a.sockets,
        frame_bytes: a.frame_bytes,
        rounds: a.rounds,
        cpu: a.cpu,
        results,
        background_busy: background,
    })
}
