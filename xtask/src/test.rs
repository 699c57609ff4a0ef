//! `cargo xtask test` and its parts: fmt, clippy, every test, Autobahn, the browser tests.

use std::process::Command;

use crate::tools::{chromium, install, ops_tools, python27};
use crate::up::token;
use crate::{cargo, root, run};
use anyhow::{bail, Context, Result};
use herald_harness::launch::{FanoutOptions, GatewayOptions, Logs, Nats, NatsOptions, Program, START_TIMEOUT};
use herald_proto::http::path;

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
    // The gateway's tests ran with the default per-room subscriptions; the ordering, resume
    // and backlog guarantees must hold with the wildcard subscription too.
    run(cargo()
        .args(["test", "--locked", "-p", "herald-gateway", "--test", "it"])
        .env("HERALD_NATS_SERVER", &nats)
        .env("HERALD_ROOM_SUBSCRIPTIONS", "wildcard"))?;
    autobahn()?;
    browser()?;
    eprintln!("xtask: every check passed");
    Ok(())
}

/// Runs the Autobahn testsuite (fuzzingclient, every case, compression's 12.x and 13.x
/// included) against the gateway's `/echo` with permessage-deflate on; any FAILED case fails.
pub(crate) fn autobahn() -> Result<()> {
    let python = python27()?;
    let lib = install_autobahn(&python)?;
    run(cargo().args(["build", "--locked", "-p", "herald-gateway"]))?;
    let nats_bin = install()?;
    let work = root().join("target/autobahn");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let nats = Nats::start(NatsOptions {
        binary: Some(nats_bin),
        store: Some(work.join("nats")),
        ..NatsOptions::default()
    })?;
    let mut gateway = Program::gateway(
        &nats.url(),
        GatewayOptions {
            binary: Some(root().join("target/debug/herald-gateway")),
            id: "autobahn".into(),
            args: vec![
                "--allow-anonymous".into(),
                "--echo-endpoint".into(),
                // The suite sends messages of up to 16 MiB and expects them echoed.
                "--max-message-bytes".into(),
                (32u64 << 20).to_string(),
                "--outbound-buffer-bytes".into(),
                (64u64 << 20).to_string(),
                // Echoes compressed whenever that makes them smaller.
                "--ws-compression".into(),
                "on".into(),
                "--ws-compression-min-bytes".into(),
                "0".into(),
            ],
            ..GatewayOptions::default()
        },
    )?;
    let result = (|| {
        gateway.wait_ready(START_TIMEOUT)?;
        let echo = format!("ws://{}{}", gateway.listen.context("a listener")?, path::ECHO);
        let spec = serde_json::json!({
            "outdir": work.join("report"),
            "servers": [{"agent": "herald", "url": echo}],
            "cases": ["*"],
            "exclude-cases": [],
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
        judge(&work.join("report/index.json"))
    })();
    drop(gateway);
    drop(nats);
    result
}

/// The server API key of the browser tests' fanout, which the support desk's backend holds.
const BROWSER_API_KEY: &str = "herald-browser-test-api-key-0123456789";

/// NATS, fanout (with the server API over HTTP), two gateways (`gw-a`, `gw-b`) and the
/// support desk's backend for the browser tests, ready, their logs in `work`; the programs
/// are fanout, the gateways, then the desk's backend.
fn browser_stack(nats_bin: std::path::PathBuf, work: &std::path::Path, secret: &str) -> Result<(Nats, Vec<Program>)> {
    let log = |name: &str| Logs::File(work.join(format!("{name}.log")));
    let debug = root().join("target/debug");
    let mut programs: Vec<Program> = Vec::new();
    let nats = Nats::start(NatsOptions {
        binary: Some(nats_bin),
        store: Some(work.join("nats")),
        logs: log("nats"),
        ..NatsOptions::default()
    })?;
    let nats_url = nats.url();
    let api = herald_harness::free_addr()?;
    let fanout = FanoutOptions {
        binary: Some(debug.join("herald-fanout")),
        args: [
            "--leave-delay",
            "2s",
            "--api-listen",
            &api.to_string(),
            "--api-key",
            BROWSER_API_KEY,
        ]
        .map(String::from)
        .to_vec(),
        logs: log("fanout"),
        ..FanoutOptions::default()
    };
    programs.push(Program::fanout(&nats_url, fanout)?);
    for id in ["gw-a", "gw-b"] {
        let args: Vec<&str> = [
            "--auth-hs256-secret",
            secret,
            "--poll-max-wait",
            "10s",
            // Small replay pages, so that a resume spans several (herald.js follows `more`).
            "--replay-max-events",
            "5",
        ]
        .into_iter()
        .chain(herald_harness::launch::LOAD_TEST_ANONYMOUS)
        .collect();
        programs.push(Program::gateway(
            &nats_url,
            GatewayOptions {
                binary: Some(debug.join("herald-gateway")),
                id: id.into(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                logs: log(id),
                ..GatewayOptions::default()
            },
        )?);
    }
    programs.push(Program::demo_backend(
        Some(debug.join("demo-backend")),
        herald_harness::free_addr()?,
        (api, BROWSER_API_KEY),
        secret,
        &["initech:alice", "initech:carol"],
        &log("demo-backend"),
    )?);
    for p in &mut programs {
        p.wait_ready(START_TIMEOUT)?;
    }
    Ok((nats, programs))
}

/// autobahntestsuite from PyPI for `python` (2.7), in `target/tools/autobahn`; its path.
fn install_autobahn(python: &std::path::Path) -> Result<std::path::PathBuf> {
    let lib = root().join("target/tools/autobahn");
    if !lib.join("autobahntestsuite").is_dir() {
        eprintln!("xtask: installing autobahntestsuite (PyPI) for {}", python.display());
        run(Command::new(python)
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
    Ok(lib)
}

/// Fails on any case whose behaviour is not OK, NON-STRICT or INFORMATIONAL, and when fewer
/// than 500 cases ran (517 with compression's).
fn judge(index: &std::path::Path) -> Result<()> {
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(index)?)?;
    let cases = results["herald"].as_object().context("no results for agent herald")?;
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
    if cases.len() < 500 {
        bail!("autobahn ran only {} cases", cases.len());
    }
    if !failed.is_empty() {
        bail!("autobahn failures (report in target/autobahn/report): {failed:?}");
    }
    Ok(())
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
    run(cargo().args([
        "build",
        "--locked",
        "-p",
        "herald-gateway",
        "-p",
        "herald-fanout",
        "-p",
        "loadtest",
        "-p",
        "demo-backend",
    ]))?;
    let nats_bin = install()?;
    let work = root().join("target/browser");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("screenshots"))?;
    // At least 32 bytes, as the gateway requires.
    let secret = "herald-browser-test-secret-0123456789";
    let debug = root().join("target/debug");
    let result = browser_stack(nats_bin, &work, secret).and_then(|(nats, programs)| {
        let urls: Vec<String> = programs[1..3].iter().map(Program::http_url).collect();
        let pids: Vec<String> = programs[1..3].iter().map(|p| p.pid().to_string()).collect();
        let tokens = serde_json::json!({
            "agentAcme": token("agent-acme", "Acme agent", &["support:acme:*"], secret)?,
            "annAcme": token("ann", "Ann", &["support:acme:ann:*"], secret)?,
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
            // The flood test: its attackers, and the fanout whose memory it watches.
            .env("HERALD_LOADTEST_BIN", debug.join("loadtest"))
            .env("HERALD_FANOUT_PID", programs[0].pid().to_string())
            .env("HERALD_FANOUT_ADMIN", programs[0].admin_url())
            .env("HERALD_NATS_URL", nats.url())
            // The support desk's backend, for the agent page's `backend=`.
            .env("HERALD_DESK_BACKEND", programs[3].http_url())
            .env("HERALD_ARTIFACTS", work.join("screenshots")))
        // The stack stops here, on drop: the programs, then NATS.
    });
    if result.is_err() {
        eprintln!(
            "xtask: browser tests failed; logs and screenshots in {}",
            work.display()
        );
    }
    result
}
