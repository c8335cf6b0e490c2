//! Channel history: the seam between the engine and whatever keeps a
//! channel's recent publications, the recovery arithmetic every store
//! shares, and the embedded default, [`MemoryHistory`].
//!
//! A channel's home assigns offsets (see [`hub`](crate::engine::hub)); the
//! store keeps the last publications of each channel within the limits of
//! its namespace ([`HistoryLimits`]) so that a client can page through them
//! (`history`) or catch up after a reconnect (`recover`). Recovery is
//! arithmetic on `(epoch, offset)` ([`plan_recovery`]) plus one question to
//! the store: does it still hold *every* missing publication? A store never
//! answers with part of a gap: a client either gets all it missed or is
//! told that its position is unrecoverable.
//!
//! Layout:
//! - [`HistoryStore`]: the trait a backend implements.
//! - [`HistoryLimits`], [`HistoryQuery`], [`Recovery`], [`HistoryStats`]:
//!   what goes in and comes out.
//! - [`plan_recovery`], [`Recovery::from_run`]: the backend-independent
//!   halves of recovery.
//! - `memory`: [`MemoryHistory`], bounded rings in process memory.

use crate::engine::hub::Position;
use crate::engine::wire::publication::Publication;
use std::sync::Arc;

mod memory;

pub use memory::{DEFAULT_SWEEP_BUDGET, ENTRY_OVERHEAD, MemoryHistory, MemoryHistoryConfig};

/// How much history a channel keeps, from its namespace.
///
/// Both limits must be non-zero for anything to be kept (as in Centrifugo,
/// setting only one does nothing): a channel needs a bound on count *and*
/// on age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most publications kept; the oldest is dropped first.
    pub size: usize,
    /// How long a publication is kept after it is appended, in ms.
    pub ttl_ms: u64,
}

impl HistoryLimits {
    /// Whether these limits keep anything at all.
    pub fn keeps_history(&self) -> bool {
        self.size > 0 && self.ttl_ms > 0
    }
}

/// Which publications a `history` read returns.
///
/// Oldest first unless `reverse`. The number returned never exceeds
/// [`effective_limit`](Self::effective_limit): the cap `max` is a field
/// (rather than left to the caller) so that every backend, including one
/// that reads over the network, can stop at it without fetching more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryQuery {
    /// Most publications wanted: `Some(0)` asks for none (only the
    /// position, which the caller has), `None` for as many as `max` allows.
    pub limit: Option<usize>,
    /// Start after (or, with `reverse`, before) this position. Only its
    /// offset is used; a `since` from another epoch than the channel's
    /// current one matches nothing, and the caller is expected to have
    /// answered it with "unrecoverable position" before reading.
    pub since: Option<Position>,
    /// Newest first.
    ///
    /// - without `since`: the newest publications;
    /// - with `since`: those with an offset below `since.offset`.
    pub reverse: bool,
    /// The server's cap on one read (a config value, not the client's).
    pub max: usize,
}

impl HistoryQuery {
    /// Publications this query may return at most: `limit` capped by `max`.
    pub fn effective_limit(&self) -> usize {
        self.limit.map_or(self.max, |l| l.min(self.max))
    }
}

/// The answer to a recovery: all missed publications, or none.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovery {
    /// Whether the client's stream continues without a gap.
    pub recovered: bool,
    /// When recovered, every publication after the client's position up to
    /// the current one, oldest first; otherwise empty.
    pub publications: Vec<Publication>,
}

impl Recovery {
    /// The client's position cannot be continued: no publications.
    pub fn unrecoverable() -> Self {
        Self {
            recovered: false,
            publications: Vec::new(),
        }
    }

    /// Recovered with nothing to replay (the client was up to date).
    pub fn up_to_date() -> Self {
        Self {
            recovered: true,
            publications: Vec::new(),
        }
    }

