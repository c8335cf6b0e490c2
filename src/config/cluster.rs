//! The `[cluster]` configuration section: joining other nodes through NATS
//! (docs/ARCHITECTURE.md, "The cluster"). Without `nats_url` the node is
//! alone (the embedded default) and nothing here is used.
//!
//! Every key is also settable as `WSEDGE_CLUSTER_<KEY>`, e.g.
//! `WSEDGE_CLUSTER_NATS_URL` ([`merge_env`]: the text keys are taken
//! verbatim, so a token or node name of digits stays a string).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};

use crate::engine::cluster::subject::is_valid_name;
use crate::sidecar::cluster::{ClusterAuth, ClusterOptions, parse_servers};

/// Prefix of the environment variables that set `[cluster]` keys.
pub const ENV_PREFIX: &str = "WSEDGE_CLUSTER_";

/// The keys whose environment value is taken verbatim as a string.
const TEXT_KEYS: [&str; 8] = [
    "nats_url",
    "node_name",
    "cluster_name",
    "credentials_file",
    "user",
    "password",
    "token",
    "tls_ca_file",
];

/// Shortest `heartbeat_interval`: below it heartbeats are a load, not a
/// signal.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// Longest `node_timeout`: a dead node's channels stay homeless this long.
pub const MAX_NODE_TIMEOUT: Duration = Duration::from_secs(600);
/// Bounds of `request_timeout`.
pub const REQUEST_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(60));
/// Smallest `queue_capacity`.
pub const MIN_QUEUE_CAPACITY: usize = 64;

/// The `[cluster]` section. `Debug` hides the password, the token and
/// credentials in `nats_url`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers, comma-separated (`nats://host:4222`, `tls://…`).
    /// Default unset: no cluster, the node is alone, as before clusters
    /// existed (nothing external is needed to run one node).
    pub nats_url: Option<String>,
    /// This node's name in the cluster (1–64 bytes of `A–Z a–z 0–9 _ -`;
    /// it is a NATS subject token). Default: the host name when it is
    /// such a name, else a random `wsedge-<hex>` per start. Every node
    /// needs its own: two processes with one name are refused.
    pub node_name: Option<String>,
    /// The cluster's name; subjects are `wsedge.<cluster_name>.…`, so
    /// clusters sharing a NATS do not see each other. Default `wsedge`.
    pub cluster_name: String,
    /// A NATS `.creds` file (JWT and NKey seed), read at start. One kind
    /// of credentials at most: this, `user` + `password`, or `token`.
    pub credentials_file: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`). Prefer `WSEDGE_CLUSTER_PASSWORD`;
    /// `check-config` prints it redacted.
    pub password: Option<String>,
    /// A token. Prefer `WSEDGE_CLUSTER_TOKEN`; printed redacted.
    pub token: Option<String>,
    /// A CA (PEM) to trust for `tls://` servers instead of the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// A node whose heartbeats stop for this long leaves the live set and
    /// its channels move. Default 3s: three missed heartbeats, so one
    /// late or lost one does not move channels; short enough that a dead
    /// node's channels have a new home within seconds.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// How often a node publishes its heartbeat. Default 1s: a few dozen
    /// bytes a second per node; must be below `node_timeout`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a shard waits for a home node's answer before answering
    /// error 100 (temporary). Default 2s: far above a loopback or LAN
    /// round trip, below a client's patience.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests the shards may queue for the NATS thread. Default 65,536:
    /// the thread only moves them to the connection, so the queue fills
    /// only if it is starved; a full queue gives the request back to the
    /// shard, counted.
    pub queue_capacity: usize,
    /// Replicas of each JetStream history stream (namespaces with
    /// `history_backend = "jetstream"`). Default 1: right for one NATS
    /// server; on a JetStream cluster set 3, so losing a NATS server loses
    /// no history. 1 to 5, as JetStream allows.
    pub history_replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            node_name: None,
            cluster_name: "wsedge".into(),
            credentials_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            node_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            queue_capacity: 65_536,
            history_replicas: 1,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| crate::config::REDACTED);
        let url = self
            .nats_url
            .as_deref()
            .map(crate::sidecar::cluster::redacted_servers);
        f.debug_struct("ClusterConfig")
            .field("nats_url", &url)
            .field("node_name", &self.node_name)
            .field("cluster_name", &self.cluster_name)
            .field("credentials_file", &self.credentials_file)
            .field("user", &self.user)
            .field("password", &secret(&self.password))
            .field("token", &secret(&self.token))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("node_timeout", &self.node_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("request_timeout", &self.request_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("history_replicas", &self.history_replicas)
            .finish()
    }
}

