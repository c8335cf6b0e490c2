//! TLS on a shard's raw non-blocking socket: a per-connection
//! [`TlsConn`] between the socket and the shard's read path and write
//! pass, with as little per-connection memory as rustls allows, and
//! kernel TLS after the handshake where the kernel offers it.
//!
//! Why rustls's *unbuffered* API: the buffered `ServerConnection` keeps
//! its own receive buffer (at least 4 KiB once anything was read, never
//! released) and plaintext/record queues; measured idle after handshake,
//! request and answer it holds 5,285 bytes of heap plus 1,168 inline,
//! against 2,277 heap (the boxed `UnbufferedServerConnection` included)
//! plus 72 inline for a [`TlsConn`] (TLS 1.3; tests/tls_memory.rs). Here the caller's per-shard scratch
//! buffer is the receive and encrypt buffer; a connection keeps bytes
//! of its own only while a record is split across reads or the socket
//! refuses ciphertext, and frees them as soon as that ends.
//!
//! Reading: ciphertext is read into the first half of the scratch buffer
//! and the plaintext of complete records is copied to the second half
//! ([`TlsRead::plain`]). Writing: the outbox's slices are gathered into one
//! batch (at most [`TX_BATCH`] bytes, so small frames share a record) and
//! encrypted into the scratch buffer, then written with one `write`; the
//! plaintext accepted is what the outbox consumes, whether or not all of
//! its ciphertext left (the rest waits in the connection, at most one
//! batch, and nothing new is encrypted until it has gone).
//!
//! Kernel TLS (see [`ktls`]): once the handshake is over and nothing is
//! buffered either way, the record layer moves into the kernel, and
//! [`TlsConn::read`]/[`TlsConn::write`] become `recvmsg` and one `writev`
//! of the outbox's slices, exactly as for plain sockets.

pub mod ktls;
#[cfg(test)]
mod tests;

use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError};
use rustls::{ProtocolVersion, ServerConfig};

use super::sys;
use ktls::{KtlsError, KtlsState, Unavailable};

/// Plaintext bytes encrypted per write (two full records): large enough
/// that a write of 64 queued frames is one record, small enough that a
/// connection whose socket is full holds at most this much ciphertext.
pub const TX_BATCH: usize = 2 * MAX_PLAINTEXT;
/// The largest record payload (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 16384;
/// Bytes a record adds: header 5, explicit nonce 8 (TLS 1.2 GCM), tag 16,
/// inner content type 1 (TLS 1.3).
const RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;
/// Ciphertext a connection keeps between reads: a record split across
/// reads (at most 16 KiB + 261) or an unfinished handshake message.
/// Beyond it the peer is refused ("TLS message too large"); real
/// ClientHellos are under 2 KiB.
pub const MAX_RX_PENDING: usize = 24 * 1024;
/// The smallest scratch buffer [`TlsConn::read`] and [`TlsConn::write`]
/// accept (the shard's is 64 KiB).
pub const MIN_SCRATCH: usize = 2 * (MAX_RX_PENDING + 4096);

/// What one [`TlsConn::read`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRead {
    /// Where the plaintext is in the scratch buffer (may be empty, e.g.
    /// for handshake records). Hand it to the connection before looking
    /// at `eof`.
    pub plain: Range<usize>,
    /// Bytes read from the socket (for `bytes_in`).
    pub wire: usize,
    /// The peer closed: close_notify, or end of stream. No more plaintext
    /// will come.
    pub eof: bool,
    /// The read was short: the socket is drained until the next EPOLLIN.
    /// When false, read again (budget permitting).
    pub drained: bool,
    /// TLS output (handshake flight, alert) is waiting for the socket to
    /// take it: wait for EPOLLOUT and call [`TlsConn::flush`] or
    /// [`TlsConn::write`].
    pub wants_write: bool,
    /// The handshake finished during this read.
    pub handshake_done: bool,
}

