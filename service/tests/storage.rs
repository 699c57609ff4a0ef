//! `--stream-storage` against a real nats-server: the streams are created with the storage
//! asked for, an owner refuses (and changes nothing of) a stream stored otherwise, and a
//! gateway's `ensure` uses whatever stream exists.

use std::time::Duration;

use async_nats::jetstream::{self, stream::StorageType};
use herald_harness::launch::{Nats, NatsOptions};
use herald_proto::subject::{Partitions, Subjects};
use herald_service::stream::{ensure, provision, Storage, StreamSettings};

fn settings(storage: Storage) -> StreamSettings {
    StreamSettings {
        history_size: 100,
        history_ttl: Duration::from_secs(3600),
        max_bytes: -1,
        dedup_window: Duration::from_secs(60),
        replicas: 1,
        storage,
        allow_msg_ttl: false,
    }
}

async fn storage_of(js: &jetstream::Context, name: &str) -> StorageType {
    js.get_stream(name).await.unwrap().info().await.unwrap().config.storage
}

#[tokio::test]
async fn streams_are_stored_as_asked_and_an_owner_refuses_a_stream_stored_otherwise() {
    let nats = Nats::start(NatsOptions::default()).unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let p = Partitions::new(Subjects::new("herald"), 2);

    provision(&js, &p, &settings(Storage::Memory)).await.unwrap();
    for i in 0..2 {
        assert_eq!(storage_of(&js, &p.stream(i)).await, StorageType::Memory);
    }
    // The same settings again: nothing to do.
    provision(&js, &p, &settings(Storage::Memory)).await.unwrap();

    // An owner asking for file storage over memory streams is refused, with the reason, and
    // the streams (with what they hold) stay as they were.
    let err = provision(&js, &p, &settings(Storage::File))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--stream-storage"), "{err}");
    assert!(err.contains(&p.stream(0)), "{err}");
    assert_eq!(storage_of(&js, &p.stream(0)).await, StorageType::Memory);

    // A gateway (not the owner) uses the streams as they are.
    ensure(&js, &p, &settings(Storage::File)).await.unwrap();
    assert_eq!(storage_of(&js, &p.stream(1)).await, StorageType::Memory);

    // The default is file storage.
    let q = Partitions::new(Subjects::new("other"), 1);
    ensure(&js, &q, &settings(Storage::default())).await.unwrap();
    assert_eq!(storage_of(&js, &q.stream(0)).await, StorageType::File);
}
