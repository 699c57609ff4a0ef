//! `GET /sse`: Server-Sent Events. Each event's `id:` is the whole cursor after it, so a
//! reconnect with `Last-Event-ID` (to any gateway) resumes every room. With `presence=` the
//! stream is a member of those rooms and carries `event: presence` frames; with `watch=`,
//! `event: status` frames. The stream counts as a connection for user status.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::http::{cursor, identify, presence_rooms, rooms, watched, EventHead, Queued, Registration};
use crate::metrics::{self, Transport};
use crate::poll::{start_positions, OpenGauge};
use crate::presence::Membership;
use crate::server::{Body, HttpError, Shared};

/// Writes `bytes` as the `data:` field of an event, one `data:` line per line of it (the
/// HTML standard splits at CRLF, CR and LF, and the browser joins the lines with LF).
/// Frames are single-line JSON today; this keeps any payload from ending an event early.
fn data_lines(chunk: &mut Vec<u8>, bytes: &[u8]) {
    let mut rest = bytes;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        chunk.extend_from_slice(b"data: ");
        chunk.extend_from_slice(&rest[..end.unwrap_or(rest.len())]);
        chunk.push(b'\n');
        let Some(end) = end else { return };
        let skip = if rest[end..].starts_with(b"\r\n") { 2 } else { 1 };
        rest = &rest[end + skip..];
    }
}

pub async fn sse(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, HttpError> {
    let (conn_id, conn) = shared.new_conn();
    let who = identify(shared, &req, &conn)?;
    let rooms = rooms(shared, &req, &who)?;
    let members_of = presence_rooms(&req, &rooms)?;
    let watch = watched(shared, &req)?;
    let asked = cursor(&req)?;
    let slot = shared.reserve(conn_id)?;
    fail::fail_point!("sse.positions");
    let mut positions = start_positions(shared, &rooms, asked.as_ref()).await?;
    let mut reg = Registration::new(shared, slot, conn_id);
    reg.attach_all(&rooms, &positions).await?;
    fail::fail_point!("sse.membership");
    let membership = Membership::start(shared, conn_id, &conn, &who, &reg.out, members_of, watch).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let keepalive = shared.config.sse_keepalive;
    metrics::connection_opened(Transport::Sse);
    tokio::spawn(async move {
        let _open = OpenGauge(Transport::Sse);
        let reg = reg;
        let _membership = membership;
        if tx.send(Bytes::from_static(b": herald\n\n")).await.is_err() {
            return;
        }
        fail::fail_point!("sse.stream");
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let mut batch = Vec::new();
        loop {
            let close = reg.out.take(&mut batch);
            if !batch.is_empty() {
                let mut chunk = Vec::new();
                let events = batch.len() as u64;
                for item in batch.drain(..) {
                    match Queued::of(&item.bytes) {
                        Some(Queued::Event) => {
                            if let Ok(head) = serde_json::from_slice::<EventHead<'_>>(&item.bytes) {
                                positions.set(head.room, head.seq);
                            }
                            chunk.extend_from_slice(format!("id: {positions}\n").as_bytes());
                        }
                        Some(Queued::Presence) => chunk.extend_from_slice(b"event: presence\n"),
                        Some(Queued::Status) => chunk.extend_from_slice(b"event: status\n"),
                        None => continue,
                    }
                    data_lines(&mut chunk, &item.bytes);
                    chunk.extend_from_slice(b"\n");
                }
                let bytes = chunk.len() as u64;
                if tx.send(Bytes::from(chunk)).await.is_err() {
                    break;
                }
                metrics::sent(Transport::Sse, events, bytes);
                continue;
            }
            // Drain or slow consumer: end the stream; the client reconnects with Last-Event-ID.
            if close.is_some() {
                break;
            }
            tokio::select! {
                _ = reg.out.notified() => {}
                _ = tick.tick() => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        break;
                    }
                }
                _ = tx.closed() => break,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("static response parts"))
}

#[cfg(test)]
mod tests {
    use super::data_lines;

    #[test]
    fn every_line_break_starts_a_data_line() {
        let mut chunk = Vec::new();
        data_lines(&mut chunk, b"a\r\nb\rc\nd");
        assert_eq!(chunk, b"data: a\ndata: b\ndata: c\ndata: d\n");
        chunk.clear();
        data_lines(&mut chunk, b"{}");
        assert_eq!(chunk, b"data: {}\n");
        chunk.clear();
        data_lines(&mut chunk, b"x\n");
        assert_eq!(chunk, b"data: x\ndata: \n", "a trailing break is an empty last line");
    }
}
