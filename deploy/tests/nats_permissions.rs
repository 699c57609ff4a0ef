//! `deploy/k8s/base/nats-auth.conf` on a real nats-server: a backend's publishes to the
//! subjects only gateways and fanout may write are refused (permissions violation) and
//! reach no one, its events go through, and a gateway and fanout run with their own users
//! (stream provisioning, presence, leases, live events).

use std::time::Duration;

use futures_util::StreamExt;
use herald_deploy::{nats_password, nats_user_url, root, set_nats_passwords};
use herald_proto::frame::ServerFrame;
use herald_testkit::{http, jwt, wait_until, NatsServer, Process, TestGateway, WsClient};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// A nats-server with the deploy's users; their passwords come from its environment.
fn nats() -> NatsServer {
    // The only test in this binary that sets them, before the server starts.
    set_nats_passwords();
    NatsServer::with_config(&root().join("deploy/k8s/base/nats-auth.conf"))
}

/// The server's URL with `user`'s credentials, as the services take it (`--nats-url`).
fn url(nats: &NatsServer, user: &str) -> String {
    nats_user_url(&nats.url(), user)
}

/// A client of `user` and the server errors it is sent (permission violations).
async fn connect(nats: &NatsServer, user: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let password = nats_password(user);
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .expect("NATS connects");
    (client, rx)
}

