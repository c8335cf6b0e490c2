//! Per-IP connection limits, node-wide: a token bucket of new connections
//! per second and a cap on concurrent connections for each client
//! address, shared by every shard thread.
//!
//! Only the accept path touches this (once when a connection is admitted,
//! once when it ends), so the state is a table split into up to 64 parts,
//! each a `Mutex<HashMap>` chosen by a keyed hash of the address: shards
//! accepting at the same time rarely meet on a lock, and each lock is held
//! for one lookup. The hash is randomly keyed per process
//! (`RandomState`), so an attacker cannot aim its addresses at one part.
//!
//! Addresses are counted by key: an IPv4 address (mapped IPv6 addresses
//! are IPv4), or the IPv6 network of `per_ip_ipv6_prefix` bits (64 by
//! default) around an IPv6 address, since one IPv6 host holds a whole /64
//! and would otherwise dodge every per-address limit.
//!
//! Memory is bounded twice. An entry exists only while its address has
//! an open connection or a bucket that is not full; it is dropped when
//! its last connection is released with a full bucket, and by
//! [`IpLimits::sweep`], which the shell runs periodically. And the table
//! holds at most `max_tracked_ips` entries (about 32 bytes each, so ~32 MB
//! at the default million). When the part a new address falls in is full,
//! it is swept (at most once a second per part) and, if still full, the
//! address is refused with [`Refusal::TableFull`] (503): fail closed,
//! because failing open would let an attacker who sprays addresses (an
//! IPv6 block, a botnet) turn the limits off. Addresses already tracked
//! keep connecting; entries free up as buckets refill. Nothing is tracked
//! (and nothing refused) when both limits are off.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Refusal;
use super::ipset::canonical;
use super::rate::{Gcra, ms_to_ns};

/// Parts the table is split into (fewer when `max_tracked_ips` is
/// smaller).
pub const TABLE_PARTS: usize = 64;

/// How often a full part may be swept on the accept path.
const FULL_PART_SWEEP_NS: u64 = 1_000_000_000;

/// The per-IP limits, as configured (validated by `AccessConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IpLimitConfig {
    /// New connections per second per address (0 = off).
    pub rate: f64,
    /// Bucket size (0 = one second's worth).
    pub burst: u32,
    /// Concurrent connections per address (0 = off).
    pub max_connections: u32,
    /// Most addresses tracked at once (at least 1).
    pub max_tracked_ips: usize,
    /// IPv6 addresses are counted per network of this many bits (1–128).
    pub ipv6_prefix: u8,
}

/// A connection counted against its address's cap: give it back with
/// [`IpLimits::release`] exactly once when the connection ends (the move
/// makes a second release impossible). 16 bytes, no heap.
#[must_use = "a ticket that is never released holds its address's connection slot forever"]
#[derive(Debug, PartialEq, Eq)]
pub struct IpTicket {
    key: [u64; 2],
}

impl IpTicket {
    fn new(key: u128) -> IpTicket {
        IpTicket {
            key: [(key >> 64) as u64, key as u64],
        }
    }

    fn key(&self) -> u128 {
        (u128::from(self.key[0]) << 64) | u128::from(self.key[1])
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// GCRA theoretical arrival time, ns (0 = never used).
    tat: u64,
    /// Open connections counted against the cap.
    open: u32,
}

impl Entry {
    fn idle(&self, now_ns: u64) -> bool {
        self.open == 0 && Gcra::is_full(self.tat, now_ns)
    }
}

#[derive(Debug)]
struct Part {
    map: HashMap<u128, Entry>,
    cap: usize,
    last_sweep_ns: u64,
}

impl Part {
    fn sweep(&mut self, now_ns: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| !e.idle(now_ns));
        self.last_sweep_ns = now_ns;
        before - self.map.len()
    }
}

/// Node-wide per-IP limit state; share it in an `Arc`.
#[derive(Debug)]
pub struct IpLimits {
    rate: Option<Gcra>,
    max_connections: u32,
    v6_mask: u128,
    hasher: RandomState,
    parts: Box<[Mutex<Part>]>,
    unmatched_releases: AtomicU64,
}

