//! Connection scale and fan-out throughput.
//!
//! - `hold`: N WebSocket connections over several worker processes (each under the per-process
//!   file limit) and 127.0.0.x source addresses, optionally against gateways it spawns; an
//!   optional broadcast to every room; memory per connection and delivery.
//! - `bench`: subscribers on one room, a publish rate rising step by step until p99 crosses a
//!   limit; deliveries/s and gateway CPU-seconds per million deliveries at each step.

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

use crate::client::{Chain, Event, Order};
use crate::report::{num, Report, Section, Table};
use crate::svg::{self, Axis, Series};
use crate::{client, proc, stack, Common};

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
struct Tally {
    delivered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    closed: AtomicU64,
}

/// Reads a connection until it closes, checking order and recording latency.
async fn read_events(mut c: client::Conn, tally: Arc<Tally>, hist: Arc<Mutex<Vec<Histogram<u64>>>>) {
    // Rooms may hold events from earlier runs: the chain starts at the first event seen.
    let mut chain = Chain::default();
    loop {
        let Ok(text) = c.next_text().await else {
            tally.closed.fetch_add(1, Relaxed);
            return;
        };
        let Ok(ev) = serde_json::from_str::<Event>(&text) else {
            continue;
        };
        if ev.t.as_deref() != Some("event") {
            continue;
        }
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
        if let Some(d) = ev.data {
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
    let rooms = a.rooms;
    let first = a.first;
    let (conns, failed) = crate::connect_some(&a.common, a.connections, |i| {
        if rooms == 0 {
            String::new()
        } else {
            format!("hold-{}", (first + i) % rooms)
        }
    })
    .await;
    let line = WorkerConnected {
        connected: conns.len() as u64,
        failed,
        seconds: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&line)?);
    let tally = Arc::new(Tally::default());
    let hist = Arc::new(Mutex::new(Vec::new()));
    let n = conns.len() as u64;
    for c in conns {
        tokio::spawn(read_events(c, Arc::clone(&tally), Arc::clone(&hist)));
    }
    // "stop <events per connection>" on stdin ends the hold.
    let expected: u64 = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        line.trim()
            .strip_prefix("stop ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
    .await?;
    let until = Instant::now() + Duration::from_secs(10);
    while tally.delivered.load(Relaxed) < expected * n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = hist.lock().expect("histogram");
    let mut all = crate::latency_histogram();
    for s in h.iter() {
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
    Ok(())
}

pub async fn hold(mut a: HoldArgs) -> Result<()> {
    if a.worker {
        return worker(a).await;
    }
    let per = a.per_process.clamp(1, PER_PROCESS);
    let nats = if a.spawn_gateways > 0 {
        Some(stack::Nats::start()?)
    } else {
        None
    };
    let mut gateways = Vec::new();
    if let Some(n) = &nats {
        std::fs::create_dir_all(&a.report_dir)?;
        for g in 0..a.spawn_gateways {
            let log = a.report_dir.join(format!("gateway-{g}.log"));
            gateways.push(stack::Gateway::start(
                &n.url,
                &format!("hold-{g}"),
                &["--max-connections".into(), "100000".into()],
                Some(&log),
            )?);
        }
        a.common.gateway = gateways.iter().map(|g| g.ws.clone()).collect();
        a.gateway_pid = gateways.iter().map(|g| g.pid).collect();
        a.nats_url = n.url.clone();
    }
    let pids = a.gateway_pid.clone();
    let rss = |pids: &[u32]| -> Vec<u64> { pids.iter().map(|&p| proc::rss_kib(p).unwrap_or(0)).collect() };
    let rss_before = rss(&pids);
    let tcp_before = proc::tcp_stat()?;
    let slab_before = proc::socket_slab_kib();

    let workers = a.connections.div_ceil(per);
    let started = Instant::now();
    let mut children = Vec::new();
    for w in 0..workers {
        let n = per.min(a.connections - w * per);
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("hold")
            .arg("--worker")
            .args(["--connections", &n.to_string(), "--first", &(w * per).to_string()])
            .args(["--rooms", &a.rooms.to_string()])
            .args(["--gateway", &a.common.gateway.join(",")])
            .args([
                "--sources",
                &a.common
                    .sources
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ])
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
    let mut connected = Vec::new();
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let c: WorkerConnected = serde_json::from_str(&line).context("a worker failed to report")?;
        connected.push(c);
    }
    let connect_s = started.elapsed().as_secs_f64();
    let total: u64 = connected.iter().map(|c| c.connected).sum();
    eprintln!(
        "connected {total}/{} in {connect_s:.1} s ({:.0}/s) over {workers} workers",
        a.connections,
        total as f64 / connect_s
    );

    // Hold (and broadcast); measure in the middle of the hold.
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
    let mut next = tokio::time::Instant::now();
    while Instant::now() < hold_until {
        tokio::time::sleep_until(next).await;
        next += interval;
        if let Some(n) = &nats {
            let t0 = crate::now_ns();
            for r in 0..a.rooms {
                let body = format!(r#"{{"t0":{t0},"n":{published}}}"#);
                n.publish(format!("herald.room.hold-{r}"), body.into()).await?;
            }
            published += 1;
        }
        if measured.is_none() && Instant::now() >= measure_at {
            measured = Some((rss(&pids), proc::tcp_stat()?, proc::socket_slab_kib()));
        }
    }
    if let Some(n) = &nats {
        n.flush().await?;
    }
    let (rss_after, tcp_after, slab_after) = match measured {
        Some(m) => m,
        None => (rss(&pids), proc::tcp_stat()?, proc::socket_slab_kib()),
    };
    let slab_per_conn = match (slab_before, slab_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / total.max(1) as f64),
        _ => None,
    };
    let mut done = Vec::new();
    for (mut child, mut out) in children {
        if let Some(stdin) = child.stdin.as_mut() {
            writeln!(stdin, "stop {published}")?;
        }
        let mut line = String::new();
        out.read_line(&mut line)?;
        done.push(serde_json::from_str::<WorkerDone>(&line).context("a worker failed at the end")?);
        let _ = child.wait();
    }
    drop(gateways);

    let per_gateway_conns = total as f64 / pids.len().max(1) as f64;
    let mut gw_rows = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        let delta = rss_after[i].saturating_sub(rss_before[i]);
        gw_rows.push(vec![
            format!("gateway pid {pid}"),
            num(per_gateway_conns),
            format!("{} MiB", num(rss_after[i] as f64 / 1024.0)),
            format!("{:.2} KiB", delta as f64 / per_gateway_conns.max(1.0)),
        ]);
    }
    let gw_rss_total: u64 = rss_after.iter().sum();
    let gw_delta: u64 = rss_after
        .iter()
        .zip(&rss_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let mut rows = gw_rows;
    for (w, (c, d)) in connected.iter().zip(&done).enumerate() {
        rows.push(vec![
            format!("harness worker {w}"),
            c.connected.to_string(),
            format!("{} MiB", num(d.rss_kib as f64 / 1024.0)),
            format!("{:.2} KiB", d.rss_kib as f64 / c.connected.max(1) as f64),
        ]);
    }
    let delivered: u64 = done.iter().map(|d| d.delivered).sum();
    let expected = published * total;
    let closed: u64 = done.iter().map(|d| d.closed).sum();
    let gaps: u64 = done.iter().map(|d| d.gaps).sum();
    let p99 = done.iter().map(|d| d.p99_us).max().unwrap_or(0) as f64 / 1000.0;
    let tcp_per_conn = tcp_after.mem_kib.saturating_sub(tcp_before.mem_kib) as f64 / total.max(1) as f64;
    let summary = vec![
        ("connections held".to_owned(), format!("{total} of {}", a.connections)),
        ("connect rate".into(), format!("{:.0}/s ({connect_s:.1} s)", total as f64 / connect_s)),
        ("gateways".into(), pids.len().to_string()),
        ("harness workers".into(), workers.to_string()),
        (
            "gateway RSS".into(),
            format!(
                "{} MiB total, {:.2} KiB per connection",
                num(gw_rss_total as f64 / 1024.0),
                gw_delta as f64 / total.max(1) as f64
            ),
        ),
        (
            "kernel TCP memory".into(),
            format!(
                "{} → {} KiB ({:.2} KiB per connection, both ends on loopback); TCP sockets in use {} → {}",
                tcp_before.mem_kib, tcp_after.mem_kib, tcp_per_conn, tcp_before.inuse, tcp_after.inuse
            ),
        ),
        (
            "kernel socket slabs".into(),
            match (slab_before, slab_after, slab_per_conn) {
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
                "{published} events to each of {} rooms; delivered {delivered}/{expected} ({:.3}%), gaps {gaps}, p99 {} ms",
                a.rooms,
                if expected > 0 { 100.0 * delivered as f64 / expected as f64 } else { 100.0 },
                num(p99)
            ),
        ),
        ("closed early".into(), closed.to_string()),
    ];
    for (k, v) in &summary {
        println!("{k}: {v}");
    }
    let mut header = crate::report::machine_header();
    header.extend([
        ("connections".to_owned(), a.connections.to_string()),
        ("sources".into(), a.common.sources.len().to_string()),
        ("hold".into(), humantime::format_duration(a.hold).to_string()),
    ]);
    let report = Report {
        title: "Herald: connections held".into(),
        header,
        sections: vec![
            Section {
                heading: "Summary".into(),
                table: Some(Table {
                    head: vec!["".into(), "".into()],
                    rows: summary.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect(),
                }),
                ..Section::default()
            },
            Section {
                heading: "Per process".into(),
                text: vec!["RSS per connection: gateways from the growth since before connecting; \
                     harness workers from their whole RSS."
                    .into()],
                table: Some(Table {
                    head: ["process", "connections", "RSS", "per connection"]
                        .map(String::from)
                        .to_vec(),
                    rows,
                }),
                ..Section::default()
            },
        ],
        json: serde_json::json!({
            "connections": a.connections, "held": total, "connect_seconds": connect_s,
            "gateways": pids.len(), "workers": workers,
            "gateway_rss_kib_before": rss_before, "gateway_rss_kib": rss_after,
            "gateway_kib_per_connection": gw_delta as f64 / total.max(1) as f64,
            "kernel_tcp_kib_before": tcp_before.mem_kib, "kernel_tcp_kib": tcp_after.mem_kib,
            "kernel_tcp_kib_per_connection": tcp_per_conn,
            "tcp_inuse_before": tcp_before.inuse, "tcp_inuse": tcp_after.inuse,
            "socket_slab_kib_before": slab_before, "socket_slab_kib": slab_after,
            "socket_slab_kib_per_connection": slab_per_conn,
            "published": published, "expected": expected, "delivered": delivered, "gaps": gaps,
            "closed": closed, "p99_ms": p99, "workers_detail": done,
        }),
    };
    report.write(&a.report_dir)?;
    eprintln!("report: {}", a.report_dir.join("report.html").display());
    if closed > 0 || total < a.connections as u64 {
        bail!(
            "{} connections failed or closed early",
            a.connections as u64 - total + closed
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Start nats-server and a fresh gateway (ignores --gateway and --nats-url).
    #[arg(long)]
    spawn: bool,
    /// NATS URL the publisher uses (as an app backend would).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// PIDs of the gateways (CPU from /proc) when not spawning.
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    /// Subscribers on the room.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publish rate of the first step, events/s.
    #[arg(long, default_value_t = 10.0)]
    start_rate: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 100_000.0)]
    max_rate: f64,
    /// Time per step.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    step_time: Duration,
    /// Stop once a step's p99 delivery latency exceeds this.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    p99_limit: Duration,
    /// Payload bytes per event (padding).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Where report.md, report.json and report.html go.
    #[arg(long, default_value = "target/loadtest/bench")]
    report_dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct Step {
    rate: f64,
    published: u64,
    delivered: u64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    gateway_cpu_s: f64,
    cpu_s_per_million: f64,
}

pub async fn bench(mut a: BenchArgs) -> Result<()> {
    let nats_proc = if a.spawn { Some(stack::Nats::start()?) } else { None };
    let gateway = match &nats_proc {
        Some(n) => {
            std::fs::create_dir_all(&a.report_dir)?;
            let g = stack::Gateway::start(&n.url, "bench", &[], Some(&a.report_dir.join("gateway.log")))?;
            a.common.gateway = vec![g.ws.clone()];
            a.gateway_pid = vec![g.pid];
            a.nats_url = n.url.clone();
            Some(g)
        }
        None => None,
    };
    let room = format!("bench-{}", crate::now_ns() / 1_000_000);
    let (conns, failed) = crate::connect_some(&a.common, a.subscribers, |_| room.clone()).await;
    if failed > 0 {
        bail!("{failed} subscribers failed to connect");
    }
    let n = conns.len() as u64;
    eprintln!("{n} subscribers on {room}");
    let tally = Arc::new(Tally::default());
    let hist = Arc::new(Mutex::new(Vec::new()));
    for c in conns {
        tokio::spawn(read_events(c, Arc::clone(&tally), Arc::clone(&hist)));
    }
    let nats = async_nats::connect(&a.nats_url).await.context("NATS")?;
    let subject = format!("herald.room.{room}");
    let pad = "x".repeat(a.payload_bytes);
    let limit_ms = a.p99_limit.as_secs_f64() * 1000.0;
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = a.start_rate;
    let mut k = 0u64;
    let mut step = 0u64;
    while rate <= a.max_rate {
        let delivered_before = tally.delivered.load(Relaxed);
        let cpu_before = proc::cpu_seconds_of(&a.gateway_pid);
        let count = (rate * a.step_time.as_secs_f64()).round() as u64;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = tokio::time::Instant::now();
        for i in 0..count {
            let scheduled = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(scheduled).await;
            let t0 = crate::scheduled_stamp(scheduled);
            let body = format!(r#"{{"t0":{t0},"n":{k},"s":{step},"pad":"{pad}"}}"#);
            nats.publish(subject.clone(), body.into()).await?;
            k += 1;
        }
        nats.flush().await?;
        // Let the step's deliveries finish (up to 5 s) before measuring it.
        let want = delivered_before + count * n;
        let until = Instant::now() + Duration::from_secs(5);
        while tally.delivered.load(Relaxed) < want && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = start.elapsed().as_secs_f64();
        let delivered = tally.delivered.load(Relaxed) - delivered_before;
        let cpu_s = proc::cpu_seconds_of(&a.gateway_pid) - cpu_before;
        let (p50, p99, max) = {
            let h = hist.lock().expect("histogram");
            h.get(step as usize)
                .map(|h| {
                    (
                        h.value_at_quantile(0.5) as f64 / 1000.0,
                        h.value_at_quantile(0.99) as f64 / 1000.0,
                        h.max() as f64 / 1000.0,
                    )
                })
                .unwrap_or((f64::NAN, f64::NAN, f64::NAN))
        };
        let s = Step {
            rate,
            published: count,
            delivered,
            deliveries_per_s: delivered as f64 / took,
            p50_ms: p50,
            p99_ms: p99,
            max_ms: max,
            gateway_cpu_s: cpu_s,
            cpu_s_per_million: cpu_s / delivered.max(1) as f64 * 1e6,
        };
        eprintln!(
            "rate {:>8.0}/s: {:>9.0} deliveries/s, p50 {} ms, p99 {} ms, {} of {} delivered, gateway CPU {} s ({} s per million)",
            s.rate,
            s.deliveries_per_s,
            num(s.p50_ms),
            num(s.p99_ms),
            s.delivered,
            count * n,
            num(s.gateway_cpu_s),
            num(s.cpu_s_per_million)
        );
        let over = p99.is_nan() || p99 > limit_ms || delivered < count * n;
        steps.push(s);
        if over {
            break;
        }
        rate *= a.factor;
        step += 1;
    }
    drop(gateway);
    let ok: Vec<&Step> = steps
        .iter()
        .filter(|s| s.p99_ms <= limit_ms && s.delivered == s.published * n)
        .collect();
    let best = ok
        .iter()
        .max_by(|x, y| x.deliveries_per_s.total_cmp(&y.deliveries_per_s));
    let verdict = match best {
        Some(b) => format!(
            "{:.0} deliveries/s with p99 {} ms ≤ {} ms (publish {:.0}/s × {n} subscribers); gateway {} CPU-s per million deliveries",
            b.deliveries_per_s,
            num(b.p99_ms),
            num(limit_ms),
            b.rate,
            num(b.cpu_s_per_million)
        ),
        None => format!("no step kept p99 ≤ {} ms", num(limit_ms)),
    };
    println!("{verdict}");
    let mut header = crate::report::machine_header();
    header.extend([
        ("subscribers".to_owned(), n.to_string()),
        ("payload".into(), format!("{} B padding", a.payload_bytes)),
        ("step".into(), humantime::format_duration(a.step_time).to_string()),
        ("p99 limit".into(), format!("{} ms", num(limit_ms))),
    ]);
    let chart = svg::lines(
        "Delivery latency against throughput",
        &Axis {
            label: "deliveries per second (log)".into(),
            log: true,
        },
        &Axis {
            label: "ms (log)".into(),
            log: true,
        },
        &[
            Series {
                name: "p99".into(),
                points: steps.iter().map(|s| (s.deliveries_per_s, s.p99_ms)).collect(),
                dashed: false,
                color: 1,
            },
            Series {
                name: "p50".into(),
                points: steps.iter().map(|s| (s.deliveries_per_s, s.p50_ms)).collect(),
                dashed: false,
                color: 0,
            },
            Series {
                name: "limit".into(),
                points: vec![
                    (steps.first().map_or(1.0, |s| s.deliveries_per_s), limit_ms),
                    (steps.last().map_or(10.0, |s| s.deliveries_per_s), limit_ms),
                ],
                dashed: true,
                color: 3,
            },
        ],
    );
    let report = Report {
        title: "Herald: fan-out throughput".into(),
        header,
        sections: vec![Section {
            heading: "Steps".into(),
            text: vec![verdict.clone()],
            table: Some(Table {
                head: [
                    "publish/s",
                    "deliveries/s",
                    "delivered",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "gateway CPU-s",
                    "CPU-s per million",
                ]
                .map(String::from)
                .to_vec(),
                rows: steps
                    .iter()
                    .map(|s| {
                        vec![
                            num(s.rate),
                            num(s.deliveries_per_s),
                            format!("{}/{}", s.delivered, s.published * n),
                            num(s.p50_ms),
                            num(s.p99_ms),
                            num(s.max_ms),
                            num(s.gateway_cpu_s),
                            num(s.cpu_s_per_million),
                        ]
                    })
                    .collect(),
            }),
            charts: vec![("bench".into(), chart)],
        }],
        json: serde_json::json!({"subscribers": n, "p99_limit_ms": limit_ms, "verdict": verdict, "steps": steps}),
    };
    report.write(&a.report_dir)?;
    eprintln!("report: {}", a.report_dir.join("report.html").display());
    Ok(())
}
