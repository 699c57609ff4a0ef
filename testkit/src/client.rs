//! A WebSocket test client on fastwebsockets, speaking either codec.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{handshake, Frame, OpCode, Payload, WebSocket, WebSocketError};
use herald_proto::frame::{Ack, Event, ServerFrame, Welcome};
use herald_proto::Codec;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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

/// Connection options.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// `ws://host:port/path?query`
    pub url: String,
    pub token: Option<String>,
    /// Sent as `Authorization: Bearer` instead of `?token=`.
    pub token_in_header: bool,
    pub protocols: Vec<String>,
    pub origin: Option<String>,
}

/// A connected client.
pub struct WsClient {
    ws: WebSocket<TokioIo<Upgraded>>,
    pub codec: Codec,
    pub welcome: Option<Welcome>,
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
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
    /// refused upgrade (0 for other failures).
    pub async fn open(opts: Connect) -> Result<Self, u16> {
        let url = opts.url.clone();
        let rest = url.strip_prefix("ws://").expect("ws:// URL");
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .unwrap_or((rest, "/".into()));
        let tcp = TcpStream::connect(host).await.map_err(|_| 0u16)?;
        let _ = tcp.set_nodelay(true);
        Self::open_on(tcp, host, path, opts).await
    }

    /// Like [`WsClient::open`], over an established stream (e.g. TLS) to `host`.
    pub async fn open_on<S>(stream: S, host: &str, path: String, opts: Connect) -> Result<Self, u16>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let tcp = stream;
        let mut path = path;
        if let (Some(token), false) = (&opts.token, opts.token_in_header) {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str("token=");
            path.push_str(token);
        }
        let mut req = Request::builder()
            .method("GET")
            .uri(path)
            .header("Host", host)
            .header("Upgrade", "websocket")
            .header("Connection", "upgrade")
            .header("Sec-WebSocket-Key", handshake::generate_key())
            .header("Sec-WebSocket-Version", "13");
        if !opts.protocols.is_empty() {
            req = req.header("Sec-WebSocket-Protocol", opts.protocols.join(", "));
        }
        if let Some(origin) = &opts.origin {
            req = req.header("Origin", origin);
        }
        if let (Some(token), true) = (&opts.token, opts.token_in_header) {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let req = req.body(Empty::<Bytes>::new()).expect("request builds");
        let connecting = handshake::client(&SpawnExecutor, req, tcp);
        let (ws, resp) = match tokio::time::timeout(RECV_TIMEOUT, connecting).await {
            Ok(Ok(ok)) => ok,
            Ok(Err(WebSocketError::InvalidStatusCode(status))) => return Err(status),
            _ => return Err(0),
        };
        let codec = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(Codec::from_protocol)
            .unwrap_or(Codec::Json);
        Ok(Self {
            ws,
            codec,
            welcome: None,
        })
    }

    /// Turns off automatic pongs (to play a client that stopped answering).
    pub fn set_auto_pong(&mut self, on: bool) {
        self.ws.set_auto_pong(on);
    }

    /// The next frame of any kind, as it is on the wire (with automatic pongs off, pings come
    /// through here); `None` at the end of the stream or after `timeout`.
    pub async fn raw_within(&mut self, timeout: Duration) -> Option<(OpCode, Vec<u8>)> {
        match tokio::time::timeout(timeout, self.ws.read_frame()).await {
            Ok(Ok(frame)) => Some((frame.opcode, frame.payload.to_vec())),
            _ => None,
        }
    }

    /// Sends a JSON value as an op, in this client's codec.
    pub async fn op(&mut self, op: serde_json::Value) {
        let (opcode, bytes) = match self.codec {
            Codec::Json => (OpCode::Text, serde_json::to_vec(&op).expect("JSON encodes")),
            Codec::MsgPack => (OpCode::Binary, msgpack_op(&op)),
        };
        self.send_raw(opcode, bytes).await;
    }

    /// Sends one frame with any opcode and payload.
    pub async fn send_raw(&mut self, opcode: OpCode, payload: Vec<u8>) {
        self.ws
            .write_frame(Frame::new(true, opcode, None, Payload::Owned(payload)))
            .await
            .expect("frame written");
    }

    /// Sends a frame with FIN unset (or set), for fragmentation tests.
    pub async fn send_fragment(&mut self, fin: bool, opcode: OpCode, payload: Vec<u8>) {
        self.ws
            .write_frame(Frame::new(fin, opcode, None, Payload::Owned(payload)))
            .await
            .expect("frame written");
    }

    /// The next thing on the socket, or `None` after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Incoming> {
        let read = async {
            loop {
                let frame = match self.ws.read_frame().await {
                    Ok(f) => f,
                    Err(_) => return Incoming::Eof,
                };
                match frame.opcode {
                    OpCode::Text | OpCode::Binary => {
                        let decoded = self.codec.decode_server(&frame.payload);
                        return Incoming::Frame(decoded.unwrap_or_else(|e| panic!("undecodable server frame: {e}")));
                    }
                    OpCode::Close => {
                        let code = frame
                            .payload
                            .get(..2)
                            .map(|b| u16::from_be_bytes([b[0], b[1]]))
                            .unwrap_or(1005);
                        return Incoming::Closed(code);
                    }
                    _ => continue,
                }
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
        let mut op = serde_json::json!({"op": "subscribe", "id": 1, "room": room});
        if let Some(since) = since {
            op["since"] = since.into();
        }
        self.op(op).await;
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
        self.op(serde_json::json!({"op": "publish", "id": "p", "room": room, "data": data}))
            .await;
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

fn msgpack_op(v: &serde_json::Value) -> Vec<u8> {
    let frame = serde_json::to_vec(v).expect("JSON encodes");
    let decoded = Codec::Json.decode_client(&frame);
    match decoded {
        Ok(f) => Codec::MsgPack.encode_client(&f).expect("MessagePack encodes"),
        // Not a valid op: send the same map anyway, so the server judges it.
        Err(_) => msgpack_value(v),
    }
}

fn msgpack_value(v: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("MessagePack encodes")
}
