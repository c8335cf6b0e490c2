//! Sets of IP networks (CIDR lists) and the allow/deny filter built on
//! them.
//!
//! A set is parsed once (with `ipnet`) into sorted, merged address ranges,
//! one slice for IPv4 and one for IPv6, so a lookup is a binary search
//! over plain integers: no allocation, no hashing, `O(log n)` whatever the
//! list size. That is what lets the shell check an address at accept,
//! before it allocates anything for the connection.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for an IPv4 peer) are IPv4 everywhere: a lookup canonicalises
//! the address first, and a rule written in mapped form
//! (`::ffff:10.0.0.0/104`) is stored as the IPv4 rule it means
//! (`10.0.0.0/8`). An IPv6 rule therefore never matches an IPv4 client:
//! `::/0` means "all of IPv6", not "everything".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

use super::Refusal;

/// `ip` with an IPv4-mapped IPv6 address turned into the IPv4 address.
#[inline]
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Parses one list entry: a CIDR network (`10.0.0.0/8`, `2001:db8::/32`)
/// or a bare address (`192.0.2.7`, `::1`, one host). A network with bits
/// set below its prefix (`10.0.0.1/8`) is refused rather than guessed at:
/// it is usually a typo for either `10.0.0.0/8` or `10.0.0.1/32`. Mapped
/// IPv6 networks become the IPv4 network they cover.
pub fn parse_net(entry: &str) -> Result<IpNet, String> {
    let s = entry.trim();
    if s.is_empty() {
        return Err("empty entry".into());
    }
    let net = if s.contains('/') {
        let net: IpNet = s.parse().map_err(|_| {
            "not a CIDR network (address/prefix, e.g. 10.0.0.0/8 or 2001:db8::/32)".to_string()
        })?;
        if net.trunc() != net {
            return Err(format!(
                "host bits set below the /{} prefix: write {} for the network, or the bare \
                 address for one host",
                net.prefix_len(),
                net.trunc()
            ));
        }
        net
    } else {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| "not an IP address or CIDR network".to_string())?;
        IpNet::from(ip)
    };
    Ok(unmap(net))
}

/// A mapped IPv6 network (`::ffff:0:0/96` or longer) as the IPv4 network it
/// covers; any other network unchanged.
fn unmap(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

/// A set of IP networks, for membership tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    /// Disjoint, non-adjacent `[first, last]` ranges sorted by `first`.
    v4: Box<[(u32, u32)]>,
    /// The same for IPv6.
    v6: Box<[(u128, u128)]>,
}

impl IpSet {
    /// The set of `nets` (overlapping and adjacent networks are merged).
    pub fn new(nets: &[IpNet]) -> IpSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match unmap(*net) {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        IpSet {
            v4: merge(v4).into_boxed_slice(),
            v6: merge(v6).into_boxed_slice(),
        }
    }

    /// Parses every entry (see [`parse_net`]); the error carries the index
    /// and text of the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<IpSet, (usize, String)> {
        let mut nets = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            nets.push(parse_net(e.as_ref()).map_err(|why| (i, why))?);
        }
        Ok(IpSet::new(&nets))
    }

    /// Whether the set has no network at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` (mapped addresses as IPv4) is in one of the networks.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => self.contains_v4(a),
            IpAddr::V6(a) => self.contains_v6(a),
        }
    }

    /// Whether the IPv4 address `ip` is in the set.
    #[inline]
    pub fn contains_v4(&self, ip: Ipv4Addr) -> bool {
        in_ranges(&self.v4, u32::from(ip))
    }

    /// Whether the IPv6 address `ip` is in the set (no unmapping).
    #[inline]
    pub fn contains_v6(&self, ip: Ipv6Addr) -> bool {
        in_ranges(&self.v6, u128::from(ip))
    }
}

/// Sorts ranges and merges the overlapping and adjacent ones.
fn merge<T: Ord + Copy + Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if prev.1.successor().is_none_or(|next| first <= next) => {
                prev.1 = prev.1.max(last);
            }
            _ => out.push((first, last)),
        }
    }
    out
}

/// The next integer, if any (for merging adjacent ranges).
trait Successor: Sized {
    fn successor(self) -> Option<Self>;
}

impl Successor for u32 {
    fn successor(self) -> Option<u32> {
        self.checked_add(1)
    }
}

impl Successor for u128 {
    fn successor(self) -> Option<u128> {
        self.checked_add(1)
    }
}

#[inline]
fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // First range that does not end before x; it holds x if it starts at
    // or before it.
    let i = ranges.partition_point(|&(_, last)| last < x);
    ranges.get(i).is_some_and(|&(first, _)| first <= x)
}

/// The `ip_allow` / `ip_deny` filter: deny wins; an empty allow list allows
/// every address not denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpFilter {
    allow: IpSet,
    deny: IpSet,
}