impl ClusterConfig {
    /// Checks what types cannot. Errors name the `cluster.` key; they
    /// never show a password or token.
    pub fn validate(&self) -> Result<(), String> {
        let mut url_has_user = false;
        if let Some(url) = &self.nats_url {
            if url.trim().is_empty() {
                return Err(
                    "cluster.nats_url is empty; remove it (a single node) or give nats://host:port"
                        .into(),
                );
            }
            let servers = parse_servers(url).map_err(|e| format!("cluster.nats_url: {e}"))?;
            url_has_user = servers.iter().any(|s| s.has_user_pass());
        }
        if let Some(name) = &self.node_name
            && !is_valid_name(name)
        {
            return Err(format!(
                "cluster.node_name = {name:?} must be 1-64 bytes of A-Z a-z 0-9 _ - \
                 (it is a NATS subject token)"
            ));
        }
        if !is_valid_name(&self.cluster_name) {
            return Err(format!(
                "cluster.cluster_name = {:?} must be 1-64 bytes of A-Z a-z 0-9 _ - \
                 (it is a NATS subject token)",
                self.cluster_name
            ));
        }
        self.validate_credentials(url_has_user)?;
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL {
            return Err(format!(
                "cluster.heartbeat_interval must be at least {MIN_HEARTBEAT_INTERVAL:?}"
            ));
        }
        if self.heartbeat_interval >= self.node_timeout {
            return Err(format!(
                "cluster.heartbeat_interval ({:?}) must be below cluster.node_timeout ({:?}): \
                 a node would leave the live set between two of its heartbeats",
                self.heartbeat_interval, self.node_timeout
            ));
        }
        if self.node_timeout > MAX_NODE_TIMEOUT {
            return Err(format!(
                "cluster.node_timeout must be at most {MAX_NODE_TIMEOUT:?}"
            ));
        }
        let (lo, hi) = REQUEST_TIMEOUT_RANGE;
        if !(lo..=hi).contains(&self.request_timeout) {
            return Err(format!(
                "cluster.request_timeout must be between {lo:?} and {hi:?}"
            ));
        }
        if self.queue_capacity < MIN_QUEUE_CAPACITY {
            return Err(format!(
                "cluster.queue_capacity must be at least {MIN_QUEUE_CAPACITY}"
            ));
        }
        if !(1..=5).contains(&self.history_replicas) {
            return Err("cluster.history_replicas must be between 1 and 5".into());
        }
        Ok(())
    }

    /// At most one kind of credentials; user and password together.
    fn validate_credentials(&self, url_has_user: bool) -> Result<(), String> {
        let kinds: Vec<&str> = [
            (self.credentials_file.is_some(), "cluster.credentials_file"),
            (
                self.user.is_some() || self.password.is_some(),
                "cluster.user/cluster.password",
            ),
            (self.token.is_some(), "cluster.token"),
            (url_has_user, "user:password@ in cluster.nats_url"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if kinds.len() > 1 {
            return Err(format!(
                "{} are alternatives: set one kind of NATS credentials",
                kinds.join(" and ")
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("cluster.user and cluster.password go together".into());
        }
        for (name, v) in [
            ("user", &self.user),
            ("password", &self.password),
            ("token", &self.token),
        ] {
            if v.as_deref() == Some("") {
                return Err(format!(
                    "cluster.{name} is empty; remove it or give a value"
                ));
            }
        }
        if self
            .credentials_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("cluster.credentials_file is empty".into());
        }
        Ok(())
    }

    /// Whether the node joins a cluster (`nats_url` is set).
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some()
    }

    /// This node's name: `node_name`, else the host name if it is a valid
    /// name, else `None` ([`ClusterConfig::options`] then picks a random
    /// one).
    pub fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| super::host_name().filter(|h| is_valid_name(h)))
    }

    /// The worker's options; `None` without `nats_url`. Resolves the node
    /// name ([`ClusterConfig::node_name`]; a random `wsedge-<hex>` if there
    /// is none, different at each call: call this once at start and log
    /// the name). Expects a configuration that passed
    /// [`ClusterConfig::validate`].
    pub fn options(&self) -> Option<ClusterOptions> {
        let url = self.nats_url.as_deref()?;
        let node = self
            .node_name()
            .unwrap_or_else(|| format!("wsedge-{:08x}", rand::random::<u32>()));
        let auth = if let Some(path) = &self.credentials_file {
            ClusterAuth::CredentialsFile(path.clone())
        } else if let (Some(user), Some(password)) = (&self.user, &self.password) {
            ClusterAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            }
        } else if let Some(token) = &self.token {
            ClusterAuth::Token(token.clone())
        } else {
            ClusterAuth::None
        };
        Some(ClusterOptions {
            cluster_name: Arc::from(self.cluster_name.as_str()),
            auth,
            tls_ca_file: self.tls_ca_file.clone(),
            node_timeout: self.node_timeout,
            heartbeat_interval: self.heartbeat_interval,
            request_timeout: self.request_timeout,
            queue_capacity: self.queue_capacity,
            history_replicas: self.history_replicas,
            ..ClusterOptions::new(url, &node)
        })
    }

    /// A copy fit to print: password and token as [`REDACTED`], and the
    /// credentials in `nats_url` too.
    ///
    /// [`REDACTED`]: crate::config::REDACTED
    pub fn redacted(&self) -> Self {
        let hide = |s: &Option<String>| s.as_ref().map(|_| crate::config::REDACTED.to_owned());
        ClusterConfig {
            nats_url: self
                .nats_url
                .as_deref()
                .map(crate::sidecar::cluster::redacted_servers),
            password: hide(&self.password),
            token: hide(&self.token),
            ..self.clone()
        }
    }
}

/// Merges `WSEDGE_CLUSTER_<KEY>` variables into `fig` under `cluster.`:
/// the text keys verbatim (the generic provider would read a token `0123`
/// as the number 123), the others (durations, numbers) parsed.
pub fn merge_env(fig: Figment) -> Result<Figment, String> {
    let mut fig = fig.merge(
        Env::prefixed(ENV_PREFIX)
            .ignore(&TEXT_KEYS)
            .map(|key| format!("cluster.{key}").into()),
    );
    for key in TEXT_KEYS {
        let var = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
        if let Some(value) = std::env::var_os(&var) {
            let value = value
                .into_string()
                .map_err(|_| format!("{var} is not valid UTF-8"))?;
            fig = fig.merge(Serialized::default(&format!("cluster.{key}"), value));
        }
    }
    Ok(fig)
}
