//! One WebSocket connection: a reader that decodes and runs ops, and a writer that drains
//! the outbound queue, pings, and enforces the idle and token-expiry limits.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use futures_util::FutureExt;
use herald_proto::codec::DecodeError;
use herald_proto::frame::{
    Ack, ClientFrame, ClientOp, ErrorFrame, Id, Payload, Pong, Presence, ServerFrame, Subscribed, Unsubscribed, Welcome,
};
use herald_proto::{CloseCode, Codec, ErrorCode};
use herald_service::now_ms;
use std::panic::AssertUnwindSafe;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::OwnedWriteHalf;
use tracing::{debug, error, Instrument};

use crate::auth::{Access, Identity};
use crate::deflate;
use crate::feeds::Kind;
use crate::limit::{Held, TokenBucket};
use crate::metrics::{self, Transport};
use crate::outbound::{data_frame, encode_for, opcode, ws_frame, Deflate, Format, Item, Outbound, SharedWrite};
use crate::state::{Command, Mailbox, RateKind, RoomTokens, Shared, Slot};
use crate::sync::panic_message;

use super::input::{self, Input};
use super::socket;
use super::writer::{write_loop, BUSY, CLOSE_GRACE};

/// Rejected publishes in a row that close the connection with 4029.
const RATE_STRIKES: u32 = 10;

/// What the endpoint does with messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Herald's protocol (`/ws`).
    Herald,
    /// Echo every message unchanged (`/echo`, for conformance runs).
    Echo,
}

/// A connection's identity and settings, fixed at the upgrade.
pub(crate) struct Accepted {
    pub slot: Slot,
    pub conn_id: u64,
    pub conn: String,
    pub identity: Identity,
    pub codec: Codec,
    pub compression: Compression,
    pub mode: Mode,
}

/// The permessage-deflate a connection agreed to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Compression {
    /// The client may send compressed messages.
    pub inbound: bool,
    /// How events go compressed, if they do.
    pub events: Option<Deflate>,
}

/// Everything a connection holds. Its `Drop` gives it all back (rooms, presence, watched
/// users, fanout's record of the connection, the slot), so a connection that ends in a
/// panic or is cancelled leaves nothing behind.
struct Session {
    shared: Arc<Shared>,
    mode: Mode,
    /// Dropped after `Drop::drop` has left everything else.
    _slot: Slot,
    conn_id: u64,
    conn: String,
    identity: Identity,
    codec: Codec,
    /// How events go compressed, if they do.
    compress: Option<Deflate>,
    out: Arc<Outbound>,
    rooms: HashSet<String>,
    /// Rooms subscribed with `presence: true` (a subset of `rooms`).
    presence_rooms: HashSet<String>,
    /// Users whose status this connection watches.
    watching: HashSet<String>,
    bucket: TokenBucket,
    /// `--op-rate`: subscribe, unsubscribe, presence, watch, unwatch.
    ops: TokenBucket,
    /// Its share of the gateway's presence memberships, one per presence room (boxed, and
    /// only once it joins one).
    memberships: Option<Box<Held>>,
    /// Its share of its address's watched users (anonymous clients; boxed, and only once it
    /// watches).
    watches: Option<Box<Held>>,
    /// The server API's commands for this connection.
    mail: Arc<Mailbox>,
}

/// Who asks for a subscription.
enum Asker {
    /// The client, with the subscription tokens it sent along.
    Client(Vec<String>),
    /// The server API (`herald.api.subscribe`).
    Server,
}

/// Why the reader stopped.
enum End {
    /// The peer closed (its close frame is already answered) or the socket failed.
    Peer,
    /// Close with this code.
    Close(CloseCode),
}

// === impl Session ===

/// Completes the upgrade and runs the connection until it ends.
///
/// A connection is one task and this future is most of its memory, so it is laid out with
/// care: its inputs come boxed (an async fn keeps its arguments beside the locals it moves
/// them into), and the writer runs in this task beside the reader instead of in a task of
/// its own.
pub(crate) async fn run(shared: Arc<Shared>, upgrade: UpgradeFut, accepted: Box<Accepted>) {
    let io = match upgrade.await {
        Ok(ws) => ws.into_inner(),
        Err(e) => return debug!(error = %e, "Upgrade did not complete"),
    };
    let span =
        tracing::info_span!("conn", conn = %accepted.conn, user = %accepted.identity.user, transport = "websocket");
    match socket::plain_tcp(io) {
        Ok((rd, wr)) => {
            let direct = Arc::clone(&wr);
            serve(shared, rd, SharedWrite(wr), Some(direct), accepted)
                .instrument(span)
                .await
        }
        Err(io) => {
            let (rd, wr) = tokio::io::split(io);
            serve(shared, rd, wr, None, accepted).instrument(span).await
        }
    }
}

