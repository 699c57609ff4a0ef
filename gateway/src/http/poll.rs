//! `GET /poll`: ajax polling (`wait=0`) and long-polling (`wait>0`), stateless by cursor.
//!
//! Backlog is answered from history at once. With nothing new, a long-poll registers on the
//! hub like a WebSocket subscriber (no NATS subscription of its own) and is answered at the
//! first event, at `wait`, or at the drain.
//!
//! With `sid=`, the poller is a session: online, and a member of its `presence=` rooms, until
//! no poll came for `--poll-session-ttl` after the last one. `presence=` and `watch=` add the rooms' snapshots and
//! the users' status to every answer, and a change to them ends a long-poll's wait.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::cursor::Cursor;
use herald_proto::frame::Subscribed;
use herald_proto::{Codec, ErrorCode};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use herald_proto::http::{encode_poll_answer, param, PollTail};

use crate::addr::ClientAddr;
use crate::auth::Identity;
use crate::feeds::{FeedSet, Kind};
use crate::hub::UpstreamError;
use crate::metrics::{self, Transport};
use crate::outbound::{Content, Format};
use crate::presence::{Pending, PollSessions, Presence, SessionLimits, SessionRefused};
use crate::state::{membership_refused, Shared, Slot};

use super::{
    cursor, full, identify, json_holding, namespace_cursor, presence_rooms, query_param, request_allowed, rooms,
    session_id, start_positions, watched, Body, HttpError, OpenGauge, Registration,
};

pub(crate) async fn poll(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    remote: ClientAddr,
) -> Result<Response<Body>, HttpError> {
    let (conn_id, _) = shared.new_conn();
    let who = identify(shared, &req, remote).await?;
    let sid = session_id(&req)?;
    let taken = sid
        .as_ref()
        .map(|sid| {
            shared
                .presence
                .polls
                .taken_rooms(&herald_proto::text::poll_session(&who.user, sid))
        })
        .unwrap_or_default();
    // Counted before its rooms are checked: a refused room may cost a grant lookup, and
    // each subscription token a signature check.
    request_allowed(shared, &who)?;
    let rooms = rooms(shared, &req, &who, &taken).await?;
    let members_of = presence_rooms(shared, &req, &rooms)?;
    let watch = watched(shared, &req)?;
    let asked = cursor(&req)?;
    let asked = namespace_cursor(shared, &rooms, asked).await?;
    let wait = wait(shared, &req)?;
    let slot = shared.reserve(conn_id, &who)?;
    // Its watched users are followed while it waits: counted against the address meanwhile.
    let _watches = shared.watches_for(&who, watch.len())?;
    // A session (online, a member of its presence rooms, kept after the answer) only when
    // the poll asks for what needs one: a sid alone opens nothing.
    let wants_session = !members_of.is_empty() || !watch.is_empty();
    let session = sid
        .as_ref()
        .filter(|_| wants_session)
        .map(|sid| herald_proto::text::poll_session(&who.user, sid));
    if let Some(d) = session.as_ref().and_then(|s| shared.presence.polls.take_disconnect(s)) {
        // The server API ended this session: the answer says so, and nothing else.
        let tail = PollTail {
            disconnect: Some((*d).clone()),
            ..PollTail::default()
        };
        let cursor = asked.as_ref().map(ToString::to_string).unwrap_or_default();
        let body = Bytes::from(encode_poll_answer(&[] as &[Bytes], &cursor, &tail));
        return Ok(json_holding(StatusCode::OK, body, slot));
    }
    fail::fail_point!("poll.touch");
    // While this request is in flight its session stays; after, it lives `--poll-session-ttl`
    // if answered, `--poll-leave-grace` if the client went away first.
    let mut held = match &session {
        Some(session) => Some(hold(shared, session, &who, &members_of).await?),
        None if !members_of.is_empty() => {
            return Err(HttpError::new(ErrorCode::BadRequest, "`presence` on /poll needs `sid`"));
        }
        None => None,
    };
    let asked = Asked {
        user: who.user.clone(),
        iat: who.claims.as_ref().and_then(|c| c.iat),
        rooms,
        members_of,
        watch,
        cursor: asked,
        wait,
    };
    let answer = answer(shared, slot, conn_id, session.as_deref(), &asked).await;
    if let Some(held) = &mut held {
        held.answered = true;
    }
    answer
}

/// What a poll asks for, parsed and checked.
struct Asked {
    user: String,
    /// When the poller's token was issued (seconds since the epoch), if it says.
    iat: Option<u64>,
    rooms: Vec<String>,
    /// The rooms the poller is a member of (`presence=`).
    members_of: Vec<String>,
    watch: Vec<String>,
    cursor: Option<Cursor>,
    wait: Duration,
}

