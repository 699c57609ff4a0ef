//! Token buckets (the publish and op rates of a connection, and the gateway's HTTP limits)
//! and quotas (what one client address and the whole gateway may hold at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::addr::ClientAddr;
use crate::sync::lock;

/// `rate` per second, up to `burst` at once; counts the refusals in a row.
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    pub(crate) strikes: u32,
}

// === impl TokenBucket ===

impl TokenBucket {
    pub(crate) fn new(rate: f64) -> Self {
        Self::with_burst(rate, rate)
    }

    /// `rate` per second, up to `burst` at once.
    pub(crate) fn with_burst(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
            strikes: 0,
        }
    }

    /// Whether the bucket has refilled completely (nothing to remember about it).
    pub(crate) fn is_full(&self) -> bool {
        self.tokens + self.last.elapsed().as_secs_f64() * self.rate >= self.burst
    }

    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

/// Things held (connections, presence memberships) counted per client address and in all,
/// each under its cap. What a [`Held`] took is given back when it drops, however its owner
/// ends.
pub(crate) struct Quota {
    counts: Mutex<Counts>,
    per_addr: usize,
    total: usize,
}

#[derive(Default)]
struct Counts {
    by_addr: HashMap<ClientAddr, usize>,
    total: usize,
}

/// Which cap a [`Quota`] refused at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// The client's address holds its share.
    Addr,
    /// The gateway holds its total.
    Total,
}

/// A share of a [`Quota`], for one address (or none: counted in the total only).
pub(crate) struct Held {
    quota: Arc<Quota>,
    addr: Option<ClientAddr>,
    n: usize,
}

// === impl Quota ===

impl Quota {
    pub(crate) fn new(per_addr: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::default(),
            per_addr,
            total,
        })
    }

    /// Takes `n` for `addr` (an address of `None` counts in the total only).
    pub(crate) fn take(self: &Arc<Self>, addr: Option<ClientAddr>, n: usize) -> Result<Held, Over> {
        let mut held = Held {
            quota: Arc::clone(self),
            addr,
            n: 0,
        };
        held.grow(n)?;
        Ok(held)
    }

    /// What is held in all.
    pub(crate) fn total(&self) -> usize {
        lock(&self.counts).total
    }

    /// What `addr` holds.
    #[cfg(test)]
    pub(crate) fn of(&self, addr: ClientAddr) -> usize {
        lock(&self.counts).by_addr.get(&addr).copied().unwrap_or(0)
    }
}

// === impl Held ===

impl Held {
    /// Takes `n` more, or nothing.
    pub(crate) fn grow(&mut self, n: usize) -> Result<(), Over> {
        if n == 0 {
            return Ok(());
        }
        let q = &self.quota;
        let mut counts = lock(&q.counts);
        if counts.total.saturating_add(n) > q.total {
            return Err(Over::Total);
        }
        if let Some(addr) = self.addr {
            let mine = counts.by_addr.entry(addr).or_default();
            if mine.saturating_add(n) > q.per_addr {
                if *mine == 0 {
                    counts.by_addr.remove(&addr);
                }
                return Err(Over::Addr);
            }
            *mine += n;
        }
        counts.total += n;
        self.n += n;
        Ok(())
    }

    /// Gives back `n` (at most what is held).
    pub(crate) fn shrink(&mut self, n: usize) {
        let n = n.min(self.n);
        if n == 0 {
            return;
        }
        self.n -= n;
        let mut counts = lock(&self.quota.counts);
        counts.total -= n;
        if let Some(addr) = self.addr {
            if let Some(mine) = counts.by_addr.get_mut(&addr) {
                *mine -= n;
                if *mine == 0 {
                    counts.by_addr.remove(&addr);
                }
            }
        }
    }

    /// Holds exactly `n` (growing within the caps, or shrinking).
    pub(crate) fn resize(&mut self, n: usize) -> Result<(), Over> {
        if n >= self.n {
            self.grow(n - self.n)
        } else {
            self.shrink(self.n - n);
            Ok(())
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shrink(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_counts_per_address_and_in_all_and_gives_back_on_drop() {
        let q = Quota::new(3, 5);
        let a = ClientAddr::of("192.0.2.1".parse().unwrap());
        let b = ClientAddr::of("192.0.2.2".parse().unwrap());
        let mut ha = q.take(Some(a), 2).unwrap();
        assert_eq!(ha.grow(2).err(), Some(Over::Addr), "3 per address");
        ha.grow(1).unwrap();
        let hb = q.take(Some(b), 2).unwrap();
        assert_eq!(q.take(None, 1).err(), Some(Over::Total), "5 in all");
        assert_eq!((q.total(), q.of(a), q.of(b)), (5, 3, 2));
        ha.resize(1).unwrap();
        assert_eq!((q.total(), q.of(a)), (3, 1));
        drop(ha);
        drop(hb);
        assert_eq!((q.total(), q.of(a), q.of(b)), (0, 0, 0));
        assert!(lock(&q.counts).by_addr.is_empty(), "no address is remembered at zero");
    }
}
