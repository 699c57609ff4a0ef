//! `loadtest`: Herald's load harness. The modes are being built (see docs/benchmarks.md for
//! the measurement tools available today); this binary reserves the contract's commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Herald load harness: push against long-poll and ajax polling, measured side by side.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// The same rooms, clients and publish rate over ws, sse, long-poll and poll.
    Compare,
    /// Hold N WebSocket connections and report memory and delivery.
    Hold,
    /// Fan-out throughput and latency at a rising publish rate.
    Bench,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "loadtest {:?}: not built yet; see docs/benchmarks.md for today's measurement tools",
        cli.command
    );
    ExitCode::from(2)
}
