use std::net::IpAddr;
use std::sync::Arc;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg(rate: f64, burst: u32, max_connections: u32) -> IpLimitConfig {
    IpLimitConfig {
        rate,
        burst,
        max_connections,
        max_tracked_ips: 1_000_000,
        ipv6_prefix: 64,
    }
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<IpLimits>();
    assert_eq!(std::mem::size_of::<IpTicket>(), 16);
    assert_eq!(std::mem::align_of::<IpTicket>(), 8);
}

#[test]
fn off_tracks_nothing_and_refuses_nothing() {
    let l = IpLimits::new(&cfg(0.0, 0, 0));
    assert!(!l.is_active());
    for i in 0..10_000u32 {
        let t = l.on_connect(IpAddr::from(i.to_be_bytes()), 0).unwrap();
        l.release(t, 0);
    }
    assert_eq!(l.tracked(), 0);
    assert_eq!(l.unmatched_releases(), 0);
}

#[test]
fn rate_burst_then_refill() {
    // 2 per second, burst 3.
    let l = IpLimits::new(&cfg(2.0, 3, 0));
    let a = ip("198.51.100.7");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(l.on_connect(a, 1000).unwrap());
    }
    assert_eq!(l.on_connect(a, 1000), Err(Refusal::IpRate));
    assert_eq!(l.on_connect(a, 1499), Err(Refusal::IpRate));
    // Other addresses have their own bucket.
    assert!(l.on_connect(ip("198.51.100.8"), 1000).is_ok());
    held.push(l.on_connect(a, 1500).unwrap());
    assert_eq!(l.on_connect(a, 1500), Err(Refusal::IpRate));
    // Refused attempts cost nothing: the next token is still at 2000.
    held.push(l.on_connect(a, 2000).unwrap());
    // The cap is off: releases change nothing and are not "unmatched".
    for t in held {
        l.release(t, 2000);
    }
    assert_eq!(l.unmatched_releases(), 0);
    assert_eq!(l.open_connections(a), 0);
}

#[test]
fn concurrent_cap_and_release_symmetry() {
    let l = IpLimits::new(&cfg(0.0, 0, 2));
    let a = ip("2001:db8::1");
    let t1 = l.on_connect(a, 0).unwrap();
    let t2 = l.on_connect(a, 0).unwrap();
    assert_eq!(l.on_connect(a, 0), Err(Refusal::IpConnections));
    assert_eq!(l.open_connections(a), 2);
    l.release(t1, 5);
    assert_eq!(l.open_connections(a), 1);
    let t3 = l.on_connect(a, 6).unwrap();
    assert_eq!(l.on_connect(a, 6), Err(Refusal::IpConnections));
    l.release(t2, 7);
    l.release(t3, 7);
    // Back to nothing, and nothing remembered.
    assert_eq!(l.open_connections(a), 0);
    assert_eq!(l.tracked(), 0);
    assert_eq!(l.unmatched_releases(), 0);
    // A ticket from another table matches nothing here: counted, no panic.
    let other = IpLimits::new(&cfg(0.0, 0, 2));
    let stray = other.on_connect(ip("192.0.2.1"), 0).unwrap();
    l.release(stray, 8);
    assert_eq!(l.unmatched_releases(), 1);
}

#[test]
fn rate_and_cap_together() {
    let l = IpLimits::new(&cfg(1.0, 2, 1));
    let a = ip("203.0.113.9");
    let t = l.on_connect(a, 0).unwrap();
    // At the cap: 503, and the refused attempt takes no token.
    assert_eq!(l.on_connect(a, 0), Err(Refusal::IpConnections));
    l.release(t, 0);
    let t = l.on_connect(a, 0).unwrap();
    l.release(t, 0);
    // Bucket empty now (burst 2 used): 429 even though under the cap.
    assert_eq!(l.on_connect(a, 0), Err(Refusal::IpRate));
    assert_eq!(l.on_connect(a, 999), Err(Refusal::IpRate));
    let t = l.on_connect(a, 1000).unwrap();
    // Released with a bucket not yet full: remembered until it refills.
    l.release(t, 1000);
    assert_eq!(l.tracked(), 1);
    // The last token was taken at 1000 with the bucket empty: full again
    // two tokens (2 s) later.
    assert_eq!(l.sweep(2999), 0);
    assert_eq!(l.sweep(3000), 1);
    assert_eq!(l.tracked(), 0);
}

