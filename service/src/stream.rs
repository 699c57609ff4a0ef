//! Provisioning of the JetStream streams that store room events (idempotent), and the check
//! that the NATS server spreads rooms over them as this process expects.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use herald_proto::header;
use herald_proto::subject::{Partitions, MAX_PARTITIONS};

/// What the event stream keeps (each partition keeps it for its own rooms).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub history_size: i64,
    pub history_ttl: Duration,
    /// Bytes kept in all (split evenly over the partitions); `-1` for no limit.
    pub max_bytes: i64,
    /// How long a `Nats-Msg-Id` is remembered (idempotent publishes).
    pub dedup_window: Duration,
    pub replicas: usize,
    pub storage: Storage,
    /// Events may carry their own lifetime (`Nats-TTL`, NATS 2.11+): on when a namespace
    /// sets `history_ttl`. Once on, a stream keeps it (NATS cannot turn it off).
    pub allow_msg_ttl: bool,
}

/// Where the event stream keeps its events (`--stream-storage`). A stream's storage is fixed
/// when it is created: changing it means deleting the stream (and its history).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    /// On each NATS server's disk: events survive a server's restart, with one replica too.
    #[default]
    File,
    /// In each NATS server's memory: a server's restart loses what it held, so with one
    /// replica every room's history (clients resuming get `unrecovered`); with three, a
    /// restarted server catches up from the others, and history is lost only if a majority
    /// restarts at once. Cheaper per event than `file` (docs/benchmarks.md).
    Memory,
}

impl Storage {
    fn of(self) -> stream::StorageType {
        match self {
            Self::File => stream::StorageType::File,
            Self::Memory => stream::StorageType::Memory,
        }
    }
}

/// `--dedup-window` within its bounds: above zero and at most `--history-ttl` (JetStream
/// refuses a duplicate window longer than the stream's age limit). The same rule for every
/// process that provisions the stream.
pub fn check_dedup_window(window: Duration, history_ttl: Duration) -> Result<(), &'static str> {
    if window.is_zero() {
        Err("--dedup-window must be greater than zero")
    } else if window > history_ttl {
        Err("--dedup-window must not be longer than --history-ttl")
    } else {
        Ok(())
    }
}

/// `--stream-partitions` within its bounds (the same rule for gateways and fanout).
pub fn check_partition_count(count: u32) -> Result<(), &'static str> {
    if (1..=MAX_PARTITIONS).contains(&count) {
        Ok(())
    } else {
        Err("--stream-partitions must be 1 to 1024")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot provision stream {name}: {reason}")]
pub struct ProvisionError {
    name: String,
    reason: String,
}

/// `/readyz`'s reason while [`check_partitions`] finds the server's mapping wrong.
pub const NOT_MAPPED: &str =
    "the NATS server does not map rooms to the event stream partitions as --stream-partitions says";

/// The NATS server does not store rooms where this process looks for them.
#[derive(Debug, thiserror::Error)]
#[error(
    "room {room} is not stored in stream {expected}: {found}; the NATS server's subject mapping \
     must spread rooms over exactly {count} partition(s) (--stream-partitions; see docs/operations.md)"
)]
pub struct PartitionError {
    room: String,
    expected: String,
    found: String,
    count: u32,
}

