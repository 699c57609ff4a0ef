//! Drives a Herald stack from outside. The integration tests (through `herald-testkit`),
//! `loadtest` and `cargo xtask up` all start and reach the stack through this crate:
//!
//! - [`launch`]: `nats-server` with JetStream, `herald-fanout` and `herald-gateway` as child
//!   processes, on free (or given) loopback ports, stopped on drop.
//! - [`ws`]: a WebSocket client speaking either codec, from any local source address.
//! - [`admin`]: blocking `GET`s of admin endpoints (`/readyz`, `/metrics`) and port waits.

pub mod admin;
pub mod launch;
pub mod ws;

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free loopback address: `127.0.0.1` and a [`free_port`].
pub fn free_addr() -> std::io::Result<std::net::SocketAddr> {
    Ok(([127, 0, 0, 1], free_port()?).into())
}

/// A process's resident memory now, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    use anyhow::Context;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("no process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}
