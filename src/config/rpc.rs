//! The `[rpc]` configuration section: clients' `rpc` and `send` commands
//! carried to backends over NATS (docs/OPERATIONS.md, "Backend calls").
//! They are on when the node has a NATS to use: `[rpc] nats_url`, else
//! `[cluster] nats_url`, else `[durable] nats_url`; without any, both
//! commands are answered error 127.
//!
//! Every key is also settable as `WSEDGE_RPC_<KEY>`, e.g.
//! `WSEDGE_RPC_TIMEOUT=2s`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that set `[rpc]` keys.
pub const ENV_PREFIX: &str = "WSEDGE_RPC_";

/// Bounds of `timeout`.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(60));
/// Largest `max_in_flight` (a connection counts its calls in 16 bits).
pub const MAX_IN_FLIGHT_LIMIT: usize = 1024;
/// Largest `queue_capacity`.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;
/// Bounds of `max_reply_size`.
pub const REPLY_SIZE_RANGE: (usize, usize) = (1024, 64 << 20);

/// The `[rpc]` section. `Debug` hides credentials in `nats_url`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// NATS servers for backend calls, comma-separated (`nats://host:4222`,
    /// `tls://…`; credentials only in the URL). Default: `[cluster]
    /// nats_url` (with the cluster's credentials and CA), else `[durable]
    /// nats_url`: a node that already talks to a NATS offers `rpc` and
    /// `send` on it without more configuration; set it to keep backend
    /// traffic on another NATS.
    pub nats_url: Option<String>,
    /// How long an `rpc` waits for its reply before error 124. Default 5s:
    /// far above a backend's usual answer, short enough that a user
    /// waiting on a button sees a failure rather than a hang. At most 60s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `rpc` calls one connection may have unanswered; one more gets
    /// error 114. Default 16: a page that loads a handful of things at
    /// once never meets it, one client cannot hold a share of the node's
    /// queue. 1 to 1024. (`send`s are not counted: NATS takes them at
    /// once, and the command rate bounds them.)
    pub max_in_flight: usize,
    /// First tokens of the subjects: `<prefix>.rpc.<method>` and
    /// `<prefix>.send`. Default `wsedge`; dot-separated tokens of `A–Z
    /// a–z 0–9 _ -`, e.g. `tenant-a.wsedge` to keep tenants apart on one
    /// NATS.
    pub subject_prefix: String,
    /// Calls the node holds at once, waiting for or at NATS (all shards
    /// together); one more gets error 112. Default 8,192: a backend that
    /// stalls for the whole timeout at 1,500 calls a second fills it, and
    /// it bounds what a stalled backend costs the node to that many
    /// payloads.
    pub queue_capacity: usize,
    /// Whether connections without a user may call. Default false:
    /// backends authorize by `Wsedge-User`, and a call they cannot tie to
    /// a user should be asked for explicitly, not reach them by default.
    /// Anonymous calls carry an empty `Wsedge-User`.
    pub allow_anonymous: bool,
    /// Largest reply forwarded to a client, in bytes; a larger one is
    /// answered error 126 (`reply too large`). Default 256 KiB: well below
    /// the default `outbound_budget` (1 MiB), so one reply never makes its
    /// client a slow consumer. Must be below `outbound_budget` when backend
    /// calls are on. At most 64 MiB.
    pub max_reply_size: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            timeout: Duration::from_secs(5),
            max_in_flight: 16,
            subject_prefix: "wsedge".into(),
            queue_capacity: 8192,
            allow_anonymous: false,
            max_reply_size: 256 * 1024,
        }
    }
}

impl std::fmt::Debug for RpcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self
            .nats_url
            .as_deref()
            .map(crate::sidecar::cluster::redacted_servers);
        f.debug_struct("RpcConfig")
            .field("nats_url", &url)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("subject_prefix", &self.subject_prefix)
            .field("queue_capacity", &self.queue_capacity)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("max_reply_size", &self.max_reply_size)
            .finish()
    }
}

