//! `herald-gateway`: parse → validate → bind → serve until SIGTERM/SIGINT, then drain.

use std::process::ExitCode;

use clap::Parser;
use herald_gateway::{Config, Error, Gateway};
use herald_service::telemetry;

/// jemalloc: under connection churn glibc's malloc keeps freed memory fragmented and the
/// process grows for hours; jemalloc returns it (docs/benchmarks.md, "Soak"). The
/// `system-allocator` feature keeps the system's malloc, for heap profilers that hook it
/// (heaptrack, massif).
#[cfg(not(any(target_env = "msvc", feature = "system-allocator")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// EX_CONFIG from sysexits: the configuration cannot run.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("herald-gateway: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(config)),
        Err(e) => {
            eprintln!("herald-gateway: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> ExitCode {
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
    gateway.serve(herald_service::shutdown_signal()).await;
    ExitCode::SUCCESS
}
