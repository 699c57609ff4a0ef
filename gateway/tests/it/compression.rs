//! permessage-deflate on `/ws`, with a client of raw frames (the WebSocket libraries the
//! tests use refuse RSV1): the offer and the answer, events compressed once and shared,
//! small events plain, compressed client messages (whole and in fragments), and what the
//! extension's input paths refuse: RSV1 where it may not be, broken streams, and bombs.

use std::net::SocketAddr;
use std::time::Duration;

use flate2::{Compress, Compression, FlushCompress};
use herald_gateway::WsCompression;
use herald_testkit::client::Connect;
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const WAIT: Duration = Duration::from_secs(5);

/// A WebSocket client of raw frames.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A frame as the server sent it: FIN, RSV1, opcode, payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    fin: bool,
    rsv1: bool,
    op: u8,
    payload: Vec<u8>,
}

impl Raw {
    /// Opens `/ws` with `token` and `extensions` (if any); the answer's extension header.
    async fn open(addr: SocketAddr, token: &str, extensions: Option<&str>) -> (Self, Option<String>) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let ext = extensions.map_or_else(String::new, |e| format!("Sec-WebSocket-Extensions: {e}\r\n"));
        let req = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let answer = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-extensions: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Extensions: "))
            })
            .map(str::to_owned);
        buf.drain(..head_end);
        (Self { tcp, buf }, answer)
    }

    /// The next frame, or `None` at end of stream.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                let (len, head) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if head > 0 && self.buf.len() >= head + len {
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Some(Frame {
                        fin: b0 & 0x80 != 0,
                        rsv1: b0 & 0x40 != 0,
                        op: b0 & 0x0f,
                        payload,
                    });
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("a frame within 5 s")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame that is not a ping.
    async fn data(&mut self) -> Frame {
        loop {
            let f = self.frame().await.expect("a frame");
            if f.op != 0x9 {
                return f;
            }
        }
    }

    /// The next data frame's JSON, inflated if compressed.
    async fn json(&mut self) -> (bool, Value) {
        let f = self.data().await;
        assert_eq!(f.op, 0x1, "{f:?}");
        let payload = if f.rsv1 { inflate(&f.payload) } else { f.payload };
        (f.rsv1, serde_json::from_slice(&payload).unwrap())
    }

    /// Sends a masked frame; `first` is its first byte (FIN, RSV, opcode).
    async fn send(&mut self, first: u8, payload: &[u8]) {
        let mut out = vec![first];
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&out).await.unwrap();
    }

    /// The close code the server ends with.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some(f) if f.op == 0x8 => return u16::from_be_bytes([f.payload[0], f.payload[1]]),
                Some(_) => {}
                None => panic!("ended without a close frame"),
            }
        }
    }
}

/// One message compressed as a client does (raw deflate, sync flush, tail left out).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    while c.total_in() < data.len() as u64 || out.len() == out.capacity() {
        out.reserve(out.capacity().max(1024));
        c.compress_vec(&data[c.total_in() as usize..], &mut out, FlushCompress::Sync)
            .unwrap();
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(data.len() * 8 + 1024);
    while d.total_in() < input.len() as u64 {
        out.reserve(out.capacity());
        d.decompress_vec(&input[d.total_in() as usize..], &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
    }
    out
}

async fn compressing_gateway(nats: &NatsServer) -> TestGateway {
    TestGateway::start_with(&nats.url(), |c| {
        c.ws_compression = WsCompression::On;
        c.ws_compression_min_bytes = 200;
    })
    .await
}

