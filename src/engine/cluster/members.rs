//! Presence kept beside a stored channel's history, so that it follows
//! the channel to a new home: the member record, its key in the
//! JetStream key-value bucket, and the changes a home writes.
//!
//! The home of a channel stays the authority on its presence (joins,
//! leaves, states and their events are decided in its memory, queries
//! are answered from there). For a channel of a namespace with
//! `history_backend = "jetstream"` and `presence`, the home also writes
//! each member behind to the bucket `wsedge_<cluster>_presence`
//! (`KV_wsedge_<cluster>_presence` as a stream), key
//! `<channel hex>.<client hex>`, value one [`StoredMember`] in postcard.
//! A leave is a delete marker that expires a second later
//! ([`MARKER_TTL`]). A node that becomes the channel's home reads its
//! members back with the stored tail and keeps those whose node (and that
//! node's incarnation) is live: so a move needs no member to join again,
//! and the channel's subscribers follow it without recovering.
//!
//! Why a bucket in JetStream and not a Redis hash (the other store
//! measured, `bench/RESULTS.md`): a stored channel's home already reads
//! its tail from JetStream on a move, through the same worker; keeping
//! its members there makes the read-back one round trip to one service,
//! with no second dependency that could be down while the first is up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::subs::ConnRef;
use crate::engine::wire::ClientInfo;

/// How long a delete marker stays in the bucket (the shortest TTL
/// JetStream takes): long enough for no reader to see the deleted value
/// come back, short enough that churn leaves nothing behind.
pub const MARKER_TTL: Duration = Duration::from_secs(1);

/// How long a member record lives unless rewritten (the bucket's
/// `max_age`). Homes rewrite their channels' members every
/// [`REFRESH_EVERY`]; what no home rewrites (the channel's whole cluster
/// went down with members in it) leaves the bucket by itself.
pub const RECORD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How often a home rewrites the members of each channel it mirrors.
pub const REFRESH_EVERY: Duration = Duration::from_secs(8 * 3600);

/// The bucket of cluster `cluster`.
pub fn bucket_name(cluster: &str) -> String {
    format!("wsedge_{cluster}_presence")
}

/// The key prefix of `channel`'s members (`<channel hex>.`); a key is the
/// prefix and the client id in hex.
pub fn channel_prefix(channel: &str) -> String {
    let mut s = super::subject::channel_token(channel);
    s.push('.');
    s
}

/// The key of `client` in `channel`.
pub fn member_key(channel: &str, client: &str) -> String {
    let mut s = channel_prefix(channel);
    s.push_str(&super::subject::channel_token(client));
    s
}

/// One member of a channel, as the bucket keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMember {
    /// The client id.
    pub client: Arc<str>,
    /// The user id (empty: anonymous).
    pub user: Arc<str>,
    /// The connection's info (JSON text), if any.
    pub info: Option<Bytes>,
    /// The member's state, if any.
    pub state: Option<Arc<str>>,
    /// What was left of the state's TTL when written, in ms (`None`: the
    /// state does not expire). A home that reads it back keeps the state
    /// that long from then: never shorter than it had.
    pub state_ttl_ms: Option<u64>,
    /// The node whose connection it is.
    pub node: Arc<str>,
    /// That node's incarnation: a member of a restarted node is gone.
    pub incarnation: u64,
    /// The shard of that node holding the connection.
    pub shard: u32,
    /// The connection on that shard.
    pub conn: ConnRef,
}

impl StoredMember {
    /// The member's [`ClientInfo`].
    pub fn client_info(&self) -> ClientInfo {
        ClientInfo {
            client: self.client.clone(),
            user: self.user.clone(),
            info: self.info.clone(),
        }
    }

    /// The value written (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a StoredMember always serialises")
    }

    /// Reads a value back; `None` for bytes that are not one.
    pub fn decode(bytes: &[u8]) -> Option<StoredMember> {
        postcard::from_bytes(bytes).ok()
    }
}

/// One change to a channel's members in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// The member is (still) there: write its record.
    Put(StoredMember),
    /// The client is no longer a member: delete its key.
    Remove(Arc<str>),
}

/// What a home writes for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberWrite {
    /// The channel.
    pub channel: Arc<str>,
    /// Delete every key of the channel before the changes (a rewrite
    /// after a write was lost: the changes are then every member).
    pub whole: bool,
    /// The changes, in order.
    pub changes: Vec<MemberChange>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> StoredMember {
        StoredMember {
            client: "c-1".into(),
            user: "ann".into(),
            info: Some(Bytes::from_static(b"{\"name\":\"Ann\"}")),
            state: Some("typing".into()),
            state_ttl_ms: Some(4000),
            node: "n1".into(),
            incarnation: 0xfeed,
            shard: 1,
            conn: ConnRef {
                idx: 7,
                generation: 3,
            },
        }
    }

    #[test]
    fn a_record_round_trips_and_garbage_is_refused() {
        let m = member();
        assert_eq!(StoredMember::decode(&m.encode()), Some(m.clone()));
        assert_eq!(m.client_info().user.as_ref(), "ann");
        assert_eq!(StoredMember::decode(b""), None);
        assert_eq!(StoredMember::decode(&[0xff; 3]), None);
        let mut cut = m.encode();
        cut.truncate(cut.len() - 1);
        assert_eq!(StoredMember::decode(&cut), None);
    }

    #[test]
    fn keys_are_kv_safe_and_grouped_by_channel() {
        let k = member_key("chat:room/1 é", "c.1*>");
        assert!(
            k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'),
            "{k}"
        );
        assert!(k.starts_with(&channel_prefix("chat:room/1 é")));
        assert_eq!(k.matches('.').count(), 1, "{k}");
        assert_ne!(channel_prefix("a"), channel_prefix("ab"));
        assert_eq!(bucket_name("prod"), "wsedge_prod_presence");
    }
}