/// What one [`TlsConn::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsWrite {
    /// Plaintext bytes taken from the slices: pass to `Outbox::consume`.
    pub accepted: usize,
    /// Bytes the socket took (ciphertext, or plaintext under kTLS).
    pub wire: usize,
    /// The socket is full: wait for EPOLLOUT. When false and plaintext
    /// is left, the batch limit stopped the write: queue it again.
    pub blocked: bool,
}

/// Where the connection's kernel-TLS hand-over stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtlsStatus {
    /// Not asked for (`ktls = "off"`).
    Off,
    /// Asked for; waits for the handshake to finish and buffers to empty.
    Pending,
    /// The kernel holds the record layer.
    Active,
    /// Stayed on rustls.
    Unavailable(Unavailable),
}

/// A TLS connection over a raw non-blocking socket.
pub struct TlsConn {
    mode: Mode,
    ktls: KtlsStatus,
    /// ALPN `http/1.1` was negotiated.
    alpn_http11: bool,
    close_notify_sent: bool,
}

enum Mode {
    Rustls(Userspace),
    Kernel(KtlsState),
    /// A fatal error happened; every call fails.
    Failed,
}

/// The user-space record layer.
struct Userspace {
    conn: Box<UnbufferedServerConnection>,
    /// Ciphertext received but not yet processable (a partial record).
    /// Empty (no allocation) between records.
    rx_pending: Vec<u8>,
    /// Ciphertext produced but not yet taken by the socket. Empty (no
    /// allocation) while the socket keeps up.
    tx_pending: Vec<u8>,
}

fn protocol_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS connection failed earlier")
}

/// The rustls error inside an error returned by [`TlsConn`], if the
/// error is the peer breaking TLS (for counting refusals by reason).
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

