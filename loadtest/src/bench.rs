//! `loadtest bench`: subscribers on one room, a publish rate rising step by step until p99
//! crosses a limit; deliveries/s and CPU-seconds per million deliveries at each step, for the
//! whole stack (gateway, nats-server, fanout) and the gateway alone; every step's losses and
//! repeats.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{num, Report, Section, Table};
use crate::svg::{self, Axis, Series};
use crate::usage::{self, Procs, Role};
use crate::{stack, Common};

use crate::hold::{open_and_read, Tally};

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
    /// PID of nats-server, measured with the gateways when not spawning.
    #[arg(long)]
    nats_pid: Option<u32>,
    /// PID of herald-fanout, measured with the gateways when not spawning.
    #[arg(long)]
    fanout_pid: Option<u32>,
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
    /// Payload bytes per event (about).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// With `--spawn --compression`: the gateway compresses each delivery on its own
    /// (`--ws-compression per-connection`) instead of once per event, for comparison.
    #[arg(long, requires = "compression")]
    per_connection: bool,
    /// What the payload is: padding, a chat message, or a ticker's state.
    #[arg(long, value_enum, default_value_t = crate::payload::Kind::Pad)]
    payload: crate::payload::Kind,
    /// Where report.md, report.json and report.html go.
    #[arg(long, default_value = "target/loadtest/bench")]
    report_dir: PathBuf,
    /// The gateway's admin address (`/metrics`), for the bytes it wrote to WebSocket
    /// clients per delivery; set by `--spawn`.
    #[arg(long)]
    gateway_admin: Option<std::net::SocketAddr>,
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
    /// Events after a gap, and repeats, seen by the subscribers during the step.
    gaps: u64,
    duplicates: u64,
    /// CPU of every measured server process (see `servers measured` in the report).
    stack_cpu_s: f64,
    gateway_cpu_s: f64,
    nats_cpu_s: f64,
    fanout_cpu_s: f64,
    /// Whole-stack CPU-seconds per million deliveries.
    cpu_s_per_million: f64,
    gateway_cpu_s_per_million: f64,
    /// Bytes the gateway wrote to WebSocket clients per delivery (frames and all; with
    /// `--gateway-admin` or `--spawn`).
    wire_bytes_per_delivery: Option<f64>,
}

pub async fn bench(mut a: BenchArgs) -> Result<()> {
    let (_nats, servers) = spawn_stack(&mut a)?;
    let procs = Procs::new(&a.gateway_pid, a.nats_pid, a.fanout_pid);
    let room = format!("bench-{}", crate::now_ns() / 1_000_000);
    let (tally, hist) = (Arc::new(Tally::default()), Arc::new(Mutex::new(Vec::new())));
    let (n, failed) = open_and_read(&a.common, a.subscribers, |_| room.clone(), &tally, &hist).await;
    if failed > 0 {
        bail!("{failed} subscribers failed to connect");
    }
    eprintln!("{n} subscribers on {room}");
    let mut p = Publisher {
        tally,
        hist,
        nats: async_nats::connect(&a.nats_url).await.context("NATS")?,
        subject: herald_proto::subject::Subjects::new(a.common.subject_prefix.clone()).room(&room),
        payload: (a.payload, a.payload_bytes),
        subscribers: n,
        published: 0,
    };
    let limit_ms = a.p99_limit.as_secs_f64() * 1000.0;
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = a.start_rate;
    while rate <= a.max_rate {
        let s = p.step(&a, &procs, steps.len(), rate).await?;
        let over = s.p99_ms.is_nan() || s.p99_ms > limit_ms || s.delivered < s.published * n;
        steps.push(s);
        if over {
            break;
        }
        rate *= a.factor;
    }
    drop(servers);
    let verdict = verdict(&steps, n, limit_ms, &procs);
    println!("{verdict}");
    report(&a, &procs, &steps, n, limit_ms, verdict).write(&a.report_dir)?;
    eprintln!("report: {}", a.report_dir.join("report.html").display());
    Ok(())
}

/// With `--spawn`: nats-server, fanout and one gateway (its log in the report directory),
/// and the arguments pointed at them.
fn spawn_stack(a: &mut BenchArgs) -> Result<(Option<stack::Nats>, Vec<stack::Program>)> {
    if !a.spawn {
        return Ok((None, Vec::new()));
    }
    let nats = stack::nats()?;
    std::fs::create_dir_all(&a.report_dir)?;
    let fanout = stack::fanout(&nats.url())?;
    let compression: Vec<String> = match (a.common.compression, a.per_connection) {
        (false, _) => Vec::new(),
        (true, false) => ["--ws-compression", "on"].map(String::from).to_vec(),
        (true, true) => ["--ws-compression", "per-connection"].map(String::from).to_vec(),
    };
    let g = stack::gateway(
        &nats.url(),
        "bench",
        &compression,
        Some(&a.report_dir.join("gateway.log")),
    )?;
    a.common.gateway = vec![g.ws_url()];
    a.gateway_pid = vec![g.pid()];
    a.gateway_admin = Some(g.admin);
    a.nats_pid = nats.pid();
    a.fanout_pid = Some(fanout.pid());
    a.nats_url = nats.url();
    Ok((Some(nats), vec![g, fanout]))
}

