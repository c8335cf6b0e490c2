//! The server under test: start it pinned to a CPU, find its addresses,
//! stop it, and scrape wsedge's Prometheus `/metrics`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Which server to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The wsedge release binary (`--shards 1`).
    Wsedge,
    /// The `baseline_fastws` binary of this crate.
    TokioFastws,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Wsedge => "wsedge",
            Target::TokioFastws => "tokio-fastws",
        })
    }
}

/// Where the server binaries are and how to run them.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetOpts {
    /// The wsedge binary (never rebuilt by wsbench; default: the
    /// repository's `target/release/wsedge`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/wsedge"))]
    pub wsedge_bin: PathBuf,
    /// The baseline binary (default: `baseline_fastws` next to `wsbench`).
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// CPU the server is pinned to (`taskset -c`).
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
}

/// A running server.
pub struct Server {
    child: Child,
    /// Its process id (taskset execs it, so this is the server itself).
    pub pid: u32,
    /// Client WebSocket address.
    pub client: SocketAddr,
    /// Admin HTTP address (wsedge only).
    pub admin: Option<SocketAddr>,
    /// File holding its stdout and stderr.
    pub log: PathBuf,
    /// What is being run.
    pub target: Target,
}

fn token(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key))
        .and_then(|v| v.trim_matches(|c| c == '"' || c == ',').parse().ok())
}

/// The last `n` lines of a file (for error reports).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Server {
    /// Starts `target` on ephemeral loopback ports, pinned to
    /// `opts.server_cpu`, and waits for its `listening` line.
    pub async fn start(target: Target, opts: &TargetOpts) -> Result<Server> {
        let bin = match target {
            Target::Wsedge => opts.wsedge_bin.clone(),
            Target::TokioFastws => match &opts.baseline_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .ok_or_else(|| anyhow!("no parent dir of current exe"))?
                    .join("baseline_fastws"),
            },
        };
        if !bin.exists() {
            bail!("server binary {} does not exist", bin.display());
        }
        let log = std::env::temp_dir().join(format!("wsbench-{}-{target}.log", std::process::id()));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(opts.server_cpu.to_string()).arg(&bin);
        cmd.args(["--listen", "127.0.0.1:0"]);
        if target == Target::Wsedge {
            cmd.args(["--admin-listen", "127.0.0.1:0", "--shards", "1"]);
            if std::env::var_os("WSEDGE_DRAIN_TIMEOUT").is_none() {
                cmd.env("WSEDGE_DRAIN_TIMEOUT", "1s");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .context("spawning taskset (is util-linux installed?)")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("server exited immediately"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|l| l.contains("listening") && l.contains("client="))
            {
                let client = token(line, "client=")
                    .ok_or_else(|| anyhow!("no client address in {line:?}"))?;
                let admin = token(line, "admin=");
                return Ok(Server {
                    child,
                    pid,
                    client,
                    admin,
                    log,
                    target,
                });
            }
            if let Some(st) = child.try_wait()? {
                bail!(
                    "{target} exited during start-up ({st}):\n{}",
                    tail(&log, 20)
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{target} did not report listening within 15 s:\n{}",
                    tail(&log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `Some(status)` if the server has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL. Returns the exit
    /// status and whether it had to be killed.
    pub async fn stop(mut self, grace: Duration) -> Result<(ExitStatus, bool)> {
        if let Some(st) = self.child.try_wait()? {
            return Ok((st, false));
        }
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).context("SIGTERM to the server")?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(st) => Ok((st?, false)),
            Err(_) => {
                self.child.kill().await?;
                Ok((self.child.wait().await?, true))
            }
        }
    }
}

/// Fetches `/metrics` from a wsedge admin address.
pub async fn scrape(admin: SocketAddr) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(admin)
        .await
        .context("connecting to admin")?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text);
    Ok(body)
}

/// Sums a Prometheus metric over all its label sets (`name{..} v` and `name v`).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        let l = "2026-11-26T23:44:13Z  INFO wsedge: listening client=127.0.0.1:33279 admin=127.0.0.1:44063 shards=1";
        assert_eq!(
            token(l, "client="),
            Some("127.0.0.1:33279".parse().unwrap())
        );
        assert_eq!(token(l, "admin="), Some("127.0.0.1:44063".parse().unwrap()));
    }

    #[test]
    fn sums() {
        let t = "# HELP x\nwsedge_frames_sent_total{shard=\"0\"} 5\nwsedge_frames_sent_total{shard=\"1\"} 7\nwsedge_frames_sent_totalx 1\n";
        assert_eq!(metric_sum(t, "wsedge_frames_sent_total"), 12.0);
    }
}
