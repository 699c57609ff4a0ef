//! Herald's deployment artefacts live beside this crate (`compose/`, `k8s/`, `nginx/`, `docker/`)
//! and in `grafana/`; its tests check them with the real tools (kubectl kustomize,
//! kubernetes-validate, check-jsonschema, nginx, promtool, Prometheus) and a running stack.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// A tool on PATH, in /usr/sbin or /usr/bin, or in `target/tools/venv/bin` (where `cargo xtask
/// test` installs the PyPI ones). Panics with how to get it.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.push(root().join("target/tools/venv/bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: `cargo xtask test` installs it (Debian or PyPI)"))
}

/// The PromQL expressions of every dashboard panel: (dashboard file, panel title, expr).
pub fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, dash) in dashboards() {
        for panel in dash["panels"].as_array().into_iter().flatten() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.push((
                    file.clone(),
                    panel["title"].as_str().unwrap_or_default().to_owned(),
                    t["expr"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    out
}

/// Every dashboard in `grafana/dashboards/`, parsed.
pub fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = root().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("grafana/dashboards")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("dashboard");
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().expect("name").to_string_lossy().into_owned(), json)
        })
        .collect()
}

/// The `expr:` of every alerting rule in `grafana/alerts/*.rules.yml` (one line each).
pub fn alert_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("grafana/alerts/herald.rules.yml")).expect("rules");
    let mut out = Vec::new();
    let mut alert = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert: ") {
            alert = name.to_owned();
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            assert!(
                !expr.starts_with('|') && !expr.starts_with('>'),
                "{alert}: keep expr on one line"
            );
            out.push((alert.clone(), expr.to_owned()));
        }
    }
    out
}

/// The shipped nginx config with test upstreams and certificate paths.
pub fn nginx_config(upstreams: [&str; 2], listen: u16, cert: &Path, key: &Path) -> String {
    let conf = std::fs::read_to_string(root().join("deploy/nginx/nginx.conf")).expect("nginx.conf");
    for needle in [
        "gateway-a:8080",
        "gateway-b:8080",
        "listen 8443 ssl",
        "/etc/nginx/tls/tls.crt",
    ] {
        assert!(conf.contains(needle), "nginx.conf lacks {needle}");
    }
    conf.replace("gateway-a:8080", upstreams[0])
        .replace("gateway-b:8080", upstreams[1])
        .replace("listen 8443 ssl", &format!("listen 127.0.0.1:{listen} ssl"))
        .replace("/etc/nginx/tls/tls.crt", &cert.to_string_lossy())
        .replace("/etc/nginx/tls/tls.key", &key.to_string_lossy())
}

/// The NATS users of `deploy/k8s/base/nats-auth.conf`, for tests that run it: (user, the
/// environment variable it reads the password from, a test password).
pub const NATS_USERS: [(&str, &str, &str); 3] = [
    (
        "herald-gateway",
        "HERALD_NATS_GATEWAY_PASSWORD",
        "gateway-pw-0123456789",
    ),
    ("herald-fanout", "HERALD_NATS_FANOUT_PASSWORD", "fanout-pw-0123456789"),
    (
        "herald-backend",
        "HERALD_NATS_BACKEND_PASSWORD",
        "backend-pw-0123456789",
    ),
];

/// A deploy user's test password ([`NATS_USERS`]).
pub fn nats_password(user: &str) -> &'static str {
    NATS_USERS
        .iter()
        .find(|(u, _, _)| *u == user)
        .map(|(_, _, password)| *password)
        .unwrap_or_else(|| panic!("{user} is not a deploy user"))
}

/// Sets every deploy user's password variable, for a nats-server started after it.
pub fn set_nats_passwords() {
    for (_, var, password) in NATS_USERS {
        std::env::set_var(var, password);
    }
}

/// `url` with `user`'s credentials, as the services take it (`--nats-url`).
pub fn nats_user_url(url: &str, user: &str) -> String {
    url.replacen("nats://", &format!("nats://{user}:{}@", nats_password(user)), 1)
}
