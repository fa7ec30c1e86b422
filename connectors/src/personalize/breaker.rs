//! A circuit breaker: stop calling a dependency that keeps failing, and try it again later.
//!
//! Asking Amazon Personalize for recommendations is on the request path of the serving layer,
//! with a budget of a few hundred milliseconds. When Personalize is down, throttling us, or
//! misconfigured (a deleted campaign, a wrong region), every request would spend its whole budget
//! waiting for an answer that will not come, and the retries would add to the throttling. The
//! breaker notices and answers "don't call" at once instead, so the caller serves its fallback
//! without delay:
//!
//! ```text
//!            failure_threshold consecutive failures
//!  Closed ──────────────────────────────────────────► Open
//!    ▲                                                 │ open_for elapsed
//!    │ probe succeeds              probe fails         ▼
//!    └─────────────────────────── HalfOpen ◄───────────┘
//!                                  │  ▲
//!                 probe fails      │  │
//!            (Open for open_for) ◄─┘  └─ one probe call at a time
//! ```
//!
//! - **Closed**: every call goes through; a success resets the count of consecutive failures.
//! - **Open**: no call goes through, for `open_for`.
//! - **HalfOpen**: one call, the *probe*, goes through; its success closes the breaker, its failure
//!   opens it again for `open_for`. A probe whose outcome is never reported (its caller gave up) is
//!   replaced by a new one after `open_for`, so a lost probe cannot keep the breaker half-open
//!   forever.
//!
//! A success or failure reported while the breaker is open (a call admitted before it opened) does
//! not change it: the breaker opened on more recent evidence.
//!
//! The breaker does no I/O and reads no clock: every method takes the current [`Instant`], so it is
//! tested without sleeping and shared behind a mutex by whoever owns the clock.

use std::time::{Duration, Instant};

/// When the breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker (at least 1).
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets a probe through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    /// Five consecutive failures open the breaker for ten seconds.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// What the breaker currently does with calls, e.g. for a gauge or a status page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// One probe call may go through (or is under way); the others are refused.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to "may I call now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Call; report the outcome with [`CircuitBreaker::record_success`] or
    /// [`CircuitBreaker::record_failure`].
    Allowed,
    /// Call: this is the half-open breaker's probe. Report its outcome the same way.
    Probe,
    /// Don't call: the breaker is open (or a probe is under way) for at least `retry_in` more.
    Rejected {
        /// How long until the breaker lets a call through again (at the earliest).
        retry_in: Duration,
    },
}

impl Admission {
    /// Whether the call may be made.
    pub fn is_allowed(self) -> bool {
        !matches!(self, Admission::Rejected { .. })
    }
}

/// The breaker's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

/// A circuit breaker (see the module documentation). Not synchronised: share it behind a mutex.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Phase,
}

