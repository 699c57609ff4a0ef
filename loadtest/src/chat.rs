//! `loadtest chat`: chat-shaped traffic on a stack it spawns (nats-server, fanout, G
//! gateways): R rooms × S subscribers, E events/s spread evenly over the rooms, published by
//! a backend through JetStream to `herald.room.<room>`. Delivery (lost, duplicates, out of
//! order), latency, CPU per delivery of every process, NATS messages sent to each gateway per
//! event (from nats-server's `/connz`, net of the same counters over an idle window), and RSS
//! per held room and per connection.
//!
//! `--target nchan` runs the same subscribers, schedule and checks against Nchan (nginx with
//! the nchan module, see [`crate::nchan`]) instead, as the reference a small room's cost is
//! judged by; NATS figures are then n/a.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use herald_harness::ws::{Connect, Incoming, WsConn};
use herald_proto::frame::EventView;
use herald_proto::subject::Subjects;
use herald_service::stream::Storage;
use serde::{Deserialize, Serialize};

use crate::nchan::{self, Nginx};
use crate::report::{num, Report, Section, Table};
use crate::usage::{Procs, Usage};
use crate::{client, stack};

/// File descriptors one worker may use for connections (the hard limit is 20,000).
const PER_PROCESS: usize = 19_000;

/// JetStream publishes awaiting their ack at once: bounds the publisher's memory when the
/// stream is slower than the rate.
const ACKS_IN_FLIGHT: usize = 16_384;

/// POSTs queued per publishing connection (`--target nchan`): bounds the publisher's memory
/// when nginx answers slower than the rate.
const POSTS_QUEUED: usize = 1024;

/// The server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// nats-server, fanout and G gateways; the backend publishes through JetStream.
    Herald,
    /// nginx with the nchan module; the backend POSTs each event to `/pub/<room>`.
    Nchan,
}

/// How the backend publishes to Herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Publish {
    /// JetStream publishes: each is acked once stored (acks awaited concurrently).
    Jetstream,
    /// Core NATS publishes without a reply subject: stored all the same, but not acked, so
    /// the backend does not learn of a refusal or loss.
    Core,
}

/// Where a room's subscribers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// All subscribers of a room on one gateway, rooms dealt round-robin: each gateway holds
    /// a disjoint set of rooms.
    ByRoom,
    /// Each room's subscribers dealt round-robin over the gateways.
    Spread,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The server to measure: Herald's stack, or Nchan as the reference.
    #[arg(long, value_enum, default_value_t = Target::Herald)]
    target: Target,
    /// nginx worker processes (`--target nchan`); one per core by default.
    #[arg(long)]
    nginx_workers: Option<usize>,
    /// The publisher's keep-alive HTTP connections (`--target nchan`); each room's events go
    /// on one of them, in order, one POST at a time.
    #[arg(long, default_value_t = 32)]
    publish_connections: usize,
    /// How the backend publishes (`--target herald`).
    #[arg(long, value_enum, default_value_t = Publish::Jetstream)]
    publish: Publish,
    /// Events the backend publishes back to back, every batch / rate seconds (1: each event
    /// on its own schedule, as a backend publishes events as they happen).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    publish_batch: u64,
    /// Where the event stream keeps events (`--target herald`; fanout's and the gateways'
    /// `--stream-storage`).
    #[arg(long, value_enum, default_value_t = Storage::File)]
    stream_storage: Storage,
    /// Rooms.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Subscribers per room (one WebSocket connection each).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Gateways to spawn.
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// How subscribers are placed on the gateways.
    #[arg(long, value_enum, default_value_t = Placement::ByRoom)]
    placement: Placement,
    /// Events per second over all rooms, dealt round-robin (each room gets rate / rooms).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Publishing time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    run_time: Duration,
    /// The idle window before publishing, over which NATS control traffic (and idle CPU) is
    /// measured and subtracted, scaled to the publishing window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle_time: Duration,
    /// After publishing, how long subscribers may take to receive the rest.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_time: Duration,
    /// Payload bytes per event (padding).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// One more flag for every gateway, e.g. `--gateway-arg=--room-subscriptions=per-room`
    /// (repeat for several).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
    /// Source addresses to connect from (comma-separated); plan on ~14,000 connections per
    /// source.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Connection attempts in flight at once, per worker.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Connections per worker process (at most 19,000 under the 20,000-file limit).
    #[arg(long, default_value_t = PER_PROCESS)]
    per_process: usize,
    /// Where report.md, report.json, report.html and the gateways' logs go.
    #[arg(long, default_value = "target/loadtest/chat")]
    report_dir: PathBuf,
    /// Run as one worker (internal).
    #[arg(long, hide = true)]
    worker: bool,
    /// Gateway WebSocket URLs (internal, for workers).
    #[arg(long, hide = true, value_delimiter = ',')]
    gateway_url: Vec<String>,
    /// Index of this worker's first connection (internal).
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
    /// Connections of this worker (internal).
    #[arg(long, hide = true, default_value_t = 0)]
    count: usize,
}

/// Where connection `i` goes: its room and its gateway.
fn place(i: usize, subscribers: usize, gateways: usize, placement: Placement) -> (usize, usize) {
    let room = i / subscribers.max(1);
    let g = match placement {
        Placement::ByRoom => room % gateways.max(1),
        Placement::Spread => i % gateways.max(1),
    };
    (room, g)
}

fn room_name(r: usize) -> String {
    format!("chat-{r}")
}

/// Events room `r` got when `published` events were dealt round-robin over `rooms`.
fn events_of_room(r: usize, rooms: usize, published: u64) -> u64 {
    let rooms = rooms.max(1) as u64;
    published / rooms + u64::from((r as u64) < published % rooms)
}

/// What the publisher puts in an event: the scheduled time (ns since the epoch) and the
/// event's index in its room.
#[derive(Debug, Deserialize)]
struct Mark {
    t0: u64,
    n: u64,
}

/// A worker's first line: how many connections opened.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Connected {
    connected: u64,
    failed: u64,
    seconds: f64,
}

