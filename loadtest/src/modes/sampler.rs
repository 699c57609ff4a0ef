//! What runs beside goose in a `compare` mode: the fixed-rate publisher's clock, the
//! per-second sampler of the gateway's CPU, memory and counters, and the final figures.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::modes::{run, Kind, ModeResult, Percentiles, Run, Sample};
use crate::proc;

/// Gateway CPU and RSS, kernel TCP memory and delivery counts, one [`Sample`] per call.
pub(crate) struct Sampler {
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
    /// When the next once-a-second sample is due.
    next: tokio::time::Instant,
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
pub(crate) async fn sample(users: u64) -> (ModeResult, Vec<Sample>) {
    let run = run();
    let p = &run.p;
    let tcp_before = proc::tcp_stat().map_or(0, |t| t.mem_kib);
    let mut sm = Sampler::new(p.gateway_pids.clone(), tcp_before);
    let rss_before = sm.rss_peak;
    sm.wait_subscribed(run, users).await;
    let nats = match async_nats::connect(&p.nats_url).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("\nNATS: {e}");
            run.stop.send_replace(true);
            goose::trigger_killswitch("NATS unavailable");
            return (ModeResult::default(), sm.series);
        }
    };
    let window = Window::open(&mut sm, run);
    let (published, publish_s) = sm.publish(run, users, &nats).await;
    let expected: u64 = published
        .iter()
        .zip(&run.room_subscribers)
        .map(|(n, s)| n * s.load(Relaxed))
        .sum();
    let sent: u64 = published.iter().sum();
    sm.drain(run, users, window.delivered, (expected, sent)).await;
    let end = window.close(&mut sm, run);
    sm.take(run);
    progress(run, users, sent, sent);
    eprintln!();
    run.stop.send_replace(true);
    goose::trigger_killswitch("publishing done and delivery complete");

    let (latency_ms, cdf) = latency(&run.hist.lock().expect("histogram"));
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
        window_s: end.window_s,
        published: sent,
        expected,
        delivered: run.c.delivered.load(Relaxed) - window.delivered,
        gaps: run.c.gaps.load(Relaxed),
        duplicates: run.c.duplicates.load(Relaxed),
        errors: run.c.errors.load(Relaxed),
        latency_ms,
        cdf,
        http_requests: run.c.requests.load(Relaxed),
        empty_responses: run.c.empty.load(Relaxed),
        bytes: run.c.wire(),
        connect_bytes: run.c.connect_bytes.load(Relaxed),
        gateway_bytes_sent: end.bytes_sent,
        gateway_cpu_s: end.cpu_s,
        nats_cpu_s: end.nats_cpu_s,
        gateway_cpu_pct_mean: percent(end.cpu_s, end.window_s),
        gateway_cpu_pct_max: sm.cpu_max,
        gateway_rss_before_kib: rss_before,
        gateway_rss_peak_kib: sm.rss_peak,
        kernel_tcp_kib_before: tcp_before,
        kernel_tcp_kib_peak: sm.tcp_peak,
        connections_gauge: window.connections,
        harness_cpu_pct: percent(end.harness_cpu_s, end.window_s),
        ..ModeResult::default()
    };
    (result, sm.series)
}

/// `part` seconds of `whole` in per cent (0 for an empty window).
fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole * 100.0
    } else {
        0.0
    }
}

/// The counters at the start of the publish window.
struct Window {
    t0: Instant,
    delivered: u64,
    gateway_cpu_s: f64,
    nats_cpu_s: f64,
    harness_cpu_s: f64,
    bytes_sent: f64,
    connections: f64,
}

/// What the window measured.
struct WindowEnd {
    window_s: f64,
    cpu_s: f64,
    nats_cpu_s: f64,
    harness_cpu_s: f64,
    bytes_sent: f64,
}

impl Window {
    /// Zeroes the per-window byte and request counters and starts counting.
    fn open(sm: &mut Sampler, run: &Run) -> Self {
        let admins = &run.p.gateway_admin;
        let (bytes_sent, connections) = (
            scrape(admins, "herald_gateway_bytes_sent_total"),
            scrape(admins, "herald_gateway_connections"),
        );
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
        let window = Self {
            delivered: run.c.delivered.load(Relaxed),
            gateway_cpu_s: sm.cpu(),
            nats_cpu_s: nats_cpu(run),
            harness_cpu_s: proc::cpu_seconds(std::process::id()).unwrap_or(0.0),
            t0: Instant::now(),
            bytes_sent,
            connections,
        };
        sm.publish_at = Some(window.t0);
        sm.last_delivered = window.delivered;
        sm.last_requests = 0;
        window
    }

    fn close(&self, sm: &mut Sampler, run: &Run) -> WindowEnd {
        let window_s = self.t0.elapsed().as_secs_f64();
        run.publishing.store(false, Relaxed);
        WindowEnd {
            window_s,
            cpu_s: sm.cpu() - self.gateway_cpu_s,
            nats_cpu_s: nats_cpu(run) - self.nats_cpu_s,
            harness_cpu_s: proc::cpu_seconds(std::process::id()).unwrap_or(0.0) - self.harness_cpu_s,
            bytes_sent: scrape(&run.p.gateway_admin, "herald_gateway_bytes_sent_total") - self.bytes_sent,
        }
    }
}

