//! Per-caller rate limits: one token bucket per identity.
//!
//! Every caller of a guarded endpoint (see [`crate::auth`]) has an *identity*: the name of its API
//! key, the `sub` of its JWT (the Cognito user, or the app client for client-credentials tokens),
//! or, for anonymous callers, its IP address. Each identity owns a token bucket holding up to
//! `burst` tokens that refills at `per_second` tokens a second; a request takes one token, and a
//! request that finds the bucket empty is answered 429 `rate_limited` with `Retry-After` (whole
//! seconds until a token is back). API keys can have their own `per_second`/`burst`
//! (`[[serve.auth.api_keys]]`); everyone else gets the `[serve.rate_limit]` default. Requests with
//! invalid credentials are charged to the caller's address, so a flood of bad keys or tokens is
//! limited like anonymous traffic. `/healthz`, `/readyz` and `/openapi.json` are never limited.
//!
//! ```toml
//! [serve.rate_limit]
//! enabled = true               # off by default
//! per_second = 50.0            # tokens added per second to each identity's bucket
//! burst = 100                  # bucket size: requests allowed at once after a quiet spell
//! max_identities = 100000      # buckets kept in memory at most
//! trust_x_forwarded_for = false
//! ```
//!
//! Limits are off by default: a local `pageflow run` (and `pageflow bench --serve`, which loads it
//! from one address) must not be throttled, and behind a load balancer (an ALB) every connection
//! comes from the balancer's address, so anonymous callers would all share one bucket. There,
//! turn on `trust_x_forwarded_for` with `enabled`: the anonymous identity is then the right-most
//! address of `X-Forwarded-For`, the one the balancer appended. Only trust it behind such a proxy:
//! clients reaching the job directly could otherwise pick their own identity. API keys' own
//! `per_second`/`burst` apply only while limits are on.
//!
//! Why not the `governor` crate: its GCRA is the same arithmetic as these buckets, and it takes
//! an injected clock, but its keyed limiter gives every key the same quota (API keys have their
//! own) and its store only grows: `retain_recent` forgets refilled keys, nothing forgets busy
//! ones, so callers spread over many addresses (IPv6) would grow it without bound. Covering
//! both means writing its `StateStore` (the sharded, bounded map below) and a limiter per quota
//! around it; what the crate would then replace is `Bucket::take`, twenty lines.
//!
//! The buckets live in a map split into [`SHARDS`] shards, each behind a mutex held only for the
//! bucket's update. Memory is bounded: a shard that is full first drops the buckets that have
//! refilled completely (forgetting them changes nothing: a new bucket starts full), then, if
//! still full, the least recently used quarter. The clock is injected ([`Clock`]), so the tests
//! move time by hand instead of sleeping.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The clock is the workspace's one ([`pageflow_dataflow::clock`]), re-exported for the callers of
/// the rate limiter.
use pageflow_dataflow::clock::Clock;
use serde::{Deserialize, Serialize};

/// The number of independently locked parts of the bucket map.
pub const SHARDS: usize = 16;

/// The `[serve.rate_limit]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Limit the guarded endpoints at all.
    pub enabled: bool,
    /// The default refill rate of an identity's bucket, in requests per second.
    pub per_second: f64,
    /// The default bucket size: the requests an identity may make at once after a quiet spell.
    pub burst: u32,
    /// The most identities whose buckets are kept (the least recently used go first).
    pub max_identities: usize,
    /// Identify anonymous callers by the right-most `X-Forwarded-For` address (behind a trusted
    /// load balancer only).
    pub trust_x_forwarded_for: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            per_second: 50.0,
            burst: 100,
            max_identities: 100_000,
            trust_x_forwarded_for: false,
        }
    }
}

impl RateLimitConfig {
    /// Checks the values, adding every problem to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if let Err(problem) = check_quota("[serve.rate_limit]", self.per_second, self.burst) {
            problems.push(problem);
        }
        if self.max_identities < SHARDS {
            problems.push(format!(
                "[serve.rate_limit] `max_identities` = {} is too small: keep at least {SHARDS} (the default is 100000)",
                self.max_identities
            ));
        }
    }

    /// The default quota of every identity.
    pub fn quota(&self) -> Quota {
        Quota {
            per_second: self.per_second,
            burst: self.burst,
        }
    }
}

