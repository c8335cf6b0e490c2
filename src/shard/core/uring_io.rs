//! The io_uring side of a shard's turn (`io = "uring"`, see
//! `shard::uring`): the ring's completions into the same admit, read and
//! close paths the epoll path uses, and the submission at the end of the
//! turn (the write pass's sends, re-armed recvs, the multishot accept,
//! cancels).

use super::*;
use crate::config::SocketIo;
use crate::engine::access::AccessConfig;
use crate::shard::uring::{CQE_BATCH, Completion};

/// The shard's ring when the configuration asks for one: `io = "uring"`
/// on a plain listener (TLS connections stay on the readiness path).
pub(super) fn ring_for(id: usize, ctx: &ShardContext) -> std::io::Result<Option<Uring>> {
    if ctx.config.io != SocketIo::Uring {
        return Ok(None);
    }
    if ctx.tls.is_some() {
        if id == 0 {
            info!("io = \"uring\" with [tls]: TLS connections use the readiness (epoll) path");
        }
        return Ok(None);
    }
    Uring::new().map(Some).map_err(uring::unavailable)
}

/// Whether the `[access]` rules need a connection's peer address at
/// accept: address filters, trusted proxies, per-IP limits.
pub(super) fn needs_peer(a: &AccessConfig) -> bool {
    !a.ip_allow.is_empty()
        || !a.ip_deny.is_empty()
        || !a.trusted_proxies.is_empty()
        || a.per_ip_connection_rate > 0.0
        || a.per_ip_max_connections > 0
}

impl Shard {
    /// Handles up to `CQE_BATCH` completions. Returns whether the batch was
    /// full (more may wait).
    pub(super) fn uring_complete(&mut self) -> bool {
        let mut batch = std::mem::take(&mut self.cqes);
        if let Some(u) = &mut self.uring {
            u.reap(&mut batch, CQE_BATCH);
        }
        let full = batch.len() == CQE_BATCH;
        for cqe in batch.drain(..) {
            let Some(u) = &mut self.uring else {
                break;
            };
            match u.on_cqe(cqe) {
                None => {}
                Some(Completion::Accepted(r)) => self.uring_accepted(r),
                Some(Completion::Data { conn, bid, len }) => {
                    let ptr = u.buffer(bid);
                    self.stats.bytes_in += len as u64;
                    // SAFETY: the kernel wrote `len` bytes into buffer
                    // `bid` and does not touch it again until it is given
                    // back below; it lives as long as the ring, which
                    // outlives this call (only the shard's drop drops it);
                    // nothing else reads or writes that buffer meanwhile.
                    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                    self.on_bytes(conn, buf);
                    if let Some(u) = &mut self.uring {
                        u.give_back(bid);
                    }
                }
                Some(Completion::Closed { conn, error }) => {
                    if error.is_none()
                        && slot_ref(&self.conns, conn).map(|c| c.session.phase())
                            == Some(Phase::Handshake)
                    {
                        self.metrics.handshake(HandshakeResult::Aborted);
                    }
                    self.free_conn(conn);
                }
                Some(Completion::Sent { conn, result }) => self.uring_sent(conn, result),
            }
        }
        self.cqes = batch;
        full
    }

    /// A completion of the multishot accept.
    fn uring_accepted(&mut self, r: Result<OwnedFd, i32>) {
        match r {
            Ok(fd) => {
                let peer = if self.needs_peer {
                    sys::peer_of(fd.as_raw_fd())
                } else {
                    None
                };
                self.admit(fd, peer);
            }
            Err(libc::EMFILE | libc::ENFILE) => {
                self.metrics.refused(Refusal::FdLimit);
                self.limit_log("out of file descriptors: refusing new connections with 503");
                if self.acceptor.refuse_one_with_spare(&self.epoll) {
                    self.metrics.handshake(Reject::Unavailable);
                }
            }
            Err(libc::ENOBUFS | libc::ENOMEM) => {
                self.limit_log("accept: out of kernel memory; pausing accepts");
                self.acceptor.pause(&self.epoll);
            }
            Err(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EAGAIN) => {}
            // Counted (`wsedge_uring_events_total{kind="accept_error"}`);
            // the accept is armed again at the end of the turn, so a
            // lasting failure is logged at most once per 10 s.
            Err(e) => self.limit_log(&format!(
                "accept failed: {}",
                std::io::Error::from_raw_os_error(e)
            )),
        }
    }

    /// A send of `c` completed: count it, and come back to `c` in the next
    /// write pass if it has more to send (a remainder, its outbox, or its
    /// FIN after the last byte).
    fn uring_sent(&mut self, c: ConnRef, result: Result<usize, i32>) {
        let n = match result {
            Ok(n) => n,
            Err(_) => {
                self.free_conn(c);
                return;
            }
        };
        if n > 0 {
            self.stats.writes += 1;
            self.stats.bytes_out += n as u64;
        }
        let held = self
            .uring
            .as_ref()
            .is_some_and(|u| u.send_state(c) != uring::SendState::Idle);
        let Some(conn) = slot_ref(&self.conns, c) else {
            return;
        };
        if held
            || !conn.session.outbox.is_empty()
            || (conn.session.wants_shutdown() && !conn.write_shut)
        {
            self.mark_dirty(c);
        }
    }

    /// The end of a turn's I/O: arms the multishot accept if it is not
    /// (and accepting is not paused), re-arms ended recvs, and submits
    /// everything queued with one `io_uring_enter`.
    pub(super) fn uring_submit(&mut self) {
        let listener = self.acceptor.ring_listener();
        let Some(u) = &mut self.uring else {
            return;
        };
        if let Some(l) = listener {
            u.arm_accept(l);
        }
        u.rearm_recvs();
        u.submit();
    }

    /// Output of `c` held by the ring and not written yet.
    pub(super) fn uring_pending_bytes(&self, c: ConnRef) -> usize {
        self.uring.as_ref().map_or(0, |u| u.pending_bytes(c))
    }

    /// The listener closed (drain): its multishot accept is cancelled, and
    /// `listener` closes after that accept's last completion.
    pub(super) fn uring_stop_accepting(&mut self, listener: Option<OwnedFd>) {
        if let Some(u) = &mut self.uring {
            u.cancel_accept(listener);
        }
    }

    /// Moves the ring's counts to the metrics (with the turn's others).
    pub(super) fn uring_flush_metrics(&mut self) {
        if let (Some(u), Some(m)) = (&mut self.uring, &self.uring_metrics) {
            u.flush_metrics(m);
        }
    }

    /// The ring's counts, logged when the shard stops.
    pub(crate) fn uring_summary(&self) -> Option<uring::UringStats> {
        self.uring.as_ref().map(|u| u.stats)
    }
}
