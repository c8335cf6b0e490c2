//! TLS in the shard's socket path (`[tls]` on): every connection's
//! [`TlsConn`] kept beside its slot, the TLS read path in front of the
//! same `on_bytes` the plain path feeds, handshakes bounded per loop turn,
//! and the write pass that encrypts the outbox.
//!
//! The TLS state lives outside [`Conn`] (which must stay at 128 bytes): a
//! vector indexed by the connection's slot index, `None` for free slots.
//! A slot's entry is set when the connection is admitted and cleared when
//! it is freed, so an entry always belongs to the slot's current
//! connection; stale [`ConnRef`]s are caught by the slot's generation
//! before the entry is looked at.
//!
//! Handshakes: a read that advances a handshake (the ClientHello costs a
//! signature and a key exchange) takes a step from the shard's
//! [`HandshakeBudget`]. When the turn's budget is spent the connection
//! waits in a FIFO backlog (epoll is edge-triggered and will not report
//! it again) that the next turn serves first, while established
//! connections are read as usual.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use slab::Slab;

use super::{READ_BUDGET, Shard, slot, slot_ref};
use crate::engine::session::Phase;
use crate::engine::subs::ConnRef;
use crate::metrics::{HandshakeResult, Stats, TlsHandshake, TlsShardMetrics};
use crate::shard::conn::Conn;
use crate::shard::sys;
use crate::shard::tls::{KtlsStatus, TlsConn, TlsRead};
use crate::shard::write::{IOV, WRITE_BUDGET, WriteQueue};
use crate::tls::{HandshakeBudget, TlsAcceptorConfig, TlsFailure};

/// What the shards need to serve TLS: the node's swappable server
/// configuration and whether connections hand their record layer to the
/// kernel after the handshake (decided once in `main`, where the kernel is
/// probed).
#[derive(Debug, Clone)]
pub struct TlsServing {
    /// The certificate and settings every new connection takes.
    pub acceptor: Arc<TlsAcceptorConfig>,
    /// Try kernel TLS (`ktls = "auto"` and the kernel offers it).
    pub ktls: bool,
}

/// One connection's TLS side.
struct TlsSlot {
    conn: TlsConn,
    /// Waiting in the handshake backlog.
    deferred: bool,
}

/// A shard's TLS state.
pub(crate) struct TlsShard {
    serving: TlsServing,
    /// By connection slot index.
    slots: Vec<Option<Box<TlsSlot>>>,
    budget: HandshakeBudget,
    /// Handshaking connections that found the turn's budget spent.
    backlog: VecDeque<ConnRef>,
    metrics: TlsShardMetrics,
}

impl TlsShard {
    /// TLS state for shard `id`.
    pub(crate) fn new(serving: TlsServing, metrics: TlsShardMetrics) -> Self {
        let per_turn = serving.acceptor.settings().handshakes_per_turn;
        Self {
            serving,
            slots: Vec::new(),
            budget: HandshakeBudget::new(per_turn),
            backlog: VecDeque::new(),
            metrics,
        }
    }

    fn get(&mut self, idx: u32) -> Option<&mut TlsConn> {
        conn_at(&mut self.slots, idx)
    }

    /// Whether handshakes wait for a later turn.
    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }
}

/// The TLS connection of slot `idx`.
fn conn_at(slots: &mut [Option<Box<TlsSlot>>], idx: u32) -> Option<&mut TlsConn> {
    slots
        .get_mut(idx as usize)
        .and_then(|s| s.as_deref_mut())
        .map(|s| &mut s.conn)
}

/// Counts where a connection's record layer settled, once: when the kTLS
/// hand-over stops being pending, or when the handshake finishes with
/// kTLS off.
fn note_record_layer(m: &TlsShardMetrics, was_pending: bool, handshake_done: bool, t: &TlsConn) {
    let status = t.ktls_status();
    if (was_pending && status != KtlsStatus::Pending)
        || (handshake_done && status == KtlsStatus::Off)
    {
        m.record_layer(status == KtlsStatus::Active);
    }
}

/// Counts a TLS failure: as the handshake's result while handshaking,
/// else as an established connection's error.
fn note_failure(m: &TlsShardMetrics, handshaking: bool, e: &io::Error) {
    let reason = TlsFailure::of(e);
    if handshaking {
        m.handshake(TlsHandshake::Failed(reason));
    } else {
        m.error(reason);
    }
}

