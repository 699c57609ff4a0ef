//! `herald-fanout`: parse → validate → bind → serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use herald_fanout::{Config, Error, Fanout};
use herald_gateway::telemetry;

const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("herald-fanout: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    telemetry::init(config.log_format);
    let fanout = match Fanout::bind(config).await {
        Ok(f) => f,
        Err(e @ Error::Config(_)) => {
            eprintln!("herald-fanout: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("herald-fanout: {e}");
            return ExitCode::FAILURE;
        }
    };
    fanout.serve(shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
