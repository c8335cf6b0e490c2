//! The `[access]` rules applied to a shard's connections: the shell's side
//! of [`crate::engine::access`], in the order its module doc gives.
//!
//! - At accept ([`Shard::screen_peer`]), before the connection is
//!   allocated: a peer that is not a trusted proxy is the client; its
//!   address goes through `ip_allow`/`ip_deny` and the per-IP rate and cap
//!   at once, and a refusal is answered on the bare socket.
//! - From a trusted proxy: the PROXY v2 header first, when
//!   `proxy_protocol` is on ([`Shard::on_handshake_bytes`]); then, on the
//!   upgrade request, the client behind the proxy (the header's source, or
//!   `X-Forwarded-For`) goes through the same filter and limits
//!   ([`ShardAccess::check_upgrade`]).
//! - Every upgrade: the `Origin` allow-list, 403 instead of the `101`.
//! - At `connect`: the node-wide per-user connection cap
//!   ([`Shard::count_user`]); on `publish`, the per-user rate on this shard
//!   ([`Shard::publish_allowed`]).
//! - When the connection is freed ([`ShardAccess::on_free`]): its per-IP
//!   ticket and its user count are given back, exactly once.
//!
//! What a connection needs remembered (its client address, its per-IP
//! ticket, whether its user was counted) lives in a side table indexed by
//! slot, not in the slot itself, so a connection slot stays within its
//! 128 bytes and a node without limits keeps no table at all.
//!
//! Every refusal is counted in `connections_refused{kind}` and in a
//! [`RefusalTally`] that a tick turns into one log line per interval.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use super::accept::refuse_with;
use super::core::{Shard, slot, slot_ref};
use crate::engine::access::{
    AccessConfig, AccessConfigError, AccessPolicy, IpLimits, IpTicket, PeerKind, ProxyHeader,
    Refusal, RefusalTally, UserConnections, UserLimits, parse_proxy_v2,
};
use crate::engine::codes::{CloseReason, ErrorCode};
use crate::engine::subs::ConnRef;
use crate::engine::wire::ReplyBody;
use crate::engine::ws::handshake::{Reject, UpgradeRequest};
use crate::metrics;

/// Refusals are logged at most once per this interval per shard.
const LOG_INTERVAL_MS: u64 = 10_000;
/// How often idle per-IP and per-user entries are swept.
const SWEEP_INTERVAL_MS: u64 = 5_000;

/// The node's `[access]` state: the parsed rules and the node-wide limit
/// tables, built once and shared by every shard.
#[derive(Debug)]
pub struct NodeAccess {
    /// The rules.
    pub policy: AccessPolicy,
    /// Per-IP connection rate and cap, node-wide.
    pub ip_limits: IpLimits,
    /// Per-user connection counts, node-wide.
    pub users: UserConnections,
    /// Start of the millisecond clock the limit tables share.
    epoch: Instant,
    /// Whether connections need an entry in a shard's side table.
    tracks: bool,
}

impl NodeAccess {
    /// The state for `cfg` (checked by `Config::validate`; the error names
    /// the bad key).
    pub fn new(cfg: &AccessConfig) -> Result<Self, AccessConfigError> {
        let policy = cfg.build()?;
        let ip_limits = policy.ip_limits();
        let users = policy.user_connections();
        let tracks = ip_limits.is_active() || !policy.proxies().is_empty() || users.is_active();
        Ok(Self {
            policy,
            ip_limits,
            users,
            epoch: Instant::now(),
            tracks,
        })
    }

    /// `t` on the millisecond clock every shard shares (the per-IP table
    /// is updated from all of them).
    pub fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Now on that clock.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }
}

/// Where a connection is in the access steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The peer is the client and passed every check at accept.
    Client,
    /// A trusted proxy that must send a PROXY v2 header first.
    ProxyHeader,
    /// A trusted proxy: its client is checked on the upgrade request.
    Proxied,
}

/// What the rules remember about one connection.
#[derive(Debug)]
struct ConnAccess {
    /// The TCP peer, or the PROXY header's source; once the upgrade is
    /// checked, the client address the limits counted.
    ip: IpAddr,
    stage: Stage,
    /// The per-IP count this connection holds.
    ticket: Option<IpTicket>,
    /// Whether this connection's user was counted in [`UserConnections`].
    user_counted: bool,
}

/// A connection that passed the accept-time checks, before it has a slot.
#[derive(Debug)]
pub(crate) struct Admitted(Option<ConnAccess>);

