//! One client connection as its shard holds it: the socket, the shell's
//! bookkeeping, and the engine [`Session`] that holds its protocol state.
//! Kept small on purpose (no read buffer, no task, no timer): an idle
//! connection costs this struct plus its subscriptions.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::engine::session::{Session, SessionConfig};
use crate::engine::subs::ConnRef;

/// A connection slot.
pub struct Conn {
    pub(crate) fd: OwnedFd,
    pub(crate) generation: u32,
    /// Listed in the shard's dirty list for this turn.
    pub(crate) dirty: bool,
    /// FIN sent.
    pub(crate) write_shut: bool,
    /// Listed in the shard's read backlog (more input may be waiting).
    pub(crate) in_backlog: bool,
    /// `rpc` calls asked and not yet answered (at most `[rpc]
    /// max_in_flight`).
    pub(crate) rpc_in_flight: u16,
    /// Everything the protocol knows: phase, frames, heartbeat, commands,
    /// identity, and the output waiting for the socket.
    pub(crate) session: Session,
}

impl Conn {
    /// A connection accepted at tick `now`.
    pub(crate) fn new(fd: OwnedFd, generation: u32, now: u32, cfg: &SessionConfig) -> Self {
        Self {
            fd,
            generation,
            dirty: false,
            write_shut: false,
            in_backlog: false,
            rpc_in_flight: 0,
            session: Session::new(now, cfg),
        }
    }

    /// The socket.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
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
        assert!(size <= 120, "Conn grew to {size} bytes");
    }
}
