//! `loadtest presence`: a big room with constant churn, and what presence costs.
//!
//! `members` connections sit in one room with `presence: true` (so every one of them
//! receives the diffs, as in a chat room that shows who is online). Then, for `run-time`,
//! membership changes at `churn` per second in alternating one-second phases: new members
//! join, then as many of the oldest leave (an explicit `unsubscribe`, so fanout's leave
//! delay does not count). Within a phase the count only rises or only falls, so the diff
//! that announces the k-th change is the first whose `count` reaches the count after it:
//! lag is measured per change, in list mode and in counts-only (large room) mode alike.
//! `observers` more connections record every presence frame; fanout's and the gateways'
//! CPU come from `/proc/<pid>/stat`.
//!
//! Gateways must allow anonymous users (every connection is then its own user), as the
//! `cargo xtask up` stack does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use herald_proto::frame::{ClientOp, ServerFrame};
use herald_proto::Codec;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{client, proc, Common};

#[derive(Debug, Args)]
pub struct PresenceArgs {
    #[command(flatten)]
    common: Common,
    /// Members held in the room.
    #[arg(long, default_value_t = 5000)]
    members: usize,
    /// Membership changes per second (half joins, half leaves).
    #[arg(long, default_value_t = 200.0)]
    churn: f64,
    /// Connections that only watch and measure.
    #[arg(long, default_value_t = 5)]
    observers: usize,
    /// Measuring time (after everyone has joined).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    run_time: Duration,
    /// PID of the fanout instance that leads (CPU from /proc).
    #[arg(long)]
    fanout_pid: Option<u32>,
    /// PIDs of the gateways (CPU from /proc).
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    /// PID of nats-server (CPU from /proc), measured with fanout and the gateways.
    #[arg(long)]
    nats_pid: Option<u32>,
    /// Where report.md, report.json and report.html go.
    #[arg(long, default_value = "target/loadtest/presence")]
    report_dir: std::path::PathBuf,
}

/// One membership change: when it was sent, and the member count right after it.
struct Change {
    at: Instant,
    count: u64,
    join: bool,
}

struct Member {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<()>>,
}

#[derive(Default)]
struct Seen {
    frames: u64,
    bytes: u64,
    counts_only: u64,
    /// Every diff's arrival and count.
    counts: Vec<(Instant, u64)>,
}

pub async fn run(a: PresenceArgs) -> Result<()> {
    let room = format!("presence-{}", crate::now_ns() / 1_000_000);
    let mut members = join_all(&a, &room).await?;
    let mut observers = Vec::new();
    for i in 0..a.observers {
        let mut c = client::Conn::open(
            &a.common.gateway[i % a.common.gateway.len()],
            a.common.sources[0],
            a.common.token.as_deref(),
        )
        .await?;
        c.subscribe_with(&room, true).await?;
        let until = Instant::now() + a.run_time + Duration::from_secs(5);
        observers.push(tokio::spawn(observe(c, until)));
    }
    // Let the joins above settle into the count before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fanout_pid: Vec<u32> = a.fanout_pid.into_iter().collect();
    let nats_pid: Vec<u32> = a.nats_pid.into_iter().collect();
    let cpu_before = (cpu(&fanout_pid), cpu(&a.gateway_pid), cpu(&nats_pid));
    let (changes, elapsed) = churn(&a, &room, &mut members).await?;
    let cpu_after = (cpu(&fanout_pid), cpu(&a.gateway_pid), cpu(&nats_pid));
    let mut seen = Seen::default();
    let mut lags = crate::latency_histogram();
    let mut missing = 0u64;
    for o in observers {
        let s = o.await?;
        missing += lag(&changes, &s, &mut lags)?;
        seen.frames += s.frames;
        seen.bytes += s.bytes;
        seen.counts_only += s.counts_only;
    }
    let secs = elapsed.as_secs_f64();
    let mut lines = summary(&a, &changes, &seen, &lags, missing, secs);
    let mut cpu_json = Vec::new();
    for (name, before, after, pids) in [
        ("fanout", &cpu_before.0, &cpu_after.0, &fanout_pid),
        ("gateway", &cpu_before.1, &cpu_after.1, &a.gateway_pid),
        ("nats-server", &cpu_before.2, &cpu_after.2, &nats_pid),
    ] {
        for (i, pid) in pids.iter().enumerate() {
            let used = after[i] - before[i];
            lines.push((
                format!("{name} pid {pid}"),
                format!("{used:.2} CPU-s ({:.1} % of a core)", 100.0 * used / secs),
            ));
            cpu_json.push(serde_json::json!({"process": name, "pid": pid, "cpu_s": used}));
        }
    }
    for (k, v) in &lines {
        println!("{k}: {v}");
    }
    let ms = |q: f64| lags.value_at_quantile(q) as f64 / 1000.0;
    let json = serde_json::json!({
        "changes": changes.len(), "seconds": secs, "members": a.members,
        "frames": seen.frames, "bytes": seen.bytes, "counts_only": seen.counts_only,
        "lag_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": lags.max() as f64 / 1000.0,
                   "samples": lags.len(), "netted_out": missing},
        "cpu": cpu_json,
    });
    report(&a, &lines, json).write(&a.report_dir)?;
    eprintln!("report: {}", a.report_dir.join("report.html").display());
    for m in members {
        let _ = m.stop.send(());
    }
    Ok(())
}

