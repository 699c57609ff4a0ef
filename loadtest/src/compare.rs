//! `loadtest compare`: the same clients, rooms and publish rate over each transport, one
//! after another, each mode in its own process (goose keeps process-wide state) and, with
//! `--spawn`, against a fresh gateway; then one report side by side.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use goose::config::GooseConfiguration;

use crate::modes::{Kind, ModeResult, Params};
use crate::report::{num, Report, Section, Table};
use crate::svg::{self, Axis, Series};

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct CompareArgs {
    /// Modes, in order: ws, sse, long-poll, poll (one poll run per --poll-interval).
    #[arg(long, value_delimiter = ',', default_value = "ws,sse,long-poll,poll")]
    pub modes: Vec<String>,
    /// Ajax poll interval(s) T.
    #[arg(long, value_delimiter = ',', default_value = "1s,5s", value_parser = humantime::parse_duration)]
    pub poll_interval: Vec<Duration>,
    /// Long-poll hold time (`wait`), below the gateway's --poll-max-wait.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub long_poll_wait: Duration,
    /// Rooms; client i subscribes to room i mod rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Events per second over all rooms (round-robin), published through NATS.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Padding bytes in each event's data.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Start a private stack (nats-server + a fresh herald-gateway per mode) on free ports.
    #[arg(long)]
    pub spawn: bool,
    /// Gateway base URL when not --spawn (the `cargo xtask up` stack by default).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// Gateway admin URL(s) for /metrics when not --spawn.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:9100")]
    pub gateway_admin: Vec<String>,
    /// Gateway PID(s) for CPU and RSS when not --spawn (default: whatever listens on the
    /// --gateway port here).
    #[arg(long, value_delimiter = ',')]
    pub gateway_pid: Vec<u32>,
    /// NATS URL the publisher uses (as an app backend would), when not --spawn.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Extra flags for spawned gateways (e.g. "--outbound-buffer-bytes=1048576").
    #[arg(long, allow_hyphen_values = true)]
    pub gateway_arg: Vec<String>,
    /// Token for every client (omit with an anonymous gateway).
    #[arg(long, env = "HERALD_TOKEN")]
    pub token: Option<String>,
    /// Send the ~700 B of request headers a browser sends (User-Agent, sec-fetch-*, cookie, ...).
    #[arg(long)]
    pub browser_headers: bool,
    /// Source address for the clients.
    #[arg(long, default_value = "127.0.0.1")]
    pub source: IpAddr,
    /// Longest wait for delivery to complete after publishing (default: 2 × the largest T + 5 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain: Option<Duration>,
    /// Record one delivery in N as a goose row (the harness histogram keeps all).
    #[arg(long, default_value_t = 1)]
    pub goose_sample: u64,
    /// Where report.md, report.json, report.html, the charts and per-mode files go.
    #[arg(long, default_value = "target/loadtest/compare")]
    pub report_dir: PathBuf,
    /// Do not run: rebuild the report from the mode-<mode>.json files already in --report-dir.
    #[arg(long)]
    pub from_results: bool,
    /// goose 0.18's name for --increase-rate.
    #[arg(long)]
    pub hatch_rate: Option<String>,
    #[arg(long, hide = true)]
    pub child_mode: Option<String>,
    #[arg(long, hide = true)]
    pub child_run_id: Option<String>,
    #[command(flatten)]
    pub goose: GooseConfiguration,
}

impl CompareArgs {
    fn kinds(&self) -> Result<Vec<Kind>> {
        let mut out = Vec::new();
        for m in &self.modes {
            match m.as_str() {
                "poll" => out.extend(self.poll_interval.iter().map(|&t| Kind::Poll(t))),
                other => out.push(Kind::parse(other)?),
            }
        }
        Ok(out)
    }

    fn publish_time(&self) -> Result<Duration> {
        match &self.goose.run_time {
            Some(t) => humantime::parse_duration(t).context("--run-time"),
            None => Ok(Duration::from_secs(20)),
        }
    }

