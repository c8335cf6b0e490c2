//! The window of recent `op_id`s of one story, for answering a resent
//! update (after a lost reply or a reconnect) with its original result
//! instead of applying it twice (ShareDB's `src`/`seq`).
//!
//! Keys are per user, so a resend from the user's new connection is
//! recognised. Anonymous connections share the user id `""`, so theirs
//! are keyed by client id instead: no false duplicates between two
//! anonymous clients, at the price of no deduplication across an
//! anonymous reconnect. The window holds the last `cap` accepted updates,
//! oldest forgotten first; a key is recorded once (a duplicate is never
//! recorded again), so the FIFO has no stale records.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::engine::wire::ClientInfo;

/// What an accepted update was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Applied {
    /// The section it wrote.
    pub section: Arc<str>,
    /// The version it got.
    pub version: u64,
}

type Keys = HashMap<Arc<str>, HashMap<Arc<str>, Applied>>;

/// Recent `op_id`s of one story.
#[derive(Debug, Default)]
pub(super) struct OpWindow {
    cap: usize,
    /// Index 0: by user; index 1: anonymous, by client id.
    keys: [Keys; 2],
    order: VecDeque<(bool, Arc<str>, Arc<str>)>,
}

/// Which map and owner key an author's op_ids live under.
fn owner(who: &ClientInfo) -> (bool, &Arc<str>) {
    if who.user.is_empty() {
        (true, &who.client)
    } else {
        (false, &who.user)
    }
}

impl OpWindow {
    /// An empty window of at most `cap` op_ids (0: no deduplication).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// What `op_id` from `who` was given, if it is remembered.
    pub fn get(&self, who: &ClientInfo, op_id: &str) -> Option<&Applied> {
        let (anon, key) = owner(who);
        self.keys[anon as usize].get(&**key)?.get(op_id)
    }

    /// Remembers an accepted update; forgets the oldest beyond the cap.
    /// The caller has checked the key is not remembered.
    pub fn record(&mut self, who: &ClientInfo, op_id: &str, applied: Applied) {
        if self.cap == 0 {
            return;
        }
        let (anon, key) = owner(who);
        let op: Arc<str> = op_id.into();
        self.keys[anon as usize]
            .entry(key.clone())
            .or_default()
            .insert(op.clone(), applied);
        self.order.push_back((anon, key.clone(), op));
        while self.order.len() > self.cap {
            let Some((anon, key, op)) = self.order.pop_front() else {
                break;
            };
            let map = &mut self.keys[anon as usize];
            if let Some(ops) = map.get_mut(&key) {
                ops.remove(&op);
                if ops.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }

    /// op_ids remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }
}
