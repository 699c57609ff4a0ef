//! `deploy/k8s/base/nats.conf`'s includes on a real nats-server: the deploy's users with the
//! partition mapping of `nats-partitions.conf`. Fanout and a gateway with the manifests' count
//! (`HERALD_STREAM_PARTITIONS`) become ready with their own users; a backend's events are
//! stored in the partition streams and reach clients, and the backend may read history there.

use std::time::Duration;

use herald_deploy::{nats_password, nats_user_url, root, set_nats_passwords};
use herald_proto::frame::ServerFrame;
use herald_proto::subject::{Partitions, Subjects};
use herald_testkit::{http, jwt, wait_until, NatsServer, Process, TestGateway, WsClient};

const WAIT: Duration = Duration::from_secs(10);

/// The server's URL with `user`'s credentials, as the services take it (`--nats-url`).
fn url(nats: &NatsServer, user: &str) -> String {
    nats_user_url(&nats.url(), user)
}

/// The value of env var `name` in a manifest (the line after `- name: <name>`).
fn manifest_env(file: &str, name: &str) -> String {
    let text = std::fs::read_to_string(root().join("deploy/k8s/base").join(file)).expect("manifest");
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("- name: {name}"));
    lines.next().unwrap_or_else(|| panic!("{file} sets {name}"));
    let value = lines.next().expect("a value line").trim();
    value.trim_start_matches("value:").trim().trim_matches('"').to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_s_partition_mapping_matches_its_services_and_stores_rooms_in_partitions() {
    // The manifests and the mapping agree on the count.
    let count: u32 = manifest_env("gateway.yaml", "HERALD_STREAM_PARTITIONS")
        .parse()
        .expect("a count");
    assert_eq!(
        manifest_env("fanout.yaml", "HERALD_STREAM_PARTITIONS"),
        count.to_string()
    );
    let partitions = Partitions::new(Subjects::default(), count);
    let (from, to) = partitions.mapping().expect("more than one partition");
    let mapping = std::fs::read_to_string(root().join("deploy/k8s/base/nats-partitions.conf")).unwrap();
    assert!(mapping.contains(&format!("\"{from}\": \"{to}\"")), "{mapping}");

    // nats.conf's includes, beside a test main file (nats.conf itself holds the cluster).
    let dir = tempfile::tempdir().unwrap();
    for (file, to) in [
        ("nats-auth.conf", "auth.conf"),
        ("nats-partitions.conf", "partitions.conf"),
    ] {
        std::fs::copy(root().join("deploy/k8s/base").join(file), dir.path().join(to)).unwrap();
    }
    std::fs::write(
        dir.path().join("nats.conf"),
        "include \"auth.conf\"\ninclude \"partitions.conf\"\n",
    )
    .unwrap();
    // The only test in this binary that sets them, before the server starts.
    set_nats_passwords();
    let nats = NatsServer::with_config(&dir.path().join("nats.conf"));

    let flag = ["--stream-partitions", "4"];
    assert_eq!(count, 4, "the flag below");
    let fanout = Process::fanout(&url(&nats, "herald-fanout"), "f1", &flag);
    wait_until(WAIT, "fanout ready with its user and the mapping", || async {
        http::get(fanout.admin, "/readyz").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let gw = TestGateway::start_with(&url(&nats, "herald-gateway"), |c| c.stream_partitions = count).await;

    let password = nats_password("herald-backend");
    let backend = async_nats::ConnectOptions::with_user_and_password("herald-backend".into(), password.into())
        .connect(nats.url())
        .await
        .expect("backend connects");
    let js = async_nats::jetstream::new(backend);
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room("alice")).await;
    for room in ["a", "b", "c", "d"] {
        c.subscribe(room, None).await;
        let ack = js
            .publish(format!("herald.room.{room}"), "{}".into())
            .await
            .expect("published")
            .await
            .expect("stored");
        assert_eq!(ack.stream, partitions.stream_of(room), "{room}");
        let event = tokio::time::timeout(WAIT, c.recv())
            .await
            .expect("the event within 10 s");
        assert!(
            matches!(&event, ServerFrame::Event(e) if e.room == room && e.seq == 1),
            "{event:?}"
        );
        // The backend reads the room's history from its partition.
        let stream = js.get_stream_no_info(partitions.stream_of(room)).await.unwrap();
        let last = stream
            .direct_get_last_for_subject(partitions.stored_subject(room))
            .await
            .expect("the backend may read history");
        assert_eq!(last.sequence, 1);
    }
}