    fn drain(&self) -> Duration {
        self.drain.unwrap_or_else(|| {
            let t = self.poll_interval.iter().max().copied().unwrap_or_default();
            t * 2 + Duration::from_secs(5)
        })
    }
}

pub async fn run(mut a: CompareArgs) -> Result<bool> {
    if a.goose.increase_rate.is_none() {
        a.goose.increase_rate = a.hatch_rate.clone();
    }
    if let Some(label) = a.child_mode.clone() {
        return child(a, &label).await;
    }
    let kinds = a.kinds()?;
    if kinds.is_empty() {
        bail!("no modes");
    }
    std::fs::create_dir_all(&a.report_dir)?;
    if a.from_results {
        let mut results = Vec::new();
        for kind in &kinds {
            let path = a.report_dir.join(format!("mode-{}.json", kind.label()));
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            results.push(serde_json::from_slice::<ModeResult>(&bytes)?);
        }
        build(&a, &results)?.write(&a.report_dir)?;
        eprintln!("report: {}", a.report_dir.join("report.html").display());
        return Ok(true);
    }
    let run_id = format!("{}", crate::now_ns() / 1_000_000);
    let nats = if a.spawn {
        Some(crate::stack::Nats::start()?)
    } else {
        None
    };
    let mut results = Vec::new();
    let mut ok = true;
    for kind in &kinds {
        let label = kind.label();
        eprintln!("── {label}");
        let gateway = match &nats {
            Some(n) => Some(crate::stack::Gateway::start(
                &n.url,
                &format!("lt-{label}"),
                &a.gateway_arg,
                Some(&a.report_dir.join(format!("gateway-{label}.log"))),
            )?),
            None => None,
        };
        let result_path = a.report_dir.join(format!("mode-{label}.json"));
        let _ = std::fs::remove_file(&result_path);
        let mut cmd = Command::new(std::env::current_exe()?);
        // The same command line, plus where this mode runs (later flags override earlier).
        cmd.args(std::env::args_os().skip(1))
            .args(["--child-mode", &label, "--child-run-id", &run_id]);
        if let (Some(g), Some(n)) = (&gateway, &nats) {
            cmd.args(["--gateway", &g.http, "--gateway-admin", &g.admin, "--nats-url", &n.url])
                .args(["--gateway-pid", &g.pid.to_string()]);
        }
        cmd.stdout(std::fs::File::create(a.report_dir.join(format!("goose-{label}.log")))?);
        let status = cmd.status().context("running a mode")?;
        drop(gateway);
        let result: ModeResult = match std::fs::read(&result_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(_) => bail!("mode {label} failed ({status}); see {}", a.report_dir.display()),
        };
        if !status.success() || !result.thresholds_failed.is_empty() {
            ok = false;
        }
        eprintln!(
            "   delivered {}/{} ({:.2}%), p50 {} ms, p99 {} ms, {} HTTP req, gateway CPU {:.2} s",
            result.delivered,
            result.expected,
            pct(result.delivered, result.expected),
            num(result.latency_ms.p50),
            num(result.latency_ms.p99),
            result.http_requests,
            result.gateway_cpu_s
        );
        results.push(result);
    }
    drop(nats);
    let report = build(&a, &results)?;
    report.write(&a.report_dir)?;
    eprintln!("report: {}", a.report_dir.join("report.html").display());
    for r in &results {
        for f in &r.thresholds_failed {
            eprintln!("threshold failed in {}: {f}", r.mode);
        }
    }
    Ok(ok)
}

