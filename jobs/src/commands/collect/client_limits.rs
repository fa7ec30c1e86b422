//! Rate limits per client address, with the address never kept whole (LGPD).
//!
//! Each client has a token bucket (`[collect.rate_limit]`, the serving API's
//! [`RateLimitConfig`] and [`RateLimiter`]): a `POST /v1/collect` takes a token, and a client whose
//! bucket is empty is answered 429 `rate_limited` with `Retry-After`. The client is the
//! connection's address, or behind a load balancer (`trust_x_forwarded_for = true`) the right-most
//! address of `X-Forwarded-For`, the one the balancer appended.
//!
//! The bucket is found by a keyed hash of the address ([`ClientLimits::identity`]), never by the
//! address itself: the key is drawn at start and kept in memory only, so what the limiter holds
//! cannot be turned back into addresses, nor matched across restarts. Nothing else of the
//! address is kept or logged.
//!
//! ```toml
//! [collect.rate_limit]
//! enabled = true               # off by default, as for the API
//! per_second = 20.0            # requests per second per client (a page sends a few a minute)
//! burst = 40
//! trust_x_forwarded_for = true # behind the ALB
//! ```

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use pageflow_dataflow::clock::{Clock, SystemClock};
use pageflow_serve::rate_limit::{Decision, RateLimitConfig, RateLimiter};

/// The buckets, or nothing when limits are off.
#[derive(Debug)]
pub struct ClientLimits {
    config: RateLimitConfig,
    limiter: Option<RateLimiter>,
    key: RandomState,
}

impl ClientLimits {
    /// Limits as `config` says, on the system clock.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// Limits on `clock` (tests).
    pub fn with_clock(config: &RateLimitConfig, clock: Arc<dyn Clock>) -> Self {
        ClientLimits {
            config: config.clone(),
            limiter: config
                .enabled
                .then(|| RateLimiter::new(config.max_identities, clock)),
            key: RandomState::new(),
        }
    }

    /// Takes a token for the client of a request with these `headers` and `extensions`; returns
    /// the seconds to wait when its bucket is empty.
    pub fn check(&self, headers: &HeaderMap, extensions: &Extensions) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let identity = match self.client_ip(headers, extensions) {
            Some(ip) => self.identity(ip),
            // Not over TCP (cannot happen when served by `pageflow collect`): one shared bucket.
            None => "unknown".to_string(),
        };
        match limiter.check(&identity, self.config.quota()) {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after_secs } => Err(retry_after_secs),
        }
    }

    /// The bucket's name for `ip`: a keyed hash, not the address.
    pub fn identity(&self, ip: IpAddr) -> String {
        format!("{:016x}", self.key.hash_one(ip))
    }

    fn client_ip(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        if self.config.trust_x_forwarded_for
            && let Some(ip) = headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.rsplit(',').next())
                .and_then(|last| last.trim().parse().ok())
        {
            return Some(ip);
        }
        extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
    }
}

/// Checks `[collect.rate_limit]`, naming that section in each problem.
pub fn validate(config: &RateLimitConfig) -> Vec<String> {
    let mut problems = Vec::new();
    config.validate(&mut problems);
    problems
        .into_iter()
        .map(|problem| problem.replace("[serve.rate_limit]", "[collect.rate_limit]"))
        .collect()
}

#[cfg(test)]
mod tests {
    use pageflow_dataflow::clock::ManualClock;

    use super::*;

    fn limits(trust_forwarded: bool) -> ClientLimits {
        ClientLimits::with_clock(
            &RateLimitConfig {
                enabled: true,
                per_second: 1.0,
                burst: 2,
                trust_x_forwarded_for: trust_forwarded,
                ..RateLimitConfig::default()
            },
            Arc::new(ManualClock::default()),
        )
    }

    fn from(addr: &str) -> Extensions {
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo(addr.parse::<SocketAddr>().unwrap()));
        extensions
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let limits = limits(false);
        let headers = HeaderMap::new();
        let a = from("10.0.0.1:5000");
        assert_eq!(limits.check(&headers, &a), Ok(()));
        assert_eq!(limits.check(&headers, &from("10.0.0.1:6000")), Ok(()));
        assert_eq!(limits.check(&headers, &a), Err(1));
        assert_eq!(limits.check(&headers, &from("10.0.0.2:5000")), Ok(()));
    }

    #[test]
    fn behind_a_balancer_the_forwarded_address_is_the_client() {
        let limits = limits(true);
        let balancer = from("10.0.0.9:443");
        let mut first = HeaderMap::new();
        first.insert(
            "x-forwarded-for",
            "203.0.113.7, 198.51.100.1".parse().unwrap(),
        );
        let mut second = HeaderMap::new();
        second.insert("x-forwarded-for", "198.51.100.2".parse().unwrap());
        assert_eq!(limits.check(&first, &balancer), Ok(()));
        assert_eq!(limits.check(&first, &balancer), Ok(()));
        assert_eq!(limits.check(&first, &balancer), Err(1));
        assert_eq!(limits.check(&second, &balancer), Ok(()));
    }

    #[test]
    fn the_identity_does_not_hold_the_address() {
        let (limits, other_process) = (limits(false), limits(false));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let identity = limits.identity(ip);
        assert_eq!(identity, limits.identity(ip), "stable within a process");
        assert!(!identity.contains("203.0.113.7"), "{identity}");
        assert_eq!(identity.len(), 16, "a 64-bit hash in hex: {identity}");
        assert_ne!(identity, other_process.identity(ip), "keyed per process");
    }

    #[test]
    fn off_by_default() {
        let limits = ClientLimits::new(&RateLimitConfig::default());
        for _ in 0..1000 {
            assert_eq!(limits.check(&HeaderMap::new(), &from("10.0.0.1:1")), Ok(()));
        }
    }

    #[test]
    fn problems_name_the_collect_section() {
        let problems = validate(&RateLimitConfig {
            burst: 0,
            ..RateLimitConfig::default()
        });
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("[collect.rate_limit]"),
            "{problems:?}"
        );
    }
}
