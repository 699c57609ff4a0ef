//! `loadtest hold`: N WebSocket connections over several worker processes (each under the
//! per-process file limit) and 127.0.0.x source addresses, optionally against gateways it
//! spawns; an optional broadcast to every room; memory per connection and delivery.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::{Chain, Order, Stamp};
use crate::report::{num, Report, Section, Table};
use crate::usage::{self, Procs, Role, Share, Usage};
use crate::{client, proc, stack, Common};
use herald_proto::frame::EventView;

use herald_proto::subject::Subjects;

/// File descriptors one worker may use for connections (the hard limit is 20,000).
const PER_PROCESS: usize = 19_000;

#[derive(Debug, Args)]
pub struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to hold in total.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Rooms the connections subscribe to, round-robin (0: connect without subscribing).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Start nats-server and this many fresh gateways (each holds under 19,000 connections).
    #[arg(long, default_value_t = 0)]
    spawn_gateways: usize,
    /// PIDs of the gateways to measure when not spawning.
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    /// PID of nats-server, measured with the gateways when not spawning.
    #[arg(long)]
    nats_pid: Option<u32>,
    /// PID of herald-fanout, measured with the gateways when not spawning.
    #[arg(long)]
    fanout_pid: Option<u32>,
    /// NATS URL for the broadcast when not spawning.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Connections per worker process (at most 19,000 under the 20,000-file limit).
    #[arg(long, default_value_t = PER_PROCESS)]
    per_process: usize,
    /// Events per second sent to every room while holding (each reaches every connection).
    #[arg(long, default_value_t = 0.0)]
    broadcast_rate: f64,
    /// How long to hold once everyone is connected.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Where report.md, report.json and report.html go.
    #[arg(long, default_value = "target/loadtest/hold")]
    report_dir: PathBuf,
    /// Run as one worker of a hold (internal).
    #[arg(long, hide = true)]
    worker: bool,
    /// Index of this worker's first connection (internal).
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
}

/// A worker's answer lines on stdout.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerConnected {
    connected: u64,
    failed: u64,
    seconds: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerDone {
    connections: u64,
    delivered: u64,
    gaps: u64,
    duplicates: u64,
    closed: u64,
    rss_kib: u64,
    /// Latency histogram quantiles (µs): p50, p99, max.
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) delivered: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) closed: AtomicU64,
}

/// Opens `n` connections, `--concurrency` at a time, connection `i` joining `room(i)` (none
/// when empty), each read by [`read_events`] from the moment it is open (so it answers pings
/// while the others connect: a long connect phase must not leave early connections silent
/// until the gateway closes them as idle). Returns how many opened and how many failed.
pub(crate) async fn open_and_read(
    common: &Common,
    n: usize,
    room: impl Fn(usize) -> String,
    tally: &Arc<Tally>,
    hist: &Arc<Mutex<Vec<Histogram<u64>>>>,
) -> (u64, u64) {
    let sem = Arc::new(tokio::sync::Semaphore::new(common.concurrency.max(1)));
    let common = Arc::new(common.clone());
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..n {
        let room = room(i);
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
            break;
        };
        let (common, tally, hist, opened_tx) = (
            Arc::clone(&common),
            Arc::clone(tally),
            Arc::clone(hist),
            opened_tx.clone(),
        );
        tokio::spawn(async move {
            let c = crate::connect_one(&common, i, &room).await;
            drop(permit);
            match c {
                Ok(c) => {
                    let _ = opened_tx.send(Ok(()));
                    drop(opened_tx);
                    read_events(c, tally, hist).await;
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            }
        });
    }
    drop(opened_tx);
    // One answer per connection; each task drops its sender once it has answered.
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    while let Some(r) = opened.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("{failed} connections failed; the first: {e:#}");
    }
    (ok, failed)
}

/// Reads a connection until it closes, checking order and recording latency.
async fn read_events(mut c: client::Conn, tally: Arc<Tally>, hist: Arc<Mutex<Vec<Histogram<u64>>>>) {
    // Rooms may hold events from earlier runs: the chain starts at the first event seen.
    let mut chain = Chain::default();
    loop {
        let Ok(bytes) = c.next_data().await else {
            tally.closed.fetch_add(1, Relaxed);
            return;
        };
        let Some(ev) = EventView::decode(&bytes) else {
            continue;
        };
        match chain.check(ev.seq, ev.prev) {
            Order::Duplicate => {
                tally.duplicates.fetch_add(1, Relaxed);
                continue;
            }
            Order::AfterGap => {
                tally.gaps.fetch_add(1, Relaxed);
            }
            Order::Next => {}
        }
        tally.delivered.fetch_add(1, Relaxed);
        if let Some(d) = Stamp::of(ev.data) {
            let us = (crate::now_ns().saturating_sub(d.t0) / 1000).max(1);
            let mut h = hist.lock().expect("histogram");
            let step = d.s as usize;
            while h.len() <= step {
                h.push(crate::latency_histogram());
            }
            let _ = h[step].record(us);
        }
    }
}

