//! Tests of [`MemoryHistory`], with virtual time.

use super::*;
use crate::engine::wire::publication::PubData;
use bytes::Bytes;

const E: u64 = 7;

fn publication(offset: u64, len: usize) -> Publication {
    Publication {
        offset,
        data: PubData {
            bytes: Bytes::from(vec![b'x'; len]),
            is_json: false,
        },
    }
}

fn store(memory_limit: usize) -> MemoryHistory {
    MemoryHistory::new(MemoryHistoryConfig {
        memory_limit,
        sweep_budget: DEFAULT_SWEEP_BUDGET,
    })
}

fn limits(size: usize, ttl_ms: u64) -> HistoryLimits {
    HistoryLimits { size, ttl_ms }
}

fn ch(name: &str) -> Arc<str> {
    name.into()
}

fn pos(offset: u64) -> Position {
    Position { epoch: E, offset }
}

fn offsets(v: &[Publication]) -> Vec<u64> {
    v.iter().map(|p| p.offset).collect()
}

/// Appends `offsets` to `c` in epoch `E` at time `now`.
fn fill(
    s: &mut MemoryHistory,
    c: &Arc<str>,
    offsets: impl IntoIterator<Item = u64>,
    l: HistoryLimits,
    now: u64,
) {
    for o in offsets {
        s.append(c, E, publication(o, 10), l, now);
    }
}

fn query(limit: Option<usize>, since: Option<u64>, reverse: bool) -> HistoryQuery {
    HistoryQuery {
        limit,
        since: since.map(pos),
        reverse,
        max: 100,
    }
}

fn read(s: &mut MemoryHistory, c: &str, q: HistoryQuery, now: u64) -> Vec<u64> {
    offsets(&s.read(c, E, &q, now))
}

fn recover(
    s: &mut MemoryHistory,
    c: &str,
    current: u64,
    since: u64,
    max: usize,
    now: u64,
) -> Option<Vec<u64>> {
    let r = s.recover(c, pos(current), pos(since), max, now);
    if r.recovered {
        Some(offsets(&r.publications))
    } else {
        assert!(
            r.publications.is_empty(),
            "a failed recovery carries nothing"
        );
        None
    }
}

#[test]
fn empty_channel() {
    let mut s = store(0);
    assert!(read(&mut s, "none", query(None, None, false), 0).is_empty());
    assert!(read(&mut s, "none", query(None, Some(0), true), 0).is_empty());
    assert_eq!(recover(&mut s, "none", 0, 0, 10, 0), Some(vec![]));
    assert_eq!(recover(&mut s, "none", 3, 0, 10, 0), None);
    assert!(!s.remove("none"));
    assert_eq!(s.expire(u64::MAX), 0);
    assert_eq!(s.stats(), HistoryStats::default());
}

#[test]
fn read_limit_since_reverse() {
    let mut s = store(0);
    let c = ch("chat:1");
    fill(&mut s, &c, 1..=5, limits(10, 60_000), 0);
    let r = |s: &mut MemoryHistory, q| read(s, "chat:1", q, 1);

    // Oldest first; limit 0 means no publications; None means up to max.
    assert_eq!(r(&mut s, query(None, None, false)), [1, 2, 3, 4, 5]);
    assert_eq!(r(&mut s, query(Some(2), None, false)), [1, 2]);
    assert!(r(&mut s, query(Some(0), None, false)).is_empty());
    assert!(r(&mut s, query(Some(0), Some(1), true)).is_empty());
    let capped = HistoryQuery {
        max: 3,
        ..query(None, None, false)
    };
    assert_eq!(r(&mut s, capped), [1, 2, 3]);
    let capped = HistoryQuery {
        max: 3,
        ..query(Some(10), None, true)
    };
    assert_eq!(r(&mut s, capped), [5, 4, 3]);

    // Newest first.
    assert_eq!(r(&mut s, query(Some(2), None, true)), [5, 4]);
    assert_eq!(r(&mut s, query(None, None, true)), [5, 4, 3, 2, 1]);

    // After `since`, oldest first.
    assert_eq!(r(&mut s, query(None, Some(2), false)), [3, 4, 5]);
    assert_eq!(r(&mut s, query(Some(1), Some(2), false)), [3]);
    assert_eq!(r(&mut s, query(None, Some(0), false)), [1, 2, 3, 4, 5]);
    assert!(r(&mut s, query(None, Some(5), false)).is_empty());
    assert!(r(&mut s, query(None, Some(9), false)).is_empty());

    // Before `since`, newest first.
    assert_eq!(r(&mut s, query(None, Some(3), true)), [2, 1]);
    assert_eq!(r(&mut s, query(Some(1), Some(3), true)), [2]);
    assert!(r(&mut s, query(None, Some(1), true)).is_empty());
    assert_eq!(r(&mut s, query(Some(2), Some(6), true)), [5, 4]);

    // Another epoch: in the query or as the channel's current one.
    let other = HistoryQuery {
        since: Some(Position {
            epoch: E + 1,
            offset: 0,
        }),
        ..query(None, None, false)
    };
    assert!(r(&mut s, other).is_empty());
    assert!(
        s.read("chat:1", E + 1, &query(None, None, false), 1)
            .is_empty()
    );
    // Reads change nothing.
    assert_eq!(s.stats().publications, 5);
}

