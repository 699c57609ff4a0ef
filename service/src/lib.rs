//! Process plumbing shared by `herald-gateway` and `herald-fanout`, and nothing of either:
//! the admin listener (`/healthz`, `/readyz`, `/metrics`) with its readiness check, the
//! Prometheus recorder, logging, the shutdown signal, the clock, the NATS connection (with
//! its events counted under the caller's metric) and the event stream's provisioning.

pub mod admin;
pub mod metrics;
pub mod namespaces;
pub mod nats;
pub mod stream;
pub mod telemetry;

pub use admin::{admin_loop, Readiness};
pub use telemetry::LogFormat;

use std::time::{SystemTime, UNIX_EPOCH};

/// Resolves at SIGTERM or SIGINT: the signal to drain and stop.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Wall-clock time since the Unix epoch, in nanoseconds (0 before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Wall-clock time since the Unix epoch, in milliseconds.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}
