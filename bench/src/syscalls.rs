//! The server's system calls over a measured span, counted by `perf stat`
//! on the kernel's syscall tracepoints (`raw_syscalls:sys_enter` for the
//! total, `syscalls:sys_enter_<name>` per call). Counting only, no
//! sampling: the overhead is a counter increment per call.
//!
//! On when `WSBENCH_COUNT_SYSCALLS=1` is set (needs `perf` and tracepoint
//! access: root, or `kernel.perf_event_paranoid` ≤ -1); `idle` counts the
//! connect phase, `fanout` the window. Absent or failing, the result line
//! simply has no `syscalls` field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde::Serialize;

/// The calls counted one by one (the total counts every call).
const CALLS: &[&str] = &[
    "io_uring_enter",
    "epoll_wait",
    "epoll_pwait",
    "read",
    "recvfrom",
    "write",
    "writev",
    "sendto",
    "accept4",
    "getpeername",
    "epoll_ctl",
    "close",
    "shutdown",
    "ioctl",
];

/// What [`SyscallCounter::stop`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct SyscallCounts {
    /// Every system call of every server thread while counting.
    pub total: u64,
    /// The calls of [`CALLS`] that happened, by name.
    pub by_call: BTreeMap<String, u64>,
    /// Seconds counted (from the start of `perf` to its stop).
    pub secs: f64,
}

/// A running `perf stat` attached to the server.
pub struct SyscallCounter {
    child: Child,
    out: PathBuf,
    started: Instant,
}

/// Whether the environment asks for syscall counts.
pub fn wanted() -> bool {
    std::env::var("WSBENCH_COUNT_SYSCALLS").is_ok_and(|v| v == "1")
}

impl SyscallCounter {
    /// Starts counting the calls of process `pid` (all its threads), if
    /// [`wanted`].
    pub fn start(pid: u32) -> Option<Self> {
        if !wanted() {
            return None;
        }
        let out =
            std::env::temp_dir().join(format!("wsbench-{}-perf-{pid}.csv", std::process::id()));
        let mut events = String::from("raw_syscalls:sys_enter");
        for c in CALLS {
            events.push_str(",syscalls:sys_enter_");
            events.push_str(c);
        }
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-o"])
            .arg(&out)
            .args(["-e", &events, "-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("wsbench: WARNING cannot run perf ({e}): no syscall counts"))
            .ok()?;
        // perf attaches to the threads within a few milliseconds.
        std::thread::sleep(std::time::Duration::from_millis(20));
        Some(Self {
            child,
            out,
            started: Instant::now(),
        })
    }

    /// Stops counting and reads the counts.
    pub fn stop(mut self) -> Option<SyscallCounts> {
        let secs = self.started.elapsed().as_secs_f64();
        // SIGINT makes perf stop and write its counts.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).ok()?;
        let _ = std::fs::remove_file(&self.out);
        let mut total = None;
        let mut by_call = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 3 {
                continue;
            }
            let Ok(n) = f[0].trim().parse::<u64>() else {
                continue;
            };
            let event = f[2].trim();
            if event == "raw_syscalls:sys_enter" {
                total = Some(n);
            } else if let Some(name) = event.strip_prefix("syscalls:sys_enter_")
                && n > 0
            {
                by_call.insert(name.to_string(), n);
            }
        }
        let total = total.or_else(|| {
            eprintln!("wsbench: WARNING perf gave no syscall count:\n{text}");
            None
        })?;
        Some(SyscallCounts {
            total,
            by_call,
            secs: (secs * 1000.0).round() / 1000.0,
        })
    }
}
