//! One mode of `loadtest compare`, run on goose in its own process: N clients (goose users)
//! on R rooms over one transport, an open-loop fixed-rate publisher through NATS beside goose,
//! and a sampler of the gateway's CPU, RSS and `/metrics`. Writes a [`ModeResult`].
//!
//! WebSocket and SSE clients read in a task of their own and hand each delivery to the user's
//! goose transaction, which records it as a custom request row (`WS deliver`, `SSE deliver`);
//! long-poll and ajax polling are goose's own HTTP requests (`GET poll-wait`, `GET poll`) and
//! record their deliveries as `LP deliver` / `POLL deliver`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use goose::config::GooseConfiguration;
use goose::prelude::*;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::client::{Chain, Event, Order};
use crate::proc;

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
    pub rooms: usize,
    pub rate: f64,
    pub publish: Duration,
    pub payload_bytes: usize,
    pub long_poll_wait: Duration,
    pub drain: Duration,
    pub token: Option<String>,
    pub browser_headers: bool,
    pub gateway_pids: Vec<u32>,
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

struct Run {
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

fn run() -> &'static Run {
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

/// The request headers of a `/poll` as they go on the wire: ours, and those goose's reqwest
/// client adds by itself (which browser-like headers replace).
fn poll_headers(p: &Params, extra: &[(String, String)]) -> Result<http::HeaderMap> {
    let mut h = http::HeaderMap::new();
    h.insert("host", p.http.trim_start_matches("http://").parse()?);
    if let Some(t) = &p.token {
        h.insert("authorization", format!("Bearer {t}").parse()?);
    }
    if extra.is_empty() {
        h.insert("user-agent", "goose/0.19.0".parse()?);
        h.insert("accept", "*/*".parse()?);
    }
    h.insert("accept-encoding", "gzip".parse()?);
    for (k, v) in extra {
        h.insert(http::HeaderName::try_from(k.as_str())?, v.parse()?);
    }
    Ok(h)
}

/// Counts a delivery on a client's chain (rooms are fresh, so chains start at 0) and records
/// its latency; `None` for a duplicate.
fn deliver(run: &Run, chain: &mut Chain, ev: &Event) -> Option<Duration> {
    match chain.check(ev.seq, ev.prev) {
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
    let t0 = ev.data.as_ref()?.t0;
    let lat_us = (crate::now_ns().saturating_sub(t0) / 1000).max(1);
    let _ = run.hist.lock().expect("histogram").record(lat_us);
    let _ = run.second.lock().expect("histogram").record(lat_us);
    Some(Duration::from_micros(lat_us))
}

/// The session id of client `index` (herald.js sends a random one; rate limits and polling
/// sessions count per sid).
fn sid(index: usize) -> String {
    format!("loadtest-{index:08}")
}

fn room_index(user: &GooseUser) -> usize {
    user.weighted_users_index % run().rooms.len()
}

fn fail(msg: impl std::fmt::Display) -> Box<TransactionError> {
    run().c.errors.fetch_add(1, Relaxed);
    Box::new(TransactionError::Custom(msg.to_string()))
}

fn subscribed(room: usize) {
    let run = run();
    run.room_subscribers[room].fetch_add(1, Relaxed);
    run.subscribed.fetch_add(1, Relaxed);
}

/// Deliveries (latency) from a reader task to its goose user; `Err` when the stream ended.
type Deliveries = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<std::result::Result<Duration, String>>>>;

/// Records what the reader task delivered, waiting up to 500 ms (so goose can stop the user).
async fn record_deliveries(user: &mut GooseUser, rx: &Deliveries, method: &str) -> TransactionResult {
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

async fn ws_connect(user: &mut GooseUser) -> TransactionResult {
    let run = run();
    let room = room_index(user);
    let started = Instant::now();
    let opened = async {
        let (mut conn, sent, got) =
            crate::client::Conn::open_with(&run.p.ws, run.p.source, run.p.token.as_deref(), &run.headers).await?;
        conn.subscribe(&run.rooms[room]).await?;
        Ok::<_, anyhow::Error>((conn, sent + got))
    }
    .await;
    let (conn, bytes) = match opened {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("{e:#}");
            user.record_custom_request_duration("WS", "connect", started.elapsed(), false, None, Some(&msg))
                .await?;
            return Err(fail(msg));
        }
    };
    user.record_custom_request_duration("WS", "connect", started.elapsed(), true, Some(101), None)
        .await?;
    run.c.connect_bytes.fetch_add(bytes, Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(ws_reader(conn, tx));
    user.set_session_data::<Deliveries>(Arc::new(tokio::sync::Mutex::new(rx)));
    subscribed(room);
    Ok(())
}

/// RFC 6455 header bytes of a server→client frame with `len` payload bytes.
fn ws_header(len: usize) -> u64 {
    match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

async fn ws_reader(mut conn: crate::client::Conn, tx: mpsc::UnboundedSender<std::result::Result<Duration, String>>) {
    let run = run();
    let mut chain = Chain(Some(0));
    loop {
        match conn.next_text().await {
            Ok(text) => {
                run.c.down_payload.fetch_add(text.len() as u64, Relaxed);
                run.c.framing.fetch_add(ws_header(text.len()), Relaxed);
                let Ok(ev) = serde_json::from_str::<Event>(&text) else {
                    continue;
                };
                if ev.t.as_deref() != Some("event") {
                    continue;
                }
                if let Some(lat) = deliver(run, &mut chain, &ev) {
                    let _ = tx.send(Ok(lat));
                }
            }
            Err(e) => {
                if !*run.stop.borrow() {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
                return;
            }
        }
    }
}

async fn ws_receive(user: &mut GooseUser) -> TransactionResult {
    let rx = user.get_session_data_unchecked::<Deliveries>().clone();
    record_deliveries(user, &rx, "WS").await
}

async fn sse_connect(user: &mut GooseUser) -> TransactionResult {
    let room = room_index(user);
    let started = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(sse_reader(room, user.weighted_users_index, tx, ready_tx));
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            user.record_custom_request_duration("SSE", "connect", started.elapsed(), false, None, Some(&e))
                .await?;
            return Err(fail(e));
        }
        Err(_) => return Err(fail("SSE reader ended")),
    }
    user.record_custom_request_duration("SSE", "connect", started.elapsed(), true, Some(200), None)
        .await?;
    user.set_session_data::<Deliveries>(Arc::new(tokio::sync::Mutex::new(rx)));
    subscribed(room);
    Ok(())
}

async fn sse_reader(
    room: usize,
    index: usize,
    tx: mpsc::UnboundedSender<std::result::Result<Duration, String>>,
    ready: tokio::sync::oneshot::Sender<std::result::Result<(), String>>,
) {
    let run = run();
    let opened = async {
        let rest = run.p.http.strip_prefix("http://").context("http:// URL")?;
        let addr = tokio::net::lookup_host(rest).await?.next().context("gateway address")?;
        let tcp = crate::connect_from(run.p.source, addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        // A session id per client, as herald.js sends: rate limits count per client.
        let path = format!("/sse?rooms={}&sid={}", run.rooms[room], sid(index));
        let mut req = hyper::Request::get(&path)
            .header("host", rest)
            .header("accept", "text/event-stream");
        if let Some(t) = &run.p.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in &run.headers {
            if k != "accept" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let sent = crate::head_bytes(&format!("GET {path} HTTP/1.1"), req.headers());
        let resp = sender.send_request(req).await?;
        if resp.status() != 200 {
            bail!("SSE answered {}", resp.status());
        }
        let got = crate::head_bytes("HTTP/1.1 200 OK", resp.headers());
        run.c.connect_bytes.fetch_add(sent + got, Relaxed);
        Ok((sender, resp.into_body()))
    }
    .await;
    let (_sender, mut body) = match opened {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    let mut ready = Some(ready);
    let mut buf: Vec<u8> = Vec::new();
    let mut chain = Chain(Some(0));
    loop {
        let chunk = match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Some(Err(e)) => {
                if !*run.stop.borrow() {
                    let _ = tx.send(Err(format!("SSE stream: {e}")));
                }
                return;
            }
            None => {
                if !*run.stop.borrow() {
                    let _ = tx.send(Err("SSE stream ended".into()));
                }
                return;
            }
        };
        // Chunked transfer framing: "<hex>\r\n" + data + "\r\n".
        run.c
            .framing
            .fetch_add(format!("{:x}", chunk.len()).len() as u64 + 4, Relaxed);
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            if text.starts_with(':') {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                continue;
            }
            let mut data = None;
            let mut overhead = 0;
            for line in text.lines() {
                match line.strip_prefix("data: ") {
                    Some(d) => {
                        data = Some(d.to_owned());
                        overhead += "data: \n".len();
                    }
                    None => overhead += line.len() + 1,
                }
            }
            overhead += 1;
            let Some(data) = data else { continue };
            run.c.down_payload.fetch_add(data.len() as u64, Relaxed);
            run.c.framing.fetch_add(overhead as u64, Relaxed);
            if let Ok(ev) = serde_json::from_str::<Event>(&data) {
                if let Some(lat) = deliver(run, &mut chain, &ev) {
                    let _ = tx.send(Ok(lat));
                }
            }
        }
    }
}

async fn sse_receive(user: &mut GooseUser) -> TransactionResult {
    let rx = user.get_session_data_unchecked::<Deliveries>().clone();
    record_deliveries(user, &rx, "SSE").await
}

/// A polling client's position.
#[derive(Clone)]
struct PollSession {
    cursor: String,
    chain: Chain,
    next_due: tokio::time::Instant,
}

#[derive(Deserialize)]
struct PollAnswer {
    events: Vec<Event>,
    cursor: String,
}

/// One `/poll` exchange; returns the deliveries' latencies, or `None` when the run stopped.
async fn poll_once(
    user: &mut GooseUser,
    wait: Duration,
) -> std::result::Result<Option<Vec<Duration>>, Box<TransactionError>> {
    let run = run();
    let room = room_index(user);
    let long = wait > Duration::ZERO;
    let cursor = user
        .get_session_data::<PollSession>()
        .map(|s| s.cursor.clone())
        .unwrap_or_default();
    let mut path = format!(
        "/poll?rooms={}&wait={}&sid={}",
        run.rooms[room],
        wait.as_secs_f64(),
        sid(user.weighted_users_index)
    );
    if !cursor.is_empty() {
        path.push_str("&cursor=");
        path.push_str(&cursor);
    }
    let mut rb = user.get_request_builder(&GooseMethod::Get, &path)?;
    if let Some(t) = &run.p.token {
        rb = rb.bearer_auth(t);
    }
    for (k, v) in &run.headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let req = GooseRequest::builder()
        .method(GooseMethod::Get)
        .path(path.as_str())
        .name(if long { "poll-wait" } else { "poll" })
        .set_request_builder(rb)
        .expect_status_code(200)
        .build();
    let mut stop = run.stop.subscribe();
    let resp = tokio::select! {
        r = user.request(req) => r?,
        _ = stop.wait_for(|s| *s) => return Ok(None),
    };
    let counting = run.publishing.load(Relaxed);
    let response = resp.response.map_err(fail)?;
    let status = response.status();
    let head = crate::head_bytes(&format!("HTTP/1.1 {status}"), response.headers());
    let body = response.bytes().await.map_err(fail)?;
    if status != 200 {
        return Err(fail(format!(
            "/poll answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let answer: PollAnswer = serde_json::from_slice(&body).map_err(fail)?;
    if counting {
        run.c.requests.fetch_add(1, Relaxed);
        run.c.up_headers.fetch_add(
            crate::head_bytes(&format!("GET {path} HTTP/1.1"), &run.poll_headers),
            Relaxed,
        );
        run.c.down_headers.fetch_add(head, Relaxed);
        run.c.down_payload.fetch_add(body.len() as u64, Relaxed);
        if answer.events.is_empty() {
            run.c.empty.fetch_add(1, Relaxed);
        }
    }
    let first = cursor.is_empty();
    let session = match user.get_session_data_mut::<PollSession>() {
        Some(s) => s,
        None => {
            user.set_session_data(PollSession {
                cursor: String::new(),
                chain: Chain(Some(0)),
                next_due: tokio::time::Instant::now(),
            });
            user.get_session_data_unchecked_mut::<PollSession>()
        }
    };
    session.cursor = answer.cursor;
    let mut lats = Vec::new();
    for ev in &answer.events {
        if let Some(lat) = deliver(run, &mut session.chain, ev) {
            lats.push(lat);
        }
    }
    if first {
        subscribed(room);
    }
    Ok(Some(lats))
}

async fn poll_start(user: &mut GooseUser) -> TransactionResult {
    // The first poll takes the live tail of the room as the cursor.
    if poll_once(user, Duration::ZERO).await?.is_none() {
        return Ok(());
    }
    if let Kind::Poll(t) = run().p.kind {
        // A random phase, so polls spread over the interval as independent browsers do.
        let phase = t.mul_f64(rand::random::<f64>());
        user.get_session_data_unchecked_mut::<PollSession>().next_due = tokio::time::Instant::now() + phase;
    }
    Ok(())
}

async fn record_all(user: &mut GooseUser, method: &str, lats: Vec<Duration>) -> TransactionResult {
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

async fn long_poll(user: &mut GooseUser) -> TransactionResult {
    if *run().stop.borrow() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        return Ok(());
    }
    let wait = run().p.long_poll_wait;
    match poll_once(user, wait).await {
        Ok(Some(lats)) => record_all(user, "LP", lats).await,
        Ok(None) => Ok(()),
        Err(e) => {
            // Back off a little after an error, as a client library would.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(e)
        }
    }
}

async fn ajax_poll(user: &mut GooseUser) -> TransactionResult {
    let Kind::Poll(t) = run().p.kind else { return Ok(()) };
    let due = user.get_session_data_unchecked::<PollSession>().next_due;
    // Fixed rate (setInterval): the next poll is due T after the previous one was due.
    // Sleep in slices of at most 500 ms so goose can stop the user.
    let now = tokio::time::Instant::now();
    if due > now {
        tokio::time::sleep_until(due.min(now + Duration::from_millis(500))).await;
        return Ok(());
    }
    user.get_session_data_unchecked_mut::<PollSession>().next_due = due + t;
    match poll_once(user, Duration::ZERO).await? {
        Some(lats) => record_all(user, "POLL", lats).await,
        None => Ok(()),
    }
}

/// Runs one mode; `goose` is the configuration from the command line.
pub async fn run_mode(p: Params, mut goose: GooseConfiguration, report_dir: &std::path::Path) -> Result<ModeResult> {
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

    let scenario = match run.p.kind {
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
    };
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

/// Gateway CPU and RSS, kernel TCP memory and delivery counts, one [`Sample`] per call.
struct Sampler {
    pids: Vec<u32>,
    started: Instant,
    publish_at: Option<Instant>,
    last_cpu: f64,
    last_t: Instant,
    last_delivered: u64,
    last_requests: u64,
    rss_peak: u64,
    tcp_peak: u64,
    cpu_max: f64,
    series: Vec<Sample>,
}

impl Sampler {
    fn cpu(&self) -> f64 {
        proc::cpu_seconds_of(&self.pids)
    }

    fn rss(&self) -> u64 {
        self.pids.iter().filter_map(|&pid| proc::rss_kib(pid).ok()).sum()
    }

    fn take(&mut self, run: &Run) {
        let now = Instant::now();
        let c = self.cpu();
        let pct = (c - self.last_cpu) / now.duration_since(self.last_t).as_secs_f64().max(1e-3) * 100.0;
        let r = self.rss();
        self.rss_peak = self.rss_peak.max(r);
        self.tcp_peak = self.tcp_peak.max(proc::tcp_stat().map_or(0, |t| t.mem_kib));
        let delivered = run.c.delivered.load(Relaxed);
        let requests = run.c.requests.load(Relaxed);
        let mut h = run.second.lock().expect("histogram");
        let t = match self.publish_at {
            Some(at) => now.duration_since(at).as_secs_f64(),
            None => now.duration_since(self.started).as_secs_f64(),
        };
        self.series.push(Sample {
            t,
            delivered: delivered.saturating_sub(self.last_delivered),
            requests: requests.saturating_sub(self.last_requests),
            p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            cpu_pct: pct,
            rss_kib: r,
        });
        h.reset();
        if self.publish_at.is_some() {
            self.cpu_max = self.cpu_max.max(pct);
        }
        (self.last_cpu, self.last_t, self.last_delivered, self.last_requests) = (c, now, delivered, requests);
    }
}

/// Waits for every client, publishes, waits for delivery, stops goose; samples once a second
/// throughout. Returns the result (without series) and the series.
async fn sample(users: u64) -> (ModeResult, Vec<Sample>) {
    let run = run();
    let p = &run.p;
    let me = std::process::id();
    let tcp_before = proc::tcp_stat().map_or(0, |t| t.mem_kib);
    let mut sm = Sampler {
        pids: p.gateway_pids.clone(),
        started: Instant::now(),
        publish_at: None,
        last_cpu: 0.0,
        last_t: Instant::now(),
        last_delivered: 0,
        last_requests: 0,
        rss_peak: 0,
        tcp_peak: tcp_before,
        cpu_max: 0.0,
        series: Vec::new(),
    };
    sm.last_cpu = sm.cpu();
    let rss_before = sm.rss();
    sm.rss_peak = rss_before;

    // Everyone subscribed (or the connect phase timed out).
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let connect_deadline = Instant::now() + Duration::from_secs(120) + Duration::from_millis(users * 10);
    while run.subscribed.load(Relaxed) < users && Instant::now() < connect_deadline {
        tick.tick().await;
        sm.take(run);
        eprint!(
            "\r{}: {}/{} clients subscribed          ",
            p.kind.label(),
            run.subscribed.load(Relaxed),
            users
        );
    }
    // Times before publishing become negative.
    let connect_s = sm.started.elapsed().as_secs_f64();
    for s in &mut sm.series {
        s.t -= connect_s;
    }

    let nats = match async_nats::connect(&p.nats_url).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("\nNATS: {e}");
            run.stop.send_replace(true);
            goose::trigger_killswitch("NATS unavailable");
            return (ModeResult::default(), sm.series);
        }
    };
    let bytes_sent_at_start: f64 = scrape(&p.gateway_admin, "herald_gateway_bytes_sent_total");
    let connections = scrape(&p.gateway_admin, "herald_gateway_connections");
    for counter in [
        &run.c.empty,
        &run.c.requests,
        &run.c.up_headers,
        &run.c.up_payload,
        &run.c.down_headers,
        &run.c.down_payload,
        &run.c.framing,
    ] {
        counter.store(0, Relaxed);
    }
    run.publishing.store(true, Relaxed);
    let delivered_at_start = run.c.delivered.load(Relaxed);
    let cpu_at_start = sm.cpu();
    let harness_cpu_start = proc::cpu_seconds(me).unwrap_or(0.0);
    let t0 = Instant::now();
    sm.publish_at = Some(t0);
    sm.last_delivered = delivered_at_start;
    sm.last_requests = 0;

    let total = (p.rate * p.publish.as_secs_f64()).round() as u64;
    let mut published = vec![0u64; run.rooms.len()];
    let pad = "x".repeat(p.payload_bytes);
    let interval = Duration::from_secs_f64(1.0 / p.rate);
    let start = tokio::time::Instant::now();
    let mut next_sample = start + Duration::from_secs(1);
    for k in 0..total {
        let scheduled = start + interval.mul_f64(k as f64);
        while next_sample <= scheduled {
            tokio::time::sleep_until(next_sample).await;
            sm.take(run);
            progress(run, users, k, total);
            next_sample += Duration::from_secs(1);
        }
        tokio::time::sleep_until(scheduled).await;
        let stamp = crate::scheduled_stamp(scheduled);
        let room = (k as usize) % run.rooms.len();
        let body = format!(r#"{{"t0":{stamp},"n":{k},"pad":"{pad}"}}"#);
        if nats
            .publish(format!("herald.room.{}", run.rooms[room]), body.into())
            .await
            .is_ok()
        {
            published[room] += 1;
        }
    }
    let _ = nats.flush().await;
    let publish_s = t0.elapsed().as_secs_f64();
    let expected: u64 = published
        .iter()
        .zip(&run.room_subscribers)
        .map(|(n, s)| n * s.load(Relaxed))
        .sum();
    // Wait for delivery to complete (pollers need up to T), at most --drain.
    let drain_until = tokio::time::Instant::now() + p.drain;
    loop {
        let got = run.c.delivered.load(Relaxed) - delivered_at_start;
        if got >= expected || tokio::time::Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if tokio::time::Instant::now() >= next_sample {
            sm.take(run);
            progress(run, users, total, total);
            next_sample += Duration::from_secs(1);
        }
    }
    let window_s = t0.elapsed().as_secs_f64();
    run.publishing.store(false, Relaxed);
    let cpu_s = sm.cpu() - cpu_at_start;
    let harness_cpu = proc::cpu_seconds(me).unwrap_or(0.0) - harness_cpu_start;
    let bytes_sent = scrape(&p.gateway_admin, "herald_gateway_bytes_sent_total") - bytes_sent_at_start;
    sm.take(run);
    progress(run, users, total, total);
    eprintln!();
    run.stop.send_replace(true);
    goose::trigger_killswitch("publishing done and delivery complete");

    let h = run.hist.lock().expect("histogram");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    // 200 even steps of the CDF plus the tail, so the chart is smooth at both ends.
    let cdf = if h.is_empty() {
        Vec::new()
    } else {
        std::iter::once((h.min() as f64 / 1000.0, 0.0))
            .chain((1..200).map(|k| (ms(k as f64 / 200.0), k as f64 / 200.0)))
            .chain([0.999, 0.9999].map(|q| (ms(q), q)))
            .chain(std::iter::once((h.max() as f64 / 1000.0, 1.0)))
            .collect()
    };
    let result = ModeResult {
        transport: match p.kind {
            Kind::Ws => "WebSocket".into(),
            Kind::Sse => "SSE".into(),
            Kind::LongPoll => "HTTP long-poll".into(),
            Kind::Poll(_) => "HTTP ajax poll".into(),
        },
        poll_interval_s: match p.kind {
            Kind::Poll(t) => Some(t.as_secs_f64()),
            _ => None,
        },
        long_poll_wait_s: (p.kind == Kind::LongPoll).then_some(p.long_poll_wait.as_secs_f64()),
        clients: users,
        subscribed: run.subscribed.load(Relaxed),
        rooms: run.rooms.len() as u64,
        room_name_len: run.rooms.first().map_or(0, |r| r.len() as u64),
        rate: p.rate,
        payload_bytes: p.payload_bytes as u64,
        publish_s,
        window_s,
        published: published.iter().sum(),
        expected,
        delivered: run.c.delivered.load(Relaxed) - delivered_at_start,
        gaps: run.c.gaps.load(Relaxed),
        duplicates: run.c.duplicates.load(Relaxed),
        errors: run.c.errors.load(Relaxed),
        latency_ms: Percentiles {
            mean: h.mean() / 1000.0,
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        },
        cdf,
        http_requests: run.c.requests.load(Relaxed),
        empty_responses: run.c.empty.load(Relaxed),
        bytes: run.c.wire(),
        connect_bytes: run.c.connect_bytes.load(Relaxed),
        gateway_bytes_sent: bytes_sent,
        gateway_cpu_s: cpu_s,
        gateway_cpu_pct_mean: if window_s > 0.0 { cpu_s / window_s * 100.0 } else { 0.0 },
        gateway_cpu_pct_max: sm.cpu_max,
        gateway_rss_before_kib: rss_before,
        gateway_rss_peak_kib: sm.rss_peak,
        kernel_tcp_kib_before: tcp_before,
        kernel_tcp_kib_peak: sm.tcp_peak,
        connections_gauge: connections,
        harness_cpu_pct: if window_s > 0.0 {
            harness_cpu / window_s * 100.0
        } else {
            0.0
        },
        ..ModeResult::default()
    };
    (result, sm.series)
}

fn progress(run: &Run, users: u64, k: u64, total: u64) {
    eprint!(
        "\r{}: {} clients, published {k}/{total}, delivered {}, errors {}          ",
        run.p.kind.label(),
        users,
        run.c.delivered.load(Relaxed),
        run.c.errors.load(Relaxed)
    );
}

fn scrape(admins: &[String], name: &str) -> f64 {
    admins
        .iter()
        .filter_map(|a| crate::stack::get(&format!("{a}/metrics")).ok())
        .map(|(_, body)| crate::stack::metric_sum(&body, name))
        .sum()
}
