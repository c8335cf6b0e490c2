//! The PROXY protocol version 2 header (HAProxy's binary form), which an
//! L4 load balancer sends before the client's first byte to say who the
//! client is. Incremental and bounded: bytes in, a verdict out, safe at
//! any split point, and an invalid header is recognised from its first
//! wrong byte so a connection that sends none is refused without waiting.
//!
//! Layout (all big-endian): a 12-byte signature; a byte with the version
//! (2) in the high nibble and the command in the low one (0 LOCAL, 1
//! PROXY); a byte with the address family (0 unspecified, 1 IPv4, 2 IPv6,
//! 3 Unix) and transport (1 stream, 2 datagram); a 16-bit length of what
//! follows; the addresses (source, destination, source port, destination
//! port); then TLVs (type, 16-bit length, value), which are checked for
//! framing and otherwise skipped.
//!
//! What is accepted:
//! - LOCAL (a health check from the proxy itself): accepted, no source;
//!   the address block is ignored, as the specification says.
//! - PROXY over TCP/IPv4 or TCP/IPv6: the source address and port.
//! - PROXY with an unspecified family, or over Unix sockets: accepted, no
//!   source (the shell uses the connection's own peer address).
//! - Anything else (another version or command, datagrams, a length too
//!   short for the family, a header longer than [`MAX_PROXY_V2_LEN`],
//!   TLVs that overrun): invalid, and the connection is closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version 2 header starts with.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Largest header accepted, fixed part included. The address blocks take
/// at most 216 bytes; the rest is room for the TLVs load balancers send
/// (endpoint ids, TLS details), with a wide margin, while bounding what
/// the shell buffers before the HTTP handshake.
pub const MAX_PROXY_V2_LEN: usize = 4096;

const FIXED_LEN: usize = 16;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const TCP_V4: u8 = 0x11;
const TCP_V6: u8 = 0x21;
const UNSPEC: u8 = 0x00;
const UNIX_STREAM: u8 = 0x31;
const UNIX_DGRAM: u8 = 0x32;

/// What the bytes received so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A valid beginning: read more (the shell's handshake timeout bounds
    /// the wait).
    Partial,
    /// Not a valid version 2 header: close the connection.
    Invalid,
    /// A complete header of `len` bytes (the client's own bytes follow);
    /// `source` is the client's address, or `None` when the header does
    /// not carry one (LOCAL, unspecified family, Unix sockets) and the
    /// connection's own peer address stands.
    Done {
        /// The client's address and port, when the header carries one.
        source: Option<SocketAddr>,
        /// Bytes the header takes at the start of the stream.
        len: usize,
    },
}

/// Parses the PROXY v2 header at the start of `buf`.
pub fn parse_proxy_v2(buf: &[u8]) -> ProxyHeader {
    let sig = buf.len().min(PROXY_V2_SIGNATURE.len());
    if buf[..sig] != PROXY_V2_SIGNATURE[..sig] {
        return ProxyHeader::Invalid;
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return ProxyHeader::Partial;
    };
    let command = ver_cmd & 0x0f;
    if ver_cmd >> 4 != 2 || (command != CMD_LOCAL && command != CMD_PROXY) {
        return ProxyHeader::Invalid;
    }
    let Some(&family) = buf.get(13) else {
        return ProxyHeader::Partial;
    };
    // The smallest body this family needs; LOCAL ignores the family.
    let addr_len = if command == CMD_LOCAL {
        0
    } else {
        match family {
            TCP_V4 => 12,
            TCP_V6 => 36,
            UNSPEC => 0,
            UNIX_STREAM | UNIX_DGRAM => 216,
            _ => return ProxyHeader::Invalid,
        }
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return ProxyHeader::Partial;
    };
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    let len = FIXED_LEN + body_len;
    if body_len < addr_len || len > MAX_PROXY_V2_LEN {
        return ProxyHeader::Invalid;
    }
    let Some(body) = buf.get(FIXED_LEN..len) else {
        return ProxyHeader::Partial;
    };
    if command == CMD_LOCAL || family == UNSPEC {
        return ProxyHeader::Done { source: None, len };
    }
    if !tlvs_well_framed(&body[addr_len..]) {
        return ProxyHeader::Invalid;
    }
    let source = match family {
        TCP_V4 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        TCP_V6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        _ => None,
    };
    ProxyHeader::Done { source, len }
}

