//! `cargo xtask test` and its parts: fmt, clippy, every test, Autobahn, the browser tests.

use std::process::{Child, Command};

use crate::tools::{chromium, install, ops_tools, python27};
use crate::up::{free_port, token, wait_port, wait_ready};
use crate::{cargo, root, run};
use anyhow::{bail, Context, Result};

pub(crate) fn test(extra: &[String]) -> Result<()> {
    let nats = install()?;
    ops_tools()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .env("HERALD_NATS_SERVER", &nats))?;
    autobahn()?;
    browser()?;
    eprintln!("xtask: every check passed");
    Ok(())
}

/// Runs the Autobahn testsuite (fuzzingclient, every case but compression) against the
/// gateway's `/echo`; any FAILED case fails.
pub(crate) fn autobahn() -> Result<()> {
    let python = python27()?;
    let lib = root().join("target/tools/autobahn");
    if !lib.join("autobahntestsuite").is_dir() {
        eprintln!("xtask: installing autobahntestsuite (PyPI) for {}", python.display());
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&lib)
            .arg("autobahntestsuite"))?;
    }
    run(cargo().args(["build", "--locked", "-p", "herald-gateway"]))?;
    let nats_bin = install()?;
    let work = root().join("target/autobahn");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let (nats_port, port, admin) = (free_port()?, free_port()?, free_port()?);
    let mut nats = Command::new(nats_bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &nats_port.to_string(), "-sd"])
        .arg(work.join("nats"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut gateway = Command::new(root().join("target/debug/herald-gateway"))
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("HERALD_NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
        .env("HERALD_ALLOW_ANONYMOUS", "true")
        .env("HERALD_ECHO_ENDPOINT", "true")
        // The suite sends messages of up to 16 MiB and expects them echoed.
        .env("HERALD_MAX_MESSAGE_BYTES", (32u64 << 20).to_string())
        .env("HERALD_OUTBOUND_BUFFER_BYTES", (64u64 << 20).to_string())
        .env("RUST_LOG", "warn")
        .spawn()?;
    let result = (|| {
        wait_port(port)?;
        let spec = serde_json::json!({
            "outdir": work.join("report"),
            "servers": [{"agent": "herald", "url": format!("ws://127.0.0.1:{port}/echo")}],
            "cases": ["*"],
            "exclude-cases": ["12.*", "13.*"],
            "exclude-agent-cases": {},
        });
        std::fs::write(work.join("spec.json"), spec.to_string())?;
        let script = format!(
            "import site,sys; site.addsitedir({lib:?}); sys.argv=['wstest','-m','fuzzingclient','-s','spec.json']; \
             from autobahntestsuite import wstest; wstest.run()",
            lib = lib.display().to_string()
        );
        let log = std::fs::File::create(work.join("wstest.log"))?;
        run(Command::new(&python)
            .arg("-c")
            .arg(script)
            .current_dir(&work)
            .stdout(log.try_clone()?)
            .stderr(log))?;
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join("report/index.json"))?)?;
        let cases = index["herald"].as_object().context("no results for agent herald")?;
        let mut counts = std::collections::BTreeMap::new();
        let mut failed = Vec::new();
        for (case, r) in cases {
            let behavior = r["behavior"].as_str().unwrap_or("?").to_owned();
            if !matches!(behavior.as_str(), "OK" | "NON-STRICT" | "INFORMATIONAL") {
                failed.push(format!("{case} {behavior}"));
            }
            *counts.entry(behavior).or_insert(0) += 1;
        }
        eprintln!("xtask: autobahn: {} cases: {counts:?}", cases.len());
        if cases.len() < 290 {
            bail!("autobahn ran only {} cases", cases.len());
        }
        if !failed.is_empty() {
            bail!("autobahn failures (report in target/autobahn/report): {failed:?}");
        }
        Ok(())
    })();
    let _ = gateway.kill();
    let _ = gateway.wait();
    let _ = nats.kill();
    let _ = nats.wait();
    result
}

