//! `wsbench`: benchmark driver (and, hidden, its worker processes).
//!
//! ```text
//! wsbench idle        --target T --conns C [--workers W] [--channels K]
//! wsbench fanout      --target T --subs S --duration SECS [--payload 100]
//!                     [--rate PUBS_PER_SEC] [--window 64] [--shards N]
//! wsbench rooms       --target T [--conns 10000] [--rooms 1000] [--rate-per-conn 0.5] [--duration 10]
//! wsbench storm       --target T [--conns 19000]
//! wsbench compression --target T --deflate on|off [--subs 1000] [--rate R]
//! wsbench floor       [--sockets 9900] [--batch 1,16] [--frame-bytes 130]
//! ```
//! T is one of wsedge, tokio-fastws, tokio-tungstenite, node-ws. Each run
//! prints one JSON line on stdout; progress goes to stderr.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wsbench::driver::{self, CompressionArgs, FanoutArgs, IdleArgs};
use wsbench::floor::{self, FloorArgs};
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