/// The answer to a poll: backlog at once, else the first event, presence or status change
/// within `wait`.
async fn answer(
    shared: &Arc<Shared>,
    slot: Slot,
    conn_id: u64,
    session: Option<&str>,
    asked: &Asked,
) -> Result<Response<Body>, HttpError> {
    let Asked {
        user,
        iat,
        rooms,
        members_of,
        watch,
        cursor,
        wait,
    } = asked;
    let wait = *wait;
    let transport = if wait.is_zero() {
        Transport::Poll
    } else {
        Transport::LongPoll
    };
    metrics::connection_opened(transport);
    let _open = OpenGauge(transport);

    fail::fail_point!("poll.positions");
    let mut positions = start_positions(shared, rooms, cursor.as_ref()).await?;
    let mut events: Vec<Bytes> = Vec::new();
    let mut backlog = Backlog::default();
    if let Some(cursor) = cursor {
        backlog = history(shared, rooms, cursor, &mut positions, &mut events).await?;
    }
    // Rooms the server API gave the session or took from it since its last answer.
    for change in session
        .map(|s| shared.presence.polls.take_pending(s))
        .unwrap_or_default()
    {
        told(&mut backlog, &mut positions, change);
    }
    fail::fail_point!("poll.extra");
    let draining = shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    // A session in the middle of a round of presence answers gets the next one at once.
    let presence_more = session.is_some_and(|s| shared.presence.polls.presence_from(s) != 0);
    if !events.is_empty()
        || wait.is_zero()
        || draining
        || backlog.more
        || presence_more
        || !backlog.unrecovered.is_empty()
        || !backlog.subscribed.is_empty()
        || !backlog.unsubscribed.is_empty()
    {
        let tail = tail(shared, session, members_of, watch, backlog, &events).await;
        return Ok(respond(transport, &events, &positions, &tail, slot));
    }

    let mut reg = Registration::new(shared, slot, conn_id, (user, *iat), "long-poll");
    reg.attach_all(rooms, &positions).await?;
    // A presence or status change ends the wait too (the answer holds fresh snapshots).
    let subjects = &shared.subjects;
    let wanted = members_of
        .iter()
        .map(|r| (subjects.presence(r), Kind::Presence))
        .chain(watch.iter().map(|u| (subjects.status(u), Kind::Status)));
    let mut feeds = FeedSet::new(&shared.presence.feeds, conn_id);
    for (subject, kind) in wanted {
        fail::fail_point!("poll.feed");
        if feeds.add(subject.clone(), kind, &reg.out, Format::Bare).await {
            feeds.release(&subject, None);
        }
    }
    fail::fail_point!("poll.wait");
    let deadline = tokio::time::Instant::now() + wait;
    let mut batch = Vec::new();
    loop {
        let close = reg.out.take(&mut batch);
        if !batch.is_empty() || close.is_some() {
            break;
        }
        tokio::select! {
            _ = reg.out.notified() => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    drop(feeds);
    let slot = reg.release();
    let mut disconnect = None;
    for item in batch {
        match item.content {
            Content::Event { room, seq, .. } => {
                // An ephemeral event (seq 0) leaves the cursor where it is.
                if let Some(room) = room.filter(|_| seq > 0) {
                    positions.set(&room, seq);
                }
                events.push(item.bytes);
            }
            // The stream was recreated: the room starts over, and the answer says so.
            Content::Unrecovered(room) => {
                positions.set(&room, 0);
                backlog.unrecovered.push(room.to_string());
            }
            Content::Disconnect(d) => disconnect = Some(d),
            Content::Subscribed { room, seq } => {
                let room = room.to_string();
                told(
                    &mut backlog,
                    &mut positions,
                    Pending::Subscribed(Subscribed { room, seq }),
                );
            }
            Content::Unsubscribed(room) => told(&mut backlog, &mut positions, Pending::Unsubscribed(room.to_string())),
            Content::Presence | Content::Status | Content::Other => {}
        }
    }
    // What the server API changed meanwhile reached this poll through its queue; the
    // session keeps the same changes for its next poll: taken here, told once.
    if let Some(session) = session {
        for change in shared.presence.polls.take_pending(session) {
            let told_already = match &change {
                Pending::Subscribed(s) => backlog.subscribed.iter().any(|t| t.room == s.room),
                Pending::Unsubscribed(room) => backlog.unsubscribed.contains(room),
            };
            if !told_already {
                told(&mut backlog, &mut positions, change);
            }
        }
    }
    if let Some(d) = disconnect {
        // The session ends here: no presence or status to fetch for it, and its next poll
        // is not told again.
        if let Some(s) = session {
            shared.presence.polls.take_disconnect(s);
        }
        let tail = PollTail {
            disconnect: Some((*d).clone()),
            ..PollTail::default()
        };
        return Ok(respond(transport, &events, &positions, &tail, slot));
    }
    let tail = tail(shared, session, members_of, watch, backlog, &events).await;
    Ok(respond(transport, &events, &positions, &tail, slot))
}

/// Puts a change the server API made to the client's rooms into the answer: a room
/// subscribed joins the cursor at the seq it was subscribed at.
fn told(backlog: &mut Backlog, positions: &mut Cursor, change: Pending) {
    match change {
        Pending::Subscribed(s) => {
            if positions.get(&s.room).is_none() {
                positions.set(&s.room, s.seq);
            }
            backlog.subscribed.push(s);
        }
        Pending::Unsubscribed(room) => backlog.unsubscribed.push(room),
    }
}

/// The events after `positions` (moved past them), one bounded page across all the rooms.
async fn history(
    shared: &Shared,
    rooms: &[String],
    asked: &Cursor,
    positions: &mut Cursor,
    events: &mut Vec<Bytes>,
) -> Result<Backlog, HttpError> {
    let upstream = &shared.hub;
    let unavailable = |e: UpstreamError| HttpError::new(ErrorCode::Unavailable, e.to_string());
    let mut backlog = Backlog::default();
    let mut budget = shared.page_limit();
    for (i, room) in rooms.iter().enumerate() {
        let after = positions.get(room).unwrap_or(0);
        let page = upstream.page_after(room, after, budget).await.map_err(unavailable)?;
        if page.events.is_empty() && asked.get(room).is_some_and(|since| since > 0) {
            // Nothing after the cursor: if it is beyond the room's last seq, the stream was
            // recreated or purged; continue from the room's last seq and say so.
            let last = upstream.last_seq(room).await.map_err(unavailable)?;
            if after > last {
                positions.set(room, last);
                backlog.unrecovered.push(room.clone());
            }
        }
        budget.events -= page.events.len();
        budget.bytes = budget.bytes.saturating_sub(page.bytes);
        for ev in &page.events {
            positions.set(room, ev.seq);
            events.push(Bytes::from(Codec::Json.encode_event(ev.event_ref())));
        }
        let spent = budget.events == 0 || budget.bytes == 0;
        if page.more || (spent && i + 1 < rooms.len()) {
            backlog.more = true;
            break;
        }
    }
    Ok(backlog)
}

/// Holds polling session `session` for this request (opening it within the caps), with
/// its presence rooms set to `rooms`.
async fn hold<'a>(
    shared: &'a Shared,
    session: &'a str,
    who: &Identity,
    rooms: &[String],
) -> Result<Held<'a>, HttpError> {
    let limits = SessionLimits {
        per_user: shared.config.max_poll_sessions_per_user,
        total: shared.config.max_poll_sessions,
        memberships: Arc::clone(&shared.memberships),
    };
    let touched = match shared.presence.polls.hold(session, who, rooms, &limits) {
        Ok(touched) => touched,
        Err(SessionRefused::UserFull) => {
            return Err(HttpError::new(
                ErrorCode::RateLimited,
                "too many polling sessions for this user or address",
            ))
        }
        Err(SessionRefused::Full) => return Err(HttpError::new(ErrorCode::Unavailable, "too many polling sessions")),
        Err(SessionRefused::Memberships(over)) => return Err(membership_refused(over).into()),
    };
    let held = Held {
        shared,
        session,
        answered: false,
    };
    PollSessions::apply(&shared.presence.tracker, session, who, &touched).await;
    Ok(held)
}