impl IpFilter {
    /// The filter of these two sets.
    pub fn new(allow: IpSet, deny: IpSet) -> IpFilter {
        IpFilter { allow, deny }
    }

    /// Whether the filter lets every address through (both lists empty).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Why `ip` may not connect, if it may not: [`Refusal::IpDenied`] when
    /// a deny rule matches (even if an allow rule matches too),
    /// [`Refusal::IpNotAllowed`] when there is an allow list and no rule
    /// of it matches.
    #[inline]
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.deny.contains(ip) {
            Err(Refusal::IpDenied)
        } else if !self.allow.is_empty() && !self.allow.contains(ip) {
            Err(Refusal::IpNotAllowed)
        } else {
            Ok(())
        }
    }

    /// Whether `ip` may connect (see [`IpFilter::check`]).
    #[inline]
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(entries: &[&str]) -> IpSet {
        IpSet::parse(entries).unwrap()
    }

    #[test]
    fn v4_and_v6_membership_at_the_edges() {
        let s = set(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]);
        for yes in [
            "10.0.0.0",
            "10.255.255.255",
            "192.0.2.7",
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "::1",
        ] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in [
            "9.255.255.255",
            "11.0.0.0",
            "192.0.2.6",
            "192.0.2.8",
            "2001:db9::",
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
            "::2",
            "::",
        ] {
            assert!(!s.contains(ip(no)), "{no}");
        }
        assert!(!IpSet::default().contains(ip("1.2.3.4")));
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let s = set(&["10.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("::ffff:11.1.2.3")));
        // A rule in mapped form is the IPv4 rule.
        let s = set(&["::ffff:192.0.2.0/120"]);
        assert!(s.contains(ip("192.0.2.99")));
        assert!(s.contains(ip("::ffff:192.0.2.99")));
        assert!(!s.contains(ip("192.0.3.0")));
        // IPv6 rules never cover IPv4 clients, mapped or not.
        let s = set(&["::/0"]);
        assert!(s.contains(ip("2001:db8::1")));
        assert!(!s.contains(ip("1.2.3.4")));
        assert!(!s.contains(ip("::ffff:1.2.3.4")));
        // The deprecated IPv4-compatible form is plain IPv6.
        assert!(!set(&["1.2.3.4"]).contains(ip("::1.2.3.4")));
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let s = set(&[
            "10.0.0.0/24",
            "10.0.1.0/24",
            "10.0.0.128/25",
            "0.0.0.0/0",
            "255.255.255.255",
        ]);
        assert_eq!(s.v4.as_ref(), &[(0, u32::MAX)]);
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.3.0/24"]);
        assert_eq!(s.v4.len(), 2);
        assert!(s.contains(ip("10.0.1.255")));
        assert!(!s.contains(ip("10.0.2.0")));
        let s = set(&["::/0", "ffff::/16"]);
        assert_eq!(s.v6.as_ref(), &[(0, u128::MAX)]);
    }

    #[test]
    fn bad_entries_are_named() {
        let err = IpSet::parse(&["10.0.0.0/8", "10.0.0.1/33"]).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err.1.contains("CIDR"), "{}", err.1);
        let err = IpSet::parse(&["10.0.0.1/8"]).unwrap_err();
        assert!(err.1.contains("10.0.0.0/8"), "{}", err.1);
        for bad in [
            "",
            "  ",
            "localhost",
            "1.2.3",
            "1.2.3.4/",
            "/8",
            "::g",
            "1.2.3.4:80",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_net(" 10.0.0.0/8 ").unwrap(),
            "10.0.0.0/8".parse().unwrap()
        );
    }

    #[test]
    fn filter_deny_wins_and_empty_allow_allows_all() {
        let open = IpFilter::default();
        assert!(open.is_open());
        assert!(open.allows(ip("203.0.113.9")));

        let f = IpFilter::new(set(&["10.0.0.0/8", "2001:db8::/32"]), set(&["10.9.0.0/16"]));
        assert_eq!(f.check(ip("10.1.1.1")), Ok(()));
        assert_eq!(f.check(ip("10.9.1.1")), Err(Refusal::IpDenied));
        assert_eq!(f.check(ip("::ffff:10.9.1.1")), Err(Refusal::IpDenied));
        assert_eq!(f.check(ip("192.0.2.1")), Err(Refusal::IpNotAllowed));
        assert_eq!(f.check(ip("2001:db8::5")), Ok(()));
        assert_eq!(f.check(ip("2001:db9::5")), Err(Refusal::IpNotAllowed));

        let deny_only = IpFilter::new(IpSet::default(), set(&["203.0.113.0/24"]));
        assert!(deny_only.allows(ip("198.51.100.1")));
        assert!(!deny_only.allows(ip("203.0.113.200")));
        assert!(!deny_only.allows(ip("::ffff:203.0.113.200")));
    }
}
