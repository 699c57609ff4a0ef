//! The shipped nginx config, run by a real nginx with a generated certificate, in front of two
//! real gateways: wss, SSE and long-poll clients receive events through it, and connections
//! are spread over both gateways.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_proto::frame::ServerFrame;
use herald_testkit::client::Connect;
use herald_testkit::tls::TestCert;
use herald_testkit::{jwt, wait_until, NatsServer, Process, WsClient};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn nginx(upstreams: [&str; 2], cert: &TestCert) -> Nginx {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = herald_testkit::free_port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        herald_deploy::nginx_config(upstreams, port, &cert.cert_path(), &cert.key_path()),
    )
    .expect("write nginx.conf");
    let child = Command::new(herald_deploy::tool("nginx"))
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let n = Nginx { child, port, _dir: dir };
    wait_until(Duration::from_secs(10), "nginx listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    n
}

/// One HTTPS request through nginx, HTTP/1.0 so the answer ends at EOF; (status, body).
async fn https(cert: &TestCert, port: u16, head: &str, body: &str) -> (u16, String) {
    let mut tls = cert.connect(([127, 0, 0, 1], port).into()).await.expect("TLS");
    tls.write_all(
        format!(
            "{head}\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut buf))
        .await
        .expect("answer within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").expect("HTTP answer");
    let status = h
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, b.to_owned())
}

async fn wss(cert: &TestCert, port: u16, user: &str) -> WsClient {
    let tls = cert.connect(([127, 0, 0, 1], port).into()).await.expect("TLS");
    let mut c = WsClient::open_on(
        tls,
        "localhost",
        "/ws".into(),
        Connect {
            url: "wss://localhost/ws".into(),
            token: Some(jwt::any_room(user)),
            token_in_header: true,
            ..Default::default()
        },
    )
    .await
    .expect("wss through nginx");
    assert!(matches!(c.recv().await, ServerFrame::Welcome(_)));
    c
}

/// Reads the stream into `text` until it contains `needle`; 10 s at most per read.
async fn read_until(stream: &mut (impl AsyncReadExt + Unpin), text: &mut String, needle: &str) {
    let mut chunk = [0u8; 4096];
    while !text.contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} within 10 s; got {text}"))
            .expect("read");
        assert!(n > 0, "stream closed before {needle:?}: {text}");
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_terminates_tls_for_wss_sse_and_long_poll_across_two_gateways() {
    let nats = NatsServer::start();
    let a = Process::gateway(&nats.url(), "gw-a", &[]).await;
    let b = Process::gateway(&nats.url(), "gw-b", &[]).await;
    let cert = TestCert::new();
    let ups = [a.addr.expect("addr").to_string(), b.addr.expect("addr").to_string()];
    let proxy = nginx([&ups[0], &ups[1]], &cert).await;
    let port = proxy.port;
    let token = jwt::any_room("reader");

    // Four WebSocket clients over wss; least_conn puts them on both gateways.
    let mut ws = Vec::new();
    for i in 0..4 {
        let mut c = wss(&cert, port, &format!("ws-{i}")).await;
        c.subscribe("lobby", None).await;
        ws.push(c);
    }
    assert!(a.metric("herald_gateway_connections{transport=\"websocket\"}").await >= 1.0);
    assert!(b.metric("herald_gateway_connections{transport=\"websocket\"}").await >= 1.0);

    // SSE through nginx: the stream starts (": herald") before anything is published.
    let mut sse = cert.connect(([127, 0, 0, 1], port).into()).await.expect("TLS");
    sse.write_all(
        format!("GET /sse?rooms=lobby HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut sse_text = String::new();
    read_until(&mut sse, &mut sse_text, ": herald").await;
    assert!(sse_text.starts_with("HTTP/1.1 200"), "{sse_text}");
    assert!(sse_text
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));

    // Long-poll through nginx: the live tail first, then a parked request.
    let (status, body) = https(
        &cert,
        port,
        &format!("GET /poll?rooms=lobby&wait=0&token={token} HTTP/1.0"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cursor = serde_json::from_str::<Value>(&body).expect("poll JSON")["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let parked = {
        let path = format!("/poll?rooms=lobby&wait=20&cursor={cursor}&token={token}");
        let cert = &cert;
        async move { https(cert, port, &format!("GET {path} HTTP/1.0"), "").await }
    };
    let publish = async {
        // Give the long-poll time to park, then publish over HTTPS through nginx.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = json!({"room": "lobby", "data": {"text": "through nginx"}}).to_string();
        https(
            &cert,
            port,
            &format!(
                "POST /publish HTTP/1.0\r\nAuthorization: Bearer {}\r\nContent-Type: application/json",
                jwt::any_room("writer")
            ),
            &body,
        )
        .await
    };
    let ((lp_status, lp_body), (pub_status, pub_body)) = tokio::join!(parked, publish);
    assert_eq!(pub_status, 200, "{pub_body}");
    let seq = serde_json::from_str::<Value>(&pub_body).expect("publish JSON")["seq"]
        .as_u64()
        .expect("seq");
    assert_eq!(lp_status, 200, "{lp_body}");
    let answer: Value = serde_json::from_str(&lp_body).expect("long-poll JSON");
    let events = answer["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{answer}");
    assert_eq!(events[0]["seq"], seq);
    assert_eq!(events[0]["data"], json!({"text": "through nginx"}));

    // Every WebSocket client, on either gateway, gets the event once.
    for c in &mut ws {
        let e = c.event().await;
        assert_eq!((e.room.as_str(), e.seq), ("lobby", seq));
        assert_eq!(e.data, Some(json!({"text": "through nginx"})));
    }
    // And the SSE stream carries it, with its cursor as the id.
    read_until(&mut sse, &mut sse_text, "through nginx").await;
    assert!(sse_text.contains(&format!("id: lobby:{seq}\n")), "{sse_text}");
}
