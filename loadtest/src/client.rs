//! A lean WebSocket client for load: JSON protocol, reads only what it measures.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use fastwebsockets::{handshake, Frame, OpCode, Payload, WebSocket};
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

pub struct Conn {
    ws: WebSocket<TokioIo<Upgraded>>,
    /// The user id the gateway assigned (from the welcome frame).
    pub user: String,
}

/// What one subscriber saw.
pub struct Stats {
    pub delivered: u64,
    /// Events whose `prev` was not the previous event's `seq` (loss or reorder).
    pub broken_chain: u64,
}

#[derive(Deserialize)]
struct Incoming {
    t: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    prev: u64,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    t0: u64,
}

struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

impl Conn {
    pub async fn open(url: &str, source: IpAddr, token: Option<&str>) -> Result<Self> {
        Ok(Self::open_with(url, source, token, &[]).await?.0)
    }

    /// Opens with `extra` request headers; also returns the handshake's request and response
    /// head sizes in bytes (as sent and received on HTTP/1.1).
    pub async fn open_with(
        url: &str,
        source: IpAddr,
        token: Option<&str>,
        extra: &[(String, String)],
    ) -> Result<(Self, u64, u64)> {
        let rest = url.strip_prefix("ws://").context("ws:// URL")?;
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .unwrap_or((rest, "/".into()));
        let addr = tokio::net::lookup_host(host).await?.next().context("gateway address")?;
        let tcp = crate::connect_from(source, addr).await?;
        let mut req = hyper::Request::builder()
            .uri(&path)
            .header("Host", host)
            .header("Upgrade", "websocket")
            .header("Connection", "upgrade")
            .header("Sec-WebSocket-Key", handshake::generate_key())
            .header("Sec-WebSocket-Version", "13");
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        for (k, v) in extra {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let sent = crate::head_bytes(&format!("GET {path} HTTP/1.1"), req.headers());
        let (ws, resp) = handshake::client(&Exec, req, tcp).await?;
        let got = crate::head_bytes("HTTP/1.1 101 Switching Protocols", resp.headers());
        let mut conn = Self {
            ws,
            user: String::new(),
        };
        let welcome = conn.next_text().await?;
        let welcome: serde_json::Value = serde_json::from_str(&welcome)?;
        if welcome["t"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        conn.user = welcome["user"].as_str().unwrap_or_default().to_owned();
        Ok((conn, sent, got))
    }

    pub async fn subscribe(&mut self, room: &str) -> Result<()> {
        self.subscribe_with(room, false).await
    }

    /// Subscribes; with `presence`, the room's presence snapshot and diffs follow the ack.
    pub async fn subscribe_with(&mut self, room: &str, presence: bool) -> Result<()> {
        let op = serde_json::json!({"op": "subscribe", "id": 1, "room": room, "presence": presence}).to_string();
        self.ws
            .write_frame(Frame::text(Payload::Owned(op.into_bytes())))
            .await?;
        loop {
            let text = self.next_text().await?;
            let frame: Incoming = serde_json::from_str(&text)?;
            match frame.t.as_str() {
                "ack" => return Ok(()),
                "event" => continue,
                _ => bail!("subscribe failed: {text}"),
            }
        }
    }

    /// Sends one op.
    pub async fn send(&mut self, op: &serde_json::Value) -> Result<()> {
        let text = op.to_string();
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
            .await?;
        Ok(())
    }

    pub async fn next_text(&mut self) -> Result<String> {
        loop {
            let frame = self.ws.read_frame().await?;
            match frame.opcode {
                OpCode::Text => return Ok(String::from_utf8(frame.payload.to_vec())?),
                OpCode::Close => bail!("closed by the gateway"),
                _ => continue,
            }
        }
    }

    /// Reads (answering pings) for `d`; `Err` if the gateway closed the connection.
    pub async fn drain_for(mut self, d: Duration) -> Result<()> {
        let read_until_error = async {
            loop {
                if let Err(e) = self.next_text().await {
                    return e;
                }
            }
        };
        match tokio::time::timeout(d, read_until_error).await {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    }

    /// Reads `expected` events (or until 30 s of silence), recording latency in µs.
    pub async fn measure(mut self, expected: u64, hist: &mut Histogram<u64>) -> Stats {
        let mut stats = Stats {
            delivered: 0,
            broken_chain: 0,
        };
        let mut last = None;
        while stats.delivered < expected {
            let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(30), self.next_text()).await else {
                break;
            };
            let now = crate::now_ns();
            let Ok(frame) = serde_json::from_str::<Incoming>(&text) else {
                continue;
            };
            if frame.t != "event" {
                continue;
            }
            if last.is_some_and(|l| l != frame.prev) {
                stats.broken_chain += 1;
            }
            last = Some(frame.seq);
            stats.delivered += 1;
            if let Some(d) = frame.data {
                let _ = hist.record((now.saturating_sub(d.t0) / 1000).max(1));
            }
        }
        stats
    }
}
