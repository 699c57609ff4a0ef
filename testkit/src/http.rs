//! Tiny HTTP/1.1 requests over a fresh TCP connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends a raw request head (and body) and reads the whole response; 10 s at most.
pub async fn request(addr: SocketAddr, raw: &str) -> std::io::Result<Response> {
    let io = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(raw.as_bytes()).await?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP request timed out"))??;
    parse(&String::from_utf8_lossy(&buf))
}

fn parse(text: &str) -> std::io::Result<Response> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad response: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Ok(Response { status, headers, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A streaming Server-Sent Events reader over HTTP/1.1 (chunked or not).
pub struct Sse {
    reader: tokio::io::BufReader<TcpStream>,
    chunked: bool,
    text: String,
    pub status: u16,
}

/// One SSE event: its `id:`, `event:` and `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl Sse {
    /// `GET path` with extra request headers; reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut tcp = TcpStream::connect(addr).await?;
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).await?;
        let mut reader = tokio::io::BufReader::new(tcp);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut chunked = false;
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if line.to_ascii_lowercase().starts_with("transfer-encoding:") && line.contains("chunked") {
                chunked = true;
            }
        }
        Ok(Self {
            reader,
            chunked,
            text: String::new(),
            status,
        })
    }

    /// The next event (comments skipped); `None` when the stream ends or after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        tokio::time::timeout(timeout, self.next_inner()).await.ok().flatten()
    }

    async fn next_inner(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                // As the HTML standard parses it: `field: value` or `field:value`, data lines
                // joined with LF.
                let mut ev = SseEvent::default();
                let mut any = false;
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => ev.id = Some(value.to_owned()),
                        "event" => ev.event = Some(value.to_owned()),
                        "data" => data.push(value),
                        _ => continue,
                    }
                    any = true;
                }
                ev.data = data.join("\n");
                if any {
                    return Some(ev);
                }
            }
            let more = self.read_more().await?;
            self.text.push_str(&more);
        }
    }

    async fn read_more(&mut self) -> Option<String> {
        use tokio::io::AsyncBufReadExt;
        if !self.chunked {
            let mut buf = vec![0u8; 4096];
            let n = self.reader.read(&mut buf).await.ok()?;
            return (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let mut size = String::new();
        self.reader.read_line(&mut size).await.ok()?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return None;
        }
        let mut buf = vec![0u8; n + 2];
        self.reader.read_exact(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// The value of a metric line in `/metrics` on `admin` whose name and labels start with
/// `prefix` (summed over matching lines).
pub async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let body = get(admin, "/metrics").await.expect("metrics").body;
    body.lines()
        .filter(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}
