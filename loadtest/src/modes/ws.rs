//! The WebSocket client of a `compare` mode: connect, subscribe, read and time events.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use goose::prelude::*;
use tokio::sync::mpsc;

use crate::client::{Chain, Stamp};
use crate::modes::{deliver, fail, record_deliveries, room_index, run, subscribed, Deliveries};
use herald_proto::frame::EventView;

pub(crate) async fn ws_connect(user: &mut GooseUser) -> TransactionResult {
    let run = run();
    let room = room_index(user);
    let started = Instant::now();
    let opened = async {
        let (mut conn, sent, got) =
            crate::client::Conn::open_with(&run.p.ws, run.p.source, run.p.token.as_deref(), &run.headers, false)
                .await?;
        conn.subscribe(&run.rooms[room]).await?;
        Ok::<_, anyhow::Error>((conn, sent + got))
    }
    .await;
    let (conn, bytes) = match opened {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("{e:#}");
            user.record_custom_request_duration("WS", "connect", started.elapsed(), false, None, Some(&msg))
                .await?;
            return Err(fail(msg));
        }
    };
    user.record_custom_request_duration("WS", "connect", started.elapsed(), true, Some(101), None)
        .await?;
    run.c.connect_bytes.fetch_add(bytes, Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(ws_reader(conn, tx));
    user.set_session_data::<Deliveries>(Arc::new(tokio::sync::Mutex::new(rx)));
    subscribed(room);
    Ok(())
}

/// RFC 6455 header bytes of a server→client frame with `len` payload bytes.
pub(crate) fn ws_header(len: usize) -> u64 {
    match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

pub(crate) async fn ws_reader(
    mut conn: crate::client::Conn,
    tx: mpsc::UnboundedSender<std::result::Result<Duration, String>>,
) {
    let run = run();
    let mut chain = Chain(Some(0));
    loop {
        match conn.next_data().await {
            Ok(bytes) => {
                run.c.down_payload.fetch_add(bytes.len() as u64, Relaxed);
                run.c.framing.fetch_add(ws_header(bytes.len()), Relaxed);
                let Some(ev) = EventView::decode(&bytes) else {
                    continue;
                };
                if let Some(lat) = deliver(run, &mut chain, (ev.seq, ev.prev), Stamp::of(ev.data)) {
                    let _ = tx.send(Ok(lat));
                }
            }
            Err(e) => {
                if !*run.stop.borrow() {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
                return;
            }
        }
    }
}

pub(crate) async fn ws_receive(user: &mut GooseUser) -> TransactionResult {
    let rx = user.get_session_data_unchecked::<Deliveries>().clone();
    record_deliveries(user, &rx, "WS").await
}
