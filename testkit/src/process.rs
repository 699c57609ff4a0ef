//! Herald programs as real child processes, for tests that kill them (`kill -9`), started by
//! `herald-harness`'s launcher.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use herald_harness::launch::{FanoutOptions, GatewayOptions, Program};

use crate::logs;

/// A running `herald-gateway` or `herald-fanout`; killed on drop.
pub struct Process {
    program: Mutex<Program>,
    /// The public listener (gateways only).
    pub addr: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl Process {
    fn of(program: Program) -> Self {
        Self {
            addr: program.listen,
            admin: program.admin,
            program: Mutex::new(program),
        }
    }

    /// Starts `herald-gateway` with the test HS256 secret on free loopback ports, then
    /// `args`; waits for `/readyz` 200.
    pub async fn gateway(nats_url: &str, id: &str, args: &[&str]) -> Self {
        let mut all = vec!["--auth-hs256-secret".to_owned(), crate::jwt::SECRET.to_owned()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let opts = GatewayOptions {
            id: id.to_owned(),
            args: all,
            logs: logs(),
            ..GatewayOptions::default()
        };
        let p = Self::of(Program::gateway(nats_url, opts).unwrap_or_else(|e| panic!("{e:#}")));
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
        let mut args = Vec::new();
        for (flag, value) in defaults.into_iter().filter(|(flag, _)| !extra.contains(flag)) {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let opts = FanoutOptions {
            args,
            logs: logs(),
            ..FanoutOptions::default()
        };
        Self::of(Program::fanout(nats_url, opts).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Starts `binary` (e.g. `env!("CARGO_BIN_EXE_herald-fanout")`) with `--admin-listen`
    /// on a free port and `args`; does not wait.
    pub fn spawn(binary: &Path, args: Vec<String>) -> Self {
        Self::of(Program::spawn(binary, None, &args, &logs()).unwrap_or_else(|e| panic!("{e:#}")))
    }

    pub fn ws_url(&self) -> String {
        self.program.lock().expect("program lock").ws_url()
    }

    /// Waits until `/readyz` answers 200; fails at once if the process exits.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        let what = format!("/readyz 200 on {admin}");
        crate::wait_until(Duration::from_secs(20), &what, || async move {
            if let Some(status) = self.program.lock().expect("program lock").exited() {
                panic!("the process behind {admin} exited: {status}");
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
        self.program
            .lock()
            .expect("program lock")
            .rss_bytes()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// SIGTERM, and the exit status (None if it did not exit within `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.program.lock().expect("program lock").terminate(within)
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill9(&mut self) {
        self.program.lock().expect("program lock").kill();
    }
}