/// What a read gave for a PROXY v2 header.
pub(crate) enum ProxyStep {
    /// Incomplete: wait for more.
    Partial,
    /// Not a valid header: refuse.
    Invalid,
    /// Complete, `len` bytes long; when the header came in pieces, the
    /// bytes received so far (header first), else the header is at the
    /// start of the read's buffer.
    Done {
        len: usize,
        buffered: Option<Vec<u8>>,
    },
}

/// One shard's side of the access rules.
pub(crate) struct ShardAccess {
    pub(crate) node: Arc<NodeAccess>,
    /// Per connection slot; empty unless the node [`NodeAccess::tracks`].
    conns: Vec<Option<ConnAccess>>,
    /// PROXY headers that arrived in pieces, by slot.
    proxy_bufs: HashMap<u32, Vec<u8>>,
    /// The per-user publish rate on this shard.
    user_limits: UserLimits,
    tally: RefusalTally,
    next_sweep_ms: u64,
}

impl ShardAccess {
    /// A shard's state over the node's.
    pub(crate) fn new(node: Arc<NodeAccess>) -> Self {
        let now = node.now_ms();
        Self {
            user_limits: node.policy.user_limits(),
            tally: RefusalTally::new(now),
            next_sweep_ms: now + SWEEP_INTERVAL_MS,
            conns: Vec::new(),
            proxy_bufs: HashMap::new(),
            node,
        }
    }

    /// The accept-time checks for a connection from `peer`.
    fn admit(&self, peer: IpAddr) -> Result<Admitted, Refusal> {
        let node = &*self.node;
        let kind = node.policy.classify_peer(peer)?;
        if !node.tracks {
            return Ok(Admitted(None));
        }
        let (stage, ticket) = match kind {
            PeerKind::Client => {
                let ticket = node
                    .ip_limits
                    .is_active()
                    .then(|| node.ip_limits.on_connect(peer, node.now_ms()))
                    .transpose()?;
                (Stage::Client, ticket)
            }
            PeerKind::TrustedProxy if node.policy.expects_proxy_header(peer) => {
                (Stage::ProxyHeader, None)
            }
            PeerKind::TrustedProxy => (Stage::Proxied, None),
        };
        Ok(Admitted(Some(ConnAccess {
            ip: peer,
            stage,
            ticket,
            user_counted: false,
        })))
    }

    /// Gives back what an admitted connection that never got its slot
    /// holds.
    pub(crate) fn forget(&self, admitted: Admitted) {
        if let Some(entry) = admitted.0 {
            self.release(entry, None);
        }
    }

    /// Files an admitted connection under its slot `idx`.
    pub(crate) fn insert(&mut self, idx: u32, admitted: Admitted) {
        let Some(entry) = admitted.0 else {
            return;
        };
        let i = idx as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        if let Some(stale) = self.conns[i].replace(entry) {
            // Cannot happen (every freed slot is cleared); give back what
            // it held rather than leak it.
            self.release(stale, None);
        }
    }

    fn entry(&mut self, idx: u32) -> Option<&mut ConnAccess> {
        self.conns.get_mut(idx as usize).and_then(Option::as_mut)
    }

    /// The connection in slot `idx` is freed; `user` is who it connected
    /// as. Gives back its per-IP ticket and its user count.
    pub(crate) fn on_free(&mut self, idx: u32, user: Option<&str>) {
        if !self.proxy_bufs.is_empty() {
            self.proxy_bufs.remove(&idx);
        }
        if let Some(entry) = self.conns.get_mut(idx as usize).and_then(Option::take) {
            self.release(entry, user);
        }
    }

    fn release(&self, entry: ConnAccess, user: Option<&str>) {
        if let Some(ticket) = entry.ticket {
            self.node.ip_limits.release(ticket, self.node.now_ms());
        }
        if entry.user_counted
            && let Some(user) = user
        {
            self.node.users.release_user(user);
        }
    }

    /// Whether the connection in slot `idx` must send a PROXY header
    /// before its request.
    pub(crate) fn awaits_proxy_header(&self, idx: u32) -> bool {
        self.conns
            .get(idx as usize)
            .and_then(Option::as_ref)
            .is_some_and(|e| e.stage == Stage::ProxyHeader)
    }

