//! The soak's hostile clients: a stream of attacks of several kinds against the gateways,
//! each checked against the answer the contract gives.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::frame::{ClientOp, ServerFrame};
use herald_proto::ErrorCode;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Conn;
use crate::soak::Hostile;

// === hostile clients ===

/// What each hostile action sends, and what the contract says must come back.
pub(crate) const ACTIONS: [&str; 10] = [
    "ws bad type (a\\nb)",
    "ws invalid UTF-8",
    "ws binary on JSON",
    "ws oversized frame",
    "ws since u64::MAX",
    "ws vanish mid-subscribe",
    "http bad query",
    "http sse then vanish",
    "http slow body",
    "http long-poll with presence then vanish",
];

pub(crate) async fn hostile_clients(http: Vec<String>, rate: f64, stop: Arc<tokio::sync::Notify>) -> Hostile {
    let mut out = Hostile::default();
    if rate <= 0.0 {
        return out;
    }
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let results = Arc::new(std::sync::Mutex::new(Vec::<(&'static str, bool)>::new()));
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = every.tick() => {}
        }
        let kind = rand::rng().random_range(0..ACTIONS.len());
        let base = http[rand::rng().random_range(0..http.len())].clone();
        let results = Arc::clone(&results);
        tokio::spawn(async move {
            let ok = tokio::time::timeout(Duration::from_secs(20), hostile_action(kind, &base))
                .await
                .unwrap_or(false);
            results.lock().expect("results").push((ACTIONS[kind], ok));
        });
    }
    tokio::time::sleep(Duration::from_secs(21)).await;
    for (kind, ok) in results.lock().expect("results").drain(..) {
        *out.done.entry(kind).or_default() += 1;
        if !ok {
            *out.unexpected.entry(kind).or_default() += 1;
        }
    }
    out
}

/// Runs one hostile action; true when the gateway answered as the contract says.
pub(crate) async fn hostile_action(kind: usize, base: &str) -> bool {
    let addr = base.trim_start_matches("http://").to_owned();
    let ws = format!("ws://{addr}{}", herald_proto::http::path::WS);
    let local: IpAddr = [127, 0, 0, 1].into();
    match kind {
        0 => {
            ws_expect(
                &ws,
                br#"{"op":"publish","id":1,"room":"soak-0","data":1,"type":"a\nb"}"#,
                true,
                Some(ErrorCode::BadRequest),
            )
            .await
        }
        1 => ws_close(&ws, &[b'{', 0xff, b'}'], true, 1007).await,
        2 => ws_close(&ws, b"\x93\x01\x02\x03", false, 1003).await,
        3 => ws_close(&ws, &vec![b'x'; 70_000], true, 1009).await,
        4 => {
            ws_expect(
                &ws,
                br#"{"op":"subscribe","id":1,"room":"soak-1","since":18446744073709551615}"#,
                true,
                None,
            )
            .await
        }
        5 => {
            // Subscribe with presence and drop the socket without a close frame.
            let Ok(mut c) = Conn::open(&ws, local, None).await else {
                return false;
            };
            let op = ClientOp::Subscribe {
                room: "soak-2".into(),
                since: None,
                presence: true,
                token: None,
            };
            c.send_op(op).await.is_ok()
        }
        6 => {
            let paths = [
                "/poll?rooms=soak-0&cursor=soak-0:x",
                "/poll?rooms=soak-0&sid=a%0Ab",
                "/poll?rooms=soak-0&name=%1B%5B31m",
                "/poll?rooms=a.b",
                "/sse?rooms=soak-0&watch=x%00y",
            ];
            let path = paths[rand::rng().random_range(0..paths.len())];
            raw_status(
                &addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
            .await
                == Some(400)
        }
        7 => {
            vanish(
                &addr,
                "GET /sse?rooms=soak-3&presence=1&watch=u1 HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .await
        }
        8 => {
            let head = "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"room\"";
            raw_status(&addr, head).await == Some(400)
        }
        _ => {
            vanish(
                &addr,
                "GET /poll?rooms=soak-4&presence=1&watch=u2&sid=hostile-sid-1&wait=20 HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .await
        }
    }
}

/// Sends one frame; true when the reply is the error `want`, or an ack for `None` (the
/// connection stays open).
pub(crate) async fn ws_expect(url: &str, frame: &[u8], text: bool, want: Option<ErrorCode>) -> bool {
    let Ok(mut c) = Conn::open(url, [127, 0, 0, 1].into(), None).await else {
        return false;
    };
    if c.send_raw(frame, text).await.is_err() {
        return false;
    }
    loop {
        match c.next_frame().await {
            Ok(ServerFrame::Ack(_)) if want.is_none() => return true,
            Ok(ServerFrame::Error(e)) => return Some(e.code) == want,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// Sends one frame; true when the gateway closes with `code`.
pub(crate) async fn ws_close(url: &str, frame: &[u8], text: bool, code: u16) -> bool {
    let Ok(mut c) = Conn::open(url, [127, 0, 0, 1].into(), None).await else {
        return false;
    };
    if c.send_raw(frame, text).await.is_err() {
        return false;
    }
    c.close_code().await == Some(code)
}

pub(crate) async fn raw_status(addr: &str, raw: &str) -> Option<u16> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(raw.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 512];
    let n = tcp.read(&mut buf).await.ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Sends a request and goes away once the gateway has answered its head (or at once).
pub(crate) async fn vanish(addr: &str, raw: &str) -> bool {
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if tcp.write_all(raw.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 64];
    let _ = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
    true
}
