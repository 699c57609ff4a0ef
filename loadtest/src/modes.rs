//! One mode of `loadtest compare`, run on goose in its own process: N clients (goose users)
//! on R rooms over one transport, an open-loop fixed-rate publisher through NATS beside goose,
//! and a sampler of the gateway's CPU, RSS and `/metrics`. Writes a [`ModeResult`].
//!
//! WebSocket and SSE clients read in a task of their own and hand each delivery to the user's
//! goose transaction, which records it as a custom request row (`WS deliver`, `SSE deliver`);
//! long-poll and ajax polling are goose's own HTTP requests (`GET poll-wait`, `GET poll`) and
//! record their deliveries as `LP deliver` / `POLL deliver`.

mod poll;
mod sampler;
mod sse;
mod ws;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use goose::config::GooseConfiguration;
use goose::prelude::*;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use self::poll::{ajax_poll, long_poll, poll_headers, poll_start};
use self::sampler::sample;
use self::sse::{sse_connect, sse_receive};
use self::ws::{ws_connect, ws_receive};
use crate::client::{Chain, Order, Stamp};

/// A transport under test; `Poll` carries its interval T.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Ws,
    Sse,
    LongPoll,
    Poll(Duration),
}

impl Kind {
    pub fn parse(label: &str) -> Result<Self> {
        Ok(match label {
            "ws" => Kind::Ws,
            "sse" => Kind::Sse,
            "long-poll" => Kind::LongPoll,
            _ => match label.strip_prefix("poll-") {
                Some(t) => Kind::Poll(humantime::parse_duration(t).context("poll interval")?),
                None => bail!("unknown mode {label:?}: ws, sse, long-poll or poll-<interval>"),
            },
        })
    }

    pub fn label(self) -> String {
        match self {
            Kind::Ws => "ws".into(),
            Kind::Sse => "sse".into(),
            Kind::LongPoll => "long-poll".into(),
            Kind::Poll(t) => format!("poll-{}", humantime::format_duration(t)),
        }
    }

    /// The goose method label of this mode's delivery row.
    pub fn method(self) -> &'static str {
        match self {
            Kind::Ws => "WS",
            Kind::Sse => "SSE",
            Kind::LongPoll => "LP",
            Kind::Poll(_) => "POLL",
        }
    }

    /// The goose request rows this mode produces (for `--threshold ... for <row>`).
    pub fn rows(self) -> [String; 2] {
        let other = match self {
            Kind::Ws => "WS connect",
            Kind::Sse => "SSE connect",
            Kind::LongPoll => "GET poll-wait",
            Kind::Poll(_) => "GET poll",
        };
        [format!("{} deliver", self.method()), other.to_owned()]
    }
}

/// What one mode run sets up (from `compare`'s flags).
#[derive(Debug, Clone)]
pub struct Params {
    pub kind: Kind,
    pub http: String,
    pub ws: String,
    pub nats_url: String,
    pub subjects: herald_proto::subject::Subjects,
    pub rooms: usize,
    pub rate: f64,
    pub publish: Duration,
    pub payload_bytes: usize,
    pub long_poll_wait: Duration,
    pub drain: Duration,
    pub token: Option<String>,
    pub browser_headers: bool,
    pub gateway_pids: Vec<u32>,
    pub nats_pid: Option<u32>,
    pub gateway_admin: Vec<String>,
    pub source: IpAddr,
    pub goose_sample: u64,
    pub run_id: String,
}

