//! `herald-fanout`: parse → validate → bind → serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use herald_fanout::{Config, Error, Fanout};
use herald_service::telemetry;

/// jemalloc: under connection churn glibc's malloc keeps freed memory fragmented and the
/// process grows for hours; jemalloc returns it (docs/benchmarks.md, "Soak").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    fanout.serve(herald_service::shutdown_signal()).await;
    ExitCode::SUCCESS
}