/// `direct`: the connection's socket when it is plain TCP, lent to its outbound queue.
async fn serve<R, W>(shared: Arc<Shared>, rd: R, wr: W, direct: Option<Arc<OwnedWriteHalf>>, a: Box<Accepted>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let idle = AtomicBool::new(true);
    let kind = AtomicU8::new(input::kind::PLAIN);
    let mut input = Input::new(rd, &idle, a.compression.inbound, &kind);
    let out = Outbound::new(shared.config.outbound_buffer_bytes);
    if let Some(tcp) = direct {
        out.write_directly(tcp);
    }
    let last_seen = AtomicU64::new(now_ms());
    let Accepted {
        slot,
        conn_id,
        conn,
        identity,
        codec,
        compression,
        mode,
    } = *a;
    let mail = Arc::new(Mailbox::default());
    slot.register(
        (&identity.user, identity.claims.as_ref().and_then(|c| c.iat)),
        "websocket",
        Format::WebSocket(codec, compression.events),
        Arc::clone(&out),
        Some(Arc::clone(&mail)),
    );
    metrics::connection_opened(Transport::WebSocket);

    let mut session = Session {
        mode,
        _slot: slot,
        conn_id,
        conn,
        codec,
        compress: compression.events,
        out: Arc::clone(&out),
        rooms: HashSet::new(),
        presence_rooms: HashSet::new(),
        watching: HashSet::new(),
        bucket: TokenBucket::new(shared.config.publish_rate),
        ops: TokenBucket::with_burst(shared.config.op_rate, shared.op_burst()),
        memberships: None,
        watches: None,
        identity,
        mail,
        shared: Arc::clone(&shared),
    };
    if mode == Mode::Herald {
        session.send(&ServerFrame::Welcome(Welcome {
            conn: session.conn.clone(),
            user: session.identity.user.clone(),
            gateway: shared.gateway_id.clone(),
            ping_s: shared.config.ping_interval.as_secs(),
        }));
        shared.presence.tracker.open(&session.conn, &session.identity.user);
    }
    let expires = session.identity.expires_at();
    // A panic in the writer ends the connection (no close frame: the writer is gone) and
    // the session's Drop releases what it held. The writer's output: whether it ended in
    // order.
    let writer = AssertUnwindSafe(write_loop(wr, &out, &last_seen, &shared.config, expires))
        .catch_unwind()
        .map(|ended| match ended {
            Ok(()) => true,
            Err(panic) => {
                error!(
                    panic = panic_message(&*panic),
                    "Writer panicked; closing its connection"
                );
                metrics::error(ErrorCode::Internal);
                false
            }
        });
    tokio::pin!(writer);
    let max = shared.config.max_message_bytes;
    let reading = session.read_loop(&mut input, (&idle, &kind), &last_seen, mode, max);
    // Whether our close frame may still be on its way to a peer that has not closed.
    let linger = tokio::select! {
        end = reading => {
            let peer_closed = matches!(end, End::Peer);
            match end {
                End::Peer => out.close(None),
                End::Close(code) => out.close(Some(code)),
            }
            // The writer sends what is queued and the close frame; a peer that reads none
            // of it within the grace is dropped with the writer.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut writer).await;
            !peer_closed
        }
        in_order = &mut writer => in_order,
    };
    out.end_direct();
    drop(session);
    if linger {
        // Boxed, as a rare state: this future's size is that of its largest state.
        Box::pin(read_until_close(&mut input, max)).await;
    }
    debug!("Connection closed");
}