#[test]
fn epoch_change_clears_the_ring() {
    let mut s = store(0);
    let c = ch("feed");
    let l = limits(10, 60_000);
    fill(&mut s, &c, 1..=3, l, 0);
    s.append(&c, E + 1, publication(1, 10), l, 1);
    let st = s.stats();
    assert_eq!((st.publications, st.cleared, st.channels), (1, 3, 1));
    assert!(read(&mut s, "feed", query(None, None, false), 1).is_empty());
    let got = s.read("feed", E + 1, &query(None, None, false), 1);
    assert_eq!(offsets(&got), [1]);
    // The old epoch's position cannot be recovered, whatever the offsets.
    assert_eq!(recover(&mut s, "feed", 3, 1, 10, 1), None);
    let r = s.recover(
        "feed",
        Position {
            epoch: E + 1,
            offset: 1,
        },
        Position {
            epoch: E,
            offset: 0,
        },
        10,
        1,
    );
    assert_eq!(r, Recovery::unrecoverable());
    let r = s.recover(
        "feed",
        Position {
            epoch: E + 1,
            offset: 1,
        },
        Position {
            epoch: E + 1,
            offset: 0,
        },
        10,
        1,
    );
    assert!(r.recovered);
    assert_eq!(offsets(&r.publications), [1]);
}

#[test]
fn stale_offsets_are_rejected() {
    let mut s = store(0);
    let c = ch("c");
    fill(&mut s, &c, [1, 2, 3], limits(10, 60_000), 0);
    fill(&mut s, &c, [3, 2], limits(10, 60_000), 0);
    let st = s.stats();
    assert_eq!((st.publications, st.rejected), (3, 2));
    assert_eq!(read(&mut s, "c", query(None, None, false), 0), [1, 2, 3]);
}

#[test]
fn recovery_at_the_edge_of_a_full_ring() {
    let mut s = store(0);
    let c = ch("c");
    let l = limits(3, 60_000);
    fill(&mut s, &c, 1..=5, l, 0);
    // The oldest held offset is since + 1: recoverable.
    assert_eq!(recover(&mut s, "c", 5, 2, 10, 0), Some(vec![3, 4, 5]));
    assert_eq!(recover(&mut s, "c", 5, 4, 10, 0), Some(vec![5]));
    assert_eq!(recover(&mut s, "c", 5, 5, 10, 0), Some(vec![]));
    // One more publication pushes offset 3 out.
    fill(&mut s, &c, [6], l, 0);
    assert_eq!(recover(&mut s, "c", 6, 2, 10, 0), None);
    assert_eq!(recover(&mut s, "c", 6, 3, 10, 0), Some(vec![4, 5, 6]));
    assert_eq!(s.stats().evicted_by_size, 3);
    // A position ahead of the channel is not recoverable.
    assert_eq!(recover(&mut s, "c", 6, 7, 10, 0), None);
}

#[test]
fn recovery_max_boundary() {
    let mut s = store(0);
    let c = ch("c");
    fill(&mut s, &c, 1..=5, limits(10, 60_000), 0);
    assert_eq!(recover(&mut s, "c", 5, 2, 3, 0), Some(vec![3, 4, 5]));
    assert_eq!(recover(&mut s, "c", 5, 2, 2, 0), None);
    assert_eq!(recover(&mut s, "c", 5, 0, 5, 0), Some(vec![1, 2, 3, 4, 5]));
    assert_eq!(recover(&mut s, "c", 5, 0, 4, 0), None);
    assert_eq!(recover(&mut s, "c", 5, 4, 0, 0), None);
}