/// Checks a rate and a burst; `at` names where they are configured.
pub(crate) fn check_quota(at: &str, per_second: f64, burst: u32) -> Result<(), String> {
    if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1_000_000.0) {
        return Err(format!(
            "{at} `per_second` = {per_second} must be a positive number of requests per second (at most 1000000), e.g. 50.0"
        ));
    }
    if burst == 0 {
        return Err(format!(
            "{at} `burst` must be at least 1 (the requests allowed at once), e.g. 100"
        ));
    }
    Ok(())
}

/// How fast one identity may call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    /// Tokens added per second.
    pub per_second: f64,
    /// The bucket's size.
    pub burst: u32,
}

impl Quota {
    /// How long an empty bucket takes to fill up.
    fn time_to_fill(self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((f64::from(self.burst) - tokens) / self.per_second).max(0.0))
    }
}

/// Whether a request may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A token was taken.
    Allowed,
    /// The bucket is empty; a token is back after `retry_after_secs` (whole seconds, at least 1).
    Limited {
        /// Seconds until the request would be allowed.
        retry_after_secs: u64,
    },
}

/// One identity's bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Duration,
    /// When the bucket will be full again if nothing is taken (then it can be forgotten).
    full_at: Duration,
}

impl Bucket {
    fn full(now: Duration, quota: Quota) -> Self {
        Bucket {
            tokens: f64::from(quota.burst),
            updated: now,
            full_at: now,
        }
    }

    fn take(&mut self, now: Duration, quota: Quota) -> Decision {
        let elapsed = now.saturating_sub(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * quota.per_second).min(f64::from(quota.burst));
        self.updated = self.updated.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.full_at = self.updated + quota.time_to_fill(self.tokens);
            Decision::Allowed
        } else {
            let wait = (1.0 - self.tokens) / quota.per_second;
            Decision::Limited {
                // Whole seconds, rounded up: retrying after that many seconds succeeds.
                retry_after_secs: (wait.ceil() as u64).max(1),
            }
        }
    }
}

type Shard = HashMap<Box<str>, Bucket>;

/// Token buckets by identity, bounded in number. Cheap to share (`&self` everywhere).
pub struct RateLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_per_shard: usize,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("identities", &self.len())
            .field("max_identities", &(self.max_per_shard * SHARDS))
            .finish()
    }
}

impl RateLimiter {
    /// A limiter holding at most about `max_identities` buckets, on `clock`.
    pub fn new(max_identities: usize, clock: Arc<dyn Clock>) -> Self {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
            max_per_shard: max_identities.div_ceil(SHARDS).max(1),
            clock,
        }
    }

    /// Takes a token from `identity`'s bucket (created full on first use) under `quota`.
    pub fn check(&self, identity: &str, quota: Quota) -> Decision {
        let now = self.clock.now();
        let index = (self.hasher.hash_one(identity) % SHARDS as u64) as usize;
        // A panic while holding the lock cannot leave a bucket half-updated in a harmful way.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = shard.get_mut(identity) {
            return bucket.take(now, quota);
        }
        if shard.len() >= self.max_per_shard {
            evict(&mut shard, now, self.max_per_shard);
        }
        let mut bucket = Bucket::full(now, quota);
        let decision = bucket.take(now, quota);
        shard.insert(identity.into(), bucket);
        decision
    }

    /// The number of buckets held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room in a full shard: drops refilled buckets, then the least recently used quarter.
fn evict(shard: &mut Shard, now: Duration, max: usize) {
    shard.retain(|_, bucket| bucket.full_at > now);
    if shard.len() < max {
        return;
    }
    let mut by_age: Vec<(Duration, Box<str>)> = shard
        .iter()
        .map(|(identity, bucket)| (bucket.updated, identity.clone()))
        .collect();
    let drop = (max / 4).max(1).min(by_age.len());
    by_age.select_nth_unstable_by_key(drop - 1, |(updated, _)| *updated);
    for (_, identity) in &by_age[..drop] {
        shard.remove(identity);
    }
}

#[cfg(test)]
mod tests {
    use pageflow_dataflow::clock::ManualClock;

    use super::*;

    fn limiter(max: usize) -> (RateLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (RateLimiter::new(max, clock.clone()), clock)
    }

    const TWO_PER_SECOND_BURST_3: Quota = Quota {
        per_second: 2.0,
        burst: 3,
    };

    #[test]
    fn a_burst_is_allowed_then_limited_with_whole_seconds_to_wait() {
        let (limiter, _) = limiter(100);
        for _ in 0..3 {
            assert_eq!(
                limiter.check("key:a", TWO_PER_SECOND_BURST_3),
                Decision::Allowed
            );
        }
        // Empty: a token comes back in 0.5 s, announced as 1 whole second.
        assert_eq!(
            limiter.check("key:a", TWO_PER_SECOND_BURST_3),
            Decision::Limited {
                retry_after_secs: 1
            }
        );
    }

