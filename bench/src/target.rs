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
    /// The wsedge release binary (`--shards 1` unless `--shards` says otherwise).
    Wsedge,
    /// The `baseline_fastws` binary of this crate.
    TokioFastws,
    /// The `baseline_tungstenite` binary of this crate.
    TokioTungstenite,
    /// `baselines/node-ws/server.js` (Node.js + the `ws` package).
    NodeWs,
    /// `baselines/bun/server.js` (Bun's built-in server: uWebSockets, topic pub/sub).
    Bun,
}

impl Target {
    /// Every target, in reporting order.
    pub const ALL: [Target; 5] = [
        Target::Wsedge,
        Target::TokioFastws,
        Target::TokioTungstenite,
        Target::NodeWs,
        Target::Bun,
    ];
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Wsedge => "wsedge",
            Target::TokioFastws => "tokio-fastws",
            Target::TokioTungstenite => "tokio-tungstenite",
            Target::NodeWs => "node-ws",
            Target::Bun => "bun",
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
    /// The `tokio-fastws` binary (default: `baseline_fastws` next to `wsbench`).
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// The `tokio-tungstenite` binary (default: `baseline_tungstenite` next
    /// to `wsbench`).
    #[arg(long)]
    pub tungstenite_bin: Option<PathBuf>,
    /// The Node.js executable for `node-ws`.
    #[arg(long, default_value = "node")]
    pub node_bin: PathBuf,
    /// The Bun executable for `bun` (default: the one `npm ci` installs in
    /// `bench/baselines/bun/node_modules`, installed on first use).
    #[arg(long)]
    pub bun_bin: Option<PathBuf>,
    /// CPU the server is pinned to (`taskset -c`); with `--shards N > 1`,
    /// the first of N consecutive CPUs (modulo the CPU count).
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// wsedge only: shards (one thread each). With N > 1 the server is
    /// pinned to N CPUs, so it shares the generator's CPU.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// CPUs the server is pinned to (default: one per shard). `--shards 2
    /// --server-cores 1` puts both shards on `--server-cpu`, leaving the
    /// generator its own CPU: what crossing shards costs, without two
    /// shards' worth of cores.
    #[arg(long)]
    pub server_cores: Option<usize>,
    /// wsedge only: TOML text added to the configuration file the driver
    /// writes (after the workload's top-level keys, before its
    /// `[[namespace]]` tables), e.g. `'history_memory_limit = 1073741824'`.
    /// With it, every workload runs wsedge with `--config`.
    #[arg(long)]
    pub wsedge_config_extra: Option<String>,
}

impl TargetOpts {
    /// The CPUs the server is pinned to.
    pub fn server_cpus(&self) -> Vec<usize> {
        let n = crate::procfs::cpus_online();
        let k = self.server_cores.unwrap_or(self.shards).clamp(1, n);
        let mut v: Vec<usize> = (0..k).map(|i| (self.server_cpu + i) % n).collect();
        v.sort_unstable();
        v
    }
}

/// Directory of the Node.js baseline (`server.js`, `package.json`, lockfile).
pub const NODE_WS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/baselines/node-ws");

/// Directory of the Bun baseline (`server.js`, `package.json`, lockfile;
/// the `bun` npm package ships the binary).
pub const BUN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/baselines/bun");

/// The Bun binary `npm ci` installs in [`BUN_DIR`] (the package's
/// postinstall puts the platform binary there).
pub fn bun_default_bin() -> PathBuf {
    Path::new(BUN_DIR).join("node_modules/bun/bin/bun.exe")
}

/// Runs `npm install` in [`NODE_WS_DIR`] if `node_modules` is missing.
pub async fn ensure_node_modules() -> Result<()> {
    npm_install(Path::new(NODE_WS_DIR), "node_modules/ws/package.json").await
}

/// Runs `npm install` in [`BUN_DIR`] if Bun's binary is missing.
pub async fn ensure_bun() -> Result<()> {
    npm_install(Path::new(BUN_DIR), "node_modules/bun/bin/bun.exe").await?;
    let bin = bun_default_bin();
    // The package ships a placeholder until its postinstall ran.
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    if size < 1 << 20 {
        bail!(
            "{} is a placeholder ({size} bytes): bun's postinstall did not run \
             (npm --ignore-scripts?); run `npm ci` in {BUN_DIR}",
            bin.display()
        );
    }
    Ok(())
}

/// `npm install` in `dir` unless `marker` (relative to it) exists.
async fn npm_install(dir: &Path, marker: &str) -> Result<()> {
    if dir.join(marker).exists() {
        return Ok(());
    }
    eprintln!(
        "wsbench: node_modules missing: npm install in {}",
        dir.display()
    );
    let st = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .await
        .context("running npm (is Node.js + npm installed?)")?;
    if !st.success() {
        bail!("npm install in {} failed: {st}", dir.display());
    }
    Ok(())
}

