//! The io_uring data path (`io = "uring"`): a shard's own ring, beside
//! monoio's, doing the socket I/O of its plain (non-TLS) connections.
//!
//! - **Accept**: one multishot accept on the shard's listener
//!   (`IORING_OP_ACCEPT` + `IORING_ACCEPT_MULTISHOT`): one completion per
//!   connection, no `accept4` per connection.
//! - **Receive**: one multishot recv per connection (`IORING_OP_RECV` +
//!   `IORING_RECV_MULTISHOT`) selecting from a **provided buffer ring**
//!   shared by the shard's connections ([`RECV_BUFFERS`] ×
//!   [`RECV_BUFFER_SIZE`]). An idle connection holds no buffer: the kernel
//!   picks one only when bytes arrive, and the shard gives it back as soon
//!   as the decoder has consumed them (synchronously, in the same
//!   completion). When the ring is empty the kernel ends that recv with
//!   `ENOBUFS` (the bytes stay in the socket); the shard re-arms it at the
//!   end of the turn, after the turn's buffers went back.
//! - **Send**: the write pass queues one `IORING_OP_SEND` per connection
//!   with pending output and the ring is entered **once per turn** for all
//!   of them (and the turn's re-arms and cancels). The outbox's frames are
//!   copied into a send buffer the ring layer owns until the completion
//!   arrives, and the outbox consumes them at once: the outbox may then
//!   change freely (urgent frames, a slow consumer's dropped data, the
//!   connection's end) without touching memory the kernel reads. At most
//!   one send per connection is in flight, which keeps the byte order; a
//!   short send leaves the rest in the buffer, sent before anything newer.
//! - **Close**: a freed connection's socket stays open, owned here, until
//!   the last completion of its operations has arrived: its recv (and any
//!   send in flight) is cancelled by descriptor (`IORING_OP_ASYNC_CANCEL`
//!   with `IORING_ASYNC_CANCEL_FD | _ALL`), so no operation can ever reach
//!   a descriptor number reused by a later connection, and its slot here is
//!   freed only then. The listener, closed at the drain, is held the
//!   same way until its multishot accept's cancel has completed.
//! - **Waiting**: completions are posted to an eventfd registered with the
//!   ring, which sits (edge-triggered) in the shard's epoll set, so the
//!   monoio runtime's one wait (readiness of that set, or the next tick)
//!   covers the ring, the inbox doorbell and nothing else. A busy shard
//!   never reads the eventfd: it looks at the completion queue, shared
//!   memory, every turn.
//!
//! Completions are tagged with what they complete ([`Kind`]) and the
//! connection's slot *here* (not the shard's connection slot, which is
//! reused as soon as the connection is freed).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use crate::engine::subs::ConnRef;

mod buf_ring;
use buf_ring::BufRing;

/// Submission queue entries. A turn queues at most a write budget of sends
/// (256), a re-arm per connection whose recv ended, the cancels of the
/// connections freed and the recvs of the connections accepted; a full
/// queue is submitted on the spot and filled again.
pub(crate) const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries. Beyond them the kernel keeps completions on
/// its overflow list (`IORING_FEAT_NODROP`), ends multishot operations
/// that could not post (their last completion says so and they are
/// re-armed), and the next enter with `GETEVENTS` moves them back.
pub(crate) const CQ_ENTRIES: u32 = 8192;
/// Provided receive buffers per shard (one buffer group). Also the most a
/// turn can read: a connection that finds the ring empty waits (re-armed)
/// for the next turn.
pub(crate) const RECV_BUFFERS: u16 = 512;
/// Bytes per provided receive buffer.
pub(crate) const RECV_BUFFER_SIZE: usize = 2048;
/// Bytes copied into one send at most (the outbox keeps the rest).
pub(crate) const SEND_MAX: usize = 256 * 1024;
/// Completions handled per turn before the shard looks at its inbox and
/// writes again.
pub(crate) const CQE_BATCH: usize = 4096;
/// Send buffers kept for reuse.
const POOL_KEEP: usize = 512;
/// Send buffers that grew beyond this are freed instead of kept.
const POOL_KEEP_CAPACITY: usize = 16 * 1024;
/// The buffer group of the receive ring.
const BGID: u16 = 0;
/// epoll token of the ring's eventfd.
pub(crate) const TOKEN_RING: u64 = u64::MAX - 2;
/// epoll bits of the ring's eventfd: edge-triggered, so it is never read.
pub(crate) const RING_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLET) as u32;