/// Subscribes a raw client to `room` and waits for the ack.
async fn subscribe(c: &mut Raw, room: &str) {
    let welcome = c.json().await.1;
    assert_eq!(welcome["t"], "welcome", "{welcome}");
    let op = json!({"op": "subscribe", "id": 1, "room": room}).to_string();
    c.send(0x81, op.as_bytes()).await;
    let ack = c.json().await.1;
    assert_eq!((ack["t"].as_str(), ack["id"].as_u64()), (Some("ack"), Some(1)), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_answered_only_when_compression_is_on() {
    let nats = NatsServer::start();
    let on = compressing_gateway(&nats).await;
    let off = TestGateway::start(&nats.url()).await;
    let token = jwt::any_room("ann");
    assert_eq!(Raw::open(on.addr, &token, Some(OFFER)).await.1.as_deref(), Some(ANSWER));
    assert_eq!(Raw::open(on.addr, &token, None).await.1, None, "no offer, no extension");
    let declined = Raw::open(on.addr, &token, Some("permessage-deflate; server_max_window_bits=16")).await;
    assert_eq!(
        declined.1, None,
        "a malformed offer is declined, the connection goes on"
    );
    let (mut plain, answer) = Raw::open(off.addr, &token, Some(OFFER)).await;
    assert_eq!(answer, None, "--ws-compression off");
    // Without the extension, RSV1 is a protocol error.
    subscribe(&mut plain, "lobby").await;
    plain.send(0xc1, &deflate(br#"{"op":"ping","id":2}"#)).await;
    assert_eq!(plain.close_code().await, 1002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_compressed_once_to_compressing_clients_and_plain_to_others() {
    let nats = NatsServer::start();
    let gw = compressing_gateway(&nats).await;
    let token = jwt::any_room("ann");
    let (mut zipped, _) = Raw::open(gw.addr, &token, Some(OFFER)).await;
    let (mut small_window, answer) =
        Raw::open(gw.addr, &token, Some("permessage-deflate; server_max_window_bits=10")).await;
    let said_back = format!("{ANSWER}; server_max_window_bits=10");
    assert_eq!(
        answer.as_deref(),
        Some(said_back.as_str()),
        "accepted; its events go plain"
    );
    let (mut plain, _) = Raw::open(gw.addr, &token, None).await;
    for c in [&mut zipped, &mut small_window, &mut plain] {
        subscribe(c, "news").await;
    }
    let mut publisher = WsClient::connect(&gw.ws_url(), &jwt::any_room("bot")).await;
    let big = json!({"text": "all work and no play makes jack a dull boy ".repeat(20)});
    publisher.publish("news", big.clone()).await;
    publisher.publish("news", json!("tiny")).await;

    let (rsv1, event) = zipped.json().await;
    assert!(rsv1, "a large event goes compressed");
    assert_eq!((event["seq"].as_u64(), &event["data"]), (Some(1), &big));
    let (rsv1, event) = zipped.json().await;
    assert!(!rsv1, "an event under --ws-compression-min-bytes goes plain");
    assert_eq!(event["data"], "tiny");
    for c in [&mut small_window, &mut plain] {
        let (rsv1, event) = c.json().await;
        assert!(!rsv1);
        assert_eq!((event["seq"].as_u64(), &event["data"]), (Some(1), &big));
        let (_, event) = c.json().await;
        assert_eq!(event["data"], "tiny");
    }
    // Compressed once for the one codec that asked, whatever the number of subscribers.
    let plain_bytes = gw
        .metric("herald_gateway_compression_bytes_total{side=\"plain\"}")
        .await;
    let compressed_bytes = gw
        .metric("herald_gateway_compression_bytes_total{side=\"compressed\"}")
        .await;
    assert!(
        plain_bytes > 800.0 && compressed_bytes > 0.0 && compressed_bytes < plain_bytes / 4.0,
        "{plain_bytes} → {compressed_bytes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_client_messages_are_read_whole_and_in_fragments() {
    let nats = NatsServer::start();
    let gw = compressing_gateway(&nats).await;
    let (mut c, _) = Raw::open(gw.addr, &jwt::any_room("ann"), Some(OFFER)).await;
    subscribe(&mut c, "lobby").await;
    // Whole, as text.
    c.send(0xc1, &deflate(br#"{"op":"ping","id":2}"#)).await;
    assert_eq!(c.json().await.1, json!({"t": "pong", "id": 2}));
    // In three fragments: RSV1 on the first only.
    let z = deflate(br#"{"op":"ping","id":3}"#);
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, d) = rest.split_at(rest.len() / 2);
    c.send(0x41, a).await;
    c.send(0x00, b).await;
    c.send(0x80, d).await;
    assert_eq!(c.json().await.1, json!({"t": "pong", "id": 3}));
    // A plain message still reads as one.
    c.send(0x81, br#"{"op":"ping","id":4}"#).await;
    assert_eq!(c.json().await.1, json!({"t": "pong", "id": 4}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compressed_input_closes_that_connection_only() {
    let nats = NatsServer::start();
    let gw = compressing_gateway(&nats).await;
    let token = jwt::any_room("ann");
    let (mut bystander, _) = Raw::open(gw.addr, &token, Some(OFFER)).await;
    subscribe(&mut bystander, "lobby").await;
    // A bomb: 1 KiB or so that inflates to 1 MiB, past --max-message-bytes (64 KiB).
    let bomb = deflate(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 2048, "{}", bomb.len());
    let text_bomb = {
        let mut v = br#"{"op":"ping","id":1,"x":""#.to_vec();
        v.extend(std::iter::repeat_n(b'a', 1 << 20));
        v.extend_from_slice(br#""}"#);
        deflate(&v)
    };
    let mut utf8 = deflate(&[0xff, 0xfe, 0x80]);
    utf8.shrink_to_fit();
    for (name, frames, code) in [
        ("a bomb", vec![(0xc2u8, bomb.clone())], 1009),
        ("a text bomb", vec![(0xc1, text_bomb)], 1009),
        (
            "a bomb in fragments",
            vec![(0x42, bomb[..100].to_vec()), (0x80, bomb[100..].to_vec())],
            1009,
        ),
        ("not deflate", vec![(0xc1, vec![0xff; 32])], 1007),
        ("compressed text that is not UTF-8", vec![(0xc1, utf8)], 1007),
        (
            "RSV1 on a continuation",
            vec![(0x01, b"{".to_vec()), (0xc0, deflate(b"}"))],
            1002,
        ),
        ("RSV1 on a ping", vec![(0xc9, Vec::new())], 1002),
        ("RSV2", vec![(0xa1, deflate(b"{}"))], 1002),
    ] {
        let (mut c, _) = Raw::open(gw.addr, &token, Some(OFFER)).await;
        subscribe(&mut c, "lobby").await;
        for (first, payload) in frames {
            c.send(first, &payload).await;
        }
        assert_eq!(c.close_code().await, code, "{name}");
    }
    bystander.send(0xc1, &deflate(br#"{"op":"ping","id":9}"#)).await;
    assert_eq!(bystander.json().await.1, json!({"t": "pong", "id": 9}), "unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_client_offers_compression_and_reads_compressed_events() {
    let nats = NatsServer::start();
    let gw = compressing_gateway(&nats).await;
    let opts = |compression| Connect {
        url: gw.ws_url(),
        token: Some(jwt::any_room("ann")),
        compression,
        ..Connect::default()
    };
    let mut zipped = WsClient::open(opts(true)).await.expect("opens");
    assert!(zipped.compressed());
    let plain = WsClient::open(opts(false)).await.expect("opens");
    assert!(!plain.compressed());
    assert!(matches!(
        zipped.recv().await,
        herald_proto::frame::ServerFrame::Welcome(_)
    ));
    zipped.subscribe("news", None).await;
    let mut publisher = WsClient::connect(&gw.ws_url(), &jwt::any_room("bot")).await;
    let big = json!({"text": "all work and no play makes jack a dull boy ".repeat(20)});
    for data in [big.clone(), json!("tiny"), big.clone()] {
        publisher.publish("news", data).await;
    }
    let got: Vec<Value> = [zipped.event().await, zipped.event().await, zipped.event().await]
        .into_iter()
        .map(|e| e.data.expect("JSON data"))
        .collect();
    assert_eq!(got, [big.clone(), json!("tiny"), big]);
}
