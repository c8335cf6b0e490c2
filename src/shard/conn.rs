//! One client connection as its shard holds it: the socket, where it is in
//! its life, and the small engine state machines that drive it. Kept small
//! on purpose (no read buffer, no task, no timer): an idle connection costs
//! this struct plus its subscriptions.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;

use crate::engine::heartbeat::Heartbeat;
use crate::engine::outbox::Outbox;
use crate::engine::session::Session;
use crate::engine::subs::ConnRef;
use crate::engine::ws::deflate::Deflate;
use crate::engine::ws::frame::FrameDecoder;
use crate::engine::ws::handshake::{Endpoint, WireFormat};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// WebSocket open.
    Open,
    /// Our close frame (or HTTP refusal) is queued or sent; waiting for the
    /// peer's close and/or end of stream, until `deadline`.
    Closing,
}

/// What a connection holds only some of the time.
pub enum Extra {
    /// Upgrade request bytes received so far.
    Request(Vec<u8>),
    /// Who the client is.
    Identity(Identity),
}

/// Who a client said it is at `connect`.
pub struct Identity {
    /// User id.
    pub(crate) user: Arc<str>,
    /// Connection info (JSON text).
    pub(crate) info: Option<Bytes>,
}

/// A connection slot.
pub struct Conn {
    pub(crate) fd: OwnedFd,
    pub(crate) generation: u32,
    pub(crate) phase: Phase,
    pub(crate) endpoint: Endpoint,
    pub(crate) format: WireFormat,
    /// permessage-deflate, if negotiated.
    pub(crate) deflate: Option<Deflate>,
    /// Listed in the shard's dirty list for this turn.
    pub(crate) dirty: bool,
    /// Half-close (FIN) once the outbox is empty.
    pub(crate) shutdown_after_flush: bool,
    /// FIN sent.
    pub(crate) write_shut: bool,
    /// In Closing: still parse frames, looking for the peer's close.
    pub(crate) awaiting_peer_close: bool,
    /// Listed in the shard's read backlog (more input may be waiting).
    pub(crate) in_backlog: bool,
    /// Deadline (shard tick) for the handshake or the close.
    pub(crate) deadline: u32,
    pub(crate) heartbeat: Heartbeat,
    /// Command-level state: connected, command rate.
    pub(crate) session: Session,
    pub(crate) decoder: FrameDecoder,
    /// The partial upgrade request while in `Handshake`; afterwards who
    /// the client said it is, if it said. Boxed so an anonymous open
    /// connection pays 8 bytes for both.
    pub(crate) extra: Option<Box<Extra>>,
    pub(crate) outbox: Outbox,
}

impl Conn {
    /// A freshly accepted connection.
    pub(crate) fn new(fd: OwnedFd, generation: u32, deadline: u32, heartbeat: Heartbeat) -> Self {
        Self {
            fd,
            generation,
            phase: Phase::Handshake,
            endpoint: Endpoint::Client,
            format: WireFormat::Json,
            deflate: None,
            dirty: false,
            shutdown_after_flush: false,
            write_shut: false,
            awaiting_peer_close: false,
            in_backlog: false,
            deadline,
            heartbeat,
            session: Session::default(),
            decoder: FrameDecoder::new(),
            extra: None,
            outbox: Outbox::default(),
        }
    }

    /// The partial upgrade request, if one is being collected.
    pub(crate) fn request_mut(&mut self) -> Option<&mut Vec<u8>> {
        match self.extra.as_deref_mut() {
            Some(Extra::Request(r)) => Some(r),
            _ => None,
        }
    }

    /// Takes the partial upgrade request, if any.
    pub(crate) fn take_request(&mut self) -> Option<Vec<u8>> {
        match self.extra.take().map(|b| *b) {
            Some(Extra::Request(r)) => Some(r),
            other => {
                self.extra = other.map(Box::new);
                None
            }
        }
    }

    /// The user and connection info given at `connect`, if any.
    pub(crate) fn identity(&self) -> Option<&Identity> {
        match self.extra.as_deref() {
            Some(Extra::Identity(i)) => Some(i),
            _ => None,
        }
    }

    /// The socket.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the connection takes the shared compressed publications
    /// (compressed once with a 15-bit window).
    pub(crate) fn takes_shared_deflate(&self) -> bool {
        self.deflate.is_some_and(|d| d.server_window_bits == 15)
    }
}

/// epoll token of the listener.
pub(crate) const TOKEN_LISTENER: u64 = u64::MAX;
/// epoll token of the inbox doorbell.
pub(crate) const TOKEN_DOORBELL: u64 = u64::MAX - 1;

/// The epoll token of a connection: generation and slot.
pub(crate) fn token(c: ConnRef) -> u64 {
    ((c.generation as u64) << 32) | c.idx as u64
}

/// The connection a token names.
pub(crate) fn conn_ref(token: u64) -> ConnRef {
    ConnRef {
        idx: token as u32,
        generation: (token >> 32) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_collide_with_specials() {
        let c = ConnRef {
            idx: 7,
            generation: 0xfffe_fffe,
        };
        assert_eq!(conn_ref(token(c)), c);
        assert_ne!(token(c), TOKEN_LISTENER);
        assert_ne!(token(c), TOKEN_DOORBELL);
    }

    #[test]
    fn connection_state_stays_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 128, "Conn grew to {size} bytes");
    }
}