/// The publisher of the bench room and what its subscribers counted.
struct Publisher {
    tally: Arc<Tally>,
    /// Latency per step.
    hist: Arc<Mutex<Vec<Histogram<u64>>>>,
    nats: async_nats::Client,
    subject: String,
    /// What each event carries, and about how many bytes of it.
    payload: (crate::payload::Kind, usize),
    subscribers: u64,
    /// Events published so far (the `n` of the next one).
    published: u64,
}

impl Publisher {
    /// Publishes at `rate` for `--step-time` on the scheduled clock, waits (up to 5 s) for the
    /// step's deliveries, and measures it.
    async fn step(&mut self, a: &BenchArgs, procs: &Procs, step: usize, rate: f64) -> Result<Step> {
        let delivered_before = self.tally.delivered.load(Relaxed);
        let gaps_before = self.tally.gaps.load(Relaxed);
        let duplicates_before = self.tally.duplicates.load(Relaxed);
        let usage_before = procs.sample();
        let wire_before = wire_bytes(a.gateway_admin).await;
        let count = (rate * a.step_time.as_secs_f64()).round() as u64;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = tokio::time::Instant::now();
        for i in 0..count {
            let scheduled = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(scheduled).await;
            let t0 = crate::scheduled_stamp(scheduled);
            let k = self.published;
            let fields = crate::payload::fields(self.payload.0, k, self.payload.1);
            let body = format!(r#"{{"t0":{t0},"n":{k},"s":{step}{fields}}}"#);
            self.nats.publish(self.subject.clone(), body.into()).await?;
            self.published += 1;
        }
        self.nats.flush().await?;
        let want = delivered_before + count * self.subscribers;
        let until = Instant::now() + Duration::from_secs(5);
        while self.tally.delivered.load(Relaxed) < want && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = start.elapsed().as_secs_f64();
        let delivered = self.tally.delivered.load(Relaxed) - delivered_before;
        let shares = procs.shares(&usage_before, &procs.sample());
        let wire = match (wire_before, wire_bytes(a.gateway_admin).await) {
            (Some(b), Some(e)) => Some((e - b) / delivered.max(1) as f64),
            _ => None,
        };
        let cpu_s = usage::cpu_total(&shares);
        let gateway_cpu_s = usage::cpu_of(&shares, Role::Gateway);
        let (p50, p99, max) = self
            .hist
            .lock()
            .expect("histogram")
            .get(step)
            .map(|h| {
                (
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                    h.max() as f64 / 1000.0,
                )
            })
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        let s = Step {
            rate,
            published: count,
            delivered,
            deliveries_per_s: delivered as f64 / took,
            p50_ms: p50,
            p99_ms: p99,
            max_ms: max,
            gaps: self.tally.gaps.load(Relaxed) - gaps_before,
            duplicates: self.tally.duplicates.load(Relaxed) - duplicates_before,
            stack_cpu_s: cpu_s,
            gateway_cpu_s,
            nats_cpu_s: usage::cpu_of(&shares, Role::NatsServer),
            fanout_cpu_s: usage::cpu_of(&shares, Role::Fanout),
            cpu_s_per_million: cpu_s / delivered.max(1) as f64 * 1e6,
            gateway_cpu_s_per_million: gateway_cpu_s / delivered.max(1) as f64 * 1e6,
            wire_bytes_per_delivery: wire,
        };
        eprintln!(
            "rate {:>8.0}/s: {:>9.0} deliveries/s, p50 {} ms, p99 {} ms, {} of {} delivered, {} gaps, {} repeats, server CPU {} s ({} s per million; gateway {}), {} bytes on the wire per delivery",
            s.rate,
            s.deliveries_per_s,
            num(s.p50_ms),
            num(s.p99_ms),
            s.delivered,
            count * self.subscribers,
            s.gaps,
            s.duplicates,
            num(s.stack_cpu_s),
            num(s.cpu_s_per_million),
            num(s.gateway_cpu_s_per_million),
            s.wire_bytes_per_delivery.map_or_else(|| "?".into(), num)
        );
        Ok(s)
    }
}

/// Bytes the gateway at `admin` has written to WebSocket clients, if it says.
async fn wire_bytes(admin: Option<std::net::SocketAddr>) -> Option<f64> {
    let admin = admin?;
    let got = tokio::task::spawn_blocking(move || herald_harness::admin::get(admin, "/metrics")).await;
    let (_, text) = got.ok()?.ok()?;
    Some(herald_harness::admin::metric_sum(
        &text,
        "herald_gateway_bytes_sent_total{transport=\"websocket\"}",
    ))
}

/// The best step that kept p99 under the limit and lost and repeated nothing.
fn verdict(steps: &[Step], n: u64, limit_ms: f64, procs: &Procs) -> String {
    let best = steps
        .iter()
        .filter(|s| s.p99_ms <= limit_ms && s.delivered == s.published * n && s.gaps == 0 && s.duplicates == 0)
        .max_by(|x, y| x.deliveries_per_s.total_cmp(&y.deliveries_per_s));
    match best {
        Some(b) => format!(
            "{:.0} deliveries/s with p99 {} ms ≤ {} ms (publish {:.0}/s × {n} subscribers); {} CPU-s per million deliveries ({}), gateway alone {}",
            b.deliveries_per_s,
            num(b.p99_ms),
            num(limit_ms),
            b.rate,
            num(b.cpu_s_per_million),
            procs.covers(),
            num(b.gateway_cpu_s_per_million)
        ),
        None => format!("no step kept p99 ≤ {} ms", num(limit_ms)),
    }
}

fn report(a: &BenchArgs, procs: &Procs, steps: &[Step], n: u64, limit_ms: f64, verdict: String) -> Report {
    let mut header = crate::report::machine_header();
    header.extend([
        ("subscribers".to_owned(), n.to_string()),
        ("payload".into(), format!("{} B padding", a.payload_bytes)),
        ("step".into(), humantime::format_duration(a.step_time).to_string()),
        ("p99 limit".into(), format!("{} ms", num(limit_ms))),
        ("servers measured".into(), procs.covers()),
    ]);
    let head = [
        "publish/s",
        "deliveries/s",
        "delivered",
        "p50 ms",
        "p99 ms",
        "max ms",
        "gaps",
        "repeats",
        "server CPU-s",
        "CPU-s per million",
        "gateway CPU-s per million",
        "wire bytes per delivery",
    ];
    let rows = steps
        .iter()
        .map(|s| {
            vec![
                num(s.rate),
                num(s.deliveries_per_s),
                format!("{}/{}", s.delivered, s.published * n),
                num(s.p50_ms),
                num(s.p99_ms),
                num(s.max_ms),
                s.gaps.to_string(),
                s.duplicates.to_string(),
                num(s.stack_cpu_s),
                num(s.cpu_s_per_million),
                num(s.gateway_cpu_s_per_million),
                s.wire_bytes_per_delivery.map_or_else(|| "–".into(), num),
            ]
        })
        .collect();
    Report {
        title: "Herald: fan-out throughput".into(),
        header,
        sections: vec![Section {
            heading: "Steps".into(),
            text: vec![
                verdict.clone(),
                format!(
                    "Every step run is listed. Server CPU covers {}; gaps are events that \
                     arrived after a missing one, repeats are events seen twice.",
                    procs.covers()
                ),
            ],
            table: Some(Table {
                head: head.map(String::from).to_vec(),
                rows,
            }),
            charts: vec![("bench".into(), chart(steps, limit_ms))],
        }],
        json: serde_json::json!({
            "revision": crate::report::run_revision(), "servers_measured": procs.covers(),
            "subscribers": n, "p99_limit_ms": limit_ms, "verdict": verdict, "steps": steps,
        }),
    }
}

/// p50 and p99 against deliveries per second, with the limit dashed.
fn chart(steps: &[Step], limit_ms: f64) -> String {
    let series = |name: &str, color, point: fn(&Step) -> f64| Series {
        name: name.into(),
        points: steps.iter().map(|s| (s.deliveries_per_s, point(s))).collect(),
        dashed: false,
        color,
    };
    let limit = Series {
        name: "limit".into(),
        points: vec![
            (steps.first().map_or(1.0, |s| s.deliveries_per_s), limit_ms),
            (steps.last().map_or(10.0, |s| s.deliveries_per_s), limit_ms),
        ],
        dashed: true,
        color: 3,
    };
    let log_axis = |label: &str| Axis {
        label: label.into(),
        log: true,
    };
    svg::lines(
        "Delivery latency against throughput",
        &log_axis("deliveries per second (log)"),
        &log_axis("ms (log)"),
        &[series("p99", 1, |s| s.p99_ms), series("p50", 0, |s| s.p50_ms), limit],
    )
}