    /// Bytes read while the PROXY header of slot `idx` is awaited.
    pub(crate) fn on_proxy_bytes(&mut self, idx: u32, buf: &[u8]) -> ProxyStep {
        let buffered = self.proxy_bufs.remove(&idx).map(|mut v| {
            v.extend_from_slice(buf);
            v
        });
        let bytes = buffered.as_deref().unwrap_or(buf);
        match parse_proxy_v2(bytes) {
            ProxyHeader::Partial => {
                let v = buffered.unwrap_or_else(|| buf.to_vec());
                self.proxy_bufs.insert(idx, v);
                ProxyStep::Partial
            }
            ProxyHeader::Invalid => ProxyStep::Invalid,
            ProxyHeader::Done { source, len } => {
                if let Some(entry) = self.entry(idx) {
                    if let Some(src) = source {
                        entry.ip = src.ip();
                    }
                    entry.stage = Stage::Proxied;
                }
                ProxyStep::Done { len, buffered }
            }
        }
    }

    /// The checks on a valid upgrade request of slot `idx`: for a
    /// connection through a trusted proxy, the client it names (filter and
    /// per-IP limits); for every connection, `Origin`.
    pub(crate) fn check_upgrade(
        &mut self,
        idx: u32,
        req: &UpgradeRequest<'_>,
    ) -> Result<(), Refusal> {
        let node = &*self.node;
        let policy = &node.policy;
        if let Some(entry) = self.conns.get_mut(idx as usize).and_then(Option::as_mut)
            && entry.stage == Stage::Proxied
        {
            let client = policy
                .proxies()
                .client_ip_lines(entry.ip, req.forwarded_for());
            policy.check_ip(client)?;
            policy.check_origin(req.origin())?;
            if node.ip_limits.is_active() {
                entry.ticket = Some(node.ip_limits.on_connect(client, node.now_ms())?);
            }
            entry.ip = client;
            entry.stage = Stage::Client;
            return Ok(());
        }
        policy.check_origin(req.origin())
    }

    /// Counts `user` against the per-user connection cap for slot `idx`;
    /// false when the user is at the cap (nothing counted).
    fn count_user(&mut self, idx: u32, user: &str) -> bool {
        let users = &self.node.users;
        if !users.is_active() || user.is_empty() {
            return true;
        }
        let Some(entry) = self.conns.get_mut(idx as usize).and_then(Option::as_mut) else {
            // Every connection has an entry while the cap is on.
            return true;
        };
        if entry.user_counted {
            return true;
        }
        if !users.on_user_connect(user) {
            return false;
        }
        entry.user_counted = true;
        true
    }
}

impl Shard {
    /// Counts an `[access]` refusal: in metrics at once, in the log at the
    /// next interval.
    pub(crate) fn access_refused(&mut self, r: Refusal) {
        self.metrics.refused(metrics::Refusal::Access(r));
        self.access.tally.note(r);
    }

    /// The accept-time checks for a connection from `peer` (`None` if the
    /// kernel did not say: the unspecified address, which an `ip_allow`
    /// list refuses). A refused connection is answered and closed here.
    pub(crate) fn screen_peer(&mut self, fd: &OwnedFd, peer: Option<IpAddr>) -> Option<Admitted> {
        let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        match self.access.admit(peer) {
            Ok(a) => Some(a),
            Err(r) => {
                self.access_refused(r);
                self.metrics.handshake(Reject::of_refusal(r));
                // On a TLS listener no session exists to answer in: the
                // socket is just closed (the caller drops it).
                if self.ctx.tls.is_none() {
                    refuse_with(fd, &r.response(), &mut self.scratch);
                }
                None
            }
        }
    }

    /// Bytes read while connection `c` is before its upgrade: a PROXY
    /// header first if one is awaited, then the request.
    pub(crate) fn on_handshake_bytes(&mut self, c: ConnRef, buf: &mut [u8]) {
        if !self.access.awaits_proxy_header(c.idx) {
            return self.on_request_bytes(c, buf);
        }
        match self.access.on_proxy_bytes(c.idx, buf) {
            ProxyStep::Partial => {}
            ProxyStep::Invalid => {
                self.access_refused(Refusal::ProxyHeader);
                self.metrics.handshake(Reject::BadRequest);
                let now = self.now_tick;
                if let Some(conn) = slot(&mut self.conns, c) {
                    let cfg = &self.session_cfg;
                    conn.session.refuse_upgrade(now, Refusal::ProxyHeader, cfg);
                }
                self.closing(c);
            }
            ProxyStep::Done {
                len,
                buffered: None,
            } => {
                if len < buf.len() {
                    self.on_request_bytes(c, &mut buf[len..]);
                }
            }
            ProxyStep::Done {
                len,
                buffered: Some(mut bytes),
            } => {
                if len < bytes.len() {
                    self.on_request_bytes(c, &mut bytes[len..]);
                }
            }
        }
    }

