//! The shard's per-event metric methods allocate nothing: every series is
//! resolved when the shard's handles are made. A counting allocator (this
//! test binary only) counts the allocations of the calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use wsedge::bridge::ShardMsgKind;
use wsedge::engine::codes::{CloseReason, ErrorCode};
use wsedge::engine::ws::handshake::Reject;
use wsedge::metrics::{HandshakeResult, Metrics, Refusal, Stats};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the thread-local is a const
// `Cell` without a destructor, so touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn per_event_methods_do_not_allocate() {
    let m = Arc::new(Metrics::new());
    let s = m.shard(0);
    let mut stats = Stats {
        accepted: 1,
        deliveries: 3,
        encodes: [1, 1, 1, 1],
        ..Default::default()
    };
    let before = allocs();
    for _ in 0..3 {
        for r in Refusal::ALL {
            s.refused(r);
        }
        s.handshake(HandshakeResult::Ok);
        s.handshake(HandshakeResult::Timeout);
        s.handshake(HandshakeResult::Aborted);
        for r in Reject::ALL {
            s.handshake(r);
        }
        for c in ErrorCode::ALL {
            s.error_reply(c);
        }
        for r in CloseReason::ALL {
            s.close(r.close_code());
        }
        for code in [1005, 1006, 1010, 3000, 4321, 4999] {
            s.close(code);
        }
        for k in ShardMsgKind::ALL {
            s.queue_full(k);
        }
        s.slow_drop();
        stats.gaps += 1;
        stats.recoveries[0] += 1;
        stats.history_evictions[2] += 1;
        s.latency(0.002);
        s.flush(&mut stats);
    }
    let during = allocs() - before;
    assert_eq!(
        during, 0,
        "per-event metric methods allocated {during} times"
    );
    let at_encode = allocs();
    let text = m.encode();
    assert!(allocs() > at_encode, "the counting allocator counts");
    assert!(text.contains("wsedge_closes_total{shard=\"0\",kind=\"other_3000_4999\"} 9"));
}
