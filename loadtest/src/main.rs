//! `loadtest`: Herald's load harness.
//!
//! - `hold`: hold N WebSocket connections (spread over source addresses) and report the
//!   gateway's memory per connection and the kernel's socket memory.
//! - `bench`: subscribers on one room, an open-loop fixed-rate publisher through NATS, and
//!   publish→deliver latency percentiles, with loss and duplicates counted from `seq`/`prev`.
//! - `presence`: a big room with constant churn; presence frames, diff lag and fanout CPU.
//! - `compare`: push against long-poll and ajax polling (being built).

mod client;
mod presence;
mod proc;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;

/// Herald load harness: push against long-poll and ajax polling, connection scale, fan-out.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Hold N WebSocket connections and report the gateway's memory per connection.
    ///
    /// Example: loadtest hold --gateway ws://127.0.0.1:8080/ws --connections 10000 --gateway-pid $(pgrep herald-gateway)
    Hold(HoldArgs),
    /// Subscribers on one room, a fixed-rate publisher, and publish→deliver latency.
    ///
    /// Example: loadtest bench --gateway ws://127.0.0.1:8080/ws --subscribers 1000 --rate 100 --run-time 20s
    Bench(BenchArgs),
    /// A big room with constant churn: presence frames per subscriber, diff lag, fanout CPU.
    ///
    /// Example: loadtest presence --gateway ws://127.0.0.1:8080/ws,ws://127.0.0.1:8081/ws --members 5000 --churn 200 --fanout-pid $(pgrep herald-fanout)
    Presence(presence::PresenceArgs),
    /// The same rooms, clients and publish rate over ws, sse, long-poll and poll (being built).
    Compare,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Gateway WebSocket URLs (comma-separated); connections are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    gateway: Vec<String>,
    /// Token for every connection (omit with an anonymous gateway).
    #[arg(long, env = "HERALD_TOKEN")]
    token: Option<String>,
    /// Source addresses to connect from (comma-separated, e.g. 127.0.0.1,127.0.0.2): about 28k
    /// connections fit per source and gateway address.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

#[derive(Debug, Args)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to hold (at most ~19,900 per process on this machine's file limit).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Rooms the connections subscribe to, round-robin (0: connect without subscribing).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// PIDs of the gateway processes to measure (VmRSS from /proc).
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    /// How long to hold once everyone is connected.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    hold: Duration,
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// NATS URL the publisher uses (as an app backend would).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Subscribers on the room.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Events per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Publishing time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    run_time: Duration,
    /// Payload bytes per event (padding).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Room name (a fresh one per run is best: `bench-<time>` by default).
    #[arg(long)]
    room: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Mode::Hold(a) => hold(a).await,
            Mode::Bench(a) => bench(a).await,
            Mode::Presence(a) => presence::run(a).await,
            Mode::Compare => bail!("compare is not built yet"),
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

/// Opens `n` subscribed connections, `concurrency` at a time; connection `i` joins `room(i)`.
async fn connect_all(common: &Common, n: usize, room: impl Fn(usize) -> String) -> Result<Vec<client::Conn>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(common.concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let url = common.gateway[i % common.gateway.len()].clone();
        let source = common.sources[(i / common.gateway.len()) % common.sources.len()];
        let token = common.token.clone();
        let room = room(i);
        let permit = Arc::clone(&sem).acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut c = client::Conn::open(&url, source, token.as_deref()).await?;
            if !room.is_empty() {
                c.subscribe(&room).await?;
            }
            Ok::<_, anyhow::Error>(c)
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    Ok(conns)
}

async fn hold(a: HoldArgs) -> Result<()> {
    let before: Vec<u64> = a.gateway_pid.iter().map(|&p| proc::rss_kib(p)).collect::<Result<_>>()?;
    let sock_before = proc::tcp_mem_kib()?;
    let started = Instant::now();
    let rooms = a.rooms;
    let conns = connect_all(&a.common, a.connections, |i| {
        if rooms == 0 {
            String::new()
        } else {
            format!("hold-{}", i % rooms)
        }
    })
    .await?;
    let took = started.elapsed();
    println!(
        "connected {} in {:.1}s ({:.0}/s)",
        conns.len(),
        took.as_secs_f64(),
        conns.len() as f64 / took.as_secs_f64()
    );
    // Hold, keeping every socket read (pings are answered while reading).
    let readers: Vec<_> = conns.into_iter().map(|c| tokio::spawn(c.drain_for(a.hold))).collect();
    tokio::time::sleep(a.hold / 2).await;
    let after: Vec<u64> = a.gateway_pid.iter().map(|&p| proc::rss_kib(p)).collect::<Result<_>>()?;
    let sock_after = proc::tcp_mem_kib()?;
    let mut closed = 0;
    for r in readers {
        if r.await?.is_err() {
            closed += 1;
        }
    }
    let per_gateway = a.connections as f64 / a.gateway_pid.len().max(1) as f64;
    for (i, pid) in a.gateway_pid.iter().enumerate() {
        let delta = after[i].saturating_sub(before[i]);
        println!(
            "gateway pid {pid}: RSS {} KiB -> {} KiB, {:.2} KiB per connection",
            before[i],
            after[i],
            delta as f64 / per_gateway
        );
    }
    println!(
        "kernel TCP memory: {} KiB -> {} KiB ({:.2} KiB per connection, both ends on loopback)",
        sock_before,
        sock_after,
        sock_after.saturating_sub(sock_before) as f64 / a.connections as f64
    );
    println!("connections closed early: {closed}");
    Ok(())
}

async fn bench(a: BenchArgs) -> Result<()> {
    let room = a
        .room
        .clone()
        .unwrap_or_else(|| format!("bench-{}", now_ns() / 1_000_000));
    let conns = connect_all(&a.common, a.subscribers, |_| room.clone()).await?;
    println!("{} subscribers on {room}", conns.len());
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let delivered = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(AtomicU64::new(0));
    let expected = (a.rate * a.run_time.as_secs_f64()).round() as u64;
    let readers: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let (hist, delivered, broken) = (Arc::clone(&hist), Arc::clone(&delivered), Arc::clone(&broken));
            tokio::spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let stats = c.measure(expected, &mut local).await;
                hist.lock().expect("histogram lock").add(&local).expect("same bounds");
                delivered.fetch_add(stats.delivered, Ordering::Relaxed);
                broken.fetch_add(stats.broken_chain, Ordering::Relaxed);
            })
        })
        .collect();

    let nats = async_nats::connect(&a.nats_url).await.context("NATS")?;
    let subject = format!("herald.room.{room}");
    let pad = "x".repeat(a.payload_bytes);
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let start = tokio::time::Instant::now();
    for i in 0..expected {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        // The scheduled time, not the send time: no coordinated omission.
        let scheduled_ns = now_ns()
            - tokio::time::Instant::now()
                .saturating_duration_since(scheduled)
                .as_nanos() as u64;
        let body = serde_json::json!({"t0": scheduled_ns, "n": i, "pad": pad});
        nats.publish(subject.clone(), serde_json::to_vec(&body)?.into()).await?;
    }
    nats.flush().await?;
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(30), r).await;
    }
    let h = hist.lock().expect("histogram lock");
    let got = delivered.load(Ordering::Relaxed);
    let want = expected * a.subscribers as u64;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "events {expected} x subscribers {} = {want} expected; delivered {got} ({:.3}%), broken chains {}",
        a.subscribers,
        100.0 * got as f64 / want.max(1) as f64,
        broken.load(Ordering::Relaxed)
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    Ok(())
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Binds a socket to `source` (port chosen by the kernel) and connects to `addr`.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}