    /// `connect` is about to be accepted as `user`: the per-user
    /// connection cap. Over it, the connection gets error 106 in the
    /// `connect` reply and is closed with 3504 (the client must not
    /// reconnect until another of the user's connections has closed).
    /// Returns whether the connect may go on.
    pub(crate) fn count_user(&mut self, c: ConnRef, id: u32, user: &str) -> bool {
        if self.access.count_user(c.idx, user) {
            return true;
        }
        self.access_refused(Refusal::UserConnections);
        if let Some(conn) = self.conn_mut(c) {
            conn.session.refuse_connect();
        }
        self.reply(c, id, ReplyBody::Error(ErrorCode::LimitExceeded));
        self.flush_replies(c);
        self.close_conn(c, CloseReason::ConnectionLimit);
        false
    }

    /// Whether connection `c` may publish now under the per-user rate of
    /// this shard. Anonymous connections are not limited here.
    pub(crate) fn publish_allowed(&mut self, c: ConnRef, now: Instant) -> bool {
        if !self.access.user_limits.is_active() {
            return true;
        }
        let Some(identity) = slot_ref(&self.conns, c).and_then(|conn| conn.session.identity())
        else {
            return true;
        };
        let ms = self.access.node.ms_at(now);
        if self.access.user_limits.publish(&identity.user, ms) {
            return true;
        }
        self.access_refused(Refusal::UserPublishRate);
        false
    }

