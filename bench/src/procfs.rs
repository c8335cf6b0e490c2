//! Process and kernel figures from `/proc`.

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

/// Resident set size (`VmRSS`) of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("parsing VmRSS in {path}"))?;
            return Ok(kb * 1024);
        }
    }
    Err(anyhow!("no VmRSS line in {path}"))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of `/proc/PID/stat` times.
pub fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// User + system CPU time consumed so far by `pid` (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; fields after its closing
    // parenthesis are space-separated, starting with field 3 (state).
    let after = text
        .rsplit_once(')')
        .map(|(_, a)| a)
        .ok_or_else(|| anyhow!("malformed {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime is field 14, stime field 15 (1-based); fields[0] is field 3.
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("short {path}"))?
            .parse::<u64>()
            .map(|v| v as f64)
            .with_context(|| format!("parsing {path}"))
    };
    Ok((tick(11)? + tick(12)?) / clk_tck())
}

/// Time on CPU of every thread of `pid` so far, in seconds, from
/// `/proc/PID/task/*/schedstat` (the scheduler's nanosecond count, where
/// `/proc/PID/stat` counts 10 ms clock ticks): for phases too short for
/// [`cpu_seconds`]. A thread that is running at the moment may not have
/// its current slice counted yet.
pub fn run_seconds(pid: u32) -> Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns: u64 = 0;
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = e?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(&path) {
            ns += parse_schedstat(&text).ok_or_else(|| anyhow!("malformed {}", path.display()))?;
        }
    }
    Ok(ns as f64 / 1e9)
}

/// This process's soft open-file limit (`Max open files` in
/// `/proc/self/limits`); `None` when unlimited or unreadable. A server the
/// driver starts inherits it.
pub fn open_file_limit() -> Option<u64> {
    parse_open_file_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn parse_open_file_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The first field of a `schedstat` line: nanoseconds on CPU.
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// CPUs online (`_SC_NPROCESSORS_ONLN`): unlike
/// `std::thread::available_parallelism`, not limited by this process's
/// CPU affinity.
pub fn cpus_online() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map_or(2, |n| n.max(1) as usize)
}

/// Cumulative time of one CPU from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTimes {
    /// All time (every column).
    pub total: u64,
    /// Time not idle and not waiting for I/O (user, system, irq, softirq, …).
    pub busy: u64,
}

impl CoreTimes {
    /// Fraction of `self..later` the core was busy (0–1).
    pub fn busy_since(&self, earlier: &CoreTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Samples [`CoreTimes`] of `cpu`. Unlike a process's `utime + stime`,
/// this includes softirq time, where much of loopback TCP processing runs.
pub fn core_times(cpu: usize) -> Result<CoreTimes> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .ok_or_else(|| anyhow!("no {name} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice;
    // guest time is already included in user.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok(CoreTimes {
        total,
        busy: total - idle,
    })
}

/// System-wide kernel memory attributable to TCP sockets, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KernelMem {
    /// `/proc/net/sockstat` `TCP: ... mem N` (pages) × 4096: socket buffers.
    pub tcp_mem: u64,
    /// Σ active_objs × objsize over the socket-related slab caches (see
    /// [`SLAB_CACHES`]).
    pub slab: u64,
    /// What waiting on a socket costs the kernel, not in [`total`]: Σ
    /// active_objs × objsize over [`WAIT_CACHES`] (an epoll item and its
    /// wait entry per socket in an epoll set; an io_uring request per
    /// operation in flight, e.g. a multishot recv per connection; the
    /// request's poll entry comes from `kmalloc`, not counted).
    ///
    /// [`total`]: KernelMem::total
    pub wait: u64,
}

impl KernelMem {
    /// Both parts together.
    pub fn total(&self) -> u64 {
        self.tcp_mem + self.slab
    }
}

/// Slab caches counted by [`kernel_mem`]: exact names, or prefixes ending in `*`.
/// `kmalloc-*` is deliberately left out (too noisy).
pub const SLAB_CACHES: &[&str] = &[
    "TCP",
    "tcp_bind_bucket",
    "sock_inode_cache",
    "dentry",
    "request_sock_TCP",
    "skbuff*",
];

/// Slab caches counted in [`KernelMem::wait`].
pub const WAIT_CACHES: &[&str] = &["eventpoll_epi", "eventpoll_pwq", "io_kiocb"];

fn slab_counted(name: &str) -> bool {
    SLAB_CACHES.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *p,
    })
}

/// Samples [`KernelMem`] (needs read access to `/proc/slabinfo`, i.e. root).
pub fn kernel_mem() -> Result<KernelMem> {
    let sockstat =
        std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
    let mut tcp_mem = None;
    for line in sockstat.lines() {
        if let Some(rest) = line.strip_prefix("TCP:") {
            let toks: Vec<&str> = rest.split_whitespace().collect();
            for pair in toks.chunks(2) {
                if let [k, v] = pair
                    && *k == "mem"
                {
                    tcp_mem = Some(v.parse::<u64>().context("parsing sockstat TCP mem")? * 4096);
                }
            }
        }
    }
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    let mut slab = 0u64;
    let mut wait = 0u64;
    for line in slabinfo.lines().skip(2) {
        let mut it = line.split_whitespace();
        let (Some(name), Some(active), Some(_num), Some(size)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let active: u64 = active.parse().unwrap_or(0);
        let size: u64 = size.parse().unwrap_or(0);
        if slab_counted(name) {
            slab += active * size;
        } else if WAIT_CACHES.contains(&name) {
            wait += active * size;
        }
    }
    Ok(KernelMem {
        tcp_mem: tcp_mem.ok_or_else(|| anyhow!("no TCP mem in /proc/net/sockstat"))?,
        slab,
        wait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max processes             95644                95644                processes \n\
                 Max open files            20000                20000                files     \n";
        assert_eq!(parse_open_file_limit(t), Some(20_000));
        let t = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_file_limit(t), None);
        assert_eq!(parse_open_file_limit(""), None);
    }

    #[test]
    fn schedstat() {
        assert_eq!(
            parse_schedstat("232007785 56113952 597\n"),
            Some(232_007_785)
        );
        assert_eq!(parse_schedstat(""), None);
        let own = run_seconds(std::process::id()).unwrap();
        assert!(own > 0.0, "{own}");
    }

    #[test]
    fn slab_names() {
        assert!(slab_counted("TCP"));
        assert!(!slab_counted("TCPv6"));
        assert!(slab_counted("skbuff_head_cache"));
        assert!(!slab_counted("kmalloc-64"));
    }

    #[test]
    fn core0() {
        let a = core_times(0).unwrap();
        assert!(a.total >= a.busy);
    }

    #[test]
    fn own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }
}
