//! `soak`: many WebSocket connections for a long time, with churn and hostile clients mixed
//! in, presence on. It answers "does the gateway stay flat and lose nothing under abuse?":
//! gateway RSS and file descriptors sampled throughout (their slope is the leak rate),
//! `/readyz` polled, and every well-behaved client checks its room's `seq`/`prev` chain
//! across reconnects (a gap is a lost event, a repeat a duplicate) and, at the end, that it
//! holds the room's last event.
//!
//! The coordinator starts NATS, fanout and the gateways, spreads the connections over worker
//! processes (each under the 20,000-file limit), publishes at a fixed rate, and runs the
//! hostile clients itself.

mod hostile;
mod report;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use herald_proto::frame::{ClientOp, EventView, ServerFrame};
use rand::Rng;
use serde::{Deserialize, Serialize};

use self::hostile::hostile_clients;
use self::report::{slope_per_min, write_report, Report};
use crate::client::{Chain, Conn, Order};
use crate::{proc, stack};

/// Connections one worker holds at most (the file limit is 20,000).
const PER_PROCESS: usize = 15_000;

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Well-behaved connections held throughout (each in one room, with presence).
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Gateways to start (connections are spread over them).
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// Rooms the connections share, round-robin.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Events per second published in all (round-robin over the rooms).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Reconnects per second across all connections (each resumes with `since`).
    #[arg(long, default_value_t = 20.0)]
    churn: f64,
    /// Hostile client actions per second (malformed frames, control characters, vanishing
    /// clients, bad cursors, slow bodies, oversized frames, ...).
    #[arg(long, default_value_t = 10.0)]
    hostile: f64,
    /// How long to soak once every connection is up.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Sampling interval of RSS, file descriptors and `/readyz`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Source addresses for the connections.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Subscribe without presence (to tell the presence path's cost from the rest).
    #[arg(long)]
    no_presence: bool,
    /// Where report.md and report.json go.
    #[arg(long, default_value = "target/loadtest/soak")]
    report_dir: PathBuf,
    /// Run as one worker (internal): its gateways, first connection index and count.
    #[arg(long, hide = true)]
    worker: bool,
    #[arg(long, hide = true, value_delimiter = ',')]
    urls: Vec<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
}

/// A worker's lines on stdout.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Connected {
    connected: u64,
    failed: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerDone {
    delivered: u64,
    gaps: u64,
    duplicates: u64,
    reconnects: u64,
    reconnect_failures: u64,
    /// Connections without the room's last event at the end.
    behind: u64,
    /// Why connections ended (the harness's own churn is `life ended`), and why a reconnect
    /// failed: the error's text, by count.
    #[serde(default)]
    ends: BTreeMap<String, u64>,
    #[serde(default)]
    failures: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    reconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    ends: std::sync::Mutex<BTreeMap<String, u64>>,
    failures: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn cause(map: &std::sync::Mutex<BTreeMap<String, u64>>, why: String) {
        *map.lock().expect("causes").entry(why).or_default() += 1;
    }
}

/// One sample of the stack.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    t_s: f64,
    gateway_rss_kib: Vec<u64>,
    gateway_fds: Vec<u64>,
    nats_rss_kib: u64,
    fanout_rss_kib: u64,
    ready: Vec<u16>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Hostile {
    /// Actions by kind, and how many ended otherwise than the contract says.
    done: BTreeMap<&'static str, u64>,
    unexpected: BTreeMap<&'static str, u64>,
}

