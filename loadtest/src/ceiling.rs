//! `ceiling`: the publish ceiling of Herald's event stream, one stream against N partitions.
//! Backends publish through JetStream to `herald.room.<room>` over many rooms, with a bounded
//! number of publishes awaiting their ack; acked publishes per second and the ack latency
//! (p50, p99) over a fixed window, a fresh private NATS (one server, or a 3-node cluster) for
//! every run, the streams provisioned exactly as fanout provisions them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use herald_harness::launch::{cluster_args, Logs, Nats, NatsOptions};
use herald_proto::subject::{Partitions, Subjects};
use herald_service::stream::StreamSettings;

use crate::proc;
use crate::report::{self, Report, Section, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topology {
    /// One nats-server (streams R1 by default).
    Single,
    /// Three nats-servers routed on loopback as one JetStream cluster (streams R3 by default).
    Cluster,
}

#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    /// The NATS started for each run.
    #[arg(long, value_enum, default_value_t = Topology::Single)]
    topology: Topology,
    /// Partition counts to measure, each in turn (1 = the single stream `HERALD_ROOMS`).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    partitions: Vec<u32>,
    /// Replicas of every stream (default: 1 on a single server, 3 on the cluster).
    #[arg(long)]
    replicas: Option<usize>,
    /// Rooms published to, round-robin (spread over the partitions by their names' hash).
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Publishes awaiting their ack at once, over all connections: the bound that keeps the
    /// client from queueing without limit and makes ack latency meaningful.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Publishing NATS connections (on a cluster, spread over its servers).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Bytes of each event's payload.
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,
    /// Publishing before the measured window (not counted).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Runs per partition count (each on a fresh NATS).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where report.md, report.json and report.html go.
    #[arg(long, default_value = "target/loadtest/ceiling")]
    report_dir: PathBuf,
}

/// One run's outcome.
struct Run {
    partitions: u32,
    acked: u64,
    errors: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// nats-server CPU (all nodes) per acked publish in the window, µs.
    server_us: f64,
    /// This process's CPU (the publishing client) per acked publish, µs.
    client_us: f64,
    /// The 1-minute load average when the window ended (others' work on the box shows here).
    load: f64,
}

/// The slowest ack the histogram holds; slower ones are clamped to it.
const MAX_ACK: Duration = Duration::from_secs(30);

pub async fn run(args: CeilingArgs) -> Result<()> {
    if args.in_flight < args.connections || args.connections == 0 {
        bail!("--in-flight must be at least --connections, and both above zero");
    }
    let replicas = args.replicas.unwrap_or(match args.topology {
        Topology::Single => 1,
        Topology::Cluster => 3,
    });
    let mut runs = Vec::new();
    for &partitions in &args.partitions {
        for i in 0..args.runs {
            let r = one_run(&args, partitions, replicas).await?;
            println!(
                "partitions {partitions} run {}: {:.0} acked/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors, \
                 server {:.1} µs and client {:.1} µs CPU per publish, load {:.2}",
                i + 1,
                r.per_sec,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.errors,
                r.server_us,
                r.client_us,
                r.load
            );
            runs.push(r);
        }
    }
    let report = report_of(&args, replicas, &runs);
    report.write(&args.report_dir)?;
    println!("{}", report.markdown());
    Ok(())
}

async fn one_run(args: &CeilingArgs, partitions: u32, replicas: usize) -> Result<Run> {
    let nodes = spawn(args.topology, partitions).await?;
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let client = connect(&urls).await?;
    let js = async_nats::jetstream::new(client);
    let layout = Partitions::new(Subjects::default(), partitions);
    let settings = StreamSettings {
        history_size: 1000,
        history_ttl: Duration::from_secs(24 * 3600),
        max_bytes: 1 << 30,
        dedup_window: Duration::from_secs(120),
        replicas,
        storage: Default::default(),
        allow_msg_ttl: false,
    };
    // Streams are created while the cluster settles its meta leader: retry a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match herald_service::stream::provision(&js, &layout, &settings).await {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => return Err(e).context("provisioning the streams"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    herald_service::stream::check_partitions(&js, &layout)
        .await
        .context("the server's partition mapping")?;

    let rooms: Arc<Vec<String>> = Arc::new((0..args.rooms).map(|i| format!("herald.room.room-{i}")).collect());
    let payload = bytes::Bytes::from(vec![b'x'; args.payload_bytes]);
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_max(
        MAX_ACK.as_micros() as u64,
        3,
    )?));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let client = connect(&urls[c % urls.len()..]).await?;
        let js = async_nats::jetstream::new(client);
        let slots = args.in_flight / args.connections + usize::from(c < args.in_flight % args.connections);
        let (rooms, payload) = (Arc::clone(&rooms), payload.clone());
        let (counting, stop, acked, errors, hist) = (
            Arc::clone(&counting),
            Arc::clone(&stop),
            Arc::clone(&acked),
            Arc::clone(&errors),
            Arc::clone(&hist),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_max(MAX_ACK.as_micros() as u64, 3).expect("histogram");
            let mut pending = FuturesUnordered::new();
            let mut n = c;
            loop {
                while pending.len() < slots && !stop.load(Ordering::Relaxed) {
                    let subject = rooms[n % rooms.len()].clone();
                    n += 1;
                    let sent = Instant::now();
                    let js = js.clone();
                    let payload = payload.clone();
                    pending.push(async move {
                        let ack = js.publish(subject, payload).await;
                        let ok = match ack {
                            Ok(f) => f.await.is_ok(),
                            Err(_) => false,
                        };
                        (ok, sent.elapsed())
                    });
                }
                let Some((ok, took)) = pending.next().await else { break };
                if counting.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    if ok {
                        acked.fetch_add(1, Ordering::Relaxed);
                        let _ = local.record(took.min(MAX_ACK).as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist.lock().expect("histogram lock").add(&local).expect("same bounds");
        }));
    }
    tokio::time::sleep(args.warmup).await;
    let pids: Vec<u32> = nodes.iter().filter_map(Nats::pid).collect();
    let me = std::process::id();
    let (server0, client0) = (proc::cpu_seconds_of(&pids), proc::cpu_seconds(me)?);
    counting.store(true, Ordering::SeqCst);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::SeqCst);
    let window = started.elapsed();
    let (server1, client1) = (proc::cpu_seconds_of(&pids), proc::cpu_seconds(me)?);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    for t in tasks {
        t.await.context("a publisher")?;
    }
    let hist = hist.lock().expect("histogram lock");
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let acked = acked.load(Ordering::SeqCst);
    Ok(Run {
        partitions,
        acked,
        errors: errors.load(Ordering::SeqCst),
        per_sec: acked as f64 / window.as_secs_f64(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
        server_us: (server1 - server0) * 1e6 / acked.max(1) as f64,
        client_us: (client1 - client0) * 1e6 / acked.max(1) as f64,
        load,
    })
}

