//! `SIGHUP`: what a running node takes from its configuration again.
//!
//! The file (and the `WSEDGE_*` environment and flags the node started
//! with) is loaded and validated as at start. Then:
//! - `log_level` is applied to the log filter at once;
//! - the limits in [`LIVE_LIMIT_KEYS`] are stored for the shards
//!   (`shard::live::LiveLimits` says what each change does to open
//!   connections);
//! - with `[tls]` on, the certificate and key files are read again (the
//!   paths the node started with);
//! - every other changed key is reported, by name, as waiting for a
//!   restart (logged, and `wsedge_config_restart_pending` is 1): sockets,
//!   shard count, the io driver, timeouts fixed into listener options,
//!   memory layouts sized at start, `[auth]`, `[access]` and namespaces
//!   keep their running values.
//!
//! A file that does not load or validate changes nothing (counted as a
//! failed reload and logged with the reason).

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::{Config, Overrides};
use crate::metrics::Metrics;
use crate::shard::live::LIVE_LIMIT_KEYS;
use crate::shard::{Shared, TlsServing};

/// Replaces the log filter with one parsed from a `log_level` string.
pub type LogFilterReload = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// Whether `key` (a dotted configuration key) changes on a running node.
pub fn is_live(key: &str) -> bool {
    key == "log_level" || LIVE_LIMIT_KEYS.contains(&key)
}

/// Copies the live keys of `new` into `running` (the rest stays as the
/// node started).
pub fn adopt_live(running: &mut Config, new: &Config) {
    running.log_level.clone_from(&new.log_level);
    running.max_connections = new.max_connections;
    running.max_memory = new.max_memory;
    running.max_message_size = new.max_message_size;
    running.max_commands_per_second = new.max_commands_per_second;
    running.outbound_budget = new.outbound_budget;
}

/// The dotted keys whose values differ between `a` and `b` (`tls.cert_file`
/// for a key of a section; `namespace` for any change to the namespace
/// list). Values are compared, never shown: secrets stay out of the logs.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
        (toml::Value::try_from(a), toml::Value::try_from(b))
    else {
        // Config always serialises (check-config prints it).
        return vec!["<configuration>".into()];
    };
    let mut out = Vec::new();
    diff_tables("", &a, &b, &mut out);
    out.sort();
    out
}

fn diff_tables(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let name = format!("{prefix}{k}");
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff_tables(&format!("{name}."), x, y, out);
            }
            (x, y) if x != y => out.push(name),
            _ => {}
        }
    }
}

/// What one reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The file did not load or validate: why (nothing changed).
    pub error: Option<String>,
    /// Live keys that changed and were applied.
    pub applied: Vec<String>,
    /// Changed keys that wait for a restart.
    pub restart: Vec<String>,
    /// TLS reload: `None` with TLS off, else whether the files loaded.
    pub tls: Option<bool>,
}

impl Outcome {
    /// A one-line summary (the `STATUS=` after a reload).
    pub fn summary(&self) -> String {
        let mut s = match &self.error {
            Some(_) => "configuration reload failed; running values kept".to_owned(),
            None if self.applied.is_empty() => "configuration reloaded: no live change".to_owned(),
            None => format!("configuration reloaded: {}", self.applied.join(", ")),
        };
        if !self.restart.is_empty() {
            s.push_str(&format!("; restart needed for {}", self.restart.join(", ")));
        }
        match self.tls {
            Some(true) => s.push_str("; TLS certificate reloaded"),
            Some(false) => s.push_str("; TLS reload failed"),
            None => {}
        }
        s
    }
}

/// Everything a reload reads and changes.
pub struct Reloader {
    file: Option<PathBuf>,
    overrides: Overrides,
    running: Config,
    log: Option<LogFilterReload>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    tls: Option<TlsServing>,
}

impl Reloader {
    /// A reloader for a node started from `file` and `overrides` with
    /// `running`; `log` replaces the log filter (None: the level stays).
    pub fn new(
        file: Option<PathBuf>,
        overrides: Overrides,
        running: Config,
        log: Option<LogFilterReload>,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
        tls: Option<TlsServing>,
    ) -> Self {
        Self {
            file,
            overrides,
            running,
            log,
            shared,
            metrics,
            tls,
        }
    }

    /// The configuration in force (live keys as last reloaded).
    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Reloads: the configuration, then the TLS certificate.
    pub fn reload(&mut self) -> Outcome {
        let mut outcome = self.reload_config();
        outcome.tls = self.reload_tls();
        outcome
    }

    fn reload_config(&mut self) -> Outcome {
        let new = match Config::load(self.file.as_deref(), &self.overrides) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_reload(false);
                error!(error = %e, "SIGHUP: configuration not reloaded; running values kept");
                return Outcome {
                    error: Some(e.to_string()),
                    ..Outcome::default()
                };
            }
        };
        let (applied, restart): (Vec<String>, Vec<String>) = changed_keys(&self.running, &new)
            .into_iter()
            .partition(|k| is_live(k));
        if new.log_level != self.running.log_level
            && let Some(set) = &self.log
            && let Err(e) = set(&new.log_level)
        {
            error!(error = %e, "SIGHUP: the log level could not be changed");
        }
        self.shared.limits.apply(&new);
        adopt_live(&mut self.running, &new);
        self.metrics.config_reload(true);
        self.metrics.set_restart_pending(!restart.is_empty());
        if !restart.is_empty() {
            warn!(
                keys = %restart.join(","),
                "SIGHUP: these settings changed in the configuration but take effect only on \
                 restart; their running values stay"
            );
        }
        info!(
            applied = %applied.join(","),
            max_connections = self.shared.max_connections(),
            "configuration reloaded"
        );
        Outcome {
            applied,
            restart,
            ..Outcome::default()
        }
    }

    /// Reads the certificate and key again: new connections get the new
    /// ones, open connections keep theirs, a failure keeps the current
    /// ones.
    fn reload_tls(&self) -> Option<bool> {
        let tls = self.tls.as_ref()?;
        match tls.acceptor.reload() {
            Ok(()) => {
                self.metrics.tls_reload(true);
                info!(reloads = tls.acceptor.reloads(), "TLS certificate reloaded");
                Some(true)
            }
            Err(e) => {
                self.metrics.tls_reload(false);
                error!(error = %e, "TLS reload failed; keeping the current certificate");
                Some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests;
