//! `--spawn`: a private stack for a run — nats-server with JetStream in a temporary directory
//! and fresh `herald-gateway` processes, all on free loopback ports, killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Nats {
    child: Child,
    pub url: String,
    dir: PathBuf,
}

pub struct Gateway {
    child: Child,
    pub http: String,
    pub ws: String,
    pub admin: String,
    pub pid: u32,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(addr: SocketAddr, child: &mut Child, what: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited at start ({status})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on {addr} within 30 s")
}

/// `HERALD_NATS_SERVER`, `nats-server` on PATH, or the copy `cargo xtask` installs.
fn nats_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HERALD_NATS_SERVER") {
        return Ok(p.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&path)
            .map(|d| d.join("nats-server"))
            .find(|c| c.is_file())
        {
            return Ok(found);
        }
    }
    // target/<profile>/loadtest → target/tools/venv/bin/nats-server
    let exe = std::env::current_exe()?;
    if let Some(target) = exe.parent().and_then(Path::parent) {
        let installed = target.join("tools/venv/bin/nats-server");
        if installed.is_file() {
            return Ok(installed);
        }
    }
    bail!("nats-server not found: set HERALD_NATS_SERVER, put it on PATH, or run `cargo xtask test` once")
}

/// A Herald program built next to this binary (`target/<profile>/`).
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it (`cargo build --release --bins`)",
            path.display()
        );
    }
    Ok(path)
}

impl Nats {
    pub fn start() -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("herald-loadtest-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut child = Command::new(nats_binary()?)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        wait_port(([127, 0, 0, 1], port).into(), &mut child, "nats-server")?;
        Ok(Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
        })
    }
}

impl Nats {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A fresh `herald-fanout` on a free admin port; waits until it is ready.
pub struct Fanout {
    child: Child,
    pub pid: u32,
}

impl Fanout {
    pub fn start(nats_url: &str) -> Result<Self> {
        let admin = free_port()?;
        let mut child = Command::new(sibling("herald-fanout")?)
            .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "--nats-url", nats_url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting herald-fanout")?;
        wait_port(([127, 0, 0, 1], admin).into(), &mut child, "herald-fanout")?;
        let url = format!("http://127.0.0.1:{admin}/readyz");
        let until = Instant::now() + Duration::from_secs(30);
        while get(&url).map(|r| r.0) != Ok(200) {
            if Instant::now() > until {
                bail!("herald-fanout not ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = child.id();
        Ok(Self { child, pid })
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Gateway {
    /// An anonymous-friendly gateway with `extra` flags; waits until it listens.
    pub fn start(nats_url: &str, id: &str, extra: &[String], log: Option<&Path>) -> Result<Self> {
        let (port, admin) = (free_port()?, free_port()?);
        let out = match log {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        };
        let mut child = Command::new(sibling("herald-gateway")?)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--nats-url", nats_url, "--gateway-id", id, "--allow-anonymous"])
            .args(["--drain-timeout", "2s"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .context("starting herald-gateway")?;
        wait_port(([127, 0, 0, 1], port).into(), &mut child, "herald-gateway")?;
        let admin_url = format!("http://127.0.0.1:{admin}");
        let until = Instant::now() + Duration::from_secs(30);
        while get(&format!("{admin_url}/readyz")).map(|r| r.0) != Ok(200) {
            if Instant::now() > until {
                bail!("herald-gateway not ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = child.id();
        Ok(Self {
            child,
            http: format!("http://127.0.0.1:{port}"),
            ws: format!("ws://127.0.0.1:{port}/ws"),
            admin: admin_url,
            pid,
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain blocking `GET` (HTTP/1.0, connection closed): status and body. For `/readyz` and
/// `/metrics` on loopback admin ports, where a client library would be heavier than the job.
pub fn get(url: &str) -> std::result::Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("http:// URL")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let body = buf.split_once("\r\n\r\n").map(|b| b.1.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The sum of every sample of `name` (all label sets) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