/// The soak: a stack, worker processes holding the connections, a publisher, hostile clients
/// and a sampler until `--duration`; then every worker checks its connections caught up, and
/// the report judges loss, duplicates, readiness and growth.
///
/// Longer than most on purpose: it reads as the soak's phases in order, and its last third
/// only fills the report's fields from what the phases returned.
pub async fn run(a: SoakArgs) -> Result<()> {
    if a.worker {
        return worker(a).await;
    }
    // The measured build: taken now, before the work tree can move on during the run.
    let revision = crate::report::run_revision().to_owned();
    let (nats, fanout, gateways) = spawn_stack(a.gateways)?;
    let urls: Vec<String> = gateways.iter().map(|g| g.ws_url()).collect();
    eprintln!(
        "soak: stack up ({} gateways); connecting {} clients",
        gateways.len(),
        a.connections
    );

    let mut workers = start_workers(&a, &urls)?;
    let (mut connected, mut failed) = (0, 0);
    for (_, out) in &mut workers {
        let c: Connected = read_line(out)?;
        connected += c.connected;
        failed += c.failed;
    }
    eprintln!(
        "soak: {connected} connected, {failed} failed; soaking for {:?}",
        a.duration
    );

    // Publisher, hostile clients and sampler, until the end.
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let started = Instant::now();
    let stop = Arc::new(tokio::sync::Notify::new());
    let published = Arc::new(AtomicU64::new(0));
    let last_seqs = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let publisher = tokio::spawn(publish(
        js,
        a.rooms,
        a.rate,
        Arc::clone(&stop),
        Arc::clone(&published),
        Arc::clone(&last_seqs),
    ));
    let http: Vec<String> = gateways.iter().map(|g| g.http_url()).collect();
    let hostile = tokio::spawn(hostile_clients(http, a.hostile, Arc::clone(&stop)));
    let probe = Probe {
        started,
        pids: gateways.iter().map(|g| g.pid()).collect(),
        admins: gateways.iter().map(|g| g.admin_url()).collect(),
        nats_pid: nats.pid().unwrap_or(0),
        fanout_pid: fanout.pid(),
    };
    let samples = probe.until(a.duration, a.sample, &published).await;
    stop.notify_waiters();
    let _ = publisher.await;
    let hostile = hostile.await?;
    let last = last_seqs.lock().expect("seqs").clone();
    let duration_s = started.elapsed().as_secs_f64();

    let done = finish_workers(&mut workers, &last)?;
    let half: Vec<&Sample> = samples.iter().skip(samples.len() / 2).collect();
    let slope = |f: &dyn Fn(&Sample) -> f64| slope_per_min(&half.iter().map(|s| (s.t_s, f(s))).collect::<Vec<_>>());
    let report = Report {
        revision,
        connections: a.connections,
        connected,
        failed_connects: failed,
        gateways: gateways.len(),
        rooms: a.rooms,
        rate: a.rate,
        churn: a.churn,
        duration_s,
        published: published.load(Relaxed),
        delivered: done.delivered,
        gaps: done.gaps,
        duplicates: done.duplicates,
        reconnects: done.reconnects,
        reconnect_failures: done.reconnect_failures,
        ends: done.ends,
        reconnect_failure_causes: done.failures,
        behind: done.behind,
        not_ready_samples: samples.iter().filter(|s| s.ready.iter().any(|r| *r != 200)).count() as u64,
        rss_slope_kib_per_min: (0..probe.pids.len())
            .map(|i| slope(&|s| s.gateway_rss_kib[i] as f64))
            .collect(),
        fd_slope_per_min: (0..probe.pids.len())
            .map(|i| slope(&|s| s.gateway_fds[i] as f64))
            .collect(),
        hostile,
        samples,
    };
    write_report(&a.report_dir, &report)?;
    let ok = report.gaps == 0 && report.duplicates == 0 && report.behind == 0 && report.not_ready_samples == 0;
    if !ok {
        bail!("soak: events lost, duplicated or /readyz not 200 (see the report)");
    }
    Ok(())
}