async fn subscribe(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let sub = client.subscribe(subject.to_owned()).await.expect("subscribed");
    client.flush().await.expect("flushed");
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_cannot_publish_internal_subjects_and_the_services_run_with_their_users() {
    let nats = nats();
    assert!(
        async_nats::connect(nats.url()).await.is_err(),
        "no anonymous NATS connections"
    );
    let (backend, mut errors) = connect(&nats, "herald-backend").await;
    let (fanout_user, _) = connect(&nats, "herald-fanout").await;
    let (gateway_user, _) = connect(&nats, "herald-gateway").await;
    // Observers on every subject a backend must not write, each as a user allowed to read it.
    let mut observers = vec![
        subscribe(&fanout_user, "herald.sys.gw.*").await,
        subscribe(&gateway_user, "herald.sys.sync").await,
        subscribe(&gateway_user, "herald.sys.ctl").await,
        subscribe(&backend, "herald.presence.>").await,
        subscribe(&backend, "herald.status.>").await,
        subscribe(&backend, "herald.lifecycle.>").await,
        subscribe(&backend, "herald.live.room.>").await,
    ];
    for subject in [
        "herald.sys.gw.gw-a",
        "herald.sys.sync",
        "herald.sys.ctl",
        "$KV.HERALD_REVOKED.Ym9i",
        "herald.presence.lobby",
        "herald.status.bob",
        "herald.lifecycle.lobby",
        "herald.live.room.lobby",
    ] {
        backend.publish(subject, "forged".into()).await.expect("sent");
        backend.flush().await.expect("flushed");
        let error = tokio::time::timeout(WAIT, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("no permissions violation for {subject}"))
            .expect("error channel open");
        assert!(
            error.contains("Permissions Violation for Publish") && error.contains(subject),
            "{subject}: {error}"
        );
    }
    // A room event goes through (core NATS; the stream does not exist yet).
    let mut rooms = subscribe(&backend, "herald.room.>").await;
    backend.publish("herald.room.x", "event".into()).await.expect("sent");
    let got = tokio::time::timeout(WAIT, rooms.next())
        .await
        .expect("the event arrives");
    assert_eq!(got.expect("message").subject.as_str(), "herald.room.x");
    // None of the forged messages reached its observer: everything the server routed to
    // them before their flush is in their buffers by then.
    for client in [&backend, &fanout_user, &gateway_user] {
        client.flush().await.expect("flushed");
    }
    for sub in &mut observers {
        let got = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
        assert!(
            got.is_err(),
            "a forged message was delivered: {:?}",
            got.ok().flatten().map(|m| m.subject)
        );
    }
    assert!(errors.try_recv().is_err(), "the room event was allowed");

    // Fanout and a gateway, each with its own user: fanout provisions the stream and holds
    // its lease, presence and live events flow.
    let fanout = Process::fanout(&url(&nats, "herald-fanout"), "f1", &[]);
    wait_until(WAIT, "fanout ready with its user", || async {
        http::get(fanout.admin, "/readyz").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let gw = TestGateway::start(&url(&nats, "herald-gateway")).await;
    let mut lifecycle = subscribe(&backend, "herald.lifecycle.lobby").await;
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room("alice")).await;
    c.op(json!({"op": "subscribe", "id": 1, "room": "lobby", "presence": true}))
        .await;
    // alice shows up in the room's presence (in a snapshot, or in a diff if fanout
    // learns of this new gateway only after her join), which fanout publishes and answers.
    let has_alice = |f: &ServerFrame| match f {
        ServerFrame::Presence(p) => p.members.iter().flatten().chain(&p.joined).any(|m| m.user == "alice"),
        _ => false,
    };
    next_frame(&mut c, has_alice).await;
    let occupied = tokio::time::timeout(WAIT, lifecycle.next())
        .await
        .expect("a lifecycle event");
    assert!(String::from_utf8_lossy(&occupied.expect("message").payload).contains("occupied"));
    // A backend's event through JetStream reaches the client; the client's own publish too.
    let js = async_nats::jetstream::new(backend.clone());
    js.publish("herald.room.lobby", r#"{"from":"backend"}"#.into())
        .await
        .expect("published")
        .await
        .expect("stored");
    let event = next_frame(&mut c, |f| matches!(f, ServerFrame::Event(_))).await;
    assert!(
        matches!(&event, ServerFrame::Event(e) if e.room == "lobby" && e.seq == 1),
        "{event:?}"
    );
    c.op(json!({"op": "publish", "id": 2, "room": "lobby", "data": {"from": "alice"}}))
        .await;
    let ack = next_frame(&mut c, |f| matches!(f, ServerFrame::Ack(_))).await;
    assert!(matches!(&ack, ServerFrame::Ack(a) if a.seq == Some(2)), "{ack:?}");

    // The backend's server API: a publish (fanout stores it),
    let answer = ask(&backend, "publish", r#"{"room":"lobby","data":{"from":"api"}}"#).await;
    assert_eq!(
        answer["result"],
        serde_json::json!({"room": "lobby", "seq": 3}),
        "{answer}"
    );
    next_frame(&mut c, |f| matches!(f, ServerFrame::Event(e) if e.seq == 3)).await;
    // a server-side subscription (the grant bucket, the command),
    let answer = ask(&backend, "subscribe", r#"{"user":"alice","room":"team:1"}"#).await;
    assert_eq!(answer["result"]["connections"], 1, "{answer}");
    next_frame(
        &mut c,
        |f| matches!(f, ServerFrame::Subscribed(s) if s.room == "team:1"),
    )
    .await;
    // then a disconnect: fanout stores the revocation and commands the gateway, which
    // answers and closes alice's connection; alice's token is refused from then on.
    let answer = ask(&backend, "disconnect", r#"{"user":"alice","revoke":true}"#).await;
    assert_eq!(answer["result"]["connections"], 1, "{answer}");
    assert_eq!(answer["result"]["gateways"], 1, "{answer}");
    next_frame(&mut c, |f| matches!(f, ServerFrame::Disconnect(_))).await;
    let opts = herald_testkit::client::Connect {
        url: gw.ws_url(),
        token: Some(jwt::any_room("alice")),
        ..Default::default()
    };
    assert_eq!(WsClient::open(opts).await.err(), Some(401));
}

/// Asks the server API's `method` as `client` (a backend); the decoded answer.
async fn ask(client: &async_nats::Client, method: &str, body: &str) -> serde_json::Value {
    let reply = tokio::time::timeout(
        WAIT,
        client.request(format!("herald.api.{method}"), body.to_owned().into()),
    )
    .await
    .expect("answered")
    .expect("a reply");
    serde_json::from_slice(&reply.payload).expect("JSON")
}

/// The next frame `want` accepts (presence diffs and other frames in between are skipped).
async fn next_frame(c: &mut WsClient, want: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
    tokio::time::timeout(WAIT, async {
        loop {
            let f = c.recv().await;
            if want(&f) {
                return f;
            }
        }
    })
    .await
    .expect("the frame arrives")
}