/// Stream `i`'s configuration: its room subjects, per-room history, dedupe window, direct
/// gets, and RePublish of every stored event to the live subjects.
pub fn config(p: &Partitions, i: u32, s: &StreamSettings) -> stream::Config {
    let (source, destination) = p.republish(i);
    stream::Config {
        name: p.stream(i),
        subjects: vec![p.stream_subjects(i)],
        max_messages_per_subject: s.history_size,
        max_age: s.history_ttl,
        // The bound is on the disk: all partitions together keep at most `max_bytes`.
        max_bytes: if s.max_bytes > 0 {
            (s.max_bytes / i64::from(p.count())).max(1)
        } else {
            s.max_bytes
        },
        duplicate_window: s.dedup_window,
        allow_direct: true,
        num_replicas: s.replicas,
        storage: s.storage.of(),
        discard: stream::DiscardPolicy::Old,
        allow_message_ttl: s.allow_msg_ttl,
        republish: Some(stream::Republish {
            source,
            destination,
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// Creates every partition's stream if it is missing; an existing stream is left alone unless
/// it lacks what the gateway depends on (RePublish, direct gets). For gateways, which must
/// work before fanout (the streams' owner) starts.
pub async fn ensure(js: &jetstream::Context, p: &Partitions, s: &StreamSettings) -> Result<(), ProvisionError> {
    for i in 0..p.count() {
        provision_one(js, config(p, i, s), false).await?;
    }
    Ok(())
}

/// Creates every partition's stream, or updates it when its settings differ. Safe to run from
/// every instance at once; for the streams' owner (fanout).
pub async fn provision(js: &jetstream::Context, p: &Partitions, s: &StreamSettings) -> Result<(), ProvisionError> {
    for i in 0..p.count() {
        provision_one(js, config(p, i, s), true).await?;
    }
    Ok(())
}

async fn provision_one(js: &jetstream::Context, want: stream::Config, own: bool) -> Result<(), ProvisionError> {
    let err = |e: &dyn std::fmt::Display| ProvisionError {
        name: want.name.clone(),
        reason: e.to_string(),
    };
    match js.get_stream(&want.name).await {
        Ok(mut existing) => {
            let have = &existing.info().await.map_err(|e| err(&e))?.config;
            // Events of a namespace with `history_ttl` carry `Nats-TTL`, which a stream that
            // does not allow it refuses.
            let usable = have.subjects == want.subjects
                && have.allow_direct
                && have.republish == want.republish
                && (have.allow_message_ttl || !want.allow_message_ttl);
            let same = usable
                && have.max_messages_per_subject == want.max_messages_per_subject
                && have.max_age == want.max_age
                && have.max_bytes == want.max_bytes
                && have.duplicate_window == want.duplicate_window
                && have.num_replicas == want.num_replicas;
            if own && have.storage != want.storage {
                return Err(err(&format_args!(
                    "it is stored in {:?} and --stream-storage asks for {:?}: a stream's storage cannot \
                     change; delete the stream (and its history) to change it",
                    have.storage, want.storage
                )));
            }
            if !usable || (own && !same) {
                // NATS cannot turn message TTLs off once on.
                let mut want = want.clone();
                want.allow_message_ttl |= have.allow_message_ttl;
                js.update_stream(want).await.map_err(|e| err(&e))?;
            }
            Ok(())
        }
        Err(_) => match js.create_stream(want.clone()).await {
            Ok(_) => Ok(()),
            // Someone else created it in between.
            Err(_) if js.get_stream(&want.name).await.is_ok() => Ok(()),
            Err(e) => Err(err(&e)),
        },
    }
}

/// Checks that the NATS server stores each room in the stream this process reads it from:
/// publishes a probe to `herald.room.<probe>` for rooms chosen so that every partition is
/// probed and any other partition count would send at least one probe elsewhere. A probe
/// names the stream it expects and a last subject sequence no subject has, so it is refused
/// whatever happens and nothing is ever stored: refused for its sequence means the expected
/// stream took it; refused for the stream, or no stream at all, means the mapping is missing
/// or has another count.
pub async fn check_partitions(js: &jetstream::Context, p: &Partitions) -> Result<(), CheckError> {
    for room in probe_rooms(p.count()) {
        let expected = p.stream_of(&room);
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_EXPECTED_STREAM, expected.as_str());
        headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, PROBE_LAST_SEQUENCE);
        let subject = p.subjects().room(&room);
        let sent = js
            .publish_with_headers(subject, headers, bytes::Bytes::new())
            .await
            .map_err(|e| CheckError::Nats(e.to_string()))?;
        let found = match sent.await {
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => "no stream stores it".to_owned(),
            Err(e) if e.kind() == PublishErrorKind::TimedOut => return Err(CheckError::Nats(e.to_string())),
            Err(e) if e.kind() == PublishErrorKind::BrokenPipe => return Err(CheckError::Nats(e.to_string())),
            Err(e) => format!("refused: {e}"),
            // Cannot happen (the sequence never matches), but then it is stored: say where.
            Ok(ack) => format!("stored in {}", ack.stream),
        };
        return Err(CheckError::Partitions(PartitionError {
            room,
            expected,
            found,
            count: p.count(),
        }));
    }
    Ok(())
}

/// Why [`check_partitions`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The check could not be made (NATS unreachable, timed out, or the user may not publish
    /// the probe's subject: the server then drops it without an answer); worth retrying.
    #[error("partition check not answered (may this NATS user publish herald.room.* and, with partitions, herald.part.>?): {0}")]
    Nats(String),
    /// The server answered: the mapping is wrong.
    #[error(transparent)]
    Partitions(#[from] PartitionError),
}

/// A last subject sequence the probes' subjects never reach (they are never stored), within
/// the server's signed 64-bit parse.
const PROBE_LAST_SEQUENCE: &str = "1000000000000000000";

/// Probe rooms: one per partition, then for each other count up to [`MAX_PARTITIONS`] that no
/// probe yet tells apart from `count`, one that does. The names are not valid client room
/// names' usual shape but are single tokens, as the mapping needs.
pub fn probe_rooms(count: u32) -> Vec<String> {
    use herald_proto::subject::{partition, room_hash};
    let name = |k: u32| format!("_herald-probe-{k}");
    let mut rooms: Vec<(String, u32)> = Vec::new();
    let mut k = 0;
    for i in 0..count {
        while partition(&name(k), count) != i {
            k += 1;
        }
        rooms.push((name(k), room_hash(&name(k))));
    }
    for other in (1..=MAX_PARTITIONS).filter(|&o| o != count) {
        if rooms.iter().any(|(_, h)| h % other != h % count) {
            continue;
        }
        let mut j = 0;
        loop {
            let h = room_hash(&name(j));
            if h % other != h % count {
                rooms.push((name(j), h));
                break;
            }
            j += 1;
        }
    }
    rooms.into_iter().map(|(r, _)| r).collect()
}

/// Most subjects [`last_of_subjects`] asks for at once: nats-server answers a batched direct
/// get with at most 1,024 messages.
pub const MAX_LAST_BATCH: usize = 1_024;

/// Bytes of messages one answer of [`last_of_subjects`] may carry (the server pages the rest):
/// keeps what a gateway has in flight far below the server's slow-consumer limit.
const LAST_PAGE_BYTES: usize = 1 << 20;

/// A subject's last stored message: its stream sequence and when it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Last {
    pub seq: u64,
    /// Microseconds since the epoch.
    pub stored_us: u64,
}

/// Why [`last_of_subjects`] has no answer; the caller can ask subject by subject instead.
#[derive(Debug, thiserror::Error)]
pub enum LastsError {
    #[error("more than {MAX_LAST_BATCH} subjects in one batched direct get")]
    TooMany,
    #[error("batched direct get: {0}")]
    Nats(String),
    #[error("batched direct get not answered within {0:?}")]
    TimedOut(Duration),
    #[error("batched direct get answered {code} {description}")]
    Refused { code: u16, description: String },
    #[error("batched direct get answer lacks or garbles header {0}")]
    Malformed(&'static str),
    #[error("batched direct get answer incomplete: {0}")]
    Incomplete(&'static str),
}

impl LastsError {
    /// The server does not know batched direct gets (nats-server before 2.11 refuses the
    /// request as empty).
    pub fn unsupported(&self) -> bool {
        matches!(self, LastsError::Refused { code: 408, .. })
    }
}

/// The last stored message of each of `subjects` (literal subjects of stream `stream`, at
/// most [`MAX_LAST_BATCH`]), in their order, `None` where a subject has none: batched direct
/// gets (`multi_last`, nats-server 2.11 and later) instead of a request per subject. Each
/// answer comes on an inbox of its own, at most [`LAST_PAGE_BYTES`] of messages, ended by
/// an end-of-batch status; a partial answer is continued from where it stopped. An answer
/// counts its messages down (`Nats-Num-Pending`): one that does not add up (a message
/// missing, or nats-server 2.11's count, one short) is an error, never a subject without
/// messages. The inbox must hold `subjects.len() + 1` messages
/// (async-nats's subscription capacity), or answers are dropped and the read fails. The
/// stream must allow direct gets.
pub async fn last_of_subjects(
    client: &async_nats::Client,
    stream: &str,
    subjects: &[String],
    timeout: Duration,
) -> Result<Vec<Option<Last>>, LastsError> {
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    if subjects.len() > MAX_LAST_BATCH {
        return Err(LastsError::TooMany);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut found = std::collections::HashMap::with_capacity(subjects.len());
    let mut from = None;
    while let Some((next, up_to)) = last_page(client, stream, subjects, from, deadline, timeout, &mut found).await? {
        from = Some((next, up_to));
    }
    Ok(subjects.iter().map(|s| found.get(s.as_str()).copied()).collect())
}

/// One answer of [`last_of_subjects`], from stream seq `from.0` up to `from.1` when it
/// continues one; returns where the next answer starts, if the server stopped early.
async fn last_page(
    client: &async_nats::Client,
    stream: &str,
    subjects: &[String],
    from: Option<(u64, u64)>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    found: &mut std::collections::HashMap<String, Last>,
) -> Result<Option<(u64, u64)>, LastsError> {
    let nats = |e: &dyn std::fmt::Display| LastsError::Nats(e.to_string());
    let mut body = serde_json::json!({
        "multi_last": subjects,
        "batch": subjects.len(),
        "max_bytes": LAST_PAGE_BYTES,
    });
    if let Some((seq, up_to)) = from {
        body["seq"] = seq.into();
        body["up_to_seq"] = up_to.into();
    }
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| nats(&e))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            serde_json::to_vec(&body).expect("JSON of strings and numbers").into(),
        )
        .await
        .map_err(|e| nats(&e))?;
    // Messages still to come, as the last message said (`None` before the first).
    let mut pending: Option<u64> = None;
    loop {
        let msg = match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut answers)).await {
            Err(_) => return Err(LastsError::TimedOut(timeout)),
            Ok(None) => return Err(LastsError::Nats("the inbox subscription ended".into())),
            Ok(Some(msg)) => msg,
        };
        // The server appends its headers to a stored message's own: the last value is its.
        let header = |name: &'static str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get_all(name).last())
                .map(|v| v.as_str())
        };
        let number = |name: &'static str| -> Result<u64, LastsError> {
            header(name)
                .ok_or(LastsError::Malformed(name))?
                .parse()
                .map_err(|_| LastsError::Malformed(name))
        };
        // A stored message carries its seq whatever status line its own headers began with;
        // the end of the batch and errors carry none.
        if header(header::NATS_SEQUENCE).is_some() {
            let left = number(header::NATS_NUM_PENDING)?;
            if pending.is_some_and(|p| p == 0 || left != p - 1) {
                return Err(LastsError::Incomplete("message counts do not add up"));
            }
            pending = Some(left);
            let subject = header(header::NATS_SUBJECT).ok_or(LastsError::Malformed(header::NATS_SUBJECT))?;
            let stored_us = time_stamp(header(header::NATS_TIME_STAMP))?.as_micros() as u64;
            found.insert(
                subject.to_owned(),
                Last {
                    seq: number(header::NATS_SEQUENCE)?,
                    stored_us,
                },
            );
            continue;
        }
        return match msg.status.map(|s| s.as_u16()) {
            Some(204) => {
                // The end says how many are left, as the last message did: 0 when all came,
                // more when the answer reached its bytes (ask again after its last seq).
                let left = number(header::NATS_NUM_PENDING)?;
                if pending != Some(left) {
                    return Err(LastsError::Incomplete(
                        "the end of the batch does not match its messages",
                    ));
                }
                if left == 0 {
                    Ok(None)
                } else {
                    let last = number(header::NATS_LAST_SEQUENCE)?;
                    Ok(Some((last + 1, number(NATS_UP_TO_SEQUENCE)?)))
                }
            }
            // No subject has a message (after `from`, when continuing).
            Some(404) if msg.description.as_deref() == Some("No Results") && pending.is_none() => Ok(None),
            code => Err(LastsError::Refused {
                code: code.unwrap_or(0),
                description: msg.description.clone().unwrap_or_default(),
            }),
        };
    }
}

