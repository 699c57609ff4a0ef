//! A WebSocket client on fastwebsockets for tests and load: either codec, any local source
//! address, raw frames for hostile tests, and the handshake's head sizes for byte accounting.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use fastwebsockets::{handshake, Frame, OpCode, Payload, WebSocket, WebSocketError};
use herald_proto::frame::{ClientFrame, ServerFrame};
use herald_proto::Codec;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::deflate::{inflate, Marking, Marks};

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// `ws://host:port/path?query`
    pub url: String,
    pub token: Option<String>,
    /// Sends the token as `Authorization: Bearer` instead of `?token=`.
    pub token_in_header: bool,
    /// `Sec-WebSocket-Protocol` offers (a codec's protocol selects it).
    pub protocols: Vec<String>,
    pub origin: Option<String>,
    /// More request headers.
    pub headers: Vec<(String, String)>,
    /// The local address to connect from (any by default).
    pub source: Option<IpAddr>,
    /// Offers permessage-deflate ([`crate::deflate::OFFER`]); compressed messages are
    /// inflated as they are read.
    pub compression: bool,
}

/// Why a connection did not open.
#[derive(Debug)]
pub enum OpenError {
    /// The server answered the upgrade with this status.
    Refused(u16),
    /// Anything else: the address, the TCP connect, the handshake.
    Failed(anyhow::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(status) => write!(f, "upgrade refused with HTTP {status}"),
            OpenError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<anyhow::Error> for OpenError {
    fn from(e: anyhow::Error) -> Self {
        OpenError::Failed(e)
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text or binary frame's payload.
    Data(Bytes),
    /// A close frame with its code (1005 if it had none).
    Closed(u16),
    /// The connection ended without a close frame.
    Eof,
}

/// An open connection.
pub struct WsConn {
    ws: WebSocket<TokioIo<Upgraded>>,
    /// What the server's data frames were, when compression was offered.
    marks: Option<Marks>,
    /// The server accepted permessage-deflate.
    pub compressed: bool,
    /// The codec the server chose (JSON unless it accepted MessagePack's protocol).
    pub codec: Codec,
    /// Bytes of the upgrade request's head, as sent on HTTP/1.1.
    pub request_head: u64,
    /// Bytes of the `101` response's head.
    pub response_head: u64,
}

/// A TCP connection to `addr` from `source` (port chosen by the kernel), without Nagle.
pub async fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let tcp = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = match ip {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Bytes of an HTTP/1.1 head: the start line, each `name: value`, and the blank line.
pub fn head_bytes(start_line: &str, headers: &http::HeaderMap) -> u64 {
    let fields: usize = headers.iter().map(|(k, v)| k.as_str().len() + 2 + v.len() + 2).sum();
    (start_line.len() + 2 + fields + 2) as u64
}

/// `ws://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, String)> {
    let rest = url.strip_prefix("ws://").context("a ws:// URL")?;
    Ok(rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into())))
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

impl WsConn {
    /// Connects and upgrades; reads nothing after the `101`.
    pub async fn open(opts: Connect) -> Result<Self, OpenError> {
        let (host, path) = split_url(&opts.url)?;
        let addr = tokio::net::lookup_host(host)
            .await
            .context("resolving the gateway")?
            .next()
            .context("no address for the gateway")?;
        let tcp = connect_from(opts.source, addr).await.context("connecting")?;
        let host = host.to_owned();
        Self::open_on(tcp, &host, path, opts).await
    }

    /// Like [`WsConn::open`], over an established stream (e.g. TLS) to `host`.
    pub async fn open_on<S>(stream: S, host: &str, mut path: String, opts: Connect) -> Result<Self, OpenError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        if let (Some(token), false) = (&opts.token, opts.token_in_header) {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(herald_proto::http::param::TOKEN);
            path.push('=');
            path.push_str(token);
        }
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri(&path)
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
        for (k, v) in &opts.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if opts.compression {
            req = req.header("Sec-WebSocket-Extensions", crate::deflate::OFFER);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .context("building the upgrade request")?;
        let request_head = head_bytes(&format!("GET {path} HTTP/1.1"), req.headers());
        let marks = opts.compression.then(Marks::default);
        let opened = match &marks {
            Some(m) => handshake::client(&SpawnExecutor, req, Marking::new(stream, Arc::clone(m))).await,
            None => handshake::client(&SpawnExecutor, req, stream).await,
        };
        let (ws, resp) = match opened {
            Ok(ok) => ok,
            Err(WebSocketError::InvalidStatusCode(status)) => return Err(OpenError::Refused(status)),
            Err(e) => return Err(OpenError::Failed(e.into())),
        };
        let codec = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(Codec::from_protocol)
            .unwrap_or(Codec::Json);
        let compressed = resp
            .headers()
            .get("Sec-WebSocket-Extensions")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("permessage-deflate"));
        Ok(Self {
            ws,
            marks,
            compressed,
            codec,
            request_head,
            response_head: head_bytes("HTTP/1.1 101 Switching Protocols", resp.headers()),
        })
    }

    /// Turns automatic pongs off (to play a client that stopped answering) or on.
    pub fn set_auto_pong(&mut self, on: bool) {
        self.ws.set_auto_pong(on);
    }

    /// The next frame of any kind as it is on the wire (with automatic pongs off, pings come
    /// through here); `None` at the end of the stream.
    pub async fn raw(&mut self) -> Option<(OpCode, Vec<u8>)> {
        let frame = self.ws.read_frame().await.ok()?;
        let (opcode, payload) = (frame.opcode, frame.payload.to_vec());
        if matches!(opcode, OpCode::Text | OpCode::Binary) {
            return self.unmark(opcode, payload).ok();
        }
        Some((opcode, payload))
    }

    /// A data frame as the server meant it: inflated, and text again, if it came compressed.
    fn unmark(&mut self, opcode: OpCode, payload: Vec<u8>) -> std::io::Result<(OpCode, Vec<u8>)> {
        let mark = self.marks.as_ref().and_then(|m| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front()
                .flatten()
        });
        match mark {
            None => Ok((opcode, payload)),
            Some(text) => {
                let op = if text { OpCode::Text } else { OpCode::Binary };
                Ok((op, inflate(&payload)?))
            }
        }
    }