/// nats-server, fanout and `gateways` gateways (at least one) that hold up to 19,000
/// connections each.
fn spawn_stack(count: usize) -> Result<(stack::Nats, stack::Program, Vec<stack::Program>)> {
    let nats = stack::nats()?;
    let fanout = stack::fanout(&nats.url())?;
    let mut gateways = Vec::new();
    for i in 0..count.max(1) {
        let extra: Vec<String> = ["--max-connections", "19000", "--ping-interval", "20s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        gateways.push(stack::gateway(&nats.url(), &format!("soak-{i}"), &extra, None)?);
    }
    Ok((nats, fanout, gateways))
}

/// A worker process and the lines it writes.
type Worker = (std::process::Child, BufReader<std::process::ChildStdout>);

/// One soak worker process per [`PER_PROCESS`] connections, and its stdout.
fn start_workers(a: &SoakArgs, urls: &[String]) -> Result<Vec<Worker>> {
    let exe = std::env::current_exe()?;
    let per = PER_PROCESS.min(a.connections.max(1));
    let mut workers = Vec::new();
    let mut first = 0;
    while first < a.connections {
        let n = per.min(a.connections - first);
        let mut child = Command::new(&exe)
            .arg("soak")
            .args([
                "--worker",
                "--connections",
                &n.to_string(),
                "--first",
                &first.to_string(),
            ])
            .args(["--rooms", &a.rooms.to_string(), "--urls", &urls.join(",")])
            .args(a.no_presence.then_some("--no-presence"))
            .args(["--churn", &(a.churn * n as f64 / a.connections as f64).to_string()])
            .args([
                "--sources",
                &a.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a soak worker")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        workers.push((child, stdout));
        first += n;
    }
    Ok(workers)
}

/// Hands every worker the rooms' last seqs (each checks its connections hold them) and sums
/// what they counted.
fn finish_workers(workers: &mut [Worker], last: &BTreeMap<String, u64>) -> Result<WorkerDone> {
    let mut done = WorkerDone::default();
    let stop_line = serde_json::to_string(&last)?;
    for (child, out) in workers.iter_mut() {
        writeln!(child.stdin.as_mut().context("worker stdin")?, "{stop_line}")?;
        let d: WorkerDone = read_line(out)?;
        done.delivered += d.delivered;
        done.gaps += d.gaps;
        done.duplicates += d.duplicates;
        done.reconnects += d.reconnects;
        done.reconnect_failures += d.reconnect_failures;
        done.behind += d.behind;
        for (k, n) in d.ends {
            *done.ends.entry(k).or_default() += n;
        }
        for (k, n) in d.failures {
            *done.failures.entry(k).or_default() += n;
        }
        let _ = child.wait();
    }
    Ok(done)
}

/// What the sampler reads: the gateways' RSS, fds and `/readyz`, NATS's and fanout's RSS.
struct Probe {
    started: Instant,
    pids: Vec<u32>,
    admins: Vec<String>,
    nats_pid: u32,
    fanout_pid: u32,
}

impl Probe {
    /// A sample every `every` for `duration`, with a progress line each minute.
    async fn until(&self, duration: Duration, every: Duration, published: &AtomicU64) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(every);
        let end = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(end) => return samples,
            }
            let s = sample(self.started, &self.pids, &self.admins, self.nats_pid, self.fanout_pid);
            let t = s.t_s as u64;
            if t % 60 < every.as_secs().max(1) {
                eprintln!(
                    "soak: {t:>5} s  gateway RSS {:?} KiB  fds {:?}  ready {:?}  published {}",
                    s.gateway_rss_kib,
                    s.gateway_fds,
                    s.ready,
                    published.load(Relaxed)
                );
            }
            samples.push(s);
        }
    }
}

fn read_line<T: for<'de> Deserialize<'de>>(out: &mut BufReader<std::process::ChildStdout>) -> Result<T> {
    let mut line = String::new();
    out.read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("a worker said {line:?}"))
}

/// Publishes to the rooms in turn at `rate`, through JetStream (acked), remembering each
/// room's last stored seq.
async fn publish(
    js: async_nats::jetstream::Context,
    rooms: usize,
    rate: f64,
    stop: Arc<tokio::sync::Notify>,
    published: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
) {
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let mut n = 0usize;
    // The stack soak starts uses the default prefix.
    let subjects = herald_proto::subject::Subjects::new(herald_proto::subject::DEFAULT_PREFIX);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = every.tick() => {}
        }
        let room = format!("soak-{}", n % rooms.max(1));
        n += 1;
        let body = serde_json::json!({"n": n}).to_string();
        let Ok(ack) = js.publish(subjects.room(&room), body.into()).await else {
            continue;
        };
        if let Ok(ack) = ack.await {
            published.fetch_add(1, Relaxed);
            last.lock().expect("seqs").insert(room, ack.sequence);
        }
    }
}

