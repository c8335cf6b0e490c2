//! History kept in JetStream (`history_backend = "jetstream"`): what one
//! stored publication looks like, the names of its stream and message id,
//! and the answers the NATS worker gives the channel's home.
//!
//! Each namespace with the backend has one stream,
//! `wsedge_<cluster>_<namespace>`, over `wsedge.<cluster>.hist.<ns>.>`,
//! with `max_messages_per_subject` = `history_size` and `max_age` =
//! `history_ttl`: JetStream trims each channel's subject to the history a
//! home shard would keep in memory. A message is one [`StoredPub`] in
//! postcard; its `Nats-Msg-Id` is [`msg_id`] (epoch and offset), so a
//! write repeated after a lost acknowledgement is stored once.
//!
//! The home writes a publication before it delivers it and delivers in
//! offset order as the acknowledgements come back, so everything a client
//! has seen is in the stream; a node that becomes the channel's home reads
//! the stream's tail back ([`StoreAnswer::Loaded`]) and continues the same
//! epoch at the next offset.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::members::StoredMember;
use crate::engine::hub::Position;
use crate::engine::wire::publication::PubData;

/// One publication as stored in the channel's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPub {
    /// The channel's epoch when it was published.
    pub epoch: u64,
    /// Its offset.
    pub offset: u64,
    /// Its payload.
    pub data: PubData,
    /// The publisher's idempotency key, if it gave one: a home that reads
    /// the tail back remembers it, so a retry after a node's death is
    /// still answered with the original offset.
    pub key: Option<Box<str>>,
}

impl StoredPub {
    /// The message body (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a StoredPub always serialises")
    }

    /// Reads a message body back; `None` for bytes that are not one.
    pub fn decode(bytes: &[u8]) -> Option<StoredPub> {
        postcard::from_bytes(bytes).ok()
    }
}

/// The header that marks a stored message as the floor `history_remove`
/// left (a [`StoredPub`] with no data at the channel's position then),
/// not a publication.
pub const FLOOR_HEADER: &str = "Wsedge-Floor";

/// The `Nats-Msg-Id` of a floor marker at `epoch`, `offset`.
pub fn floor_id(epoch: u64, offset: u64) -> String {
    format!("{epoch:016x}.{offset}.floor")
}

/// The `Nats-Msg-Id` of a stored publication: its epoch and offset. Unique
/// per publication, so only a repeated write of the same publication is
/// dropped by JetStream's duplicate window.
pub fn msg_id(epoch: u64, offset: u64) -> String {
    format!("{epoch:016x}.{offset}")
}

/// The stream that keeps namespace `ns`'s history in cluster `cluster`.
pub fn stream_name(cluster: &str, ns: &str) -> String {
    format!("wsedge_{cluster}_{ns}")
}

/// What the NATS worker answers the channel's home shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAnswer {
    /// The write of `channel`'s publication at `offset` was acknowledged
    /// (`ok`) or failed (NATS down, timeout, refused).
    Persisted {
        /// The channel.
        channel: Arc<str>,
        /// The publication's offset.
        offset: u64,
        /// Whether JetStream stored it.
        ok: bool,
    },
    /// `channel`'s stored tail, oldest first (every message of its subject
    /// that decoded), or `Err` when it could not be read.
    Loaded {
        /// The channel.
        channel: Arc<str>,
        /// The tail (publications only; a floor left by `history_remove`
        /// is in `floor`).
        result: Result<Vec<StoredPub>, StoreUnavailable>,
        /// Where `history_remove` cut the channel's history, if its
        /// marker is still in the stream: nothing at or before it is.
        floor: Option<Position>,
        /// Its members in the presence bucket (`crate::engine::cluster::members`),
        /// read with the tail for a namespace that counts members; empty
        /// otherwise, or when the tail could not be read.
        members: Vec<StoredMember>,
    },
    /// A write of `channel`'s members to the presence bucket was not
    /// acknowledged (NATS down, timeout): the home writes them whole.
    MembersUnwritten {
        /// The channel.
        channel: Arc<str>,
    },
    /// `history_remove` of a stored channel: its floor marker was written
    /// and everything before it purged (`ok`), or not.
    Purged {
        /// The channel.
        channel: Arc<str>,
        /// Whether the stream holds nothing before the floor now.
        ok: bool,
    },
}

impl StoreAnswer {
    /// The channel it is about.
    pub fn channel(&self) -> &Arc<str> {
        match self {
            StoreAnswer::Persisted { channel, .. }
            | StoreAnswer::Loaded { channel, .. }
            | StoreAnswer::MembersUnwritten { channel }
            | StoreAnswer::Purged { channel, .. } => channel,
        }
    }
}

/// The stream could not be read (NATS down, timeout, no stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnavailable;

/// What a home makes of a stored tail: the epoch and the offsets it can
/// continue from. The usable tail is the newest epoch's publications after
/// the last hole (a hole is a publication that was never stored, or that
/// was written but failed; nothing before it may be offered as complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The epoch to continue (the newest stored one).
    pub epoch: u64,
    /// The publications to keep as history, contiguous, oldest first.
    pub publications: Vec<StoredPub>,
    /// The offset `history_remove` cut the history at, when the
    /// publications follow on from it (0: none): it counts as the
    /// position before the first publication.
    pub floor: u64,
}