#[test]
fn recovery_is_never_partial() {
    let mut s = store(0);
    let c = ch("c");
    // A gap inside the ring (the home never makes one, the store must
    // still not paper over it).
    fill(&mut s, &c, [1, 2, 4, 5], limits(10, 60_000), 0);
    assert_eq!(recover(&mut s, "c", 5, 1, 10, 0), None);
    assert_eq!(recover(&mut s, "c", 5, 3, 10, 0), Some(vec![4, 5]));
    // The channel is ahead of what was stored.
    assert_eq!(recover(&mut s, "c", 7, 3, 10, 0), None);
    // A stale `current` behind the ring's newest: exactly up to it.
    assert_eq!(recover(&mut s, "c", 4, 3, 10, 0), Some(vec![4]));
}

#[test]
fn ttl_boundary_on_reads_and_recovery() {
    let mut s = store(0);
    let c = ch("c");
    let l = limits(10, 1000);
    s.append(&c, E, publication(1, 10), l, 0);
    s.append(&c, E, publication(2, 10), l, 500);
    assert_eq!(read(&mut s, "c", query(None, None, false), 999), [1, 2]);
    assert_eq!(recover(&mut s, "c", 2, 0, 10, 999), Some(vec![1, 2]));
    // At exactly ttl the first is gone, before any sweep.
    assert_eq!(recover(&mut s, "c", 2, 0, 10, 1000), None);
    assert_eq!(read(&mut s, "c", query(None, None, false), 1000), [2]);
    assert_eq!(recover(&mut s, "c", 2, 1, 10, 1499), Some(vec![2]));
    assert_eq!(
        read(&mut s, "c", query(None, None, true), 1500),
        Vec::<u64>::new()
    );
    let st = s.stats();
    assert_eq!(
        (st.evicted_by_ttl, st.publications, st.channels, st.bytes),
        (2, 0, 0, 0)
    );
}

#[test]
fn sweep_frees_expired_channels() {
    let mut s = store(0);
    let (a, b) = (ch("a"), ch("b"));
    fill(&mut s, &a, 1..=3, limits(10, 1000), 0);
    fill(&mut s, &b, 1..=2, limits(10, 5000), 0);
    fill(&mut s, &a, [4], limits(10, 1000), 400);
    assert_eq!(s.expire(999), 0);
    assert_eq!(s.expire(1000), 3);
    assert_eq!(s.stats().channels, 2);
    assert_eq!(s.expire(1399), 0);
    assert_eq!(s.expire(1400), 1);
    assert_eq!(s.stats().channels, 1);
    assert_eq!(s.expire(4999), 0);
    assert_eq!(s.expire(5000), 2);
    let st = s.stats();
    assert_eq!(
        (st.channels, st.publications, st.bytes, st.evicted_by_ttl),
        (0, 0, 0, 6)
    );
}

#[test]
fn sweep_work_is_bounded() {
    let mut s = MemoryHistory::new(MemoryHistoryConfig {
        memory_limit: 0,
        sweep_budget: 3,
    });
    let c = ch("c");
    fill(&mut s, &c, 1..=10, limits(100, 10), 0);
    let mut calls = vec![];
    loop {
        let n = s.expire(10);
        if n == 0 {
            break;
        }
        calls.push(n);
    }
    // Each call looks at one deadline and drops at most two.
    assert_eq!(calls, [2, 2, 2, 2, 2]);
    assert_eq!(s.stats().channels, 0);
}

#[test]
fn shorter_ttl_applies_to_held_entries() {
    let mut s = store(0);
    let c = ch("c");
    s.append(&c, E, publication(1, 10), limits(10, 1000), 0);
    s.append(&c, E, publication(2, 10), limits(10, 200), 100);
    assert_eq!(read(&mut s, "c", query(None, None, false), 199), [1, 2]);
    // The sweep heeds the earlier deadline too.
    assert_eq!(s.expire(200), 1);
    assert_eq!(read(&mut s, "c", query(None, None, false), 299), [2]);
    assert_eq!(s.expire(300), 1);
}

