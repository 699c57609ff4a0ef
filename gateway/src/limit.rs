//! Token buckets: the publish and op rates of a connection, and the gateway's HTTP limits.

use std::time::Instant;

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
