//! The no-I/O engine: plain state machines that never touch sockets,
//! runtimes or the clock. The shard shell feeds them bytes and ticks and
//! carries out what they return, which is what makes them testable with
//! virtual time and no sockets, and fuzzable.
//!
//! Layout:
//! - [`ws`]: WebSocket handshake and frame codec.
//! - [`wire`]: wire protocol v1 (JSON and FlatBuffers forms).
//! - [`codes`]: the catalogue of error and close codes.
//! - [`channel`]: channel name rules.
//! - [`namespace`]: per-namespace channel options and the lookup from a
//!   channel name.
//! - [`hub`]: home side of channels (offsets, epochs, interest).
//! - [`subs`]: a shard's local subscription table.
//! - [`outbox`]: per-connection output queue with budget.
//! - [`limits`]: per-connection command rate limit.
//! - [`timer`], [`heartbeat`]: the per-shard timer wheel and pings.

pub mod channel;
pub mod codes;
pub mod heartbeat;
pub mod hub;
pub mod limits;
pub mod namespace;
pub mod outbox;
pub mod subs;
pub mod timer;
pub mod wire;
pub mod ws;