#[test]
fn memory_limit_evicts_oldest_across_channels() {
    let one = 100 + ENTRY_OVERHEAD;
    let mut s = store(3 * one);
    let (a, b, c) = (ch("a"), ch("b"), ch("c"));
    let l = limits(10, 60_000);
    s.append(&a, E, publication(1, 100), l, 0);
    s.append(&b, E, publication(1, 100), l, 0);
    s.append(&a, E, publication(2, 100), l, 0);
    assert_eq!(s.stats().evicted_by_memory, 0);
    s.append(&b, E, publication(2, 100), l, 0);
    assert_eq!(read(&mut s, "a", query(None, None, false), 0), [2]);
    s.append(&c, E, publication(1, 100), l, 0);
    assert_eq!(read(&mut s, "b", query(None, None, false), 0), [2]);
    s.append(&c, E, publication(2, 100), l, 0);
    // a's last one was the oldest: the channel is freed.
    assert!(read(&mut s, "a", query(None, None, false), 0).is_empty());
    let st = s.stats();
    assert_eq!(
        (st.evicted_by_memory, st.channels, st.publications, st.bytes),
        (3, 2, 3, 3 * one)
    );
    assert_eq!(recover(&mut s, "b", 2, 0, 10, 0), None);
    assert_eq!(recover(&mut s, "c", 2, 0, 10, 0), Some(vec![1, 2]));
}

#[test]
fn memory_eviction_skips_records_already_gone() {
    let one = 100 + ENTRY_OVERHEAD;
    let mut s = store(3 * one);
    let (a, b) = (ch("a"), ch("b"));
    // a keeps one: its older records in the FIFO are stale.
    s.append(&a, E, publication(1, 100), limits(1, 60_000), 0);
    s.append(&a, E, publication(2, 100), limits(1, 60_000), 0);
    s.append(&b, E, publication(1, 100), limits(10, 60_000), 0);
    s.append(&b, E, publication(2, 100), limits(10, 60_000), 0);
    assert_eq!(s.stats().evicted_by_memory, 0);
    s.append(&b, E, publication(3, 100), limits(10, 60_000), 0);
    // The oldest live one was a's offset 2, not b's offset 1.
    assert!(read(&mut s, "a", query(None, None, false), 0).is_empty());
    assert_eq!(read(&mut s, "b", query(None, None, false), 0), [1, 2, 3]);
    // A removed and refilled channel: its old records must not evict the
    // new entries out of order.
    assert!(s.remove("b"));
    s.append(&b, E, publication(1, 100), limits(10, 60_000), 0);
    s.append(&a, E, publication(3, 100), limits(10, 60_000), 0);
    s.append(&a, E, publication(4, 100), limits(10, 60_000), 0);
    s.append(&a, E, publication(5, 100), limits(10, 60_000), 0);
    assert!(read(&mut s, "b", query(None, None, false), 0).is_empty());
    assert_eq!(read(&mut s, "a", query(None, None, false), 0), [3, 4, 5]);
    let st = s.stats();
    assert_eq!(
        (st.evicted_by_size, st.evicted_by_memory, st.cleared),
        (1, 2, 3)
    );
}

#[test]
fn an_entry_over_the_memory_limit_is_not_kept() {
    let mut s = store(ENTRY_OVERHEAD + 10);
    let c = ch("c");
    s.append(&c, E, publication(1, 10), limits(10, 60_000), 0);
    s.append(&c, E, publication(2, 11), limits(10, 60_000), 0);
    let st = s.stats();
    assert_eq!(
        (st.channels, st.publications, st.bytes, st.evicted_by_memory),
        (0, 0, 0, 2)
    );
}

#[test]
fn limits_that_keep_nothing_drop_the_channel() {
    let mut s = store(0);
    let c = ch("c");
    fill(&mut s, &c, [1, 2], limits(10, 60_000), 0);
    fill(&mut s, &c, [3], limits(0, 60_000), 0);
    assert_eq!(s.stats().cleared, 2);
    assert_eq!(s.stats().channels, 0);
    fill(&mut s, &c, [4], limits(10, 0), 0);
    assert!(read(&mut s, "c", query(None, None, false), 0).is_empty());
    // History after a stretch of unkept publications cannot recover
    // across it.
    fill(&mut s, &c, [5], limits(10, 60_000), 0);
    assert_eq!(recover(&mut s, "c", 5, 2, 10, 0), None);
    assert_eq!(recover(&mut s, "c", 5, 4, 10, 0), Some(vec![5]));
}

