//! `loadtest chat --target nchan`: the same chat-shaped traffic against Nchan (nginx with the
//! nchan module) as the reference. The loadtest writes nginx's configuration into the report
//! directory, starts nginx on a free loopback port (one master, N workers, all measured), and
//! publishes as a backend without batching does: one HTTP `POST /pub/<room>` per event, on
//! keep-alive connections. Subscribers open a WebSocket on `/sub/<room>`; each text frame is
//! a published body as it was posted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::proc;

/// Where Debian's `libnginx-mod-nchan` (and most distributions' nginx modules) put the module.
const MODULE_PATHS: [&str; 3] = [
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/lib64/nginx/modules/ngx_nchan_module.so",
    "/usr/local/nginx/modules/ngx_nchan_module.so",
];

/// Messages nchan keeps per channel: a short replay for a subscriber that reconnects, as
/// Herald keeps history; nothing is stored beyond nchan's shared memory.
const MESSAGE_BUFFER: usize = 16;

/// How long nchan keeps a buffered message.
const MESSAGE_TIMEOUT: &str = "60s";

/// nchan's shared memory (channels and buffered messages of every worker).
const SHARED_MEMORY: &str = "256M";

/// How long nginx may take to listen and start its workers.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long nginx may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a generated nginx configuration says.
#[derive(Debug, Clone)]
pub struct Config {
    /// The nchan module to load (`None`: built into nginx).
    pub module: Option<PathBuf>,
    pub workers: usize,
    /// Connections each worker may hold (subscribers and publishers).
    pub worker_connections: usize,
    pub port: u16,
    /// nginx's prefix: its pid file and temporary directories.
    pub dir: PathBuf,
}

/// A running nginx with nchan; stopped on drop.
pub struct Nginx {
    child: Option<Child>,
    /// The master's PID, then the workers'.
    pids: Vec<u32>,
    pub addr: SocketAddr,
    conf: PathBuf,
}

/// What the publisher got for its POSTs.
#[derive(Debug)]
pub struct Posted {
    pub sent: u64,
    /// Answered 2xx (nchan: 201 with subscribers, 202 without).
    pub accepted: u64,
    pub failed: u64,
    /// POST round trips, µs.
    pub latency: Histogram<u64>,
}

/// A publisher's keep-alive connections: each room's events go on one connection, in order.
pub struct Poster {
    lanes: Vec<mpsc::Sender<Post>>,
    tasks: Vec<tokio::task::JoinHandle<Posted>>,
    sent: u64,
}

struct Post {
    at: Instant,
    path: String,
    body: String,
}

/// `$HERALD_NGINX`, then `nginx` on `PATH`, then `/usr/sbin/nginx`.
pub fn nginx_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HERALD_NGINX") {
        return Ok(p.into());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.into_iter().map(|d| d.join("nginx")).find(|p| p.is_file()).context(
        "nginx not found: install nginx and nchan (Debian: apt-get install nginx libnginx-mod-nchan), \
         or set HERALD_NGINX to its path",
    )
}

/// `$HERALD_NCHAN_MODULE` (empty: nchan is built into nginx), then the distributions' paths.
pub fn nchan_module() -> Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os("HERALD_NCHAN_MODULE") {
        return Ok((!p.is_empty()).then(|| p.into()));
    }
    MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .map(Some)
        .context(
            "the nchan module was not found: install it (Debian: apt-get install libnginx-mod-nchan), \
             or set HERALD_NCHAN_MODULE to its .so (empty if nchan is built into nginx)",
        )
}

/// The subscriber URL of `room` on the server at `base` (`ws://host:port`).
pub fn sub_url(base: &str, room: &str) -> String {
    format!("{base}/sub/{room}")
}

/// The path a backend POSTs `room`'s events to.
pub fn pub_path(room: &str) -> String {
    format!("/pub/{room}")
}

// === impl Config ===