/// Whether `tlvs` is a sequence of whole (type, length, value) records.
fn tlvs_well_framed(mut tlvs: &[u8]) -> bool {
    while !tlvs.is_empty() {
        let [_, hi, lo, rest @ ..] = tlvs else {
            return false;
        };
        let n = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(next) = rest.get(n..) else {
            return false;
        };
        tlvs = next;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header: command, family byte, address body, TLVs.
    fn header(cmd: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = PROXY_V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(family);
        let len = u16::try_from(addrs.len() + tlvs.len()).unwrap();
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tlvs);
        h
    }

    fn v4_addrs() -> Vec<u8> {
        let mut a = vec![198, 51, 100, 7, 10, 0, 0, 1];
        a.extend_from_slice(&4711u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a
    }

    fn v6_addrs() -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut a = src.octets().to_vec();
        a.extend_from_slice(&dst.octets());
        a.extend_from_slice(&4711u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a
    }

    /// An AWS-style TLV (0xEA, a VPC endpoint id) and a NOOP padding TLV.
    fn tlvs() -> Vec<u8> {
        let mut t = vec![0xEA, 0x00, 0x17, 0x01];
        t.extend_from_slice(b"vpce-0123456789abcdef0");
        t.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]);
        t
    }

    fn valid_headers() -> Vec<(Vec<u8>, Option<SocketAddr>)> {
        let v4: SocketAddr = "198.51.100.7:4711".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:4711".parse().unwrap();
        vec![
            (header(CMD_PROXY, TCP_V4, &v4_addrs(), &[]), Some(v4)),
            (header(CMD_PROXY, TCP_V4, &v4_addrs(), &tlvs()), Some(v4)),
            (header(CMD_PROXY, TCP_V6, &v6_addrs(), &[]), Some(v6)),
            (header(CMD_PROXY, TCP_V6, &v6_addrs(), &tlvs()), Some(v6)),
            (header(CMD_LOCAL, UNSPEC, &[], &[]), None),
            // LOCAL ignores whatever address block it carries.
            (header(CMD_LOCAL, TCP_V4, &v4_addrs(), &[0xff]), None),
            (header(CMD_PROXY, UNSPEC, &[], &[]), None),
            (header(CMD_PROXY, UNIX_STREAM, &[0; 216], &tlvs()), None),
        ]
    }

    #[test]
    fn valid_headers_at_every_split_point() {
        for (h, source) in valid_headers() {
            let mut stream = h.clone();
            stream.extend_from_slice(b"GET /ws HTTP/1.1\r\n");
            for k in 0..h.len() {
                assert_eq!(
                    parse_proxy_v2(&stream[..k]),
                    ProxyHeader::Partial,
                    "split {k}"
                );
            }
            for k in h.len()..=stream.len() {
                let want = ProxyHeader::Done {
                    source,
                    len: h.len(),
                };
                assert_eq!(parse_proxy_v2(&stream[..k]), want, "split {k}");
            }
        }
    }

    #[test]
    fn invalid_headers_fail_at_their_first_wrong_byte() {
        // (header, the prefix length from which it is known to be bad)
        let mut bad_version = header(CMD_PROXY, TCP_V4, &v4_addrs(), &[]);
        bad_version[12] = 0x11;
        let mut bad_cmd = header(CMD_PROXY, TCP_V4, &v4_addrs(), &[]);
        bad_cmd[12] = 0x22;
        let cases: Vec<(Vec<u8>, usize)> = vec![
            (b"GET /ws HTTP/1.1\r\n".to_vec(), 1),
            // The PROXY v1 text form is not accepted.
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), 1),
            (b"\r\n\r\n\0\r\nQUIX\n".to_vec(), 11),
            (bad_version, 13),
            (bad_cmd, 13),
            (header(CMD_PROXY, 0x12, &v4_addrs(), &[]), 14), // UDP
            (header(CMD_PROXY, 0x10, &v4_addrs(), &[]), 14), // no transport
            (header(CMD_PROXY, 0x41, &v4_addrs(), &[]), 14), // no such family
            (header(CMD_PROXY, TCP_V4, &v4_addrs()[..11], &[]), 16),
            (header(CMD_PROXY, TCP_V6, &v4_addrs(), &[]), 16),
            (header(CMD_PROXY, UNIX_STREAM, &[0; 100], &[]), 16),
            (header(CMD_PROXY, TCP_V4, &v4_addrs(), &[0xEA, 0, 5, 1]), 32),
            (header(CMD_PROXY, TCP_V4, &v4_addrs(), &[0xEA, 0]), 30),
            (header(CMD_PROXY, TCP_V4, &v4_addrs(), &vec![0; 5000]), 16),
        ];
        for (i, (h, bad_from)) in cases.iter().enumerate() {
            for k in 0..*bad_from {
                assert_eq!(
                    parse_proxy_v2(&h[..k]),
                    ProxyHeader::Partial,
                    "case {i} at {k}"
                );
            }
            for k in *bad_from..=h.len() {
                assert_eq!(
                    parse_proxy_v2(&h[..k]),
                    ProxyHeader::Invalid,
                    "case {i} at {k}"
                );
            }
        }
    }

    #[test]
    fn length_bound_is_inclusive() {
        let pad = MAX_PROXY_V2_LEN - FIXED_LEN - 12 - 3;
        let mut tlv = vec![0x04];
        tlv.extend_from_slice(&u16::try_from(pad).unwrap().to_be_bytes());
        tlv.resize(3 + pad, 0);
        let h = header(CMD_PROXY, TCP_V4, &v4_addrs(), &tlv);
        assert_eq!(h.len(), MAX_PROXY_V2_LEN);
        assert!(matches!(parse_proxy_v2(&h), ProxyHeader::Done { len, .. } if len == h.len()));
        tlv.push(0);
        let h = header(CMD_PROXY, TCP_V4, &v4_addrs(), &tlv);
        assert_eq!(parse_proxy_v2(&h[..16]), ProxyHeader::Invalid);
    }

    /// xorshift64*: deterministic bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn byte(&mut self) -> u8 {
            (self.next() >> 56) as u8
        }
    }

    /// A verdict never changes its mind as bytes are added: Invalid stays
    /// Invalid, Done stays the same Done, and Done's length is within the
    /// bytes seen and the bound.
    fn check_monotonic(buf: &[u8]) {
        let mut settled: Option<ProxyHeader> = None;
        for k in 0..=buf.len() {
            let got = parse_proxy_v2(&buf[..k]);
            if let ProxyHeader::Done { len, .. } = got {
                assert!(len <= k && len <= MAX_PROXY_V2_LEN);
            }
            match settled {
                Some(s) => assert_eq!(got, s, "changed at {k}"),
                None if got != ProxyHeader::Partial => settled = Some(got),
                None => {}
            }
        }
    }

    #[test]
    fn random_garbage_never_panics_and_verdicts_are_stable() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let n = (rng.next() % 300) as usize;
            let mut buf: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            // Most rounds start with the signature and a plausible head,
            // so the parser gets past the first byte.
            if round % 4 != 0 {
                let mut head = PROXY_V2_SIGNATURE.to_vec();
                head.push([0x20, 0x21, 0x2f, 0x31][(rng.next() % 4) as usize]);
                head.push([TCP_V4, TCP_V6, UNSPEC, UNIX_STREAM, 0x12][(rng.next() % 5) as usize]);
                head.extend_from_slice(&((rng.next() % 280) as u16).to_be_bytes());
                head.extend_from_slice(&buf);
                buf = head;
            }
            check_monotonic(&buf);
        }
        for (h, _) in valid_headers() {
            // Every single-byte corruption of a valid header: no panic, no
            // change of mind.
            for i in 0..h.len() {
                let mut c = h.clone();
                c[i] ^= 1 << (i % 8);
                check_monotonic(&c);
            }
        }
    }
}