/// One stored message, as [`stored_at_or_before`] reads it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub stored_ms: u64,
    /// The message's own headers, then the server's.
    pub headers: async_nats::HeaderMap,
    pub payload: bytes::Bytes,
}

/// The newest message of literal `subject` in stream `stream` stored at or before stream seq
/// `up_to` (the subject's newest when `None`), or `None` if there is none: one direct get
/// (`multi_last` with `up_to_seq`, nats-server 2.11 and later), which is what reading a
/// subject backwards takes. `up_to` must not pass the stream's last seq (the server then
/// finds nothing). The answer's end-of-batch status comes after the message and is dropped.
pub async fn stored_at_or_before(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    up_to: Option<u64>,
    timeout: Duration,
) -> Result<Option<Stored>, LastsError> {
    let mut body = serde_json::json!({ "multi_last": [subject], "batch": 1 });
    if let Some(up_to) = up_to {
        body["up_to_seq"] = up_to.into();
    }
    let ask = client.request(
        format!("$JS.API.DIRECT.GET.{stream}"),
        serde_json::to_vec(&body).expect("JSON of strings and numbers").into(),
    );
    let msg = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| LastsError::TimedOut(timeout))?
        .map_err(|e| LastsError::Nats(e.to_string()))?;
    let header = |name: &'static str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get_all(name).last())
            .map(|v| v.as_str())
    };
    if header(header::NATS_SEQUENCE).is_none() {
        return match msg.status.map(|s| s.as_u16()) {
            Some(404) => Ok(None),
            code => Err(LastsError::Refused {
                code: code.unwrap_or(0),
                description: msg.description.clone().unwrap_or_default(),
            }),
        };
    }
    let seq = header(header::NATS_SEQUENCE)
        .and_then(|s| s.parse().ok())
        .ok_or(LastsError::Malformed(header::NATS_SEQUENCE))?;
    let stored_ms = time_stamp(header(header::NATS_TIME_STAMP))?.as_millis() as u64;
    Ok(Some(Stored {
        seq,
        stored_ms,
        headers: msg.headers.unwrap_or_default(),
        payload: msg.payload,
    }))
}

