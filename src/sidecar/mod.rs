//! Sidecar threads: work that must never run on a shard (slow or
//! blocking I/O): the admin HTTP server and the server HTTP API, each on
//! its own thread; the one-time ticket redemption through Redis on its
//! own; live story state written behind to Redis on its own; broker
//! workers (NATS, JetStream, Kafka, Redis) join here.

pub mod admin;
pub mod api;
pub mod http;
pub mod stories;
pub mod tickets;
