//! Typed configuration: defaults, then a TOML file (`--config`), then
//! environment variables (`WSEDGE_<KEY>`), then command-line flags.
//! Validated once at start; every default states its reason (also in
//! docs/OPERATIONS.md, "Configuration reference").

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Which io driver the shard runtimes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only (fail to start if unavailable).
    Uring,
    /// epoll only.
    Epoll,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Client WebSocket listener. Default `127.0.0.1:8080`: loopback, so a
    /// node started without a config is never exposed by accident.
    pub listen: SocketAddr,
    /// Admin HTTP listener (/healthz, /readyz, /metrics). Default
    /// `127.0.0.1:9090`: separate from clients, loopback only.
    pub admin_listen: SocketAddr,
    /// Number of shards (one thread pinned per core). 0 = one per
    /// available core, the point of thread-per-core.
    pub shards: usize,
    /// io driver. Default `auto`: io_uring where the kernel allows it,
    /// epoll otherwise, so the node starts anywhere.
    pub driver: Driver,
    /// WebSocket path for clients. Default `/ws`, as in the design docs.
    pub ws_path: String,
    /// Optional echo endpoint for conformance runs. Default off: it serves
    /// no product purpose.
    pub echo_path: Option<String>,
    /// Largest client message in bytes; beyond it the connection is closed
    /// with 1009. Default 64 KiB: chat and collaboration commands are a few
    /// KiB, and the cap bounds per-connection memory under attack.
    pub max_message_size: usize,
    /// Largest HTTP upgrade request head. Default 8 KiB: browsers send
    /// ~1 KiB; nginx uses the same default.
    pub max_handshake_bytes: usize,
    /// Time a client has to complete the upgrade. Default 10s: generous for
    /// slow mobile links, short enough that idle sockets cannot pile up.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Interval between server pings. Default 25s: below the 30–60s idle
    /// timeouts of common load balancers and NATs.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed
    /// (3003). Default 10s: a live client answers in well under a second;
    /// this allows for a congested mobile link.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long to wait for the peer's close after ours before dropping
    /// the socket, counted from when ours has reached the peer (while the
    /// peer is still taking our last output, it is re-checked every
    /// `close_timeout` and cut only if it took nothing). Default 5s.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Outbound bytes a connection may have queued before it is dropped as
    /// a slow consumer (3002). Default 1 MiB: about 10,000 typical
    /// publications, seconds of backlog for a live client.
    pub outbound_budget: usize,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it.
    /// Default on: browsers offer it, and JSON compresses 3-10x; every
    /// publication is compressed once, whatever the subscriber count.
    pub compression: bool,
    /// Smallest payload worth compressing, in bytes. Default 256: below
    /// that the deflate block overhead eats most of the gain.
    pub compression_min_size: usize,
    /// zlib level 1 (fastest) to 9 (smallest). Default 1: most of the gain
    /// for a fraction of the CPU, and CPU is what fan-out spends.
    pub compression_level: u32,
    /// Commands one connection may send per second (0 = unlimited). Past
    /// it commands get error 114; past twice it the client is disconnected
    /// (3503). Default 200: interactive clients send a few per second;
    /// trusted high-rate publishers should use a node or listener with the
    /// limit off.
    pub max_commands_per_second: u32,
    /// Subscriptions one connection may hold. Default 256.
    pub max_subscriptions: usize,
    /// Graceful drain: clients are told to reconnect spread over this
    /// period, so they do not all come back at once. Default 10s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Connections the node accepts (all shards). 0 = derived from the
    /// open-file limit minus a reserve, so the node refuses cleanly before
    /// the kernel refuses it.
    pub max_connections: usize,
    /// Refuse new connections while the process RSS is above this many
    /// bytes. 0 = off.
    pub max_memory: u64,
    /// Capacity of each shard's inbox (cross-shard messages). Default
    /// 65,536: absorbs bursts of a full second of heavy fan-out traffic.
    pub inbox_capacity: usize,
    /// Listen backlog. Default 4096: storms of reconnects queue in the
    /// kernel instead of being refused.
    pub backlog: u32,
    /// A channel no shard listens to is forgotten (new epoch) after this.
    /// Default 5m.
    #[serde(with = "humantime_serde")]
    pub channel_idle_ttl: Duration,
    /// Node name reported to clients. Default: the host name.
    pub node_name: String,
    /// Log format. Default text; `json` for log shippers.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax). Default `info`.
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid"),
            admin_listen: "127.0.0.1:9090".parse().expect("valid"),
            shards: 0,
            driver: Driver::Auto,
            ws_path: "/ws".into(),
            echo_path: None,
            max_message_size: 64 * 1024,
            max_handshake_bytes: 8 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            outbound_budget: 1024 * 1024,
            compression: true,
            compression_min_size: 256,
            compression_level: 1,
            max_commands_per_second: 200,
            max_subscriptions: 256,
            drain_timeout: Duration::from_secs(10),
            max_connections: 0,
            max_memory: 0,
            inbox_capacity: 65_536,
            backlog: 4096,
            channel_idle_ttl: Duration::from_secs(300),
            node_name: hostname(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "wsedge".into())
}

