//! `wsbench`: benchmark driver (and, hidden, its worker processes).
//!
//! ```text
//! wsbench idle        --target T --conns C [--workers W] [--channels K]
//! wsbench fanout      --target T --subs S --duration SECS [--payload 100]
//!                     [--rate PUBS_PER_SEC] [--window 64] [--shards N]
//! wsbench rooms       --target T [--conns 10000] [--rooms 1000] [--rate-per-conn 0.5] [--duration 10]
//! wsbench storm       --target T [--conns 19000]
//! wsbench compression --target T --deflate on|off [--subs 1000] [--rate R]
//! wsbench history-memory --target wsedge [--channels 10000] [--pubs-per-channel 100]
//! wsbench recover-storm  --target wsedge [--conns 19000] [--channels 1000] [--missed 20]
//! wsbench presence       --target wsedge [--subs 5000] [--churn 50] [--join-leave on|off]
//! wsbench collab-fanout  --target wsedge [--editors 10] [--viewers 5000] [--rate 5]
//! wsbench collab-many    --target wsedge [--stories 1000] [--editors 3] [--viewers 20] [--rate 1]
//! wsbench collab-join    --target wsedge [--sections 200] [--samples 200]
//! wsbench cluster-latency --target wsedge [--nodes 2] [--local-subs 100] [--remote-subs 100] [--rate 1000]
//! wsbench cluster-storm   --target wsedge [--conns 19000] [--channels 1000] [--history-backend memory]
//! wsbench durable     throughput|latency|outage --target wsedge [--variants plain,jetstream,kafka,jetstream-ack]
//! wsbench floor       [--sockets 9900] [--batch 1,16] [--frame-bytes 130]
//! ```
//! T is one of wsedge, tokio-fastws, tokio-tungstenite, node-ws. Each run
//! prints one JSON line on stdout; progress goes to stderr.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wsbench::cluster::latency::{self, ClusterLatencyArgs};
use wsbench::cluster::storm::{self as cluster_storm, ClusterStormArgs};
use wsbench::collab::join::{self, CollabJoinArgs};
use wsbench::collab::{self, CollabArgs};
use wsbench::driver::{self, CompressionArgs, FanoutArgs, IdleArgs};
use wsbench::durable::{self, DurableArgs};
use wsbench::floor::{self, FloorArgs};
use wsbench::history_memory::{self, HistoryMemoryArgs};
use wsbench::presence::{self, PresenceArgs};
use wsbench::recover_storm::{self, RecoverStormArgs};
use wsbench::rooms::{self, RoomsArgs};
use wsbench::storm::{self, StormArgs};
use wsbench::worker::{self, WorkerArgs};

/// Benchmarks for the wsedge WebSocket edge node.
#[derive(Debug, Parser)]
#[command(name = "wsbench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Memory per idle subscribed connection, and connection rate.
    Idle(IdleArgs),
    /// One publisher, S subscribers: throughput, latency, CPU per delivery.
    Fanout(FanoutArgs),
    /// C connections in R rooms, each publishing to its room: latency, losses.
    Rooms(RoomsArgs),
    /// Drop every connection at once and reconnect: recovery time.
    Storm(StormArgs),
    /// Fan-out of realistic JSON with and without permessage-deflate.
    Compression(CompressionArgs),
    /// wsedge only: server memory per retained history publication.
    HistoryMemory(HistoryMemoryArgs),
    /// wsedge only: drop everything, publish while down, reconnect and recover.
    RecoverStorm(RecoverStormArgs),
    /// wsedge only: presence and join/leave cost under subscription churn.
    Presence(PresenceArgs),
    /// wsedge only: one story, E editors sending updates, V viewers: latency, CPU per update.
    CollabFanout(CollabArgs),
    /// wsedge only: K stories of E editors + V viewers each: latency, CPU, memory.
    CollabMany(CollabArgs),
    /// wsedge only: `collab_join` snapshot round trip for a story of S sections.
    CollabJoin(CollabJoinArgs),
    /// wsedge only: nodes on NATS; local vs cross-node latency, NATS messages per publication.
    ClusterLatency(ClusterLatencyArgs),
    /// wsedge only: 3 nodes, the one holding every client is killed; failover and recovery.
    ClusterStorm(ClusterStormArgs),
    /// wsedge only: durable namespaces (JetStream, Kafka): throughput, latency, broker outage.
    Durable(DurableArgs),
    /// Kernel floor: cost of one small write to a loopback socket (no server).
    Floor(FloorArgs),
    /// Internal: a worker process driven over stdin/stdout.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Idle(a) => driver::idle(a),
        Cmd::Fanout(a) => driver::fanout(a),
        Cmd::Rooms(a) => rooms::rooms(a),
        Cmd::Storm(a) => storm::storm(a),
        Cmd::Compression(a) => driver::compression(a),
        Cmd::HistoryMemory(a) => history_memory::history_memory(a),
        Cmd::RecoverStorm(a) => recover_storm::recover_storm(a),
        Cmd::Presence(a) => presence::presence(a),
        Cmd::CollabFanout(a) => collab::collab_fanout(a),
        Cmd::CollabMany(a) => collab::collab_many(a),
        Cmd::CollabJoin(a) => join::collab_join(a),
        Cmd::ClusterLatency(a) => latency::cluster_latency(a),
        Cmd::ClusterStorm(a) => cluster_storm::cluster_storm(a),
        Cmd::Durable(a) => durable::durable(a),
        Cmd::Floor(a) => floor::floor(a),
        Cmd::Worker(a) => worker::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