/// CPU seconds of each process so far.
fn cpu(pids: &[u32]) -> Vec<f64> {
    pids.iter().map(|&p| proc::cpu_seconds(p).unwrap_or(0.0)).collect()
}

/// Joins `--members` members, `--concurrency` at a time.
async fn join_all(a: &PresenceArgs, room: &str) -> Result<VecDeque<Member>> {
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.common.concurrency));
    let mut opening = Vec::with_capacity(a.members);
    for i in 0..a.members {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let (common, room) = (a.common.clone(), room.to_owned());
        opening.push(tokio::spawn(async move {
            let _permit = permit;
            member(&common, i, &room).await
        }));
    }
    let mut members = VecDeque::with_capacity(a.members);
    for m in opening {
        members.push_back(m.await??);
    }
    println!(
        "{} members joined {room} in {:.1}s",
        members.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(members)
}

/// `--churn` changes a second for `--run-time`: joins and leaves (of the oldest member) in
/// alternating one-second phases. Every change, and how long it all took.
async fn churn(a: &PresenceArgs, room: &str, members: &mut VecDeque<Member>) -> Result<(Vec<Change>, Duration)> {
    let mut next = a.members;
    let mut count = (a.members + a.observers) as u64;
    let period = Duration::from_secs_f64(1.0 / a.churn);
    let per_phase = a.churn.round().max(1.0) as u64;
    let start = tokio::time::Instant::now();
    let mut changes: Vec<Change> = Vec::new();
    let mut n = 0u64;
    while start.elapsed() < a.run_time {
        tokio::time::sleep_until(start + period.mul_f64(n as f64)).await;
        let join = (n / per_phase).is_multiple_of(2);
        n += 1;
        if join {
            let at = Instant::now();
            members.push_back(member(&a.common, next, room).await?);
            next += 1;
            count += 1;
            changes.push(Change { at, count, join });
        } else if let Some(old) = members.pop_front() {
            let at = Instant::now();
            let _ = old.stop.send(());
            let _ = old.task.await;
            count -= 1;
            changes.push(Change { at, count, join });
        }
    }
    Ok((changes, start.elapsed()))
}