/// Runs `browser/tests` (node:test + playwright-core) in headless Chromium against a stack
/// of NATS, fanout and two gateways on free ports. Installs Chromium (Debian package) and
/// the npm packages when missing; screenshots go to `target/browser`.
pub(crate) fn browser() -> Result<()> {
    let chromium = chromium()?;
    let dir = root().join("browser");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir))?;
    run(cargo().args(["build", "--locked", "-p", "herald-gateway", "-p", "herald-fanout"]))?;
    let nats_bin = install()?;
    let work = root().join("target/browser");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("screenshots"))?;
    let secret = "herald-browser-secret";
    let nats_port = free_port()?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let log = |name: &str| std::fs::File::create(work.join(format!("{name}.log")));
    let mut children: Vec<Child> = Vec::new();
    let result = (|| {
        children.push(
            Command::new(nats_bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &nats_port.to_string(), "-sd"])
                .arg(work.join("nats"))
                .stdout(log("nats")?)
                .stderr(log("nats-err")?)
                .spawn()?,
        );
        wait_port(nats_port)?;
        let debug = root().join("target/debug");
        let fanout_admin = free_port()?;
        children.push(
            Command::new(debug.join("herald-fanout"))
                .env("HERALD_NATS_URL", &nats_url)
                .env("HERALD_ADMIN_LISTEN", format!("127.0.0.1:{fanout_admin}"))
                .env("HERALD_LEAVE_DELAY", "2s")
                .stderr(log("fanout")?)
                .spawn()?,
        );
        let mut urls = Vec::new();
        let mut pids = Vec::new();
        for id in ["gw-a", "gw-b"] {
            let (port, admin) = (free_port()?, free_port()?);
            let child = Command::new(debug.join("herald-gateway"))
                .env("HERALD_NATS_URL", &nats_url)
                .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
                .env("HERALD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
                .env("HERALD_GATEWAY_ID", id)
                .env("HERALD_AUTH_HS256_SECRET", secret)
                .env("HERALD_ALLOW_ANONYMOUS", "true")
                .env("HERALD_POLL_MAX_WAIT", "10s")
                // Small replay pages, so that a resume spans several (herald.js follows `more`).
                .env("HERALD_REPLAY_MAX_EVENTS", "5")
                .stderr(log(id)?)
                .spawn()?;
            pids.push(child.id().to_string());
            children.push(child);
            urls.push(format!("http://127.0.0.1:{port}"));
            wait_ready(admin)?;
        }
        wait_ready(fanout_admin)?;
        let tokens = serde_json::json!({
            "agentAcme": token("agent-acme", "Acme agent", &["support:acme:*"], secret)?,
            "annAcme": token("ann", "Ann", &["support:acme:ann"], secret)?,
            "publisher": token("bot", "Bot", &["*"], secret)?,
        });
        run(Command::new("node")
            .args(["--test", "--test-concurrency=1", "tests/"])
            .current_dir(&dir)
            .env("HERALD_CHROMIUM", &chromium)
            .env("HERALD_GATEWAYS", urls.join(","))
            .env("HERALD_GATEWAY_PIDS", pids.join(","))
            .env("HERALD_TOKENS", tokens.to_string())
            .env("HERALD_TEST_SECRET", secret)
            .env("HERALD_TEST_LEAVE_DELAY_MS", "2000")
            // For tests that start (and kill) gateways of their own on the same NATS.
            .env("HERALD_GATEWAY_BIN", debug.join("herald-gateway"))
            .env("HERALD_NATS_URL", &nats_url)
            .env("HERALD_ARTIFACTS", work.join("screenshots")))
    })();
    for child in children.iter_mut().rev() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if result.is_err() {
        eprintln!(
            "xtask: browser tests failed; logs and screenshots in {}",
            work.display()
        );
    }
    result
}
