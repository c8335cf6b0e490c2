//! wsedge: a thread-per-core io_uring WebSocket edge node.
//!
//! Layout:
//! - [`engine`]: the protocol as no-I/O state machines.
//! - [`shard`]: one monoio runtime per core that moves bytes and time in
//!   and out of the engine.
//! - [`bridge`]: cross-thread messages and bounded inboxes.
//! - [`sidecar`]: threads for slow I/O (admin HTTP, the server API, Redis
//!   workers, the cluster's NATS transport, clients' backend calls over
//!   NATS).
//! - [`auth`]: JWT verification (connection and subscription tokens) and
//!   the `[auth]` configuration.
//! - [`config`], [`metrics`]: configuration and Prometheus metrics.
//! - [`tls`]: the `[tls]` section, certificates and their reload (the
//!   per-connection side is `shard::tls`).
//! - [`tune`]: the kernel preflight behind `wsedge tune --check`.
//! - [`service`]: systemd notifications and watchdog, and `SIGHUP`
//!   reloads (the main thread's side of operating a node).
//!
//! See docs/ARCHITECTURE.md for the design and docs/PROTOCOL.md for the
//! wire contract.

#![warn(missing_docs)]

pub mod auth;
pub mod bridge;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod service;
pub mod shard;
pub mod sidecar;
pub mod tls;
pub mod tune;
