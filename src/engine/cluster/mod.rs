//! The no-I/O parts of a cluster of edge nodes (docs/ARCHITECTURE.md, "The
//! cluster"): who is in the cluster, which node is a channel's home, what
//! the NATS subjects are called and what travels on them. The NATS
//! transport (`wsedge-cluster` thread) feeds these with received bytes and
//! the time; nothing here touches a socket, a thread or a clock.
//!
//! Each channel has one **home node** and on it one home shard, so the
//! rule that keeps one node correct, one authority per channel, holds
//! across nodes: offsets, epoch, history, presence, idempotency keys and
//! live stories stay at the home.
//!
//! Layout:
//! - [`membership`]: the live set from heartbeats (`node.<name>`, every
//!   second; a node silent for `node_timeout` leaves; a restarted node is a
//!   new incarnation), with a generation that changes with the set.
//! - [`placement`]: the home node of a channel by rendezvous hashing over
//!   the live set, and its per-generation cache: a join or leave moves only
//!   the channels the node gains or loses.
//! - [`subject`]: subject names under `wsedge.<cluster>.` — `ch.<hex>` for
//!   a channel's deliveries and sync markers (interest routing: a node
//!   subscribes only while it has local subscribers), `node.<name>` for
//!   heartbeats, `home.<name>` for requests to a home.
//! - [`frame`]: the binary messages on a channel's subject — deliveries of
//!   publications and the sync marker that tells a node the exact position
//!   its subscribers start after — and [`decode_any`], the one decode
//!   entry for what another node sent.
//! - [`stored`]: history kept in JetStream — the stored publication, the
//!   stream and message-id names, what the worker answers a home.
//! - [`members`]: presence kept beside stored history — the member
//!   record, its key in the presence bucket, the changes a home writes.
//! - [`envelope`]: any router message (`Msg`) between nodes, in postcard,
//!   with the limits a client's command is held to checked again.
//!
//! Heartbeats, frames and envelopes start with one version and kind
//! header and share one decode error ([`DecodeError`]); decoding any bytes
//! gives a value or an error, never a panic.

mod codec;
pub mod envelope;
pub mod frame;
#[cfg(test)]
mod fuzz;
pub mod members;
pub mod membership;
pub mod nodes;
pub mod placement;
pub mod sse;
pub mod stored;
pub mod subject;

pub use codec::{DecodeError, PROTOCOL_VERSION};
pub use envelope::{Envelope, MAX_ENVELOPE};
pub use frame::{Incoming, decode_any};