/// Whether `s` can start a subject: dot-separated tokens of `A–Z a–z 0–9
/// _ -`, at most 128 bytes.
pub fn is_subject_prefix(s: &str) -> bool {
    s.len() <= 128
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

impl RpcConfig {
    /// Checks what types cannot (against the rest of the node:
    /// `Config::validate_rpc`).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.nats_url {
            if url.trim().is_empty() {
                return Err("rpc nats_url is empty; remove it for the default".into());
            }
            crate::sidecar::cluster::parse_servers(url)
                .map_err(|e| format!("rpc nats_url: {e}"))?;
        }
        let (lo, hi) = TIMEOUT_RANGE;
        if !(lo..=hi).contains(&self.timeout) {
            return Err(format!("rpc timeout must be between {lo:?} and {hi:?}"));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.max_in_flight) {
            return Err(format!(
                "rpc max_in_flight must be between 1 and {MAX_IN_FLIGHT_LIMIT}"
            ));
        }
        if !is_subject_prefix(&self.subject_prefix) {
            return Err(format!(
                "rpc subject_prefix = {:?} must be dot-separated tokens of A-Z a-z 0-9 _ - \
                 (at most 128 bytes)",
                self.subject_prefix
            ));
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            return Err(format!(
                "rpc queue_capacity must be between 1 and {MAX_QUEUE_CAPACITY}"
            ));
        }
        let (lo, hi) = REPLY_SIZE_RANGE;
        if !(lo..=hi).contains(&self.max_reply_size) {
            return Err(format!(
                "rpc max_reply_size must be between {lo} and {hi} bytes"
            ));
        }
        Ok(())
    }

    /// A copy fit to print: credentials in `nats_url` hidden.
    pub fn redacted(&self) -> Self {
        RpcConfig {
            nats_url: self
                .nats_url
                .as_deref()
                .map(crate::sidecar::cluster::redacted_servers),
            ..self.clone()
        }
    }
}

/// Which key gave the NATS servers of backend calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcNatsSource {
    /// `[rpc] nats_url`.
    Rpc,
    /// `[cluster] nats_url` (its credentials and CA apply).
    Cluster,
    /// `[durable] nats_url`.
    Durable,
}

impl RpcNatsSource {
    /// The key, for logs.
    pub fn key(self) -> &'static str {
        match self {
            RpcNatsSource::Rpc => "rpc.nats_url",
            RpcNatsSource::Cluster => "cluster.nats_url",
            RpcNatsSource::Durable => "durable.nats_url",
        }
    }
}

impl super::Config {
    /// The `[rpc]` section, and, when backend calls are on, its reply
    /// bound against `outbound_budget`.
    pub(super) fn validate_rpc(&self) -> Result<(), String> {
        self.rpc.validate()?;
        if self.rpc_nats().is_some() && self.rpc.max_reply_size >= self.outbound_budget {
            return Err(format!(
                "rpc max_reply_size = {} must be below outbound_budget ({}): a larger reply \
                 would close its client as a slow consumer",
                self.rpc.max_reply_size, self.outbound_budget
            ));
        }
        Ok(())
    }

