//! The project's tasks: `cargo xtask up` ([`up`]: build and run NATS + fanout + two gateways
//! in the foreground until Ctrl-C), `cargo xtask test` ([`test`]: every check: fmt, clippy,
//! all tests, Autobahn, browsers); both install what is missing first ([`tools`]).

mod test;
mod tools;
mod up;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use test::{autobahn, browser, test};
use tools::install;
use up::up;

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

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