    #[test]
    fn retry_after_rounds_up_slow_refills() {
        let (limiter, _) = limiter(100);
        let slow = Quota {
            per_second: 0.25,
            burst: 1,
        };
        assert_eq!(limiter.check("ip:1", slow), Decision::Allowed);
        assert_eq!(
            limiter.check("ip:1", slow),
            Decision::Limited {
                retry_after_secs: 4
            }
        );
    }

    #[test]
    fn tokens_come_back_with_time_up_to_the_burst() {
        let (limiter, clock) = limiter(100);
        for _ in 0..3 {
            limiter.check("key:a", TWO_PER_SECOND_BURST_3);
        }
        assert_ne!(
            limiter.check("key:a", TWO_PER_SECOND_BURST_3),
            Decision::Allowed
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            limiter.check("key:a", TWO_PER_SECOND_BURST_3),
            Decision::Allowed
        );
        assert_ne!(
            limiter.check("key:a", TWO_PER_SECOND_BURST_3),
            Decision::Allowed
        );
        // A long pause refills to the burst, not beyond.
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            assert_eq!(
                limiter.check("key:a", TWO_PER_SECOND_BURST_3),
                Decision::Allowed
            );
        }
        assert_ne!(
            limiter.check("key:a", TWO_PER_SECOND_BURST_3),
            Decision::Allowed
        );
    }

    #[test]
    fn identities_have_their_own_buckets_and_quotas() {
        let (limiter, _) = limiter(100);
        let one = Quota {
            per_second: 1.0,
            burst: 1,
        };
        let ten = Quota {
            per_second: 1.0,
            burst: 10,
        };
        assert_eq!(limiter.check("key:small", one), Decision::Allowed);
        assert_ne!(limiter.check("key:small", one), Decision::Allowed);
        for _ in 0..10 {
            assert_eq!(limiter.check("key:large", ten), Decision::Allowed);
        }
        assert_ne!(limiter.check("key:large", ten), Decision::Allowed);
    }

    #[test]
    fn memory_is_bounded() {
        let (limiter, _) = limiter(SHARDS * 4);
        let quota = Quota {
            per_second: 1.0,
            burst: 2,
        };
        for i in 0..10_000 {
            limiter.check(&format!("ip:{i}"), quota);
        }
        assert!(
            limiter.len() <= SHARDS * 4,
            "{} buckets for at most {}",
            limiter.len(),
            SHARDS * 4
        );
    }

    #[test]
    fn refilled_buckets_are_forgotten_before_busy_ones() {
        let (limiter, clock) = limiter(SHARDS * 4);
        // A slow identity empties its bucket: it stays empty for 1000 s.
        let slow = Quota {
            per_second: 0.001,
            burst: 1,
        };
        assert_eq!(limiter.check("key:busy", slow), Decision::Allowed);
        // Many others come and go; each refills within a millisecond.
        let fast = Quota {
            per_second: 1000.0,
            burst: 1,
        };
        for i in 0..10_000 {
            clock.advance(Duration::from_millis(10));
            limiter.check(&format!("ip:{i}"), fast);
        }
        assert!(limiter.len() <= SHARDS * 4);
        // Had its bucket been dropped, a new full one would allow the request.
        assert_ne!(limiter.check("key:busy", slow), Decision::Allowed);
    }

    #[test]
    fn concurrent_callers_take_exactly_the_burst() {
        let (limiter, _) = limiter(100);
        let limiter = Arc::new(limiter);
        let quota = Quota {
            per_second: 0.001,
            burst: 1000,
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| limiter.check("key:shared", quota) == Decision::Allowed)
                        .count()
                })
            })
            .collect();
        let allowed: usize = threads
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|_| panic!("thread panicked")))
            .sum();
        assert_eq!(allowed, 1000);
    }

    #[test]
    fn config_problems_are_named() {
        let mut problems = Vec::new();
        RateLimitConfig {
            per_second: 0.0,
            max_identities: 1,
            ..RateLimitConfig::default()
        }
        .validate(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("per_second"), "{problems:#?}");
        assert!(problems[1].contains("max_identities"), "{problems:#?}");
        let mut problems = Vec::new();
        RateLimitConfig {
            burst: 0,
            ..RateLimitConfig::default()
        }
        .validate(&mut problems);
        assert!(problems[0].contains("burst"), "{problems:#?}");
        let mut problems = Vec::new();
        RateLimitConfig::default().validate(&mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