async fn worker(a: HoldArgs) -> Result<()> {
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let hist = Arc::new(Mutex::new(Vec::new()));
    let (rooms, first) = (a.rooms, a.first);
    let room = |i: usize| {
        if rooms == 0 {
            String::new()
        } else {
            format!("hold-{}", (first + i) % rooms)
        }
    };
    let (n, failed) = open_and_read(&a.common, a.connections, room, &tally, &hist).await;
    let line = WorkerConnected {
        connected: n,
        failed,
        seconds: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&line)?);
    // "stop <events per connection>" on stdin ends the hold.
    let expected = read_stop().await?;
    let until = Instant::now() + Duration::from_secs(10);
    while tally.delivered.load(Relaxed) < expected * n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut all = crate::latency_histogram();
    for s in hist.lock().expect("histogram").iter() {
        all.add(s)?;
    }
    let done = WorkerDone {
        connections: n,
        delivered: tally.delivered.load(Relaxed),
        gaps: tally.gaps.load(Relaxed),
        duplicates: tally.duplicates.load(Relaxed),
        closed: tally.closed.load(Relaxed),
        rss_kib: proc::rss_kib(std::process::id()).unwrap_or(0),
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        max_us: all.max(),
    };
    println!("{}", serde_json::to_string(&done)?);
    // Keep the connections until the parent closes stdin, after it has stopped the servers:
    // the servers then close first, and the TIME_WAIT sockets stay on their side instead of
    // holding this machine's ephemeral ports against the next run.
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())).await??;
    Ok(())
}

pub async fn hold(mut a: HoldArgs) -> Result<()> {
    if a.worker {
        return worker(a).await;
    }
    let (_nats, servers) = spawn_stack(&mut a)?;
    let procs = Procs::new(&a.gateway_pid, a.nats_pid, a.fanout_pid);
    let before = Snapshot::take(&procs)?;
    let started = Instant::now();
    let mut children = start_workers(&a)?;
    let mut connected = Vec::new();
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line)?;
        connected.push(serde_json::from_str::<WorkerConnected>(&line).context("a worker failed to report")?);
    }
    let connect_s = started.elapsed().as_secs_f64();
    let connected_usage = procs.sample();
    let total: u64 = connected.iter().map(|c| c.connected).sum();
    eprintln!(
        "connected {total}/{} in {connect_s:.1} s ({:.0}/s) over {} workers",
        a.connections,
        total as f64 / connect_s,
        children.len()
    );
    let (published, after) = hold_and_broadcast(&a, &procs).await?;
    let mut done = Vec::new();
    for (child, out) in &mut children {
        if let Some(stdin) = child.stdin.as_mut() {
            writeln!(stdin, "stop {published}")?;
        }
        let mut line = String::new();
        out.read_line(&mut line)?;
        done.push(serde_json::from_str::<WorkerDone>(&line).context("a worker failed at the end")?);
    }
    drop(servers);
    for (mut child, _) in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let run = Held {
        connect: procs.shares(&before.usage, &connected_usage),
        hold: procs.shares(&before.usage, &after.usage),
        procs,
        before,
        after,
        connected,
        done,
        connect_s,
        total,
        published,
    };
    let report = hold_report(&a, &run);
    report.write(&a.report_dir)?;
    eprintln!("report: {}", a.report_dir.join("report.html").display());
    let closed: u64 = run.done.iter().map(|d| d.closed).sum();
    if closed > 0 || total < a.connections as u64 {
        bail!(
            "{} connections failed or closed early",
            a.connections as u64 - total + closed
        );
    }
    Ok(())
}

/// With `--spawn-gateways`: nats-server, fanout and the gateways, which `a` then targets and
/// measures.
fn spawn_stack(a: &mut HoldArgs) -> Result<(Option<stack::Nats>, Vec<stack::Program>)> {
    if a.spawn_gateways == 0 {
        return Ok((None, Vec::new()));
    }
    let nats = stack::nats()?;
    std::fs::create_dir_all(&a.report_dir)?;
    let fanout = stack::fanout(&nats.url())?;
    a.nats_pid = nats.pid();
    a.fanout_pid = Some(fanout.pid());
    let mut gateways = Vec::new();
    for g in 0..a.spawn_gateways {
        let log = a.report_dir.join(format!("gateway-{g}.log"));
        gateways.push(stack::gateway(
            &nats.url(),
            &format!("hold-{g}"),
            &["--max-connections".into(), "100000".into()],
            Some(&log),
        )?);
    }
    a.common.gateway = gateways.iter().map(|g| g.ws_url()).collect();
    a.gateway_pid = gateways.iter().map(|g| g.pid()).collect();
    a.nats_url = nats.url();
    gateways.push(fanout);
    Ok((Some(nats), gateways))
}

