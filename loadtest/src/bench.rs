//! `loadtest bench`: subscribers on one room, a publish rate rising step by step until p99
//! crosses a limit; deliveries/s and gateway CPU-seconds per million deliveries at each step.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::report::{num, Report, Section, Table};
use crate::svg::{self, Axis, Series};
use crate::{proc, stack, Common};

use crate::hold::{read_events, Tally};

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
    let nats_proc = if a.spawn { Some(stack::nats()?) } else { None };
    let gateway = match &nats_proc {
        Some(n) => {
            std::fs::create_dir_all(&a.report_dir)?;
            let g = stack::Gateway::start(&n.url(), "bench", &[], Some(&a.report_dir.join("gateway.log")))?;
            a.common.gateway = vec![g.ws.clone()];
            a.gateway_pid = vec![g.pid];
            a.nats_url = n.url();
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
    let subject = herald_proto::subject::Subjects::new(a.common.subject_prefix.clone()).room(&room);
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
