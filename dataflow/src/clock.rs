//! Processing time: the one [`Clock`] every part of pageflow reads, and [`unix_now_ms`].
//!
//! The dataflow computes on event time (`ts`, see [`crate::time`]); processing time is what the
//! machine's clock says now. It is read for two different needs, and a [`Clock`] answers both:
//!
//! - **A timestamp** ([`Clock::unix_now_ms`]): milliseconds since the Unix epoch, as stored in
//!   manifests and lock files, compared with `ts`, or used to pace synthetic traffic. The system's
//!   wall clock may jump (NTP); nothing that measures an interval should use it.
//! - **An interval** ([`Clock::now`]): the time since the clock's origin, never going back. Rate
//!   limits and cool-downs measure with it.
//!
//! Code that can be tested takes an `Arc<dyn Clock>` (or a `Box`): [`SystemClock`] in the job,
//! [`ManualClock`] in tests, which moves only when told to, so no test sleeps to let time pass.
//! Code with nothing to test about time calls [`unix_now_ms`] directly.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch, from the system's wall clock (0 if the clock is set
/// before 1970, `u64::MAX` after the year 584 million).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A source of processing time, injectable so that tests control it.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, as the time since the clock's origin; never goes back. For measuring intervals.
    fn now(&self) -> Duration;
    /// Now, in milliseconds since the Unix epoch. For timestamps.
    fn unix_now_ms(&self) -> u64;
}

/// The system's clocks: [`Instant`] for intervals, [`SystemTime`] for timestamps.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock (all values share one origin for [`Clock::now`]: the first use in the
    /// process).
    pub fn new() -> Self {
        SystemClock
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }

    fn unix_now_ms(&self) -> u64 {
        unix_now_ms()
    }
}

/// A clock that moves only when told to (tests). Clones share the time, so a test keeps one and
/// hands the other to the code under test. Its origin is the Unix epoch: [`Clock::now`] is the
/// time since 1970 and [`Clock::unix_now_ms`] the same in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    /// Nanoseconds since the Unix epoch (enough until the year 2554).
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `unix_ms` (milliseconds since the Unix epoch).
    pub fn new(unix_ms: u64) -> Self {
        let clock = ManualClock::default();
        clock.set(unix_ms);
        clock
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // An Err only says the closure declined, which it never does.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(nanos))
            });
    }

    /// Sets the clock to `unix_ms` (milliseconds since the Unix epoch), forward or back.
    pub fn set(&self, unix_ms: u64) {
        self.nanos
            .store(unix_ms.saturating_mul(1_000_000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn unix_now_ms(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst) / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_share_the_time() {
        let clock = ManualClock::new(1_700_000_000_000);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        assert_eq!(shared.unix_now_ms(), 1_700_000_000_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(shared.unix_now_ms(), 1_700_000_001_500);
        assert_eq!(shared.now(), Duration::from_millis(1_700_000_001_500));
        clock.set(5);
        assert_eq!(shared.unix_now_ms(), 5);
    }

    #[test]
    fn the_system_clock_agrees_with_the_free_function_and_never_goes_back() {
        let clock = SystemClock::new();
        let before = unix_now_ms();
        let read = clock.unix_now_ms();
        assert!(before <= read && read <= unix_now_ms());
        // 2020-09-13: a clock reading before that is not the system's wall clock.
        assert!(read > 1_600_000_000_000);
        let first = clock.now();
        assert!(SystemClock::new().now() >= first);
    }
}