/// What an answer says of the history behind it: `more` (the answer holds
/// `--replay-max-events`/`--replay-max-bytes` and more is stored after its cursor: poll again
/// at once) and `unrecovered` (rooms whose history no longer covers the cursor, because the
/// stream was recreated or purged; their position is now the room's last seq).
type Backlog = PollTail;

/// The answer's tail: the backlog, and the snapshots and statuses the request asked for, as
/// fanout answers now (left out if it does not answer), asked a few rooms at a time under one
/// deadline, the statuses beside them.
///
/// Snapshots count against the answer's `--replay-max-bytes` with its events: those that do
/// not fit are left out (the client keeps its last ones) and the answer says `more`; the
/// session's next answer (at once, even a long-poll's) starts at the first left out and
/// holds none before it, so every room's members arrive within a round of a few answers
/// however large the rooms are. The first snapshot of an answer without events goes whatever
/// its size (fanout sends counts only past its `--large-room`).
async fn tail(
    shared: &Shared,
    session: Option<&str>,
    rooms: &[String],
    watch: &[String],
    backlog: Backlog,
    events: &[Bytes],
) -> PollTail {
    let presence = &shared.presence;
    let deadline = Presence::fanout_deadline();
    let statuses = async {
        if watch.is_empty() {
            None
        } else {
            presence.statuses(watch).await
        }
    };
    let (mut tail, statuses) = tokio::join!(
        snapshot_page(shared, session, rooms, backlog, events, deadline),
        statuses
    );
    tail.status = statuses;
    tail
}

