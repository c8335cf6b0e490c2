//! Recovery bookkeeping of the `recover` worker mode (`recover-storm`):
//! checks that a resubscription with `recover` replayed exactly the
//! publications missed since the last offset seen, no more and no fewer.

use super::State;
use crate::conn::SubReply;
use crate::ipc::StormStatus;

/// Checks the replayed offsets `pubs` of a recovering `subscribe` reply
/// against `last` (the last offset seen before the drop) and the reply's
/// `offset` (the channel's position). Every offset in `last+1..=offset`
/// must be replayed once, in order. Returns `(gaps, dups, new_last)`:
/// offsets missing, replayed offsets at or below one already seen, and the
/// last offset the connection has after the replay.
pub fn replay_check(last: u64, pubs: &[u64], offset: u64) -> (u64, u64, u64) {
    let (mut cur, mut gaps, mut dups) = (last, 0, 0);
    for &p in pubs {
        if p <= cur {
            dups += 1;
        } else {
            gaps += p - cur - 1;
            cur = p;
        }
    }
    if offset > cur {
        gaps += offset - cur;
        cur = offset;
    }
    (gaps, dups, cur)
}

/// Counts one recovering `subscribe` reply `r` of a connection that had
/// seen `last` in `epoch`, and the `pub` pushes that came in its setup
/// frames. Gaps are only counted for a recovered reply (a reply that did
/// not recover is counted in `not_recovered`). Returns the last offset the
/// connection has now.
pub(super) fn on_recovery(
    st: &State,
    s: &mut StormStatus,
    epoch: &str,
    last: u64,
    r: &SubReply,
    now: u64,
) -> u64 {
    let ok = r.recovered && r.epoch == epoch;
    s.recovered_pubs += r.publications.len() as u64;
    let mut new_last = if ok {
        s.recovered += 1;
        let (gaps, dups, l) = replay_check(last, &r.publications, r.offset);
        s.replay_gaps += gaps;
        s.replay_dups += dups;
        l
    } else {
        s.not_recovered += 1;
        r.offset
    };
    for &off in &r.early_pushes {
        st.on_pub(&mut new_last, off, None, now);
    }
    new_last
}

#[cfg(test)]
mod tests {
    use super::replay_check;

    #[test]
    fn exact_replay() {
        assert_eq!(replay_check(5, &[6, 7, 8], 8), (0, 0, 8));
        assert_eq!(replay_check(5, &[], 5), (0, 0, 5));
    }

    #[test]
    fn missing_and_repeated() {
        // 7 missing in the middle, 9 missing at the end.
        assert_eq!(replay_check(5, &[6, 8], 9), (2, 0, 9));
        // 5 was already seen; 6 twice.
        assert_eq!(replay_check(5, &[5, 6, 6, 7], 7), (0, 2, 7));
        // Nothing replayed although 3 were published.
        assert_eq!(replay_check(5, &[], 8), (3, 0, 8));
    }
}