/// A mode's measurements, written as JSON for `compare` to merge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: String,
    pub transport: String,
    pub poll_interval_s: Option<f64>,
    pub long_poll_wait_s: Option<f64>,
    pub clients: u64,
    pub subscribed: u64,
    pub rooms: u64,
    pub room_name_len: u64,
    pub rate: f64,
    pub payload_bytes: u64,
    pub publish_s: f64,
    pub window_s: f64,
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub latency_ms: Percentiles,
    /// (latency ms, fraction delivered within it)
    pub cdf: Vec<(f64, f64)>,
    pub http_requests: u64,
    pub empty_responses: u64,
    pub bytes: Wire,
    /// Bytes of the connection set-up (WS handshake, SSE response head), not in `bytes`.
    pub connect_bytes: u64,
    pub gateway_bytes_sent: f64,
    pub gateway_cpu_s: f64,
    /// nats-server's CPU over the same window (0 when its PID is not known).
    #[serde(default)]
    pub nats_cpu_s: f64,
    pub gateway_cpu_pct_mean: f64,
    pub gateway_cpu_pct_max: f64,
    pub gateway_rss_before_kib: u64,
    pub gateway_rss_peak_kib: u64,
    pub kernel_tcp_kib_before: u64,
    pub kernel_tcp_kib_peak: u64,
    pub connections_gauge: f64,
    pub harness_cpu_pct: f64,
    pub series: Vec<Sample>,
    pub thresholds_failed: Vec<String>,
    /// File name of goose's own report for this mode.
    pub goose_report: Option<String>,
}

impl ModeResult {
    /// Events per second each client receives (its room's share of the publish rate).
    pub fn lambda(&self) -> f64 {
        self.rate / self.rooms.max(1) as f64
    }

    /// HTTP requests per second over the measurement window.
    pub fn req_per_s(&self) -> f64 {
        self.http_requests as f64 / self.window_s.max(1e-9)
    }

    /// Bytes on the wire per delivered event.
    pub fn bytes_per_msg(&self) -> f64 {
        self.bytes.total() as f64 / self.delivered.max(1) as f64
    }

    /// Gateway and nats-server CPU-seconds per delivered message.
    pub fn stack_cpu_s_per_msg(&self) -> f64 {
        (self.gateway_cpu_s + self.nats_cpu_s) / self.delivered.max(1) as f64
    }

