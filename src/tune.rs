//! `wsedge tune --check --connections N`: an operator's preflight. Reads
//! the running kernel's limits and says what falls short for N
//! connections, and how to fix it. The arithmetic is a pure function of a
//! [`KernelView`], so it is tested without touching /proc.

use std::fmt::Write as _;

/// Bytes of user-space memory per idle, subscribed connection, with
/// margin (measured: see bench/RESULTS.md).
pub const USER_BYTES_PER_CONN: u64 = 1024;
/// Kernel bytes per idle established TCP socket on loopback (socket,
/// inode, dentry, epoll entry, TCP state), with margin (measured: see
/// bench/RESULTS.md).
pub const KERNEL_BYTES_PER_CONN: u64 = 4096;
/// Descriptors kept for the process itself.
pub const FD_RESERVE: u64 = crate::shard::FD_RESERVE;

/// The settings that bound connection count, as read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelView {
    /// RLIMIT_NOFILE soft limit of this process.
    pub nofile_soft: u64,
    /// RLIMIT_NOFILE hard limit.
    pub nofile_hard: u64,
    /// fs.nr_open.
    pub nr_open: Option<u64>,
    /// fs.file-max.
    pub file_max: Option<u64>,
    /// net.core.somaxconn.
    pub somaxconn: Option<u64>,
    /// net.ipv4.tcp_max_syn_backlog.
    pub syn_backlog: Option<u64>,
    /// net.ipv4.tcp_mem (pages): low, pressure, high.
    pub tcp_mem: Option<[u64; 3]>,
    /// net.ipv4.tcp_rmem default (bytes).
    pub tcp_rmem_default: Option<u64>,
    /// net.ipv4.tcp_wmem default (bytes).
    pub tcp_wmem_default: Option<u64>,
    /// net.netfilter.nf_conntrack_max, when conntrack is loaded.
    pub conntrack_max: Option<u64>,
    /// MemTotal (bytes).
    pub mem_total: Option<u64>,
    /// Whether io_uring is usable.
    pub io_uring: bool,
    /// net.ipv4.tcp_migrate_req: connections waiting in a closing
    /// listener's queue move to another listener of the port.
    pub tcp_migrate_req: Option<u64>,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What is checked.
    pub name: &'static str,
    /// The current value.
    pub current: String,
    /// What N connections need.
    pub needed: String,
    /// Whether it is enough.
    pub ok: bool,
    /// How to fix it when it is not.
    pub fix: String,
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_triple(path: &str) -> Option<[u64; 3]> {
    let s = std::fs::read_to_string(path).ok()?;
    let v: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 3).then(|| [v[0], v[1], v[2]])
}