async fn connect(urls: &[String]) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connect(urls)
        .await
        .context("connecting to NATS")
}

/// A fresh NATS for one run, mapping rooms to `partitions` streams.
async fn spawn(topology: Topology, partitions: u32) -> Result<Vec<Nats>> {
    match topology {
        Topology::Single => Ok(vec![Nats::start(NatsOptions {
            stream_partitions: partitions,
            logs: Logs::Quiet,
            ..NatsOptions::default()
        })?]),
        Topology::Cluster => {
            let routes = (0..3)
                .map(|_| herald_harness::free_port())
                .collect::<std::io::Result<Vec<u16>>>()?;
            cluster_args("herald-ceiling", &routes)
                .into_iter()
                .map(|args| {
                    Nats::start(NatsOptions {
                        args,
                        stream_partitions: partitions,
                        logs: Logs::Quiet,
                        ..NatsOptions::default()
                    })
                })
                .collect()
        }
    }
}

fn topology_name(t: Topology) -> &'static str {
    match t {
        Topology::Single => "single server",
        Topology::Cluster => "3-node cluster",
    }
}

fn report_of(args: &CeilingArgs, replicas: usize, runs: &[Run]) -> Report {
    let mut header = report::machine_header();
    header.extend([
        (
            "topology".into(),
            format!("{}, streams R{replicas}", topology_name(args.topology)),
        ),
        (
            "load".into(),
            format!(
                "{} rooms, {} publishes in flight over {} connections, {} B payloads",
                args.rooms, args.in_flight, args.connections, args.payload_bytes
            ),
        ),
        (
            "window".into(),
            format!(
                "{:?} after {:?} of warm-up, {} runs each",
                args.duration, args.warmup, args.runs
            ),
        ),
    ]);
    let rows = runs
        .iter()
        .map(|r| {
            vec![
                r.partitions.to_string(),
                report::num(r.per_sec),
                report::num(r.p50_ms),
                report::num(r.p99_ms),
                report::num(r.max_ms),
                r.errors.to_string(),
                report::num(r.server_us),
                report::num(r.client_us),
                report::num(r.load),
            ]
        })
        .collect();
    let json = serde_json::json!({
        "topology": topology_name(args.topology),
        "replicas": replicas,
        "rooms": args.rooms,
        "in_flight": args.in_flight,
        "connections": args.connections,
        "payload_bytes": args.payload_bytes,
        "window_s": args.duration.as_secs_f64(),
        "revision": report::run_revision(),
        "runs": runs.iter().map(|r| serde_json::json!({
            "partitions": r.partitions,
            "acked": r.acked,
            "acked_per_s": r.per_sec,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "max_ms": r.max_ms,
            "errors": r.errors,
            "server_cpu_us_per_publish": r.server_us,
            "client_cpu_us_per_publish": r.client_us,
            "load_avg_1m": r.load,
        })).collect::<Vec<_>>(),
    });
    Report {
        title: "Publish ceiling: one stream against partitions".into(),
        header,
        sections: vec![Section {
            heading: "Runs".into(),
            text: vec![
                "Acked publishes per second in the window; ack latency from the publish to its ack; CPU \
                 (user + system) of every nats-server and of the publishing client in the window, per acked \
                 publish; the box's 1-minute load average at the window's end."
                    .into(),
            ],
            table: Some(Table {
                head: [
                    "partitions",
                    "acked/s",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "errors",
                    "nats-server CPU µs/publish",
                    "client CPU µs/publish",
                    "load avg (1 min)",
                ]
                .map(String::from)
                .to_vec(),
                rows,
            }),
            charts: Vec::new(),
        }],
        json,
    }
}
