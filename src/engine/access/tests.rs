//! The `[access]` section end to end: parsing, validation errors, and the
//! shell's steps on a policy built from TOML.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn from_toml(s: &str) -> AccessConfig {
    toml::from_str(s).unwrap()
}

fn build_err(s: &str) -> AccessConfigError {
    from_toml(s).build().unwrap_err()
}

#[test]
fn defaults_are_off_and_open() {
    let c = from_toml("");
    assert_eq!(c, AccessConfig::default());
    let p = c.build().unwrap();
    assert_eq!(p, AccessPolicy::default());
    assert!(p.filter().is_open());
    assert!(p.proxies().is_empty());
    assert!(p.origins().allows_any());
    assert!(!p.ip_limits().is_active());
    assert!(!p.user_limits().is_active());
    assert!(!p.user_connections().is_active());
    assert_eq!(p.classify_peer(ip("203.0.113.1")), Ok(PeerKind::Client));
    assert!(!p.expects_proxy_header(ip("203.0.113.1")));
    // Serialises back to what it reads (the config loader starts from the
    // serialised defaults).
    let back: AccessConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn every_key_parses() {
    let c = from_toml(
        r#"
        ip_allow = ["10.0.0.0/8", "2001:db8::/32"]
        ip_deny = ["10.66.0.0/16", "192.0.2.1"]
        trusted_proxies = ["172.16.0.0/12"]
        proxy_protocol = true
        allowed_origins = ["https://app.example.com", "https://*.example.com"]
        per_ip_connection_rate = 2.5
        per_ip_connection_burst = 10
        per_ip_max_connections = 50
        per_ip_ipv6_prefix = 56
        max_tracked_ips = 200000
        per_user_max_connections = 8
        per_user_publish_rate = 20
        per_user_publish_burst = 40
        "#,
    );
    assert_eq!(c.per_user_publish_rate, 20.0);
    let p = c.build().unwrap();
    assert_eq!(p.ip_limit_config().ipv6_prefix, 56);
    assert!(p.ip_limits().is_active());
    assert!(p.user_limits().is_active());
    assert!(p.user_connections().is_active());
}

#[test]
fn unknown_keys_are_refused() {
    assert!(toml::from_str::<AccessConfig>("ip_whitelist = []").is_err());
    assert!(toml::from_str::<AccessConfig>("per_ip_connection_rate = \"fast\"").is_err());
}

#[test]
fn errors_name_the_key_and_entry() {
    let e = build_err(r#"ip_deny = ["10.0.0.0/8", "10.0.0.1/33"]"#);
    assert_eq!(e.key, "ip_deny");
    assert_eq!(e.entry, Some((1, "10.0.0.1/33".into())));
    assert!(
        e.to_string()
            .starts_with("access.ip_deny[1] = \"10.0.0.1/33\": "),
        "{e}"
    );

    let e = build_err(r#"ip_allow = ["192.168.1.1/24"]"#);
    assert!(e.to_string().contains("192.168.1.0/24"), "{e}");
    let e = build_err(r#"trusted_proxies = ["lb.internal"]"#);
    assert_eq!(e.key, "trusted_proxies");
    let e = build_err(r#"allowed_origins = ["https://app.example.com/"]"#);
    assert_eq!(e.key, "allowed_origins");
    assert!(e.to_string().contains("no path"), "{e}");

    let e = build_err("proxy_protocol = true");
    assert_eq!(e.key, "proxy_protocol");
    assert!(e.to_string().contains("trusted_proxies"), "{e}");

    for (key, toml) in [
        ("per_ip_connection_rate", "per_ip_connection_rate = -1.0"),
        ("per_ip_connection_rate", "per_ip_connection_rate = nan"),
        ("per_ip_connection_rate", "per_ip_connection_rate = inf"),
        ("per_ip_connection_rate", "per_ip_connection_rate = 0.0001"),
        ("per_user_publish_rate", "per_user_publish_rate = 2e6"),
        ("per_ip_ipv6_prefix", "per_ip_ipv6_prefix = 0"),
        ("per_ip_ipv6_prefix", "per_ip_ipv6_prefix = 129"),
        ("max_tracked_ips", "max_tracked_ips = 0"),
    ] {
        let e = build_err(toml);
        assert_eq!(e.key, key, "{toml}");
        assert_eq!(e.entry, None);
        assert!(e.to_string().starts_with(&format!("access.{key}: ")), "{e}");
    }
    // A burst with the rate off is ignored, not an error (turning a limit
    // off is one key).
    assert!(from_toml("per_ip_connection_burst = 5").validate().is_ok());
}

/// What the shell does for one connection, as in the module doc; returns
/// the ticket for release, or the refusal.
fn admit(
    policy: &AccessPolicy,
    limits: &IpLimits,
    peer: IpAddr,
    stream: &[u8],
    xff: Option<&[u8]>,
    origin: Option<&[u8]>,
    now_ms: u64,
) -> Result<(IpAddr, IpTicket), Refusal> {
    let kind = policy.classify_peer(peer)?;
    let mut source = peer;
    if policy.expects_proxy_header(peer) {
        match parse_proxy_v2(stream) {
            ProxyHeader::Done { source: s, .. } => source = s.map_or(peer, |s| s.ip()),
            ProxyHeader::Partial | ProxyHeader::Invalid => return Err(Refusal::ProxyHeader),
        }
    }
    let client = policy.client_ip(source, xff);
    if kind == PeerKind::TrustedProxy {
        policy.check_ip(client)?;
    }
    policy.check_origin(origin)?;
    let ticket = limits.on_connect(client, now_ms)?;
    Ok((client, ticket))
}

fn proxy_v2_from(src: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = src else {
        panic!("test helper takes IPv4")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&v4.ip().octets());
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(&v4.port().to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[test]
fn behind_a_load_balancer_the_real_client_is_limited() {
    let policy = from_toml(
        r#"
        ip_deny = ["198.51.100.0/24"]
        trusted_proxies = ["10.0.0.0/24"]
        allowed_origins = ["https://app.example.com"]
        per_ip_connection_rate = 1
        per_ip_connection_burst = 2
        per_ip_max_connections = 2
        "#,
    )
    .build()
    .unwrap();
    let limits = Arc::new(policy.ip_limits());
    let lb = ip("10.0.0.5");
    let origin = Some(&b"https://app.example.com"[..]);

    // The real client behind the proxy is limited, not the proxy: two
    // clients each get their own burst through the same balancer.
    let (c1, t1) = admit(&policy, &limits, lb, b"", Some(b"203.0.113.1"), origin, 0).unwrap();
    assert_eq!(c1, ip("203.0.113.1"));
    let (_, t2) = admit(&policy, &limits, lb, b"", Some(b"203.0.113.1"), origin, 0).unwrap();
    let (_, t3) = admit(&policy, &limits, lb, b"", Some(b"203.0.113.2"), origin, 0).unwrap();
    assert_eq!(
        admit(&policy, &limits, lb, b"", Some(b"203.0.113.1"), origin, 0).err(),
        Some(Refusal::IpRate)
    );
    // A client forging X-Forwarded-For through the balancer is still
    // itself.
    let forged = Some(&b"8.8.8.8, 203.0.113.1"[..]);
    assert_eq!(
        admit(&policy, &limits, lb, b"", forged, origin, 0).err(),
        Some(Refusal::IpRate)
    );
    // A denied client behind the balancer is refused after the header.
    assert_eq!(
        admit(&policy, &limits, lb, b"", Some(b"198.51.100.9"), origin, 0).err(),
        Some(Refusal::IpDenied)
    );
    // A direct client claiming to be someone else is itself, and denied
    // directly at accept.
    let direct = ip("198.51.100.9");
    assert_eq!(policy.classify_peer(direct), Err(Refusal::IpDenied));
    assert_eq!(
        admit(
            &policy,
            &limits,
            ip("192.0.2.4"),
            b"",
            Some(b"1.2.3.4"),
            origin,
            0
        )
        .map(|(c, t)| {
            limits.release(t, 0);
            c
        }),
        Ok(ip("192.0.2.4"))
    );
    // Origin refused.
    assert_eq!(
        admit(
            &policy,
            &limits,
            ip("192.0.2.5"),
            b"",
            None,
            Some(b"https://evil.example"),
            0
        )
        .err(),
        Some(Refusal::OriginRefused)
    );
    for t in [t1, t2, t3] {
        limits.release(t, 0);
    }
    assert_eq!(limits.unmatched_releases(), 0);
    assert_eq!(limits.open_connections(ip("203.0.113.1")), 0);
}

#[test]
fn proxy_protocol_gives_the_source() {
    let policy = from_toml(
        r#"
        trusted_proxies = ["10.0.0.0/24"]
        proxy_protocol = true
        per_ip_max_connections = 1
        "#,
    )
    .build()
    .unwrap();
    let limits = policy.ip_limits();
    let lb = ip("10.0.0.5");
    let header = proxy_v2_from("203.0.113.7:5555".parse().unwrap());
    let (client, t) = admit(&policy, &limits, lb, &header, None, None, 0).unwrap();
    assert_eq!(client, ip("203.0.113.7"));
    assert_eq!(
        admit(&policy, &limits, lb, &header, None, None, 0).err(),
        Some(Refusal::IpConnections)
    );
    // A balancer connection without the header is refused.
    assert_eq!(
        admit(&policy, &limits, lb, b"GET / HTTP/1.1\r\n", None, None, 0).err(),
        Some(Refusal::ProxyHeader)
    );
    // A direct client is not asked for one (and may not send one).
    assert!(!policy.expects_proxy_header(ip("203.0.113.7")));
    limits.release(t, 0);
    assert_eq!(limits.tracked(), 0);
}