/// Command-line overrides; only the flags given are applied.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// `--shards`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// `--driver`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// `--echo-path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo_path: Option<String>,
    /// `--max-message-size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// A configuration problem, reported once at start.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Largest number of shards (home interest sets are 64-bit masks).
pub const MAX_SHARDS: usize = 64;

impl Config {
    /// Loads defaults < file < `WSEDGE_*` environment < flags, then
    /// validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig
            .merge(Env::prefixed("WSEDGE_").ignore(&["CONFIG"]))
            .merge(Serialized::defaults(overrides));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.shards > MAX_SHARDS {
            return err(format!(
                "shards = {} is above the maximum of {MAX_SHARDS}",
                self.shards
            ));
        }
        for (name, path) in [
            ("ws_path", Some(&self.ws_path)),
            ("echo_path", self.echo_path.as_ref()),
        ] {
            if let Some(p) = path
                && (!p.starts_with('/') || p.contains(['?', '#', ' ']))
            {
                return err(format!(
                    "{name} = {p:?} must be an absolute path without query"
                ));
            }
        }
        if self.echo_path.as_deref() == Some(self.ws_path.as_str()) {
            return err("echo_path must differ from ws_path".into());
        }
        if self.max_message_size < 125 || self.max_message_size > 256 * 1024 * 1024 {
            return err(format!(
                "max_message_size = {} must be between 125 bytes and 256 MiB",
                self.max_message_size
            ));
        }
        if !(512..=1024 * 1024).contains(&self.max_handshake_bytes) {
            return err("max_handshake_bytes must be between 512 bytes and 1 MiB".into());
        }
        let secs = |d: Duration| d.as_secs();
        if secs(self.ping_interval) < 2 || secs(self.ping_interval) > 3600 {
            return err("ping_interval must be between 2s and 1h (whole seconds)".into());
        }
        if secs(self.pong_timeout) < 1 || self.pong_timeout >= self.ping_interval {
            return err("pong_timeout must be at least 1s and below ping_interval".into());
        }
        if secs(self.handshake_timeout) < 1 || secs(self.close_timeout) < 1 {
            return err("handshake_timeout and close_timeout must be at least 1s".into());
        }
        if self.outbound_budget < 1024 {
            return err("outbound_budget must be at least 1 KiB".into());
        }
        if !(1..=9).contains(&self.compression_level) {
            return err("compression_level must be between 1 and 9".into());
        }
        if self.max_subscriptions == 0 {
            return err("max_subscriptions must be at least 1".into());
        }
        if self.inbox_capacity < 64 {
            return err("inbox_capacity must be at least 64".into());
        }
        if self.backlog == 0 {
            return err("backlog must be at least 1".into());
        }
        if self.node_name.is_empty() || self.node_name.len() > 64 {
            return err("node_name must be 1-64 bytes".into());
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return err("listen and admin_listen must differ".into());
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| ConfigError(format!("log_level {:?}: {e}", self.log_level)))?;
        Ok(())
    }

    /// Shards to run: `shards`, or one per available core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_SHARDS)
        }
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.max_message_size, 65536);
    }

    #[test]
    fn layering_file_env_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "w.toml",
                "listen = \"127.0.0.1:7000\"\nping_interval = \"30s\"\nshards = 3\n",
            )?;
            jail.set_env("WSEDGE_SHARDS", "2");
            jail.set_env("WSEDGE_MAX_MESSAGE_SIZE", "1000");
            let o = Overrides {
                max_message_size: Some(2000),
                ..Default::default()
            };
            let c = Config::load(Some(Path::new("w.toml")), &o).unwrap();
            assert_eq!(c.listen.port(), 7000);
            assert_eq!(c.ping_interval, Duration::from_secs(30));
            assert_eq!(c.shards, 2, "env beats file");
            assert_eq!(c.max_message_size, 2000, "flag beats env");
            Ok(())
        });
    }

    #[test]
    fn clear_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "pong_timeout = \"30s\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(e.0.contains("pong_timeout"), "{e}");
            jail.create_file("unknown.toml", "lisen = \"x\"\n")?;
            let e =
                Config::load(Some(Path::new("unknown.toml")), &Overrides::default()).unwrap_err();
            assert!(e.0.contains("lisen"), "{e}");
            let e =
                Config::load(Some(Path::new("missing.toml")), &Overrides::default()).unwrap_err();
            assert!(e.0.contains("does not exist"), "{e}");
            Ok(())
        });
    }
}
