//! Herald programs as real child processes, for tests that kill them (`kill -9`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `herald-gateway` or `herald-fanout`; killed on drop.
pub struct Process {
    child: std::sync::Mutex<Option<Child>>,
    /// The public listener (gateways only).
    pub addr: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl Process {
    /// Starts `herald-gateway` with the test HS256 secret on free loopback ports, then
    /// `args`; waits for `/readyz` 200.
    pub async fn gateway(nats_url: &str, id: &str, args: &[&str]) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()).into();
        let mut all = vec![
            "--listen".to_owned(),
            addr.to_string(),
            "--nats-url".to_owned(),
            nats_url.to_owned(),
            "--gateway-id".to_owned(),
            id.to_owned(),
            "--auth-hs256-secret".to_owned(),
            crate::jwt::SECRET.to_owned(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let mut p = Self::spawn(&sibling_binary("herald-gateway"), all);
        p.addr = Some(addr);
        p.wait_ready().await;
        p
    }

    /// Starts `herald-fanout` with short test timings (100 ms presence interval, 1 s leave
    /// delay, 2 s gateway timeout, 1.5 s lease, 300 ms sync window); `extra` flags replace
    /// those defaults. Does not wait for readiness.
    pub fn fanout(nats_url: &str, id: &str, extra: &[&str]) -> Self {
        let defaults = [
            ("--instance-id", id),
            ("--presence-interval", "100ms"),
            ("--leave-delay", "1s"),
            ("--gateway-timeout", "2s"),
            ("--leader-lease", "1500ms"),
            ("--sync-window", "300ms"),
        ];
        let mut args = vec!["--nats-url".to_owned(), nats_url.to_owned()];
        for (flag, value) in defaults.into_iter().filter(|(flag, _)| !extra.contains(flag)) {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&sibling_binary("herald-fanout"), args)
    }

    /// Starts `binary` (e.g. `env!("CARGO_BIN_EXE_herald-fanout")`) with `--admin-listen`
    /// on a free port and `args`; does not wait.
    pub fn spawn(binary: &Path, args: Vec<String>) -> Self {
        let admin: SocketAddr = ([127, 0, 0, 1], crate::free_port()).into();
        let logs = if std::env::var_os("HERALD_TEST_LOGS").is_some() {
            Stdio::inherit
        } else {
            Stdio::null
        };
        let child = Command::new(binary)
            .arg("--admin-listen")
            .arg(admin.to_string())
            .args(&args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(logs())
            .stderr(logs())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            child: std::sync::Mutex::new(Some(child)),
            addr: None,
            admin,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr.expect("a gateway"))
    }

    /// Waits until `/readyz` answers 200; fails at once if the process exits.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        let what = format!("/readyz 200 on {admin}");
        crate::wait_until(Duration::from_secs(20), &what, || async move {
            if let Some(child) = self.child.lock().expect("child lock").as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the process behind {admin} exited: {status}");
                }
            }
            crate::http::get(admin, "/readyz")
                .await
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
        .await;
    }

    /// The value of a metric line in `/metrics` whose name and labels start with `prefix`
    /// (summed over matching lines).
    pub async fn metric(&self, prefix: &str) -> f64 {
        crate::http::metric(self.admin, prefix).await
    }

    /// The process's resident memory now, in bytes (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> u64 {
        let pid = self
            .child
            .lock()
            .expect("child lock")
            .as_ref()
            .map(Child::id)
            .expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }

    /// SIGTERM, and the exit status (None if it did not exit within `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().expect("child lock").take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.lock().expect("child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A workspace binary next to the running test's own directory (`target/<profile>/`).
/// `cargo test --workspace` builds every workspace binary first.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo build --bins` (or `cargo test --workspace`)",
        path.display()
    );
    path
}