/// We closed first: reads (and discards) until the peer's close frame or EOF, for at most
/// [`CLOSE_GRACE`], so that unread input does not turn our close into a reset that destroys
/// the close frame.
async fn read_until_close<R: AsyncRead + Unpin>(input: &mut Input<'_, R>, max: usize) {
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    let (mut reader, _) = fastwebsockets::after_handshake_split(&mut *input, tokio::io::sink(), Role::Server);
    reader.set_max_message_size(max.saturating_add(1));
    let frames = async {
        let mut ignore = |_: Frame<'_>| std::future::ready(Ok::<(), Infallible>(()));
        loop {
            match reader.read_frame(&mut ignore).await {
                Ok(frame) if frame.opcode == OpCode::Close => return false,
                Ok(_) => continue,
                Err(WebSocketError::UnexpectedEOF | WebSocketError::IoError(_)) => return false,
                // Unparseable input (e.g. the rest of an oversized frame): skip raw bytes.
                Err(_) => return true,
            }
        }
    };
    let raw_needed = tokio::time::timeout_at(deadline, frames).await.unwrap_or(false);
    drop(reader);
    if raw_needed {
        let _ = tokio::time::timeout_at(deadline, input.discard()).await;
    }
}

impl Session {
    /// How this connection's frames are encoded.
    fn format(&self) -> Format {
        Format::WebSocket(self.codec, self.compress)
    }