async fn child(a: CompareArgs, label: &str) -> Result<bool> {
    let kind = Kind::parse(label)?;
    let http = a.gateway.trim_end_matches('/').to_owned();
    let ws = format!("{}/ws", http.replacen("http://", "ws://", 1));
    let port: Option<u16> = http.rsplit(':').next().and_then(|p| p.parse().ok());
    let params = Params {
        kind,
        ws,
        http,
        nats_url: a.nats_url.clone(),
        rooms: a.rooms.max(1),
        rate: a.rate,
        publish: a.publish_time()?,
        payload_bytes: a.payload_bytes,
        long_poll_wait: a.long_poll_wait,
        drain: a.drain(),
        token: a.token.clone(),
        browser_headers: a.browser_headers,
        gateway_pids: if a.gateway_pid.is_empty() {
            // Not given: the process listening on the gateway's port, when it runs here.
            port.and_then(crate::proc::pid_listening_on).into_iter().collect()
        } else {
            a.gateway_pid.clone()
        },
        gateway_admin: a.gateway_admin.clone(),
        source: a.source,
        goose_sample: a.goose_sample,
        run_id: a.child_run_id.clone().unwrap_or_else(|| "x".into()),
    };
    let result = crate::modes::run_mode(params, a.goose.clone(), &a.report_dir).await?;
    let path = a.report_dir.join(format!("mode-{label}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&result)?)?;
    Ok(result.thresholds_failed.is_empty())
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// The theory of notes §3.5 for one mode, given the push baseline `b` (ms): predicted
/// (mean latency ms, p99 ms, HTTP req/s, bytes per delivered message).
struct Theory {
    mean: f64,
    p99: f64,
    req_s: f64,
    bytes_per_msg: f64,
    why: String,
}

fn theory(r: &ModeResult, b: f64) -> Theory {
    let n = r.subscribed as f64;
    let lam = r.lambda();
    let delivered = r.delivered.max(1) as f64;
    let exchanges = r.http_requests.max(1) as f64;
    let head = (r.bytes.up_headers + r.bytes.down_headers) as f64 / exchanges;
    let event = r.bytes.down_payload as f64 / delivered;
    match (r.poll_interval_s, r.long_poll_wait_s) {
        (Some(t), _) => {
            let tm = t * 1000.0;
            // Body bytes: events plus the answer's envelope; headers per exchange.
            let per_msg = head / (lam * t).max(f64::MIN_POSITIVE) + event;
            Theory {
                mean: b + tm / 2.0,
                p99: b + 0.99 * tm,
                req_s: n / t,
                bytes_per_msg: per_msg,
                why: format!(
                    "poll: B + U(0,T), N/T requests/s, H/(λT) + E bytes (λ = {} ev/s per client)",
                    num(lam)
                ),
            }
        }
        (None, Some(_)) => {
            // G: the re-request gap, one round trip ≈ 2·B on loopback.
            let g = 2.0 * b / 1000.0;
            let per_resp = 1.0 + lam * g;
            Theory {
                mean: b + lam * g * g / (2.0 * (1.0 + lam * g)) * 1000.0,
                p99: b + g * 1000.0,
                req_s: n * lam / per_resp,
                bytes_per_msg: head / per_resp + event,
                why: "long-poll: B (+ re-request gap G ≈ 2B), Nλ/(1+λG) requests/s, H/(1+λG) + E bytes".into(),
            }
        }
        _ if r.transport == "WebSocket" => Theory {
            mean: b,
            p99: f64::NAN,
            req_s: 0.0,
            bytes_per_msg: event + 2.0,
            why: "WebSocket: latency B, no requests, E + 2 B frame header".into(),
        },
        _ => {
            // "id: <room>:<seq>\n" + "data: " + "\n\n", and ~6 B of chunked framing per event.
            let seq_digits = ((r.published as f64 / r.rooms.max(1) as f64 / 2.0).max(1.0))
                .log10()
                .floor()
                + 1.0;
            Theory {
                mean: b,
                p99: f64::NAN,
                req_s: 0.0,
                bytes_per_msg: event + 4.0 + r.room_name_len as f64 + 1.0 + seq_digits + 1.0 + 6.0 + 2.0 + 6.0,
                why: "SSE: latency B, no requests, E + id/data fields + chunk framing".into(),
            }
        }
    }
}

/// Why a measurement sits more than 20% from its model, for the cases we understand.
fn explain(r: &ModeResult, t: &Theory, b: f64) -> String {
    let off = |m: f64, p: f64| p.is_finite() && p > 0.0 && !(0.8..=1.2).contains(&(m / p));
    let mut why = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = r.gateway_cpu_pct_mean + r.harness_cpu_pct;
    if busy > 75.0 * cores {
        why.push(format!(
            "CPU-bound: gateway {:.0}% + harness {:.0}% of {cores} cores, so requests queue and each answer \
             carries several events (RFC 6202's batching under load)",
            r.gateway_cpu_pct_mean, r.harness_cpu_pct
        ));
    }
    if !why.is_empty() {
        return why.join("; ");
    }
    if off(r.latency_ms.mean, t.mean) {
        why.push(match (r.poll_interval_s, r.long_poll_wait_s) {
            (None, Some(_)) => {
                let per_room = r.subscribed as f64 / r.rooms.max(1) as f64;
                let us = r.cpu_s_per_msg() * 1e6;
                format!(
                    "latency: each event answers all {per_room:.0} parked requests of its room at once, and an \
                     answer costs the gateway {us:.0} µs of CPU, so the middle of the burst waits about \
                     {} ms more than B ({} ms, the WebSocket path); the next request must also arrive first",
                    num(per_room / 2.0 * us / 1000.0),
                    num(b)
                )
            }
            (None, None) => format!(
                "latency: the SSE path (event, chunk, HTTP body) differs from WebSocket's; at B = {} ms a \
                 fraction of a millisecond is over 20%",
                num(b)
            ),
            _ => "latency: polls are not perfectly uniform over T (ramp-up phases)".into(),
        });
    }
    if off(r.req_per_s(), t.req_s) {
        why.push("requests: the window includes the drain after publishing, when long-polls sit idle".into());
    }
    if off(r.bytes_per_msg(), t.bytes_per_msg) {
        why.push("bytes: answers carry a different number of events than the model's 1 + λG".into());
    }
    why.join("; ")
}

fn build(a: &CompareArgs, results: &[ModeResult]) -> Result<Report> {
    let first = results.first().context("no results")?;
    let mut header = crate::report::machine_header();
    header.extend([
        ("clients".to_owned(), first.clients.to_string()),
        ("rooms".into(), a.rooms.to_string()),
        (
            "publish rate".into(),
            format!(
                "{} events/s over all rooms ({} per client)",
                num(a.rate),
                num(first.lambda())
            ),
        ),
        ("publishing".into(), format!("{:.0} s per mode", first.publish_s)),
        ("payload".into(), format!("{} B padding per event", a.payload_bytes)),
        (
            "poll".into(),
            format!(
                "T = {}; long-poll wait {}",
                a.poll_interval
                    .iter()
                    .map(|t| humantime::format_duration(*t).to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                humantime::format_duration(a.long_poll_wait)
            ),
        ),
        (
            "stack".into(),
            if a.spawn {
                "spawned: nats-server + a fresh herald-gateway per mode".into()
            } else {
                format!("{} (NATS {})", a.gateway, a.nats_url)
            },
        ),
        (
            "headers".into(),
            if a.browser_headers {
                "browser-sized request headers".into()
            } else {
                "goose/reqwest default request headers (HTTP/1.1)".into()
            },
        ),
    ]);
    let busy: Vec<&ModeResult> = results.iter().filter(|r| r.harness_cpu_pct > 80.0).collect();
    let mut notes = vec![
        "Client and server share this machine: compare modes with each other, not with other machines. \
         Latency is measured from each event's scheduled publish time (no coordinated omission)."
            .to_owned(),
    ];
    if !busy.is_empty() {
        notes.push(format!(
            "Warning: the harness used more than 80% of a core in {} — those numbers may be client-bound.",
            busy.iter().map(|r| r.mode.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }

    let summary = Table {
        head: [
            "mode",
            "clients",
            "delivered",
            "gaps/dups",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "HTTP req/s",
            "req per msg",
            "empty polls",
            "bytes per msg",
            "CPU-s per 1k msgs",
            "gateway CPU mean/max",
            "RSS per 1k conns",
            "errors",
        ]
        .map(String::from)
        .to_vec(),
        rows: results
            .iter()
            .map(|r| {
                let delivered = r.delivered.max(1) as f64;
                vec![
                    r.mode.clone(),
                    r.subscribed.to_string(),
                    format!("{}/{} ({:.2}%)", r.delivered, r.expected, pct(r.delivered, r.expected)),
                    format!("{}/{}", r.gaps, r.duplicates),
                    num(r.latency_ms.p50),
                    num(r.latency_ms.p90),
                    num(r.latency_ms.p99),
                    num(r.latency_ms.p999),
                    num(r.latency_ms.max),
                    num(r.req_per_s()),
                    num(r.http_requests as f64 / delivered),
                    if r.http_requests > 0 {
                        format!("{:.1}%", pct(r.empty_responses, r.http_requests))
                    } else {
                        "–".into()
                    },
                    num(r.bytes_per_msg()),
                    num(r.cpu_s_per_msg() * 1000.0),
                    format!("{:.0}% / {:.0}%", r.gateway_cpu_pct_mean, r.gateway_cpu_pct_max),
                    format!(
                        "{:.1} MiB",
                        r.gateway_rss_peak_kib.saturating_sub(r.gateway_rss_before_kib) as f64
                            / 1024.0
                            / r.subscribed.max(1) as f64
                            * 1000.0
                    ),
                    r.errors.to_string(),
                ]
            })
            .collect(),
    };

    // Push baseline B: the WebSocket median if it ran, else the fastest median.
    let b = results
        .iter()
        .find(|r| r.transport == "WebSocket")
        .or_else(|| {
            results
                .iter()
                .min_by(|x, y| x.latency_ms.p50.total_cmp(&y.latency_ms.p50))
        })
        .map(|r| r.latency_ms.p50)
        .unwrap_or(0.0);

    let mut cdf_series = Vec::new();
    for (i, r) in results.iter().enumerate() {
        cdf_series.push(Series {
            name: r.mode.clone(),
            points: r.cdf.clone(),
            dashed: false,
            color: i,
        });
        if let Some(t) = r.poll_interval_s {
            let tm = t * 1000.0;
            cdf_series.push(Series {
                name: format!("{} theory B+U(0,T)", r.mode),
                points: (0..=50).map(|k| (b + tm * k as f64 / 50.0, k as f64 / 50.0)).collect(),
                dashed: true,
                color: i,
            });
        }
    }
    let cdf = svg::lines(
        "Delivery latency CDF (all modes; dashed: polling theory)",
        &Axis {
            label: "latency, ms (log)".into(),
            log: true,
        },
        &Axis {
            label: "fraction delivered".into(),
            log: false,
        },
        &cdf_series,
    );

    let bytes = svg::stacked_bars(
        "Bytes on the wire per delivered message",
        "bytes per message",
        &results
            .iter()
            .map(|r| {
                let d = r.delivered.max(1) as f64;
                (
                    r.mode.clone(),
                    vec![
                        ("event payload / body".into(), r.bytes.down_payload as f64 / d),
                        (
                            "HTTP headers".into(),
                            (r.bytes.up_headers + r.bytes.down_headers) as f64 / d,
                        ),
                        ("framing".into(), r.bytes.framing as f64 / d),
                        ("client payload".into(), r.bytes.up_payload as f64 / d),
                    ],
                )
            })
            .collect::<Vec<_>>(),
        false,
    );
    let series = |title: &str, y: &str, f: &dyn Fn(&crate::modes::Sample) -> f64, log: bool| {
        svg::lines(
            title,
            &Axis {
                label: "seconds since publishing started".into(),
                log: false,
            },
            &Axis { label: y.into(), log },
            &results
                .iter()
                .enumerate()
                .map(|(i, r)| Series {
                    name: r.mode.clone(),
                    points: r.series.iter().filter(|s| s.t > 0.0).map(|s| (s.t, f(s))).collect(),
                    dashed: false,
                    color: i,
                })
                .collect::<Vec<_>>(),
        )
    };
    let ts_delivered = series("Deliveries per second", "deliveries/s", &|s| s.delivered as f64, false);
    let ts_requests = series("HTTP requests per second", "requests/s", &|s| s.requests as f64, false);
    let ts_p99 = series("Latency p99 per second", "ms (log)", &|s| s.p99_ms, true);
    let ts_cpu = series("Gateway CPU", "% of one core", &|s| s.cpu_pct, false);
    let ts_rss = series("Gateway RSS", "MiB", &|s| s.rss_kib as f64 / 1024.0, false);

    let mut theory_rows = Vec::new();
    for r in results {
        let t = theory(r, b);
        let measured_req = r.req_per_s();
        let measured_bytes = r.bytes_per_msg();
        let ratio = |m: f64, p: f64| {
            if p.is_finite() && p > 0.0 {
                format!("{:.2}", m / p)
            } else {
                "–".into()
            }
        };
        theory_rows.push(vec![
            r.mode.clone(),
            format!(
                "{} / {} ({})",
                num(t.mean),
                num(r.latency_ms.mean),
                ratio(r.latency_ms.mean, t.mean)
            ),
            format!(
                "{} / {} ({})",
                num(t.p99),
                num(r.latency_ms.p99),
                ratio(r.latency_ms.p99, t.p99)
            ),
            format!(
                "{} / {} ({})",
                num(t.req_s),
                num(measured_req),
                ratio(measured_req, t.req_s)
            ),
            format!(
                "{} / {} ({})",
                num(t.bytes_per_msg),
                num(measured_bytes),
                ratio(measured_bytes, t.bytes_per_msg)
            ),
            t.why.clone(),
            explain(r, &t, b),
        ]);
    }

    let json = serde_json::json!({
        "title": "Herald: push against long-poll and ajax polling",
        "header": header.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "push_baseline_ms": b,
        "modes": results,
    });
    Ok(Report {
        title: "Herald: push against long-poll and ajax polling".into(),
        header,
        json,
        sections: vec![
            Section {
                heading: "Summary".into(),
                text: notes,
                table: Some(summary),
                ..Section::default()
            },
            Section {
                heading: "Latency".into(),
                text: vec![format!(
                    "Push baseline B = {} ms (WebSocket median). Polling's theory line is B + U(0,T): a ramp of width T.",
                    num(b)
                )],
                charts: vec![("cdf".into(), cdf), ("p99-over-time".into(), ts_p99)],
                ..Section::default()
            },
            Section {
                heading: "Bytes".into(),
                text: vec![
                    "Computed per message as sent and received: HTTP/1.1 request and response heads, bodies, \
                     RFC 6455 frame headers, SSE field names and chunked framing; TCP/IP headers not included."
                        .into(),
                ],
                charts: vec![("bytes".into(), bytes)],
                ..Section::default()
            },
            Section {
                heading: "Over time".into(),
                charts: vec![
                    ("deliveries".into(), ts_delivered),
                    ("requests".into(), ts_requests),
                    ("cpu".into(), ts_cpu),
                    ("rss".into(), ts_rss),
                ],
                ..Section::default()
            },
            Section {
                heading: "Theory against measurement".into(),
                text: vec!["Each cell: predicted / measured (measured ÷ predicted).".into()],
                table: Some(Table {
                    head: [
                        "mode",
                        "mean latency ms",
                        "p99 ms",
                        "HTTP req/s",
                        "bytes per msg",
                        "model",
                        "where it differs by more than 20%",
                    ]
                    .map(String::from)
                    .to_vec(),
                    rows: theory_rows,
                }),
                ..Section::default()
            },
            Section {
                heading: "Files".into(),
                text: results
                    .iter()
                    .map(|r| {
                        format!(
                            "{}: mode-{}.json (this harness), {} (goose's report), goose-{}.log",
                            r.mode,
                            r.mode,
                            r.goose_report.as_deref().unwrap_or_default(),
                            r.mode
                        )
                    })
                    .collect(),
                ..Section::default()
            },
        ],
    })
}