fn sample(started: Instant, pids: &[u32], admins: &[String], nats: u32, fanout: u32) -> Sample {
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Sample {
        t_s: started.elapsed().as_secs_f64(),
        gateway_rss_kib: pids.iter().map(|p| proc::rss_kib(*p).unwrap_or(0)).collect(),
        gateway_fds: pids.iter().map(|p| fds(*p)).collect(),
        nats_rss_kib: proc::rss_kib(nats).unwrap_or(0),
        fanout_rss_kib: proc::rss_kib(fanout).unwrap_or(0),
        ready: admins
            .iter()
            .map(|a| stack::get(&format!("{a}/readyz")).map_or(0, |r| r.0))
            .collect(),
    }
}

// === worker ===

/// A connection subscribed to its room, and the ack's seq.
struct Joined {
    conn: Conn,
    room: String,
    source: IpAddr,
    seq: u64,
}

/// A worker's connections, 256 opening at a time, each subscribed to its room; and how many
/// failed.
async fn connect_all(a: &SoakArgs) -> Result<(Vec<Joined>, u64)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in 0..a.connections {
        let global = a.first + i;
        let room = format!("soak-{}", global % a.rooms.max(1));
        let url = a.urls[global % a.urls.len()].clone();
        let source = a.sources[(global / a.urls.len()) % a.sources.len()];
        let presence = !a.no_presence;
        let permit = Arc::clone(&sem).acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut c = Conn::open(&url, source, None).await?;
            let seq = subscribe(&mut c, &room, None, presence).await?;
            Ok::<_, anyhow::Error>(Joined {
                conn: c,
                room,
                source,
                seq,
            })
        }));
    }
    let mut conns = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => conns.push(c),
            _ => failed += 1,
        }
    }
    Ok((conns, failed))
}

async fn worker(a: SoakArgs) -> Result<()> {
    let tally = Arc::new(Tally::default());
    let positions: Arc<Vec<AtomicU64>> = Arc::new((0..a.connections).map(|_| AtomicU64::new(0)).collect());
    let (conns, failed) = connect_all(&a).await?;
    println!(
        "{}",
        serde_json::to_string(&Connected {
            connected: conns.len() as u64,
            failed
        })?
    );
    // Each connection lives a random time (mean: connections / churn), then resumes with
    // `since` on another gateway.
    let mean_life = conns.len() as f64 / a.churn.max(0.001);
    let urls = Arc::new(a.urls.clone());
    for (i, j) in conns.into_iter().enumerate() {
        positions[i].store(j.seq, Relaxed);
        tokio::spawn(follow(
            j.conn,
            j.room,
            j.source,
            Arc::clone(&urls),
            i,
            Arc::clone(&positions),
            Arc::clone(&tally),
            mean_life,
            !a.no_presence,
        ));
    }
    // The rooms' last seqs on stdin end the soak.
    let last: BTreeMap<String, u64> = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        serde_json::from_str(line.trim()).unwrap_or_default()
    })
    .await?;
    let behind = |i: usize| {
        let room = format!("soak-{}", (a.first + i) % a.rooms.max(1));
        last.get(&room).is_some_and(|want| positions[i].load(Relaxed) < *want)
    };
    let until = Instant::now() + Duration::from_secs(60);
    while (0..positions.len()).any(behind) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = WorkerDone {
        delivered: tally.delivered.load(Relaxed),
        gaps: tally.gaps.load(Relaxed),
        duplicates: tally.duplicates.load(Relaxed),
        reconnects: tally.reconnects.load(Relaxed),
        reconnect_failures: tally.reconnect_failures.load(Relaxed),
        behind: (0..positions.len()).filter(|i| behind(*i)).count() as u64,
        ends: std::mem::take(&mut *tally.ends.lock().expect("causes")),
        failures: std::mem::take(&mut *tally.failures.lock().expect("causes")),
    };
    println!("{}", serde_json::to_string(&done)?);
    std::io::stdout().flush()?;
    Ok(())
}

