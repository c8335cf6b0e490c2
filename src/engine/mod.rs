//! The no-I/O engine: plain state machines that never touch sockets,
//! runtimes or the clock. The shard shell feeds them bytes and ticks and
//! carries out what they return, which is what makes them testable with
//! virtual time and no sockets, and fuzzable.
//!
//! Layout:
//! - [`ws`]: WebSocket handshake and frame codec.
//! - [`access`]: who may connect and how fast (IP filter, trusted
//!   proxies, PROXY v2, origins, per-IP and per-user limits).
//! - [`wire`]: wire protocol v1 (JSON and FlatBuffers forms).
//! - [`codes`]: the catalogue of error and close codes.
//! - [`collab`]: live story sessions (editors, queue, section locks,
//!   versioned updates with conflict alerts) and a shard's table of them.
//! - [`durable`]: events for the backend's permanent storage and the
//!   in-memory sink that holds them until a broker-backed one exists.
//! - [`channel`]: channel name rules.
//! - [`cluster`]: the cluster's no-I/O parts: the live set of nodes from
//!   heartbeats, a channel's home node by rendezvous hashing, NATS subject
//!   names and the binary frames between nodes.
//! - [`namespace`]: per-namespace channel options and the lookup from a
//!   channel name.
//! - [`hub`]: home side of channels (offsets, epochs, interest).
//! - [`presence`]: channel members, their states with TTL, and join/leave/
//!   state events coalesced per tick.
//! - [`history`]: the history store seam, recovery arithmetic, and the
//!   in-memory default.
//! - [`idempotency`]: the window of recent idempotent-publish keys.
//! - [`subs`]: a shard's local subscription table.
//! - [`router`]: a shard's channel router (home and local sides) as a
//!   state machine, with the messages routers exchange.
//! - [`session`]: a connection's command-level state (connected, rate)
//!   and what each command asks of the shell.
//! - [`outbox`]: per-connection output queue with budget.
//! - [`limits`]: per-connection command rate limit.
//! - [`timer`], [`heartbeat`]: the per-shard timer wheel and pings.

pub mod access;
pub mod channel;
pub mod cluster;
pub mod codes;
pub mod collab;
pub mod durable;
pub mod heartbeat;
pub mod history;
pub mod hub;
pub mod idempotency;
pub mod limits;
pub mod namespace;
pub mod outbox;
pub mod presence;
pub mod router;
pub mod session;
pub mod sse;
pub mod subs;
pub mod timer;
pub mod wire;
pub mod ws;