/// Delivery counts of the connections on one gateway.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct GatewayTally {
    connections: u64,
    expected: u64,
    /// Distinct events received.
    delivered: u64,
    lost: u64,
    duplicates: u64,
    /// Events that arrived after a later event of their room.
    out_of_order: u64,
}

/// A worker's last line.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Done {
    gateways: Vec<GatewayTally>,
    closed: u64,
    /// The latency histogram (µs) as (value, count) pairs.
    latency: Vec<(u64, u64)>,
}

/// One connection's view of its room: which event indexes it has seen.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    max: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    InOrder,
    OutOfOrder,
    Duplicate,
}

impl Seen {
    fn mark(&mut self, n: u64) -> Arrival {
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & bit != 0 {
            return Arrival::Duplicate;
        }
        self.bits[word] |= bit;
        let late = self.max.is_some_and(|m| n < m);
        self.max = Some(self.max.map_or(n, |m| m.max(n)));
        if late {
            Arrival::OutOfOrder
        } else {
            Arrival::InOrder
        }
    }
}

/// Per-gateway counters shared by a worker's readers.
#[derive(Default)]
struct Counters {
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
}

pub async fn run(a: ChatArgs) -> Result<()> {
    if a.worker {
        return worker(a).await;
    }
    if a.rooms == 0 || a.subscribers == 0 || a.gateways == 0 || a.rate <= 0.0 {
        bail!("--rooms, --subscribers, --gateways and --rate must be above 0");
    }
    if a.target == Target::Nchan && a.gateways != 1 {
        bail!("--target nchan runs one nginx: --gateways must be 1");
    }
    std::fs::create_dir_all(&a.report_dir)?;
    let servers = Servers::start(&a)?;
    let urls = servers.urls();
    let gateway_pids = servers.gateway_pids();
    let procs = servers.procs();

    let before = procs.sample();
    let started = Instant::now();
    let mut children = start_workers(&a, &urls)?;
    let mut connected = Connected::default();
    for (_, out) in &mut children {
        let c: Connected = read_line(out)?;
        connected.connected += c.connected;
        connected.failed += c.failed;
    }
    connected.seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} of {} subscribers connected in {:.1} s over {} workers",
        connected.connected,
        a.rooms * a.subscribers,
        connected.seconds,
        children.len()
    );
    let subscribed = procs.sample();

    // The idle window: control traffic and idle CPU.
    let idle_connz0 = servers.connz()?;
    let idle_usage0 = procs.sample();
    let idle_start = Instant::now();
    tokio::time::sleep(a.idle_time).await;
    let idle_connz1 = servers.connz()?;
    let idle_usage1 = procs.sample();
    let idle_s = idle_start.elapsed().as_secs_f64();
    let after_idle = idle_usage1.clone();

    // The publishing window, through the subscribers' drain.
    let pub_connz0 = servers.connz()?;
    let pub_usage0 = procs.sample();
    let pub_start = Instant::now();
    let published = match &servers {
        Servers::Herald { nats, .. } => publish(&a, &nats.url()).await?,
        Servers::Nchan(nginx) => publish_nchan(&a, nginx.addr).await?,
    };
    let publish_s = pub_start.elapsed().as_secs_f64();
    let mut done = Vec::new();
    for (child, out) in &mut children {
        if let Some(stdin) = child.stdin.as_mut() {
            writeln!(stdin, "stop {}", published.acked)?;
        }
        done.push(read_line::<Done>(out)?);
    }
    let pub_usage1 = procs.sample();
    let pub_connz1 = servers.connz()?;
    let window_s = pub_start.elapsed().as_secs_f64();

    let names = servers.process_names();
    let nginx_conf = match &servers {
        Servers::Nchan(nginx) => Some(nginx.conf().to_owned()),
        Servers::Herald { .. } => None,
    };
    drop(servers);
    for (mut child, _) in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }

    let run = Run {
        target: a.target,
        names,
        nginx_conf,
        procs,
        gateway_pids,
        connected,
        before,
        subscribed: after_idle,
        subscribed_at_once: subscribed,
        idle: (idle_usage0, idle_usage1, idle_s),
        window: (pub_usage0, pub_usage1, window_s),
        publish_s,
        idle_msgs: (idle_connz0, idle_connz1),
        pub_msgs: (pub_connz0, pub_connz1),
        published,
        done,
    };
    let report = report(&a, &run)?;
    report.write(&a.report_dir)?;
    eprintln!("report: {}", a.report_dir.join("report.html").display());
    if run.connected.failed > 0 {
        bail!("{} subscribers failed to connect", run.connected.failed);
    }
    Ok(())
}

/// The servers of a run, stopped on drop.
// One value per run: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Servers {
    /// Fields drop in order: the gateways first, then fanout, then nats-server.
    Herald {
        gateways: Vec<stack::Program>,
        fanout: stack::Program,
        nats: stack::Nats,
    },
    Nchan(Nginx),
}

impl Servers {
    fn start(a: &ChatArgs) -> Result<Self> {
        match a.target {
            Target::Herald => {
                let nats = stack::nats()?;
                let storage = format!("--stream-storage={}", value_name(a.stream_storage));
                let fanout = stack::fanout_with(&nats.url(), vec![storage.clone()])?;
                let mut gateways = Vec::new();
                let mut extra = vec!["--max-connections".to_owned(), "100000".to_owned(), storage];
                extra.extend(a.gateway_args.iter().cloned());
                for g in 0..a.gateways {
                    let log = a.report_dir.join(format!("gateway-{g}.log"));
                    gateways.push(stack::gateway(&nats.url(), &gateway_id(g), &extra, Some(&log))?);
                }
                Ok(Self::Herald { gateways, fanout, nats })
            }
            Target::Nchan => {
                let connections = a.rooms * a.subscribers + a.publish_connections;
                let config = nchan::Config {
                    module: nchan::nchan_module()?,
                    workers: nginx_workers(a),
                    worker_connections: connections + 1024,
                    port: herald_harness::free_port()?,
                    dir: a.report_dir.join("nginx"),
                };
                Ok(Self::Nchan(Nginx::start(&config)?))
            }
        }
    }

