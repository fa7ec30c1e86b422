//! The one backoff-with-jitter policy every retry in pageflow's connectors uses.
//!
//! "Full jitter" exponential backoff (the delay is drawn uniformly from zero to an exponentially
//! growing cap, see the AWS Architecture Blog's "Exponential Backoff And Jitter"): many workers
//! retrying a throttled shard or stream spread out instead of retrying in lockstep.
//!
//! This is a policy (how long to wait), not a retry loop: each caller keeps its own loop because
//! each retries differently: the batch sinks resend only the entries the service refused, the
//! checkpoint store sleeps on a plain thread, the fan-out setup gives up at a deadline, and each
//! decides what is retryable from its own AWS SDK error classification (`is_retryable`). Why not a
//! retry crate: `backon` adds its jitter on top of the delay (`[d, 2d)`), not full jitter, so the
//! delays would change, and draws it from its own generator (seedable, but no value can be given
//! per delay, as the tests here do); `backoff` is unmaintained (RUSTSEC-2025-0012); `tokio-retry`'s strategies could give
//! the caps (in whole milliseconds), but its `jitter` draws from `rand`'s thread generator, so
//! tests could not choose the draw either. What would move to a crate is the three lines of
//! `Backoff::delay`.

use std::time::Duration;

/// How long to wait before each retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The cap of the first retry's delay.
    pub base: Duration,
    /// The largest cap, however many retries.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1 for the first retry), using `random` (any
    /// well-mixed 64-bit value) to jitter it.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(fraction)
    }
}

/// A small, fast pseudo-random sequence for jitter (SplitMix64); not for anything secret.
#[derive(Clone, Debug)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    /// A sequence seeded from the clock and the address of the value, so that workers differ.
    pub fn new() -> Self {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut jitter = Jitter { state: clock };
        jitter.state ^= (&jitter as *const Jitter as u64).rotate_left(32);
        jitter
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_under_it() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let near_cap = |attempt, cap_ms: u64| {
            let delay = backoff.delay(attempt, u64::MAX);
            delay <= Duration::from_millis(cap_ms) && delay > Duration::from_millis(cap_ms - 1)
        };
        assert!(
            near_cap(1, 100) && near_cap(3, 400),
            "the cap doubles per retry"
        );
        assert!(backoff.delay(30, u64::MAX) <= Duration::from_secs(1));
        assert_eq!(backoff.delay(5, 0), Duration::ZERO);
        let mut jitter = Jitter::new();
        let values: std::collections::HashSet<u64> = (0..100).map(|_| jitter.next_u64()).collect();
        assert_eq!(values.len(), 100);
    }
}
