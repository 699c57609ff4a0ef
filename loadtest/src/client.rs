//! The load client: `herald-harness`'s WebSocket connection (JSON codec, token in the
//! `Authorization` header, any source address), reading events through proto's
//! [`herald_proto::frame::EventView`] so that a reader pays only for what it measures; and the order check every
//! reader applies.

use std::net::IpAddr;

use anyhow::{bail, Result};
use bytes::Bytes;
use fastwebsockets::OpCode;
use herald_harness::ws::{Connect, Incoming, WsConn};
use herald_proto::frame::{ClientFrame, ClientOp, Id, ServerFrame};
use serde::Deserialize;

pub struct Conn {
    ws: WsConn,
    /// The user id the gateway assigned (from the welcome frame).
    pub user: String,
}

/// What the harness's publishers put in an event's `data`: the scheduled publish time (ns
/// since the epoch) and, for `bench`, the step.
#[derive(Debug, Deserialize)]
pub struct Stamp {
    pub t0: u64,
    #[serde(default)]
    pub s: u64,
}

impl Stamp {
    /// The stamp in a JSON payload (`None` for other payloads: events the harness did not
    /// publish).
    pub fn of(data: Option<&serde_json::value::RawValue>) -> Option<Self> {
        serde_json::from_str(data?.get()).ok()
    }
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

impl Conn {
    pub async fn open(url: &str, source: IpAddr, token: Option<&str>) -> Result<Self> {
        Ok(Self::open_with(url, source, token, &[], false).await?.0)
    }

    /// Opens with `extra` request headers (offering permessage-deflate with `compression`)
    /// and reads the welcome; also returns the handshake's request and response head sizes
    /// in bytes (as sent and received on HTTP/1.1).
    pub async fn open_with(
        url: &str,
        source: IpAddr,
        token: Option<&str>,
        extra: &[(String, String)],
        compression: bool,
    ) -> Result<(Self, u64, u64)> {
        let ws = WsConn::open(Connect {
            url: url.to_owned(),
            token: token.map(str::to_owned),
            token_in_header: true,
            headers: extra.to_vec(),
            source: Some(source),
            compression,
            ..Connect::default()
        })
        .await?;
        if compression && !ws.compressed {
            bail!("the gateway did not accept permessage-deflate (is --ws-compression on?)");
        }
        let (sent, got) = (ws.request_head, ws.response_head);
        let mut conn = Self {
            ws,
            user: String::new(),
        };
        match conn.next_frame().await? {
            ServerFrame::Welcome(w) => conn.user = w.user,
            other => bail!("expected welcome, got {other:?}"),
        }
        Ok((conn, sent, got))
    }

    pub async fn subscribe(&mut self, room: &str) -> Result<()> {
        self.subscribe_with(room, false).await
    }

    /// Subscribes; with `presence`, the room's presence snapshot and diffs follow the ack.
    pub async fn subscribe_with(&mut self, room: &str, presence: bool) -> Result<()> {
        self.send_op(ClientOp::Subscribe {
            room: room.to_owned(),
            since: None,
            presence,
            token: None,
        })
        .await?;
        loop {
            match self.next_frame().await? {
                ServerFrame::Ack(_) => return Ok(()),
                ServerFrame::Event(_) => continue,
                other => bail!("subscribe failed: {other:?}"),
            }
        }
    }

    /// Sends one op with id 1.
    pub async fn send_op(&mut self, op: ClientOp) -> Result<()> {
        self.ws
            .send(&ClientFrame {
                id: Some(Id::Num(1)),
                op,
            })
            .await
    }

    /// Sends a JSON value as it is (ops a well-behaved client would not send).
    pub async fn send(&mut self, op: &serde_json::Value) -> Result<()> {
        self.ws.send_value(op).await
    }

    /// Sends one frame as it is: text (even if not UTF-8) or binary.
    pub async fn send_raw(&mut self, payload: &[u8], text: bool) -> Result<()> {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.ws.send_frame(true, op, payload.to_vec()).await
    }

    /// Reads until the gateway's close frame; its code (`None` if the socket just ended).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.ws.read().await {
                Incoming::Closed(code) => return Some(code),
                Incoming::Eof => return None,
                Incoming::Data(_) => continue,
            }
        }
    }

    /// The next frame's bytes; an error once the gateway closes or the socket ends.
    pub async fn next_data(&mut self) -> Result<Bytes> {
        match self.ws.read().await {
            Incoming::Data(bytes) => Ok(bytes),
            Incoming::Closed(code) => bail!("closed by the gateway: {code}"),
            Incoming::Eof => bail!("the connection ended"),
        }
    }

    /// The next frame, decoded.
    pub async fn next_frame(&mut self) -> Result<ServerFrame> {
        self.ws.recv().await
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
