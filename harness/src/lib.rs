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