/// What a completion completes (the low bits of its user data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Cancel = 4,
}

const KIND_BITS: u32 = 3;
const KIND_MASK: u64 = (1 << KIND_BITS) - 1;

fn user_data(kind: Kind, slot: usize) -> u64 {
    ((slot as u64) << KIND_BITS) | kind as u64
}

fn kind_of(ud: u64) -> Option<(Kind, usize)> {
    let slot = (ud >> KIND_BITS) as usize;
    Some(match ud & KIND_MASK {
        1 => (Kind::Accept, slot),
        2 => (Kind::Recv, slot),
        3 => (Kind::Send, slot),
        4 => (Kind::Cancel, slot),
        _ => return None,
    })
}

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cqe {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// What a completion means to the shard.
#[derive(Debug)]
pub(crate) enum Completion {
    /// The multishot accept gave a connection, or an error (`errno`).
    Accepted(Result<OwnedFd, i32>),
    /// `len` bytes of connection `conn` in provided buffer `bid`: hand
    /// them to the decoder, then give the buffer back with
    /// [`Uring::give_back`].
    Data { conn: ConnRef, bid: u16, len: usize },
    /// The peer closed (`None`) or the connection's receive failed.
    Closed { conn: ConnRef, error: Option<i32> },
    /// A send of connection `conn` completed: bytes written (what is left
    /// of the buffer waits for the next write pass), or an error.
    Sent {
        conn: ConnRef,
        result: Result<usize, i32>,
    },
}

/// Where a connection's sending stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    /// Nothing held: the outbox comes next.
    Idle,
    /// A send is in the kernel; its completion marks the connection dirty.
    InFlight,
    /// A short send left bytes that go before anything newer.
    Remainder,
}

/// A connection's operations in the ring.
#[derive(Debug)]
struct IoSlot {
    conn: ConnRef,
    fd: RawFd,
    /// Set when the connection was freed: the socket, closed when the
    /// last completion of its operations has arrived.
    orphan: Option<OwnedFd>,
    /// A multishot recv is queued or in the kernel.
    recv: bool,
    /// Listed in `Uring::rearm`.
    rearm: bool,
    /// The send buffer (in `Uring::sends`), in flight or holding a
    /// remainder.
    send: Option<u32>,
}

/// Bytes of one send, owned here until the kernel is done with them.
#[derive(Debug)]
struct SendBuf {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    off: usize,
    in_flight: bool,
}

/// Counts for the log and the tests.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UringStats {
    /// `io_uring_enter` calls.
    pub(crate) enters: u64,
    /// Submission entries queued.
    pub(crate) sqes: u64,
    /// Completions handled.
    pub(crate) cqes: u64,
    /// Recvs that found the buffer ring empty.
    pub(crate) enobufs: u64,
    /// Multishot recvs re-armed (after `ENOBUFS` or an overflowing
    /// completion queue).
    pub(crate) rearms: u64,
    /// Turns that found completions on the kernel's overflow list.
    pub(crate) cq_overflows: u64,
    /// Short sends (the rest written later).
    pub(crate) short_sends: u64,
    /// Sends that failed (the connection is freed).
    pub(crate) send_errors: u64,
    /// Receives that failed other than by the peer's close (the
    /// connection is freed).
    pub(crate) recv_errors: u64,
    /// Accept completions with an error (out of descriptors or memory
    /// included).
    pub(crate) accept_errors: u64,
    /// Completions the shard could not place (an unknown tag, a buffer id
    /// out of range): never expected, counted rather than trusted.
    pub(crate) unexpected: u64,
}

impl UringStats {
    /// The event counts, in the order of [`crate::metrics::URING_EVENTS`].
    fn events(&self) -> [u64; crate::metrics::URING_EVENTS.len()] {
        [
            self.enobufs,
            self.rearms,
            self.cq_overflows,
            self.short_sends,
            self.send_errors,
            self.recv_errors,
            self.accept_errors,
            self.unexpected,
        ]
    }
}

