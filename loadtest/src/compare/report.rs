//! The compare report: a summary table, latency, bytes, series over time, theory against
//! measurement, and the files beside it.

use anyhow::{Context, Result};

use super::theory::{explain, pct, theory};
use super::CompareArgs;
use crate::modes::{ModeResult, Sample};
use crate::report::{num, Report, Section, Table};
use crate::svg::{self, Axis, Series};

const TITLE: &str = "Herald: push against long-poll and ajax polling";

pub(super) fn build(a: &CompareArgs, results: &[ModeResult]) -> Result<Report> {
    let first = results.first().context("no results")?;
    let header = header(a, first);
    let b = push_baseline(results);
    let json = serde_json::json!({
        "title": TITLE,
        "header": header.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "push_baseline_ms": b,
        "modes": results,
    });
    Ok(Report {
        title: TITLE.into(),
        header,
        json,
        sections: vec![
            Section {
                heading: "Summary".into(),
                text: notes(results),
                table: Some(summary(results)),
                ..Section::default()
            },
            latency(results, b),
            Section {
                heading: "Bytes".into(),
                text: vec![
                    "Computed per message as sent and received: HTTP/1.1 request and response heads, bodies, \
                     RFC 6455 frame headers, SSE field names and chunked framing; TCP/IP headers not included."
                        .into(),
                ],
                charts: vec![("bytes".into(), bytes(results))],
                ..Section::default()
            },
            over_time(results),
            Section {
                heading: "Theory against measurement".into(),
                text: vec!["Each cell: predicted / measured (measured ÷ predicted).".into()],
                table: Some(theory_table(results, b)),
                ..Section::default()
            },
            files(results),
        ],
    })
}

/// What ran: the machine, the load, the stack.
fn header(a: &CompareArgs, first: &ModeResult) -> Vec<(String, String)> {
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
    header
}

/// The caveats of a run on one shared machine.
fn notes(results: &[ModeResult]) -> Vec<String> {
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
    notes
}

/// One row per mode: delivery, latency, requests, bytes, CPU and memory.
fn summary(results: &[ModeResult]) -> Table {
    Table {
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
            "gateway CPU-s per 1k msgs",
            "gateway + NATS CPU-s per 1k msgs",
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
                    num(r.stack_cpu_s_per_msg() * 1000.0),
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
    }
}

/// Push baseline B (ms): the WebSocket median if it ran, else the fastest median.
fn push_baseline(results: &[ModeResult]) -> f64 {
    results
        .iter()
        .find(|r| r.transport == "WebSocket")
        .or_else(|| {
            results
                .iter()
                .min_by(|x, y| x.latency_ms.p50.total_cmp(&y.latency_ms.p50))
        })
        .map(|r| r.latency_ms.p50)
        .unwrap_or(0.0)
}

/// The latency CDFs (with polling's theory ramps) and p99 over time.
fn latency(results: &[ModeResult], b: f64) -> Section {
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
    Section {
        heading: "Latency".into(),
        text: vec![format!(
            "Push baseline B = {} ms (WebSocket median). Polling's theory line is B + U(0,T): a ramp of width T.",
            num(b)
        )],
        charts: vec![
            ("cdf".into(), cdf),
            (
                "p99-over-time".into(),
                over_time_chart(results, "Latency p99 per second", "ms (log)", &|s| s.p99_ms, true),
            ),
        ],
        ..Section::default()
    }
}

/// Bytes per delivered message, by part.
fn bytes(results: &[ModeResult]) -> String {
    svg::stacked_bars(
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
    )
}

/// One line per mode over the run.
fn over_time_chart(results: &[ModeResult], title: &str, y: &str, f: &dyn Fn(&Sample) -> f64, log: bool) -> String {
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
}

/// Deliveries, requests, CPU and memory per second.
fn over_time(results: &[ModeResult]) -> Section {
    let chart = |title: &str, y: &str, f: &dyn Fn(&Sample) -> f64| over_time_chart(results, title, y, f, false);
    Section {
        heading: "Over time".into(),
        charts: vec![
            (
                "deliveries".into(),
                chart("Deliveries per second", "deliveries/s", &|s| s.delivered as f64),
            ),
            (
                "requests".into(),
                chart("HTTP requests per second", "requests/s", &|s| s.requests as f64),
            ),
            ("cpu".into(), chart("Gateway CPU", "% of one core", &|s| s.cpu_pct)),
            (
                "rss".into(),
                chart("Gateway RSS", "MiB", &|s| s.rss_kib as f64 / 1024.0),
            ),
        ],
        ..Section::default()
    }
}

/// Predicted against measured, per mode.
fn theory_table(results: &[ModeResult], b: f64) -> Table {
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
    Table {
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
    }
}

/// Where each mode's raw data is.
fn files(results: &[ModeResult]) -> Section {
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
    }
}