    /// Reads messages until the connection ends. A frame reader (and its buffer) exists only
    /// while a message is arriving; between messages the connection holds none.
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        input: &mut Input<'_, R>,
        (idle, kind): (&AtomicBool, &AtomicU8),
        last_seen: &AtomicU64,
        mode: Mode,
        max: usize,
    ) -> End {
        let mut fragments: Option<Fragments> = None;
        let mail = Arc::clone(&self.mail);
        loop {
            let ready = tokio::select! {
                ready = input.wait() => ready,
                _ = mail.posted() => {
                    // Boxed, as the frame reader is: a rare state.
                    let commands = AssertUnwindSafe(Box::pin(self.run_commands())).catch_unwind().await;
                    if let Err(panic) = commands {
                        error!(panic = panic_message(&*panic), "Command panicked; closing its connection");
                        metrics::error(ErrorCode::Internal);
                        return End::Close(CloseCode::INTERNAL);
                    }
                    continue;
                }
            };
            match ready {
                Ok(true) => {}
                Ok(false) | Err(_) => return End::Peer,
            }
            // Boxed: the frame reader and the op being run exist only while messages
            // arrive, and an idle connection's task does not carry room for them.
            let read = self.read_messages(input, (idle, kind), last_seen, mode, max, &mut fragments);
            if let Some(end) = Box::pin(read).await {
                return end;
            }
            input.shrink();
        }
    }

    /// Reads and handles frames until every frame fed so far has been returned (`None`), or
    /// the connection must end.
    async fn read_messages<R: AsyncRead + Unpin>(
        &mut self,
        input: &mut Input<'_, R>,
        (idle, kind): (&AtomicBool, &AtomicU8),
        last_seen: &AtomicU64,
        mode: Mode,
        max: usize,
        fragments: &mut Option<Fragments>,
    ) -> Option<End> {
        let out = Arc::clone(&self.out);
        // Pongs and close replies that the frame reader owes the peer go through the queue.
        let mut obligated = move |frame: Frame<'_>| {
            let op = match frame.opcode {
                OpCode::Close => opcode::CLOSE,
                _ => opcode::PONG,
            };
            out.push_frame(ws_frame(op, &frame.payload));
            std::future::ready(Ok::<(), Infallible>(()))
        };
        let (mut reader, _) = fastwebsockets::after_handshake_split(&mut *input, tokio::io::sink(), Role::Server);
        // fastwebsockets refuses frames of `max` bytes or more; the contract refuses only larger ones.
        reader.set_max_message_size(max.saturating_add(1));
        loop {
            let frame = match reader.read_frame(&mut obligated).await {
                Ok(frame) => frame,
                Err(e) => return Some(read_error(e)),
            };
            last_seen.store(now_ms(), Ordering::Relaxed);
            match assemble(frame, kind.load(Ordering::Relaxed), fragments, max) {
                Err(end) => return Some(end),
                Ok(Some((op, payload))) => {
                    // While the op runs, frames are not read (a paced replay waits for the
                    // client to read its bursts): the peer's pongs wait in the socket, and
                    // the idle check waits for them.
                    last_seen.store(BUSY, Ordering::Relaxed);
                    // A bug that one input triggers ends that input's connection (1011),
                    // never the gateway; the session's Drop releases what it held.
                    let handled = AssertUnwindSafe(self.on_message(mode, op, payload))
                        .catch_unwind()
                        .await;
                    last_seen.store(now_ms(), Ordering::Relaxed);
                    match handled {
                        Ok(Ok(())) => {}
                        Ok(Err(code)) => return Some(End::Close(code)),
                        Err(panic) => {
                            error!(panic = panic_message(&*panic), "Op panicked; closing its connection");
                            metrics::error(ErrorCode::Internal);
                            return Some(End::Close(CloseCode::INTERNAL));
                        }
                    }
                }
                Ok(None) => {}
            }
            if idle.load(Ordering::Relaxed) {
                return None;
            }
        }
    }

    async fn on_message(&mut self, mode: Mode, op: OpCode, payload: Vec<u8>) -> Result<(), CloseCode> {
        if mode == Mode::Echo {
            let code = if op == OpCode::Text {
                opcode::TEXT
            } else {
                opcode::BINARY
            };
            self.out.push_frame(data_frame(code, &payload, self.compress));
            return Ok(());
        }
        metrics::received();
        if (op == OpCode::Binary) != self.codec.is_binary() {
            return Err(CloseCode::UNSUPPORTED_DATA);
        }
        match self.codec.decode_client(&payload) {
            // Boxed: the ops' futures are large and rare; kept out of every idle connection's task.
            Ok(frame) => Box::pin(self.on_op(frame)).await,
            Err(DecodeError::Undecodable(_)) => Err(CloseCode::INVALID_PAYLOAD),
            Err(DecodeError::BadRequest { id, message }) => {
                self.error(id, ErrorCode::BadRequest, message);
                Ok(())
            }
        }
    }

    async fn on_op(&mut self, ClientFrame { id, op }: ClientFrame) -> Result<(), CloseCode> {
        let counted = !matches!(op, ClientOp::Publish { .. } | ClientOp::Ping);
        // An anonymous client's ops also count against its address, over all its connections.
        if counted && !(self.ops.take() && self.anonymous_allowed(RateKind::Request)) {
            if self.ops.strikes >= RATE_STRIKES {
                return Err(CloseCode::RATE_LIMITED);
            }
            self.error(id, ErrorCode::RateLimited, format!("`{}` rate exceeded", op.name()));
            return Ok(());
        }
        match op {
            ClientOp::Subscribe {
                room,
                since,
                presence,
                token,
            } => {
                let by = Asker::Client(token.map(|t| vec![t]).unwrap_or_default());
                self.subscribe(id, room, since, presence, by).await
            }
            ClientOp::Unsubscribe { room } => self.unsubscribe(id, room),
            ClientOp::Publish { room, data, kind, key } => return self.publish(id, room, data, kind, key).await,
            ClientOp::Presence { room } => self.presence(id, room).await,
            ClientOp::Watch { users } => self.watch(id, users).await,
            ClientOp::Unwatch { users } => self.unwatch(id, users),
            ClientOp::Ping => self.send(&ServerFrame::Pong(Pong { id })),
        }
        Ok(())
    }

    /// The server API's commands posted so far, in order.
    async fn run_commands(&mut self) {
        for command in self.mail.take() {
            match command {
                Command::Subscribe { room, presence, since } => {
                    // A room the client holds already stays as it is.
                    if !self.rooms.contains(&room) {
                        self.subscribe(None, room, since, presence, Asker::Server).await;
                    }
                }
                Command::Unsubscribe { room } => {
                    if self.rooms.contains(&room) {
                        self.leave(&room);
                        self.send(&ServerFrame::Unsubscribed(Unsubscribed { room }));
                    }
                }
            }
        }
    }

    /// The client's `subscribe` (with the subscription tokens it sent), or the server
    /// API's: granted already, and answered with a `subscribed` frame instead of an `ack`.
    async fn subscribe(&mut self, id: Option<Id>, room: String, since: Option<u64>, presence: bool, by: Asker) {
        let by_server = match &by {
            Asker::Client(tokens) => {
                let mut tokens = RoomTokens::new(tokens);
                if let Err(r) = self.shared.may_subscribe(&self.identity, &room, &mut tokens).await {
                    return self.error(id, r.code, r.message);
                }
                false
            }
            Asker::Server => true,
        };
        if presence {
            if let Err(r) = self.shared.presence_allowed(&room) {
                return self.error(id, r.code, r.message);
            }
        }
        // The namespace's history rules: no replay, or the newest event first.
        let mut since = since;
        let mut unrecovered = false;
        if since.is_some() && !self.shared.replays(&room) {
            since = None;
            unrecovered = true;
        }
        if since.is_none() && self.shared.last_value(&room) {
            match self.shared.hub.last_seq(&room).await {
                Ok(last) if last > 0 => since = Some(last - 1),
                Ok(_) => {}
                Err(e) => return self.error(id, ErrorCode::Unavailable, e.to_string()),
            }
        }
        let max = self.shared.config.max_presence_rooms;
        if presence && !self.presence_rooms.contains(&room) && self.presence_rooms.len() >= max {
            return self.error(
                id,
                ErrorCode::TooManySubscriptions,
                format!("at most {max} presence rooms per connection"),
            );
        }
        if !self.rooms.contains(&room) && self.rooms.len() >= self.shared.config.max_subscriptions {
            let max = self.shared.config.max_subscriptions;
            return self.error(
                id,
                ErrorCode::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
            );
        }
        if self.rooms.contains(&room) {
            self.leave(&room);
        }
        if presence {
            if let Err(refused) = self.take_membership() {
                return self.error(id, refused.code, refused.message);
            }
        }
        self.rooms.insert(room.clone());
        let format = self.format();
        fail::fail_point!("ws.subscribe");
        let upstream = &self.shared.hub;
        // History first, in bursts the client reads one by one; then the hub splices the
        // rest of the replay with the live events.
        let mut recovered = !unrecovered;
        let mut after = None;
        // The server's subscribe is announced first, at the seq the events that follow come
        // after (the room's last as the command came, when known), not as the attach's ack.
        let announced = match (by_server, since) {
            (true, Some(seq)) => {
                self.send(&ServerFrame::Subscribed(Subscribed {
                    room: room.clone(),
                    seq,
                }));
                true
            }
            _ => false,
        };
        if let Some(since) = since {
            let limit = self.shared.page_limit();
            let history = async {
                let resume = upstream.resume(&room, since).await?;
                recovered = resume.recovered && !unrecovered;
                upstream
                    .send_history(&room, resume.after, &self.out, format, limit)
                    .await
            };
            match history.await {
                Ok(seq) => after = Some(seq),
                Err(e) => {
                    self.rooms.remove(&room);
                    self.give_back_membership(presence);
                    return self.subscribe_failed(id, announced, room, e.to_string());
                }
            }
        }
        let (codec, ack_id, ack_room) = (self.codec, id.clone(), room.clone());
        let ack = move |seq| {
            if announced {
                return bytes::Bytes::new();
            }
            if by_server {
                let frame = ServerFrame::Subscribed(Subscribed { room: ack_room, seq });
                return encode_for(Format::WebSocket(codec, None), &frame);
            }
            let ack = Ack {
                id: ack_id,
                room: Some(ack_room),
                seq: Some(seq),
                recovered: Some(recovered),
                repeat: None,
            };
            encode_for(Format::WebSocket(codec, None), &ServerFrame::Ack(ack))
        };
        match upstream
            .attach(&room, self.conn_id, &self.out, format, after, ack)
            .await
        {
            Ok(seq) => debug!(%room, ?since, seq, presence, "Subscribed"),
            Err(message) => {
                self.rooms.remove(&room);
                self.give_back_membership(presence);
                return self.subscribe_failed(id, announced, room, message);
            }
        }
        if presence {
            self.join_presence(id, room).await;
        }
    }

    /// A subscribe that could not attach: the error, and an `unsubscribed` for a room the
    /// server's subscribe announced already.
    fn subscribe_failed(&mut self, id: Option<Id>, announced: bool, room: String, message: String) {
        self.error(id, ErrorCode::Unavailable, message);
        if announced {
            self.send(&ServerFrame::Unsubscribed(Unsubscribed { room }));
        }
    }

    /// One more presence membership for this connection, within its address's and the
    /// gateway's caps (given back as it leaves the room: see `leave_presence`).
    fn take_membership(&mut self) -> Result<(), crate::state::MembershipRefused> {
        match &mut self.memberships {
            Some(held) => held.grow(1).map_err(crate::state::membership_refused),
            None => self.shared.memberships_for(&self.identity, 1).map(|held| {
                self.memberships = Some(Box::new(held));
            }),
        }
    }

    /// Gives back the membership taken for a presence subscribe that failed.
    fn give_back_membership(&mut self, presence: bool) {
        if let (true, Some(held)) = (presence, &mut self.memberships) {
            held.shrink(1);
        }
    }

    /// Joins the room's presence (its membership is taken), then sends its snapshot and,
    /// after it, every diff.
    async fn join_presence(&mut self, id: Option<Id>, room: String) {
        let shared = Arc::clone(&self.shared);
        let name = self.identity.name.as_deref();
        self.presence_rooms.insert(room.clone());
        fail::fail_point!("ws.presence.join");
        shared
            .presence
            .tracker
            .join(&room, &self.conn, &self.identity.user, name)
            .await;
        fail::fail_point!("ws.presence.follow");
        let format = self.format();
        match shared
            .presence
            .follow(self.conn_id, &self.out, format, &room, id.clone())
            .await
        {
            Ok(()) => {}
            Err(message) => self.error(id, ErrorCode::Unavailable, message),
        }
    }

    fn unsubscribe(&mut self, id: Option<Id>, room: String) {
        self.leave(&room);
        self.send(&ServerFrame::Ack(Ack {
            id,
            room: Some(room),
            ..Ack::default()
        }));
    }

    async fn publish(
        &mut self,
        id: Option<Id>,
        room: String,
        data: Payload,
        kind: Option<String>,
        key: Option<String>,
    ) -> Result<(), CloseCode> {
        if let Err(r) = self.shared.may_publish(&self.identity, &room) {
            self.error(id, r.code, r.message);
            return Ok(());
        }
        if !self.shared.namespace_rate_allows(&self.identity, &room) {
            self.error(id, ErrorCode::RateLimited, "publish rate of this namespace exceeded");
            return Ok(());
        }
        if !(self.bucket.take() && self.anonymous_allowed(RateKind::Publish)) {
            if self.bucket.strikes >= RATE_STRIKES {
                return Err(CloseCode::RATE_LIMITED);
            }
            self.error(id, ErrorCode::RateLimited, "publish rate exceeded");
            return Ok(());
        }
        let upstream = &self.shared.hub;
        if self.shared.ephemeral(&room) {
            // Never stored: sent on, and acked with seq 0.
            match upstream
                .publish_ephemeral(&room, data.bytes().clone(), kind.as_deref(), &self.identity.user)
                .await
            {
                Ok(()) => self.send(&ServerFrame::Ack(Ack {
                    id,
                    room: Some(room),
                    seq: Some(0),
                    ..Ack::default()
                })),
                Err(e) => self.error(id, ErrorCode::Unavailable, format!("publish failed: {e}")),
            }
            return Ok(());
        }
        let retention = self.shared.retention(&room);
        fail::fail_point!("ws.publish");
        let ack = match upstream
            .publish(
                &room,
                data.bytes().clone(),
                kind.as_deref(),
                key.as_deref(),
                &self.identity.user,
                retention.ttl,
            )
            .await
        {
            Ok(ack) => ack,
            Err(e) => {
                self.error(id, ErrorCode::Unavailable, format!("publish failed: {e}"));
                return Ok(());
            }
        };
        let (out, codec, hub) = (Arc::clone(&self.out), self.codec, Arc::clone(&self.shared.hub));
        tokio::spawn(async move {
            let frame = match ack.await {
                Ok(ack) => {
                    metrics::published(ack.duplicate);
                    if let Some(keep) = retention.keep {
                        hub.trim(&room, keep).await;
                    }
                    ServerFrame::Ack(Ack {
                        id,
                        room: Some(room),
                        seq: Some(ack.sequence),
                        recovered: None,
                        repeat: ack.duplicate.then_some(true),
                    })
                }
                Err(e) => {
                    metrics::error(ErrorCode::Unavailable);
                    ServerFrame::Error(ErrorFrame::new(
                        id,
                        ErrorCode::Unavailable,
                        format!("publish failed: {e}"),
                    ))
                }
            };
            out.push_frame(encode_for(Format::WebSocket(codec, None), &frame));
        });
        Ok(())
    }

    async fn presence(&mut self, id: Option<Id>, room: String) {
        let allowed = self.identity.check_room(&room, Access::Subscribe);
        if let Err(r) = allowed.and_then(|()| self.shared.presence_allowed(&room)) {
            return self.error(id, r.code, r.message);
        }
        fail::fail_point!("ws.presence");
        match self.snapshot(id.clone(), &room).await {
            Some(p) => self.send(&ServerFrame::Presence(p)),
            None => self.error(id, ErrorCode::Unavailable, "the presence service did not answer"),
        }
    }

    /// The room's presence snapshot from fanout, if it answers in time.
    async fn snapshot(&self, id: Option<Id>, room: &str) -> Option<Presence> {
        let mut p = self.shared.presence.snapshot(room).await?;
        p.id = id;
        Some(p)
    }

    async fn watch(&mut self, id: Option<Id>, users: Vec<String>) {
        let added: Vec<String> = users
            .iter()
            .filter(|u| !self.watching.contains(*u))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let max = self.shared.config.max_watch;
        if self.watching.len() + added.len() > max {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!("at most {max} watched users per connection"),
            );
        }
        if let Err(refused) = self.hold_watches(self.watching.len() + added.len()) {
            return self.error(id, refused.code, refused.message);
        }
        let shared = Arc::clone(&self.shared);
        let subjects = &shared.subjects;
        let mut feeds = Vec::with_capacity(added.len());
        for user in &added {
            let subject = subjects.status(user);
            // Recorded first: a panic or cancel inside `add` still has it removed at the end.
            self.watching.insert(user.clone());
            fail::fail_point!("ws.watch");
            let format = self.format();
            if shared
                .presence
                .feeds
                .add(&subject, Kind::Status, self.conn_id, &self.out, format)
                .await
            {
                feeds.push(subject);
            } else {
                // All or nothing (`--max-feeds` reached, or NATS down): the users this op
                // added are let go too.
                for subject in feeds {
                    shared.presence.feeds.remove(&subject, self.conn_id);
                }
                for user in &added {
                    self.watching.remove(user);
                }
                let _ = self.hold_watches(self.watching.len());
                return self.error(id, ErrorCode::Unavailable, "status updates are unavailable");
            }
        }
        fail::fail_point!("ws.watch.statuses");
        let statuses = shared.presence.statuses(&users).await;
        self.send(&ServerFrame::Ack(Ack {
            id: id.clone(),
            ..Ack::default()
        }));
        match statuses {
            Some(statuses) => {
                for status in statuses {
                    self.send(&ServerFrame::Status(status));
                }
            }
            None => self.error(id, ErrorCode::Unavailable, "the presence service did not answer"),
        }
        for subject in feeds {
            shared.presence.feeds.release(&subject, self.conn_id, None);
        }
    }

    fn unwatch(&mut self, id: Option<Id>, users: Vec<String>) {
        for user in users {
            if self.watching.remove(&user) {
                let subject = self.shared.subjects.status(&user);
                self.shared.presence.feeds.remove(&subject, self.conn_id);
            }
        }
        let _ = self.hold_watches(self.watching.len());
        self.send(&ServerFrame::Ack(Ack { id, ..Ack::default() }));
    }

    /// Holds a share of `n` watched users (an anonymous client's count against its
    /// address; shrinking always succeeds).
    fn hold_watches(&mut self, n: usize) -> Result<(), crate::state::MembershipRefused> {
        match &mut self.watches {
            Some(held) => held.resize(n).map_err(crate::state::watch_refused),
            None if n == 0 => Ok(()),
            None => self.shared.watches_for(&self.identity, n).map(|held| {
                self.watches = Some(Box::new(held));
            }),
        }
    }

    fn leave(&mut self, room: &str) {
        if self.rooms.remove(room) {
            self.shared.hub.detach(room, self.conn_id);
        }
        self.leave_presence(room);
    }

    fn leave_presence(&mut self, room: &str) {
        if self.presence_rooms.remove(room) {
            if let Some(held) = &mut self.memberships {
                held.shrink(1);
            }
            let subject = self.shared.subjects.presence(room);
            self.shared.presence.feeds.remove(&subject, self.conn_id);
            self.shared.presence.tracker.leave(room, &self.conn);
        }
    }

    /// Leaves everything as the connection ends. Fanout learns from the connection's close
    /// (which applies the leave delay), not from per-room leaves (which do not).
    fn leave_all(&mut self) {
        self.out.close(None);
        let subjects = &self.shared.subjects;
        for room in std::mem::take(&mut self.presence_rooms) {
            self.shared
                .presence
                .feeds
                .remove(&subjects.presence(&room), self.conn_id);
        }
        for room in std::mem::take(&mut self.rooms) {
            self.shared.hub.detach(&room, self.conn_id);
        }
        for user in std::mem::take(&mut self.watching) {
            self.shared.presence.feeds.remove(&subjects.status(&user), self.conn_id);
        }
    }

    /// For an anonymous client, whether its address's shared bucket of `kind` allows one
    /// more; always for users with a token (counted per connection and user).
    fn anonymous_allowed(&self, kind: RateKind) -> bool {
        self.identity.anonymous.is_none() || self.shared.http_allowed(kind, &self.identity)
    }

    fn send(&self, frame: &ServerFrame) {
        let bytes = encode_for(self.format(), frame);
        self.out.push_now(Item::frame(bytes));
    }

    fn error(&self, id: Option<Id>, code: ErrorCode, message: impl Into<String>) {
        let message = message.into();
        debug!(code = code.as_str(), %message, "Error sent");
        metrics::error(code);
        self.send(&ServerFrame::Error(ErrorFrame::new(id, code, message)));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave_all();
        if self.mode == Mode::Herald {
            self.shared.presence.tracker.close(&self.conn);
        }
        metrics::connection_closed(Transport::WebSocket);
        // `_slot` is dropped after this, giving the connection's place back.
    }
}