/// A shard's ring and what it holds for the kernel.
pub(crate) struct Uring {
    ring: IoUring,
    /// Freed by `Drop for Uring` once the kernel is done with it.
    bufs: std::mem::ManuallyDrop<BufRing>,
    slots: Slab<IoSlot>,
    /// Shard connection slot index → slot here.
    by_conn: Vec<u32>,
    sends: Slab<SendBuf>,
    pool: Vec<Vec<u8>>,
    /// Slots whose multishot recv ended and must be armed again.
    rearm: Vec<u32>,
    /// Entries that found the submission queue full even after a submit
    /// (the kernel refused the enter: `EBUSY`). Bounded by what can be in
    /// flight: per slot one recv, one send and one cancel (a slot is
    /// detached once), plus the accept and its cancel.
    backlog: VecDeque<squeue::Entry>,
    eventfd: OwnedFd,
    accept_armed: bool,
    /// The listener after the drain closed it, kept open until its
    /// multishot accept's last completion: the operation was queued by
    /// descriptor number, which must not name another file meanwhile.
    closed_listener: Option<OwnedFd>,
    /// Operations whose last completion has not arrived yet.
    in_flight: usize,
    pub(crate) stats: UringStats,
    /// The counts already moved to the metrics.
    flushed: UringStats,
}

const NONE: u32 = u32::MAX;

/// Why `io = "uring"` cannot run here, as an error that says what to do.
/// The node does not fall back to `epoll` on its own: it exits with this
/// message (at start, before any shard runs; `check-config` reports it too).
pub(crate) fn unavailable(e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => " (this kernel has no io_uring)",
        Some(libc::EPERM | libc::EACCES) => {
            " (io_uring is forbidden here: sysctl kernel.io_uring_disabled, a seccomp filter \
             such as a container runtime's default, or a systemd SystemCallFilter)"
        }
        Some(libc::ENOMEM) => " (RLIMIT_MEMLOCK or memory: the ring could not be allocated)",
        Some(libc::EINVAL) => " (the kernel lacks a feature the ring needs)",
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!(
            "io = \"uring\" needs io_uring with multishot accept and recv and provided \
             buffer rings (Linux 6.0 or later): {e}{hint}; set io = \"epoll\" (the default) \
             to run without it"
        ),
    )
}

/// Whether this kernel can run the io_uring data path: builds a ring with
/// everything a shard's needs, then drops it.
pub(crate) fn probe() -> io::Result<()> {
    Uring::new().map(drop).map_err(unavailable)
}

