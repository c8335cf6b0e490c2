//! `wsbench`: benchmark driver (and, hidden, its worker processes).
//!
//! ```text
//! wsbench idle   --target wsedge|tokio-fastws --conns C [--workers W] [--channels K]
//! wsbench fanout --target wsedge|tokio-fastws --subs S --duration SECS [--payload 100]
//!                [--rate PUBS_PER_SEC] [--window 64] [--workers W]
//! ```
//! Each run prints one JSON line on stdout; progress goes to stderr.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wsbench::driver::{self, FanoutArgs, IdleArgs};
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
    /// Internal: a worker process driven over stdin/stdout.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Idle(a) => driver::idle(a),
        Cmd::Fanout(a) => driver::fanout(a),
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