    /// Checks a run a store fetched for `from..=to`: recovered only when it
    /// holds exactly those offsets, in order, each once; otherwise
    /// unrecoverable with no publications (never a partial answer).
    pub fn from_run(from: u64, to: u64, publications: Vec<Publication>) -> Self {
        let exact = to >= from
            && publications.len() as u64 == to - from + 1
            && publications
                .iter()
                .zip(from..=to)
                .all(|(p, want)| p.offset == want);
        if exact {
            Self {
                recovered: true,
                publications,
            }
        } else {
            Self::unrecoverable()
        }
    }
}

/// What recovery needs, decided from positions alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryPlan {
    /// The position cannot be continued whatever the store holds.
    Unrecoverable,
    /// Nothing was missed.
    UpToDate,
    /// The store must hold every offset `from..=to`.
    Fetch {
        /// First missed offset (`since.offset + 1`).
        from: u64,
        /// Last missed offset (`current.offset`).
        to: u64,
    },
}

/// The recovery arithmetic (centrifuge `broker.go`): a client at `since`
/// can continue the channel now at `current` only within one epoch, from
/// a position not ahead of the channel, and when it missed at most `max`
/// publications.
pub fn plan_recovery(current: Position, since: Position, max: usize) -> RecoveryPlan {
    if since.epoch != current.epoch || since.offset > current.offset {
        return RecoveryPlan::Unrecoverable;
    }
    if since.offset == current.offset {
        return RecoveryPlan::UpToDate;
    }
    let missing = current.offset - since.offset;
    if missing > max as u64 {
        return RecoveryPlan::Unrecoverable;
    }
    RecoveryPlan::Fetch {
        from: since.offset + 1,
        to: current.offset,
    }
}

/// A store's counters. Sizes are current; `evicted_*`, `cleared` and
/// `rejected` count publications since the store was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Channels with at least one publication held.
    pub channels: usize,
    /// Publications held.
    pub publications: usize,
    /// Memory accounted to them (payload plus per-entry overhead).
    pub bytes: usize,
    /// Dropped because the channel's ring was full.
    pub evicted_by_size: u64,
    /// Dropped because they were older than the channel's ttl.
    pub evicted_by_ttl: u64,
    /// Dropped, oldest first across channels, to stay under the store's
    /// memory limit.
    pub evicted_by_memory: u64,
    /// Dropped with a whole channel: its epoch changed, it was removed, or
    /// its namespace stopped keeping history.
    pub cleared: u64,
    /// Appends refused because their offset was not above the channel's
    /// last one in the same epoch (a caller bug, never silent).
    pub rejected: u64,
}

/// Where channel history is kept: the seam between the engine and a
/// backend.
///
/// [`MemoryHistory`] is the embedded default and the reference for tests.
/// The methods are synchronous because the embedded store answers at once.
/// A backend that must wait on the network (a JetStream-backed store) keeps
/// the same operations but answers through the shard inbox: the shard sends
/// the request and the reply comes back as a message. That is why no
/// method takes or returns a reference that outlives the call — every
/// request can be turned into an owned message (`Arc<str>`, `Position`,
/// `Publication` are cheap to own) and every answer is owned.
///
/// Time is an input: `now_ms` is the shard's monotonic clock in
/// milliseconds and must not go backwards between calls.
pub trait HistoryStore {
    /// Keeps `publication` as the newest of `channel` in `epoch`, within
    /// `limits`. A different epoch than the one held drops the channel's
    /// previous publications first; limits that keep nothing drop what the
    /// channel had. An offset not above the channel's last one in the same
    /// epoch is refused (counted in [`HistoryStats::rejected`]).
    fn append(
        &mut self,
        channel: &Arc<str>,
        epoch: u64,
        publication: Publication,
        limits: HistoryLimits,
        now_ms: u64,
    );

    /// The publications of `channel` in its current `epoch` that `query`
    /// selects (see [`HistoryQuery`]). Publications of another epoch, or
    /// older than the channel's ttl, are never returned.
    fn read(
        &mut self,
        channel: &str,
        epoch: u64,
        query: &HistoryQuery,
        now_ms: u64,
    ) -> Vec<Publication>;

