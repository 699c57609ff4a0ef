//! `herald-gateway`: parse → validate → bind → serve until SIGTERM/SIGINT, then drain.

use std::process::ExitCode;

use clap::Parser;
use herald_gateway::{telemetry, Config, Error, Gateway};

/// EX_CONFIG from sysexits: the configuration cannot run.
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("herald-gateway: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    telemetry::init(config.log_format);
    let gateway = match Gateway::bind(config).await {
        Ok(g) => g,
        Err(e @ Error::Config(_)) => {
            eprintln!("herald-gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("herald-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    gateway.serve(shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