impl Uring {
    /// A ring with its eventfd and receive buffer ring. Fails where the
    /// kernel lacks them (multishot recv needs Linux 6.0).
    pub(crate) fn new() -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            // Only the shard's thread submits.
            .setup_single_issuer()
            // Completions that need the shard's thread (a recv when bytes
            // arrive) wait for its next syscall (a turn makes several)
            // instead of interrupting it with an IPI each; a sleeping
            // shard is still woken.
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(SQ_ENTRIES)?;
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::other(
                "io_uring without IORING_FEAT_NODROP (Linux 5.5+)",
            ));
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::AcceptMulti::CODE,
            opcode::RecvMulti::CODE,
            opcode::Send::CODE,
            opcode::AsyncCancel2::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::other(format!(
                    "io_uring lacks opcode {code} on this kernel"
                )));
            }
        }
        // SAFETY: eventfd has no memory-safety preconditions; the result is
        // checked before it is wrapped.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is fresh and owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let bufs = BufRing::new()?;
        // SAFETY: the entries stay valid until the registration is removed,
        // which `Drop for Uring` does before freeing them (and leaks them
        // if operations are still in the kernel).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries_addr(),
                RECV_BUFFERS,
                BGID,
                0,
            )?;
        }
        Ok(Self {
            ring,
            bufs: std::mem::ManuallyDrop::new(bufs),
            slots: Slab::new(),
            by_conn: Vec::new(),
            sends: Slab::new(),
            pool: Vec::new(),
            rearm: Vec::new(),
            backlog: VecDeque::new(),
            eventfd,
            accept_armed: false,
            closed_listener: None,
            in_flight: 0,
            stats: UringStats::default(),
            flushed: UringStats::default(),
        })
    }

    /// Moves the counts since the last call to the shard's metrics.
    pub(crate) fn flush_metrics(&mut self, m: &crate::metrics::UringShardMetrics) {
        let (now, before) = (self.stats, self.flushed);
        m.enters.inc_by(now.enters - before.enters);
        for ((c, n), b) in m.events.iter().zip(now.events()).zip(before.events()) {
            if n > b {
                c.inc_by(n - b);
            }
        }
        self.flushed = now;
    }

    /// The eventfd the ring signals on completions (for the epoll set).
    pub(crate) fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    // ---- submission ---------------------------------------------------------

    /// Queues `e`; a full submission queue is submitted first.
    fn push(&mut self, e: squeue::Entry) {
        self.stats.sqes += 1;
        if self.backlog.is_empty() {
            // SAFETY: every entry queued here points only at memory this
            // struct owns until the entry's completion arrives (send
            // buffers, the buffer ring) or at nothing.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            let _ = self.enter();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(e);
    }

    /// Submits what is queued (one `io_uring_enter`), if anything is.
    pub(crate) fn submit(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: see `push`.
            if unsafe { self.ring.submission().push(e) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
        if !self.ring.submission().is_empty() {
            let _ = self.enter();
        }
    }

    /// One `io_uring_enter`. An error (EBUSY: the kernel's overflow list
    /// is full of completions not taken yet; EINTR) leaves what is queued
    /// for the next turn.
    fn enter(&mut self) -> io::Result<usize> {
        self.stats.enters += 1;
        self.ring.submit()
    }

    // ---- accept ---------------------------------------------------------------

    /// Arms the multishot accept on `listener` unless it is armed.
    pub(crate) fn arm_accept(&mut self, listener: RawFd) {
        if self.accept_armed {
            return;
        }
        self.accept_armed = true;
        self.in_flight += 1;
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Kind::Accept, 0));
        self.push(e);
    }

    /// Cancels the multishot accept: the listener is closing. `listener`
    /// (the socket, handed over by the acceptor) stays open until the
    /// accept's last completion, then closes.
    pub(crate) fn cancel_accept(&mut self, listener: Option<OwnedFd>) {
        if self.accept_armed {
            self.closed_listener = listener;
            self.cancel(types::CancelBuilder::user_data(user_data(Kind::Accept, 0)));
        }
    }

    fn cancel(&mut self, what: types::CancelBuilder) {
        self.in_flight += 1;
        let e = opcode::AsyncCancel2::new(what)
            .build()
            .user_data(user_data(Kind::Cancel, 0));
        self.push(e);
    }

    // ---- connections ----------------------------------------------------------

    /// Starts receiving on connection `c` (socket `fd`, which the
    /// connection owns until [`Uring::detach`]).
    pub(crate) fn attach(&mut self, c: ConnRef, fd: RawFd) {
        let s = self.slots.insert(IoSlot {
            conn: c,
            fd,
            orphan: None,
            recv: false,
            rearm: false,
            send: None,
        });
        let i = c.idx as usize;
        if self.by_conn.len() <= i {
            self.by_conn.resize(i + 1, NONE);
        }
        self.by_conn[i] = s as u32;
        self.arm_recv(s);
    }

    fn arm_recv(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        debug_assert!(!slot.recv && slot.orphan.is_none());
        slot.recv = true;
        let fd = slot.fd;
        self.in_flight += 1;
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(user_data(Kind::Recv, s));
        self.push(e);
    }

    fn slot_of(&self, c: ConnRef) -> Option<usize> {
        let s = *self.by_conn.get(c.idx as usize)?;
        (s != NONE && self.slots.get(s as usize).is_some_and(|x| x.conn == c)).then_some(s as usize)
    }

    /// Connection `c` is being freed; `fd` is its socket. With operations
    /// still in the kernel the socket stays open here, they are cancelled,
    /// and the slot goes when their last completion has arrived.
    pub(crate) fn detach(&mut self, c: ConnRef, fd: OwnedFd) {
        let Some(s) = self.slot_of(c) else {
            return;
        };
        self.by_conn[c.idx as usize] = NONE;
        let slot = &mut self.slots[s];
        let sending = slot.send.is_some_and(|k| self.sends[k as usize].in_flight);
        if slot.recv || sending {
            slot.orphan = Some(fd);
            let raw = slot.fd;
            self.cancel(types::CancelBuilder::fd(types::Fd(raw)).all());
        } else {
            drop(fd);
        }
        self.maybe_release(s);
    }

    /// Frees an orphaned slot whose operations have all completed (its
    /// socket closes now), and a remainder nobody will send.
    fn maybe_release(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        if slot.orphan.is_none() && self.by_conn.get(slot.conn.idx as usize) == Some(&(s as u32)) {
            return; // still attached
        }
        if let Some(k) = slot.send {
            if self.sends[k as usize].in_flight {
                return;
            }
            slot.send = None;
            let sb = self.sends.remove(k as usize);
            recycle(&mut self.pool, sb.buf);
        }
        if !self.slots[s].recv {
            self.slots.remove(s); // closes the orphaned socket
        }
    }

    // ---- completions ----------------------------------------------------------

    /// Copies up to `max` completions into `out` (taking any the kernel
    /// kept on its overflow list first).
    pub(crate) fn reap(&mut self, out: &mut Vec<Cqe>, max: usize) {
        if self.ring.submission().cq_overflow() {
            // An enter with nothing to submit: `submit` adds GETEVENTS when
            // the overflow flag is set, which moves the kept completions
            // into the queue.
            self.stats.cq_overflows += 1;
            let _ = self.enter();
        }
        let mut cq = self.ring.completion();
        for e in cq.by_ref().take(max) {
            out.push(Cqe {
                user_data: e.user_data(),
                result: e.result(),
                flags: e.flags(),
            });
        }
    }

    /// Whether completions wait to be reaped.
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty() || self.ring.submission().cq_overflow()
    }

    /// Books one completion and says what it means to the shard (`None`:
    /// nothing; e.g. the completion of a freed connection's operation).
    pub(crate) fn on_cqe(&mut self, cqe: Cqe) -> Option<Completion> {
        self.stats.cqes += 1;
        let more = cqueue::more(cqe.flags);
        let Some((kind, s)) = kind_of(cqe.user_data) else {
            self.stats.unexpected += 1;
            return None;
        };
        if !more {
            debug_assert!(self.in_flight > 0, "a last completion not counted");
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        match kind {
            Kind::Cancel => None,
            Kind::Accept => {
                if !more {
                    self.accept_armed = false;
                    // A listener the drain closed goes now.
                    self.closed_listener = None;
                }
                match cqe.result {
                    // SAFETY: a non-negative accept result is a fresh
                    // descriptor that nothing else owns.
                    fd if fd >= 0 => Some(Completion::Accepted(Ok(unsafe {
                        OwnedFd::from_raw_fd(fd)
                    }))),
                    e if -e == libc::ECANCELED => None,
                    e => {
                        self.stats.accept_errors += 1;
                        Some(Completion::Accepted(Err(-e)))
                    }
                }
            }
            Kind::Recv => self.on_recv(s, cqe, more),
            Kind::Send => self.on_send(s, cqe),
        }
    }

    fn on_recv(&mut self, s: usize, cqe: Cqe, more: bool) -> Option<Completion> {
        let bid = match cqueue::buffer_select(cqe.flags) {
            Some(b) if b >= RECV_BUFFERS => {
                // Not one of ours: never touched, never given back.
                self.stats.unexpected += 1;
                None
            }
            b => b,
        };
        let Some(slot) = self.slots.get_mut(s) else {
            self.stats.unexpected += 1;
            if let Some(bid) = bid {
                self.give_back(bid);
            }
            return None;
        };
        if !more {
            slot.recv = false;
        }
        let conn = slot.conn;
        if slot.orphan.is_some() {
            if let Some(bid) = bid {
                self.give_back(bid);
            }
            if !more {
                self.maybe_release(s);
            }
            return None;
        }
        let res = cqe.result;
        if res == -libc::ENOBUFS {
            self.stats.enobufs += 1;
        }
        // Ended with the connection still readable: data came with the
        // last completion (the queue was full), or no buffer was free.
        let rearm = !more
            && (res > 0 || res == -libc::ENOBUFS || res == -libc::EINTR || res == -libc::EAGAIN);
        if rearm && !slot.rearm {
            slot.rearm = true;
            self.rearm.push(s as u32);
        }
        if let Some(bid) = bid {
            if res > 0 {
                return Some(Completion::Data {
                    conn,
                    bid,
                    len: res as usize,
                });
            }
            self.give_back(bid);
        }
        match res {
            0 => Some(Completion::Closed { conn, error: None }),
            e if e < 0
                && ![libc::ENOBUFS, libc::EINTR, libc::EAGAIN, libc::ECANCELED].contains(&-e) =>
            {
                self.stats.recv_errors += 1;
                Some(Completion::Closed {
                    conn,
                    error: Some(-e),
                })
            }
            // ENOBUFS, EINTR, EAGAIN: re-armed; ECANCELED: only a freed
            // connection's recv is cancelled. Bytes without a buffer cannot
            // happen with BUFFER_SELECT.
            _ => None,
        }
    }

    fn on_send(&mut self, s: usize, cqe: Cqe) -> Option<Completion> {
        let Some(k) = self.slots.get(s).and_then(|slot| slot.send) else {
            self.stats.unexpected += 1;
            return None;
        };
        let k = k as usize;
        let slot = &self.slots[s];
        let conn = slot.conn;
        let orphan = slot.orphan.is_some();
        let sb = &mut self.sends[k];
        sb.in_flight = false;
        let res = cqe.result;
        let result = if res >= 0 {
            sb.off += res as usize;
            Ok(res as usize)
        } else if res == -libc::EAGAIN || res == -libc::EINTR {
            Ok(0) // the rest waits as a remainder
        } else {
            // A freed connection's send ends cancelled: not an error.
            if !orphan {
                self.stats.send_errors += 1;
            }
            Err(-res)
        };
        let done = sb.off >= sb.buf.len();
        if result.is_ok() && !done {
            self.stats.short_sends += 1;
        }
        if orphan || result.is_err() || done {
            self.slots[s].send = None;
            let sb = self.sends.remove(k);
            recycle(&mut self.pool, sb.buf);
        }
        if orphan {
            self.maybe_release(s);
            return None;
        }
        Some(Completion::Sent { conn, result })
    }

    /// The bytes of provided buffer `bid` (from a [`Completion::Data`]).
    ///
    /// The pointer stays valid while the ring lives; the kernel does not
    /// write to the buffer until it is given back.
    pub(crate) fn buffer(&self, bid: u16) -> *mut u8 {
        self.bufs.buf_ptr(bid)
    }

    /// Returns provided buffer `bid` to the ring.
    pub(crate) fn give_back(&mut self, bid: u16) {
        self.bufs.add(bid);
        self.bufs.publish();
    }

    /// Arms again the multishot recvs that ended (after `ENOBUFS`, or a
    /// full completion queue), for connections still open.
    pub(crate) fn rearm_recvs(&mut self) {
        let list = std::mem::take(&mut self.rearm);
        for &s in &list {
            let s = s as usize;
            let Some(slot) = self.slots.get_mut(s) else {
                continue;
            };
            slot.rearm = false;
            if slot.orphan.is_none() && !slot.recv {
                self.stats.rearms += 1;
                self.arm_recv(s);
            }
        }
        self.rearm = list;
        self.rearm.clear();
    }

    // ---- sending ---------------------------------------------------------------

    /// Where connection `c`'s sending stands.
    pub(crate) fn send_state(&self, c: ConnRef) -> SendState {
        let Some(s) = self.slot_of(c) else {
            return SendState::Idle;
        };
        match self.slots[s].send {
            None => SendState::Idle,
            Some(k) if self.sends[k as usize].in_flight => SendState::InFlight,
            Some(_) => SendState::Remainder,
        }
    }

    /// Bytes of `c` held here and not yet written (a send in flight or a
    /// remainder).
    pub(crate) fn pending_bytes(&self, c: ConnRef) -> usize {
        self.slot_of(c)
            .and_then(|s| self.slots[s].send)
            .map_or(0, |k| {
                let sb = &self.sends[k as usize];
                sb.buf.len() - sb.off
            })
    }

    /// Sends the remainder of `c`'s last short send.
    pub(crate) fn send_remainder(&mut self, c: ConnRef) {
        let Some(s) = self.slot_of(c) else {
            return;
        };
        let Some(k) = self.slots[s].send else {
            return;
        };
        self.queue_send(s, k as usize);
    }

    /// Copies the slices (up to [`SEND_MAX`] bytes, in order) into a send
    /// buffer and queues its send. Returns the bytes taken, which the
    /// caller consumes from the outbox at once. `c` must be idle.
    pub(crate) fn send_copy(&mut self, c: ConnRef, iov: &[IoSlice<'_>]) -> usize {
        let Some(s) = self.slot_of(c) else {
            return 0;
        };
        debug_assert!(self.slots[s].send.is_none());
        let mut buf = self.pool.pop().unwrap_or_default();
        for slice in iov {
            let room = SEND_MAX - buf.len();
            if room == 0 {
                break;
            }
            buf.extend_from_slice(&slice[..slice.len().min(room)]);
        }
        let n = buf.len();
        if n == 0 {
            recycle(&mut self.pool, buf);
            return 0;
        }
        let k = self.sends.insert(SendBuf {
            buf,
            off: 0,
            in_flight: false,
        });
        self.slots[s].send = Some(k as u32);
        self.queue_send(s, k);
        n
    }

    fn queue_send(&mut self, s: usize, k: usize) {
        let fd = self.slots[s].fd;
        let sb = &mut self.sends[k];
        debug_assert!(!sb.in_flight && sb.off < sb.buf.len());
        sb.in_flight = true;
        let rest = &sb.buf[sb.off..];
        let e = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(Kind::Send, s));
        self.in_flight += 1;
        self.push(e);
    }

    /// Connections with a slot here (attached or waiting for their last
    /// completions).
    #[cfg(test)]
    fn slots_in_use(&self) -> usize {
        self.slots.len()
    }

    /// Waits up to `timeout` for at least one completion (tests, and the
    /// teardown).
    fn wait(&mut self, timeout: Duration) {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.stats.enters += 1;
        let _ = self.ring.submitter().submit_with_args(1, &args);
    }
}

