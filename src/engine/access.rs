//! Who may connect and how fast: the abuse limits of the `[access]`
//! config section, as plain logic the shard shell calls (no sockets, no
//! clock: time is an input in milliseconds).
//!
//! Layout:
//! - [`AccessConfig`]: the `[access]` keys, and [`AccessConfig::build`],
//!   which parses every list once into an [`AccessPolicy`] or names the
//!   bad entry.
//! - [`ipset`]: CIDR sets as sorted integer ranges, and the
//!   `ip_allow`/`ip_deny` [`IpFilter`].
//! - [`forwarded`]: the real client address behind `trusted_proxies`
//!   (`X-Forwarded-For`).
//! - [`proxy_v2`]: the PROXY protocol v2 header parser.
//! - [`origin`]: the `allowed_origins` check.
//! - [`rate`]: the token bucket (GCRA form) every rate limit uses.
//! - [`ip_limits`]: node-wide per-IP connection rate and cap.
//! - [`users`]: per-user publish rate (per shard) and connection cap
//!   (node-wide).
//! - [`refusal`]: every refusal reason, its HTTP status, metrics label,
//!   and a per-interval log tally.
//!
//! What the shell does with a connection, in order:
//! 1. At accept, before allocating: [`AccessPolicy::classify_peer`]. A
//!    peer that is not a trusted proxy is the client: its address goes
//!    through the filter now (refused: close, or answer
//!    [`Refusal::response`]) and [`IpLimits::on_connect`] can run at once.
//!    A trusted proxy is let through; its client is checked in step 3.
//! 2. From a trusted proxy with `proxy_protocol` on
//!    ([`AccessPolicy::expects_proxy_header`]): [`parse_proxy_v2`] on the
//!    first bytes; `Invalid` closes ([`Refusal::ProxyHeader`]); `Done`
//!    gives the source (or `None`: keep the peer) and the bytes to skip.
//! 3. On the upgrade request: [`AccessPolicy::client_ip`] of the address
//!    from step 2 (or the peer) and the `X-Forwarded-For` header; for a
//!    proxied connection, [`AccessPolicy::check_ip`] and
//!    [`IpLimits::on_connect`] on that address now;
//!    [`AccessPolicy::check_origin`] on `Origin`. Refusals answer
//!    [`Refusal::response`] instead of the 101.
//! 4. At `connect`, once the user is known:
//!    [`UserConnections::on_user_connect`]; on publish,
//!    [`UserLimits::publish`].
//! 5. When the connection ends: [`IpLimits::release`] with the ticket
//!    and [`UserConnections::release_user`] if it was counted.
//!    Periodically (every few seconds, from one thread):
//!    [`IpLimits::sweep`]; per shard, [`UserLimits::sweep`].
//!
//! Every refusal is counted by [`Refusal::label`] and logged once per
//! interval through a [`RefusalTally`], never per event.

pub mod forwarded;
pub mod ip_limits;
pub mod ipset;
pub mod origin;
pub mod proxy_v2;
pub mod rate;
pub mod refusal;
pub mod users;

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use forwarded::TrustedProxies;
pub use ip_limits::{IpLimitConfig, IpLimits, IpTicket};
pub use ipset::{IpFilter, IpSet};
pub use origin::OriginPolicy;
pub use proxy_v2::{MAX_PROXY_V2_LEN, ProxyHeader, parse_proxy_v2};
pub use refusal::{Refusal, RefusalSummary, RefusalTally};
pub use users::{UserConnections, UserLimits};

use rate::{MAX_RATE, MIN_RATE};

