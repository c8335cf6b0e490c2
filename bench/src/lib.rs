//! `wsbench`: the benchmark suite for the `wsedge` WebSocket edge node.
//!
//! One binary, `wsbench`, is both the *driver* (starts the server under
//! test, spawns workers, publishes, aggregates and prints one JSON line per
//! run) and the *worker* (a hidden subcommand holding thousands of cheap
//! WebSocket client connections on a single-threaded tokio runtime). A
//! second binary, `baseline_fastws`, is an idiomatic tokio + fastwebsockets
//! broadcast server speaking the same JSON wire subset, used as the
//! comparison target.
//!
//! Module map:
//! - [`clock`]: `CLOCK_MONOTONIC` nanoseconds, comparable across processes.
//! - [`procfs`]: RSS, CPU time and kernel socket memory from `/proc`.
//! - [`wsclient`]: a minimal hand-written WebSocket client codec.
//! - [`scan`]: cheap, allocation-free scanning of the JSON replies and pushes.
//! - [`conn`]: one client connection: upgrade, `connect`/`subscribe`, frame loop.
//! - [`ipc`]: the newline-JSON messages between driver and workers.
//! - [`worker`]: the worker process.
//! - [`target`]: starting and stopping the server under test, `/metrics` scraping.
//! - [`driver`]: the `idle` and `fanout` workloads.

#![warn(missing_docs)]

pub mod clock;
pub mod conn;
pub mod driver;
pub mod ipc;
pub mod procfs;
pub mod scan;
pub mod target;
pub mod worker;
pub mod wsclient;
