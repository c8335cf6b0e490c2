//! The requests waiting for their reply, by token: one reply
//! subscription (`<inbox>.*`) serves every request, and each request's
//! reply subject is `<inbox>.<token>`.
//!
//! `async-nats`'s own request multiplexer keeps the sender of a request
//! that timed out until a reply comes, which may be never; here the
//! waiting request's [`Waiting`] guard takes its entry out when it ends,
//! however it ends, so the table holds at most the calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::Message;
use tokio::sync::oneshot;

/// The table of waiting requests, shared by the worker's tasks (all on
/// its one thread: the lock is never contended).
#[derive(Clone, Default)]
pub(super) struct Pending {
    inner: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    next: u64,
    waiting: HashMap<u64, oneshot::Sender<Message>>,
}

/// One request's entry: its token and where its reply arrives. Dropping
/// it forgets the entry.
pub(super) struct Waiting {
    pending: Pending,
    /// The last token of the reply subject.
    pub(super) token: u64,
    /// The reply, once it came.
    pub(super) reply: oneshot::Receiver<Message>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.pending.lock().waiting.remove(&self.token);
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the map half
        // changed (every operation is one map call).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new entry.
    pub(super) fn open(&self) -> Waiting {
        let (tx, rx) = oneshot::channel();
        let mut t = self.lock();
        t.next = t.next.wrapping_add(1);
        let token = t.next;
        t.waiting.insert(token, tx);
        Waiting {
            pending: self.clone(),
            token,
            reply: rx,
        }
    }

    /// Hands a message that arrived on `<inbox>.<token>` to its request;
    /// false when none waits for it (late, or not ours).
    pub(super) fn answer(&self, token: &str, msg: Message) -> bool {
        let Ok(token) = token.parse::<u64>() else {
            return false;
        };
        let tx = self.lock().waiting.remove(&token);
        tx.is_some_and(|tx| tx.send(msg).is_ok())
    }

    /// Requests waiting now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &'static [u8]) -> Message {
        Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: bytes::Bytes::from_static(payload),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn replies_find_their_request_and_ended_requests_leave_nothing() {
        let p = Pending::default();
        let a = p.open();
        let mut b = p.open();
        assert_ne!(a.token, b.token);
        assert_eq!(p.len(), 2);
        assert!(p.answer(&b.token.to_string(), msg(b"b")));
        assert_eq!(b.reply.try_recv().unwrap().payload.as_ref(), b"b");
        assert!(
            !p.answer(&b.token.to_string(), msg(b"again")),
            "answered once"
        );
        assert!(!p.answer("x", msg(b"?")));
        // A request that timed out: its entry goes with it.
        let late = a.token.to_string();
        drop(a);
        drop(b);
        assert_eq!(p.len(), 0);
        assert!(!p.answer(&late, msg(b"late")));
    }
}