impl Tail {
    /// The usable tail of `stored` (oldest first, as read); `None` when
    /// nothing is stored.
    pub fn of(stored: Vec<StoredPub>) -> Option<Tail> {
        Tail::with_floor(stored, None)
    }

    /// [`Tail::of`], with the floor marker read beside the publications:
    /// a floor of the tail's epoch that the publications follow on from
    /// is the position before them (with none after it, the tail's top).
    pub fn with_floor(mut stored: Vec<StoredPub>, floor: Option<Position>) -> Option<Tail> {
        let epoch = match (stored.last(), floor) {
            (Some(p), _) => p.epoch,
            (None, Some(f)) => f.epoch,
            (None, None) => return None,
        };
        stored.retain(|p| p.epoch == epoch);
        let floor = floor.filter(|f| f.epoch == epoch).map(|f| f.offset);
        if let Some(f) = floor {
            stored.retain(|p| p.offset > f);
        }
        // After the last break in the offsets.
        let start = stored
            .windows(2)
            .rposition(|w| w[1].offset != w[0].offset + 1)
            .map_or(0, |i| i + 1);
        stored.drain(..start);
        let floor = match (floor, stored.first()) {
            (Some(f), None) => f,
            (Some(f), Some(first)) if start == 0 && first.offset == f + 1 => f,
            _ => 0,
        };
        Some(Tail {
            epoch,
            publications: stored,
            floor,
        })
    }

    /// The offset of the newest publication (or the floor, with none
    /// after it).
    pub fn top(&self) -> u64 {
        self.publications.last().map_or(self.floor, |p| p.offset)
    }

    /// The first offset the tail accounts for: its first publication's,
    /// or the one after its floor.
    pub fn first(&self) -> Option<u64> {
        match self.publications.first() {
            Some(p) => Some(p.offset),
            None if self.floor > 0 => Some(self.floor + 1),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn p(epoch: u64, offset: u64) -> StoredPub {
        StoredPub {
            epoch,
            offset,
            data: PubData {
                bytes: Bytes::from_static(b"{}"),
                is_json: true,
            },
            key: None,
        }
    }

    #[test]
    fn a_stored_publication_round_trips_and_garbage_is_refused() {
        let mut s = p(7, 42);
        s.key = Some("k-1".into());
        assert_eq!(StoredPub::decode(&s.encode()), Some(s));
        assert_eq!(StoredPub::decode(&[0xff; 3]), None);
        assert_eq!(StoredPub::decode(&[]), None);
    }

    #[test]
    fn the_tail_is_the_newest_epoch_after_its_last_hole() {
        assert_eq!(Tail::of(Vec::new()), None);
        let t = Tail::of(vec![p(1, 5), p(1, 6), p(2, 1), p(2, 2), p(2, 4), p(2, 5)]).unwrap();
        assert_eq!(t.epoch, 2);
        let offsets: Vec<u64> = t.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![4, 5]);
        assert_eq!(t.top(), 5);
        let whole = Tail::of(vec![p(3, 8), p(3, 9), p(3, 10)]).unwrap();
        assert_eq!(whole.publications.len(), 3);
        assert_eq!(whole.top(), 10);
    }

    #[test]
    fn a_floor_is_the_position_before_what_follows_it() {
        let at = |epoch, offset| Some(Position { epoch, offset });
        // Removed at 7 with nothing after: the tail stands at 7.
        let t = Tail::with_floor(Vec::new(), at(3, 7)).unwrap();
        assert_eq!((t.epoch, t.top(), t.first()), (3, 7, Some(8)));
        assert!(t.publications.is_empty());
        // Publications after it follow on.
        let t = Tail::with_floor(vec![p(3, 8), p(3, 9)], at(3, 7)).unwrap();
        assert_eq!((t.floor, t.top(), t.first()), (7, 9, Some(8)));
        // A hole after the floor: the floor no longer accounts for it.
        let t = Tail::with_floor(vec![p(3, 9), p(3, 10)], at(3, 7)).unwrap();
        assert_eq!((t.floor, t.first()), (0, Some(9)));
        // A floor of an older epoch does not count.
        let t = Tail::with_floor(vec![p(4, 1)], at(3, 7)).unwrap();
        assert_eq!((t.epoch, t.floor, t.top()), (4, 0, 1));
        assert_eq!(Tail::with_floor(Vec::new(), None), None);
        assert_ne!(floor_id(3, 7), msg_id(3, 7));
    }

    #[test]
    fn names_are_what_the_stream_and_dedupe_need() {
        assert_eq!(stream_name("prod", "chat"), "wsedge_prod_chat");
        assert_eq!(msg_id(0xab, 3), "00000000000000ab.3");
        assert_ne!(msg_id(1, 23), msg_id(12, 3));
    }
}
