//! The state behind `sample` and `rateLimit`: the only mutable part of a router.
//!
//! Both are lock-free atomics so a [`crate::rules::Router`] stays `Sync` and can route from
//! several threads. Both are deterministic given the sequence of calls (and, for the rate
//! limit, the `now` values), so tests can assert exact decisions.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// SplitMix64's finaliser: turns a counter into well-mixed 64-bit values.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `sample: p`: keeps a fraction `p` of the events that reach it.
///
/// A per-rule counter fed through SplitMix64 rather than a hash of the line: identical
/// lines (a log storm of the same message) are thinned like any others instead of being
/// all kept or all dropped, and the n-th event a rule sees gets the same draw in every
/// router compiled from the same spec.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// Keep when the draw is below this; `None` keeps everything (p = 1).
    threshold: Option<u64>,
    seed: u64,
    counter: AtomicU64,
}

impl Sampler {
    pub(crate) fn new(p: f64, seed: u64) -> Sampler {
        let threshold = if p >= 1.0 {
            None
        } else if p > 0.0 {
            // 2^64 * p, saturating; p in (0, 1) so this is in range.
            Some((p * 18_446_744_073_709_551_616.0) as u64)
        } else {
            Some(0)
        };
        Sampler {
            threshold,
            seed,
            counter: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn keep(&self) -> bool {
        match self.threshold {
            None => true,
            Some(0) => false,
            Some(t) => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                splitmix64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) < t
            }
        }
    }
}

/// `rateLimit: {perSecond: r}`: a token bucket with `r` tokens per second and a burst of
/// `max(1, r)`, implemented as GCRA so its whole state is one atomic "theoretical arrival
/// time" in nanoseconds.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of `now` the theoretical arrival time may run: (burst - 1) tokens.
    tolerance: u64,
    tat: AtomicU64,
}

impl RateLimiter {
    pub(crate) fn new(per_second: f64) -> RateLimiter {
        let burst = per_second.max(1.0);
        let interval = (1e9 / per_second).max(1.0);
        RateLimiter {
            // Saturating float-to-int casts: a tiny rate is "one token per u64::MAX ns".
            interval: interval as u64,
            tolerance: if burst > 1.0 {
                ((burst - 1.0) * interval) as u64
            } else {
                0
            },
            tat: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let now = nanos_since_epoch(now);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            let next = start.saturating_add(self.interval);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }
}

/// One epoch for the whole process, so routers compiled at different times read the same
/// `now` as the same number; set back a day so that instants taken just before the first
/// compile do not all collapse onto zero.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    })
}

fn nanos_since_epoch(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_extremes() {
        let all = Sampler::new(1.0, 7);
        let none = Sampler::new(0.0, 7);
        assert!((0..1000).all(|_| all.keep()));
        assert!((0..1000).all(|_| !none.keep()));
    }

    #[test]
    fn sample_keeps_about_p() {
        let s = Sampler::new(0.25, 1);
        let kept = (0..100_000).filter(|_| s.keep()).count();
        assert!(
            (24_000..26_000).contains(&kept),
            "kept {kept} of 100000 at p=0.25"
        );
    }

    #[test]
    fn rate_limiter_allows_burst_then_rate() {
        let t0 = Instant::now();
        let r = RateLimiter::new(10.0);
        // A burst of 10 at once, then nothing more at the same instant.
        assert_eq!((0..100).filter(|_| r.admit(t0)).count(), 10);
        // 100 ms later one token is back.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..100).filter(|_| r.admit(t1)).count(), 1);
        // A fractional rate: one every two seconds, burst 1.
        let slow = RateLimiter::new(0.5);
        assert!(slow.admit(t0));
        assert!(!slow.admit(t0 + Duration::from_millis(1999)));
        assert!(slow.admit(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn extreme_rates_do_not_overflow() {
        let t0 = Instant::now();
        let tiny = RateLimiter::new(1e-300);
        assert!(tiny.admit(t0));
        assert!(!tiny.admit(t0 + Duration::from_secs(1_000_000)));
        let huge = RateLimiter::new(1e300);
        assert!((0..1000).all(|_| huge.admit(t0)));
    }
}
