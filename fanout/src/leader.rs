//! Leader leases: one fanout instance per partition publishes, the others stand by.
//!
//! A lease is a key (`leader.<partition>`) in a JetStream key-value bucket whose entries
//! expire after the lease time. An instance takes a free lease with `create` (which fails
//! while someone holds it) and renews its own with `update` on the revision it holds (which
//! fails once someone else took it). A holder that cannot renew for two thirds of the lease
//! stops publishing before anyone else can start. A draining instance deletes its keys so
//! another takes over at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

/// Which partitions this instance leads. Cheap to clone.
///
/// Leadership is held *until a time*, not until the renewal task says otherwise: a renewal
/// whose reply hangs (a slow or partitioned NATS) must not leave this instance publishing
/// after another one may have taken the lease. Each successful renewal extends the time to
/// two thirds of the lease after the request was sent; the key itself expires after a
/// whole lease, so the old leader has stopped before a new one can begin.
#[derive(Clone)]
pub struct Leases {
    /// Per partition: led until this many milliseconds after `base` (0: not led).
    until: Arc<[AtomicU64]>,
    base: std::time::Instant,
}

impl Leases {
    pub fn new(partitions: u32) -> Self {
        Self {
            until: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            base: std::time::Instant::now(),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.until.len() as u32
    }

    pub fn leads(&self, partition: u32) -> bool {
        self.ms(std::time::Instant::now()) < self.until[partition as usize].load(Ordering::Relaxed)
    }

    fn ms(&self, t: std::time::Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }

    /// The partition of a room or user name.
    pub fn partition_of(&self, name: &str) -> u32 {
        (herald_proto::sys::stable_hash(name) % u64::from(self.partitions())) as u32
    }

    pub fn leads_name(&self, name: &str) -> bool {
        self.leads(self.partition_of(name))
    }

    pub fn count(&self) -> usize {
        (0..self.partitions()).filter(|p| self.leads(*p)).count()
    }

    /// Leads `partition` until `until` (`None`: not at all).
    fn set(&self, partition: usize, until: Option<Instant>) {
        let ms = until.map_or(0, |t| self.ms(t.into_std()).max(1));
        self.until[partition].store(ms, Ordering::Relaxed);
        let led = until.is_some();
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
        leases.set(p, None);
    }
    // No call may outlast the renewal period: a hung reply is a failed renewal.
    let call = lease / 3;
    let valid = lease * 2 / 3;
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
            // The lease's clock starts no earlier than the request is sent.
            let now = Instant::now();
            *slot = match *slot {
                Some((revision, renewed)) => {
                    let updated = tokio::time::timeout(call, store.update(&key, value.clone(), revision)).await;
                    match updated {
                        Ok(Ok(revision)) => Some((revision, now)),
                        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            info!(partition = p, "Presence leadership lost");
                            None
                        }
                        _ if now.duration_since(renewed) < valid => {
                            warn!(partition = p, "Lease renewal failed or timed out; retrying");
                            Some((revision, renewed))
                        }
                        _ => {
                            warn!(partition = p, "Lease not renewed in time; stepping down");
                            None
                        }
                    }
                }
                None => match tokio::time::timeout(call, store.create(&key, value.clone())).await {
                    Ok(Ok(revision)) => {
                        info!(partition = p, "Presence leadership taken");
                        Some((revision, now))
                    }
                    _ => None,
                },
            };
            leases.set(p, slot.map(|(_, renewed)| renewed + valid));
        }
    }
    for (p, slot) in held.iter().enumerate() {
        if let Some((revision, _)) = slot {
            leases.set(p, None);
            let _ = store
                .delete_expect_revision(format!("leader.{p}"), Some(*revision))
                .await;
        }
    }
}
