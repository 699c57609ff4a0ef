//! `--jwks-url` against a local JWKS server that rotates its keys mid-test, or stops
//! answering.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use herald_proto::claims::{Claims, Grants};
use herald_testkit::{http, NatsServer, TestGateway};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIN_INTERVAL: Duration = Duration::from_millis(800);

fn data(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The DER inside a PEM file.
fn der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).unwrap()
}

/// The public JWK of the test EC P-256 key (the SPKI ends with the point 04‖x‖y).
fn ec_jwk(kid: &str) -> Value {
    let spki = der(&data("ec_public.pem"));
    let point = &spki[spki.len() - 65..];
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
           "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})
}

/// The public JWK of the test Ed25519 key (the SPKI ends with the 32-byte key).
fn ed_jwk(kid: &str) -> Value {
    let spki = der(&data("ed_public.pem"));
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(&spki[spki.len() - 32..])})
}

fn token(alg: Algorithm, key: &EncodingKey, kid: &str, user: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let claims = Claims {
        sub: user.into(),
        exp: herald_testkit::jwt::now() + 600,
        iat: None,
        name: None,
        herald: Some(Grants {
            sub: vec!["*".into()],
            publish: vec![],
        }),
    };
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// A JWKS endpoint serving `set`, counting its requests; while `stall` is set it reads a
/// request and never answers (the gateway's fetch times out).
async fn jwks_server(set: Arc<Mutex<Value>>, hits: Arc<AtomicU64>, stall: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let (set, hits, stall) = (Arc::clone(&set), Arc::clone(&hits), Arc::clone(&stall));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                if stall.load(Ordering::SeqCst) {
                    // Holds the socket until the gateway gives up on it.
                    let _ = tcp.read(&mut buf).await;
                    return;
                }
                let body = set.lock().unwrap().to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

/// A gateway verifying tokens with the JWKS at `url` (plain http on loopback, so
/// `--jwks-insecure-http`).
async fn jwks_gateway(nats: &NatsServer, url: String, min_interval: Duration) -> TestGateway {
    TestGateway::start_with(&nats.url(), |c| {
        c.auth_hs256_secret = None;
        c.jwks_url = Some(url);
        c.jwks_insecure_http = true;
        c.jwks_min_interval = min_interval;
        c.jwks_refresh = Duration::from_secs(3600);
    })
    .await
}

/// The status of a `/poll` with `token`.
async fn status(gw: &TestGateway, token: &str) -> u16 {
    http::get(gw.addr, &format!("/poll?rooms=lobby&wait=0&token={token}"))
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_through_the_jwks_and_unknown_kids_do_not_hammer_it() {
    let nats = NatsServer::start();
    let set = Arc::new(Mutex::new(json!({"keys": [ec_jwk("k1")]})));
    let hits = Arc::new(AtomicU64::new(0));
    let url = jwks_server(Arc::clone(&set), Arc::clone(&hits), Arc::default()).await;
    let gw = jwks_gateway(&nats, url, MIN_INTERVAL).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once at start");
    let ec = EncodingKey::from_ec_pem(data("ec_private.pem").as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(data("ed_private.pem").as_bytes()).unwrap();
    let old = token(Algorithm::ES256, &ec, "k1", "alice");
    let new = token(Algorithm::EdDSA, &ed, "k2", "bob");
    assert_eq!(status(&gw, &old).await, 200);
    // The right kid with another key's signature, or another algorithm, does not verify.
    assert_eq!(status(&gw, &token(Algorithm::EdDSA, &ed, "k1", "mallory")).await, 401);
    assert_eq!(status(&gw, &new).await, 401, "k2 is not published yet");

    // The provider publishes k2: a token with it verifies at once (its unknown kid fetches).
    set.lock().unwrap()["keys"] = json!([ec_jwk("k1"), ed_jwk("k2")]);
    tokio::time::sleep(MIN_INTERVAL).await;
    let before = hits.load(Ordering::SeqCst);
    assert_eq!(status(&gw, &new).await, 200);
    assert_eq!(hits.load(Ordering::SeqCst), before + 1);
    assert_eq!(status(&gw, &old).await, 200, "old tokens keep working");

    // 300 tokens with made-up kids, at once: all refused, with at most one fetch per
    // --jwks-min-interval.
    tokio::time::sleep(MIN_INTERVAL).await;
    let before = hits.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let flood = made_up_kids(gw.addr, &ed, 300);
    for f in flood {
        assert_eq!(f.await.unwrap(), 401);
    }
    let during = hits.load(Ordering::SeqCst) - before;
    let allowed = 1 + (started.elapsed().as_millis() / MIN_INTERVAL.as_millis()) as u64;
    assert!(
        (1..=allowed).contains(&during),
        "{during} fetches for one flood (allowed {allowed})"
    );

    // k1 is removed: its tokens verify until the gateway next fetches, then never.
    set.lock().unwrap()["keys"] = json!([ed_jwk("k2")]);
    assert_eq!(status(&gw, &old).await, 200, "until the next fetch");
    tokio::time::sleep(MIN_INTERVAL).await;
    assert_eq!(status(&gw, &token(Algorithm::EdDSA, &ed, "k3", "x")).await, 401);
    let r = http::get(gw.addr, &format!("/poll?rooms=lobby&wait=0&token={old}"))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.body.contains("unknown key id `k1`"), "{}", r.body);
    assert_eq!(status(&gw, &new).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_jwks_fetch_does_not_hold_up_unknown_kids_or_known_keys() {
    let nats = NatsServer::start();
    let set = Arc::new(Mutex::new(json!({"keys": [ec_jwk("k1")]})));
    let (hits, stall) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let url = jwks_server(Arc::clone(&set), Arc::clone(&hits), Arc::clone(&stall)).await;
    // No interval between fetches: every unknown kid may start one, none may be in flight.
    let gw = jwks_gateway(&nats, url, Duration::ZERO).await;
    let ec = EncodingKey::from_ec_pem(data("ec_private.pem").as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(data("ed_private.pem").as_bytes()).unwrap();
    let known = token(Algorithm::ES256, &ec, "k1", "alice");
    assert_eq!(status(&gw, &known).await, 200);

    // The provider stops answering: its next fetch hangs for the gateway's whole fetch
    // timeout (5 s). 200 connections with made-up kids arrive at once.
    stall.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let flood = made_up_kids(gw.addr, &ed, 200);
    // Meanwhile known keys verify without waiting for the fetch.
    for _ in 0..10 {
        let answer = tokio::time::timeout(Duration::from_millis(500), status(&gw, &known)).await;
        assert_eq!(answer, Ok(200), "a known key while the fetch hangs");
    }
    // Every made-up kid is refused after at most the bounded wait (1 s), long before the
    // fetch gives up.
    let all = async {
        let mut codes = Vec::new();
        for f in flood {
            codes.push(f.await.unwrap());
        }
        codes
    };
    let codes = tokio::time::timeout(Duration::from_secs(3), all)
        .await
        .expect("the made-up kids are answered within 3 s");
    assert!(codes.iter().all(|&c| c == 401), "{codes:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one fetch at start, one for the flood");
}

/// `n` polls at once, each with a token naming a `kid` nobody has; their statuses.
fn made_up_kids(addr: std::net::SocketAddr, key: &EncodingKey, n: usize) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..n)
        .map(|i| {
            let t = token(Algorithm::EdDSA, key, &format!("made-up-{i}"), "mallory");
            tokio::spawn(async move {
                http::get(addr, &format!("/poll?rooms=lobby&wait=0&token={t}"))
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect()
}
