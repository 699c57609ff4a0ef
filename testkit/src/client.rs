//! The WebSocket test client: `herald-harness`'s connection with assertions. Every read
//! has a timeout; anything unexpected panics with what arrived.

use std::time::Duration;

use fastwebsockets::OpCode;
use herald_harness::ws::{OpenError, WsConn};
use herald_proto::frame::{Ack, ClientFrame, ClientOp, Event, Id, Payload, ServerFrame, Welcome};
use herald_proto::Codec;

pub use herald_harness::ws::Connect;

/// How long a test waits for any single frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// What arrived on the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Frame(ServerFrame),
    /// A close frame with its code (1005 if it had none).
    Closed(u16),
    /// The connection ended without a close frame.
    Eof,
}

/// A connected client.
pub struct WsClient {
    ws: WsConn,
    pub codec: Codec,
    pub welcome: Option<Welcome>,
}

impl WsClient {
    /// Connects with the JSON codec and a token, and reads the welcome frame.
    pub async fn connect(url: &str, token: &str) -> Self {
        Self::connect_codec(url, token, Codec::Json).await
    }

    /// Connects with `codec` (offered as its sub-protocol) and reads the welcome frame.
    pub async fn connect_codec(url: &str, token: &str, codec: Codec) -> Self {
        let opts = Connect {
            url: url.to_owned(),
            token: Some(token.to_owned()),
            protocols: vec![codec.protocol().to_owned()],
            ..Connect::default()
        };
        let mut c = Self::open(opts).await.expect("WebSocket connects");
        match c.recv().await {
            ServerFrame::Welcome(w) => c.welcome = Some(w),
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    /// Opens a connection without reading anything. `Err` carries the HTTP status of a
    /// refused upgrade (0 for other failures, and after [`RECV_TIMEOUT`]).
    pub async fn open(opts: Connect) -> Result<Self, u16> {
        Self::opened(tokio::time::timeout(RECV_TIMEOUT, WsConn::open(opts)).await)
    }

    /// Like [`WsClient::open`], over an established stream (e.g. TLS) to `host`.
    pub async fn open_on<S>(stream: S, host: &str, path: String, opts: Connect) -> Result<Self, u16>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        Self::opened(tokio::time::timeout(RECV_TIMEOUT, WsConn::open_on(stream, host, path, opts)).await)
    }

    /// Whether the server accepted permessage-deflate (offered with `Connect::compression`).
    pub fn compressed(&self) -> bool {
        self.ws.compressed
    }

    fn opened(result: Result<Result<WsConn, OpenError>, tokio::time::error::Elapsed>) -> Result<Self, u16> {
        match result {
            Ok(Ok(ws)) => Ok(Self {
                codec: ws.codec,
                ws,
                welcome: None,
            }),
            Ok(Err(OpenError::Refused(status))) => Err(status),
            _ => Err(0),
        }
    }

    /// Turns off automatic pongs (to play a client that stopped answering).
    pub fn set_auto_pong(&mut self, on: bool) {
        self.ws.set_auto_pong(on);
    }

    /// The next frame of any kind, as it is on the wire (with automatic pongs off, pings come
    /// through here); `None` at the end of the stream or after `timeout`.
    pub async fn raw_within(&mut self, timeout: Duration) -> Option<(OpCode, Vec<u8>)> {
        tokio::time::timeout(timeout, self.ws.raw()).await.ok().flatten()
    }

    /// Sends an op (id 1), in this client's codec.
    pub async fn send(&mut self, op: ClientOp) {
        let frame = ClientFrame {
            id: Some(Id::Num(1)),
            op,
        };
        self.ws.send(&frame).await.expect("op sent");
    }

    /// Sends a JSON value as an op, in this client's codec (also ops no well-behaved client
    /// sends).
    pub async fn op(&mut self, op: serde_json::Value) {
        self.ws.send_value(&op).await.expect("op sent");
    }

    /// Sends one frame with any opcode and payload.
    pub async fn send_raw(&mut self, opcode: OpCode, payload: Vec<u8>) {
        self.ws.send_frame(true, opcode, payload).await.expect("frame written");
    }

    /// Sends a frame with FIN unset (or set), for fragmentation tests.
    pub async fn send_fragment(&mut self, fin: bool, opcode: OpCode, payload: Vec<u8>) {
        self.ws.send_frame(fin, opcode, payload).await.expect("frame written");
    }

    /// The next thing on the socket, or `None` after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Incoming> {
        let read = async {
            match self.ws.read().await {
                herald_harness::ws::Incoming::Data(bytes) => {
                    let decoded = self.codec.decode_server(&bytes);
                    Incoming::Frame(decoded.unwrap_or_else(|e| panic!("undecodable server frame: {e}")))
                }
                herald_harness::ws::Incoming::Closed(code) => Incoming::Closed(code),
                herald_harness::ws::Incoming::Eof => Incoming::Eof,
            }
        };
        tokio::time::timeout(timeout, read).await.ok()
    }

    /// The next thing on the socket; panics after [`RECV_TIMEOUT`].
    pub async fn next(&mut self) -> Incoming {
        self.next_within(RECV_TIMEOUT)
            .await
            .expect("a frame within the receive timeout")
    }

    /// The next server frame; panics on close or timeout.
    pub async fn recv(&mut self) -> ServerFrame {
        match self.next().await {
            Incoming::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame must be a close; returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next().await {
                Incoming::Closed(code) => return code,
                Incoming::Eof => panic!("connection ended without a close frame"),
                Incoming::Frame(ServerFrame::Event(_)) => continue,
                Incoming::Frame(other) => panic!("expected close, got {other:?}"),
            }
        }
    }

    /// Subscribes; returns the replayed events and the ack.
    pub async fn subscribe(&mut self, room: &str, since: Option<u64>) -> (Vec<Event>, Ack) {
        self.send(ClientOp::Subscribe {
            room: room.to_owned(),
            since,
            presence: false,
            token: None,
        })
        .await;
        let mut events = Vec::new();
        loop {
            match self.recv().await {
                ServerFrame::Event(e) => events.push(e),
                ServerFrame::Ack(a) => return (events, a),
                other => panic!("expected events then ack, got {other:?}"),
            }
        }
    }

    /// Publishes JSON data; returns the ack (events arriving meanwhile are dropped).
    pub async fn publish(&mut self, room: &str, data: serde_json::Value) -> Ack {
        let data = serde_json::to_vec(&data).expect("JSON encodes");
        let op = ClientOp::Publish {
            room: room.to_owned(),
            data: Payload::Json(data.into()),
            kind: None,
            key: None,
        };
        let frame = ClientFrame {
            id: Some(Id::Str("p".into())),
            op,
        };
        self.ws.send(&frame).await.expect("op sent");
        loop {
            match self.recv().await {
                ServerFrame::Ack(a) => return a,
                ServerFrame::Event(_) => continue,
                other => panic!("expected ack, got {other:?}"),
            }
        }
    }

    /// The next event; panics on anything else.
    pub async fn event(&mut self) -> Event {
        match self.recv().await {
            ServerFrame::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}
