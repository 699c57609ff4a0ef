//! `loadtest chat --target nchan`, small, on a real nginx with the nchan module: every event
//! POSTed reaches every subscriber of its room, once and in order, and the report covers
//! nginx's master and workers. Skips (saying so) where nginx or nchan is not installed;
//! `cargo xtask test` installs both.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// nginx and the nchan module where `loadtest` looks for them, if both are there.
fn installed() -> bool {
    let nginx = std::env::var_os("HERALD_NGINX").map(PathBuf::from).or_else(|| {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.push("/usr/sbin".into());
        dirs.into_iter().map(|d| d.join("nginx")).find(|p| p.is_file())
    });
    let module = match std::env::var_os("HERALD_NCHAN_MODULE") {
        Some(m) => m.is_empty() || PathBuf::from(m).is_file(),
        None => [
            "/usr/lib/nginx/modules/ngx_nchan_module.so",
            "/usr/lib64/nginx/modules/ngx_nchan_module.so",
            "/usr/local/nginx/modules/ngx_nchan_module.so",
        ]
        .iter()
        .any(|p| PathBuf::from(p).is_file()),
    };
    nginx.is_some() && module
}

#[test]
fn chat_against_nchan_delivers_every_post_to_its_rooms_subscribers_in_order() {
    if !installed() {
        eprintln!(
            "skipped: nginx with the nchan module is not installed (Debian: apt-get install nginx libnginx-mod-nchan)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["chat", "--target", "nchan", "--rooms", "6", "--subscribers", "2"])
        .args([
            "--rate",
            "60",
            "--run-time",
            "2s",
            "--idle-time",
            "1s",
            "--drain-time",
            "5s",
        ])
        .args(["--nginx-workers", "2", "--publish-connections", "4"])
        .args(["--report-dir", dir.path().to_str().expect("utf-8 path")])
        .output()
        .expect("loadtest runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["report.md", "report.html", "nginx/nginx.conf"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("report.json")).expect("json");
    assert_eq!(r["target"], "nchan");
    assert_eq!(r["connected"], 12);
    assert_eq!(r["published"]["sent"], 120);
    assert_eq!(r["published"]["acked"], 120, "nchan accepted every POST");
    assert_eq!(r["expected"], 240);
    assert_eq!(r["delivered"], 240);
    assert_eq!(
        (&r["lost"], &r["duplicates"], &r["out_of_order"]),
        (&0.into(), &0.into(), &0.into())
    );
    assert_eq!(r["servers_measured"], "nginx ×3");
    let names: Vec<&str> = r["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| p["process"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["nginx master", "nginx worker 1", "nginx worker 2"]);
    assert!(
        r["nats_msgs_per_event"].is_null(),
        "no NATS: {}",
        r["nats_msgs_per_event"]
    );
}