    /// Gateway CPU-seconds per delivered event.
    pub fn cpu_s_per_msg(&self) -> f64 {
        self.gateway_cpu_s / self.delivered.max(1) as f64
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Bytes on the wire during the measurement window, as HTTP/1.1 or RFC 6455 carries them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Wire {
    pub up_headers: u64,
    pub up_payload: u64,
    pub down_headers: u64,
    pub down_payload: u64,
    pub framing: u64,
}

impl Wire {
    pub fn total(&self) -> u64 {
        self.up_headers + self.up_payload + self.down_headers + self.down_payload + self.framing
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since publishing started (negative while clients connect).
    pub t: f64,
    pub delivered: u64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_pct: f64,
    pub rss_kib: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
    requests: AtomicU64,
    empty: AtomicU64,
    up_headers: AtomicU64,
    up_payload: AtomicU64,
    down_headers: AtomicU64,
    down_payload: AtomicU64,
    framing: AtomicU64,
    connect_bytes: AtomicU64,
}

impl Counters {
    fn wire(&self) -> Wire {
        Wire {
            up_headers: self.up_headers.load(Relaxed),
            up_payload: self.up_payload.load(Relaxed),
            down_headers: self.down_headers.load(Relaxed),
            down_payload: self.down_payload.load(Relaxed),
            framing: self.framing.load(Relaxed),
        }
    }
}

pub(crate) struct Run {
    p: Params,
    rooms: Vec<String>,
    headers: Vec<(String, String)>,
    /// Every header a `/poll` request carries on the wire (for counting its bytes).
    poll_headers: http::HeaderMap,
    subscribed: AtomicU64,
    room_subscribers: Vec<AtomicU64>,
    publishing: AtomicBool,
    c: Counters,
    hist: Mutex<Histogram<u64>>,
    second: Mutex<Histogram<u64>>,
    stop: watch::Sender<bool>,
}

static RUN: OnceLock<Run> = OnceLock::new();

pub(crate) fn run() -> &'static Run {
    RUN.get().expect("mode run set up before goose starts")
}

/// Request headers a Chromium page sends with a same-origin `fetch`: about 700 B, the size
/// browsers and the literature (SPDY whitepaper, websocket.org) report.
fn browser_headers(origin: &str) -> Vec<(String, String)> {
    [
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.9"),
        ("origin", origin),
        ("referer", &format!("{origin}/")),
        ("sec-ch-ua", "\"Chromium\";v=\"142\", \"Not_A Brand\";v=\"99\""),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", "\"Linux\""),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-origin"),
        (
            "cookie",
            "_ga=GA1.1.1850623371.1763900000; session=6f1c2a9e0b7d4c58a3e2f1d0c9b8a7e6; theme=dark",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Counts a delivery on a client's chain (rooms are fresh, so chains start at 0) and records
/// its latency; `None` for a duplicate.
pub(crate) fn deliver(run: &Run, chain: &mut Chain, (seq, prev): (u64, u64), stamp: Option<Stamp>) -> Option<Duration> {
    match chain.check(seq, prev) {
        Order::Duplicate => {
            run.c.duplicates.fetch_add(1, Relaxed);
            return None;
        }
        Order::AfterGap => {
            run.c.gaps.fetch_add(1, Relaxed);
        }
        Order::Next => {}
    }
    run.c.delivered.fetch_add(1, Relaxed);
    let t0 = stamp?.t0;
    let lat_us = (crate::now_ns().saturating_sub(t0) / 1000).max(1);
    let _ = run.hist.lock().expect("histogram").record(lat_us);
    let _ = run.second.lock().expect("histogram").record(lat_us);
    Some(Duration::from_micros(lat_us))
}

/// The session id of client `index` (herald.js sends a random one; rate limits and polling
/// sessions count per sid).
pub(crate) fn sid(index: usize) -> String {
    format!("loadtest-{index:08}")
}

pub(crate) fn room_index(user: &GooseUser) -> usize {
    user.weighted_users_index % run().rooms.len()
}

pub(crate) fn fail(msg: impl std::fmt::Display) -> Box<TransactionError> {
    run().c.errors.fetch_add(1, Relaxed);
    Box::new(TransactionError::Custom(msg.to_string()))
}

pub(crate) fn subscribed(room: usize) {
    let run = run();
    run.room_subscribers[room].fetch_add(1, Relaxed);
    run.subscribed.fetch_add(1, Relaxed);
}

/// Deliveries (latency) from a reader task to its goose user; `Err` when the stream ended.
pub(crate) type Deliveries = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<std::result::Result<Duration, String>>>>;

/// Records what the reader task delivered, waiting up to 500 ms (so goose can stop the user).
pub(crate) async fn record_deliveries(user: &mut GooseUser, rx: &Deliveries, method: &str) -> TransactionResult {
    let mut got = Vec::new();
    {
        let mut rx = rx.lock().await;
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Err(_) => return Ok(()),
            Ok(None) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
            Ok(Some(d)) => got.push(d),
        }
        while let Ok(d) = rx.try_recv() {
            got.push(d);
        }
    }
    for d in got {
        match d {
            Ok(lat) => record(user, method, lat).await?,
            Err(e) => {
                user.record_custom_request_duration(method, "deliver", Duration::ZERO, false, None, Some(&e))
                    .await?;
                return Err(fail(e));
            }
        }
    }
    Ok(())
}

pub(crate) async fn record_all(user: &mut GooseUser, method: &str, lats: Vec<Duration>) -> TransactionResult {
    for lat in lats {
        record(user, method, lat).await?;
    }
    Ok(())
}

/// Records one delivery as a goose row: every one, or one in `--goose-sample` (the harness's
/// own histogram always has them all).
async fn record(user: &mut GooseUser, method: &str, lat: Duration) -> TransactionResult {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    if SEEN.fetch_add(1, Relaxed).is_multiple_of(run().p.goose_sample.max(1)) {
        user.record_custom_request_duration(method, "deliver", lat, true, None, None)
            .await?;
    }
    Ok(())
}

/// Goose's configuration for this mode: users (200 by default), host, timeouts, the
/// thresholds that judge this mode's rows, and its JSON report in `report_dir`. The number of
/// users and the report's file name.
fn configure(p: &Params, goose: &mut GooseConfiguration, report_dir: &std::path::Path) -> (usize, Option<String>) {
    let label = p.kind.label();
    let users = goose.users.unwrap_or(200);
    goose.users = Some(users);
    goose.host = Some(p.http.clone());
    goose.no_telnet = true;
    if goose.increase_rate.is_none() {
        goose.increase_rate = Some("500".into());
    }
    // --run-time is the publishing time here; the run itself ends when delivery is complete.
    goose.run_time = None;
    if goose.timeout.is_none() {
        goose.timeout = Some((p.long_poll_wait.as_secs() + 15).to_string());
    }
    let rows = p.kind.rows();
    goose.threshold.retain(|rule| match rule.split_once(" for ") {
        None => true,
        Some((_, request)) => rows.iter().any(|r| r == request.trim()),
    });
    if goose.report_file.is_empty() {
        let path = report_dir.join(format!("goose-{label}.json"));
        goose.report_file.push(path.to_string_lossy().into_owned());
    }
    // Its file name: the report links it beside itself, and no machine's path lands in it.
    let goose_report = goose.report_file.first().map(|f| {
        std::path::Path::new(f)
            .file_name()
            .map_or_else(|| f.clone(), |n| n.to_string_lossy().into_owned())
    });
    (users, goose_report)
}

/// The goose scenario of a transport: connect (or start polling) once, then receive.
fn scenario(kind: Kind) -> Scenario {
    match kind {
        Kind::Ws => scenario!("ws")
            .register_transaction(transaction!(ws_connect).set_on_start())
            .register_transaction(transaction!(ws_receive)),
        Kind::Sse => scenario!("sse")
            .register_transaction(transaction!(sse_connect).set_on_start())
            .register_transaction(transaction!(sse_receive)),
        Kind::LongPoll => scenario!("longpoll")
            .register_transaction(transaction!(poll_start).set_on_start())
            .register_transaction(transaction!(long_poll)),
        Kind::Poll(_) => scenario!("poll")
            .register_transaction(transaction!(poll_start).set_on_start())
            .register_transaction(transaction!(ajax_poll)),
    }
}

/// Runs one mode; `goose` is the configuration from the command line.
pub async fn run_mode(p: Params, mut goose: GooseConfiguration, report_dir: &std::path::Path) -> Result<ModeResult> {
    let label = p.kind.label();
    let (users, goose_report) = configure(&p, &mut goose, report_dir);
    let headers = if p.browser_headers {
        browser_headers(&p.http)
    } else {
        Vec::new()
    };
    let poll_headers = poll_headers(&p, &headers)?;
    let rooms: Vec<String> = (0..p.rooms).map(|i| format!("cmp-{}-{label}-{i}", p.run_id)).collect();
    let (stop, _) = watch::channel(false);
    let run = Run {
        headers,
        poll_headers,
        room_subscribers: (0..p.rooms).map(|_| AtomicU64::new(0)).collect(),
        rooms,
        subscribed: AtomicU64::new(0),
        publishing: AtomicBool::new(false),
        c: Counters::default(),
        hist: Mutex::new(crate::latency_histogram()),
        second: Mutex::new(crate::latency_histogram()),
        stop,
        p,
    };
    if RUN.set(run).is_err() {
        bail!("one mode per process");
    }
    let run = self::run();

    let scenario = scenario(run.p.kind);
    let attack = GooseAttack::initialize_with_config(goose)?.register_scenario(scenario);

    let sampler = tokio::spawn(sample(users as u64));
    let attack = tokio::spawn(async move { attack.execute().await });
    let (mut result, series) = sampler.await?;
    let thresholds_failed = match attack.await? {
        Ok(_) => Vec::new(),
        Err(GooseError::ThresholdsFailed { failed, .. }) => failed.iter().map(|f| format!("{f:?}")).collect(),
        Err(e) => bail!("goose: {e}"),
    };
    result.series = series;
    result.thresholds_failed = thresholds_failed;
    result.goose_report = goose_report;
    result.mode = label;
    Ok(result)
}
