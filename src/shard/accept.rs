//! Accepting connections, gracefully at the limits: the shard's
//! listener, a spare descriptor to answer 503 when the process is out of
//! descriptors, pausing the listener when the kernel is out of memory, and
//! a rate limit for the warnings about it.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::conn::TOKEN_LISTENER;
use super::sys::{self, Epoll, LEVEL_IN};
use crate::engine::ws::handshake::Reject;

/// What one `accept` gave.
pub(crate) enum Accept {
    /// A new connection, and its peer's address.
    Conn(OwnedFd, Option<IpAddr>),
    /// Nothing pending (or no listener).
    Empty,
    /// EMFILE/ENFILE: the process or system is out of descriptors.
    OutOfFds,
    /// ENOBUFS/ENOMEM: the kernel is out of memory.
    OutOfMemory,
    /// Anything else.
    Failed(std::io::Error),
}

/// Answers a connection with 503 and half-closes it. The socket is fresh,
/// so the small response fits its send buffer. On a TLS listener
/// (`tls`) there is no session to answer in (a plaintext 503 would only
/// be a malformed TLS record to the client): the caller's drop of `fd`
/// just closes it.
pub(crate) fn refuse(fd: &OwnedFd, tls: bool) {
    if tls {
        return;
    }
    let _ = sys::write(fd.as_raw_fd(), &Reject::Unavailable.response());
    sys::shutdown_write(fd.as_raw_fd());
}

/// Answers a connection refused at accept (the `[access]` rules) with
/// `response` and closes it. The request usually waits unread (the
/// listener defers accepts until data arrives); one read into `scratch`
/// drains it, so the close after the answer is a FIN rather than a reset
/// that could discard the answer on its way.
pub(crate) fn refuse_with(fd: &OwnedFd, response: &[u8], scratch: &mut [u8]) {
    let raw = fd.as_raw_fd();
    let _ = sys::write(raw, response);
    sys::shutdown_write(raw);
    let _ = sys::read(raw, scratch);
}

/// A shard's listener and its limit handling.
pub(crate) struct Acceptor {
    listener: Option<OwnedFd>,
    /// Taken out of the shard's epoll set until the next tick.
    paused: bool,
    /// Closed to make room for one accept when out of descriptors.
    spare: Option<OwnedFd>,
    last_limit_log: Option<Instant>,
    /// The listener serves TLS (refusals cannot answer in HTTP).
    tls: bool,
    /// Accepting through the shard's io_uring (`io = "uring"`): the
    /// listener is not in the epoll set; pausing means not re-arming its
    /// multishot accept.
    ring: bool,
}

impl Acceptor {
    /// Accepting on `listener` (already in the shard's epoll set), a TLS
    /// listener if `tls`.
    pub(crate) fn new(listener: OwnedFd, tls: bool) -> Self {
        Self {
            listener: Some(listener),
            paused: false,
            spare: sys::spare_fd(),
            last_limit_log: None,
            tls,
            ring: false,
        }
    }

    /// Accepting on `listener`, which is not in the shard's epoll set: the
    /// shard's io_uring accepts on it (`io = "uring"`).
    pub(crate) fn in_ring(listener: OwnedFd, tls: bool) -> Self {
        Self {
            ring: true,
            ..Self::new(listener, tls)
        }
    }

    /// The listener to arm a multishot accept on (io_uring): open and not
    /// paused.
    pub(crate) fn ring_listener(&self) -> Option<RawFd> {
        (self.ring && !self.paused)
            .then(|| self.listener.as_ref().map(|l| l.as_raw_fd()))
            .flatten()
    }

    /// Accepts one pending connection.
    pub(crate) fn accept(&mut self) -> Accept {
        let Some(lfd) = self.listener.as_ref().map(|l| l.as_raw_fd()) else {
            return Accept::Empty;
        };
        loop {
            return match sys::accept_with_peer(lfd) {
                Ok((fd, peer)) => Accept::Conn(fd, peer),
                Err(e) if sys::would_block(&e) => Accept::Empty,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE) => Accept::OutOfFds,
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => continue,
                    Some(libc::ENOBUFS | libc::ENOMEM) => Accept::OutOfMemory,
                    _ => Accept::Failed(e),
                },
            };
        }
    }

    /// Out of descriptors: closes the spare to accept one pending
    /// connection and refuse it with 503 (closed without an answer on
    /// TLS), so clients get an answer instead
    /// of hanging in the backlog; then takes the spare back. Returns
    /// whether a connection was refused. Without a spare to get back, the
    /// listener is paused until the next tick instead of spinning on it.
    pub(crate) fn refuse_one_with_spare(&mut self, epoll: &Epoll) -> bool {
        let Some(lfd) = self.listener.as_ref().map(|l| l.as_raw_fd()) else {
            return false;
        };
        let mut refused = false;
        if let Some(spare) = self.spare.take() {
            drop(spare);
            if let Ok(fd) = sys::accept(lfd) {
                refuse(&fd, self.tls);
                refused = true;
            }
            self.spare = sys::spare_fd();
        }
        if self.spare.is_none() {
            self.pause(epoll);
        }
        refused
    }

    /// Stops polling the listener (until [`Acceptor::resume`]).
    pub(crate) fn pause(&mut self, epoll: &Epoll) {
        if let Some(l) = &self.listener
            && !self.paused
        {
            if !self.ring {
                let _ = epoll.delete(l.as_raw_fd());
            }
            self.paused = true;
        }
    }

    /// Once per tick: polls the listener again if it was paused, and takes
    /// the spare descriptor back if it could not be.
    pub(crate) fn resume(&mut self, epoll: &Epoll) {
        if self.spare.is_none() {
            self.spare = sys::spare_fd();
        }
        if let Some(l) = &self.listener
            && self.paused
            && (self.ring || epoll.add(l.as_raw_fd(), LEVEL_IN, TOKEN_LISTENER).is_ok())
        {
            self.paused = false;
        }
    }

    /// Closes the listener for good (drain). On the io_uring path the
    /// listener is returned instead of closed: the caller cancels the
    /// multishot accept, queued by its descriptor number, and closes it
    /// after that accept's last completion.
    pub(crate) fn close(&mut self, epoll: &Epoll) -> Option<OwnedFd> {
        let l = self.listener.take()?;
        if self.ring {
            return Some(l);
        }
        let _ = epoll.delete(l.as_raw_fd());
        None
    }

    /// Whether a resource-limit warning may be logged now: at most once per
    /// 10 s per shard.
    pub(crate) fn may_log(&mut self, now: Instant) -> bool {
        let may = self
            .last_limit_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if may {
            self.last_limit_log = Some(now);
        }
        may
    }
}
