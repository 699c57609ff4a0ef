//! The polling clients of a `compare` mode: long-poll (`wait`) and ajax polling every T.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Result;
use goose::prelude::*;

use herald_proto::http::{param, path, PollAnswer};
use serde::Deserialize;

use crate::client::{Chain, Stamp};
use crate::modes::{deliver, fail, record_all, room_index, run, sid, subscribed, Kind, Params, Run};

/// The request headers of a `/poll` as they go on the wire: ours, and those goose's reqwest
/// client adds by itself (which browser-like headers replace).
pub(crate) fn poll_headers(p: &Params, extra: &[(String, String)]) -> Result<http::HeaderMap> {
    let mut h = http::HeaderMap::new();
    h.insert("host", p.http.trim_start_matches("http://").parse()?);
    if let Some(t) = &p.token {
        h.insert("authorization", format!("Bearer {t}").parse()?);
    }
    if extra.is_empty() {
        h.insert("user-agent", "goose/0.19.0".parse()?);
        h.insert("accept", "*/*".parse()?);
    }
    h.insert("accept-encoding", "gzip".parse()?);
    for (k, v) in extra {
        h.insert(http::HeaderName::try_from(k.as_str())?, v.parse()?);
    }
    Ok(h)
}

/// A polling client's position.
#[derive(Clone)]
pub(crate) struct PollSession {
    cursor: String,
    chain: Chain,
    next_due: tokio::time::Instant,
}

/// `/poll?rooms=…&wait=…&sid=…[&cursor=…]` for client `index`.
fn poll_path(run: &Run, room: usize, wait: Duration, index: usize, cursor: &str) -> String {
    let mut path = format!(
        "{}?{}={}&{}={}&{}={}",
        path::POLL,
        param::ROOMS,
        run.rooms[room],
        param::WAIT,
        wait.as_secs_f64(),
        param::SID,
        sid(index)
    );
    if !cursor.is_empty() {
        path.push_str(&format!("&{}={cursor}", param::CURSOR));
    }
    path
}

/// Counts one exchange of the publish window: the request, both heads, the body, and whether
/// it was empty.
fn count(run: &Run, path: &str, response_head: u64, body_len: usize, empty: bool) {
    run.c.requests.fetch_add(1, Relaxed);
    run.c.up_headers.fetch_add(
        crate::head_bytes(&format!("GET {path} HTTP/1.1"), &run.poll_headers),
        Relaxed,
    );
    run.c.down_headers.fetch_add(response_head, Relaxed);
    run.c.down_payload.fetch_add(body_len as u64, Relaxed);
    if empty {
        run.c.empty.fetch_add(1, Relaxed);
    }
}

/// One `/poll` exchange; returns the deliveries' latencies, or `None` when the run stopped.
pub(crate) async fn poll_once(
    user: &mut GooseUser,
    wait: Duration,
) -> std::result::Result<Option<Vec<Duration>>, Box<TransactionError>> {
    let run = run();
    let room = room_index(user);
    let long = wait > Duration::ZERO;
    let cursor = user
        .get_session_data::<PollSession>()
        .map(|s| s.cursor.clone())
        .unwrap_or_default();
    let path = poll_path(run, room, wait, user.weighted_users_index, &cursor);
    let mut rb = user.get_request_builder(&GooseMethod::Get, &path)?;
    if let Some(t) = &run.p.token {
        rb = rb.bearer_auth(t);
    }
    for (k, v) in &run.headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let req = GooseRequest::builder()
        .method(GooseMethod::Get)
        .path(path.as_str())
        .name(if long { "poll-wait" } else { "poll" })
        .set_request_builder(rb)
        .expect_status_code(200)
        .build();
    let mut stop = run.stop.subscribe();
    let resp = tokio::select! {
        r = user.request(req) => r?,
        _ = stop.wait_for(|s| *s) => return Ok(None),
    };
    let counting = run.publishing.load(Relaxed);
    let response = resp.response.map_err(fail)?;
    let status = response.status();
    let head = crate::head_bytes(&format!("HTTP/1.1 {status}"), response.headers());
    let body = response.bytes().await.map_err(fail)?;
    if status != 200 {
        return Err(fail(format!(
            "/poll answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let answer: PollAnswer = serde_json::from_slice(&body).map_err(fail)?;
    if counting {
        count(run, &path, head, body.len(), answer.events.is_empty());
    }
    let first = cursor.is_empty();
    let session = match user.get_session_data_mut::<PollSession>() {
        Some(s) => s,
        None => {
            user.set_session_data(PollSession {
                cursor: String::new(),
                chain: Chain(Some(0)),
                next_due: tokio::time::Instant::now(),
            });
            user.get_session_data_unchecked_mut::<PollSession>()
        }
    };
    session.cursor = answer.cursor;
    let mut lats = Vec::new();
    for ev in &answer.events {
        let stamp = ev.data.as_ref().and_then(|d| Stamp::deserialize(d).ok());
        if let Some(lat) = deliver(run, &mut session.chain, (ev.seq, ev.prev), stamp) {
            lats.push(lat);
        }
    }
    if first {
        subscribed(room);
    }
    Ok(Some(lats))
}

pub(crate) async fn poll_start(user: &mut GooseUser) -> TransactionResult {
    // The first poll takes the live tail of the room as the cursor.
    if poll_once(user, Duration::ZERO).await?.is_none() {
        return Ok(());
    }
    if let Kind::Poll(t) = run().p.kind {
        // A random phase, so polls spread over the interval as independent browsers do.
        let phase = t.mul_f64(rand::random::<f64>());
        user.get_session_data_unchecked_mut::<PollSession>().next_due = tokio::time::Instant::now() + phase;
    }
    Ok(())
}

pub(crate) async fn long_poll(user: &mut GooseUser) -> TransactionResult {
    if *run().stop.borrow() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        return Ok(());
    }
    let wait = run().p.long_poll_wait;
    match poll_once(user, wait).await {
        Ok(Some(lats)) => record_all(user, "LP", lats).await,
        Ok(None) => Ok(()),
        Err(e) => {
            // Back off a little after an error, as a client library would.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(e)
        }
    }
}

pub(crate) async fn ajax_poll(user: &mut GooseUser) -> TransactionResult {
    let Kind::Poll(t) = run().p.kind else { return Ok(()) };
    let due = user.get_session_data_unchecked::<PollSession>().next_due;
    // As herald.js does: the next poll goes T (`pollInterval`) after the answer to this one,
    // so the period is T plus the answer's round trip (not a fixed clock like setInterval).
    // Sleep in slices of at most 500 ms so goose can stop the user.
    let now = tokio::time::Instant::now();
    if due > now {
        tokio::time::sleep_until(due.min(now + Duration::from_millis(500))).await;
        return Ok(());
    }
    let answer = poll_once(user, Duration::ZERO).await;
    user.get_session_data_unchecked_mut::<PollSession>().next_due = tokio::time::Instant::now() + t;
    match answer? {
        Some(lats) => record_all(user, "POLL", lats).await,
        None => Ok(()),
    }
}