/// Reads the running kernel's settings.
pub fn read_kernel() -> KernelView {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to write into.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    let mem_total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    KernelView {
        nofile_soft: r.rlim_cur,
        nofile_hard: r.rlim_max,
        nr_open: read_u64("/proc/sys/fs/nr_open"),
        file_max: read_u64("/proc/sys/fs/file-max"),
        somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
        syn_backlog: read_u64("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        tcp_mem: read_triple("/proc/sys/net/ipv4/tcp_mem"),
        tcp_rmem_default: read_triple("/proc/sys/net/ipv4/tcp_rmem").map(|t| t[1]),
        tcp_wmem_default: read_triple("/proc/sys/net/ipv4/tcp_wmem").map(|t| t[1]),
        conntrack_max: read_u64("/proc/sys/net/netfilter/nf_conntrack_max"),
        mem_total,
        io_uring: monoio::utils::detect_uring(),
        tcp_migrate_req: read_u64("/proc/sys/net/ipv4/tcp_migrate_req"),
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// What `connections` need from `k`, with `backlog` the configured listen
/// backlog.
pub fn check(k: &KernelView, connections: u64, backlog: u64) -> Vec<Finding> {
    let fds = connections + FD_RESERVE;
    let mut out = Vec::new();
    let mut push = |name, current: String, needed: String, ok: bool, fix: String| {
        out.push(Finding {
            name,
            current,
            needed,
            ok,
            fix,
        })
    };
    push(
        "RLIMIT_NOFILE (soft)",
        k.nofile_soft.to_string(),
        format!(">= {fds}"),
        k.nofile_soft >= fds,
        format!("LimitNOFILE={fds} in the systemd unit (or `ulimit -n {fds}`)"),
    );
    push(
        "RLIMIT_NOFILE (hard)",
        k.nofile_hard.to_string(),
        format!(">= {fds}"),
        k.nofile_hard >= fds,
        format!("LimitNOFILE={fds} in the systemd unit"),
    );
    if let Some(v) = k.nr_open {
        push(
            "fs.nr_open",
            v.to_string(),
            format!(">= {fds}"),
            v >= fds,
            format!("sysctl -w fs.nr_open={}", fds.max(1_100_000)),
        );
    }
    if let Some(v) = k.file_max {
        let need = fds * 2;
        push(
            "fs.file-max",
            v.to_string(),
            format!(">= {need}"),
            v >= need,
            format!("sysctl -w fs.file-max={need}"),
        );
    }
    if let Some(v) = k.somaxconn {
        push(
            "net.core.somaxconn",
            v.to_string(),
            format!(">= {backlog}"),
            v >= backlog,
            format!("sysctl -w net.core.somaxconn={}", backlog.max(8192)),
        );
    }
    if let Some(v) = k.syn_backlog {
        push(
            "net.ipv4.tcp_max_syn_backlog",
            v.to_string(),
            format!(">= {backlog}"),
            v >= backlog,
            format!(
                "sysctl -w net.ipv4.tcp_max_syn_backlog={}",
                backlog.max(16384)
            ),
        );
    }
    if let Some(v) = k.tcp_migrate_req {
        push(
            "net.ipv4.tcp_migrate_req",
            v.to_string(),
            "1 (a restart hands queued connections to the new process)".into(),
            v == 1,
            "sysctl -w net.ipv4.tcp_migrate_req=1".into(),
        );
    }
    if let Some([_, _, high]) = k.tcp_mem {
        // One 4 KiB page in flight per connection.
        let need = connections;
        push(
            "net.ipv4.tcp_mem (high, pages)",
            high.to_string(),
            format!(">= {need} (4 KiB in flight per connection)"),
            high >= need,
            format!(
                "sysctl -w net.ipv4.tcp_mem=\"{} {} {}\"",
                need / 2,
                need * 3 / 4,
                need
            ),
        );
    }
    if let (Some(r), Some(w)) = (k.tcp_rmem_default, k.tcp_wmem_default) {
        let ok = r <= 131_072 && w <= 131_072;
        push(
            "tcp_rmem/tcp_wmem default",
            format!("{r}/{w} bytes"),
            "<= 128 KiB each (per-socket buffers start small)".into(),
            ok,
            "sysctl -w net.ipv4.tcp_rmem=\"4096 16384 4194304\" net.ipv4.tcp_wmem=\"4096 16384 4194304\"".into(),
        );
    }
    if let Some(v) = k.conntrack_max {
        push(
            "net.netfilter.nf_conntrack_max",
            v.to_string(),
            format!(">= {}", connections * 2),
            v >= connections * 2,
            format!(
                "sysctl -w net.netfilter.nf_conntrack_max={}",
                connections * 2
            ),
        );
    }
    if let Some(total) = k.mem_total {
        let need = connections * (USER_BYTES_PER_CONN + KERNEL_BYTES_PER_CONN);
        push(
            "memory (MemTotal)",
            gib(total),
            format!(
                ">= {} ({} B user + {} B kernel per idle connection, x2 headroom)",
                gib(need * 2),
                USER_BYTES_PER_CONN,
                KERNEL_BYTES_PER_CONN
            ),
            total >= need * 2,
            "more memory, or fewer connections per node".into(),
        );
    }
    push(
        "io_uring",
        if k.io_uring {
            "available"
        } else {
            "unavailable"
        }
        .into(),
        "available (else the epoll fallback is used)".into(),
        true,
        "check kernel.io_uring_disabled and seccomp filters".into(),
    );
    out
}

/// Renders findings as a table; returns whether all are met.
pub fn report(findings: &[Finding], connections: u64) -> (String, bool) {
    let mut s = String::new();
    let all_ok = findings.iter().all(|f| f.ok);
    let _ = writeln!(s, "wsedge tune --check: {connections} connections\n");
    for f in findings {
        let _ = writeln!(
            s,
            "[{}] {:<32} current {:<14} need {}",
            if f.ok { " ok " } else { "FAIL" },
            f.name,
            f.current,
            f.needed
        );
        if !f.ok {
            let _ = writeln!(s, "       fix: {}", f.fix);
        }
    }
    let _ = writeln!(
        s,
        "\n{}",
        if all_ok {
            "everything needed is in place"
        } else {
            "some settings fall short: apply the fixes (see tuning/sysctl.d/90-wsedge.conf)"
        }
    );
    (s, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_box() -> KernelView {
        KernelView {
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            nr_open: Some(1_048_576),
            file_max: Some(9_223_372_036_854_775_807),
            somaxconn: Some(4096),
            syn_backlog: Some(512),
            tcp_mem: Some([187_000, 250_000, 375_000]),
            tcp_rmem_default: Some(131_072),
            tcp_wmem_default: Some(16_384),
            conntrack_max: None,
            mem_total: Some(24 << 30),
            io_uring: true,
            tcp_migrate_req: Some(1),
        }
    }

    #[test]
    fn a_restart_needs_tcp_migrate_req() {
        let k = KernelView {
            tcp_migrate_req: Some(0),
            ..small_box()
        };
        let f = check(&k, 15_000, 512);
        let m = f
            .iter()
            .find(|f| f.name == "net.ipv4.tcp_migrate_req")
            .expect("checked");
        assert!(!m.ok);
        assert_eq!(m.fix, "sysctl -w net.ipv4.tcp_migrate_req=1");
        let sysctl = include_str!("../tuning/sysctl.d/90-wsedge.conf");
        assert!(
            sysctl
                .lines()
                .any(|l| l.trim() == "net.ipv4.tcp_migrate_req = 1"),
            "tuning/ sets what tune --check asks for"
        );
    }

    #[test]
    fn a_million_needs_more_than_a_default_box() {
        let f = check(&small_box(), 1_000_000, 4096);
        let failed: Vec<&str> = f.iter().filter(|f| !f.ok).map(|f| f.name).collect();
        assert!(failed.contains(&"RLIMIT_NOFILE (soft)"));
        assert!(failed.contains(&"net.ipv4.tcp_max_syn_backlog"));
        assert!(failed.contains(&"net.ipv4.tcp_mem (high, pages)"));
        assert!(
            !failed.contains(&"memory (MemTotal)"),
            "24 GiB holds 1M at ~5 KiB each"
        );
        let (text, ok) = report(&f, 1_000_000);
        assert!(!ok);
        assert!(text.contains("fix: LimitNOFILE=1000064"));
    }

    #[test]
    fn fifteen_thousand_fit_this_box() {
        let f = check(&small_box(), 15_000, 512);
        assert!(f.iter().all(|f| f.ok), "{f:?}");
        assert!(report(&f, 15_000).1);
    }
}
