//! `loadtest hold` over several worker processes and `loadtest bench`'s rising rate, small,
//! on a real nats-server and real gateways.

use std::process::Command;

use serde_json::Value;

fn run(args: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .args(["--report-dir", dir.path().to_str().expect("utf-8 path")])
        .env("HERALD_NATS_SERVER", herald_testkit::nats::find_binary())
        .output()
        .expect("loadtest runs");
    (out, dir)
}

fn report(dir: &tempfile::TempDir) -> Value {
    for f in ["report.md", "report.html"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("report.json")).expect("json")
}

#[test]
fn hold_spreads_connections_over_workers_gateways_and_sources_and_delivers_the_broadcast() {
    let (out, dir) = run(&[
        "hold",
        "--spawn-gateways",
        "2",
        "--connections",
        "300",
        "--per-process",
        "100",
        "--rooms",
        "3",
        "--sources",
        "127.0.0.1,127.0.0.2",
        "--broadcast-rate",
        "2",
        "--hold",
        "3s",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&dir);
    assert_eq!(r["held"], 300);
    assert_eq!(r["workers"], 3);
    assert_eq!(r["gateways"], 2);
    assert_eq!(r["closed"], 0);
    let published = r["published"].as_u64().expect("published");
    assert!(published >= 5, "2/s for 3 s: {published}");
    assert_eq!(r["expected"].as_u64(), Some(published * 300));
    assert_eq!(
        r["delivered"], r["expected"],
        "every broadcast event reached every connection"
    );
    assert_eq!(r["gaps"], 0);
    assert_eq!(r["workers_detail"].as_array().expect("workers").len(), 3);
    assert!(r["gateway_kib_per_connection"].as_f64().expect("per connection") > 0.0);
    assert_eq!(r["servers_measured"], "gateway ×2 + nats-server + fanout");
    assert_eq!(r["hold"].as_array().expect("shares").len(), 3, "one share per role");
    assert!(r["stack_kib_per_connection"].as_f64().expect("stack") > 0.0);
    assert!(r["stack_connect_cpu_us_per_connection"].as_f64().expect("connect CPU") > 0.0);
    assert!(!r["revision"].as_str().expect("revision").is_empty());
}

#[test]
fn bench_raises_the_rate_until_the_last_step_and_reports_cpu_per_million() {
    let (out, dir) = run(&[
        "bench",
        "--spawn",
        "--subscribers",
        "50",
        "--start-rate",
        "20",
        "--factor",
        "2",
        "--max-rate",
        "40",
        "--step-time",
        "2s",
        "--p99-limit",
        "10s",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&dir);
    let steps = r["steps"].as_array().expect("steps");
    let rates: Vec<f64> = steps.iter().map(|s| s["rate"].as_f64().expect("rate")).collect();
    assert_eq!(rates, [20.0, 40.0]);
    for s in steps {
        assert_eq!(
            s["delivered"].as_u64(),
            Some(s["published"].as_u64().expect("published") * 50)
        );
        // CPU time is counted in clock ticks, so one short step may read 0.
        let cpu = s["cpu_s_per_million"].as_f64().expect("cpu");
        assert!(cpu.is_finite() && cpu >= 0.0, "{cpu}");
        assert!(s["p99_ms"].as_f64().expect("p99") > 0.0);
        assert_eq!((s["gaps"].as_u64(), s["duplicates"].as_u64()), (Some(0), Some(0)));
    }
    assert_eq!(r["servers_measured"], "gateway + nats-server + fanout");
    assert_eq!(steps[1]["published"], 80);
    let cpu: f64 = steps.iter().map(|s| s["gateway_cpu_s"].as_f64().expect("cpu")).sum();
    assert!(cpu > 0.0, "the gateway's CPU over the run is measured");
    assert!(r["verdict"]
        .as_str()
        .expect("verdict")
        .contains("deliveries/s with p99"));
}
