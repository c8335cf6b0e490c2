//! `wsbench`: the benchmark suite for the `wsedge` WebSocket edge node.
//!
//! One binary, `wsbench`, is both the *driver* (starts the server under
//! test, spawns workers, publishes, aggregates and prints one JSON line per
//! run) and the *worker* (a hidden subcommand holding thousands of cheap
//! WebSocket client connections on a single-threaded tokio runtime). A
//! second binary, `baseline_fastws`, is an idiomatic tokio + fastwebsockets
//! broadcast server speaking the same JSON wire subset; `baseline_tungstenite`
//! (tokio + tokio-tungstenite), `baselines/node-ws` (Node.js + `ws`) and
//! `baselines/bun` (Bun's built-in uWebSockets server) are further
//! comparison targets.
//!
//! Module map:
//! - [`clock`]: `CLOCK_MONOTONIC` nanoseconds, comparable across processes.
//! - [`procfs`]: RSS, CPU time and kernel socket memory from `/proc`.
//! - [`wsclient`]: a minimal hand-written WebSocket client codec.
//! - [`scan`]: cheap, allocation-free scanning of the JSON replies and pushes.
//! - [`tls`]: `wss://` for every client connection when `WSBENCH_TLS_CA` is set.
//! - [`conn`]: one client connection: upgrade, `connect`/`subscribe`, frame loop.
//! - [`ipc`]: the newline-JSON messages between driver and workers.
//! - [`worker`]: the worker process.
//! - [`target`]: starting and stopping the server under test, `/metrics` scraping.
//! - [`payload`]: publication bodies (padded, realistic feed items).
//! - [`driver`]: the `idle`, `fanout` and `compression` workloads and shared helpers.
//! - [`rooms`]: the `rooms` workload.
//! - [`storm`]: the `storm` workload (drop everything, reconnect).
//! - [`bulk`]: pipelined publishing to many channels, `history` reads.
//! - [`history_memory`]: the `history-memory` workload (wsedge only).
//! - [`recover_storm`]: the `recover-storm` workload (wsedge only).
//! - [`presence`]: the `presence` workload (wsedge only).
//! - [`collab`]: the story collaboration workloads `collab-fanout`,
//!   `collab-many` and `collab-join` (wsedge only).
//! - [`nats`]: a `nats-server` for the cluster workloads, its `/varz` counters.
//! - [`placement`]: wsedge's channel placement (rendezvous hashing) over nodes.
//! - [`cluster`]: the cluster workloads `cluster-latency` and
//!   `cluster-storm` (wsedge nodes on NATS).
//! - [`durable`]: the `durable` workload (wsedge only, issue 11): durable
//!   namespaces against JetStream and a Kafka-protocol broker (tansu):
//!   throughput, latency, a broker outage (spill and replay).
//! - [`floor`]: the kernel floor probe (no server).

#![warn(missing_docs)]

pub mod baseline;
pub mod bulk;
pub mod clock;
pub mod cluster;
pub mod collab;
pub mod conn;
pub mod driver;
pub mod durable;
pub mod floor;
pub mod history_memory;
pub mod ipc;
pub mod nats;
pub mod payload;
pub mod placement;
pub mod presence;
pub mod procfs;
pub mod recover_storm;
pub mod rooms;
pub mod scan;
pub mod storm;
pub mod syscalls;
pub mod target;
pub mod tls;
pub mod worker;
pub mod wsclient;