impl Shard {
    /// Gives a newly admitted connection (slot `idx`) its TLS side, on the
    /// certificate current now. False if rustls could not make one (the
    /// caller drops the connection).
    pub(super) fn tls_admit(&mut self, idx: u32) -> bool {
        let Some(tls) = &mut self.tls else {
            return true;
        };
        let config = tls.serving.acceptor.server_config();
        let conn = match TlsConn::new(config, tls.serving.ktls) {
            Ok(c) => c,
            Err(e) => {
                tls.metrics
                    .handshake(TlsHandshake::Failed(TlsFailure::of(&e)));
                return false;
            }
        };
        let i = idx as usize;
        if tls.slots.len() <= i {
            tls.slots.resize_with(i + 1, || None);
        }
        tls.slots[i] = Some(Box::new(TlsSlot {
            conn,
            deferred: false,
        }));
        true
    }

    /// Drops the TLS side of slot `idx` (the connection is being freed);
    /// a handshake that never finished is counted as incomplete.
    pub(super) fn tls_free(&mut self, idx: u32) {
        let Some(tls) = &mut self.tls else {
            return;
        };
        if let Some(s) = tls.slots.get_mut(idx as usize).and_then(Option::take)
            && s.conn.is_handshaking()
        {
            tls.metrics.handshake(TlsHandshake::Incomplete);
        }
    }

    /// At the start of a turn: refills the handshake budget and advances
    /// the connections that waited for it, oldest first.
    pub(super) fn tls_start_turn(&mut self) {
        let Some(tls) = &mut self.tls else {
            return;
        };
        tls.budget.start_turn();
        while let Some(tls) = &mut self.tls
            && !tls.budget.exhausted()
            && let Some(c) = tls.backlog.pop_front()
        {
            if slot_ref(&self.conns, c).is_none() {
                continue; // freed meanwhile (the slot may be another's now)
            }
            if let Some(s) = tls
                .slots
                .get_mut(c.idx as usize)
                .and_then(|s| s.as_deref_mut())
            {
                s.deferred = false;
            }
            self.read_conn_tls(c);
        }
    }