    /// The next data frame, close or end of stream (pings and pongs are skipped).
    pub async fn read(&mut self) -> Incoming {
        loop {
            let Ok(frame) = self.ws.read_frame().await else {
                return Incoming::Eof;
            };
            match frame.opcode {
                OpCode::Text | OpCode::Binary => {
                    let (opcode, payload) = (frame.opcode, frame.payload.to_vec());
                    return match self.unmark(opcode, payload) {
                        Ok((_, payload)) => Incoming::Data(Bytes::from(payload)),
                        Err(_) => Incoming::Eof,
                    };
                }
                OpCode::Close => {
                    let code = frame
                        .payload
                        .get(..2)
                        .map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]));
                    return Incoming::Closed(code);
                }
                _ => continue,
            }
        }
    }

    /// The next server frame, decoded in this connection's codec.
    pub async fn recv(&mut self) -> Result<ServerFrame> {
        match self.read().await {
            Incoming::Data(bytes) => self
                .codec
                .decode_server(&bytes)
                .map_err(|e| anyhow::anyhow!("undecodable server frame: {e}")),
            Incoming::Closed(code) => anyhow::bail!("closed by the gateway: {code}"),
            Incoming::Eof => anyhow::bail!("the connection ended"),
        }
    }

    /// Sends one op in this connection's codec.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        let bytes = self.codec.encode_client(frame).context("encoding an op")?;
        self.send_frame(true, self.data_opcode(), bytes).await
    }

    /// Sends a JSON value as an op, in this connection's codec: as it is for JSON, and as
    /// MessagePack (the same map, even if it is no valid op) for MessagePack.
    pub async fn send_value(&mut self, op: &serde_json::Value) -> Result<()> {
        let bytes = match self.codec {
            Codec::Json => serde_json::to_vec(op)?,
            Codec::MsgPack => match Codec::Json.decode_client(&serde_json::to_vec(op)?) {
                Ok(frame) => Codec::MsgPack.encode_client(&frame).context("encoding an op")?,
                Err(_) => rmp_serde::to_vec_named(op)?,
            },
        };
        self.send_frame(true, self.data_opcode(), bytes).await
    }

    /// Sends one frame with any opcode, payload and FIN bit.
    pub async fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: Vec<u8>) -> Result<()> {
        self.ws
            .write_frame(Frame::new(fin, opcode, None, Payload::Owned(payload)))
            .await?;
        Ok(())
    }

    fn data_opcode(&self) -> OpCode {
        match self.codec {
            Codec::Json => OpCode::Text,
            Codec::MsgPack => OpCode::Binary,
        }
    }
}
