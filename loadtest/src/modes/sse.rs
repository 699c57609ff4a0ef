//! The SSE client of a `compare` mode: an EventSource-like reader that follows `id:` and
//! reconnects with `Last-Event-ID`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use goose::prelude::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::client::{Chain, Stamp};
use crate::modes::{deliver, fail, record_deliveries, room_index, run, sid, subscribed, Deliveries, Run};
use herald_proto::frame::EventView;
use herald_proto::http::{param, path};

pub(crate) async fn sse_connect(user: &mut GooseUser) -> TransactionResult {
    let room = room_index(user);
    let started = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(sse_reader(room, user.weighted_users_index, tx, ready_tx));
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            user.record_custom_request_duration("SSE", "connect", started.elapsed(), false, None, Some(&e))
                .await?;
            return Err(fail(e));
        }
        Err(_) => return Err(fail("SSE reader ended")),
    }
    user.record_custom_request_duration("SSE", "connect", started.elapsed(), true, Some(200), None)
        .await?;
    user.set_session_data::<Deliveries>(Arc::new(tokio::sync::Mutex::new(rx)));
    subscribed(room);
    Ok(())
}

pub(crate) async fn sse_reader(
    room: usize,
    index: usize,
    tx: mpsc::UnboundedSender<std::result::Result<Duration, String>>,
    ready: tokio::sync::oneshot::Sender<std::result::Result<(), String>>,
) {
    let run = run();
    let (_sender, mut body) = match open(run, room, index).await {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    let mut ready = Some(ready);
    let mut buf: Vec<u8> = Vec::new();
    let mut chain = Chain(Some(0));
    loop {
        let chunk = match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Some(Err(e)) => {
                if !*run.stop.borrow() {
                    let _ = tx.send(Err(format!("SSE stream: {e}")));
                }
                return;
            }
            None => {
                if !*run.stop.borrow() {
                    let _ = tx.send(Err("SSE stream ended".into()));
                }
                return;
            }
        };
        // Chunked transfer framing: "<hex>\r\n" + data + "\r\n".
        run.c
            .framing
            .fetch_add(format!("{:x}", chunk.len()).len() as u64 + 4, Relaxed);
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            if block.starts_with(b":") {
                // The stream's opening comment: the subscription is in place.
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                continue;
            }
            let Some(data) = event_data(run, &String::from_utf8_lossy(&block)) else {
                continue;
            };
            if let Some(ev) = EventView::decode(data.as_bytes()) {
                if let Some(lat) = deliver(run, &mut chain, (ev.seq, ev.prev), Stamp::of(ev.data)) {
                    let _ = tx.send(Ok(lat));
                }
            }
        }
    }
}

/// Opens client `index`'s stream of `room`, counting the heads' bytes.
async fn open(run: &Run, room: usize, index: usize) -> anyhow::Result<(SendRequest<Empty<Bytes>>, Incoming)> {
    let rest = run.p.http.strip_prefix("http://").context("http:// URL")?;
    let addr = tokio::net::lookup_host(rest).await?.next().context("gateway address")?;
    let tcp = herald_harness::ws::connect_from(Some(run.p.source), addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    // A session id per client, as herald.js sends: rate limits count per client.
    let path = format!(
        "{}?{}={}&{}={}",
        path::SSE,
        param::ROOMS,
        run.rooms[room],
        param::SID,
        sid(index)
    );
    let mut req = hyper::Request::get(&path)
        .header("host", rest)
        .header("accept", "text/event-stream");
    if let Some(t) = &run.p.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in &run.headers {
        if k != "accept" {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let sent = crate::head_bytes(&format!("GET {path} HTTP/1.1"), req.headers());
    let resp = sender.send_request(req).await?;
    if resp.status() != 200 {
        bail!("SSE answered {}", resp.status());
    }
    let got = crate::head_bytes("HTTP/1.1 200 OK", resp.headers());
    run.c.connect_bytes.fetch_add(sent + got, Relaxed);
    Ok((sender, resp.into_body()))
}

/// The `data:` of one SSE block (`None` for blocks without), counting the payload and the
/// SSE fields around it.
fn event_data(run: &Run, block: &str) -> Option<String> {
    let mut data = None;
    let mut overhead = 0;
    for line in block.lines() {
        match line.strip_prefix("data: ") {
            Some(d) => {
                data = Some(d.to_owned());
                overhead += "data: \n".len();
            }
            None => overhead += line.len() + 1,
        }
    }
    overhead += 1;
    let data = data?;
    run.c.down_payload.fetch_add(data.len() as u64, Relaxed);
    run.c.framing.fetch_add(overhead as u64, Relaxed);
    Some(data)
}

pub(crate) async fn sse_receive(user: &mut GooseUser) -> TransactionResult {
    let rx = user.get_session_data_unchecked::<Deliveries>().clone();
    record_deliveries(user, &rx, "SSE").await
}
