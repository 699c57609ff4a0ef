//! `stream::last_of_subjects` against a real nats-server: one batched direct get answers
//! exactly what one direct get per subject would, for subjects with several, one and no
//! messages, for a whole batch of the server's maximum, and refuses what it cannot answer.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use herald_harness::launch::{Nats, NatsOptions};
use herald_service::stream::{last_of_subjects, Last, LastsError, MAX_LAST_BATCH};

const WAIT: Duration = Duration::from_secs(10);

async fn stream_with(client: &async_nats::Client, name: &str, subjects: &str) -> jetstream::Context {
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

/// Publishes through JetStream and returns the stream sequence.
async fn stored(js: &jetstream::Context, subject: &str, body: &'static str) -> u64 {
    js.publish(subject.to_owned(), body.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// Publishes with headers of its own through JetStream and returns the stream sequence.
async fn stored_with(js: &jetstream::Context, subject: &str, headers: &[(&str, &str)], body: &'static str) -> u64 {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    js.publish_with_headers(subject.to_owned(), map, body.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// What a direct get of the subject's last message says.
async fn one_by_one(js: &jetstream::Context, name: &str, subject: &str) -> Option<Last> {
    let s = js.get_stream_no_info(name).await.unwrap();
    match s.direct_get_last_for_subject(subject).await {
        Ok(m) => Some(Last {
            seq: m.sequence,
            stored_us: m.time.unix_timestamp_nanos() as u64 / 1_000,
        }),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => None,
        Err(e) => panic!("direct get: {e}"),
    }
}

#[tokio::test]
async fn a_batch_answers_what_one_get_per_subject_would() {
    let nats = Nats::start(NatsOptions::default()).unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = stream_with(&client, "EV", "ev.>").await;
    stored(&js, "ev.a", "1").await;
    let b = stored(&js, "ev.b", "2").await;
    let a = stored(&js, "ev.a", "3").await;
    // A message with headers of its own: the server adds its headers to them.
    let c = stored_with(&js, "ev.c", &[("Herald-Type", "message")], "4").await;
    let subjects: Vec<String> = ["ev.b", "ev.none", "ev.a", "ev.c"].map(String::from).into();
    let got = last_of_subjects(&client, "EV", &subjects, WAIT).await.unwrap();
    assert_eq!(
        got.iter().map(|l| l.map(|l| l.seq)).collect::<Vec<_>>(),
        [Some(b), None, Some(a), Some(c)]
    );
    for (subject, last) in subjects.iter().zip(&got) {
        assert_eq!(*last, one_by_one(&js, "EV", subject).await, "{subject}");
    }
    // A stored message whose own headers claim another seq and subject: the server's are
    // the ones read.
    let forged = [
        ("Nats-Sequence", "999999"),
        ("Nats-Subject", "ev.a"),
        ("Nats-Num-Pending", "0"),
    ];
    let z = stored_with(&js, "ev.z", &forged, "5").await;
    let got = last_of_subjects(&client, "EV", &["ev.a".into(), "ev.z".into()], WAIT)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|l| l.map(|l| l.seq)).collect::<Vec<_>>(),
        [Some(a), Some(z)]
    );
    // No subject with a message: the server says "No Results".
    let none = last_of_subjects(&client, "EV", &["ev.x".into(), "ev.y".into()], WAIT)
        .await
        .unwrap();
    assert_eq!(none, [None, None]);
    assert_eq!(last_of_subjects(&client, "EV", &[], WAIT).await.unwrap(), []);
}

#[tokio::test]
async fn a_full_batch_is_answered_in_pages_and_a_larger_one_refused() {
    let nats = Nats::start(NatsOptions::default()).unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = stream_with(&client, "FULL", "full.>").await;
    let subjects: Vec<String> = (0..MAX_LAST_BATCH).map(|i| format!("full.{i}")).collect();
    // 2 KiB each: 2 MiB in all, so the server answers in pages of 1 MiB.
    let body = bytes::Bytes::from(vec![b'x'; 2048]);
    let mut acks = Vec::new();
    for s in &subjects {
        acks.push(js.publish(s.clone(), body.clone()).await.unwrap());
    }
    let mut seqs = Vec::new();
    for ack in acks {
        seqs.push(Some(ack.await.unwrap().sequence));
    }
    let got = last_of_subjects(&client, "FULL", &subjects, WAIT).await.unwrap();
    assert_eq!(got.iter().map(|l| l.map(|l| l.seq)).collect::<Vec<_>>(), seqs);
    let mut more = subjects.clone();
    more.push("full.extra".into());
    assert!(matches!(
        last_of_subjects(&client, "FULL", &more, WAIT).await,
        Err(LastsError::TooMany)
    ));
}

#[tokio::test]
async fn a_missing_stream_is_an_error_not_an_empty_answer() {
    let nats = Nats::start(NatsOptions::default()).unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let got = last_of_subjects(&client, "NOPE", &["nope.a".into()], WAIT).await;
    assert!(matches!(got, Err(LastsError::Refused { code: 503, .. })), "{got:?}");
}
