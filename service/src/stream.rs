//! Provisioning of the JetStream stream that stores room events (idempotent).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use herald_proto::subject::Subjects;

/// What the event stream keeps.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub history_size: i64,
    pub history_ttl: Duration,
    /// Bytes kept in all; `-1` for no limit.
    pub max_bytes: i64,
    /// How long a `Nats-Msg-Id` is remembered (idempotent publishes).
    pub dedup_window: Duration,
    pub replicas: usize,
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

#[derive(Debug, thiserror::Error)]
#[error("cannot provision stream {name}: {reason}")]
pub struct ProvisionError {
    name: String,
    reason: String,
}

/// The stream's configuration: room subjects, per-room history, dedupe window, direct gets,
/// and RePublish of every stored event to the live subjects.
pub fn config(subjects: &Subjects, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects.stream_name(),
        subjects: vec![subjects.rooms_wildcard()],
        max_messages_per_subject: s.history_size,
        max_age: s.history_ttl,
        max_bytes: s.max_bytes,
        duplicate_window: s.dedup_window,
        allow_direct: true,
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        republish: Some(stream::Republish {
            source: subjects.rooms_wildcard(),
            destination: subjects.live_rooms_wildcard(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// Creates the stream if it is missing; an existing stream is left alone unless it lacks
/// what the gateway depends on (RePublish, direct gets). For gateways, which must work
/// before fanout (the stream's owner) starts.
pub async fn ensure(js: &jetstream::Context, subjects: &Subjects, s: &StreamSettings) -> Result<(), ProvisionError> {
    provision_inner(js, subjects, s, false).await
}

/// Creates the stream, or updates it when its settings differ. Safe to run from every
/// instance at once; for the stream's owner (fanout).
pub async fn provision(js: &jetstream::Context, subjects: &Subjects, s: &StreamSettings) -> Result<(), ProvisionError> {
    provision_inner(js, subjects, s, true).await
}

async fn provision_inner(
    js: &jetstream::Context,
    subjects: &Subjects,
    s: &StreamSettings,
    own: bool,
) -> Result<(), ProvisionError> {
    let want = config(subjects, s);
    let err = |e: &dyn std::fmt::Display| ProvisionError {
        name: want.name.clone(),
        reason: e.to_string(),
    };
    match js.get_stream(&want.name).await {
        Ok(mut existing) => {
            let have = &existing.info().await.map_err(|e| err(&e))?.config;
            let usable = have.subjects == want.subjects && have.allow_direct && have.republish == want.republish;
            let same = usable
                && have.max_messages_per_subject == want.max_messages_per_subject
                && have.max_age == want.max_age
                && have.max_bytes == want.max_bytes
                && have.duplicate_window == want.duplicate_window
                && have.num_replicas == want.num_replicas;
            if !usable || (own && !same) {
                js.update_stream(want.clone()).await.map_err(|e| err(&e))?;
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