/// One worker process per `--per-process` connections, each answering on its stdout.
fn start_workers(a: &HoldArgs) -> Result<Vec<(std::process::Child, BufReader<std::process::ChildStdout>)>> {
    let per = a.per_process.clamp(1, PER_PROCESS);
    let sources = a
        .common
        .sources
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for w in 0..a.connections.div_ceil(per) {
        let n = per.min(a.connections - w * per);
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("hold")
            .arg("--worker")
            .args(["--connections", &n.to_string(), "--first", &(w * per).to_string()])
            .args(["--rooms", &a.rooms.to_string()])
            .args(["--gateway", &a.common.gateway.join(",")])
            .args(["--sources", &sources])
            .args(["--concurrency", &a.common.concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(t) = &a.common.token {
            cmd.env("HERALD_TOKEN", t);
        }
        let mut child = cmd.spawn().context("starting a hold worker")?;
        let out = BufReader::new(child.stdout.take().context("worker stdout")?);
        children.push((child, out));
    }
    Ok(children)
}

/// The servers' CPU and memory and the kernel's socket memory at one moment.
struct Snapshot {
    usage: Usage,
    tcp: proc::TcpStat,
    slab_kib: Option<u64>,
}

impl Snapshot {
    fn take(procs: &Procs) -> Result<Self> {
        Ok(Self {
            usage: procs.sample(),
            tcp: proc::tcp_stat()?,
            slab_kib: proc::socket_slab_kib(),
        })
    }
}

/// Holds for `--hold`, broadcasting to every room at `--broadcast-rate`; returns the events
/// sent to each room and the memory measured in the middle of the hold.
async fn hold_and_broadcast(a: &HoldArgs, procs: &Procs) -> Result<(u64, Snapshot)> {
    let mut published = 0u64;
    let hold_until = Instant::now() + a.hold;
    let measure_at = Instant::now() + a.hold / 2;
    let mut measured = None;
    // Connections without rooms (`--rooms 0`) have nothing to receive: no broadcast then.
    let broadcast = a.broadcast_rate > 0.0 && a.rooms > 0;
    let nats = if broadcast {
        Some(async_nats::connect(&a.nats_url).await.context("NATS")?)
    } else {
        None
    };
    let interval = if broadcast {
        Duration::from_secs_f64(1.0 / a.broadcast_rate)
    } else {
        Duration::from_millis(500)
    };
    let subjects = Subjects::new(a.common.subject_prefix.clone());
    let mut next = tokio::time::Instant::now();
    while Instant::now() < hold_until {
        tokio::time::sleep_until(next).await;
        next += interval;
        if let Some(n) = &nats {
            let t0 = crate::now_ns();
            for r in 0..a.rooms {
                let body = format!(r#"{{"t0":{t0},"n":{published}}}"#);
                n.publish(subjects.room(&format!("hold-{r}")), body.into()).await?;
            }
            published += 1;
        }
        if measured.is_none() && Instant::now() >= measure_at {
            measured = Some(Snapshot::take(procs)?);
        }
    }
    if let Some(n) = &nats {
        n.flush().await?;
    }
    let after = match measured {
        Some(m) => m,
        None => Snapshot::take(procs)?,
    };
    Ok((published, after))
}

/// What a hold measured.
struct Held {
    procs: Procs,
    /// CPU and RSS growth of each server role while connecting.
    connect: Vec<Share>,
    /// The same from before connecting to the middle of the hold.
    hold: Vec<Share>,
    before: Snapshot,
    after: Snapshot,
    connected: Vec<WorkerConnected>,
    done: Vec<WorkerDone>,
    connect_s: f64,
    total: u64,
    published: u64,
}

fn hold_report(a: &HoldArgs, h: &Held) -> Report {
    let summary = hold_summary(a, h);
    for (k, v) in &summary {
        println!("{k}: {v}");
    }
    let mut header = crate::report::machine_header();
    header.extend([
        ("connections".to_owned(), a.connections.to_string()),
        ("rooms".into(), a.rooms.to_string()),
        ("sources".into(), a.common.sources.len().to_string()),
        ("hold".into(), humantime::format_duration(a.hold).to_string()),
        ("servers measured".into(), h.procs.covers()),
    ]);
    let total = h.total;
    let delivered = delivered(h);
    let Held { before, after, .. } = h;
    Report {
        title: "Herald: connections held".into(),
        header,
        sections: vec![
            Section::key_values("Summary", &summary),
            Section {
                heading: "Servers".into(),
                text: vec![format!(
                    "CPU while connecting and RSS growth from before connecting to the middle of the \
                     hold, per connection, for each server role and the whole stack ({}).",
                    h.procs.covers()
                )],
                table: Some(Table {
                    head: [
                        "role",
                        "processes",
                        "RSS",
                        "RSS growth per connection",
                        "connect CPU per connection",
                    ]
                    .map(String::from)
                    .to_vec(),
                    rows: server_rows(h),
                }),
                ..Section::default()
            },
            Section {
                heading: "Harness".into(),
                text: vec!["Harness workers: RSS per connection from each worker's whole RSS.".into()],
                table: Some(Table {
                    head: ["process", "connections", "RSS", "per connection"]
                        .map(String::from)
                        .to_vec(),
                    rows: worker_rows(h),
                }),
                ..Section::default()
            },
        ],
        json: serde_json::json!({
            "revision": crate::report::run_revision(),
            "connections": a.connections, "rooms": a.rooms, "held": total, "connect_seconds": h.connect_s,
            "servers_measured": h.procs.covers(),
            "gateways": h.procs.count(Role::Gateway), "workers": h.done.len(),
            "servers_before": before.usage, "servers_mid_hold": after.usage,
            "connect": h.connect, "hold": h.hold,
            "stack_kib_per_connection": stack_kib_per_conn(h),
            "gateway_kib_per_connection": role_kib_per_conn(h, Role::Gateway),
            "stack_connect_cpu_us_per_connection": connect_us_per_conn(h, None),
            "gateway_connect_cpu_us_per_connection": connect_us_per_conn(h, Some(Role::Gateway)),
            "kernel_tcp_kib_before": before.tcp.mem_kib, "kernel_tcp_kib": after.tcp.mem_kib,
            "kernel_tcp_kib_per_connection": tcp_per_conn(h),
            "tcp_inuse_before": before.tcp.inuse, "tcp_inuse": after.tcp.inuse,
            "socket_slab_kib_before": before.slab_kib, "socket_slab_kib": after.slab_kib,
            "socket_slab_kib_per_connection": slab_per_conn(h),
            "published": h.published, "expected": h.published * total, "delivered": delivered,
            "gaps": h.done.iter().map(|d| d.gaps).sum::<u64>(),
            "duplicates": h.done.iter().map(|d| d.duplicates).sum::<u64>(),
            "closed": h.done.iter().map(|d| d.closed).sum::<u64>(),
            "p99_ms": p99_ms(h), "workers_detail": h.done,
        }),
    }
}

/// Whole-stack RSS growth per connection, KiB.
fn stack_kib_per_conn(h: &Held) -> f64 {
    usage::growth_total(&h.hold) as f64 / h.total.max(1) as f64
}

fn role_kib_per_conn(h: &Held, role: Role) -> f64 {
    let growth: i64 = h.hold.iter().filter(|s| s.role == role).map(|s| s.rss_growth_kib).sum();
    growth as f64 / h.total.max(1) as f64
}

/// Server CPU while connecting, µs per connection: one role's, or the whole stack's.
fn connect_us_per_conn(h: &Held, role: Option<Role>) -> f64 {
    let cpu = match role {
        Some(r) => usage::cpu_of(&h.connect, r),
        None => usage::cpu_total(&h.connect),
    };
    cpu * 1e6 / h.total.max(1) as f64
}

fn delivered(h: &Held) -> u64 {
    h.done.iter().map(|d| d.delivered).sum()
}

fn tcp_per_conn(h: &Held) -> f64 {
    h.after.tcp.mem_kib.saturating_sub(h.before.tcp.mem_kib) as f64 / h.total.max(1) as f64
}

fn slab_per_conn(h: &Held) -> Option<f64> {
    match (h.before.slab_kib, h.after.slab_kib) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / h.total.max(1) as f64),
        _ => None,
    }
}

fn p99_ms(h: &Held) -> f64 {
    h.done.iter().map(|d| d.p99_us).max().unwrap_or(0) as f64 / 1000.0
}

/// The summary lines: connections, rates, memory (servers and kernel), the broadcast.
fn hold_summary(a: &HoldArgs, h: &Held) -> Vec<(String, String)> {
    let (total, connect_s, published) = (h.total, h.connect_s, h.published);
    let (before, after) = (&h.before, &h.after);
    let stack_rss: u64 = h.hold.iter().map(|s| s.rss_kib).sum();
    let delivered = delivered(h);
    let expected = published * total;
    let gaps: u64 = h.done.iter().map(|d| d.gaps).sum();
    let duplicates: u64 = h.done.iter().map(|d| d.duplicates).sum();
    vec![
        ("connections held".to_owned(), format!("{total} of {}", a.connections)),
        ("connect rate".into(), format!("{:.0}/s ({connect_s:.1} s)", total as f64 / connect_s)),
        ("servers measured".into(), h.procs.covers()),
        (
            "server RSS".into(),
            format!(
                "{} MiB in all; growth {:.2} KiB per connection (gateway {:.2} KiB)",
                num(stack_rss as f64 / 1024.0),
                stack_kib_per_conn(h),
                role_kib_per_conn(h, Role::Gateway)
            ),
        ),
        (
            "server CPU while connecting".into(),
            format!(
                "{} µs per connection (gateway {} µs)",
                num(connect_us_per_conn(h, None)),
                num(connect_us_per_conn(h, Some(Role::Gateway)))
            ),
        ),
        ("harness workers".into(), h.done.len().to_string()),
        (
            "kernel TCP memory".into(),
            format!(
                "{} → {} KiB ({:.2} KiB per connection, both ends on loopback); TCP sockets in use {} → {}",
                before.tcp.mem_kib,
                after.tcp.mem_kib,
                tcp_per_conn(h),
                before.tcp.inuse,
                after.tcp.inuse
            ),
        ),
        (
            "kernel socket slabs".into(),
            match (before.slab_kib, after.slab_kib, slab_per_conn(h)) {
                (Some(b), Some(a), Some(p)) => format!(
                    "{} → {} MiB ({p:.2} KiB per connection, both ends: TCP sockets, inodes, epoll entries)",
                    num(b as f64 / 1024.0),
                    num(a as f64 / 1024.0)
                ),
                _ => "not readable (/proc/slabinfo needs root)".into(),
            },
        ),
        (
            "broadcast".into(),
            format!(
                "{published} events to each of {} rooms; delivered {delivered}/{expected} ({:.3}%), gaps {gaps}, duplicates {duplicates}, p99 {} ms",
                a.rooms,
                if expected > 0 { 100.0 * delivered as f64 / expected as f64 } else { 100.0 },
                num(p99_ms(h))
            ),
        ),
        ("closed early".into(), h.done.iter().map(|d| d.closed).sum::<u64>().to_string()),
    ]
}

/// Each server role's RSS, growth and connect CPU per connection, then the whole stack.
fn server_rows(h: &Held) -> Vec<Vec<String>> {
    let per = |v: f64| v / h.total.max(1) as f64;
    let mut rows: Vec<Vec<String>> = h
        .hold
        .iter()
        .map(|s| {
            vec![
                s.role.name().to_owned(),
                s.processes.to_string(),
                format!("{} MiB", num(s.rss_kib as f64 / 1024.0)),
                format!("{:.2} KiB", per(s.rss_growth_kib as f64)),
                format!("{} µs", num(per(usage::cpu_of(&h.connect, s.role) * 1e6))),
            ]
        })
        .collect();
    rows.push(vec![
        "whole stack".into(),
        h.hold.iter().map(|s| s.processes).sum::<usize>().to_string(),
        format!(
            "{} MiB",
            num(h.hold.iter().map(|s| s.rss_kib).sum::<u64>() as f64 / 1024.0)
        ),
        format!("{:.2} KiB", stack_kib_per_conn(h)),
        format!("{} µs", num(connect_us_per_conn(h, None))),
    ]);
    rows
}

/// Each harness worker's whole RSS per connection.
fn worker_rows(h: &Held) -> Vec<Vec<String>> {
    h.connected
        .iter()
        .zip(&h.done)
        .enumerate()
        .map(|(w, (c, d))| {
            vec![
                format!("harness worker {w}"),
                c.connected.to_string(),
                format!("{} MiB", num(d.rss_kib as f64 / 1024.0)),
                format!("{:.2} KiB", d.rss_kib as f64 / c.connected.max(1) as f64),
            ]
        })
        .collect()
}

/// A worker's orders from its parent: waits for the line `stop <n>` on stdin; `n` (0 if the
/// line is anything else, or stdin closes).
pub(crate) async fn read_stop() -> anyhow::Result<u64> {
    Ok(tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        line.trim()
            .strip_prefix("stop ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
    .await?)
}