impl CircuitBreaker {
    /// A closed breaker. A `failure_threshold` of 0 is taken as 1.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config: BreakerConfig {
                failure_threshold: config.failure_threshold.max(1),
                ..config
            },
            phase: Phase::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// Its configuration.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// What it does with a call at `now`: an open breaker whose `open_for` has elapsed is reported
    /// half-open, since the next call would be its probe.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The failures in a row counted so far while closed (0 otherwise).
    pub fn consecutive_failures(&self) -> u32 {
        match self.phase {
            Phase::Closed {
                consecutive_failures,
            } => consecutive_failures,
            _ => 0,
        }
    }

    /// Whether a call may be made at `now`. An [`Admission::Probe`] moves the breaker to
    /// half-open with that probe under way; the caller must report its outcome.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed { .. } => Admission::Allowed,
            Phase::Open { until } if now < until => Admission::Rejected {
                retry_in: until - now,
            },
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen { probe_started: now };
                Admission::Probe
            }
            Phase::HalfOpen { probe_started } => {
                let probe_given_up_at = probe_started + self.config.open_for;
                if now >= probe_given_up_at {
                    // The probe never reported back: its caller was cancelled. Try another.
                    self.phase = Phase::HalfOpen { probe_started: now };
                    Admission::Probe
                } else {
                    Admission::Rejected {
                        retry_in: probe_given_up_at - now,
                    }
                }
            }
        }
    }

    /// A call admitted earlier succeeded.
    pub fn record_success(&mut self, _now: Instant) {
        match self.phase {
            Phase::Closed { .. } | Phase::HalfOpen { .. } => {
                self.phase = Phase::Closed {
                    consecutive_failures: 0,
                }
            }
            Phase::Open { .. } => {}
        }
    }

    /// A call admitted earlier failed (including timing out or being throttled).
    pub fn record_failure(&mut self, now: Instant) {
        match self.phase {
            Phase::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                self.phase = if failures >= self.config.failure_threshold {
                    Phase::Open {
                        until: now + self.config.open_for,
                    }
                } else {
                    Phase::Closed {
                        consecutive_failures: failures,
                    }
                };
            }
            Phase::HalfOpen { .. } => {
                self.phase = Phase::Open {
                    until: now + self.config.open_for,
                }
            }
            Phase::Open { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);

    fn breaker(threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: threshold,
            open_for: OPEN_FOR,
        })
    }

    /// Fails `n` admitted calls at `now`.
    fn fail(breaker: &mut CircuitBreaker, n: u32, now: Instant) {
        for _ in 0..n {
            assert!(breaker.admit(now).is_allowed());
            breaker.record_failure(now);
        }
    }

    #[test]
    fn defaults_are_five_failures_and_ten_seconds() {
        let config = BreakerConfig::default();
        assert_eq!(config.failure_threshold, 5);
        assert_eq!(config.open_for, Duration::from_secs(10));
    }

    #[test]
    fn closed_breaker_admits_and_stays_closed_below_the_threshold() {
        let now = Instant::now();
        let mut breaker = breaker(3);
        fail(&mut breaker, 2, now);
        assert_eq!(breaker.state(now), BreakerState::Closed);
        assert_eq!(breaker.consecutive_failures(), 2);
        assert_eq!(breaker.admit(now), Admission::Allowed);
    }

    #[test]
    fn success_resets_the_consecutive_failures() {
        let now = Instant::now();
        let mut breaker = breaker(3);
        fail(&mut breaker, 2, now);
        breaker.record_success(now);
        assert_eq!(breaker.consecutive_failures(), 0);
        fail(&mut breaker, 2, now);
        assert_eq!(
            breaker.state(now),
            BreakerState::Closed,
            "2 + 2 failures with a success between are not 3 in a row"
        );
    }

    #[test]
    fn threshold_failures_in_a_row_open_it_and_it_refuses_calls() {
        let now = Instant::now();
        let mut breaker = breaker(3);
        fail(&mut breaker, 3, now);
        assert_eq!(breaker.state(now), BreakerState::Open);
        let later = now + Duration::from_secs(4);
        assert_eq!(
            breaker.admit(later),
            Admission::Rejected {
                retry_in: Duration::from_secs(6)
            }
        );
        assert_eq!(breaker.state(later), BreakerState::Open);
    }

    #[test]
    fn a_threshold_of_zero_is_one() {
        let now = Instant::now();
        let mut breaker = breaker(0);
        assert_eq!(breaker.config().failure_threshold, 1);
        fail(&mut breaker, 1, now);
        assert_eq!(breaker.state(now), BreakerState::Open);
    }

    #[test]
    fn after_open_for_it_is_half_open_and_lets_exactly_one_probe_through() {
        let now = Instant::now();
        let mut breaker = breaker(1);
        fail(&mut breaker, 1, now);
        let after = now + OPEN_FOR;
        assert_eq!(breaker.state(after), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(after), Admission::Probe);
        assert_eq!(breaker.state(after), BreakerState::HalfOpen);
        assert!(
            !breaker.admit(after + Duration::from_millis(1)).is_allowed(),
            "a second call while the probe is under way is refused"
        );
    }

    #[test]
    fn probe_success_closes_it() {
        let now = Instant::now();
        let mut breaker = breaker(2);
        fail(&mut breaker, 2, now);
        let after = now + OPEN_FOR;
        assert_eq!(breaker.admit(after), Admission::Probe);
        breaker.record_success(after);
        assert_eq!(breaker.state(after), BreakerState::Closed);
        assert_eq!(breaker.admit(after), Admission::Allowed);
        fail(&mut breaker, 1, after);
        assert_eq!(
            breaker.state(after),
            BreakerState::Closed,
            "the failure count starts again from zero"
        );
    }

    #[test]
    fn probe_failure_opens_it_again_for_open_for() {
        let now = Instant::now();
        let mut breaker = breaker(2);
        fail(&mut breaker, 2, now);
        let probe_at = now + OPEN_FOR + Duration::from_secs(3);
        assert_eq!(breaker.admit(probe_at), Admission::Probe);
        breaker.record_failure(probe_at);
        assert_eq!(breaker.state(probe_at), BreakerState::Open);
        assert_eq!(
            breaker.admit(probe_at + Duration::from_secs(1)),
            Admission::Rejected {
                retry_in: OPEN_FOR - Duration::from_secs(1)
            }
        );
        assert_eq!(breaker.admit(probe_at + OPEN_FOR), Admission::Probe);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_open_for() {
        let now = Instant::now();
        let mut breaker = breaker(1);
        fail(&mut breaker, 1, now);
        let probe_at = now + OPEN_FOR;
        assert_eq!(breaker.admit(probe_at), Admission::Probe);
        assert!(!breaker.admit(probe_at + OPEN_FOR / 2).is_allowed());
        assert_eq!(breaker.admit(probe_at + OPEN_FOR), Admission::Probe);
    }

    #[test]
    fn outcomes_reported_while_open_change_nothing() {
        let now = Instant::now();
        let mut breaker = breaker(1);
        fail(&mut breaker, 1, now);
        let soon = now + Duration::from_secs(1);
        breaker.record_success(soon);
        assert_eq!(breaker.state(soon), BreakerState::Open);
        breaker.record_failure(soon);
        assert_eq!(
            breaker.admit(now + OPEN_FOR),
            Admission::Probe,
            "a late failure does not extend the open period"
        );
    }

    #[test]
    fn state_names_are_metric_labels() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.to_string(), "open");
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
    }

    /// One step of a random history.
    #[derive(Clone, Debug)]
    enum Step {
        /// A call is attempted; if admitted, it succeeds or fails and reports it.
        Call { succeeds: bool },
        /// A call is attempted and, if admitted, never reports (its caller was cancelled).
        Abandoned,
        /// Time passes.
        Advance { millis: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => any::<bool>().prop_map(|succeeds| Step::Call { succeeds }),
            1 => Just(Step::Abandoned),
            3 => (0u64..15_000).prop_map(|millis| Step::Advance { millis }),
        ]
    }

    /// The reference: the rules of the module documentation, written out on plain numbers (time in
    /// milliseconds since the start, no enum of phases).
    #[derive(Debug, Default)]
    struct Model {
        threshold: u32,
        open_for_ms: u64,
        failures_in_a_row: u32,
        /// When the breaker last opened, if it is open or half-open.
        opened_at: Option<u64>,
        /// When the current probe was let through, if one is under way.
        probe_at: Option<u64>,
    }

    impl Model {
        fn admits(&mut self, now: u64) -> bool {
            match (self.opened_at, self.probe_at) {
                (None, _) => true,
                (Some(opened), None) => {
                    let admit = now >= opened + self.open_for_ms;
                    if admit {
                        self.probe_at = Some(now);
                    }
                    admit
                }
                (Some(_), Some(probe)) => {
                    let admit = now >= probe + self.open_for_ms;
                    if admit {
                        self.probe_at = Some(now);
                    }
                    admit
                }
            }
        }

        fn report(&mut self, succeeded: bool, now: u64) {
            let probing = self.probe_at.is_some();
            let open = self.opened_at.is_some() && !probing;
            if open {
                return;
            }
            if succeeded {
                self.failures_in_a_row = 0;
                self.opened_at = None;
                self.probe_at = None;
            } else if probing {
                self.opened_at = Some(now);
                self.probe_at = None;
            } else {
                self.failures_in_a_row += 1;
                if self.failures_in_a_row >= self.threshold {
                    self.failures_in_a_row = 0;
                    self.opened_at = Some(now);
                }
            }
        }

        fn state(&self, now: u64) -> BreakerState {
            match (self.opened_at, self.probe_at) {
                (None, _) => BreakerState::Closed,
                (Some(opened), None) if now < opened + self.open_for_ms => BreakerState::Open,
                _ => BreakerState::HalfOpen,
            }
        }
    }

    proptest! {
        #[test]
        fn breaker_agrees_with_the_reference_model(
            threshold in 1u32..6,
            open_for_ms in 1u64..12_000,
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let start = Instant::now();
            let mut breaker = CircuitBreaker::new(BreakerConfig {
                failure_threshold: threshold,
                open_for: Duration::from_millis(open_for_ms),
            });
            let mut model = Model { threshold, open_for_ms, ..Model::default() };
            let mut now_ms = 0u64;
            for (index, step) in steps.iter().enumerate() {
                let now = start + Duration::from_millis(now_ms);
                match step {
                    Step::Advance { millis } => now_ms += millis,
                    Step::Call { succeeds } => {
                        let admitted = breaker.admit(now).is_allowed();
                        prop_assert_eq!(admitted, model.admits(now_ms), "admission at step {}", index);
                        if admitted {
                            if *succeeds {
                                breaker.record_success(now);
                            } else {
                                breaker.record_failure(now);
                            }
                            model.report(*succeeds, now_ms);
                        }
                    }
                    Step::Abandoned => {
                        let admitted = breaker.admit(now).is_allowed();
                        prop_assert_eq!(admitted, model.admits(now_ms), "admission at step {}", index);
                    }
                }
                let now = start + Duration::from_millis(now_ms);
                prop_assert_eq!(breaker.state(now), model.state(now_ms), "state after step {}", index);
            }
        }
    }
}