impl TlsConn {
    /// A new server-side connection using `config` (the node's current
    /// one, kept for the connection's life). `ktls`: hand the record layer
    /// to the kernel after the handshake if the kernel takes it (the
    /// config must then have `enable_secret_extraction`).
    pub fn new(config: Arc<ServerConfig>, ktls: bool) -> io::Result<Self> {
        let ktls = if ktls && config.enable_secret_extraction {
            KtlsStatus::Pending
        } else {
            KtlsStatus::Off
        };
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Self {
            mode: Mode::Rustls(Userspace {
                conn: Box::new(conn),
                rx_pending: Vec::new(),
                tx_pending: Vec::new(),
            }),
            ktls,
            alpn_http11: false,
            close_notify_sent: false,
        })
    }

    /// Whether the handshake is still going on (the costly part a shard
    /// bounds per turn).
    pub fn is_handshaking(&self) -> bool {
        match &self.mode {
            Mode::Rustls(u) => u.conn.is_handshaking(),
            Mode::Kernel(_) | Mode::Failed => false,
        }
    }

    /// Whether the kernel holds the record layer.
    pub fn is_ktls(&self) -> bool {
        matches!(self.mode, Mode::Kernel(_))
    }

    /// Where the kernel-TLS hand-over stands.
    pub fn ktls_status(&self) -> KtlsStatus {
        self.ktls
    }

    /// Whether ALPN `http/1.1` was negotiated (false if the client offered
    /// no ALPN).
    pub fn alpn_http11(&self) -> bool {
        self.alpn_http11
    }

    /// The negotiated version, once known.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.mode {
            Mode::Rustls(u) => u.conn.protocol_version(),
            Mode::Kernel(k) => Some(match k.offload.version {
                ktls::Version::Tls12 => ProtocolVersion::TLSv1_2,
                ktls::Version::Tls13 => ProtocolVersion::TLSv1_3,
            }),
            Mode::Failed => None,
        }
    }

    /// Whether ciphertext waits for the socket (treat like a non-empty
    /// outbox: the write pass must call [`TlsConn::write`] or
    /// [`TlsConn::flush`]).
    pub fn wants_write(&self) -> bool {
        matches!(&self.mode, Mode::Rustls(u) if !u.tx_pending.is_empty())
    }

    /// Ciphertext produced but not yet taken by the socket (at most one
    /// write batch), for the close deadline's "still delivering" check.
    pub fn pending_ciphertext(&self) -> usize {
        match &self.mode {
            Mode::Rustls(u) => u.tx_pending.len(),
            Mode::Kernel(_) | Mode::Failed => 0,
        }
    }

    /// Under kTLS, whether so many records went out under one key that
    /// the connection should be closed with a reconnect code.
    pub fn must_reconnect(&self) -> bool {
        matches!(&self.mode, Mode::Kernel(k) if k.must_reconnect())
    }

    /// Bytes this connection holds outside its fixed-size parts (pending
    /// ciphertext either way), for memory accounting and tests.
    pub fn buffered_bytes(&self) -> usize {
        match &self.mode {
            Mode::Rustls(u) => u.rx_pending.capacity() + u.tx_pending.capacity(),
            Mode::Kernel(_) | Mode::Failed => 0,
        }
    }

    /// Reads what the socket has (one `read`, or `recvmsg` under kTLS),
    /// advances the handshake (writing its answer right away), and puts
    /// the plaintext of complete records in `scratch[r.plain]`.
    ///
    /// Errors: `WouldBlock`/`Interrupted` as for `read(2)`, nothing lost;
    /// `InvalidData` when the peer broke TLS ([`tls_error`] says how; an
    /// alert was sent where possible); other socket errors as they come.
    /// After any other error the connection is dead: close it.
    pub fn read(&mut self, fd: RawFd, scratch: &mut [u8]) -> io::Result<TlsRead> {
        check_scratch(scratch)?;
        let r = match &mut self.mode {
            Mode::Rustls(u) => u.read(fd, scratch, self.ktls == KtlsStatus::Pending),
            Mode::Kernel(_) => kernel_read(fd, scratch),
            Mode::Failed => Err(failed()),
        };
        let r = self.fail_on_fatal(r)?;
        if r.handshake_done
            && let Mode::Rustls(u) = &self.mode
        {
            self.alpn_http11 = u.conn.alpn_protocol() == Some(crate::tls::ALPN_HTTP11);
        }
        if !r.eof {
            let r2 = self.maybe_enable_ktls(fd);
            self.fail_on_fatal(r2)?;
        }
        Ok(r)
    }

    /// Encrypts and writes the plaintext in `plain` (the outbox's slices)
    /// after any ciphertext still pending; under kTLS one `writev` of
    /// `plain`. `scratch` is the shard's buffer (encryption space).
    ///
    /// Pass [`TlsWrite::accepted`] to `Outbox::consume`. Plaintext before
    /// the handshake lets the server send data is an error (the shard has
    /// nothing to send before it has read a request). Errors as
    /// [`TlsConn::read`].
    pub fn write(
        &mut self,
        fd: RawFd,
        plain: &[IoSlice<'_>],
        scratch: &mut [u8],
    ) -> io::Result<TlsWrite> {
        check_scratch(scratch)?;
        if self.ktls == KtlsStatus::Pending {
            let r = match &mut self.mode {
                Mode::Rustls(u) => u.flush(fd).map(|_| ()),
                _ => Ok(()),
            };
            self.fail_on_fatal(r)?;
            let r = self.maybe_enable_ktls(fd);
            self.fail_on_fatal(r)?;
        }
        let r = match &mut self.mode {
            Mode::Rustls(u) => u.write(fd, plain, scratch),
            Mode::Kernel(k) => kernel_write(k, fd, plain),
            Mode::Failed => Err(failed()),
        };
        self.fail_on_fatal(r)
    }

    /// Writes pending ciphertext (handshake flight, a tail the socket
    /// refused). `Ok(true)` when nothing is left.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
        let r = match &mut self.mode {
            Mode::Rustls(u) => u.flush(fd),
            Mode::Kernel(_) => Ok(true),
            Mode::Failed => Err(failed()),
        };
        self.fail_on_fatal(r)
    }

    /// Sends close_notify (once), before the shard half-closes the socket
    /// after its close frame. `Ok(true)` when it left (or there is nothing
    /// to send: mid-handshake or after a failure); `Ok(false)` when part
    /// of it waits in [`TlsConn::wants_write`].
    pub fn close_notify(&mut self, fd: RawFd) -> io::Result<bool> {
        if self.close_notify_sent {
            return self.flush(fd).or(Ok(true));
        }
        self.close_notify_sent = true;
        match &mut self.mode {
            Mode::Rustls(u) => u.close_notify(fd),
            Mode::Kernel(_) => match ktls::send_record(fd, ktls::RECORD_ALERT, &ktls::CLOSE_NOTIFY)
            {
                Ok(n) => Ok(n == ktls::CLOSE_NOTIFY.len()),
                Err(e) if sys::would_block(&e) => Ok(false),
                Err(e) => Err(e),
            },
            Mode::Failed => Ok(true),
        }
    }

    /// Marks the connection dead on a fatal error.
    fn fail_on_fatal<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r
            && !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            )
        {
            self.mode = Mode::Failed;
        }
        r
    }

    /// Hands the record layer to the kernel when it is asked for and
    /// everything is in place; otherwise leaves it pending or records why
    /// not. An error means the keys were extracted and the kernel refused
    /// them (the connection is lost).
    fn maybe_enable_ktls(&mut self, fd: RawFd) -> io::Result<()> {
        if self.ktls != KtlsStatus::Pending {
            return Ok(());
        }
        let Mode::Rustls(u) = &mut self.mode else {
            return Ok(());
        };
        if !u.ready_for_kernel()? {
            return Ok(());
        }
        let Mode::Rustls(u) = std::mem::replace(&mut self.mode, Mode::Failed) else {
            return Ok(());
        };
        match ktls::try_enable_ktls(fd, u.conn) {
            Ok(state) => {
                self.mode = Mode::Kernel(state);
                self.ktls = KtlsStatus::Active;
                Ok(())
            }
            Err(KtlsError::Unavailable { conn, reason }) => {
                self.mode = Mode::Rustls(Userspace {
                    conn,
                    rx_pending: Vec::new(),
                    tx_pending: Vec::new(),
                });
                self.ktls = KtlsStatus::Unavailable(reason);
                Ok(())
            }
            Err(KtlsError::Failed(e)) => Err(e),
        }
    }
}

