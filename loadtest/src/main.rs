//! `loadtest`: Herald's load harness.
//!
//! - `compare`: push (WebSocket, SSE) against long-poll and ajax polling on goose, side by side.
//! - `hold`: N WebSocket connections over worker processes and source addresses; memory per
//!   connection and delivery.
//! - `bench`: one room, a rising publish rate, until p99 crosses a limit.
//! - `presence`: a big room with constant churn; presence frames, diff lag and fanout CPU.
//! - `soak`: a long run with churn and hostile clients.
//! - `flood`: anonymous clients with a fresh identity on every request (a JSON summary).
//! - `ceiling`: the event stream's JetStream publish ceiling, one stream against partitions.
//! - `chat`: R rooms × S subscribers over G spawned gateways, E events/s spread over the rooms
//!   through JetStream; delivery, latency, CPU per delivery of every process, NATS messages per
//!   event to each gateway, and RSS per held room; `--target nchan` measures Nchan (nginx)
//!   with the same clients as the reference.
//!
//! Every mode writes `report.md`, `report.json` and `report.html` to `--report-dir`.

mod bench;
mod ceiling;
mod chat;
mod client;
mod compare;
mod flood;
mod hold;
mod modes;
mod nchan;
mod payload;
mod presence;
mod proc;
mod report;
mod soak;
mod stack;
mod svg;
mod usage;

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

/// Herald load harness: push against long-poll and ajax polling, connection scale, fan-out.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about,
    after_help = "Examples:
  # Push vs long-poll vs ajax polling on a private stack, report in target/loadtest/compare/
  loadtest compare --spawn --users 2000 --rooms 10 --rate 100 --run-time 30s --poll-interval 1s,5s
  # The same against the `cargo xtask up` stack, with browser-sized request headers
  loadtest compare --gateway http://127.0.0.1:8080 --gateway-admin http://127.0.0.1:9100 \\
    --browser-headers
  # A CI gate: fail when push p99 is over 100 ms or anything errs
  loadtest compare --spawn --users 50 --run-time 10s \\
    --threshold 'p99<100ms for WS deliver' --threshold 'error-rate<1%'
  # 100,000 WebSocket connections: 6 gateways, 6 workers, 8 source addresses
  loadtest hold --spawn-gateways 6 --connections 100000 \\
    --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8
  # Fan-out throughput: 1,000 subscribers, publish rate x1.5 per step until p99 > 50 ms
  loadtest bench --spawn --subscribers 1000 --start-rate 10 --p99-limit 50ms
  # Chat-shaped traffic: 1,000 rooms of 5 over 2 gateways, 1,000 events/s for 20 s
  loadtest chat --rooms 1000 --subscribers 5 --gateways 2 --placement spread --rate 1000 \\
    --run-time 20s --gateway-arg=--room-subscriptions=wildcard

