//! `loadtest compare`: the same clients, rooms and publish rate over each transport, one
//! after another, each mode in its own process (goose keeps process-wide state) and, with
//! `--spawn`, against a fresh gateway; then one report side by side ([`report`]), with each
//! mode's measurement beside its model ([`theory`]).

mod report;
mod theory;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use goose::config::GooseConfiguration;

use crate::modes::{Kind, ModeResult, Params};
use crate::report::num;
use report::build;
use theory::pct;

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
    /// PID of nats-server, whose CPU is reported beside the gateway's, when not --spawn.
    #[arg(long)]
    pub nats_pid: Option<u32>,
    /// NATS URL the publisher uses (as an app backend would), when not --spawn.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The NATS subject prefix the stack uses (the gateway's `--subject-prefix`).
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = herald_proto::subject::DEFAULT_PREFIX)]
    pub subject_prefix: String,
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
        let results = kinds
            .iter()
            .map(|kind| {
                let path = a.report_dir.join(format!("mode-{}.json", kind.label()));
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                Ok(serde_json::from_slice::<ModeResult>(&bytes)?)
            })
            .collect::<Result<Vec<_>>>()?;
        build(&a, &results)?.write(&a.report_dir)?;
        eprintln!("report: {}", a.report_dir.join("report.html").display());
        return Ok(true);
    }
    let run_id = format!("{}", crate::now_ns() / 1_000_000);
    let nats = if a.spawn { Some(crate::stack::nats()?) } else { None };
    let mut results = Vec::new();
    let mut ok = true;
    for kind in &kinds {
        let (result, success) = run_one(&a, kind.label(), &run_id, nats.as_ref())?;
        ok &= success && result.thresholds_failed.is_empty();
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

/// Runs one mode in its own process (goose keeps process-wide state) against a fresh gateway
/// when the stack is spawned; its result, and whether the process succeeded.
fn run_one(
    a: &CompareArgs,
    label: String,
    run_id: &str,
    nats: Option<&crate::stack::Nats>,
) -> Result<(ModeResult, bool)> {
    eprintln!("── {label}");
    let gateway = match nats {
        Some(n) => Some(crate::stack::gateway(
            &n.url(),
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
        .args(["--child-mode", &label, "--child-run-id", run_id]);
    if let (Some(g), Some(n)) = (&gateway, nats) {
        cmd.args([
            "--gateway",
            &g.http_url(),
            "--gateway-admin",
            &g.admin_url(),
            "--nats-url",
            &n.url(),
        ])
        .args(["--gateway-pid", &g.pid().to_string()]);
        if let Some(pid) = n.pid() {
            cmd.args(["--nats-pid", &pid.to_string()]);
        }
    }
    cmd.stdout(std::fs::File::create(a.report_dir.join(format!("goose-{label}.log")))?);
    let status = cmd.status().context("running a mode")?;
    drop(gateway);
    let result: ModeResult = match std::fs::read(&result_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(_) => bail!("mode {label} failed ({status}); see {}", a.report_dir.display()),
    };
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
    Ok((result, status.success()))
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
        subjects: herald_proto::subject::Subjects::new(a.subject_prefix.clone()),
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
        nats_pid: a.nats_pid,
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
