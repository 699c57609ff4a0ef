//! `flood`: anonymous clients that name themselves anew (a fresh random `sid`) on every
//! request, as an attacker resets per-user limits: `/poll` with presence on many rooms,
//! `POST /publish`, `/sse` with presence and watched users, and WebSocket connections that
//! subscribe with presence and watch a thousand random users. Prints, as JSON, how many
//! requests of each kind got which answer. Aimed at loopback only.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use herald_proto::frame::ClientOp;
use herald_proto::http::path;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Conn;

#[derive(Debug, Args)]
pub struct FloodArgs {
    /// The gateway's public address (`host:port`, loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: SocketAddr,
    /// Clients flooding at once.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// How long they flood.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Loopback source addresses, spread over the clients (each is one "address" to the
    /// gateway's per-address limits).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2")]
    sources: Vec<IpAddr>,
    /// Rooms each presence request names (`p0`, `p1`, ...).
    #[arg(long, default_value_t = 128)]
    presence_rooms: usize,
    /// The room the flood joins with presence (its WebSocket and SSE clients).
    #[arg(long, default_value = "lobby")]
    room: String,
    /// The room the flood publishes to.
    #[arg(long, default_value = "flood")]
    publish_room: String,
    /// The kinds of request each client cycles through (poll, poll-all-rooms, publish, sse,
    /// ws); all by default.
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
}

/// What one kind of request got: answers (HTTP status, `ws:open` or a refused upgrade's
/// status) and their counts.
type Tally = BTreeMap<&'static str, BTreeMap<String, u64>>;

/// The kinds of request, in the order each client cycles through them.
const KINDS: [&str; 5] = ["poll", "publish", "sse", "ws", "poll-all-rooms"];

/// Longest one request of the flood may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(args: FloodArgs) -> Result<()> {
    if !args.gateway.ip().is_loopback() || args.sources.iter().any(|s| !s.is_loopback()) {
        bail!("flood aims at loopback only: the gateway and every source must be 127.0.0.0/8 or ::1");
    }
    if args.sources.is_empty() || args.clients == 0 {
        bail!("at least one client and one source");
    }
    if let Some(k) = args.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        bail!("unknown kind {k:?}: one of {KINDS:?}");
    }
    let kinds: Vec<&'static str> = KINDS
        .iter()
        .copied()
        .filter(|k| args.kinds.is_empty() || args.kinds.iter().any(|a| a == k))
        .collect();
    let kinds = Arc::new(kinds);
    let args = Arc::new(args);
    let tally = Arc::new(Mutex::new(Tally::new()));
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let (args, tally, kinds) = (Arc::clone(&args), Arc::clone(&tally), Arc::clone(&kinds));
        let source = args.sources[i % args.sources.len()];
        clients.push(tokio::spawn(async move {
            let mut k = i;
            while tokio::time::Instant::now() < deadline {
                let kind = kinds[k % kinds.len()];
                k += 1;
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, one(&args, source, kind))
                    .await
                    .unwrap_or_else(|_| "timeout".to_owned());
                *tally
                    .lock()
                    .expect("tally")
                    .entry(kind)
                    .or_default()
                    .entry(answer)
                    .or_default() += 1;
            }
        }));
    }
    for c in clients {
        c.await.context("a flood client panicked")?;
    }
    let tally = tally.lock().expect("tally").clone();
    let total: u64 = tally.values().flat_map(BTreeMap::values).sum();
    println!("{}", serde_json::json!({ "requests": total, "answers": tally }));
    Ok(())
}

fn sid() -> String {
    let n: u64 = rand::rng().random();
    format!("flood-{n:016x}")
}

fn rooms(n: usize) -> String {
    (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>().join(",")
}

fn random_users(n: usize) -> Vec<String> {
    (0..n).map(|_| sid()).collect()
}

/// One request of `kind`; its answer.
async fn one(args: &FloodArgs, source: IpAddr, kind: &str) -> String {
    let presence_rooms = args.presence_rooms.min(herald_proto::room::MAX_ROOM_LEN);
    let answer = match kind {
        // Within --max-presence-rooms (32 by default), so that it reaches the session caps.
        "poll" => {
            let q = format!("rooms={}&presence=1&watch=u1,u2&wait=0&sid={}", rooms(32), sid());
            http(args.gateway, source, &format!("GET {}?{q}", path::POLL), "", false).await
        }
        "poll-all-rooms" => {
            let q = format!("rooms={}&presence=1&wait=0&sid={}", rooms(presence_rooms), sid());
            http(args.gateway, source, &format!("GET {}?{q}", path::POLL), "", false).await
        }
        "publish" => {
            let body = format!(r#"{{"room":"{}","data":{{"flood":true}}}}"#, args.publish_room);
            let line = format!("POST {}?sid={}", path::PUBLISH, sid());
            http(args.gateway, source, &line, &body, false).await
        }
        "sse" => {
            let users = random_users(100).join(",");
            let q = format!(
                "rooms={},{}&presence=1&watch={users}&sid={}",
                args.room,
                rooms(8),
                sid()
            );
            http(args.gateway, source, &format!("GET {}?{q}", path::SSE), "", true).await
        }
        _ => ws(args, source).await,
    };
    answer.unwrap_or_else(|| "failed".to_owned())
}

/// An HTTP request from `source`; the answer's status. A stream (`sse`) is read for a
/// moment, then dropped.
async fn http(gateway: SocketAddr, source: IpAddr, line: &str, body: &str, stream: bool) -> Option<String> {
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let mut tcp = socket.connect(gateway).await.ok()?;
    let raw = format!(
        "{line} HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(raw.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = tcp.read(&mut buf).await.ok()?;
    let status = String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)?;
    if stream {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await;
    } else {
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    }
    Some(status)
}

/// A WebSocket connection with a fresh sid: presence on the flood's room and eight more,
/// a thousand random users watched, a moment of reading, then gone.
async fn ws(args: &FloodArgs, source: IpAddr) -> Option<String> {
    let url = format!("ws://{}{}?sid={}", args.gateway, path::WS, sid());
    let mut c = match Conn::open(&url, source, None).await {
        Ok(c) => c,
        Err(e) => {
            let refused = e
                .chain()
                .find_map(|c| c.downcast_ref::<herald_harness::ws::OpenError>())
                .and_then(|e| match e {
                    herald_harness::ws::OpenError::Refused(status) => Some(*status),
                    _ => None,
                });
            return Some(refused.map_or_else(|| "ws:failed".to_owned(), |s| format!("ws:{s}")));
        }
    };
    let rooms = std::iter::once(args.room.clone()).chain((0..8).map(|i| format!("p{i}")));
    for room in rooms {
        let op = ClientOp::Subscribe {
            room,
            since: None,
            presence: true,
            token: None,
        };
        c.send_op(op).await.ok()?;
    }
    c.send_op(ClientOp::Watch {
        users: random_users(1000),
    })
    .await
    .ok()?;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while c.next_data().await.is_ok() {}
    })
    .await;
    Some("ws:open".to_owned())
}