Run `loadtest <mode> --help` for every flag of a mode."
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Push (WebSocket, SSE) against long-poll and ajax polling: the same clients, rooms and
    /// publish rate over each, one after another, and a report side by side.
    ///
    /// Each mode runs in its own goose process; goose's flags apply (--users, --run-time is the
    /// publishing time, --increase-rate or --hatch-rate, --threshold "p99<50ms for WS deliver",
    /// ...). Rows: WS/SSE/LP/POLL deliver (latency from the scheduled publish time), WS/SSE connect,
    /// GET poll-wait, GET poll.
    ///
    /// Example: loadtest compare --spawn --users 2000 --rooms 10 --rate 100 --run-time 30s --poll-interval 1s,5s
    Compare(Box<compare::CompareArgs>),
    /// Hold N WebSocket connections across worker processes (under 19,000 each) and source
    /// addresses; gateway and harness memory per connection, kernel socket memory, connect rate,
    /// and delivery of an optional broadcast.
    ///
    /// Example: loadtest hold --spawn-gateways 6 --connections 100000 --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6
    Hold(Box<hold::HoldArgs>),
    /// Subscribers on one room and a publish rate rising step by step until p99 crosses a limit;
    /// deliveries per second and gateway CPU-seconds per million deliveries.
    ///
    /// Example: loadtest bench --spawn --subscribers 1000 --start-rate 10 --factor 1.5 --p99-limit 50ms
    Bench(Box<bench::BenchArgs>),
    /// A big room with constant churn: presence frames per subscriber, diff lag, fanout CPU.
    ///
    /// Example: loadtest presence --gateway ws://127.0.0.1:8080/ws,ws://127.0.0.1:8081/ws --members 5000 --churn 200 --fanout-pid $(pgrep herald-fanout)
    Presence(presence::PresenceArgs),
    /// Many connections for a long time with churn and hostile clients mixed in, presence on:
    /// gateway RSS and file descriptors over time (their slope), /readyz, and every event
    /// checked for loss and duplicates across reconnects.
    ///
    /// Example: loadtest soak --connections 20000 --gateways 2 --duration 30m --churn 20 --hostile 10
    Soak(Box<soak::SoakArgs>),
    /// Anonymous clients that name themselves anew (a random sid) on every request: /poll with
    /// presence on many rooms, POST /publish, /sse with presence and watched users, WebSocket
    /// subscribes with presence and a thousand watched users. Prints how many requests got
    /// which answer, as JSON. Loopback only.
    ///
    /// Example: loadtest flood --gateway 127.0.0.1:8081 --clients 50 --duration 30s --sources 127.0.0.2,127.0.0.3
    Flood(flood::FloodArgs),
    /// The event stream's publish ceiling: JetStream-acked publishes per second over many rooms
    /// with a bounded number in flight, and ack latency, for one stream and for N partitions,
    /// each run on a fresh private NATS (one server R1, or a 3-node cluster R3).
    ///
    /// Example: loadtest ceiling --topology cluster --partitions 1,4 --runs 3
    Ceiling(ceiling::CeilingArgs),
    /// Chat-shaped traffic on a stack it spawns: R rooms × S subscribers placed by room or
    /// spread over G gateways, E events/s dealt over the rooms through JetStream. Delivery
    /// (lost, duplicates, out of order), p50/p99, CPU per delivery of every process, NATS
    /// messages sent to each gateway per event (net of an idle window), RSS per held room.
    ///
    /// Example: loadtest chat --rooms 5000 --subscribers 1 --gateways 2 --placement by-room --rate 5000 --run-time 20s
    Chat(Box<chat::ChatArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Gateway WebSocket URLs (comma-separated); connections are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    gateway: Vec<String>,
    /// Token for every connection (omit with an anonymous gateway).
    #[arg(long, env = "HERALD_TOKEN")]
    token: Option<String>,
    /// Source addresses to connect from (comma-separated, e.g. 127.0.0.1,127.0.0.2). A socket
    /// bound to a source address gets its port from about half the ephemeral range: plan on
    /// ~14,000 connections per source (measured with the default 32768-60999 range).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The NATS subject prefix the stack uses (the gateway's `--subject-prefix`).
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = herald_proto::subject::DEFAULT_PREFIX)]
    subject_prefix: String,
    /// Offer permessage-deflate on every WebSocket connection (a gateway with
    /// `--ws-compression on` accepts; `bench --spawn` starts its gateway so), and inflate
    /// what comes compressed.
    #[arg(long)]
    compression: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    report::run_revision();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Mode::Hold(a) => hold::hold(*a).await,
            Mode::Bench(a) => bench::bench(*a).await,
            Mode::Presence(a) => presence::run(a).await,
            Mode::Soak(a) => soak::run(*a).await,
            Mode::Flood(a) => flood::run(a).await,
            Mode::Ceiling(a) => ceiling::run(a).await,
            Mode::Chat(a) => chat::run(*a).await,
            Mode::Compare(a) => {
                if !compare::run(*a).await? {
                    bail!("a mode failed its thresholds (see the report)");
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Longest a connection may take to open and subscribe before it counts as failed.
pub const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens connection `i` of a run (gateway and source address round-robin) and joins `room`
/// (none when empty), within [`OPEN_TIMEOUT`].
pub async fn connect_one(common: &Common, i: usize, room: &str) -> anyhow::Result<client::Conn> {
    let url = &common.gateway[i % common.gateway.len()];
    let source = common.sources[(i / common.gateway.len()) % common.sources.len()];
    let open = async {
        let token = common.token.as_deref();
        let mut c = client::Conn::open_with(url, source, token, &[], common.compression)
            .await?
            .0;
        if !room.is_empty() {
            c.subscribe(room).await?;
        }
        Ok::<_, anyhow::Error>(c)
    };
    match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(r) => r,
        Err(_) => bail!("no welcome or ack within {OPEN_TIMEOUT:?}"),
    }
}

/// The histogram every latency goes into: 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// The wall-clock time (ns since the epoch) an event was *scheduled* for, given that it is
/// sent now: a late publisher shows up as latency instead of hiding it (no coordinated
/// omission).
pub fn scheduled_stamp(scheduled: tokio::time::Instant) -> u64 {
    let late = tokio::time::Instant::now().saturating_duration_since(scheduled);
    now_ns() - late.as_nanos() as u64
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub use herald_harness::ws::head_bytes;
