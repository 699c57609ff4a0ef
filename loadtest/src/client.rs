//! A lean WebSocket client for load: JSON protocol, reads only what it measures.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use fastwebsockets::{handshake, Frame, OpCode, Payload, WebSocket};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

pub struct Conn {
    ws: WebSocket<TokioIo<Upgraded>>,
    /// The user id the gateway assigned (from the welcome frame).
    pub user: String,
}

/// A server frame as every transport carries events (WS frame, SSE `data:`, poll `events[]`);
/// the harness's own events carry a [`Stamp`].
#[derive(Deserialize)]
pub struct Event {
    #[serde(default)]
    pub t: Option<String>,
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub prev: u64,
    #[serde(default)]
    pub data: Option<Stamp>,
}

/// What the harness's publishers put in `data`: the scheduled publish time (ns since the epoch)
/// and, for `bench`, the step.
#[derive(Deserialize)]
pub struct Stamp {
    pub t0: u64,
    #[serde(default)]
    pub s: u64,
}

/// Where an event falls in a room's `seq`/`prev` chain, as one client sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Order {
    Next,
    /// In order after a gap (loss) — still delivered.
    AfterGap,
    Duplicate,
}

/// One client's position in one room: `None` until the first event when the start is unknown,
/// `Some(0)` for a fresh room (its first event must have `prev` 0).
#[derive(Debug, Clone, Default)]
pub struct Chain(pub Option<u64>);

impl Chain {
    pub fn check(&mut self, seq: u64, prev: u64) -> Order {
        match self.0 {
            Some(last) if seq <= last => Order::Duplicate,
            Some(last) if prev != last => {
                self.0 = Some(seq);
                Order::AfterGap
            }
            _ => {
                self.0 = Some(seq);
                Order::Next
            }
        }
    }
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
            let frame: Event = serde_json::from_str(&text)?;
            match frame.t.as_deref().unwrap_or_default() {
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

    /// Sends one frame as it is: text (even if not UTF-8) or binary.
    pub async fn send_raw(&mut self, payload: &[u8], text: bool) -> Result<()> {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.ws
            .write_frame(Frame::new(true, op, None, Payload::Owned(payload.to_vec())))
            .await?;
        Ok(())
    }

    /// Reads until the gateway's close frame; its code (`None` if the socket just ended).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let frame = self.ws.read_frame().await.ok()?;
            if frame.opcode == OpCode::Close {
                return frame.payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            }
        }
    }

    pub async fn next_text(&mut self) -> Result<String> {
        loop {
            let frame = self.ws.read_frame().await?;
            match frame.opcode {
                OpCode::Text => return Ok(String::from_utf8(frame.payload.to_vec())?),
                OpCode::Close => {
                    let code = frame
                        .payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    bail!("closed by the gateway: {code}")
                }
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_counts_gaps_and_duplicates() {
        let mut fresh = Chain(Some(0));
        assert_eq!(fresh.check(1, 0), Order::Next);
        assert_eq!(fresh.check(2, 1), Order::Next);
        assert_eq!(fresh.check(2, 1), Order::Duplicate);
        assert_eq!(fresh.check(5, 4), Order::AfterGap);
        assert_eq!(fresh.check(6, 5), Order::Next);
        let mut joined = Chain::default();
        assert_eq!(
            joined.check(40, 39),
            Order::Next,
            "an unknown start accepts the first event"
        );
        assert_eq!(
            Chain(Some(0)).check(40, 39),
            Order::AfterGap,
            "a fresh room must start at prev 0"
        );
    }
}
