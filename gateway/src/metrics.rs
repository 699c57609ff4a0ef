//! Every `herald_gateway_*` metric: its name, its description, and a typed helper.

use std::sync::OnceLock;

use herald_proto::ErrorCode;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const CONNECTIONS: &str = "herald_gateway_connections";
pub(crate) const CONNECTIONS_OPENED: &str = "herald_gateway_connections_opened_total";
pub(crate) const MESSAGES_SENT: &str = "herald_gateway_messages_sent_total";
pub(crate) const MESSAGES_RECEIVED: &str = "herald_gateway_messages_received_total";
pub(crate) const PUBLISHES: &str = "herald_gateway_publishes_total";
pub(crate) const DELIVERY_LATENCY: &str = "herald_gateway_delivery_latency_seconds";
pub(crate) const SLOW_CONSUMER_DISCONNECTS: &str = "herald_gateway_slow_consumer_disconnects_total";
pub(crate) const WRITE_TIMEOUTS: &str = "herald_gateway_write_timeouts_total";
pub(crate) const ROOM_SUBSCRIPTIONS: &str = "herald_gateway_room_subscriptions";
pub(crate) const NATS_SUBSCRIPTIONS: &str = "herald_gateway_nats_subscriptions";
pub(crate) const POLL_SESSIONS: &str = "herald_gateway_poll_sessions";
pub(crate) const MEMBERSHIPS: &str = "herald_gateway_presence_memberships";
pub(crate) const ERRORS: &str = "herald_gateway_errors_total";
pub(crate) const BYTES_SENT: &str = "herald_gateway_bytes_sent_total";
pub(crate) const GAPS_REPAIRED: &str = "herald_gateway_gap_events_repaired_total";
pub(crate) const LAST_SEQ_READS: &str = "herald_gateway_room_last_seq_reads_total";
pub(crate) const ROOM_REWINDS: &str = "herald_gateway_room_rewinds_total";
pub(crate) const RESCANS: &str = "herald_gateway_room_rescans_total";
pub(crate) const NATS_EVENTS: &str = "herald_gateway_nats_events_total";
pub(crate) const REPLAYED: &str = "herald_gateway_replayed_events_total";
pub(crate) const CLOSES: &str = "herald_gateway_closes_total";
pub(crate) const COMPRESSION_BYTES: &str = "herald_gateway_compression_bytes_total";
pub(crate) const READY: &str = "herald_gateway_ready";
pub(crate) const NATS_CONNECTED: &str = "herald_gateway_nats_connected";

/// Buckets of the delivery-latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Installs the process-wide recorder (once) and returns the handle that renders `/metrics`.
pub(crate) fn install() -> PrometheusHandle {
    let handle = herald_service::metrics::install(
        || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), &LATENCY_BUCKETS)
                .expect("buckets are not empty")
        },
        describe,
    );
    write_handles();
    handle
}

/// Counts a NATS connection event (`herald_service::nats::connect`'s callback).
pub(crate) fn nats_event(event: &'static str) {
    counter!(NATS_EVENTS, "event" => event).increment(1);
}