impl Config {
    /// nginx.conf: nchan publisher and WebSocket subscriber locations keyed by the room in
    /// the path, memory only, no access log; every path under `dir`.
    pub fn render(&self) -> String {
        let dir = self.dir.display();
        let load = self
            .module
            .as_ref()
            .map_or(String::new(), |m| format!("load_module {};\n", m.display()));
        // Each connection holds a socket; files, logs and IPC pipes need a few more.
        let nofile = self.worker_connections + 1024;
        format!(
            "# Generated by `loadtest chat --target nchan`.
{load}worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;

events {{
    worker_connections {conns};
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # A backend's publishing connections stay open for the whole run.
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    nchan_shared_memory_size {shm};

    server {{
        listen 127.0.0.1:{port};

        location ~ ^/pub/([A-Za-z0-9_.-]+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
            nchan_message_buffer_length {buffer};
            nchan_message_timeout {timeout};
        }}

        location ~ ^/sub/([A-Za-z0-9_.-]+)$ {{
            nchan_subscriber websocket;
            nchan_channel_id $1;
        }}
    }}
}}
",
            workers = self.workers,
            conns = self.worker_connections,
            shm = SHARED_MEMORY,
            port = self.port,
            buffer = MESSAGE_BUFFER,
            timeout = MESSAGE_TIMEOUT,
        )
    }
}

// === impl Nginx ===