/// nats-server's CPU seconds so far (0 when its PID is not known).
fn nats_cpu(run: &Run) -> f64 {
    run.p.nats_pid.and_then(|p| proc::cpu_seconds(p).ok()).unwrap_or(0.0)
}

impl Sampler {
    fn new(pids: Vec<u32>, tcp_before: u64) -> Self {
        let mut sm = Sampler {
            pids,
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
            next: tokio::time::Instant::now() + Duration::from_secs(1),
        };
        sm.last_cpu = sm.cpu();
        sm.rss_peak = sm.rss();
        sm
    }

    /// Samples once a second until every client has subscribed (or the connect phase timed
    /// out); the samples' times then count from the end of this phase (negative).
    async fn wait_subscribed(&mut self, run: &Run, users: u64) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(120) + Duration::from_millis(users * 10);
        while run.subscribed.load(Relaxed) < users && Instant::now() < deadline {
            tick.tick().await;
            self.take(run);
            eprint!(
                "\r{}: {}/{} clients subscribed          ",
                run.p.kind.label(),
                run.subscribed.load(Relaxed),
                users
            );
        }
        let connect_s = self.started.elapsed().as_secs_f64();
        for s in &mut self.series {
            s.t -= connect_s;
        }
    }

    /// Publishes `--rate` for `--publish` on the scheduled clock, round-robin over the rooms,
    /// sampling every second; the events published per room and the seconds it took.
    async fn publish(&mut self, run: &Run, users: u64, nats: &async_nats::Client) -> (Vec<u64>, f64) {
        let p = &run.p;
        let t0 = Instant::now();
        let total = (p.rate * p.publish.as_secs_f64()).round() as u64;
        let mut published = vec![0u64; run.rooms.len()];
        let pad = "x".repeat(p.payload_bytes);
        let interval = Duration::from_secs_f64(1.0 / p.rate);
        let start = tokio::time::Instant::now();
        self.next = start + Duration::from_secs(1);
        for k in 0..total {
            let scheduled = start + interval.mul_f64(k as f64);
            while self.next <= scheduled {
                tokio::time::sleep_until(self.next).await;
                self.take(run);
                progress(run, users, k, total);
                self.next += Duration::from_secs(1);
            }
            tokio::time::sleep_until(scheduled).await;
            let stamp = crate::scheduled_stamp(scheduled);
            let room = (k as usize) % run.rooms.len();
            let body = format!(r#"{{"t0":{stamp},"n":{k},"pad":"{pad}"}}"#);
            if nats
                .publish(p.subjects.room(&run.rooms[room]), body.into())
                .await
                .is_ok()
            {
                published[room] += 1;
            }
        }
        let _ = nats.flush().await;
        (published, t0.elapsed().as_secs_f64())
    }

    /// Waits until `expected` deliveries after `delivered_at_start` arrived (pollers need up
    /// to T), at most `--drain`, sampling every second.
    async fn drain(&mut self, run: &Run, users: u64, delivered_at_start: u64, (expected, sent): (u64, u64)) {
        let until = tokio::time::Instant::now() + run.p.drain;
        loop {
            let got = run.c.delivered.load(Relaxed) - delivered_at_start;
            if got >= expected || tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if tokio::time::Instant::now() >= self.next {
                self.take(run);
                progress(run, users, sent, sent);
                self.next += Duration::from_secs(1);
            }
        }
    }
}

/// Percentiles and a CDF of 200 even steps plus the tail, so the chart is smooth at both ends.
fn latency(h: &hdrhistogram::Histogram<u64>) -> (Percentiles, Vec<(f64, f64)>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let cdf = if h.is_empty() {
        Vec::new()
    } else {
        std::iter::once((h.min() as f64 / 1000.0, 0.0))
            .chain((1..200).map(|k| (ms(k as f64 / 200.0), k as f64 / 200.0)))
            .chain([0.999, 0.9999].map(|q| (ms(q), q)))
            .chain(std::iter::once((h.max() as f64 / 1000.0, 1.0)))
            .collect()
    };
    let percentiles = Percentiles {
        mean: h.mean() / 1000.0,
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
    };
    (percentiles, cdf)
}

pub(crate) fn progress(run: &Run, users: u64, k: u64, total: u64) {
    eprint!(
        "\r{}: {} clients, published {k}/{total}, delivered {}, errors {}          ",
        run.p.kind.label(),
        users,
        run.c.delivered.load(Relaxed),
        run.c.errors.load(Relaxed)
    );
}

pub(crate) fn scrape(admins: &[String], name: &str) -> f64 {
    admins
        .iter()
        .filter_map(|a| crate::stack::get(&format!("{a}/metrics")).ok())
        .map(|(_, body)| crate::stack::metric_sum(&body, name))
        .sum()
}
