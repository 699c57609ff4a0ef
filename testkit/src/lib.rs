//! Test harnesses for Herald's integration tests, with assertions: every wait has a timeout
//! and anything unexpected panics. Processes and the WebSocket connection come from
//! `herald-harness`, which `loadtest` and `cargo xtask up` share.
//!
//! - [`NatsServer`]: a real `nats-server -js` on a free loopback port with its own store
//!   directory, killed and cleaned up on drop; restartable on the same port and store.
//! - [`TestGateway`]: an in-process gateway on port 0, shut down on drop.
//! - [`Process`]: a gateway or fanout as a child process, for `kill -9`.
//! - [`WsClient`]: a WebSocket client speaking either codec, able to send raw frames.
//! - [`jwt`]: token minting. [`http`]: tiny HTTP requests. [`wait_until`]: condition waits.

pub mod client;
pub mod gateway;
pub mod http;
pub mod jwt;
pub mod nats;
pub mod process;
pub mod tls;

pub use client::WsClient;
pub use gateway::TestGateway;
pub use nats::NatsServer;
pub use process::Process;

use std::future::Future;
use std::time::Duration;

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    herald_harness::free_port().expect("a free port")
}

/// Where a started process's output goes: this process's, with `HERALD_TEST_LOGS` set.
pub(crate) fn logs() -> herald_harness::launch::Logs {
    if std::env::var_os("HERALD_TEST_LOGS").is_some() {
        herald_harness::launch::Logs::Inherit
    } else {
        herald_harness::launch::Logs::Quiet
    }
}