impl IpLimits {
    /// The limits of `cfg`. Out-of-range values are clamped (a prefix into
    /// 1–128, the table to at least one entry), never a panic.
    pub fn new(cfg: &IpLimitConfig) -> IpLimits {
        let max = cfg.max_tracked_ips.max(1);
        let n = max.min(TABLE_PARTS);
        // Spread the cap so the parts add up to exactly `max`.
        let parts = (0..n)
            .map(|i| {
                Mutex::new(Part {
                    map: HashMap::new(),
                    cap: max / n + usize::from(i < max % n),
                    last_sweep_ns: 0,
                })
            })
            .collect();
        let prefix = u32::from(cfg.ipv6_prefix.clamp(1, 128));
        IpLimits {
            rate: Gcra::new(cfg.rate, cfg.burst),
            max_connections: cfg.max_connections,
            v6_mask: u128::MAX << (128 - prefix),
            hasher: RandomState::new(),
            parts,
            unmatched_releases: AtomicU64::new(0),
        }
    }

    /// Whether any per-IP limit is on (otherwise nothing is tracked).
    pub fn is_active(&self) -> bool {
        self.rate.is_some() || self.max_connections > 0
    }

    /// The table key of `ip`: IPv4 in mapped form, IPv6 masked.
    fn key(&self, ip: IpAddr) -> u128 {
        match canonical(ip) {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6) & self.v6_mask,
        }
    }

    fn part(&self, key: u128) -> MutexGuard<'_, Part> {
        let i = (self.hasher.hash_one(key) % self.parts.len() as u64) as usize;
        // A panic elsewhere cannot leave an entry half-updated (every
        // update is a single field write), so a poisoned lock is usable.
        self.parts[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection from client address `ip` at `now_ms` (a monotonic
    /// clock shared by all threads): takes a token and, if the cap is on,
    /// counts the connection. Refused with [`Refusal::IpRate`] (no token),
    /// [`Refusal::IpConnections`] (at the cap) or [`Refusal::TableFull`]; a
    /// refusal changes nothing.
    pub fn on_connect(&self, ip: IpAddr, now_ms: u64) -> Result<IpTicket, Refusal> {
        let key = self.key(ip);
        if !self.is_active() {
            return Ok(IpTicket::new(key));
        }
        let now = ms_to_ns(now_ms);
        let mut guard = self.part(key);
        let part = &mut *guard;
        if !part.map.contains_key(&key) && part.map.len() >= part.cap {
            if now.saturating_sub(part.last_sweep_ns) >= FULL_PART_SWEEP_NS {
                part.sweep(now);
            }
            if part.map.len() >= part.cap {
                return Err(Refusal::TableFull);
            }
        }
        let entry = part.map.entry(key).or_insert(Entry { tat: 0, open: 0 });
        if let Some(g) = &self.rate
            && !g.would_admit(entry.tat, now)
        {
            return Err(Refusal::IpRate);
        }
        if self.max_connections > 0 && entry.open >= self.max_connections {
            return Err(Refusal::IpConnections);
        }
        if let Some(g) = &self.rate {
            g.admit(&mut entry.tat, now);
        }
        if self.max_connections > 0 {
            entry.open += 1;
        }
        Ok(IpTicket::new(key))
    }

    /// The connection of `ticket` ended at `now_ms`: uncounts it, and
    /// forgets its address if that leaves nothing to remember.
    pub fn release(&self, ticket: IpTicket, now_ms: u64) {
        if self.max_connections == 0 {
            return;
        }
        let key = ticket.key();
        let mut part = self.part(key);
        match part.map.get_mut(&key) {
            Some(e) if e.open > 0 => {
                e.open -= 1;
                if e.idle(ms_to_ns(now_ms)) {
                    part.map.remove(&key);
                }
            }
            _ => {
                self.unmatched_releases.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets every address with no open connection and a full bucket at
    /// `now_ms`; returns how many. Run it periodically (every few seconds)
    /// from one thread; it locks one part at a time.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let now = ms_to_ns(now_ms);
        self.parts
            .iter()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner).sweep(now))
            .sum()
    }

    /// Addresses tracked now (a gauge for metrics).
    pub fn tracked(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// Connections counted for `ip`'s key now.
    pub fn open_connections(&self, ip: IpAddr) -> u32 {
        let key = self.key(ip);
        self.part(key).map.get(&key).map_or(0, |e| e.open)
    }

    /// Releases that matched no counted connection: always 0 unless the
    /// shell releases a ticket it did not get from this table (a bug).
    pub fn unmatched_releases(&self) -> u64 {
        self.unmatched_releases.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
