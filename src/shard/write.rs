//! The write pass: every connection with pending output gets one
//! vectored write per turn, round-robin, within a budget. With
//! `io = "uring"` the same pass queues one send per connection on the
//! shard's ring instead ([`write_pass_uring`]), submitted once per turn.

use std::collections::VecDeque;
use std::io::IoSlice;

use slab::Slab;

use super::conn::Conn;
use super::core::slot;
use super::sys;
use super::uring::{SendState, Uring};
use crate::engine::subs::ConnRef;
use crate::metrics::Stats;

/// Slices per `writev`.
pub(crate) const IOV: usize = 64;
/// Connections written per turn before the shard looks for input again.
/// At the loopback floor (~4 µs a write) this is about a millisecond, so
/// a fan-out to 10,000 sockets never stops the shard reading for long, and
/// publications that arrive during one share the writes still to come.
pub(crate) const WRITE_BUDGET: usize = 256;

/// Connections with output to write, in FIFO order, with running counts
/// so a publication can tell when every connection queued before it has
/// been written.
#[derive(Default)]
pub(crate) struct WriteQueue {
    q: VecDeque<ConnRef>,
    /// Connections ever pushed.
    pub(crate) pushed: u64,
    /// Connections ever popped.
    pub(crate) popped: u64,
}

impl WriteQueue {
    /// Lists `c` for writing.
    pub(crate) fn push(&mut self, c: ConnRef) {
        self.q.push_back(c);
        self.pushed += 1;
    }

    /// The next connection to write.
    pub(crate) fn pop(&mut self) -> Option<ConnRef> {
        let c = self.q.pop_front()?;
        self.popped += 1;
        Some(c)
    }

    /// Whether no connection waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// The write pass, round-robin over the connections with pending output:
/// one `writev` each (everything queued for it, up to `IOV` frames), at
/// most `WRITE_BUDGET` connections per turn. A connection with more left
/// goes to the back of the queue; one whose socket is full waits for
/// EPOLLOUT. Returns the connections whose socket failed (to free).
///
/// The budget bounds how long a big fan-out keeps the shard from reading.
/// Publications that arrive meanwhile join the outboxes of the connections
/// not yet written, so under load each write carries more frames and the
/// cost per delivery falls instead of the queue growing.
pub(crate) fn write_pass(
    conns: &mut Slab<Conn>,
    dirty: &mut WriteQueue,
    stats: &mut Stats,
) -> Vec<ConnRef> {
    let mut dead = Vec::new();
    let mut budget = WRITE_BUDGET;
    while budget > 0 {
        let Some(c) = dirty.pop() else {
            break;
        };
        let Some(conn) = slot(conns, c) else {
            continue;
        };
        budget -= 1;
        conn.dirty = false;
        let fd = conn.raw_fd();
        if !conn.session.outbox.is_empty() {
            let mut iov = [IoSlice::new(&[]); IOV];
            let k = conn.session.outbox.fill(&mut iov);
            let want: usize = iov[..k].iter().map(|s| s.len()).sum();
            match sys::writev(fd, &iov[..k]) {
                Ok(n) => {
                    stats.writes += 1;
                    stats.bytes_out += n as u64;
                    stats.frames_out += conn.session.outbox.consume(n) as u64;
                    // n < want: the socket is full and EPOLLOUT calls us
                    // back.
                    if n == want && !conn.session.outbox.is_empty() {
                        conn.dirty = true;
                        dirty.push(c);
                    }
                }
                Err(e) if sys::would_block(&e) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    conn.dirty = true;
                    dirty.push(c);
                }
                Err(_) => {
                    dead.push(c);
                    continue;
                }
            }
        }
        if conn.session.wants_shutdown() && !conn.write_shut {
            sys::shutdown_write(fd);
            conn.write_shut = true;
        }
    }
    dead
}

/// The write pass on the io_uring path: the same round-robin and budget as
/// [`write_pass`], but each connection's write is a send queued on the
/// shard's ring (submitted with the turn's other entries in one
/// `io_uring_enter`, see `Shard::flush`). The outbox is copied into a send
/// buffer the ring owns and consumed at once; a connection with a send in
/// flight is skipped (its completion lists it again), and the rest of a
/// short send goes before anything newer. The FIN waits until everything
/// queued has been written. Failures come back as completions, so no
/// connection is returned dead here.
pub(crate) fn write_pass_uring(
    conns: &mut Slab<Conn>,
    dirty: &mut WriteQueue,
    stats: &mut Stats,
    ring: &mut Uring,
) -> Vec<ConnRef> {
    let mut budget = WRITE_BUDGET;
    while budget > 0 {
        let Some(c) = dirty.pop() else {
            break;
        };
        let Some(conn) = slot(conns, c) else {
            continue;
        };
        budget -= 1;
        conn.dirty = false;
        match ring.send_state(c) {
            SendState::InFlight => continue,
            SendState::Remainder => {
                ring.send_remainder(c);
                continue;
            }
            SendState::Idle => {}
        }
        if !conn.session.outbox.is_empty() {
            let mut iov = [IoSlice::new(&[]); IOV];
            let k = conn.session.outbox.fill(&mut iov);
            let n = ring.send_copy(c, &iov[..k]);
            stats.frames_out += conn.session.outbox.consume(n) as u64;
            continue;
        }
        if conn.session.wants_shutdown() && !conn.write_shut {
            sys::shutdown_write(conn.raw_fd());
            conn.write_shut = true;
        }
    }
    Vec::new()
}