    /// Once per tick: the refusals of the last interval in one log line,
    /// and the periodic sweeps of idle per-IP (shard 0, for the node) and
    /// per-user entries.
    pub(crate) fn access_tick(&mut self, now: Instant) {
        let ms = self.access.node.ms_at(now);
        if let Some(summary) = self.access.tally.take_due(ms, LOG_INTERVAL_MS) {
            warn!(
                shard = self.id,
                seconds = (summary.until_ms - summary.since_ms) / 1000,
                "[access] refused: {summary}"
            );
        }
        if ms >= self.access.next_sweep_ms {
            self.access.next_sweep_ms = ms + SWEEP_INTERVAL_MS;
            self.access.user_limits.sweep(ms);
            if self.id == 0 && self.access.node.ip_limits.is_active() {
                self.access.node.ip_limits.sweep(ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ws::deflate::DeflateConfig;
    use crate::engine::ws::handshake::{HandshakeConfig, Parsed, parse_request};

    fn shard(cfg: AccessConfig) -> ShardAccess {
        ShardAccess::new(Arc::new(NodeAccess::new(&cfg).unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Checks `request` (an upgrade with `headers`) for slot `idx`.
    fn upgrade(a: &mut ShardAccess, idx: u32, headers: &str) -> Result<(), Refusal> {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        );
        let cfg = HandshakeConfig {
            client_path: "/ws".into(),
            echo_path: None,
            max_head_bytes: 8192,
            deflate: DeflateConfig { enabled: false },
            sse: true,
            max_post_body: 65536,
        };
        let Parsed::Upgrade(up) = parse_request(req.as_bytes(), &cfg) else {
            panic!("not an upgrade")
        };
        let head = &req.as_bytes()[..up.head_len];
        a.check_upgrade(idx, &UpgradeRequest { upgrade: &up, head })
    }

    #[test]
    fn side_state_stays_small_and_is_kept_only_when_needed() {
        assert!(std::mem::size_of::<Option<ConnAccess>>() <= 48);
        // Defaults: nothing is kept per connection.
        let mut a = shard(AccessConfig::default());
        let admitted = a.admit(ip("192.0.2.1")).unwrap();
        a.insert(0, admitted);
        assert!(a.conns.is_empty());
        assert_eq!(
            upgrade(&mut a, 0, "Origin: https://any.example\r\n"),
            Ok(())
        );
        a.on_free(0, Some("ann"));
    }

    #[test]
    fn a_per_ip_count_is_given_back_exactly_once() {
        let mut a = shard(AccessConfig {
            per_ip_max_connections: 1,
            ..AccessConfig::default()
        });
        let first = a.admit(ip("192.0.2.1")).unwrap();
        a.insert(3, first);
        assert_eq!(
            a.admit(ip("192.0.2.1")).unwrap_err(),
            Refusal::IpConnections
        );
        // A refused connection holds nothing; one never filed gives back.
        let other = a.admit(ip("192.0.2.2")).unwrap();
        a.forget(other);
        assert_eq!(a.node.ip_limits.open_connections(ip("192.0.2.2")), 0);
        a.on_free(3, None);
        a.on_free(3, None);
        assert_eq!(a.node.ip_limits.open_connections(ip("192.0.2.1")), 0);
        assert_eq!(a.node.ip_limits.unmatched_releases(), 0);
        a.insert(3, a.admit(ip("192.0.2.1")).unwrap());
        assert_eq!(a.node.ip_limits.open_connections(ip("192.0.2.1")), 1);
    }

    #[test]
    fn the_client_behind_a_trusted_proxy_is_checked_on_its_upgrade() {
        let mut a = shard(AccessConfig {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ip_deny: vec!["203.0.113.7".into()],
            per_ip_max_connections: 1,
            ..AccessConfig::default()
        });
        let lb = ip("10.0.0.5");
        for idx in 0..4 {
            a.insert(idx, a.admit(lb).unwrap());
        }
        let xff = |c: &str| format!("X-Forwarded-For: {c}\r\n");
        assert_eq!(
            upgrade(&mut a, 0, &xff("203.0.113.7")),
            Err(Refusal::IpDenied)
        );
        assert_eq!(upgrade(&mut a, 1, &xff("198.51.100.1")), Ok(()));
        assert_eq!(
            upgrade(&mut a, 2, &xff("198.51.100.1")),
            Err(Refusal::IpConnections)
        );
        // Without the header, the balancer itself is the client.
        assert_eq!(upgrade(&mut a, 3, ""), Ok(()));
        assert_eq!(a.node.ip_limits.open_connections(lb), 1);
        for idx in 0..4 {
            a.on_free(idx, None);
        }
        assert_eq!(a.node.ip_limits.tracked(), 0);
        assert_eq!(a.node.ip_limits.unmatched_releases(), 0);
    }

    #[test]
    fn a_proxy_header_in_pieces_names_the_client() {
        let mut a = shard(AccessConfig {
            trusted_proxies: vec!["10.0.0.5".into()],
            proxy_protocol: true,
            ..AccessConfig::default()
        });
        a.insert(0, a.admit(ip("10.0.0.5")).unwrap());
        assert!(a.awaits_proxy_header(0));
        let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c".to_vec();
        header.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 5, 0x13, 0x88, 1, 187]);
        header.extend_from_slice(b"GET");
        assert!(matches!(
            a.on_proxy_bytes(0, &header[..5]),
            ProxyStep::Partial
        ));
        match a.on_proxy_bytes(0, &header[5..]) {
            ProxyStep::Done {
                len: 28,
                buffered: Some(bytes),
            } => assert_eq!(&bytes[28..], b"GET"),
            _ => panic!("not done"),
        }
        assert!(!a.awaits_proxy_header(0));
        assert!(a.proxy_bufs.is_empty());
        assert_eq!(a.conns[0].as_ref().unwrap().ip, ip("198.51.100.9"));
        // Anything else from the balancer is refused from its first byte.
        a.insert(1, a.admit(ip("10.0.0.5")).unwrap());
        assert!(matches!(
            a.on_proxy_bytes(1, b"GET / HTTP/1.1"),
            ProxyStep::Invalid
        ));
        // Another peer is a direct client and sends none.
        a.insert(2, a.admit(ip("192.0.2.1")).unwrap());
        assert!(!a.awaits_proxy_header(2));
    }

    #[test]
    fn a_user_is_counted_once_per_connection_and_released_on_free() {
        let mut a = shard(AccessConfig {
            per_user_max_connections: 1,
            ..AccessConfig::default()
        });
        for idx in 0..2 {
            a.insert(idx, a.admit(ip("192.0.2.1")).unwrap());
        }
        assert!(a.count_user(0, "ann"));
        assert!(a.count_user(0, "ann"), "the same connection again");
        assert!(!a.count_user(1, "ann"));
        assert!(a.count_user(1, ""), "anonymous is not counted");
        a.on_free(1, None);
        a.on_free(0, Some("ann"));
        assert_eq!(a.node.users.count("ann"), 0);
        assert_eq!(a.node.users.unmatched_releases(), 0);
    }
}