/// Rooms whose snapshots are asked of fanout at once: a poll holds at most this many of
/// fanout's answers beyond what its budget takes.
const SNAPSHOT_BATCH: usize = 4;

/// The answer's presence: the snapshots of `rooms` from where the session's round stands,
/// as many as fit the budget left by `events`, fetched a few at a time under `deadline`.
async fn snapshot_page(
    shared: &Shared,
    session: Option<&str>,
    rooms: &[String],
    mut tail: PollTail,
    events: &[Bytes],
    deadline: tokio::time::Instant,
) -> PollTail {
    if rooms.is_empty() {
        return tail;
    }
    let presence = &shared.presence;
    let polls = &presence.polls;
    let from = session.map_or(0, |s| polls.presence_from(s)) % rooms.len();
    let mut budget = shared
        .config
        .replay_max_bytes
        .saturating_sub(events.iter().map(Bytes::len).sum());
    let mut included = Vec::new();
    let mut next = 0;
    let mut first = events.is_empty();
    'batches: for (b, batch) in rooms[from..].chunks(SNAPSHOT_BATCH).enumerate() {
        let answers = presence.snapshots(batch, deadline).await;
        for (k, answer) in answers.into_iter().enumerate() {
            let Some((snapshot, size)) = answer else { continue };
            if size > budget && !first {
                next = from + b * SNAPSHOT_BATCH + k;
                tail.more = true;
                break 'batches;
            }
            first = false;
            budget = budget.saturating_sub(size);
            included.push(snapshot);
        }
    }
    if let Some(session) = session {
        polls.set_presence_from(session, next);
    }
    tail.presence = Some(included);
    tail
}

/// `?wait=` in seconds (fractions allowed), capped at `--poll-max-wait`.
fn wait(shared: &Shared, req: &Request<Incoming>) -> Result<Duration, HttpError> {
    let Some(w) = query_param(req, param::WAIT) else {
        return Ok(Duration::ZERO);
    };
    match w.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => {
            Ok(Duration::from_secs_f64(s.min(86_400.0)).min(shared.config.poll_max_wait))
        }
        _ => Err(HttpError::new(
            ErrorCode::BadRequest,
            "`wait` must be a number of seconds ≥ 0",
        )),
    }
}

/// The answer, holding the request's connection slot until hyper has taken its last bytes:
/// an answer's memory counts against `--max-connections` until it is (nearly) written, and a
/// client that does not read is dropped after `--write-timeout`.
fn respond(transport: Transport, events: &[Bytes], positions: &Cursor, tail: &PollTail, slot: Slot) -> Response<Body> {
    let body = Bytes::from(encode_poll_answer(events, &positions.to_string(), tail));
    metrics::sent(transport, events.len() as u64, body.len() as u64);
    json_holding(StatusCode::OK, body, slot)
}

/// A poll of a session in flight: released however the request ends (answered, cancelled,
/// panicked).
struct Held<'a> {
    shared: &'a Shared,
    session: &'a str,
    answered: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let c = &self.shared.config;
        let ttl = if self.answered {
            c.poll_session_ttl
        } else {
            c.poll_leave_grace
        };
        self.shared.presence.polls.release(self.session, ttl);
    }
}

/// `POST /poll/leave?sid=`: the polling client is leaving (herald.js sends it on `pagehide`);
/// its session ends now, and fanout's leave delay starts. Authenticated like `/poll`;
/// idempotent (204 whether or not the session was open).
pub(crate) async fn leave(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    remote: ClientAddr,
) -> Result<Response<Body>, HttpError> {
    let who = identify(shared, &req, remote).await?;
    let Some(sid) = session_id(&req)? else {
        return Err(HttpError::new(ErrorCode::BadRequest, "`sid` is required"));
    };
    request_allowed(shared, &who)?;
    let session = herald_proto::text::poll_session(&who.user, &sid);
    shared.presence.polls.end(&shared.presence.tracker, &session);
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(full(bytes::Bytes::new()))
        .expect("static response parts"))
}
