//! Process-level: exit codes, SIGTERM drain with many clients.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_testkit::client::Incoming;
use herald_testkit::{free_port, http, jwt, wait_until, NatsServer, WsClient};

const CLIENTS: usize = 1000;

fn gateway_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald-gateway"));
    c.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

#[test]
fn refuses_to_start_without_auth_with_exit_64() {
    let out = gateway_bin().output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-anonymous"), "{stderr}");
}

#[test]
fn refuses_short_hs256_secrets_http_jwks_urls_and_bad_partition_counts_with_exit_64() {
    let secret32 = "0123456789abcdef0123456789abcdef";
    let cases: [(&[&str], &str); 7] = [
        (&["--auth-hs256-secret", ""], "at least 32 bytes"),
        (&["--auth-hs256-secret", "herald-dev-secret"], "at least 32 bytes"),
        (&["--auth-hs256-secret", &secret32[1..]], "at least 32 bytes"),
        (&["--jwks-url", "http://127.0.0.1:9/jwks.json"], "--jwks-insecure-http"),
        (
            &["--jwks-url", "ftp://id.example/jwks.json", "--jwks-insecure-http"],
            "https",
        ),
        (
            &["--auth-hs256-secret", secret32, "--stream-partitions", "0"],
            "--stream-partitions must be 1 to 1024",
        ),
        (
            &["--auth-hs256-secret", secret32, "--stream-partitions", "1025"],
            "--stream-partitions must be 1 to 1024",
        ),
    ];
    for (args, says) in cases {
        let out = gateway_bin().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn help_documents_every_flag_with_its_env_variable() {
    let out = gateway_bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "listen",
        "admin-listen",
        "nats-url",
        "gateway-id",
        "auth-hs256-secret",
        "auth-public-key",
        "jwks-url",
        "jwks-refresh",
        "jwks-min-interval",
        "jwks-insecure-http",
        "poll-session-ttl",
        "poll-leave-grace",
        "allow-anonymous",
        "allowed-origins",
        "tls-cert",
        "tls-key",
        "max-connections",
        "max-message-bytes",
        "max-subscriptions",
        "ping-interval",
        "outbound-buffer-bytes",
        "publish-rate",
        "poll-max-wait",
        "drain-timeout",
        "log-format",
        "echo-endpoint",
        "stream-partitions",
    ] {
        assert!(help.contains(&format!("--{flag}")), "--{flag} missing from --help");
        let env = format!("HERALD_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&env), "{env} missing from --help");
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_client_with_1012_and_exits_0() {
    let nats = NatsServer::start();
    let (port, admin_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let drain = Duration::from_secs(4);
    let mut proc = Proc(
        gateway_bin()
            .env("HERALD_LISTEN", addr.to_string())
            .env("HERALD_ADMIN_LISTEN", admin.to_string())
            .env("HERALD_NATS_URL", nats.url())
            .env("HERALD_AUTH_HS256_SECRET", jwt::SECRET)
            .env("HERALD_DRAIN_TIMEOUT", "4s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(20), "gateway ready", || async move {
        http::get(admin, "/readyz")
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false)
    })
    .await;

    let url = format!("ws://{addr}/ws");
    let token = jwt::any_room("many");
    let mut clients = Vec::with_capacity(CLIENTS);
    for chunk in 0..CLIENTS / 100 {
        let batch = (0..100).map(|_| {
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move { WsClient::connect(&url, &token).await })
        });
        for c in batch {
            clients.push(c.await.unwrap());
        }
        assert_eq!(clients.len(), (chunk + 1) * 100);
    }
    let metrics = http::get(admin, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains(&format!(
            "herald_gateway_connections{{transport=\"websocket\"}} {CLIENTS}"
        )),
        "{metrics}"
    );

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(Duration::from_secs(1), "/readyz 503 at once", || async move {
        http::get(admin, "/readyz")
            .await
            .map(|r| r.status == 503)
            .unwrap_or(false)
    })
    .await;
    // New connections are refused while draining.
    assert!(WsClient::open(herald_testkit::client::Connect {
        url: url.clone(),
        token: Some(token),
        ..Default::default()
    })
    .await
    .is_err());

    let closes = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.next_within(Duration::from_secs(10)).await }));
    let mut codes = Vec::new();
    for c in closes {
        codes.push(c.await.unwrap());
    }
    let all_1012 = codes.iter().filter(|c| **c == Some(Incoming::Closed(1012))).count();
    assert_eq!(all_1012, CLIENTS, "every client gets 1012");

    let deadline = Instant::now() + drain + Duration::from_secs(5);
    let code = loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "gateway still running after the drain timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() <= drain + Duration::from_secs(1),
        "exit took {:?}",
        started.elapsed()
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    use std::io::BufRead;
    let nats = NatsServer::start();
    let mut child = Proc(
        gateway_bin()
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_ADMIN_LISTEN", "127.0.0.1:0")
            .env("HERALD_NATS_URL", nats.url())
            .env("HERALD_ALLOW_ANONYMOUS", "true")
            .env("HERALD_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("a 'Gateway serving' log line within 20 s");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["fields"]["message"] == "Gateway serving" {
            assert_eq!(v["level"], "INFO");
            assert!(v["fields"]["listen"].as_str().unwrap().starts_with("127.0.0.1:"));
            break;
        }
    }
}