/// When a direct get's message was stored (its `Nats-Time-Stamp`), since the epoch.
fn time_stamp(value: Option<&str>) -> Result<Duration, LastsError> {
    let stored = value
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .ok_or(LastsError::Malformed(header::NATS_TIME_STAMP))?;
    Ok(stored.duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
}

/// The end of a batched direct get's answer: the last stream seq it considered.
const NATS_UP_TO_SEQUENCE: &str = "Nats-UpTo-Sequence";

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::subject::partition;

    #[test]
    fn the_partition_count_is_bounded() {
        assert!(check_partition_count(0).is_err());
        assert!(check_partition_count(1).is_ok());
        assert!(check_partition_count(MAX_PARTITIONS).is_ok());
        assert!(check_partition_count(MAX_PARTITIONS + 1).is_err());
    }

    #[test]
    fn probes_cover_every_partition_and_tell_every_other_count_apart() {
        for count in [1, 2, 3, 4, 16] {
            let rooms = probe_rooms(count);
            for i in 0..count {
                assert!(rooms.iter().any(|r| partition(r, count) == i), "{count}: partition {i}");
            }
            for other in (1..=MAX_PARTITIONS).filter(|&o| o != count) {
                assert!(
                    rooms.iter().any(|r| partition(r, other) != partition(r, count)),
                    "{count} vs {other}"
                );
            }
            assert!(rooms.len() <= count as usize + 16, "{count}: {} probes", rooms.len());
        }
    }
}