/// The `[access]` section. Every limit defaults to off and every list to
/// empty: a node without the section behaves as before (anyone who can
/// reach the port may connect, at any rate). Turn them on for a node on
/// the public internet; docs/OPERATIONS.md "Securing a node" has a
/// starting point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Networks allowed to connect (CIDR like `10.0.0.0/8`,
    /// `2001:db8::/32`, or a bare address). Default empty: every address
    /// not denied. IPv4-mapped IPv6 addresses are matched as IPv4.
    pub ip_allow: Vec<String>,
    /// Networks refused with 403, even if also allowed (deny wins).
    /// Default empty.
    pub ip_deny: Vec<String>,
    /// Load balancers (CIDRs) whose `X-Forwarded-For` and PROXY headers
    /// name the real client, which every filter and limit then applies
    /// to. Default empty: those headers are ignored and the TCP peer is
    /// the client, since anyone can send them.
    pub trusted_proxies: Vec<String>,
    /// Connections from `trusted_proxies` start with a PROXY protocol v2
    /// header (L4 load balancers: AWS NLB, HAProxy `send-proxy-v2`); one
    /// without a valid header is closed. Connections from other addresses
    /// are direct clients and must not send one. Default off; needs
    /// `trusted_proxies`.
    pub proxy_protocol: bool,
    /// Browser origins allowed to upgrade (403 otherwise):
    /// `https://app.example.com`, `https://*.example.com` (subdomains),
    /// scheme-less `*.example.com` (http and https), `null`, or `*`.
    /// Default empty: any origin. Requests without `Origin` (non-browser
    /// clients) always pass. See [`origin`] for the exact rules.
    pub allowed_origins: Vec<String>,
    /// New connections per second per client address (token bucket; 429
    /// past it). Default 0 = off; 0.001–1,000,000 otherwise.
    pub per_ip_connection_rate: f64,
    /// Connections an address may open at once before the rate applies.
    /// Default 0 = one second's worth (`ceil(rate)`); ignored while the
    /// rate is off.
    pub per_ip_connection_burst: u32,
    /// Concurrent connections per client address (503 past it). Default 0
    /// = off. Mind NAT: a whole office or mobile carrier may share one.
    pub per_ip_max_connections: u32,
    /// IPv6 clients are limited per network of this many bits. Default 64:
    /// one IPv6 host usually holds a whole /64, so per-address limits would
    /// not hold it back. 1–128.
    pub per_ip_ipv6_prefix: u8,
    /// Client addresses the per-IP limits track at once (~32 bytes each).
    /// Default 1,000,000 (~32 MB at worst). When full, new addresses are
    /// refused with 503 until entries expire (fail closed, so spraying
    /// addresses cannot turn the limits off). At least 1.
    pub max_tracked_ips: usize,
    /// Concurrent connections per authenticated user across the node.
    /// Default 0 = off.
    pub per_user_max_connections: u32,
    /// Publishes per second per authenticated user on each shard (error
    /// 114 past it). Default 0 = off; 0.001–1,000,000 otherwise.
    pub per_user_publish_rate: f64,
    /// Publishes a user may burst before the rate applies. Default 0 = one
    /// second's worth; ignored while the rate is off.
    pub per_user_publish_burst: u32,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            ip_allow: Vec::new(),
            ip_deny: Vec::new(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            allowed_origins: Vec::new(),
            per_ip_connection_rate: 0.0,
            per_ip_connection_burst: 0,
            per_ip_max_connections: 0,
            per_ip_ipv6_prefix: 64,
            max_tracked_ips: 1_000_000,
            per_user_max_connections: 0,
            per_user_publish_rate: 0.0,
            per_user_publish_burst: 0,
        }
    }
}

/// A bad `[access]` value, naming the key and, for lists, the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfigError {
    /// The key (`ip_deny`, `per_ip_connection_rate`, ...).
    pub key: &'static str,
    /// The list index and entry text, for list keys.
    pub entry: Option<(usize, String)>,
    /// What is wrong, and what to write instead where that helps.
    pub reason: String,
}

impl fmt::Display for AccessConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some((i, text)) => write!(f, "access.{}[{i}] = {text:?}: {}", self.key, self.reason),
            None => write!(f, "access.{}: {}", self.key, self.reason),
        }
    }
}

impl std::error::Error for AccessConfigError {}

impl AccessConfig {
    /// Checks every value; the same as [`AccessConfig::build`] without
    /// keeping the result.
    pub fn validate(&self) -> Result<(), AccessConfigError> {
        self.build().map(|_| ())
    }

    /// Parses the lists and checks the numbers, once, at start.
    pub fn build(&self) -> Result<AccessPolicy, AccessConfigError> {
        let allow = IpSet::parse(&self.ip_allow).map_err(list_err("ip_allow", &self.ip_allow))?;
        let deny = IpSet::parse(&self.ip_deny).map_err(list_err("ip_deny", &self.ip_deny))?;
        let proxies = IpSet::parse(&self.trusted_proxies)
            .map_err(list_err("trusted_proxies", &self.trusted_proxies))?;
        let origins = OriginPolicy::parse(&self.allowed_origins)
            .map_err(list_err("allowed_origins", &self.allowed_origins))?;
        let err = |key, reason: String| AccessConfigError {
            key,
            entry: None,
            reason,
        };
        if self.proxy_protocol && proxies.is_empty() {
            return Err(err(
                "proxy_protocol",
                "needs trusted_proxies: the addresses of the load balancers that send the header"
                    .into(),
            ));
        }
        check_rate("per_ip_connection_rate", self.per_ip_connection_rate)?;
        check_rate("per_user_publish_rate", self.per_user_publish_rate)?;
        if !(1..=128).contains(&self.per_ip_ipv6_prefix) {
            return Err(err(
                "per_ip_ipv6_prefix",
                format!(
                    "{} is not a prefix length of 1-128",
                    self.per_ip_ipv6_prefix
                ),
            ));
        }
        if self.max_tracked_ips == 0 {
            return Err(err(
                "max_tracked_ips",
                "must be at least 1 (the per-IP limits are off while \
                 per_ip_connection_rate and per_ip_max_connections are 0)"
                    .into(),
            ));
        }
        Ok(AccessPolicy {
            filter: IpFilter::new(allow, deny),
            proxies: TrustedProxies::new(proxies),
            proxy_protocol: self.proxy_protocol,
            origins,
            ip_limits: IpLimitConfig {
                rate: self.per_ip_connection_rate,
                burst: self.per_ip_connection_burst,
                max_connections: self.per_ip_max_connections,
                max_tracked_ips: self.max_tracked_ips,
                ipv6_prefix: self.per_ip_ipv6_prefix,
            },
            user_publish_rate: self.per_user_publish_rate,
            user_publish_burst: self.per_user_publish_burst,
            user_max_connections: self.per_user_max_connections,
        })
    }
}

