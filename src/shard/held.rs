//! Commands that arrive while a `connect` waits for its credentials (a
//! ticket being redeemed in Redis) are held, in order, and run once the
//! `connect` is answered: a client may pipeline `connect` and `subscribe`
//! whichever credentials it uses, as it can with a JWT (checked at once).
//!
//! Only a connection with a pending `connect` holds anything, for as long
//! as one Redis round trip (bounded by the ticket timeout and the connect
//! deadline), and at most `max_message_size` bytes of messages: no more
//! than one message of the largest size, which any connection may already
//! have buffered while it arrives. A client that sends more before its
//! `connect` is answered is closed with 3503 (flood), counted as that close
//! code.

use std::collections::HashMap;

use crate::engine::codes::CloseReason;
use crate::engine::subs::ConnRef;

use super::core::Shard;

/// One held message: its opcode (text or binary), how many of its
/// commands already ran (the `connect` and any before it), and its bytes
/// (inflated, if it was compressed).
struct HeldMessage {
    text: bool,
    skip: usize,
    payload: Box<[u8]>,
}

/// The messages each pending connection sent, oldest first.
#[derive(Default)]
pub(crate) struct Held {
    by_conn: HashMap<ConnRef, (usize, Vec<HeldMessage>)>,
}

impl Held {
    /// Whether anything is held (the common case: nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    /// Drops what `c` held (it closed).
    pub(crate) fn forget(&mut self, c: ConnRef) {
        self.by_conn.remove(&c);
    }
}

impl Shard {
    /// Holds `payload` (from its command `skip` on) for `c` until its
    /// `connect` is answered; over `max_message_size` held, closes `c`
    /// (3503).
    pub(crate) fn hold(&mut self, c: ConnRef, text: bool, skip: usize, payload: &[u8]) {
        let limit = self.session_cfg.max_message_size;
        let (bytes, msgs) = self.held.by_conn.entry(c).or_default();
        *bytes += payload.len();
        if *bytes > limit {
            self.held.forget(c);
            self.close_conn(c, CloseReason::Flood);
            return;
        }
        msgs.push(HeldMessage {
            text,
            skip,
            payload: payload.into(),
        });
    }

    /// The `connect` of `c` was answered (accepted or refused for now):
    /// runs what it held, in order. A held message may itself hold again
    /// (a second `connect` after a temporary refusal); the rest then queue
    /// behind it as they would have arrived.
    pub(crate) fn release_held(&mut self, c: ConnRef) {
        if self.held.is_empty() {
            return;
        }
        let Some((_, msgs)) = self.held.by_conn.remove(&c) else {
            return;
        };
        for m in msgs {
            if !self.conn_mut(c).is_some_and(|conn| conn.session.is_open()) {
                return; // refused for good, or closed by one of them
            }
            self.run_message(c, m.text, &m.payload, m.skip);
        }
    }
}
