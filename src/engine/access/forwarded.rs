//! The real client address behind trusted load balancers, from
//! `X-Forwarded-For`.
//!
//! Anyone can send `X-Forwarded-For`, so the header is read only when the
//! connection comes from a configured proxy (`trusted_proxies`), and then
//! the standard way: each proxy appends the address it received the
//! request from, so the list is walked from the right, skipping trusted
//! proxies, and the first address that is not a trusted proxy is the
//! client. Entries further left were written by the client or by proxies
//! we do not trust and are never looked at, which is what defeats a
//! client that sends a forged header through the load balancer.
//!
//! A malformed entry reached in the walk (`unknown`, garbage, empty) means
//! the proxies did not write what we expect: the answer is then the
//! connection's own peer address, never a guess. If every entry is a
//! trusted proxy, the leftmost one is the client (a client inside the
//! proxies' own network).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ipset::{IpSet, canonical};

/// The `trusted_proxies` networks: load balancers whose `X-Forwarded-For`
/// and PROXY protocol headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    set: IpSet,
}

impl TrustedProxies {
    /// The proxies in `set`.
    pub fn new(set: IpSet) -> TrustedProxies {
        TrustedProxies { set }
    }

    /// Whether no proxy is trusted (then forwarding headers are ignored).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.set.contains(ip)
    }

    /// The client address of a connection from `peer` carrying the
    /// `X-Forwarded-For` value `xff` (if any). Mapped IPv6 addresses come
    /// back as IPv4. A request with several `X-Forwarded-For` lines should
    /// use [`TrustedProxies::client_ip_lines`] (the nearest proxy appends to
    /// the last line).
    pub fn client_ip(&self, peer: IpAddr, xff: Option<&[u8]>) -> IpAddr {
        self.client_ip_lines(peer, xff)
    }

    /// [`TrustedProxies::client_ip`] for a request with `lines`
    /// `X-Forwarded-For` header lines, in the order they came, which HTTP
    /// reads as one comma-separated list.
    pub fn client_ip_lines<'a, I>(&self, peer: IpAddr, lines: I) -> IpAddr
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: DoubleEndedIterator,
    {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut leftmost_trusted = None;
        for line in lines.into_iter().rev() {
            for hop in line.split(|&b| b == b',').rev() {
                let Some(ip) = parse_hop(hop) else {
                    return peer;
                };
                let ip = canonical(ip);
                if !self.contains(ip) {
                    return ip;
                }
                leftmost_trusted = Some(ip);
            }
        }
        leftmost_trusted.unwrap_or(peer)
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port as some
/// proxies write it (`192.0.2.1:4711`, `[2001:db8::1]:4711`, and
/// `[2001:db8::1]`), surrounded by optional spaces or tabs.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = hop.trim_ascii();
    // An address with a port is at most 47 bytes; refuse long junk before
    // any UTF-8 or number parsing.
    if hop.len() > 64 {
        return None;
    }
    let s = std::str::from_utf8(hop).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (addr, port) = s.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(IpSet::parse(entries).unwrap())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = proxies(&["10.0.0.0/8"]);
        let peer = ip("203.0.113.5");
        for xff in [
            &b"1.2.3.4"[..],
            b"10.0.0.1",
            b"1.2.3.4, 10.0.0.1",
            b"",
            b"garbage",
        ] {
            assert_eq!(t.client_ip(peer, Some(xff)), peer);
        }
        assert_eq!(t.client_ip(peer, None), peer);
        // No proxies configured: the header is never read.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("10.0.0.1"), Some(b"1.2.3.4")),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn walk_from_the_right_skipping_trusted_hops() {
        let t = proxies(&["10.0.0.0/8", "2001:db8:ff::/48"]);
        let lb = ip("10.0.0.2");
        // The nearest proxy appended the client.
        assert_eq!(t.client_ip(lb, Some(b"198.51.100.7")), ip("198.51.100.7"));
        // The client forged a header; the proxy appended the real address.
        let forged = b"1.1.1.1, 8.8.8.8 ,198.51.100.7";
        assert_eq!(t.client_ip(lb, Some(forged)), ip("198.51.100.7"));
        // Two proxies in a row: the inner one is skipped.
        let chain = b"6.6.6.6, 198.51.100.7, 10.1.1.1";
        assert_eq!(t.client_ip(lb, Some(chain)), ip("198.51.100.7"));
        // IPv6 hops, with and without brackets and ports.
        let v6 = b"2001:db8::99, [2001:db8:ff::1]:443";
        assert_eq!(t.client_ip(lb, Some(v6)), ip("2001:db8::99"));
        assert_eq!(t.client_ip(lb, Some(b"[2001:db8::99]")), ip("2001:db8::99"));
        assert_eq!(
            t.client_ip(lb, Some(b"198.51.100.7:5555")),
            ip("198.51.100.7")
        );
        // Mapped addresses come back as IPv4, for the peer too.
        assert_eq!(
            t.client_ip(ip("::ffff:10.0.0.2"), Some(b"::ffff:198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(t.client_ip(ip("::ffff:8.8.8.8"), None), ip("8.8.8.8"));
        // Everyone trusted: the leftmost is the client.
        assert_eq!(t.client_ip(lb, Some(b"10.9.9.9, 10.1.1.1")), ip("10.9.9.9"));
        // Trusted peer, no header: the peer.
        assert_eq!(t.client_ip(lb, None), lb);
    }

    #[test]
    fn malformed_entries_in_the_walk_give_the_peer() {
        let t = proxies(&["10.0.0.0/8"]);
        let lb = ip("10.0.0.2");
        for bad in [
            &b""[..],
            b"  ",
            b"unknown",
            b"1.2.3.4,",
            b"1.2.3.4, 10.1.1.1, ",
            b"1.2.3.4, unknown",
            b"1.2.3.4:99999",
            b"1.2.3.4:",
            b"[::1]x",
            b"[1.2.3.4]",
            b"\xff\xfe",
            b"fe80::1%eth0",
        ] {
            assert_eq!(
                t.client_ip(lb, Some(bad)),
                lb,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Junk left of the client is never reached.
        assert_eq!(
            t.client_ip(lb, Some(b"\xff garbage,, 198.51.100.7")),
            ip("198.51.100.7")
        );
        let long = vec![b'1'; 10_000];
        assert_eq!(t.client_ip(lb, Some(&long)), lb);
    }

    #[test]
    fn several_header_lines_read_as_one_list() {
        let t = proxies(&["10.0.0.0/8"]);
        let lb = ip("10.0.0.2");
        // The client's own line comes first; the proxy's last.
        let lines: [&[u8]; 2] = [b"1.1.1.1", b"198.51.100.7, 10.3.3.3"];
        assert_eq!(t.client_ip_lines(lb, lines), ip("198.51.100.7"));
        let lines: [&[u8]; 2] = [b"198.51.100.7", b"10.3.3.3"];
        assert_eq!(t.client_ip_lines(lb, lines), ip("198.51.100.7"));
        let empty: [&[u8]; 0] = [];
        assert_eq!(t.client_ip_lines(lb, empty), lb);
    }
}
