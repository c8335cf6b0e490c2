//! The `async-nats` connection options of the worker, from
//! [`ClusterOptions`]: background connect and endless reconnects, no echo,
//! pings at the heartbeat interval, credentials, a CA for `tls://`.

use std::io;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr};
use tokio::sync::mpsc;

use super::{ClusterAuth, ClusterOptions};

/// Longest pause between reconnect attempts. A cluster has a few dozen
/// nodes, not thousands of clients, so quick retries cost the server
/// nothing and shorten an outage; `async-nats`'s own default grows to 4 s.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Commands the NATS client may hold before `publish`/`subscribe` wait.
/// The worker's own queue bounds what it takes from the shards; this only
/// has to absorb what piles up while a connection is being re-made (the
/// client sends nothing then), e.g. the `SUB`s of a reconnect storm.
const CLIENT_CAPACITY: usize = 65_536;

/// The servers of a comma-separated `nats_url`: `nats://host:port`,
/// `tls://host:port` or `host[:port]` (port 4222 by default), with
/// optional `user:password@`. WebSocket URLs are refused (not built in).
pub fn parse_servers(nats_url: &str) -> Result<Vec<ServerAddr>, String> {
    let mut out = Vec::new();
    for url in nats_url.split(',').map(str::trim) {
        let shown = crate::config::redact_url_credentials(url);
        if url.is_empty() {
            return Err(format!("empty server in {:?}", redacted_servers(nats_url)));
        }
        let addr: ServerAddr = url
            .parse()
            .map_err(|e| format!("{shown:?} is not a NATS server URL: {e}"))?;
        if addr.is_websocket() {
            return Err(format!(
                "{shown:?}: WebSocket connections to NATS are not built in; use nats:// or tls://"
            ));
        }
        out.push(addr);
    }
    Ok(out)
}

/// `nats_url` with the credentials of each server hidden.
pub fn redacted_servers(nats_url: &str) -> String {
    nats_url
        .split(',')
        .map(|u| crate::config::redact_url_credentials(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The cluster's credentials and CA, read and checked once, to put on
/// any NATS connection's options (the cluster worker's, the durable
/// worker's).
#[derive(Clone)]
pub struct NatsAuth {
    auth: ClusterAuth,
    /// The `.creds` file's text, for [`ClusterAuth::CredentialsFile`].
    creds: Option<String>,
    tls_ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("auth", &self.auth)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish_non_exhaustive()
    }
}

impl NatsAuth {
    /// Reads the credentials file and checks the CA file of `opts` now,
    /// so a bad one fails the start.
    pub fn from_options(opts: &ClusterOptions) -> io::Result<NatsAuth> {
        let creds = match &opts.auth {
            ClusterAuth::CredentialsFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cluster credentials_file {}: {e}", path.display()),
                    )
                })?;
                // Parsed once here, so `apply` cannot fail later.
                ConnectOptions::new().credentials(&text).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("cluster credentials_file {}: {e}", path.display()),
                    )
                })?;
                Some(text)
            }
            _ => None,
        };
        if let Some(ca) = &opts.tls_ca_file {
            crate::tls::load_certs(ca).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cluster tls_ca_file: {e}"),
                )
            })?;
        }
        Ok(NatsAuth {
            auth: opts.auth.clone(),
            creds,
            tls_ca_file: opts.tls_ca_file.clone(),
        })
    }

    /// `o` with these credentials and CA.
    pub fn apply(&self, mut o: ConnectOptions) -> ConnectOptions {
        o = match &self.auth {
            ClusterAuth::None => o,
            ClusterAuth::CredentialsFile(_) => {
                let text = self.creds.as_deref().unwrap_or_default();
                // Checked in `from_options`.
                match o.clone().credentials(text) {
                    Ok(with) => with,
                    Err(_) => o,
                }
            }
            ClusterAuth::UserPassword { user, password } => {
                o.user_and_password(user.clone(), password.clone())
            }
            ClusterAuth::Token(token) => o.token(token.clone()),
        };
        if let Some(ca) = &self.tls_ca_file {
            o = o.add_root_certificates(ca.clone());
        }
        o
    }
}

/// Pause before reconnect attempt `attempts` (1 = the first after a loss:
/// at once), doubling from 10 ms to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let shift = (attempts - 2).min(16) as u32;
    Duration::from_millis(10u64 << shift).min(MAX_RECONNECT_DELAY)
}

/// The client's options; its events go to `events`. Reads the credentials
/// file and checks the CA file now, so a bad one fails the start.
pub(super) fn connect_options(
    opts: &ClusterOptions,
    events: mpsc::UnboundedSender<Event>,
) -> io::Result<ConnectOptions> {
    let o = ConnectOptions::new()
        .name(format!("wsedge {}/{}", opts.cluster_name, opts.node_name))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(opts.heartbeat_interval)
        .client_capacity(CLIENT_CAPACITY)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            // The worker's loop handles it; a closed channel means the
            // worker is gone.
            let _ = events.send(event);
            std::future::ready(())
        });
    Ok(NatsAuth::from_options(opts)?.apply(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_and_bad_ones_are_named_without_credentials() {
        let s = parse_servers("nats://a:4222, tls://b:4443 ,c").unwrap();
        assert_eq!(s.len(), 3);
        assert!(s[1].tls_required());
        assert_eq!(s[2].port(), 4222);
        let e = parse_servers("nats://u:secret@a:4222,http://x").unwrap_err();
        assert!(e.contains("http://x"), "{e}");
        let e = parse_servers("nats://a,").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = parse_servers("ws://u:secret@a:80").unwrap_err();
        assert!(e.contains("WebSocket") && !e.contains("secret"), "{e}");
        assert_eq!(
            redacted_servers("nats://u:pw@a:1, nats://b:2"),
            "nats://<redacted>@a:1,nats://b:2"
        );
    }

    #[test]
    fn reconnects_start_at_once_and_back_off_to_a_second() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(10));
        assert_eq!(reconnect_delay(3), Duration::from_millis(20));
        assert_eq!(reconnect_delay(8), Duration::from_millis(640));
        assert_eq!(reconnect_delay(9), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }
}