#[test]
fn mapped_v4_and_v6_prefixes_share_one_key() {
    let l = IpLimits::new(&cfg(0.0, 0, 1));
    let t = l.on_connect(ip("192.0.2.1"), 0).unwrap();
    assert_eq!(
        l.on_connect(ip("::ffff:192.0.2.1"), 0),
        Err(Refusal::IpConnections)
    );
    l.release(t, 0);
    // One /64 is one client.
    let t = l.on_connect(ip("2001:db8:1:2::1"), 0).unwrap();
    assert_eq!(
        l.on_connect(ip("2001:db8:1:2:ffff::9"), 0),
        Err(Refusal::IpConnections)
    );
    let t2 = l.on_connect(ip("2001:db8:1:3::1"), 0).unwrap();
    l.release(t, 0);
    l.release(t2, 0);
    assert_eq!(l.tracked(), 0);
    // A /128 prefix counts every address.
    let mut c = cfg(0.0, 0, 1);
    c.ipv6_prefix = 128;
    let l = IpLimits::new(&c);
    let _a = l.on_connect(ip("2001:db8::1"), 0).unwrap();
    let _b = l.on_connect(ip("2001:db8::2"), 0).unwrap();
    // Out-of-range prefixes are clamped, not a panic.
    c.ipv6_prefix = 0;
    let _ = IpLimits::new(&c).on_connect(ip("2001:db8::1"), 0);
    c.ipv6_prefix = 200;
    let _ = IpLimits::new(&c).on_connect(ip("2001:db8::1"), 0);
}

#[test]
fn spraying_addresses_is_bounded_and_fails_closed_for_new_ones() {
    let mut c = cfg(1.0, 5, 0);
    c.max_tracked_ips = 1000;
    let l = IpLimits::new(&c);
    let known = ip("198.51.100.1");
    assert!(l.on_connect(known, 0).is_ok());
    // An attacker sprays 50,000 distinct /64s within the same second.
    let mut refused = 0;
    for i in 0..50_000u128 {
        let v6 = std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (i << 64));
        match l.on_connect(IpAddr::V6(v6), 500) {
            Ok(_) => {}
            Err(r) => {
                assert_eq!(r, Refusal::TableFull);
                refused += 1;
            }
        }
    }
    assert!(l.tracked() <= 1000, "{}", l.tracked());
    assert!(refused >= 49_000, "{refused}");
    // The address already tracked still connects.
    assert!(l.on_connect(known, 600).is_ok());
    // Once buckets refill (5 tokens at 1/s: 5 s) the parts sweep
    // themselves when full, and new addresses get in again.
    assert!(l.on_connect(ip("192.0.2.77"), 6000).is_ok());
    let before = l.tracked();
    assert_eq!(l.sweep(6000), before - 1);
    assert_eq!(l.tracked(), 1);
}

#[test]
fn a_full_part_is_swept_at_most_once_a_second() {
    let mut c = cfg(1.0, 1, 0);
    c.max_tracked_ips = 1; // one part, one entry
    let l = IpLimits::new(&c);
    assert!(l.on_connect(ip("192.0.2.1"), 10_000).is_ok());
    // Bucket not full yet: the sweep frees nothing.
    assert_eq!(
        l.on_connect(ip("192.0.2.2"), 10_500),
        Err(Refusal::TableFull)
    );
    // Full at 11,000, but the part was swept at 10,500: no sweep before
    // 11,500.
    assert_eq!(
        l.on_connect(ip("192.0.2.2"), 11_000),
        Err(Refusal::TableFull)
    );
    assert!(l.on_connect(ip("192.0.2.2"), 11_500).is_ok());
    assert_eq!(l.tracked(), 1);
}

#[test]
fn eviction_keeps_memory_to_live_addresses() {
    let l = IpLimits::new(&cfg(10.0, 10, 3));
    let mut tickets = Vec::new();
    for i in 0..2000u32 {
        let a = IpAddr::from((0xC000_0000 | i).to_be_bytes());
        let t = l.on_connect(a, 0).unwrap();
        if i % 10 == 0 {
            tickets.push(t);
        } else {
            l.release(t, 0);
        }
    }
    // Every address used a token, so all are remembered for now.
    assert_eq!(l.tracked(), 2000);
    // 100 ms later every bucket is full again: only the 200 addresses with
    // an open connection stay.
    assert_eq!(l.sweep(100), 1800);
    assert_eq!(l.tracked(), 200);
    for t in tickets {
        l.release(t, 200);
    }
    assert_eq!(l.tracked(), 0);
    assert_eq!(l.unmatched_releases(), 0);
}

#[test]
fn threads_hammering_one_address_never_exceed_the_cap() {
    let l = Arc::new(IpLimits::new(&cfg(0.0, 0, 8)));
    let a = ip("198.51.100.200");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    if let Ok(t) = l.on_connect(a, 0) {
                        assert!(l.open_connections(a) <= 8);
                        l.release(t, 0);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(l.open_connections(a), 0);
    assert_eq!(l.tracked(), 0);
    assert_eq!(l.unmatched_releases(), 0);
}