fn describe() {
    describe_gauge!(CONNECTIONS, "Open client connections, by transport.");
    describe_counter!(CONNECTIONS_OPENED, "Client connections opened, by transport.");
    describe_counter!(MESSAGES_SENT, "Frames written to clients, by transport.");
    describe_counter!(MESSAGES_RECEIVED, "Client frames received.");
    describe_counter!(
        PUBLISHES,
        "Client publishes acked by the stream, by outcome: `stored`, or `repeat` (an idempotency key \
         seen within the duplicate window: acked with the first event's seq, not stored again)."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from an event being stored to its frame being written to the socket."
    );
    describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        "Connections closed because their outbound buffer overflowed (4008)."
    );
    describe_counter!(
        WRITE_TIMEOUTS,
        "Connections dropped because a write made no progress for --write-timeout (the client \
         stopped reading), by transport."
    );
    describe_gauge!(
        ROOM_SUBSCRIPTIONS,
        "Room subscriptions held by clients of this gateway."
    );
    describe_gauge!(
        NATS_SUBSCRIPTIONS,
        "Upstream NATS subscriptions this gateway holds for its clients: live room events (one \
         wildcard, or one per room), presence diffs and statuses (one wildcard each, while \
         followed)."
    );
    describe_gauge!(
        POLL_SESSIONS,
        "Polling clients (long-poll and ajax polling with a sid) online on this gateway: one per \
         session, whether or not a poll of it is in flight."
    );
    describe_gauge!(
        MEMBERSHIPS,
        "Presence memberships (a connection or polling session in a room) this gateway reports \
         to fanout, against --max-memberships."
    );
    describe_counter!(
        ERRORS,
        "Errors sent to clients (error frames, HTTP errors and close codes), by code."
    );
    describe_counter!(BYTES_SENT, Unit::Bytes, "Bytes written to clients, by transport.");
    describe_counter!(
        COMPRESSION_BYTES,
        Unit::Bytes,
        "Events compressed for WebSocket clients with permessage-deflate (once per event and \
         codec, not per delivery), before (`side=\"plain\"`) and after (`side=\"compressed\"`)."
    );
    describe_counter!(
        GAPS_REPAIRED,
        "Events fetched from the stream to fill a gap in the live feed."
    );
    describe_counter!(
        LAST_SEQ_READS,
        "Rooms whose last stored seq was read (when they open, and when they rescan), by way: \
         in a batch of rooms (one request per 1,024) or room by room."
    );
    describe_counter!(
        ROOM_REWINDS,
        "Rooms whose seqs went back (the stream was recreated): their position restarted at 0 and \
         their subscribers were told recovered:false."
    );
    describe_counter!(
        RESCANS,
        "Times every room read the stream from its last seq because live events may have been \
         lost, by cause (reconnect, slow consumer, stream leader change)."
    );
    describe_counter!(NATS_EVENTS, "NATS connection events, by event.");
    describe_gauge!(
        READY,
        "1 while /readyz answers 200 (NATS connected, stream provisioned, not draining)."
    );
    describe_gauge!(NATS_CONNECTED, "1 while the NATS connection is up.");
    describe_counter!(REPLAYED, "Events replayed from history to resuming subscribers.");
    describe_counter!(CLOSES, "WebSocket connections closed by the gateway, by close code.");
    // Series that exist from the start, so dashboards and alerts see zeros, not gaps.
    for t in [
        Transport::WebSocket,
        Transport::Sse,
        Transport::LongPoll,
        Transport::Poll,
    ] {
        gauge!(CONNECTIONS, "transport" => t.as_str()).increment(0.0);
        counter!(CONNECTIONS_OPENED, "transport" => t.as_str()).increment(0);
        counter!(MESSAGES_SENT, "transport" => t.as_str()).increment(0);
        counter!(BYTES_SENT, "transport" => t.as_str()).increment(0);
    }
    for t in [Transport::WebSocket, Transport::Sse] {
        counter!(WRITE_TIMEOUTS, "transport" => t.as_str()).increment(0);
    }
    for code in ErrorCode::ALL {
        counter!(ERRORS, "code" => code.as_str()).increment(0);
    }
    for event in herald_service::nats::EVENTS {
        counter!(NATS_EVENTS, "event" => event).increment(0);
    }
    counter!(MESSAGES_RECEIVED).increment(0);
    for outcome in ["stored", "repeat"] {
        counter!(PUBLISHES, "outcome" => outcome).increment(0);
    }
    gauge!(POLL_SESSIONS).increment(0.0);
    counter!(SLOW_CONSUMER_DISCONNECTS).increment(0);
    counter!(GAPS_REPAIRED).increment(0);
    for way in ["batch", "single"] {
        counter!(LAST_SEQ_READS, "way" => way).increment(0);
    }
    counter!(ROOM_REWINDS).increment(0);
    for cause in RESCAN_CAUSES {
        counter!(RESCANS, "cause" => cause).increment(0);
    }
    counter!(REPLAYED).increment(0);
    gauge!(ROOM_SUBSCRIPTIONS).increment(0.0);
    gauge!(NATS_SUBSCRIPTIONS).increment(0.0);
}

/// The transports a client connection can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket = 0,
    Sse = 1,
    LongPoll = 2,
    Poll = 3,
}

impl Transport {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::LongPoll => "long-poll",
            Self::Poll => "poll",
        }
    }
}

pub(crate) fn connection_opened(t: Transport) {
    counter!(CONNECTIONS_OPENED, "transport" => t.as_str()).increment(1);
    gauge!(CONNECTIONS, "transport" => t.as_str()).increment(1.0);
}

pub(crate) fn connection_closed(t: Transport) {
    gauge!(CONNECTIONS, "transport" => t.as_str()).decrement(1.0);
}