#[test]
fn remove_and_byte_accounting() {
    let mut s = store(0);
    let c = ch("c");
    s.append(&c, E, publication(1, 10), limits(10, 60_000), 0);
    s.append(&c, E, publication(2, 30), limits(10, 60_000), 0);
    assert_eq!(s.stats().bytes, 40 + 2 * ENTRY_OVERHEAD);
    assert!(s.remove("c"));
    assert!(!s.remove("c"));
    let st = s.stats();
    assert_eq!((st.bytes, st.publications, st.cleared), (0, 0, 2));
    // The overhead covers what each entry really costs besides its payload.
    let slot = std::mem::size_of::<Entry>() + std::mem::size_of::<(Arc<str>, u64)>();
    assert!(slot <= ENTRY_OVERHEAD, "{slot}");
}

#[test]
fn bookkeeping_stays_bounded() {
    let mut s = store(0);
    let (old, hot) = (ch("old"), ch("hot"));
    // One long-lived entry at the FIFO's front, then a flood through a
    // ring of one: stale records must not pile up behind it.
    s.append(&old, E, publication(1, 1), limits(10, u64::MAX), 0);
    fill(&mut s, &hot, 1..=10_000, limits(1, 60_000), 0);
    let (fifo, _) = s.records();
    assert!(fifo <= 2 * 2 + 64 + 1, "{fifo}");
    // Channels made and removed leave sweep deadlines behind.
    for i in 0..1000 {
        let c = ch(&format!("tmp{i}"));
        s.append(&c, E, publication(1, 1), limits(1, 60_000), 0);
        s.remove(&c);
    }
    fill(&mut s, &hot, [10_001], limits(1, 60_000), 0);
    let (_, sweeps) = s.records();
    assert!(sweeps <= 2 * 2 + 64 + 1, "{sweeps}");
    assert_eq!(read(&mut s, "old", query(None, None, false), 1), [1]);
}

#[test]
fn usable_as_a_trait_object() {
    let mut s = store(0);
    let h: &mut dyn HistoryStore = &mut s;
    h.append(&ch("c"), E, publication(1, 1), limits(1, 1), 0);
    assert_eq!(h.stats().publications, 1);
}

/// A channel in [`matches_a_model`]: epoch, last offset and the
/// `(offset, appended_at)` a ring of its size would hold.
type ModelChannel = (u64, u64, Vec<(u64, u64)>);

/// Random operations against a plain model: every read returns exactly
/// what the model selects, every recovery is all or nothing.
#[test]
fn matches_a_model() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let names: Vec<Arc<str>> = (0..4).map(|i| ch(&format!("m{i}"))).collect();
    let l = limits(8, 50);
    let mut s = store(0);
    let mut model: Vec<ModelChannel> = vec![(E, 0, vec![]); 4];
    let mut now = 0;
    for _ in 0..20_000 {
        now += next(5);
        let i = next(4) as usize;
        let (epoch, last, held) = &mut model[i];
        match next(10) {
            0 => {
                *epoch += 1;
                *last = 0;
                held.clear();
                s.remove(&names[i]);
            }
            1 => {
                s.expire(now);
            }
            2..=5 => {
                *last += 1;
                s.append(&names[i], *epoch, publication(*last, 1), l, now);
                held.push((*last, now));
                if held.len() > l.size {
                    held.remove(0);
                }
            }
            _ => {
                held.retain(|&(_, at)| at + l.ttl_ms > now);
                let since = next(*last + 2);
                let current = Position {
                    epoch: *epoch,
                    offset: *last,
                };
                let r = s.recover(
                    &names[i],
                    current,
                    Position {
                        epoch: *epoch,
                        offset: since,
                    },
                    5,
                    now,
                );
                let want: Vec<u64> = (since + 1..=*last).collect();
                let ok = since <= *last
                    && want.len() <= 5
                    && want.iter().all(|o| held.iter().any(|&(h, _)| h == *o));
                assert_eq!(r.recovered, ok, "since {since} last {last} held {held:?}");
                if ok {
                    assert_eq!(offsets(&r.publications), want);
                }
                let q = HistoryQuery {
                    limit: Some(next(4) as usize),
                    since: Some(Position {
                        epoch: *epoch,
                        offset: since,
                    }),
                    reverse: next(2) == 0,
                    max: 100,
                };
                let got = offsets(&s.read(&names[i], *epoch, &q, now));
                let mut sel: Vec<u64> = held
                    .iter()
                    .map(|&(o, _)| o)
                    .filter(|&o| if q.reverse { o < since } else { o > since })
                    .collect();
                if q.reverse {
                    sel.reverse();
                }
                sel.truncate(q.effective_limit());
                assert_eq!(got, sel);
            }
        }
    }
}
