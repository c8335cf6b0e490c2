//! A shard's inbox: `crossbeam` `ArrayQueue` (bounded, lock-free) plus an
//! eventfd doorbell. A sender rings only when the doorbell is not already
//! rung, so a burst costs one `write(2)`; the shard clears the doorbell
//! before draining, so nothing pushed after the drain started can be
//! missed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::{ArrayQueue, SegQueue};

use super::{CallKind, ShardMsg};
use crate::engine::sse::PostAnswer;
use crate::engine::subs::ConnRef;

/// A bounded multi-producer queue owned by one shard.
pub struct Inbox {
    queue: ArrayQueue<ShardMsg>,
    /// Durable sinks' confirmations for publishers waiting on this shard
    /// (`durable_ack`): (wait token, confirmed). Apart from the bounded
    /// queue so none is ever refused: there are at most as many as events
    /// the sinks hold for waiting publishers.
    confirmations: SegQueue<(u64, bool)>,
    /// Backend calls whose answer met a full inbox: (connection, command
    /// id, which command). Apart from the bounded queue so the connection's in-flight
    /// slot is always freed (and the client answered, 112): there are at
    /// most as many as calls the RPC sidecar holds (`[rpc]
    /// queue_capacity`).
    rpc_lost: SegQueue<(ConnRef, u32, CallKind)>,
    /// How SSE command posts this shard passed to another shard's stream
    /// (on this node or another) ended. Apart from the bounded queue so a
    /// post is always answered: one answer per post this shard passed on
    /// (an answer for a post no longer waiting is dropped when popped).
    sse_answers: SegQueue<(ConnRef, PostAnswer)>,
    doorbell: OwnedFd,
    rung: AtomicBool,
}

impl Inbox {
    /// An inbox holding at most `capacity` messages.
    pub fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is
        // checked before it is wrapped.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            queue: ArrayQueue::new(capacity),
            confirmations: SegQueue::new(),
            rpc_lost: SegQueue::new(),
            sse_answers: SegQueue::new(),
            // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
            doorbell: unsafe { OwnedFd::from_raw_fd(fd) },
            rung: AtomicBool::new(false),
        })
    }

    /// Queues `msg`, ringing the doorbell if needed. Gives the message back
    /// when the inbox is full.
    pub fn push(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        self.queue.push(msg)?;
        self.ring();
        Ok(())
    }

    /// Hands the shard a durable sink's outcome for wait `token` (never
    /// refused), ringing the doorbell if needed.
    pub fn confirm_durable(&self, token: u64, ok: bool) {
        self.confirmations.push((token, ok));
        self.ring();
    }

    /// Owner only: takes the next durable confirmation.
    pub fn pop_confirmation(&self) -> Option<(u64, bool)> {
        self.confirmations.pop()
    }

    /// Tells the shard that the answer to connection `conn`'s backend
    /// call `id` (a `kind`) was lost to a full inbox (never refused),
    /// ringing the doorbell if needed.
    pub fn rpc_lost(&self, conn: ConnRef, id: u32, kind: CallKind) {
        self.rpc_lost.push((conn, id, kind));
        self.ring();
    }

    /// Owner only: takes the next lost backend call answer.
    pub fn pop_rpc_lost(&self) -> Option<(ConnRef, u32, CallKind)> {
        self.rpc_lost.pop()
    }

    /// Tells the shard what became of the SSE command post read on its
    /// connection `post` (never refused), ringing the doorbell if needed.
    pub fn sse_answered(&self, post: ConnRef, answer: PostAnswer) {
        self.sse_answers.push((post, answer));
        self.ring();
    }

    /// Owner only: takes the next SSE command post answer.
    pub fn pop_sse_answer(&self) -> Option<(ConnRef, PostAnswer)> {
        self.sse_answers.pop()
    }

    fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. A
            // failure (counter overflow) cannot happen for an eventfd that
            // is drained on every wakeup, and would only delay the wakeup.
            unsafe {
                libc::write(self.doorbell.as_raw_fd(), (&one as *const u64).cast(), 8);
            }
        }
    }

    /// The descriptor the owner watches for readability.
    pub fn doorbell_fd(&self) -> RawFd {
        self.doorbell.as_raw_fd()
    }

    /// Owner only: clears the doorbell. Call before draining.
    pub fn clear_doorbell(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking
        // eventfd; EAGAIN (already clear) is fine.
        unsafe {
            libc::read(self.doorbell.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
        self.rung.store(false, Ordering::SeqCst);
    }

    /// Owner only: takes the next message.
    pub fn pop(&self) -> Option<ShardMsg> {
        self.queue.pop()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn doorbell_rings_once_per_burst_and_bound_holds() {
        let inbox = Inbox::new(4).unwrap();
        assert!(!readable(inbox.doorbell_fd()));
        for _ in 0..4 {
            inbox.push(ShardMsg::Drain).unwrap();
        }
        assert!(inbox.push(ShardMsg::Drain).is_err(), "full inbox refuses");
        assert!(readable(inbox.doorbell_fd()));
        inbox.clear_doorbell();
        assert!(!readable(inbox.doorbell_fd()));
        let mut n = 0;
        while inbox.pop().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
        inbox.push(ShardMsg::Drain).unwrap();
        assert!(readable(inbox.doorbell_fd()), "rings again after clear");
    }

    #[test]
    fn many_producers_nothing_lost() {
        let inbox = Arc::new(Inbox::new(1 << 16).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        while inbox.push(ShardMsg::Drain).is_err() {}
                    }
                })
            })
            .collect();
        let mut got = 0;
        while got < 40_000 {
            inbox.clear_doorbell();
            while inbox.pop().is_some() {
                got += 1;
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(got, 40_000);
    }
}
