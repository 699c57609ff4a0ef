//! No silent loss: when async-nats drops live events because a subscription's buffer is full
//! (a slow consumer), every room reads them back from the stream — quiet rooms too, whose
//! next event (which would show the gap) may never come.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_gateway::RoomSubscriptions;
use herald_proto::frame::ServerFrame;
use herald_testkit::client::Incoming;
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};

const QUIET_ROOMS: usize = 40;
const BURST: usize = 3_000;

/// Reads `want` events from `client`, returning each room's seqs in arrival order.
async fn read_events(client: &mut WsClient, want: usize) -> BTreeMap<String, Vec<u64>> {
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for n in 0..want {
        match client.next_within(Duration::from_secs(20)).await {
            Some(Incoming::Frame(ServerFrame::Event(ev))) => got.entry(ev.room).or_default().push(ev.seq),
            other => panic!("event {n} of {want}: got {other:?} after {got:?}"),
        }
    }
    assert!(
        client.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing more than the events stored"
    );
    got
}

async fn burst_case(mode: RoomSubscriptions) {
    let nats = NatsServer::start();
    // Two messages per subscription buffer: a burst overflows it at once.
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.room_subscriptions = mode;
        c.nats_subscription_capacity = Some(2);
        // The stream keeps the whole burst, so every lost event can be read back.
        c.history_size = 10_000;
    })
    .await;
    let token = jwt::any_room("alice");
    let quiet: Vec<String> = (0..QUIET_ROOMS).map(|i| format!("quiet-{i}")).collect();
    // Two subscribers of every quiet room, one of the busy room.
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut c = WsClient::connect(&gw.ws_url(), &token).await;
        for room in &quiet {
            c.subscribe(room, None).await;
        }
        watchers.push(c);
    }
    let mut busy = WsClient::connect(&gw.ws_url(), &token).await;
    busy.subscribe("busy", None).await;
    let slow_before = gw
        .metric("herald_gateway_room_rescans_total{cause=\"slow consumer\"}")
        .await;

    // A backend's burst: the busy room's events with each quiet room's only event among
    // them, as fast as the store takes them. The busy room's last events are its quietest:
    // nothing comes after them to show a gap.
    let backend = async_nats::connect(nats.url()).await.expect("NATS connects");
    let js = async_nats::jetstream::new(backend.clone());
    let mut acks = Vec::with_capacity(BURST + QUIET_ROOMS);
    for i in 0..BURST {
        let ack = js.publish("herald.room.busy", "{}".into()).await.expect("published");
        acks.push(ack);
        if i % (BURST / QUIET_ROOMS) == 0 {
            let room = &quiet[i / (BURST / QUIET_ROOMS)];
            acks.push(
                js.publish(format!("herald.room.{room}"), "{}".into())
                    .await
                    .expect("published"),
            );
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }

    // Every subscriber of every quiet room gets its one event; the busy room's subscriber
    // gets all of its events once, in order.
    for w in &mut watchers {
        let got = read_events(w, QUIET_ROOMS).await;
        assert_eq!(got.len(), QUIET_ROOMS, "every quiet room: {got:?}");
        assert!(got.values().all(|seqs| seqs.len() == 1), "{got:?}");
    }
    let got = read_events(&mut busy, BURST).await;
    let seqs = &got["busy"];
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, once");
    let slow = gw
        .metric("herald_gateway_room_rescans_total{cause=\"slow consumer\"}")
        .await;
    assert!(
        slow > slow_before,
        "the burst overflowed a subscription buffer (else this test proves nothing)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_overflows_a_room_subscription_loses_nothing() {
    burst_case(RoomSubscriptions::PerRoom).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_overflows_the_wildcard_subscription_loses_no_quiet_room_s_event() {
    burst_case(RoomSubscriptions::Wildcard).await;
}