    /// Where subscribers connect: each gateway's WebSocket URL, or nginx's `ws://` base.
    fn urls(&self) -> Vec<String> {
        match self {
            Self::Herald { gateways, .. } => gateways.iter().map(|g| g.ws_url()).collect(),
            Self::Nchan(nginx) => vec![nginx.ws_base()],
        }
    }

    fn gateway_pids(&self) -> Vec<u32> {
        match self {
            Self::Herald { gateways, .. } => gateways.iter().map(|g| g.pid()).collect(),
            Self::Nchan(_) => Vec::new(),
        }
    }

    fn procs(&self) -> Procs {
        match self {
            Self::Herald { fanout, nats, .. } => Procs::new(&self.gateway_pids(), nats.pid(), Some(fanout.pid())),
            Self::Nchan(nginx) => Procs::nginx(nginx.pids()),
        }
    }

    /// Every measured process by name, in the order of [`Servers::procs`].
    fn process_names(&self) -> Vec<String> {
        match self {
            Self::Herald { gateways, .. } => {
                let mut names: Vec<String> = (0..gateways.len()).map(|g| format!("gateway {g}")).collect();
                names.push("nats-server".into());
                names.push("fanout".into());
                names
            }
            Self::Nchan(nginx) => {
                let workers = nginx.pids().len() - 1;
                std::iter::once("nginx master".to_owned())
                    .chain((1..=workers).map(|w| format!("nginx worker {w}")))
                    .collect()
            }
        }
    }

    /// nats-server's `/connz` (nothing for nchan).
    fn connz(&self) -> Result<Connz> {
        match self {
            Self::Herald { nats, .. } => connz(&format!("http://127.0.0.1:{}/connz?limit=10000", nats.monitor_port())),
            Self::Nchan(_) => Ok(Vec::new()),
        }
    }
}

/// `--nginx-workers`, or one per core.
fn nginx_workers(a: &ChatArgs) -> usize {
    a.nginx_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1)
}

fn gateway_id(g: usize) -> String {
    format!("chat-{g}")
}

/// The name a gateway gives its NATS connection (`herald-gateway <gateway-id>`).
fn nats_name(g: usize) -> String {
    format!("herald-gateway {}", gateway_id(g))
}