/// A message arriving in fragments: its opcode, whether it is compressed, what came so far.
type Fragments = (OpCode, bool, Vec<u8>);

/// Adds a frame to the message arriving; returns a whole message (inflated, if it came
/// compressed), or the close a bad frame earns. `kind` is what [`Input`] saw the frame
/// begin ([`input::kind`]).
fn assemble(
    frame: Frame<'_>,
    kind: u8,
    fragments: &mut Option<Fragments>,
    max: usize,
) -> Result<Option<(OpCode, Vec<u8>)>, End> {
    let compressed = kind != input::kind::PLAIN;
    // A compressed text message was handed over as binary.
    let op = if kind == input::kind::COMPRESSED_TEXT {
        OpCode::Text
    } else {
        frame.opcode
    };
    match op {
        OpCode::Close => Err(End::Peer),
        OpCode::Ping | OpCode::Pong => Ok(None),
        OpCode::Text | OpCode::Binary if fragments.is_some() => Err(End::Close(CloseCode::PROTOCOL_ERROR)),
        OpCode::Text | OpCode::Binary if !frame.fin => {
            *fragments = Some((op, compressed, frame.payload.to_vec()));
            Ok(None)
        }
        // A whole uncompressed text frame's UTF-8 was checked by the frame reader.
        OpCode::Text | OpCode::Binary => finish(op, compressed, frame.payload.to_vec(), compressed, max).map(Some),
        OpCode::Continuation => {
            let Some((op, _, buf)) = fragments.as_mut() else {
                return Err(End::Close(CloseCode::PROTOCOL_ERROR));
            };
            if buf.len() + frame.payload.len() > max {
                return Err(End::Close(CloseCode::TOO_BIG));
            }
            buf.extend_from_slice(&frame.payload);
            if !frame.fin {
                return Ok(None);
            }
            let op = *op;
            let (_, compressed, buf) = fragments.take().expect("a message in fragments");
            finish(op, compressed, buf, true, max).map(Some)
        }
    }
}

