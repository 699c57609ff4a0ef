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
            .publish(p.subjects.room(&run.rooms[room]), body.into())
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
