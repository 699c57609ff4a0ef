//! Leader leases: one fanout instance per partition publishes, the others stand by.
//!
//! A lease is a key (`leader.<partition>`) in a JetStream key-value bucket whose entries
//! expire after the lease time. An instance takes a free lease with `create` (which fails
//! while someone holds it) and renews its own with `update` on the revision it holds (which
//! fails once someone else took it). A holder that cannot renew for two thirds of the lease
//! stops publishing before anyone else can start. A draining instance deletes its keys so
//! another takes over at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

/// Which partitions this instance leads. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    led: Arc<[AtomicBool]>,
}

impl Leases {
    pub fn new(partitions: u32) -> Self {
        Self {
            led: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.led.len() as u32
    }

    pub fn leads(&self, partition: u32) -> bool {
        self.led[partition as usize].load(Ordering::Relaxed)
    }

    /// The partition of a room or user name.
    pub fn partition_of(&self, name: &str) -> u32 {
        (herald_proto::sys::stable_hash(name) % u64::from(self.partitions())) as u32
    }

    pub fn leads_name(&self, name: &str) -> bool {
        self.leads(self.partition_of(name))
    }

    pub fn count(&self) -> usize {
        self.led.iter().filter(|l| l.load(Ordering::Relaxed)).count()
    }

    fn set(&self, partition: usize, led: bool) {
        self.led[partition].store(led, Ordering::Relaxed);
        metrics::gauge!(crate::metric::LEADER, "partition" => partition.to_string()).set(f64::from(u8::from(led)));
    }
}

/// Opens (or creates) the lease bucket.
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    lease: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: name.to_owned(),
        description: "Herald fanout leader leases".to_owned(),
        history: 1,
        max_age: lease,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another instance created it meanwhile.
        Err(e) => js.get_key_value(name).await.map_err(|_| e.to_string()),
    }
}

/// Takes and renews leases until `stop` is notified, then gives them up.
pub async fn run(store: kv::Store, instance: String, leases: Leases, lease: Duration, stop: Arc<Notify>) {
    let n = leases.partitions() as usize;
    let mut held: Vec<Option<(u64, Instant)>> = vec![None; n];
    let mut every = tokio::time::interval(lease / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for p in 0..n {
        leases.set(p, false);
    }
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = every.tick() => {}
        }
        let value = Bytes::from(instance.clone());
        for (p, slot) in held.iter_mut().enumerate() {
            let key = format!("leader.{p}");
            let now = Instant::now();
            *slot = match *slot {
                Some((revision, renewed)) => match store.update(&key, value.clone(), revision).await {
                    Ok(revision) => Some((revision, now)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        info!(partition = p, "Presence leadership lost");
                        None
                    }
                    Err(e) if now.duration_since(renewed) < lease * 2 / 3 => {
                        warn!(partition = p, error = %e, "Lease renewal failed; retrying");
                        Some((revision, renewed))
                    }
                    Err(e) => {
                        warn!(partition = p, error = %e, "Lease not renewed in time; stepping down");
                        None
                    }
                },
                None => match store.create(&key, value.clone()).await {
                    Ok(revision) => {
                        info!(partition = p, "Presence leadership taken");
                        Some((revision, now))
                    }
                    Err(_) => None,
                },
            };
            leases.set(p, slot.is_some());
        }
    }
    for (p, slot) in held.iter().enumerate() {
        if let Some((revision, _)) = slot {
            leases.set(p, false);
            let _ = store
                .delete_expect_revision(format!("leader.{p}"), Some(*revision))
                .await;
        }
    }
}