/// The error for entry `i` of the list `key`.
fn list_err(key: &'static str, list: &[String]) -> impl Fn((usize, String)) -> AccessConfigError {
    move |(i, reason)| AccessConfigError {
        key,
        entry: Some((i, list.get(i).cloned().unwrap_or_default())),
        reason,
    }
}

fn check_rate(key: &'static str, rate: f64) -> Result<(), AccessConfigError> {
    if rate == 0.0 || (rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate)) {
        Ok(())
    } else {
        Err(AccessConfigError {
            key,
            entry: None,
            reason: format!("{rate} is not 0 (off) or a rate of {MIN_RATE}-{MAX_RATE} per second"),
        })
    }
}

/// What the accepted TCP peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// The client itself; it passed the address filter.
    Client,
    /// A trusted proxy: the client's address comes from the PROXY header
    /// or `X-Forwarded-For`, and is checked then.
    TrustedProxy,
}

/// The `[access]` rules, parsed: read-only, built once, shared by every
/// shard (in an `Arc` or a clone each). The stateful limits are made from
/// it: [`AccessPolicy::ip_limits`] and [`AccessPolicy::user_connections`]
/// once per node, [`AccessPolicy::user_limits`] once per shard.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessPolicy {
    filter: IpFilter,
    proxies: TrustedProxies,
    proxy_protocol: bool,
    origins: OriginPolicy,
    ip_limits: IpLimitConfig,
    user_publish_rate: f64,
    user_publish_burst: u32,
    user_max_connections: u32,
}

impl Default for AccessPolicy {
    /// Everything open, every limit off (what the default config builds).
    fn default() -> Self {
        let c = AccessConfig::default();
        AccessPolicy {
            filter: IpFilter::default(),
            proxies: TrustedProxies::default(),
            proxy_protocol: false,
            origins: OriginPolicy::default(),
            ip_limits: IpLimitConfig {
                rate: c.per_ip_connection_rate,
                burst: c.per_ip_connection_burst,
                max_connections: c.per_ip_max_connections,
                max_tracked_ips: c.max_tracked_ips,
                ipv6_prefix: c.per_ip_ipv6_prefix,
            },
            user_publish_rate: c.per_user_publish_rate,
            user_publish_burst: c.per_user_publish_burst,
            user_max_connections: c.per_user_max_connections,
        }
    }
}

impl AccessPolicy {
    /// At accept: whether `peer` is the client (and passed the filter) or a
    /// trusted proxy. Allocation-free.
    #[inline]
    pub fn classify_peer(&self, peer: IpAddr) -> Result<PeerKind, Refusal> {
        if !self.proxies.is_empty() && self.proxies.contains(peer) {
            return Ok(PeerKind::TrustedProxy);
        }
        self.filter.check(peer).map(|()| PeerKind::Client)
    }

    /// Whether a connection from `peer` must start with a PROXY v2 header.
    #[inline]
    pub fn expects_proxy_header(&self, peer: IpAddr) -> bool {
        self.proxy_protocol && self.proxies.contains(peer)
    }

    /// The address filter alone (for the client address found behind a
    /// proxy).
    #[inline]
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.filter.check(ip)
    }

    /// The client address of a connection whose peer (or PROXY source) is
    /// `peer`, given its `X-Forwarded-For` value (see [`forwarded`]).
    pub fn client_ip(&self, peer: IpAddr, xff: Option<&[u8]>) -> IpAddr {
        self.proxies.client_ip(peer, xff)
    }

    /// Whether a request with this `Origin` (or none) may upgrade.
    pub fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        self.origins.allowed(origin)
    }

    /// [`AccessPolicy::origin_allowed`] as a refusal.
    pub fn check_origin(&self, origin: Option<&[u8]>) -> Result<(), Refusal> {
        if self.origin_allowed(origin) {
            Ok(())
        } else {
            Err(Refusal::OriginRefused)
        }
    }

    /// The address filter.
    pub fn filter(&self) -> &IpFilter {
        &self.filter
    }

    /// The trusted proxies.
    pub fn proxies(&self) -> &TrustedProxies {
        &self.proxies
    }

    /// The origin allow-list.
    pub fn origins(&self) -> &OriginPolicy {
        &self.origins
    }

    /// The per-IP limits as configured.
    pub fn ip_limit_config(&self) -> &IpLimitConfig {
        &self.ip_limits
    }

    /// Fresh node-wide per-IP limit state (make one per node).
    pub fn ip_limits(&self) -> IpLimits {
        IpLimits::new(&self.ip_limits)
    }

    /// Fresh per-user publish limits (make one per shard).
    pub fn user_limits(&self) -> UserLimits {
        UserLimits::new(self.user_publish_rate, self.user_publish_burst)
    }

    /// Fresh node-wide per-user connection counts (make one per node).
    pub fn user_connections(&self) -> UserConnections {
        UserConnections::new(self.user_max_connections)
    }
}

#[cfg(test)]
mod tests;