    /// `read_conn` for TLS connections: reads and decrypts until the
    /// socket is drained or the connection's read budget is used, feeding
    /// the plaintext to `on_bytes`.
    pub(super) fn read_conn_tls(&mut self, c: ConnRef) {
        let mut total = 0;
        loop {
            let Some(conn) = slot_ref(&self.conns, c) else {
                return;
            };
            let fd = conn.raw_fd();
            let Some(tls) = &mut self.tls else {
                return;
            };
            let Some(s) = tls
                .slots
                .get_mut(c.idx as usize)
                .and_then(|s| s.as_deref_mut())
            else {
                return;
            };
            let handshaking = s.conn.is_handshaking();
            if handshaking && !tls.budget.try_take() {
                if !s.deferred {
                    s.deferred = true;
                    tls.backlog.push_back(c);
                    tls.metrics.deferred();
                }
                return;
            }
            let was_pending = s.conn.ktls_status() == KtlsStatus::Pending;
            let mut scratch = std::mem::take(&mut self.scratch);
            let r = s.conn.read(fd, &mut scratch);
            match &r {
                Ok(r) => {
                    if r.handshake_done {
                        tls.metrics.handshake(TlsHandshake::Ok);
                    }
                    note_record_layer(&tls.metrics, was_pending, r.handshake_done, &s.conn);
                }
                Err(e) if sys::would_block(e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => note_failure(&tls.metrics, handshaking, e),
            }
            let r: TlsRead = match r {
                Ok(r) => r,
                Err(e) if sys::would_block(&e) => {
                    self.scratch = scratch;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.scratch = scratch;
                    continue;
                }
                Err(_) => {
                    self.scratch = scratch;
                    self.free_conn(c);
                    return;
                }
            };
            self.stats.bytes_in += r.wire as u64;
            if r.wants_write {
                self.mark_dirty(c);
            }
            // Plaintext first: a last request may come with close_notify.
            if !r.plain.is_empty() {
                self.on_bytes(c, &mut scratch[r.plain.clone()]);
            }
            self.scratch = scratch;
            if r.eof {
                if let Some(conn) = slot_ref(&self.conns, c) {
                    if conn.session.phase() == Phase::Handshake {
                        self.metrics.handshake(HandshakeResult::Aborted);
                    }
                    self.free_conn(c);
                }
                return;
            }
            if r.drained {
                return;
            }
            total += r.wire;
            if total >= READ_BUDGET {
                self.defer_read(c);
                return;
            }
        }
    }

    /// Sends close_notify before the socket is half-closed at the close
    /// deadline (one attempt; the write pass has usually sent it already).
    pub(super) fn tls_close_notify(&mut self, c: ConnRef) {
        let Some(fd) = slot_ref(&self.conns, c).map(Conn::raw_fd) else {
            return;
        };
        if let Some(t) = self.tls.as_mut().and_then(|t| t.get(c.idx)) {
            let _ = t.close_notify(fd);
        }
    }

    /// Ciphertext of `c` that the socket has not taken yet.
    pub(super) fn tls_pending_bytes(&mut self, c: ConnRef) -> usize {
        self.tls
            .as_mut()
            .and_then(|t| t.get(c.idx))
            .map_or(0, |t| t.pending_ciphertext())
    }

    /// Under kernel TLS, whether `c` has sent so many records under one
    /// key that it must reconnect (the kernel cannot update keys).
    pub(super) fn tls_must_reconnect(&mut self, c: ConnRef) -> bool {
        self.tls
            .as_mut()
            .and_then(|t| t.get(c.idx))
            .is_some_and(|t| t.must_reconnect())
    }

    /// The write pass for TLS connections (see [`write_pass_tls`]).
    pub(super) fn write_pass_tls(&mut self) -> Vec<ConnRef> {
        let Some(tls) = &mut self.tls else {
            return Vec::new();
        };
        write_pass_tls(
            &mut self.conns,
            tls,
            &mut self.dirty,
            &mut self.stats,
            &mut self.scratch,
        )
    }
}

/// The write pass over TLS connections: as `write_pass` (round-robin, one
/// write per connection, `WRITE_BUDGET` connections per turn), but each
/// write encrypts up to one batch of the outbox into `scratch` first
/// (under kTLS it is the same single `writev`). The outbox consumes the
/// plaintext the TLS layer accepted; ciphertext the socket refused waits
/// in the connection and goes first next time. A graceful close sends
/// close_notify before the FIN. Returns the connections whose socket or
/// TLS failed (to free).
fn write_pass_tls(
    conns: &mut Slab<Conn>,
    tls: &mut TlsShard,
    dirty: &mut WriteQueue,
    stats: &mut Stats,
    scratch: &mut [u8],
) -> Vec<ConnRef> {
    let TlsShard { slots, metrics, .. } = tls;
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
        let Some(t) = conn_at(slots, c.idx) else {
            continue;
        };
        let mut requeue = false;
        if !conn.session.outbox.is_empty() || t.wants_write() {
            let handshaking = t.is_handshaking();
            let was_pending = t.ktls_status() == KtlsStatus::Pending;
            let r = if handshaking {
                // Only the handshake's own flight: the session has
                // nothing to send before it has read a request.
                t.flush(fd).map(|done| (0, 0, !done))
            } else {
                let mut iov = [IoSlice::new(&[]); IOV];
                let k = conn.session.outbox.fill(&mut iov);
                t.write(fd, &iov[..k], scratch)
                    .map(|w| (w.accepted, w.wire, w.blocked))
            };
            note_record_layer(metrics, was_pending, false, t);
            match r {
                Ok((accepted, wire, blocked)) => {
                    stats.writes += 1;
                    stats.bytes_out += wire as u64;
                    stats.frames_out += conn.session.outbox.consume(accepted) as u64;
                    // blocked: the socket is full and EPOLLOUT calls us
                    // back. Otherwise the batch limit may have stopped us.
                    requeue = !blocked && (!conn.session.outbox.is_empty() || t.wants_write());
                }
                Err(e) if sys::would_block(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => requeue = true,
                Err(e) => {
                    note_failure(metrics, handshaking, &e);
                    dead.push(c);
                    continue;
                }
            }
        }
        if conn.session.wants_shutdown() && !conn.write_shut {
            match t.close_notify(fd) {
                // Part of it waits for the socket: EPOLLOUT brings us back.
                Ok(false) => {}
                Ok(true) | Err(_) => {
                    sys::shutdown_write(fd);
                    conn.write_shut = true;
                }
            }
        }
        if requeue {
            conn.dirty = true;
            dirty.push(c);
        }
    }
    dead
}