/// Handles of the per-write metrics, looked up once: the write path runs per delivery.
struct WriteHandles {
    frames: [Counter; 4],
    bytes: [Counter; 4],
    latency: Histogram,
}

static WRITE: OnceLock<WriteHandles> = OnceLock::new();

fn write_handles() -> &'static WriteHandles {
    WRITE.get_or_init(|| {
        let all = [
            Transport::WebSocket,
            Transport::Sse,
            Transport::LongPoll,
            Transport::Poll,
        ];
        WriteHandles {
            frames: all.map(|t| counter!(MESSAGES_SENT, "transport" => t.as_str())),
            bytes: all.map(|t| counter!(BYTES_SENT, "transport" => t.as_str())),
            latency: histogram!(DELIVERY_LATENCY),
        }
    })
}

pub(crate) fn sent(t: Transport, frames: u64, bytes: u64) {
    let h = write_handles();
    h.frames[t as usize].increment(frames);
    h.bytes[t as usize].increment(bytes);
}

/// An event compressed once: `plain` bytes became `compressed`.
pub(crate) fn compressed(plain: usize, compressed: usize) {
    counter!(COMPRESSION_BYTES, "side" => "plain").increment(plain as u64);
    counter!(COMPRESSION_BYTES, "side" => "compressed").increment(compressed as u64);
}

pub(crate) fn received() {
    counter!(MESSAGES_RECEIVED).increment(1);
}

/// A client publish acked by the stream; `repeat` when its key was seen before.
pub(crate) fn published(repeat: bool) {
    let outcome = if repeat { "repeat" } else { "stored" };
    counter!(PUBLISHES, "outcome" => outcome).increment(1);
}

pub(crate) fn delivery_latency(seconds: f64) {
    write_handles().latency.record(seconds);
}

pub(crate) fn slow_consumer() {
    counter!(SLOW_CONSUMER_DISCONNECTS).increment(1);
}

/// A connection dropped because its client took nothing for `--write-timeout`.
pub(crate) fn write_timeout(t: Transport) {
    counter!(WRITE_TIMEOUTS, "transport" => t.as_str()).increment(1);
}

/// A write timeout noticed at the socket, before the transport did: an HTTP answer, or a
/// stream hyper was writing (`transport="socket"`).
pub(crate) fn socket_write_timeout() {
    counter!(WRITE_TIMEOUTS, "transport" => "socket").increment(1);
}

pub(crate) fn room_subscriptions(delta: f64) {
    gauge!(ROOM_SUBSCRIPTIONS).increment(delta);
}

pub(crate) fn poll_sessions(delta: f64) {
    gauge!(POLL_SESSIONS).increment(delta);
}

pub(crate) fn nats_subscriptions(delta: f64) {
    gauge!(NATS_SUBSCRIPTIONS).increment(delta);
}

pub(crate) fn error(code: ErrorCode) {
    counter!(ERRORS, "code" => code.as_str()).increment(1);
}

/// Close codes count as errors too, under their number.
pub(crate) fn close(code: u16) {
    counter!(CLOSES, "code" => code.to_string()).increment(1);
    if code != 1000 {
        counter!(ERRORS, "code" => code.to_string()).increment(1);
    }
}

/// `rooms` read their last stored seq in a batch (`batched`) or one by one.
pub(crate) fn last_seqs_read(rooms: usize, batched: bool) {
    let way = if batched { "batch" } else { "single" };
    counter!(LAST_SEQ_READS, "way" => way).increment(rooms as u64);
}

pub(crate) fn gap_repaired(events: u64) {
    counter!(GAPS_REPAIRED).increment(events);
}

/// What makes every room rescan the stream (`herald_gateway_room_rescans_total`'s causes).
pub(crate) const RESCAN_CAUSES: [&str; 3] = ["reconnect", "slow consumer", "stream leader change"];

pub(crate) fn rescan(cause: &'static str) {
    counter!(RESCANS, "cause" => cause).increment(1);
}

pub(crate) fn room_rewound() {
    counter!(ROOM_REWINDS).increment(1);
}

pub(crate) fn replayed(events: u64) {
    counter!(REPLAYED).increment(events);
}

/// Readiness and NATS state as gauges, for dashboards and alerts.
pub(crate) fn state(ready: bool, nats_connected: bool, memberships: usize) {
    gauge!(READY).set(f64::from(u8::from(ready)));
    gauge!(NATS_CONNECTED).set(f64::from(u8::from(nats_connected)));
    gauge!(MEMBERSHIPS).set(memberships as f64);
}