impl Nginx {
    /// Writes `config` to `<dir>/nginx.conf`, starts nginx on it, and waits until it listens
    /// and all its workers run.
    pub fn start(config: &Config) -> Result<Self> {
        let bin = nginx_binary()?;
        std::fs::create_dir_all(&config.dir)?;
        let dir = config.dir.canonicalize()?;
        let config = Config {
            dir: dir.clone(),
            ..config.clone()
        };
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config.render()).with_context(|| format!("writing {}", conf.display()))?;
        let log = std::fs::File::create(dir.join("nginx-stderr.log"))?;
        let child = Command::new(&bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let master = child.id();
        let mut nginx = Self {
            child: Some(child),
            pids: vec![master],
            addr: SocketAddr::from(([127, 0, 0, 1], config.port)),
            conf,
        };
        let until = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = nginx.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let errors = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
                bail!("nginx exited ({status}) at start: {}", errors.trim());
            }
            let workers = proc::children_of(master);
            let listening = std::net::TcpStream::connect(nginx.addr).is_ok();
            if listening && workers.len() >= config.workers {
                nginx.pids.extend(workers);
                return Ok(nginx);
            }
            if Instant::now() > until {
                bail!(
                    "nginx did not listen on {} with {} workers within {START_TIMEOUT:?} (see {})",
                    nginx.addr,
                    config.workers,
                    dir.join("nginx-error.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master's PID, then the workers'.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// `ws://127.0.0.1:<port>`.
    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The configuration file it runs.
    pub fn conf(&self) -> &Path {
        &self.conf
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM: the master stops its workers, then exits.
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let until = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in &self.pids[1..] {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

// === impl Poster ===

impl Poster {
    /// `connections` keep-alive connections to `addr`, each with up to `depth` POSTs queued:
    /// a publisher slower than its schedule waits instead of queueing without bound.
    pub fn new(addr: SocketAddr, connections: usize, depth: usize) -> Self {
        let (lanes, tasks) = (0..connections.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(depth.max(1));
                (tx, tokio::spawn(lane(addr, rx)))
            })
            .unzip();
        Self { lanes, tasks, sent: 0 }
    }

    /// Queues a POST of `body` to `room`'s channel (room index `r`: its connection).
    pub async fn send(&mut self, r: usize, room: &str, body: String) -> Result<()> {
        let lane = &self.lanes[r % self.lanes.len()];
        let post = Post {
            at: Instant::now(),
            path: pub_path(room),
            body,
        };
        lane.send(post).await.context("a publishing connection ended")?;
        self.sent += 1;
        Ok(())
    }

    /// Waits for every queued POST's answer.
    pub async fn finish(self) -> Result<Posted> {
        drop(self.lanes);
        let mut all = Posted {
            sent: self.sent,
            accepted: 0,
            failed: 0,
            latency: crate::latency_histogram(),
        };
        for task in self.tasks {
            let p = task.await?;
            all.accepted += p.accepted;
            all.failed += p.failed;
            all.latency.add(&p.latency)?;
        }
        Ok(all)
    }
}

/// One keep-alive connection: POSTs its queue in order, reconnecting after an error.
async fn lane(addr: SocketAddr, mut rx: mpsc::Receiver<Post>) -> Posted {
    let mut out = Posted {
        sent: 0,
        accepted: 0,
        failed: 0,
        latency: crate::latency_histogram(),
    };
    let mut conn: Option<http1::SendRequest<Full<Bytes>>> = None;
    while let Some(post) = rx.recv().await {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = connect(addr).await.ok();
        }
        let Some(sender) = conn.as_mut() else {
            out.failed += 1;
            continue;
        };
        match post_one(sender, addr, post.path, post.body).await {
            Ok(true) => {
                out.accepted += 1;
                let _ = out.latency.record((post.at.elapsed().as_micros() as u64).max(1));
            }
            Ok(false) => out.failed += 1,
            Err(_) => {
                out.failed += 1;
                conn = None;
            }
        }
    }
    out
}

async fn connect(addr: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One POST; whether nchan accepted it (2xx).
async fn post_one(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    path: String,
    body: String,
) -> Result<bool> {
    sender.ready().await?;
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let ok = resp.status().is_success();
    // The answer (nchan's channel info) is read to its end so the connection is reused.
    resp.into_body().collect().await?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keys_channels_by_the_path_and_keeps_everything_in_the_prefix() {
        let conf = Config {
            module: Some("/usr/lib/nginx/modules/ngx_nchan_module.so".into()),
            workers: 2,
            worker_connections: 6_000,
            port: 18_080,
            dir: "/tmp/run".into(),
        }
        .render();
        let lines: Vec<&str> = conf.lines().map(str::trim).collect();
        for want in [
            "load_module /usr/lib/nginx/modules/ngx_nchan_module.so;",
            "worker_processes 2;",
            "worker_rlimit_nofile 7024;",
            "worker_connections 6000;",
            "pid /tmp/run/nginx.pid;",
            "error_log /tmp/run/nginx-error.log warn;",
            "client_body_temp_path /tmp/run/client_body;",
            "access_log off;",
            "listen 127.0.0.1:18080;",
            "location ~ ^/pub/([A-Za-z0-9_.-]+)$ {",
            "nchan_publisher http;",
            "location ~ ^/sub/([A-Za-z0-9_.-]+)$ {",
            "nchan_subscriber websocket;",
            "nchan_message_buffer_length 16;",
        ] {
            assert!(lines.contains(&want), "no {want:?} in\n{conf}");
        }
        assert_eq!(lines.iter().filter(|l| **l == "nchan_channel_id $1;").count(), 2);
        // Every path nginx writes is under the prefix.
        for l in lines.iter().filter(|l| l.contains("_path ") || l.starts_with("pid ")) {
            assert!(l.contains(" /tmp/run/"), "{l} is outside the prefix");
        }
    }

    #[test]
    fn a_built_in_module_is_not_loaded() {
        let conf = Config {
            module: None,
            workers: 1,
            worker_connections: 10,
            port: 1,
            dir: "/d".into(),
        }
        .render();
        assert!(!conf.contains("load_module"), "{conf}");
    }

    #[test]
    fn rooms_map_to_publisher_and_subscriber_locations() {
        assert_eq!(pub_path("chat-7"), "/pub/chat-7");
        assert_eq!(
            sub_url("ws://127.0.0.1:18080", "chat-7"),
            "ws://127.0.0.1:18080/sub/chat-7"
        );
    }
}
