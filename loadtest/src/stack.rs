//! `--spawn`: a private stack for a run, from `herald-harness`'s launcher: nats-server with
//! JetStream in a temporary directory, fanout, and fresh `herald-gateway` processes, all on
//! free loopback ports and stopped on drop.

use std::path::Path;

use anyhow::Result;
use herald_harness::launch::{FanoutOptions, GatewayOptions, Logs, NatsOptions, LOAD_TEST_ANONYMOUS, START_TIMEOUT};

pub use herald_harness::admin::{get_url as get, metric_sum};
pub use herald_harness::launch::{Nats, Program};

/// A nats-server with JetStream on a free port and a temporary store.
pub fn nats() -> Result<Nats> {
    Nats::start(NatsOptions::default())
}

/// A `herald-fanout` on a free admin port, ready.
pub fn fanout(nats_url: &str) -> Result<Program> {
    fanout_with(nats_url, Vec::new())
}

/// The same with more flags.
pub fn fanout_with(nats_url: &str, args: Vec<String>) -> Result<Program> {
    let options = FanoutOptions {
        args,
        ..FanoutOptions::default()
    };
    let mut fanout = Program::fanout(nats_url, options)?;
    fanout.wait_ready(START_TIMEOUT)?;
    Ok(fanout)
}

/// A ready gateway for load tests ([`LOAD_TEST_ANONYMOUS`], its HTTP publishes unlimited too,
/// 2 s drain) with `extra` flags, its stderr in `log`.
pub fn gateway(nats_url: &str, id: &str, extra: &[String], log: Option<&Path>) -> Result<Program> {
    let mut args: Vec<String> = LOAD_TEST_ANONYMOUS.iter().map(|f| (*f).to_owned()).collect();
    args.extend(["--publish-rate", "1000000", "--drain-timeout", "2s"].map(String::from));
    args.extend_from_slice(extra);
    let opts = GatewayOptions {
        id: id.to_owned(),
        args,
        logs: log.map_or(Logs::Quiet, |p| Logs::File(p.to_owned())),
        ..GatewayOptions::default()
    };
    let mut gateway = Program::gateway(nats_url, opts)?;
    gateway.wait_ready(START_TIMEOUT)?;
    Ok(gateway)
}