/// A whole message: inflated if compressed (at most `max` bytes: more is 1009, a broken
/// stream 1007), and a text message's UTF-8 checked when `check_text`.
fn finish(
    op: OpCode,
    compressed: bool,
    payload: Vec<u8>,
    check_text: bool,
    max: usize,
) -> Result<(OpCode, Vec<u8>), End> {
    let payload = if compressed {
        deflate::inflate(&payload, max).map_err(|e| {
            End::Close(match e {
                deflate::InflateError::TooBig => CloseCode::TOO_BIG,
                deflate::InflateError::Corrupt => CloseCode::INVALID_PAYLOAD,
            })
        })?
    } else {
        payload
    };
    if check_text && op == OpCode::Text && std::str::from_utf8(&payload).is_err() {
        return Err(End::Close(CloseCode::INVALID_PAYLOAD));
    }
    Ok((op, payload))
}

fn read_error(e: WebSocketError) -> End {
    match e {
        WebSocketError::FrameTooLarge => End::Close(CloseCode::TOO_BIG),
        WebSocketError::InvalidUTF8 => End::Close(CloseCode::INVALID_PAYLOAD),
        WebSocketError::IoError(_) | WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => End::Peer,
        // The frame reader has already queued a 1002 close for a bad close code.
        WebSocketError::InvalidCloseCode => End::Peer,
        _ => End::Close(CloseCode::PROTOCOL_ERROR),
    }
}