/// Whether a `/connz` connection name belongs to gateway `base` (its NATS connection, or one
/// of several named `<base>` followed by a suffix that does not continue the id).
fn name_matches(name: &str, base: &str) -> bool {
    name.strip_prefix(base)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Each NATS connection's name and out_msgs, from `/connz`.
type Connz = Vec<(String, u64)>;

/// `/connz`: each connection's name and out_msgs.
fn connz(url: &str) -> Result<Connz> {
    let (status, body) = stack::get(url)?;
    if status != 200 {
        bail!("{url}: {status}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("connz JSON")?;
    Ok(v["connections"]
        .as_array()
        .context("connz connections")?
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["out_msgs"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// out_msgs summed over the connections of gateway `g`, and how many connections.
fn gateway_msgs(connz: &[(String, u64)], g: usize) -> (u64, usize) {
    let base = nats_name(g);
    let matching = connz.iter().filter(|(n, _)| name_matches(n, &base));
    matching.fold((0, 0), |(m, c), (_, out)| (m + out, c + 1))
}

fn read_line<T: for<'de> Deserialize<'de>>(out: &mut BufReader<ChildStdout>) -> Result<T> {
    let mut line = String::new();
    out.read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("a chat worker said {line:?}"))
}

fn start_workers(a: &ChatArgs, urls: &[String]) -> Result<Vec<(Child, BufReader<ChildStdout>)>> {
    let total = a.rooms * a.subscribers;
    let per = a.per_process.clamp(1, PER_PROCESS);
    let sources = a.sources.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    for w in 0..total.div_ceil(per) {
        let n = per.min(total - w * per);
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("chat")
            .arg("--worker")
            .args(["--target", &value_name(a.target)])
            .args(["--first", &(w * per).to_string(), "--count", &n.to_string()])
            .args(["--rooms", &a.rooms.to_string()])
            .args(["--subscribers", &a.subscribers.to_string()])
            .args(["--gateways", &a.gateways.to_string()])
            .args(["--placement", &value_name(a.placement)])
            .args(["--gateway-url", &urls.join(",")])
            .args(["--sources", &sources])
            .args(["--concurrency", &a.concurrency.to_string()])
            .args(["--drain-time", &humantime::format_duration(a.drain_time).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().context("starting a chat worker")?;
        let out = BufReader::new(child.stdout.take().context("worker stdout")?);
        children.push((child, out));
    }
    Ok(children)
}

/// What the backend published.
#[derive(Debug, Default, Serialize)]
struct Published {
    sent: u64,
    acked: u64,
    failed: u64,
    /// JetStream publish ack latency, ms.
    ack_p50_ms: f64,
    ack_p99_ms: f64,
}

/// Publishes `--rate` events/s for `--run-time` on the scheduled clock, event `i` to room
/// `i % rooms`, `--publish-batch` at a time: through JetStream, waiting for every ack, or
/// as core publishes, flushed at the end.
async fn publish(a: &ChatArgs, nats_url: &str) -> Result<Published> {
    let client = async_nats::ConnectOptions::new()
        .name("loadtest chat publisher")
        .connect(nats_url)
        .await
        .context("NATS")?;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = Subjects::new(herald_proto::subject::DEFAULT_PREFIX);
    let subject_of: Vec<String> = (0..a.rooms).map(|r| subjects.room(&room_name(r))).collect();
    let pad = "x".repeat(a.payload_bytes);
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(Instant, async_nats::jetstream::context::PublishAckFuture)>(ACKS_IN_FLIGHT);
    let acks = tokio::spawn(async move {
        let (mut acked, mut failed) = (0u64, 0u64);
        let mut hist = crate::latency_histogram();
        while let Some((sent, ack)) = rx.recv().await {
            match ack.await {
                Ok(_) => {
                    acked += 1;
                    let _ = hist.record((sent.elapsed().as_micros() as u64).max(1));
                }
                Err(_) => failed += 1,
            }
        }
        (acked, failed, hist)
    });
    let count = (a.rate * a.run_time.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut scheduled = start;
    for i in 0..count {
        if i % a.publish_batch == 0 {
            scheduled = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(scheduled).await;
        }
        let t0 = crate::scheduled_stamp(scheduled);
        let (r, n) = ((i % a.rooms as u64) as usize, i / a.rooms as u64);
        let body = event_body(t0, n, &pad);
        let at = Instant::now();
        match a.publish {
            Publish::Jetstream => match js.publish(subject_of[r].clone(), body.into()).await {
                Ok(ack) => tx.send((at, ack)).await.context("the ack task ended")?,
                Err(e) => bail!("publishing: {e}"),
            },
            Publish::Core => client
                .publish(subject_of[r].clone(), body.into())
                .await
                .context("publishing")?,
        }
        sent += 1;
    }
    drop(tx);
    let (mut acked, failed, hist) = acks.await?;
    if a.publish == Publish::Core {
        // Nothing acks a core publish: once flushed, every event is counted as sent; the
        // subscribers' counts say whether each was stored and delivered.
        client.flush().await.context("flushing")?;
        acked = sent;
    }
    Ok(Published {
        sent,
        acked,
        failed,
        ack_p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        ack_p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// An event's body: its scheduled time, its index in its room, and padding.
fn event_body(t0: u64, n: u64, pad: &str) -> String {
    format!(r#"{{"t0":{t0},"n":{n},"pad":"{pad}"}}"#)
}

/// Publishes `--rate` events/s for `--run-time` on the scheduled clock, event `i` to room
/// `i % rooms`, each as one HTTP POST to nchan, and waits for every answer.
async fn publish_nchan(a: &ChatArgs, addr: std::net::SocketAddr) -> Result<Published> {
    let rooms: Vec<String> = (0..a.rooms).map(room_name).collect();
    let pad = "x".repeat(a.payload_bytes);
    let mut poster = nchan::Poster::new(addr, a.publish_connections, POSTS_QUEUED);
    let count = (a.rate * a.run_time.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let start = tokio::time::Instant::now();
    for i in 0..count {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let t0 = crate::scheduled_stamp(scheduled);
        let (r, n) = ((i % a.rooms as u64) as usize, i / a.rooms as u64);
        poster.send(r, &rooms[r], event_body(t0, n, &pad)).await?;
    }
    let posted = poster.finish().await?;
    Ok(Published {
        sent: posted.sent,
        acked: posted.accepted,
        failed: posted.failed,
        ack_p50_ms: posted.latency.value_at_quantile(0.5) as f64 / 1000.0,
        ack_p99_ms: posted.latency.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// A subscriber's connection: a Herald client subscribed to its room, or a WebSocket on
/// nchan's `/sub/<room>`.
enum Subscriber {
    Herald(client::Conn),
    Nchan(WsConn),
}

impl Subscriber {
    /// Connects to the server at `url` (a gateway's WebSocket URL, or nginx's base) and
    /// subscribes to `room`.
    async fn open(target: Target, url: &str, source: IpAddr, room: &str) -> Result<Self> {
        match target {
            Target::Herald => {
                let mut c = client::Conn::open(url, source, None).await?;
                c.subscribe(room).await?;
                Ok(Self::Herald(c))
            }
            Target::Nchan => {
                let ws = WsConn::open(Connect {
                    url: nchan::sub_url(url, room),
                    source: Some(source),
                    ..Connect::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(Self::Nchan(ws))
            }
        }
    }

    /// What a subscription must have done within the open timeout.
    fn opened(target: Target) -> &'static str {
        match target {
            Target::Herald => "welcome or ack",
            Target::Nchan => "WebSocket upgrade",
        }
    }

    /// The next frame's mark (`None` for a frame that carries none); an error once the
    /// server closes or the socket ends.
    async fn next_mark(&mut self) -> Result<Option<Mark>> {
        match self {
            Self::Herald(c) => {
                let bytes = c.next_data().await?;
                let Some(ev) = EventView::decode(&bytes) else {
                    return Ok(None);
                };
                Ok(ev.data.and_then(|d| serde_json::from_str::<Mark>(d.get()).ok()))
            }
            Self::Nchan(ws) => match ws.read().await {
                Incoming::Data(bytes) => Ok(serde_json::from_slice::<Mark>(&bytes).ok()),
                Incoming::Closed(code) => bail!("closed by nginx: {code}"),
                Incoming::Eof => bail!("the connection ended"),
            },
        }
    }
}

// === worker ===

async fn worker(a: ChatArgs) -> Result<()> {
    let started = Instant::now();
    let g_count = a.gateway_url.len().max(1);
    let counters: Arc<Vec<Counters>> = Arc::new((0..g_count).map(|_| Counters::default()).collect());
    let distinct: Arc<Vec<AtomicU64>> = Arc::new((0..a.count).map(|_| AtomicU64::new(0)).collect());
    let opened: Arc<Vec<AtomicU64>> = Arc::new((0..a.count).map(|_| AtomicU64::new(0)).collect());
    let closed = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(crate::latency_histogram()));
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let (answer_tx, mut answers) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
    for k in 0..a.count {
        let i = a.first + k;
        let (room, g) = place(i, a.subscribers, g_count, a.placement);
        let url = a.gateway_url[g].clone();
        let source = a.sources[(i / g_count) % a.sources.len().max(1)];
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let (counters, distinct, opened, closed, hist, answer_tx) = (
            Arc::clone(&counters),
            Arc::clone(&distinct),
            Arc::clone(&opened),
            Arc::clone(&closed),
            Arc::clone(&hist),
            answer_tx.clone(),
        );
        let target = a.target;
        tokio::spawn(async move {
            let room = room_name(room);
            let open = Subscriber::open(target, &url, source, &room);
            let c = match tokio::time::timeout(crate::OPEN_TIMEOUT, open).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!(
                    "no {} within {:?}",
                    Subscriber::opened(target),
                    crate::OPEN_TIMEOUT
                )),
            };
            drop(permit);
            match c {
                Ok(mut c) => {
                    opened[k].store(1, Relaxed);
                    let _ = answer_tx.send(Ok(()));
                    drop(answer_tx);
                    let mut seen = Seen::default();
                    while let Ok(mark) = c.next_mark().await {
                        let Some(mark) = mark else {
                            continue;
                        };
                        match seen.mark(mark.n) {
                            Arrival::Duplicate => {
                                counters[g].duplicates.fetch_add(1, Relaxed);
                                continue;
                            }
                            Arrival::OutOfOrder => {
                                counters[g].out_of_order.fetch_add(1, Relaxed);
                            }
                            Arrival::InOrder => {}
                        }
                        distinct[k].fetch_add(1, Relaxed);
                        let us = (crate::now_ns().saturating_sub(mark.t0) / 1000).max(1);
                        let _ = hist.lock().expect("histogram").record(us);
                    }
                    closed.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    let _ = answer_tx.send(Err(e));
                }
            }
        });
    }
    drop(answer_tx);
    let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
    while let Some(r) = answers.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("{failed} chat connections failed; the first: {e:#}");
    }
    let line = Connected {
        connected: ok,
        failed,
        seconds: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&line)?);

    // "stop <published>" on stdin: the events were all published.
    let published = crate::hold::read_stop().await?;
    let expected_of = |k: usize| {
        let (room, _) = place(a.first + k, a.subscribers, g_count, a.placement);
        events_of_room(room, a.rooms, published)
    };
    let want: u64 = (0..a.count)
        .filter(|&k| opened[k].load(Relaxed) == 1)
        .map(expected_of)
        .sum();
    let until = Instant::now() + a.drain_time;
    while distinct.iter().map(|d| d.load(Relaxed)).sum::<u64>() < want && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tallies = vec![GatewayTally::default(); g_count];
    for k in 0..a.count {
        if opened[k].load(Relaxed) == 0 {
            continue;
        }
        let (_, g) = place(a.first + k, a.subscribers, g_count, a.placement);
        let (expected, got) = (expected_of(k), distinct[k].load(Relaxed));
        let t = &mut tallies[g];
        t.connections += 1;
        t.expected += expected;
        t.delivered += got;
        t.lost += expected.saturating_sub(got);
    }
    for (t, c) in tallies.iter_mut().zip(counters.iter()) {
        t.duplicates = c.duplicates.load(Relaxed);
        t.out_of_order = c.out_of_order.load(Relaxed);
    }
    let latency = hist
        .lock()
        .expect("histogram")
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let done = Done {
        gateways: tallies,
        closed: closed.load(Relaxed),
        latency,
    };
    println!("{}", serde_json::to_string(&done)?);
    // Hold the connections until the parent closes stdin after stopping the servers, so the
    // servers close first and keep the TIME_WAIT sockets (as `hold` does).
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())).await??;
    Ok(())
}

// === report ===

/// What a run measured.
struct Run {
    target: Target,
    /// Every measured process by name, in the order of the usage vectors.
    names: Vec<String>,
    /// nginx's generated configuration (`--target nchan`).
    nginx_conf: Option<PathBuf>,
    procs: Procs,
    gateway_pids: Vec<u32>,
    connected: Connected,
    /// Before the subscribers connected.
    before: Usage,
    /// After all subscribed and the idle window (the RSS figures).
    subscribed: Usage,
    /// Right after the last subscribe was acked.
    subscribed_at_once: Usage,
    /// Usage at the idle window's start and end, and its length.
    idle: (Usage, Usage, f64),
    /// The same for the publishing window (publish and drain).
    window: (Usage, Usage, f64),
    publish_s: f64,
    idle_msgs: (Connz, Connz),
    pub_msgs: (Connz, Connz),
    published: Published,
    done: Vec<Done>,
}

/// One gateway's figures.
#[derive(Debug, Serialize)]
struct GatewayFigures {
    gateway: usize,
    nats_connection_name: Option<String>,
    nats_connections: Option<usize>,
    rooms_held: u64,
    connections: u64,
    /// Events published to rooms this gateway holds.
    events_to_held_rooms: u64,
    delivered: u64,
    expected: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    /// NATS messages sent to this gateway over the publishing window, over the idle window,
    /// and the first net of the second scaled to the first's length.
    nats_msgs_window: Option<u64>,
    nats_msgs_idle: Option<u64>,
    nats_msgs_net: Option<f64>,
    nats_msgs_per_event: Option<f64>,
    /// Of the events published to rooms this gateway does not hold, the share NATS sent it.
    foreign_share: Option<f64>,
    cpu_s: f64,
    cpu_us_per_delivery: f64,
    idle_cpu_s: f64,
    rss_before_kib: u64,
    rss_subscribed_kib: u64,
    rss_growth_kib_per_room: f64,
    rss_growth_kib_per_connection: f64,
}

fn delta(a: &[(String, u64)], b: &[(String, u64)], g: usize) -> (u64, usize) {
    let (before, _) = gateway_msgs(a, g);
    let (after, n) = gateway_msgs(b, g);
    (after.saturating_sub(before), n)
}

fn rooms_held(a: &ChatArgs, g: usize) -> Vec<usize> {
    (0..a.rooms)
        .filter(|&r| {
            (0..a.subscribers).any(|j| place(r * a.subscribers + j, a.subscribers, a.gateways, a.placement).1 == g)
        })
        .collect()
}

/// The processes (indexes into the usage vectors) of gateway `g`: the gateway, or all of
/// nginx for nchan's one server.
fn server_procs(run: &Run, g: usize) -> std::ops::Range<usize> {
    match run.target {
        Target::Herald => g..g + 1,
        Target::Nchan => 0..run.names.len(),
    }
}

fn figures(a: &ChatArgs, run: &Run) -> Vec<GatewayFigures> {
    let published = run.published.acked;
    let deliveries = total(run, |t| t.delivered).max(1) as f64;
    let scale = run.window.2 / run.idle.2.max(1e-9);
    (0..a.gateways)
        .map(|g| {
            let held = rooms_held(a, g);
            let to_held: u64 = held.iter().map(|&r| events_of_room(r, a.rooms, published)).sum();
            let tally =
                |f: fn(&GatewayTally) -> u64| -> u64 { run.done.iter().filter_map(|d| d.gateways.get(g)).map(f).sum() };
            let (window, n) = delta(&run.pub_msgs.0, &run.pub_msgs.1, g);
            let (idle, _) = delta(&run.idle_msgs.0, &run.idle_msgs.1, g);
            let net = window as f64 - idle as f64 * scale;
            let foreign = published - to_held;
            let procs = server_procs(run, g);
            let sum = |u: &[f64]| -> f64 { u[procs.clone()].iter().sum() };
            let kib = |u: &[u64]| -> u64 { u[procs.clone()].iter().sum() };
            let cpu = sum(&run.window.1.cpu_s) - sum(&run.window.0.cpu_s);
            let connections = tally(|t| t.connections);
            let growth = kib(&run.subscribed.rss_kib) as f64 - kib(&run.before.rss_kib) as f64;
            let nats = run.target == Target::Herald;
            GatewayFigures {
                gateway: g,
                nats_connection_name: nats.then(|| nats_name(g)),
                nats_connections: nats.then_some(n),
                rooms_held: held.len() as u64,
                connections,
                events_to_held_rooms: to_held,
                delivered: tally(|t| t.delivered),
                expected: tally(|t| t.expected),
                lost: tally(|t| t.lost),
                duplicates: tally(|t| t.duplicates),
                out_of_order: tally(|t| t.out_of_order),
                nats_msgs_window: nats.then_some(window),
                nats_msgs_idle: nats.then_some(idle),
                nats_msgs_net: nats.then_some(net),
                nats_msgs_per_event: nats.then(|| net / published.max(1) as f64),
                foreign_share: (nats && foreign > 0).then(|| ((net - to_held as f64) / foreign as f64).max(0.0)),
                cpu_s: cpu,
                cpu_us_per_delivery: cpu * 1e6 / deliveries,
                idle_cpu_s: sum(&run.idle.1.cpu_s) - sum(&run.idle.0.cpu_s),
                rss_before_kib: kib(&run.before.rss_kib),
                rss_subscribed_kib: kib(&run.subscribed.rss_kib),
                rss_growth_kib_per_room: growth / held.len().max(1) as f64,
                rss_growth_kib_per_connection: growth / connections.max(1) as f64,
            }
        })
        .collect()
}

fn total(run: &Run, f: fn(&GatewayTally) -> u64) -> u64 {
    run.done.iter().flat_map(|d| d.gateways.iter()).map(f).sum()
}

fn report(a: &ChatArgs, run: &Run) -> Result<Report> {
    let gws = figures(a, run);
    let published = run.published.acked;
    let expected = total(run, |t| t.expected);
    let delivered = total(run, |t| t.delivered);
    let lost = total(run, |t| t.lost);
    let duplicates = total(run, |t| t.duplicates);
    let out_of_order = total(run, |t| t.out_of_order);
    let closed: u64 = run.done.iter().map(|d| d.closed).sum();
    let mut latency = crate::latency_histogram();
    for d in &run.done {
        for &(v, c) in &d.latency {
            latency.record_n(v, c)?;
        }
    }
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let (p50, p99, max) = (q(&latency, 0.5), q(&latency, 0.99), latency.max() as f64 / 1000.0);
    let names = &run.names;
    let (w0, w1, window_s) = &run.window;
    let (i0, i1, idle_s) = &run.idle;
    let per_delivery = |cpu: f64| cpu * 1e6 / delivered.max(1) as f64;
    let processes: Vec<serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cpu = w1.cpu_s[i] - w0.cpu_s[i];
            serde_json::json!({
                "process": name,
                "cpu_s": cpu,
                "cpu_us_per_delivery": per_delivery(cpu),
                "idle_cpu_s": i1.cpu_s[i] - i0.cpu_s[i],
                "rss_before_kib": run.before.rss_kib[i],
                "rss_subscribed_kib": run.subscribed.rss_kib[i],
                "rss_at_last_ack_kib": run.subscribed_at_once.rss_kib[i],
            })
        })
        .collect();
    let stack_cpu: f64 = (0..names.len()).map(|i| w1.cpu_s[i] - w0.cpu_s[i]).sum();
    let stack_idle_cpu: f64 = (0..names.len()).map(|i| i1.cpu_s[i] - i0.cpu_s[i]).sum();
    let gateway_cpu: f64 = gws.iter().map(|g| g.cpu_s).sum();
    let msgs_net: f64 = gws.iter().filter_map(|g| g.nats_msgs_net).sum();
    let msgs_window: u64 = gws.iter().filter_map(|g| g.nats_msgs_window).sum();
    let msgs_idle: u64 = gws.iter().filter_map(|g| g.nats_msgs_idle).sum();
    let nats_i = run.gateway_pids.len();
    let nats = run.target == Target::Herald;
    let nats_growth = nats.then(|| run.subscribed.rss_kib[nats_i] as f64 - run.before.rss_kib[nats_i] as f64);
    let connections = run.connected.connected;
    let server_growth: f64 = gws
        .iter()
        .map(|g| g.rss_subscribed_kib as f64 - g.rss_before_kib as f64)
        .sum();

    let summary: Vec<(String, String)> = vec![
        (
            "shape".into(),
            match run.target {
                Target::Herald => format!(
                    "{} rooms × {} subscribers over {} gateways ({}), {} events/s for {}",
                    a.rooms,
                    a.subscribers,
                    a.gateways,
                    value_name(a.placement),
                    num(a.rate),
                    humantime::format_duration(a.run_time)
                ),
                Target::Nchan => format!(
                    "{} rooms × {} subscribers on Nchan (nginx, {} workers), {} events/s for {}",
                    a.rooms,
                    a.subscribers,
                    names.len() - 1,
                    num(a.rate),
                    humantime::format_duration(a.run_time)
                ),
            },
        ),
        (
            "subscribers".into(),
            format!(
                "{connections} connected, {} failed, in {:.1} s; {closed} closed early",
                run.connected.failed, run.connected.seconds
            ),
        ),
        (
            "published".into(),
            format!(
                "{published} {} of {} sent ({} failed) in {:.1} s; {} p50 {} ms, p99 {} ms",
                match run.target {
                    Target::Herald if a.publish == Publish::Core => "core publishes (not acked; 0 ms below)",
                    Target::Herald => "acked by JetStream",
                    Target::Nchan => "accepted by nchan (HTTP 2xx, one POST each)",
                },
                run.published.sent,
                run.published.failed,
                run.publish_s,
                match run.target {
                    Target::Herald => "ack",
                    Target::Nchan => "POST",
                },
                num(run.published.ack_p50_ms),
                num(run.published.ack_p99_ms)
            ),
        ),
        (
            "delivered".into(),
            format!(
                "{delivered} of {expected} expected; lost {lost}, duplicates {duplicates}, out of order {out_of_order}"
            ),
        ),
        (
            "latency".into(),
            format!("p50 {} ms, p99 {} ms, max {} ms (from the scheduled publish time)", num(p50), num(p99), num(max)),
        ),
        (
            "CPU per delivery".into(),
            format!(
                "{} µs whole stack ({} CPU-s over {:.1} s: publishing and drain), {} {} µs; idle window {} CPU-s over {:.1} s",
                num(per_delivery(stack_cpu)),
                num(stack_cpu),
                window_s,
                match run.target {
                    Target::Herald => "gateways",
                    Target::Nchan => "nginx (master and workers)",
                },
                num(per_delivery(gateway_cpu)),
                num(stack_idle_cpu),
                idle_s
            ),
        ),
        (
            "NATS messages to gateways per event".into(),
            if nats {
                format!(
                    "{} net ({msgs_window} in the window, {msgs_idle} in the idle window, scaled by {:.2})",
                    num(msgs_net / published.max(1) as f64),
                    window_s / idle_s.max(1e-9)
                )
            } else {
                "n/a (Nchan has no NATS)".into()
            },
        ),
        (
            "RSS".into(),
            format!(
                "{} {} KiB per room held, {} KiB per connection{}",
                match run.target {
                    Target::Herald => "gateways",
                    Target::Nchan => "nginx (master and workers)",
                },
                num(server_growth / gws.iter().map(|g| g.rooms_held).sum::<u64>().max(1) as f64),
                num(server_growth / connections.max(1) as f64),
                nats_growth.map_or(String::new(), |n| format!(
                    "; nats-server {} KiB per room",
                    num(n / a.rooms as f64)
                ))
            ),
        ),
    ];
    for (k, v) in &summary {
        println!("{k}: {v}");
    }
    let mut header = crate::report::machine_header();
    header.extend([
        ("rooms".to_owned(), a.rooms.to_string()),
        ("subscribers per room".into(), a.subscribers.to_string()),
        ("gateways".into(), a.gateways.to_string()),
        ("placement".into(), value_name(a.placement)),
        ("rate".into(), format!("{} events/s", num(a.rate))),
        ("run time".into(), humantime::format_duration(a.run_time).to_string()),
        (
            "idle window".into(),
            humantime::format_duration(a.idle_time).to_string(),
        ),
        ("payload".into(), format!("{} B padding", a.payload_bytes)),
        (
            "publishing".into(),
            format!("{}, {} event(s) per batch", value_name(a.publish), a.publish_batch),
        ),
        ("stream storage".into(), value_name(a.stream_storage)),
        ("gateway flags".into(), a.gateway_args.join(" ")),
        ("servers measured".into(), run.procs.covers()),
    ]);
    if let Some(conf) = &run.nginx_conf {
        // One server: gateways, their placement and flags do not apply.
        header.retain(|(k, _)| {
            !["gateways", "placement", "gateway flags", "publishing", "stream storage"].contains(&k.as_str())
        });
        header.extend([
            ("target".to_owned(), "Nchan (nginx with the nchan module)".to_owned()),
            ("nginx workers".into(), (names.len() - 1).to_string()),
            ("nginx config".into(), conf.display().to_string()),
            ("publishing connections".into(), a.publish_connections.to_string()),
        ]);
    }
    let gateway_rows = gws
        .iter()
        .map(|g| {
            let na = || "n/a".to_owned();
            vec![
                match run.target {
                    Target::Herald => format!("gateway {}", g.gateway),
                    Target::Nchan => "nginx (all processes)".into(),
                },
                g.rooms_held.to_string(),
                g.connections.to_string(),
                format!("{}/{}", g.delivered, g.expected),
                g.lost.to_string(),
                g.duplicates.to_string(),
                g.out_of_order.to_string(),
                match (g.nats_msgs_window, g.nats_msgs_idle) {
                    (Some(w), Some(i)) => format!("{w} − {i}"),
                    _ => na(),
                },
                g.nats_msgs_per_event.map_or_else(na, num),
                match (nats, g.foreign_share) {
                    (false, _) => na(),
                    (true, share) => share.map_or("–".into(), |s| format!("{:.2}%", s * 100.0)),
                },
                num(g.rss_growth_kib_per_room),
                num(g.rss_growth_kib_per_connection),
            ]
        })
        .collect();
    let mut process_rows: Vec<Vec<String>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cpu = w1.cpu_s[i] - w0.cpu_s[i];
            vec![
                name.clone(),
                num(cpu),
                num(per_delivery(cpu)),
                num(i1.cpu_s[i] - i0.cpu_s[i]),
                num(run.before.rss_kib[i] as f64 / 1024.0),
                num(run.subscribed.rss_kib[i] as f64 / 1024.0),
            ]
        })
        .collect();
    process_rows.push(vec![
        "whole stack".into(),
        num(stack_cpu),
        num(per_delivery(stack_cpu)),
        num(stack_idle_cpu),
        num(run.before.rss_kib.iter().sum::<u64>() as f64 / 1024.0),
        num(run.subscribed.rss_kib.iter().sum::<u64>() as f64 / 1024.0),
    ]);
    Ok(Report {
        title: match run.target {
            Target::Herald => "Herald: chat-shaped traffic".into(),
            Target::Nchan => "Nchan (reference): chat-shaped traffic".into(),
        },
        header,
        sections: vec![
            Section::key_values("Summary", &summary),
            Section {
                heading: "Processes".into(),
                text: vec![format!(
                    "CPU over the publishing window ({window_s:.1} s, publishing and drain) and over the idle \
                     window before it ({idle_s:.1} s); µs per delivery divides by all {delivered} deliveries. \
                     RSS before the subscribers connected and after all subscribed (at the idle window's end)."
                )],
                table: Some(Table {
                    head: [
                        "process",
                        "CPU-s",
                        "CPU µs per delivery",
                        "idle CPU-s",
                        "RSS before MiB",
                        "RSS subscribed MiB",
                    ]
                    .map(String::from)
                    .to_vec(),
                    rows: process_rows,
                }),
                ..Section::default()
            },
            Section {
                heading: "Gateways".into(),
                text: vec![if nats {
                    "NATS messages are nats-server's out_msgs to the gateway's NATS connection(s) (/connz, by \
                     connection name): the window's count minus the idle window's scaled to the same length, per \
                     published event. Foreign share: of the events published to rooms the gateway holds no member \
                     of, the share NATS sent it anyway (net messages beyond its own rooms' events). RSS growth from \
                     before the subscribers connected to after all subscribed, per room held and per connection \
                     (both include the connections)."
                        .into()
                } else {
                    "Nchan's one server: nginx's master and workers together. NATS figures are n/a (Nchan has no \
                     NATS). RSS growth from before the subscribers connected to after all subscribed, per room and \
                     per connection (both include the connections)."
                        .into()
                }],
                table: Some(Table {
                    head: [
                        "gateway",
                        "rooms held",
                        "connections",
                        "delivered",
                        "lost",
                        "duplicates",
                        "out of order",
                        "NATS msgs (window − idle)",
                        "NATS msgs per event",
                        "foreign share",
                        "RSS KiB per room",
                        "RSS KiB per connection",
                    ]
                    .map(String::from)
                    .to_vec(),
                    rows: gateway_rows,
                }),
                ..Section::default()
            },
        ],
        json: serde_json::json!({
            "revision": crate::report::run_revision(), "target": run.target,
            "rooms": a.rooms, "subscribers_per_room": a.subscribers, "gateways": a.gateways,
            "placement": a.placement, "rate": a.rate, "run_time_s": a.run_time.as_secs_f64(),
            "idle_s": idle_s, "window_s": window_s, "publish_s": run.publish_s,
            "gateway_args": a.gateway_args, "servers_measured": run.procs.covers(),
            "publish": nats.then_some(a.publish), "publish_batch": nats.then_some(a.publish_batch),
            "stream_storage": nats.then(|| value_name(a.stream_storage)),
            "connected": connections, "connect_failed": run.connected.failed,
            "connect_seconds": run.connected.seconds, "closed": closed,
            "published": run.published, "expected": expected, "delivered": delivered, "lost": lost,
            "duplicates": duplicates, "out_of_order": out_of_order,
            "p50_ms": p50, "p99_ms": p99, "max_ms": max,
            "stack_cpu_s": stack_cpu, "stack_cpu_us_per_delivery": per_delivery(stack_cpu),
            "gateway_cpu_us_per_delivery": nats.then(|| per_delivery(gateway_cpu)),
            "stack_idle_cpu_s": stack_idle_cpu,
            "nats_msgs_per_event": nats.then(|| msgs_net / published.max(1) as f64),
            "nats_msgs_window": nats.then_some(msgs_window), "nats_msgs_idle": nats.then_some(msgs_idle),
            "nats_rss_growth_kib_per_room": nats_growth.map(|n| n / a.rooms as f64),
            "nginx_workers": (!nats).then(|| names.len() - 1),
            "publish_connections": (!nats).then_some(a.publish_connections),
            "processes": processes, "gateway_figures": gws,
        }),
    })
}

/// A flag value's name as the command line spells it.
fn value_name<V: ValueEnum>(v: V) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_room_keeps_a_room_on_one_gateway_and_spread_deals_its_members() {
        // 3 subscribers per room, 2 gateways.
        let by_room: Vec<_> = (0..6).map(|i| place(i, 3, 2, Placement::ByRoom)).collect();
        assert_eq!(by_room, [(0, 0), (0, 0), (0, 0), (1, 1), (1, 1), (1, 1)]);
        let spread: Vec<_> = (0..6).map(|i| place(i, 3, 2, Placement::Spread)).collect();
        assert_eq!(spread, [(0, 0), (0, 1), (0, 0), (1, 1), (1, 0), (1, 1)]);
    }

    #[test]
    fn events_are_dealt_over_the_rooms() {
        assert_eq!(
            (0..4).map(|r| events_of_room(r, 4, 10)).collect::<Vec<_>>(),
            [3, 3, 2, 2]
        );
        assert_eq!((0..4).map(|r| events_of_room(r, 4, 10)).sum::<u64>(), 10);
    }

    #[test]
    fn arrivals_tell_duplicates_from_late_events() {
        let mut s = Seen::default();
        assert_eq!(s.mark(0), Arrival::InOrder);
        assert_eq!(s.mark(2), Arrival::InOrder);
        assert_eq!(s.mark(1), Arrival::OutOfOrder);
        assert_eq!(s.mark(2), Arrival::Duplicate);
        assert_eq!(s.mark(130), Arrival::InOrder);
        assert_eq!(s.mark(0), Arrival::Duplicate);
    }

    #[test]
    fn a_gateway_is_known_by_its_nats_connection_name() {
        let connz = vec![
            ("herald-gateway chat-1".to_owned(), 10),
            ("herald-gateway chat-1 live-2".to_owned(), 5),
            ("herald-gateway chat-10".to_owned(), 100),
            ("herald-fanout".to_owned(), 1000),
        ];
        assert_eq!(gateway_msgs(&connz, 1), (15, 2));
        assert_eq!(gateway_msgs(&connz, 0), (0, 0));
    }
}