    /// The NATS servers backend calls use and where they come from;
    /// `None`: `rpc` and `send` are not available (error 127).
    pub fn rpc_nats(&self) -> Option<(&str, RpcNatsSource)> {
        fn set(u: &Option<String>) -> Option<&str> {
            u.as_deref().filter(|u| !u.trim().is_empty())
        }
        set(&self.rpc.nats_url)
            .map(|u| (u, RpcNatsSource::Rpc))
            .or_else(|| set(&self.cluster.nats_url).map(|u| (u, RpcNatsSource::Cluster)))
            .or_else(|| set(&self.durable.nats_url).map(|u| (u, RpcNatsSource::Durable)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn defaults_are_valid_and_bad_values_say_why() {
        assert_eq!(RpcConfig::default().validate(), Ok(()));
        let bad = |c: RpcConfig, says: &str| {
            let e = c.validate().unwrap_err();
            assert!(e.contains(says), "{e}");
        };
        let d = RpcConfig::default;
        bad(
            RpcConfig {
                timeout: Duration::ZERO,
                ..d()
            },
            "timeout",
        );
        bad(
            RpcConfig {
                timeout: Duration::from_secs(61),
                ..d()
            },
            "timeout",
        );
        bad(
            RpcConfig {
                max_in_flight: 0,
                ..d()
            },
            "max_in_flight",
        );
        bad(
            RpcConfig {
                max_in_flight: MAX_IN_FLIGHT_LIMIT + 1,
                ..d()
            },
            "max_in_flight",
        );
        bad(
            RpcConfig {
                queue_capacity: 0,
                ..d()
            },
            "queue_capacity",
        );
        bad(
            RpcConfig {
                max_reply_size: 100,
                ..d()
            },
            "max_reply_size",
        );
        for prefix in ["", "a..b", "a.*", "a b", ".a", "a>"] {
            bad(
                RpcConfig {
                    subject_prefix: prefix.into(),
                    ..d()
                },
                "subject_prefix",
            );
        }
        bad(
            RpcConfig {
                nats_url: Some("http://x".into()),
                ..d()
            },
            "rpc nats_url",
        );
        assert!(is_subject_prefix("tenant-a.wsedge_2"));
    }

    #[test]
    fn replies_must_fit_the_outbound_budget_only_when_calls_are_on() {
        let mut c = Config {
            outbound_budget: 2048,
            ..Config::default()
        };
        assert_eq!(c.validate_rpc(), Ok(()), "no NATS: nothing to check");
        c.rpc.nats_url = Some("nats://r:4222".into());
        let e = c.validate_rpc().unwrap_err();
        assert!(e.contains("outbound_budget"), "{e}");
        c.rpc.max_reply_size = 1024;
        assert_eq!(c.validate_rpc(), Ok(()));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn keys_come_from_the_file_and_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "w.toml",
                "[rpc]\nmax_in_flight = 4\nsubject_prefix = \"app.edge\"\n",
            )?;
            jail.set_env("WSEDGE_RPC_TIMEOUT", "250ms");
            jail.set_env("WSEDGE_RPC_NATS_URL", "nats://127.0.0.1:4222");
            jail.set_env("WSEDGE_RPC_ALLOW_ANONYMOUS", "true");
            let file = std::path::Path::new("w.toml");
            let cfg = Config::load(Some(file), &Default::default()).unwrap();
            assert_eq!(cfg.rpc.max_in_flight, 4);
            assert_eq!(cfg.rpc.subject_prefix, "app.edge");
            assert_eq!(cfg.rpc.timeout, Duration::from_millis(250));
            assert!(cfg.rpc.allow_anonymous);
            assert_eq!(
                cfg.rpc_nats(),
                Some(("nats://127.0.0.1:4222", RpcNatsSource::Rpc))
            );
            jail.set_env("WSEDGE_RPC_TIMEOUT", "2m");
            let e = Config::load(Some(file), &Default::default()).unwrap_err();
            assert!(e.0.contains("rpc timeout"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_nats_url_falls_back_to_the_clusters_then_the_durables() {
        let mut c = Config::default();
        assert_eq!(c.rpc_nats(), None);
        c.durable.nats_url = Some("nats://d:4222".into());
        assert_eq!(
            c.rpc_nats(),
            Some(("nats://d:4222", RpcNatsSource::Durable))
        );
        c.cluster.nats_url = Some("nats://c:4222".into());
        assert_eq!(
            c.rpc_nats(),
            Some(("nats://c:4222", RpcNatsSource::Cluster))
        );
        c.rpc.nats_url = Some("nats://u:secret@r:4222".into());
        assert_eq!(
            c.rpc_nats(),
            Some(("nats://u:secret@r:4222", RpcNatsSource::Rpc))
        );
        let shown = format!("{:?} {:?}", c.rpc, c.rpc.redacted());
        assert!(!shown.contains("secret"), "{shown}");
    }
}
