//! Real Prometheus scraping a running NATS, fanout and two gateways with clients on every
//! transport; every PromQL expression of the dashboards and alert rules is evaluated through
//! Prometheus's HTTP API: each parses, and each dashboard query returns data.
//!
//! NATS metrics: prometheus-nats-exporter is not in any registry this project installs from, so
//! the test serves its `-varz` metrics itself, under the exporter's names
//! (`gnatsd_varz_<field>{server_id}` for every numeric field of `/varz`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_deploy::{alert_queries, dashboard_queries, root, tool};
use herald_testkit::client::Connect;
use herald_testkit::{http, jwt, wait_until, NatsServer, Process, WsClient};
use serde_json::{json, Value};

/// `/varz` of the NATS monitor as Prometheus text, as prometheus-nats-exporter names it.
fn varz_metrics(monitor: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", monitor)).expect("NATS monitor");
    write!(s, "GET /varz HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let body = text.split_once("\r\n\r\n").map(|b| b.1).unwrap_or_default();
    let varz: Value = serde_json::from_str(body).expect("varz JSON");
    let id = varz["server_id"].as_str().unwrap_or("nats");
    let mut out = String::new();
    for (k, v) in varz.as_object().expect("object") {
        if let Some(n) = v.as_f64() {
            out.push_str(&format!("gnatsd_varz_{k}{{server_id=\"{id}\"}} {n}\n"));
        }
    }
    out
}

fn serve_varz(monitor: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = [0u8; 2048];
            let _ = conn.read(&mut req);
            let body = varz_metrics(monitor);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus(gateways: &[SocketAddr], fanout: SocketAddr, nats: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr: SocketAddr = ([127, 0, 0, 1], herald_testkit::free_port()).into();
    let list = |a: &[SocketAddr]| a.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  \
         - job_name: herald-gateway\n    static_configs:\n      - targets: [{gw}]\n  \
         - job_name: herald-fanout\n    static_configs:\n      - targets: [{fanout}]\n  \
         - job_name: nats\n    static_configs:\n      - targets: [{nats}]\n",
        rules = root().join("grafana/alerts/herald.rules.yml").display(),
        gw = list(gateways),
        fanout = list(&[fanout]),
        nats = list(&[nats]),
    );
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, config).expect("write config");
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    Prometheus { child, addr, _dir: dir }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/api/v1/query`: (status field, result list).
async fn query(prom: SocketAddr, expr: &str) -> (String, Vec<Value>) {
    let r = http::get(prom, &format!("/api/v1/query?query={}", encode(expr)))
        .await
        .expect("Prometheus answers");
    let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("query {expr}: {}", r.body));
    let status = v["status"].as_str().unwrap_or_default().to_owned();
    assert_eq!(status, "success", "{expr} does not evaluate: {}", r.body);
    (status, v["data"]["result"].as_array().cloned().unwrap_or_default())
}

async fn client(gw: &Process, user: &str) -> WsClient {
    WsClient::open(Connect {
        url: gw.ws_url(),
        token: Some(jwt::any_room(user)),
        ..Default::default()
    })
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_evaluates_and_every_panel_has_data() {
    let nats = NatsServer::start();
    let f = Process::fanout(&nats.url(), "f1", &[]);
    let a = Process::gateway(&nats.url(), "gw-a", &["--presence-heartbeat", "200ms"]).await;
    let b = Process::gateway(&nats.url(), "gw-b", &["--presence-heartbeat", "200ms"]).await;
    f.wait_ready().await;
    let varz = serve_varz(nats.monitor_port());
    let prom = prometheus(&[a.admin, b.admin], f.admin, varz);

    // Clients on every transport and both gateways; a bad op (an error) and an oversized
    // message (a close) so those series exist.
    let mut members = Vec::new();
    for (i, gw) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut c = client(gw, &format!("member-{i}")).await;
        c.op(json!({"op": "subscribe", "id": 1, "room": "ops", "presence": true}))
            .await;
        members.push(c);
    }
    let mut bad = client(&a, "bad").await;
    bad.op(json!({"op": "nonsense"})).await;
    let mut big = client(&b, "big").await;
    big.op(json!({"op": "publish", "id": 1, "room": "ops", "data": "x".repeat(1 << 20)}))
        .await;
    let token = jwt::any_room("reader");
    let _sse = http::Sse::open(b.addr.expect("addr"), &format!("/sse?rooms=ops&token={token}"), &[])
        .await
        .expect("SSE");
    let poll_addr = a.addr.expect("addr");

    // Publish and poll continuously while Prometheus scrapes and the queries run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = std::sync::Arc::clone(&stop);
        let mut publisher = client(&b, "publisher").await;
        let token = token.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publisher
                    .op(json!({"op": "publish", "id": n, "room": "ops", "data": {"n": n}}))
                    .await;
                let _ = http::get(
                    poll_addr,
                    &format!("/poll?rooms=ops&wait=0&sid=poller01&presence=ops&token={token}"),
                )
                .await;
                let _ = http::get(poll_addr, &format!("/poll?rooms=ops&wait=0.05&token={token}")).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Read the members' sockets so they stay healthy consumers.
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut c| tokio::spawn(async move { while c.next_within(Duration::from_secs(60)).await.is_some() {} }))
        .collect();

    wait_until(
        Duration::from_secs(30),
        "Prometheus ready with every target up",
        || async {
            match http::get(prom.addr, "/api/v1/targets?state=active").await {
                Ok(r) => {
                    let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
                    let targets = v["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
                    targets.len() == 4 && targets.iter().all(|t| t["health"] == "up")
                }
                Err(_) => false,
            }
        },
    )
    .await;

    let queries = dashboard_queries();
    assert!(queries.len() >= 45, "{} dashboard queries", queries.len());
    for (file, panel, expr) in &queries {
        let q = expr.replace("$__rate_interval", "10s");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let (_, result) = query(prom.addr, &q).await;
            if !result.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{file}: panel {panel:?} returns no data: {q}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let alerts = alert_queries();
    assert_eq!(alerts.len(), 7);
    for (alert, expr) in &alerts {
        let (status, result) = query(prom.addr, expr).await;
        assert_eq!(status, "success", "{alert}");
        // A healthy stack fires nothing.
        assert!(result.is_empty(), "{alert} would fire on a healthy stack: {result:?}");
    }
    // Prometheus loaded the same rules and they are healthy.
    let r = http::get(prom.addr, "/api/v1/rules").await.expect("rules");
    let v: Value = serde_json::from_str(&r.body).expect("rules JSON");
    let rules: Vec<&Value> = v["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    assert_eq!(rules.len(), 7);
    assert!(rules.iter().all(|r| r["health"] == "ok"), "{rules:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = traffic.await;
    for r in readers {
        r.abort();
    }
}
