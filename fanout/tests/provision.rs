//! fanout provisions the event stream, and gateways started before it keep working.

use std::time::Duration;

use clap::Parser;
use herald_fanout::{Config, Fanout};
use herald_testkit::{http, jwt, wait_until, NatsServer, TestGateway, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_owns_the_stream_settings_and_gateways_keep_serving() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room("alice")).await;
    c.subscribe("lobby", None).await;

    let mut config = Config::parse_from(["herald-fanout", "--history-size", "7", "--admin-listen", "127.0.0.1:0"]);
    config.nats_url = nats.url();
    let fanout = Fanout::bind(config).await.unwrap();
    let admin = fanout.admin_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fanout.serve(async {
        let _ = rx.await;
    }));
    wait_until(Duration::from_secs(15), "fanout /readyz 200", || async move {
        http::get(admin, "/readyz")
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false)
    })
    .await;

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("HERALD_ROOMS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.config.max_messages_per_subject, 7,
        "fanout applied its history size"
    );
    assert!(info.config.republish.is_some());

    // The gateway's subscription survived the update.
    client.publish("herald.room.lobby", "1".into()).await.unwrap();
    assert_eq!(c.event().await.data, Some(serde_json::json!(1)));

    let metrics = http::get(admin, "/metrics").await.unwrap().body;
    assert!(metrics.contains("herald_fanout_presence_members"), "{metrics}");
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