fn check_scratch(scratch: &[u8]) -> io::Result<()> {
    if scratch.len() < MIN_SCRATCH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS scratch buffer smaller than MIN_SCRATCH",
        ));
    }
    Ok(())
}

/// Appends a handshake record rustls wants sent to `out`.
fn encode(
    out: &mut Vec<u8>,
    mut enc: EncodeTlsData<'_, rustls::server::ServerConnectionData>,
) -> io::Result<()> {
    let at = out.len();
    let need = match enc.encode(&mut []) {
        Err(EncodeError::InsufficientSize(s)) => s.required_size,
        Ok(_) => return Ok(()),
        Err(e) => return Err(io::Error::other(e)),
    };
    out.resize(at + need, 0);
    let n = enc.encode(&mut out[at..]).map_err(io::Error::other)?;
    out.truncate(at + n);
    Ok(())
}

/// Where the rustls state machine stopped.
enum Step {
    /// Waiting for more bytes, or free to write.
    Idle,
    /// The peer sent close_notify.
    PeerClosed,
}

impl Userspace {
    /// Drives the state machine over `incoming` until it needs more
    /// bytes: plaintext goes to `plain[*out..]`, handshake records to
    /// `tx_pending`. Returns the bytes of `incoming` consumed.
    fn process(
        conn: &mut UnbufferedServerConnection,
        tx_pending: &mut Vec<u8>,
        incoming: &mut [u8],
        plain: &mut [u8],
        out: &mut usize,
    ) -> (usize, Result<Step, rustls::Error>) {
        let mut start = 0;
        loop {
            let status = conn.process_tls_records(&mut incoming[start..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(s) => s,
                Err(e) => return (start + discard, Err(e)),
            };
            let step = match Self::step(state, tx_pending, plain, out, &mut discard) {
                Ok(step) => step,
                Err(e) => return (start + discard, Err(e)),
            };
            start += discard;
            if let Some(step) = step {
                return (start, Ok(step));
            }
        }
    }

    /// Handles one state of the machine; `None` to go on.
    fn step(
        state: ConnectionState<'_, '_, rustls::server::ServerConnectionData>,
        tx_pending: &mut Vec<u8>,
        plain: &mut [u8],
        out: &mut usize,
        discard: &mut usize,
    ) -> Result<Option<Step>, rustls::Error> {
        Ok(match state {
            ConnectionState::ReadTraffic(mut rt) => {
                while let Some(rec) = rt.next_record() {
                    let rec = rec?;
                    *discard += rec.discard;
                    let payload = rec.payload;
                    // Plaintext is never longer than the ciphertext it
                    // came from, and `plain` is as long as `incoming`.
                    let Some(dst) = plain.get_mut(*out..*out + payload.len()) else {
                        return Err(rustls::Error::General("plaintext overflow".into()));
                    };
                    dst.copy_from_slice(payload);
                    *out += payload.len();
                }
                None
            }
            ConnectionState::EncodeTlsData(enc) => {
                encode(tx_pending, enc).map_err(|e| rustls::Error::General(e.to_string()))?;
                None
            }
            ConnectionState::TransmitTlsData(t) => {
                // Sent by the caller after the loop, in order.
                t.done();
                None
            }
            ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                Some(Step::Idle)
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => Some(Step::PeerClosed),
            _ => {
                return Err(rustls::Error::General("unexpected TLS state".into()));
            }
        })
    }

    fn read(&mut self, fd: RawFd, scratch: &mut [u8], to_record_end: bool) -> io::Result<TlsRead> {
        let half = scratch.len() / 2;
        let (cipher, plain) = scratch.split_at_mut(half);
        let p = self.rx_pending.len();
        // When kTLS waits for a record boundary, read no further than the
        // end of the record already begun, so nothing is left over.
        let room = if to_record_end && p > 0 && !self.conn.is_handshaking() {
            record_remainder(&self.rx_pending).clamp(1, half - p)
        } else {
            half - p
        };
        let n = sys::read(fd, &mut cipher[p..p + room])?;
        let was_handshaking = self.conn.is_handshaking();
        if n == 0 {
            return Ok(TlsRead {
                plain: half..half,
                wire: 0,
                eof: true,
                drained: true,
                wants_write: !self.tx_pending.is_empty(),
                handshake_done: false,
            });
        }
        cipher[..p].copy_from_slice(&self.rx_pending);
        let end = p + n;
        let mut out = 0;
        let processed = Self::process(
            &mut self.conn,
            &mut self.tx_pending,
            &mut cipher[..end],
            plain,
            &mut out,
        );
        let (used, step) = match processed {
            (used, Ok(step)) => (used, step),
            (used, Err(e)) => {
                self.send_alert(fd, &mut cipher[used..end]);
                return Err(protocol_error(e));
            }
        };
        let eof = matches!(step, Step::PeerClosed);
        let rest = &cipher[used..end];
        if eof || rest.is_empty() {
            self.rx_pending = Vec::new();
        } else if rest.len() > MAX_RX_PENDING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            ));
        } else {
            self.rx_pending.clear();
            self.rx_pending.extend_from_slice(rest);
        }
        self.flush(fd)?;
        Ok(TlsRead {
            plain: half..half + out,
            wire: n,
            eof,
            drained: n < room,
            wants_write: !self.tx_pending.is_empty(),
            handshake_done: was_handshaking && !self.conn.is_handshaking(),
        })
    }

    /// After a protocol error: encodes what rustls still has queued and
    /// makes one attempt to send it. That is the alert, preceded by any
    /// handshake records the failing message produced before it failed
    /// (a TLS 1.3 ServerHello comes before the ALPN check, so the client
    /// gets the ServerHello and then the alert encrypted under the
    /// handshake keys). `rest` is the unconsumed input: once the queue is
    /// empty rustls would only return its stored error for it, so the loop
    /// stops at the first state that is not output.
    fn send_alert(&mut self, fd: RawFd, rest: &mut [u8]) {
        for _ in 0..8 {
            match self.conn.process_tls_records(rest).state {
                Ok(ConnectionState::EncodeTlsData(enc)) => {
                    if encode(&mut self.tx_pending, enc).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        if !self.tx_pending.is_empty() {
            let _ = sys::write(fd, &self.tx_pending);
        }
    }

    /// Writes pending ciphertext; `Ok(true)` when none is left.
    fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
        while !self.tx_pending.is_empty() {
            match sys::write(fd, &self.tx_pending) {
                Ok(n) if n == self.tx_pending.len() => self.tx_pending = Vec::new(),
                Ok(n) => {
                    self.tx_pending.drain(..n);
                    return Ok(false);
                }
                Err(e) if sys::would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Brings the state machine to "may write", encoding anything it
    /// wants sent first (e.g. a key update) into `tx_pending`.
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
        ) -> R,
    ) -> io::Result<R> {
        for _ in 0..8 {
            let status = self.conn.process_tls_records(&mut self.rx_pending[..]);
            let discard = status.discard;
            let state = status.state.map_err(protocol_error)?;
            match state {
                ConnectionState::WriteTraffic(mut wt) => {
                    let r = f(&mut wt);
                    self.rx_pending.drain(..discard);
                    return Ok(r);
                }
                ConnectionState::EncodeTlsData(enc) => encode(&mut self.tx_pending, enc)?,
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::BlockedHandshake => {
                    return Err(io::Error::other("TLS handshake not complete"));
                }
                ConnectionState::Closed => {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS closed"));
                }
                _ => return Err(io::Error::other("unexpected TLS state")),
            }
            self.rx_pending.drain(..discard);
        }
        Err(io::Error::other("TLS state machine did not settle"))
    }

    fn write(
        &mut self,
        fd: RawFd,
        plain: &[IoSlice<'_>],
        scratch: &mut [u8],
    ) -> io::Result<TlsWrite> {
        if !self.flush(fd)? {
            return Ok(TlsWrite {
                accepted: 0,
                wire: 0,
                blocked: true,
            });
        }
        let total: usize = plain.iter().map(|s| s.len()).sum();
        if total == 0 {
            return Ok(TlsWrite {
                accepted: 0,
                wire: 0,
                blocked: false,
            });
        }
        let half = scratch.len() / 2;
        let (stage, out) = scratch.split_at_mut(half);
        // Room for each record's overhead, and for a key update rustls
        // may put in front of the data.
        let batch = TX_BATCH.min(half - 256 - (half / MAX_PLAINTEXT + 1) * RECORD_OVERHEAD);
        let mut k = 0;
        for s in plain {
            let take = s.len().min(batch - k);
            stage[k..k + take].copy_from_slice(&s[..take]);
            k += take;
            if k == batch {
                break;
            }
        }
        let c = self
            .with_write_traffic(|wt| wt.encrypt(&stage[..k], out))?
            .map_err(|e| match e {
                EncryptError::EncryptExhausted => {
                    io::Error::new(io::ErrorKind::BrokenPipe, "TLS sequence numbers exhausted")
                }
                e => io::Error::other(e),
            })?;
        if !self.tx_pending.is_empty() {
            // A record rustls queued (key update) goes first.
            self.tx_pending.extend_from_slice(&out[..c]);
            let before = self.tx_pending.len();
            let done = self.flush(fd)?;
            let left = self.tx_pending.len();
            return Ok(TlsWrite {
                accepted: k,
                wire: before - left,
                blocked: !done,
            });
        }
        let w = loop {
            match sys::write(fd, &out[..c]) {
                Ok(w) => break w,
                Err(e) if sys::would_block(&e) => break 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if w < c {
            self.tx_pending.extend_from_slice(&out[w..c]);
        }
        Ok(TlsWrite {
            accepted: k,
            wire: w,
            blocked: w < c,
        })
    }

    fn close_notify(&mut self, fd: RawFd) -> io::Result<bool> {
        if self.conn.is_handshaking() {
            return Ok(true);
        }
        let mut buf = [0u8; 64];
        let n = self
            .with_write_traffic(|wt| wt.queue_close_notify(&mut buf))?
            .map_err(io::Error::other)?;
        self.tx_pending.extend_from_slice(&buf[..n]);
        self.flush(fd)
    }

    /// Whether the record layer can move to the kernel now: handshake
    /// over, nothing buffered either way, nothing rustls still wants sent.
    fn ready_for_kernel(&mut self) -> io::Result<bool> {
        if self.conn.is_handshaking() || !self.rx_pending.is_empty() || !self.tx_pending.is_empty()
        {
            return Ok(false);
        }
        self.with_write_traffic(|_| ())?;
        Ok(self.tx_pending.is_empty())
    }
}

/// Bytes still missing from the last record begun in `buf` (a run of
/// whole records followed by a partial one).
fn record_remainder(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let Some(h) = buf.get(at..at + 5) else {
            return at + 5 - buf.len();
        };
        let end = at + 5 + u16::from_be_bytes([h[3], h[4]]) as usize;
        if end > buf.len() {
            return end - buf.len();
        }
        at = end;
    }
}

fn kernel_read(fd: RawFd, scratch: &mut [u8]) -> io::Result<TlsRead> {
    let (n, record) = ktls::recv(fd, scratch)?;
    let mut r = TlsRead {
        plain: 0..0,
        wire: n,
        eof: n == 0,
        // A short read may stop at a non-data record: read until EAGAIN.
        drained: n == 0,
        wants_write: false,
        handshake_done: false,
    };
    match record {
        _ if n == 0 => {}
        ktls::RECORD_APPLICATION_DATA => r.plain = 0..n,
        ktls::RECORD_ALERT if n >= 2 && scratch[1] == 0 => r.eof = true,
        ktls::RECORD_ALERT => {
            return Err(protocol_error(rustls::Error::AlertReceived(
                rustls::AlertDescription::from(scratch.get(1).copied().unwrap_or(0)),
            )));
        }
        ktls::RECORD_HANDSHAKE => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS post-handshake message (key update) under kTLS",
            ));
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected TLS record type {other} under kTLS"),
            ));
        }
    }
    Ok(r)
}

fn kernel_write(k: &mut KtlsState, fd: RawFd, plain: &[IoSlice<'_>]) -> io::Result<TlsWrite> {
    let want: usize = plain.iter().map(|s| s.len()).sum();
    if want == 0 {
        return Ok(TlsWrite {
            accepted: 0,
            wire: 0,
            blocked: false,
        });
    }
    match sys::writev(fd, plain) {
        Ok(n) => {
            k.count_write(n);
            Ok(TlsWrite {
                accepted: n,
                wire: n,
                blocked: n < want,
            })
        }
        Err(e) if sys::would_block(&e) => Ok(TlsWrite {
            accepted: 0,
            wire: 0,
            blocked: true,
        }),
        Err(e) => Err(e),
    }
}