fn sibling_bin(name: &str) -> Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow!("no parent dir of current exe"))?
        .join(name))
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
    /// `opts.server_cpus()`, and waits for its `listening` line.
    ///
    /// `compression`: `None` leaves the target's default (wsedge: on, but
    /// only used when a client offers it; node-ws and bun: off);
    /// `Some(false)` sets `WSEDGE_COMPRESSION=false` for wsedge and
    /// `--compression off` for node-ws and bun; `Some(true)` leaves wsedge's
    /// default and passes `--compression on` to node-ws and bun. The Rust
    /// baselines have none.
    ///
    /// `config`: wsedge only, a TOML file passed with `--config`.
    pub async fn start(
        target: Target,
        opts: &TargetOpts,
        compression: Option<bool>,
        config: Option<&Path>,
    ) -> Result<Server> {
        Server::start_named(target, opts, compression, config, &[], &target.to_string()).await
    }

    /// [`Server::start`] with extra environment variables (e.g. a cluster
    /// node's `WSEDGE_CLUSTER_*`) and a `label` naming its log,
    /// `/tmp/wsbench-<driver pid>-<label>.log` (several servers in one run).
    pub async fn start_named(
        target: Target,
        opts: &TargetOpts,
        compression: Option<bool>,
        config: Option<&Path>,
        env: &[(String, String)],
        label: &str,
    ) -> Result<Server> {
        let bin = match target {
            Target::Wsedge => opts.wsedge_bin.clone(),
            Target::TokioFastws => match &opts.baseline_bin {
                Some(b) => b.clone(),
                None => sibling_bin("baseline_fastws")?,
            },
            Target::TokioTungstenite => match &opts.tungstenite_bin {
                Some(b) => b.clone(),
                None => sibling_bin("baseline_tungstenite")?,
            },
            Target::NodeWs => {
                ensure_node_modules().await?;
                Path::new(NODE_WS_DIR).join("server.js")
            }
            Target::Bun => {
                if opts.bun_bin.is_none() {
                    ensure_bun().await?;
                }
                Path::new(BUN_DIR).join("server.js")
            }
        };
        if !bin.exists() {
            bail!("server binary {} does not exist", bin.display());
        }
        if target != Target::Wsedge && opts.shards != 1 {
            bail!("--shards applies to wsedge only");
        }
        if target != Target::Wsedge && (config.is_some() || opts.wsedge_config_extra.is_some()) {
            bail!("a wsedge configuration applies to wsedge only");
        }
        let log = std::env::temp_dir().join(format!("wsbench-{}-{label}.log", std::process::id()));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let cpus: Vec<String> = opts.server_cpus().iter().map(|c| c.to_string()).collect();
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpus.join(","));
        match target {
            Target::NodeWs => {
                cmd.arg(&opts.node_bin);
            }
            Target::Bun => {
                cmd.arg(opts.bun_bin.clone().unwrap_or_else(bun_default_bin));
            }
            _ => {}
        }
        cmd.arg(&bin);
        cmd.args(["--listen", "127.0.0.1:0"]);
        match target {
            Target::Wsedge => {
                if let Some(path) = config {
                    cmd.arg("--config").arg(path);
                }
                cmd.args(["--admin-listen", "127.0.0.1:0", "--shards"]);
                cmd.arg(opts.shards.max(1).to_string());
                if std::env::var_os("WSEDGE_DRAIN_TIMEOUT").is_none() {
                    cmd.env("WSEDGE_DRAIN_TIMEOUT", "1s");
                }
                // The server API is not used by the bench: a port of its own
                // so a node already on 9091 does not stop the run.
                if std::env::var_os("WSEDGE_API_LISTEN").is_none() {
                    cmd.env("WSEDGE_API_LISTEN", "127.0.0.1:0");
                }
                if compression == Some(false) {
                    cmd.env("WSEDGE_COMPRESSION", "false");
                }
                // The bench publishes flat out from one connection; the
                // per-connection command rate limit (200/s by default)
                // would otherwise be what it measures. The baselines have
                // no such limit.
                if std::env::var_os("WSEDGE_MAX_COMMANDS_PER_SECOND").is_none() {
                    cmd.env("WSEDGE_MAX_COMMANDS_PER_SECOND", "0");
                }
            }
            Target::NodeWs | Target::Bun => {
                let on = compression == Some(true);
                cmd.args(["--compression", if on { "on" } else { "off" }]);
            }
            Target::TokioFastws | Target::TokioTungstenite => {}
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
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

    /// SIGKILL (a node crashing), and waits for the process to be gone.
    pub async fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL)
                .context("SIGKILL to the server")?;
        }
        self.child.wait().await?;
        Ok(())
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

/// A wsedge configuration for one run: top-level keys, then `extra`
/// (`--wsedge-config-extra`), then the `[[namespace]]` tables, so that
/// neither the workload's top-level keys nor the extra text land inside a
/// table.
pub fn wsedge_config(top: &str, extra: Option<&str>, tables: &str) -> String {
    let mut s = String::new();
    for part in [top, extra.unwrap_or(""), tables] {
        if !part.trim().is_empty() {
            s.push_str(part.trim_end());
            s.push('\n');
        }
    }
    s
}

/// Writes `text` to `/tmp/wsbench-<pid>-wsedge.toml` and returns the path.
pub fn write_config(text: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("wsbench-{}-wsedge.toml", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Fetches `/metrics` from a wsedge admin address.
pub async fn scrape(admin: SocketAddr) -> Result<String> {
    http_get(admin, "/metrics").await
}

/// The body of an HTTP/1.0 `GET path` to `addr` (wsedge's admin port,
/// nats-server's monitoring port).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
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
    fn config_order() {
        let c = wsedge_config("a = 1", Some("b = 2\n"), "[[namespace]]\nname = \"h\"");
        assert_eq!(c, "a = 1\nb = 2\n[[namespace]]\nname = \"h\"\n");
        assert_eq!(wsedge_config("", None, ""), "");
    }

    #[test]
    fn sums() {
        let t = "# HELP x\nwsedge_frames_sent_total{shard=\"0\"} 5\nwsedge_frames_sent_total{shard=\"1\"} 7\nwsedge_frames_sent_totalx 1\n";
        assert_eq!(metric_sum(t, "wsedge_frames_sent_total"), 12.0);
    }
}
