//! A leader whose lease renewal hangs stops leading by the lease's clock, so two instances
//! never lead the same partition at once.

use std::sync::Arc;
use std::time::Duration;

use herald_fanout::leader::{self, Leases};
use herald_testkit::{wait_until, NatsServer};
use tokio::sync::Notify;

const LEASE: Duration = Duration::from_millis(1500);

async fn instance(nats: &NatsServer, name: &str) -> (Leases, Arc<Notify>) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let store = leader::bucket(&js, "HERALD_TEST_LEASES", LEASE, 1).await.unwrap();
    let leases = Leases::new(1);
    let stop = Arc::new(Notify::new());
    tokio::spawn(leader::run(
        store,
        name.to_owned(),
        leases.clone(),
        LEASE,
        Arc::clone(&stop),
    ));
    (leases, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_renewal_ends_leadership_before_anyone_else_can_take_it() {
    let nats = NatsServer::start();
    let (a, _stop_a) = instance(&nats, "a").await;
    wait_until(Duration::from_secs(10), "a leads", || async { a.leads(0) }).await;
    let (b, _stop_b) = instance(&nats, "b").await;

    // Every KV reply now hangs. `a` must stop leading within the lease: by then the key may
    // have expired on the server, and `b` may take it as soon as the server answers again.
    nats.pause();
    let stepped_down = tokio::time::timeout(LEASE, async {
        while a.leads(0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    nats.resume();
    assert!(
        stepped_down.is_ok(),
        "a still led a whole lease after its renewals hung"
    );

    // From here on one of them leads again, and never both.
    let deadline = tokio::time::Instant::now() + 3 * LEASE;
    let mut someone = false;
    while tokio::time::Instant::now() < deadline {
        let (la, lb) = (a.leads(0), b.leads(0));
        assert!(!(la && lb), "two leaders at once");
        someone |= la || lb;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(someone, "leadership came back");
}