/// Keeps a send buffer for reuse (emptied), within the pool's bounds.
fn recycle(pool: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
    if pool.len() < POOL_KEEP && buf.capacity() <= POOL_KEEP_CAPACITY {
        buf.clear();
        pool.push(buf);
    }
}

impl Drop for Uring {
    /// Cancels what is still in the kernel and waits (up to a second) for
    /// the completions, so no buffer is freed while the kernel may use it;
    /// if some never come, the buffers are leaked instead (the process is
    /// ending: a shard's ring goes with its shard).
    fn drop(&mut self) {
        if self.in_flight > 0 {
            self.cancel(types::CancelBuilder::any());
            self.submit();
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut batch = Vec::new();
            while self.in_flight > 0 && Instant::now() < deadline {
                self.wait(Duration::from_millis(50));
                batch.clear();
                self.reap(&mut batch, CQE_BATCH);
                for cqe in batch.drain(..) {
                    // Accepted sockets close as they drop here.
                    if let Some(Completion::Data { bid, .. }) = self.on_cqe(cqe) {
                        self.give_back(bid);
                    }
                }
                self.submit();
            }
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        if self.in_flight == 0 {
            // SAFETY: dropped once, here; nothing is in the kernel any more
            // and the registration is gone.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.bufs) };
        } else {
            // Never seen: the kernel still holds operations after a
            // cancel-all and a second. Their memory must outlive them.
            std::mem::forget(std::mem::take(&mut self.sends));
        }
    }
}

#[cfg(test)]
mod tests;
