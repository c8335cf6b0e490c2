//! Talking to the other shards: their inboxes, and what this shard owes a
//! peer whose inbox was full. Order is kept per peer: once anything is
//! owed to a peer, later messages queue behind it (docs/THREADS.md).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bridge::{Inbox, ShardMsg};
use crate::engine::router::Msg;
use crate::metrics::ShardMetrics;

/// Messages a shard may hold for a peer whose inbox is full, for the kinds
/// that may be refused.
pub(crate) const OWED_MAX: usize = 65_536;

/// Every peer's inbox and the messages owed to it.
pub(crate) struct Peers {
    inboxes: Arc<[Arc<Inbox>]>,
    owed: Vec<VecDeque<ShardMsg>>,
}

impl Peers {
    /// The shards reachable through `inboxes` (this one included).
    pub(crate) fn new(inboxes: Arc<[Arc<Inbox>]>) -> Self {
        let owed = (0..inboxes.len()).map(|_| VecDeque::new()).collect();
        Self { inboxes, owed }
    }

    /// Sends a router message to shard `to`, in order with what is owed to
    /// it. Gives the message back when it is refusable and the owed queue is
    /// full.
    pub(crate) fn send(&mut self, metrics: &ShardMetrics, to: usize, msg: Msg) -> Result<(), Msg> {
        let msg = ShardMsg::Router(msg);
        let msg = if self.owed[to].is_empty() {
            match self.inboxes[to].push(msg) {
                Ok(()) => return Ok(()),
                Err(msg) => {
                    metrics.queue_full(msg.kind());
                    msg
                }
            }
        } else {
            msg
        };
        let ShardMsg::Router(m) = msg else {
            unreachable!("wrapped above")
        };
        if m.refusable() && self.owed[to].len() >= OWED_MAX {
            return Err(m);
        }
        self.owed[to].push_back(ShardMsg::Router(m));
        Ok(())
    }

    /// Retries what is owed, oldest first. For a peer owed nothing any
    /// more, `lost(to)` gives the loss notices to queue next (they go after
    /// every delivery queued before them, and are never refused).
    pub(crate) fn retry(&mut self, mut lost: impl FnMut(usize) -> Vec<Arc<str>>) {
        for to in 0..self.owed.len() {
            while let Some(msg) = self.owed[to].pop_front() {
                if let Err(msg) = self.inboxes[to].push(msg) {
                    self.owed[to].push_front(msg);
                    break;
                }
            }
            if self.owed[to].is_empty() {
                for channel in lost(to) {
                    self.owed[to].push_back(ShardMsg::Router(Msg::Lost { channel }));
                }
            }
        }
    }
}
