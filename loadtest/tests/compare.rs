//! `loadtest compare --spawn` end to end on a real nats-server and real gateways: a short run
//! of every mode, the report's structure, complete delivery for push and long-poll, and a
//! threshold gate that fails the exit code.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn loadtest(dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("compare")
        .arg("--spawn")
        .args(["--report-dir", dir.to_str().expect("utf-8 path")])
        .args(extra)
        .env("HERALD_NATS_SERVER", herald_testkit::nats::find_binary())
        .output()
        .expect("loadtest runs")
}

#[test]
fn a_smoke_compare_reports_every_mode_and_delivers_everything_over_push_and_long_poll() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = loadtest(
        dir.path(),
        &[
            "--users",
            "40",
            "--rooms",
            "4",
            "--rate",
            "20",
            "--run-time",
            "8s",
            "--poll-interval",
            "1s",
            "--long-poll-wait",
            "5s",
            "--threshold",
            "error-rate<1%",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed: {stderr}");

    for f in ["report.md", "report.json", "report.html", "cdf.svg", "bytes.svg"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let report: Value = serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("report.json"))
        .expect("report.json parses");
    let modes = report["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().expect("mode name")).collect();
    assert_eq!(names, ["ws", "sse", "long-poll", "poll-1s"]);
    // CPU is counted in clock ticks, so one short mode may read 0; the run's total may not.
    let nats_cpu: f64 = modes.iter().map(|m| m["nats_cpu_s"].as_f64().expect("nats cpu")).sum();
    assert!(nats_cpu > 0.0, "nats-server's CPU is measured beside the gateway's");
    for m in modes {
        let name = m["mode"].as_str().expect("name");
        assert_eq!(m["clients"], 40, "{name}");
        assert_eq!(m["subscribed"], 40, "{name}");
        assert_eq!(m["published"], 160, "{name}: 20/s for 8 s");
        // 160 events over 4 rooms of 10 subscribers each.
        assert_eq!(m["expected"], 1600, "{name}");
        assert_eq!(m["errors"], 0, "{name}");
        assert_eq!(m["duplicates"], 0, "{name}");
        for key in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(m["latency_ms"][key].as_f64().expect(key) > 0.0, "{name} {key}");
        }
        assert!(m["cdf"].as_array().expect("cdf").len() > 10, "{name} cdf");
        assert!(
            m["gateway_cpu_s"].as_f64().expect("cpu") > 0.0,
            "{name} gateway CPU sampled"
        );
        assert!(
            m["gateway_rss_peak_kib"].as_u64().expect("rss") > 0,
            "{name} gateway RSS sampled"
        );
        assert!(
            m["bytes"]["down_payload"].as_u64().expect("bytes") > 0,
            "{name} bytes counted"
        );
        assert_eq!(
            m["thresholds_failed"].as_array().expect("thresholds").len(),
            0,
            "{name}"
        );
    }
    for name in ["ws", "long-poll"] {
        let m = modes.iter().find(|m| m["mode"] == name).expect("mode present");
        assert_eq!(m["delivered"], m["expected"], "{name}: every event to every client");
        assert_eq!(m["gaps"], 0, "{name}");
    }
    let by = |n: &str| modes.iter().find(|m| m["mode"] == n).expect("mode");
    assert_eq!(by("ws")["http_requests"], 0, "push makes no HTTP requests");
    assert_eq!(by("sse")["http_requests"], 0);
    assert!(by("long-poll")["http_requests"].as_u64().expect("requests") > 0);
    // Ajax polling at T = 1 s: about N/T = 40 requests per second of the window.
    let poll = by("poll-1s");
    let per_s = poll["http_requests"].as_f64().expect("requests") / poll["window_s"].as_f64().expect("window");
    assert!((30.0..=50.0).contains(&per_s), "poll-1s: {per_s} requests/s");
    // Latency of polling is spread over T; push is not.
    assert!(poll["latency_ms"]["p90"].as_f64().expect("p90") > 300.0);

    let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
    for needle in [
        "## Summary",
        "| mode | clients | delivered | gaps/dups | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | HTTP req/s |",
        "## Theory against measurement",
        "![cdf](cdf.svg)",
        "| poll-1s |",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}");
    }
    let html = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
    assert!(html.matches("<svg").count() >= 6, "charts are inline");
    assert!(!html.contains("<script") && !html.contains("<link"), "self-contained");
    assert!(
        dir.path().join("goose-ws.json").is_file(),
        "goose's own report per mode"
    );
}

#[test]
fn a_failed_threshold_fails_the_run_and_names_the_rule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = loadtest(
        dir.path(),
        &[
            "--modes",
            "ws",
            "--users",
            "10",
            "--rooms",
            "1",
            "--rate",
            "10",
            "--run-time",
            "3s",
            "--threshold",
            "p50<1us for WS deliver",
            "--threshold",
            "p99<1s for GET poll",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an impossible threshold must fail the run: {stderr}"
    );
    assert!(stderr.contains("threshold failed in ws"), "{stderr}");
    assert!(stderr.contains("p50<1us"), "{stderr}");
    assert!(
        !stderr.contains("p99<1s"),
        "a rule for another mode's row is not judged here: {stderr}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("written anyway")).expect("json");
    assert_eq!(
        report["modes"][0]["delivered"], 300,
        "10 events/s for 3 s to 10 clients"
    );
}