/// Subscribes with presence (and `since`); counts nothing, returns the ack's seq.
async fn subscribe(c: &mut Conn, room: &str, since: Option<u64>, presence: bool) -> Result<u64> {
    c.send_op(ClientOp::Subscribe {
        room: room.to_owned(),
        since,
        presence,
        token: None,
    })
    .await?;
    loop {
        match c.next_frame().await? {
            ServerFrame::Ack(ack) => return Ok(ack.seq.unwrap_or(0)),
            ServerFrame::Error(e) => bail!("subscribe refused: {} ({})", e.code.as_str(), e.message),
            _ => continue,
        }
    }
}

/// Reads one connection's events, checking the chain; reconnects with `since` when its life
/// ends or the gateway closes it, and keeps the chain across reconnects.
#[allow(clippy::too_many_arguments)]
async fn follow(
    mut c: Conn,
    room: String,
    source: IpAddr,
    urls: Arc<Vec<String>>,
    i: usize,
    positions: Arc<Vec<AtomicU64>>,
    tally: Arc<Tally>,
    mean_life: f64,
    presence: bool,
) {
    let mut chain = Chain(Some(positions[i].load(Relaxed)));
    loop {
        let life = Duration::from_secs_f64(-mean_life * (1.0 - rand::rng().random::<f64>()).ln());
        let end = tokio::time::sleep(life);
        tokio::pin!(end);
        loop {
            let data = tokio::select! {
                d = c.next_data() => d,
                _ = &mut end => {
                    Tally::cause(&tally.ends, "life ended".into());
                    break;
                }
            };
            let data = match data {
                Ok(data) => data,
                Err(e) => {
                    Tally::cause(&tally.ends, format!("{e:#}"));
                    break;
                }
            };
            if let Some(ev) = EventView::decode(&data) {
                record(&mut chain, (ev.seq, ev.prev), &tally, &positions[i]);
            }
        }
        // Resume: replayed events come before the ack and go through the same chain.
        tally.reconnects.fetch_add(1, Relaxed);
        drop(c);
        let since = chain.0.unwrap_or(0);
        c = loop {
            let url = &urls[rand::rng().random_range(0..urls.len())];
            match resume(url, source, &room, since, presence, &mut chain, &tally, &positions[i]).await {
                Ok(c) => break c,
                Err(e) => {
                    tally.reconnect_failures.fetch_add(1, Relaxed);
                    Tally::cause(&tally.failures, format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
    }
}

#[allow(clippy::too_many_arguments)]
async fn resume(
    url: &str,
    source: IpAddr,
    room: &str,
    since: u64,
    presence: bool,
    chain: &mut Chain,
    tally: &Tally,
    position: &AtomicU64,
) -> Result<Conn> {
    let mut c = Conn::open(url, source, None).await?;
    c.send_op(ClientOp::Subscribe {
        room: room.to_owned(),
        since: Some(since),
        presence,
        token: None,
    })
    .await?;
    loop {
        match c.next_frame().await? {
            ServerFrame::Event(ev) => record(chain, (ev.seq, ev.prev), tally, position),
            ServerFrame::Ack(_) => return Ok(c),
            ServerFrame::Error(e) => bail!("resume refused: {} ({})", e.code.as_str(), e.message),
            _ => {}
        }
    }
}

fn record(chain: &mut Chain, (seq, prev): (u64, u64), tally: &Tally, position: &AtomicU64) {
    match chain.check(seq, prev) {
        Order::Duplicate => {
            tally.duplicates.fetch_add(1, Relaxed);
            return;
        }
        Order::AfterGap => {
            tally.gaps.fetch_add(1, Relaxed);
        }
        Order::Next => {}
    }
    tally.delivered.fetch_add(1, Relaxed);
    position.store(seq, Relaxed);
}