    /// Everything a client at `since` missed of `channel`, now at
    /// `current`, if it missed at most `max` and every one is still held
    /// (see [`plan_recovery`]); otherwise unrecoverable, with nothing.
    fn recover(
        &mut self,
        channel: &str,
        current: Position,
        since: Position,
        max: usize,
        now_ms: u64,
    ) -> Recovery;

    /// Forgets `channel`'s history. Returns whether it had any.
    fn remove(&mut self, channel: &str) -> bool;

    /// Whether `channel` has publications held (expired ones may count
    /// until the next [`HistoryStore::expire`]). A channel's home keeps its
    /// epoch while it does, so that recovery stays possible.
    fn holds(&self, channel: &str) -> bool;

    /// Drops publications older than their channel's ttl. The work per call
    /// may be bounded; what is left is picked up by the next call. Returns
    /// how many publications were dropped.
    fn expire(&mut self, now_ms: u64) -> usize;

    /// Current sizes and eviction counters.
    fn stats(&self) -> HistoryStats;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: u64, offset: u64) -> Position {
        Position { epoch, offset }
    }

    #[test]
    fn plan_epoch_and_offsets() {
        use RecoveryPlan::*;
        assert_eq!(plan_recovery(pos(1, 5), pos(2, 5), 10), Unrecoverable);
        assert_eq!(plan_recovery(pos(1, 5), pos(1, 6), 10), Unrecoverable);
        assert_eq!(plan_recovery(pos(1, 5), pos(1, 5), 0), UpToDate);
        assert_eq!(plan_recovery(pos(1, 0), pos(1, 0), 0), UpToDate);
        assert_eq!(
            plan_recovery(pos(1, 5), pos(1, 2), 10),
            Fetch { from: 3, to: 5 }
        );
    }

    #[test]
    fn plan_max_boundary() {
        // missing == max is allowed, max + 1 is not.
        assert_eq!(
            plan_recovery(pos(1, 10), pos(1, 7), 3),
            RecoveryPlan::Fetch { from: 8, to: 10 }
        );
        assert_eq!(
            plan_recovery(pos(1, 10), pos(1, 6), 3),
            RecoveryPlan::Unrecoverable
        );
        assert_eq!(
            plan_recovery(pos(1, 1), pos(1, 0), 0),
            RecoveryPlan::Unrecoverable
        );
        // Huge gaps do not overflow.
        assert_eq!(
            plan_recovery(pos(1, u64::MAX), pos(1, 0), usize::MAX),
            RecoveryPlan::Fetch {
                from: 1,
                to: u64::MAX
            }
        );
    }

    fn p(offset: u64) -> Publication {
        Publication {
            offset,
            data: crate::engine::wire::publication::PubData {
                bytes: bytes::Bytes::from_static(b"{}"),
                is_json: true,
            },
        }
    }

    #[test]
    fn from_run_is_all_or_nothing() {
        let ok = Recovery::from_run(3, 5, vec![p(3), p(4), p(5)]);
        assert!(ok.recovered);
        assert_eq!(ok.publications.len(), 3);
        for bad in [
            vec![p(3), p(5)],
            vec![p(4), p(5)],
            vec![p(3), p(4)],
            vec![p(3), p(4), p(4)],
            vec![p(3), p(4), p(5), p(6)],
            vec![p(5), p(4), p(3)],
            vec![],
        ] {
            assert_eq!(Recovery::from_run(3, 5, bad), Recovery::unrecoverable());
        }
    }

    #[test]
    fn effective_limit() {
        let q = |limit| HistoryQuery {
            limit,
            since: None,
            reverse: false,
            max: 10,
        };
        assert_eq!(q(None).effective_limit(), 10);
        assert_eq!(q(Some(0)).effective_limit(), 0);
        assert_eq!(q(Some(3)).effective_limit(), 3);
        assert_eq!(q(Some(11)).effective_limit(), 10);
    }

    #[test]
    fn limits_need_both() {
        let l = |size, ttl_ms| HistoryLimits { size, ttl_ms }.keeps_history();
        assert!(l(1, 1));
        assert!(!l(0, 1000));
        assert!(!l(10, 0));
    }
}
