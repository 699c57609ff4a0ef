//! Drives a Herald stack from outside. The integration tests (through `herald-testkit`),
//! `loadtest` and `cargo xtask up` all start and reach the stack through this crate:
//!
//! - [`launch`]: `nats-server` with JetStream, `herald-fanout` and `herald-gateway` as child
//!   processes, on free (or given) loopback ports, stopped on drop.
//! - [`ws`]: a WebSocket client speaking either codec, from any local source address.
//! - [`admin`]: blocking `GET`s of admin endpoints (`/readyz`, `/metrics`) and port waits.

pub mod admin;
pub mod deflate;
pub mod launch;
pub mod ws;

/// A free loopback TCP port (bound, then released), taken below the kernel's ephemeral
/// range: a port from that range can be taken between its release here and its bind by the
/// program it is for, by any outgoing connection on the machine (a NATS client starting
/// meanwhile). Each call in a process gives a new port; processes start at different places.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().clamp(LOW + 1_000, u32::from(u16::MAX));
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (32768, Linux's default, if unknown).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
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