/// Records in `lags` how long each change took to reach one observer; returns the changes it
/// never saw announced.
///
/// A change is announced by a frame before the phase after the next one starts; past that,
/// the count has been back where it was. Changes in the last window before a phase switch can
/// be netted out by the opposite ones (one diff per interval carries only the net count):
/// those are counted apart, not as lag.
fn lag(changes: &[Change], seen: &Seen, lags: &mut hdrhistogram::Histogram<u64>) -> Result<u64> {
    let phase_starts: Vec<Instant> = changes
        .iter()
        .enumerate()
        .filter(|(i, c)| *i == 0 || changes[i - 1].join != c.join)
        .map(|(_, c)| c.at)
        .collect();
    let limit = |at: Instant| {
        let phase = phase_starts.partition_point(|s| *s <= at);
        phase_starts.get(phase + 1).copied()
    };
    let mut missing = 0;
    for c in changes {
        let until = limit(c.at);
        let announced = seen
            .counts
            .iter()
            .take_while(|(t, _)| until.is_none_or(|u| *t < u))
            .find(|(t, n)| *t >= c.at && if c.join { *n >= c.count } else { *n <= c.count });
        match announced {
            Some((t, _)) => lags.record(t.duration_since(c.at).as_micros().max(1) as u64)?,
            None => missing += 1,
        }
    }
    Ok(missing)
}

fn summary(
    a: &PresenceArgs,
    changes: &[Change],
    seen: &Seen,
    lags: &hdrhistogram::Histogram<u64>,
    missing: u64,
    secs: f64,
) -> Vec<(String, String)> {
    let ms = |q: f64| lags.value_at_quantile(q) as f64 / 1000.0;
    vec![
        (
            "changes".to_owned(),
            format!(
                "{} in {secs:.1}s ({:.0}/s, joins and leaves in alternating 1 s phases) on {} members",
                changes.len(),
                changes.len() as f64 / secs,
                a.members
            ),
        ),
        (
            "presence frames per subscriber".into(),
            format!(
                "{:.1}/s, {:.0} bytes/frame, {} of {} counts-only",
                seen.frames as f64 / a.observers.max(1) as f64 / secs,
                seen.bytes as f64 / seen.frames.max(1) as f64,
                seen.counts_only,
                seen.frames
            ),
        ),
        (
            "diff lag ms".into(),
            format!(
                "{} samples ({missing} netted out at phase switches): p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
                lags.len(),
                ms(0.5),
                ms(0.9),
                ms(0.99),
                lags.max() as f64 / 1000.0
            ),
        ),
    ]
}

fn report(a: &PresenceArgs, lines: &[(String, String)], json: serde_json::Value) -> crate::report::Report {
    let mut header = crate::report::machine_header();
    header.extend([
        ("members".to_owned(), a.members.to_string()),
        ("churn".into(), format!("{}/s", a.churn)),
        ("observers".into(), a.observers.to_string()),
    ]);
    crate::report::Report {
        title: "Herald: presence under churn".into(),
        header,
        sections: vec![crate::report::Section::key_values("Summary", lines)],
        json,
    }
}

/// Connects member `i`, joins the room with presence, and keeps reading until stopped; then
/// unsubscribes and closes.
async fn member(common: &Common, i: usize, room: &str) -> Result<Member> {
    let url = &common.gateway[i % common.gateway.len()];
    let source = common.sources[(i / common.gateway.len()) % common.sources.len()];
    let mut c = client::Conn::open(url, source, common.token.as_deref())
        .await
        .context("member connect")?;
    c.subscribe_with(room, true).await?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    let room = room.to_owned();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                r = c.next_data() => { r?; }
            }
        }
        c.send_op(ClientOp::Unsubscribe { room }).await?;
        // Until the ack: the unsubscribe is then applied, and the close can't overtake it.
        while !matches!(c.next_frame().await?, ServerFrame::Ack(_)) {}
        Ok(())
    });
    Ok(Member { stop, task })
}

async fn observe(mut c: client::Conn, until: Instant) -> Seen {
    let mut seen = Seen::default();
    while let Ok(Ok(data)) = tokio::time::timeout(until.saturating_duration_since(Instant::now()), c.next_data()).await
    {
        let now = Instant::now();
        let Ok(ServerFrame::Presence(frame)) = Codec::Json.decode_server(&data) else {
            continue;
        };
        seen.frames += 1;
        seen.bytes += data.len() as u64;
        if frame.joined.is_empty() && frame.left.is_empty() {
            seen.counts_only += 1;
        }
        seen.counts.push((now, frame.count));
    }
    seen
}
