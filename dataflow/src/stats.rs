//! Counters the dataflow keeps as it runs, shared with the binary's metrics and replay summary.
//!
//! Plain relaxed atomics: operators add to them on their hot paths without coordination, and readers
//! take a consistent-enough snapshot with [`JobStats::snapshot`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::event::Reason;

/// Live counters of one job (all workers of a process add to the same instance).
#[derive(Debug, Default)]
pub struct JobStats {
    /// Records read from sources (blank lines excluded).
    pub records_in: AtomicU64,
    /// Empty or whitespace-only lines skipped.
    pub blank_lines: AtomicU64,
    /// Records that passed validation (late and duplicate ones included).
    pub valid: AtomicU64,
    /// Valid, on-time events that were not duplicates.
    pub accepted: AtomicU64,
    /// Duplicate beacons dropped.
    pub duplicates: AtomicU64,
    /// Dead letters by reason, indexed like [`Reason::ALL`].
    pub dead_letters: [AtomicU64; Reason::ALL.len()],
    /// The job watermark in ms (0 until there is one).
    pub watermark_ms: AtomicU64,
    /// When the job watermark reached each value (wall clock), recorded with `watermark_ms`.
    pub watermark_arrivals: crate::watermark_arrivals::WatermarkArrivals,
    /// Sessions currently open.
    pub open_sessions: AtomicU64,
    /// Feature records emitted.
    pub features: AtomicU64,
    /// The size of each operator's state on each worker, as last reported.
    pub state_sizes: StateSizes,
    /// The first source failure no retry can fix (see [`JobStats::fail_source`]).
    source_failure: Mutex<Option<String>>,
}

impl JobStats {
    /// Records that a partition cannot be read and no retry will help (a missing stream, access
    /// denied, a file gone): the job cannot produce correct results and must stop. The first
    /// failure is kept.
    pub fn fail_source(&self, message: String) {
        let mut failure = self
            .source_failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        failure.get_or_insert(message);
    }

    /// The first source failure, if a partition failed for good.
    pub fn source_failure(&self) -> Option<String> {
        self.source_failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }
}

/// The size of each operator's state on each worker: workers report theirs every few seconds
/// ([`StateSizes::report`]), metrics and benchmarks read the totals ([`StateSizes::totals`]).
#[derive(Debug, Default)]
pub struct StateSizes {
    by_worker: Mutex<BTreeMap<usize, BTreeMap<String, crate::checkpoint::StateSize>>>,
}

impl StateSizes {
    /// Replaces what `worker` reported before.
    pub fn report(&self, worker: usize, sizes: BTreeMap<String, crate::checkpoint::StateSize>) {
        self.by_worker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(worker, sizes);
    }

    /// Each operator's state summed over the workers, plus `interned` (the portal and article
    /// table every worker shares).
    pub fn totals(&self) -> BTreeMap<String, crate::checkpoint::StateSize> {
        let mut totals: BTreeMap<String, crate::checkpoint::StateSize> = BTreeMap::new();
        for sizes in self
            .by_worker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .values()
        {
            for (operator, size) in sizes {
                *totals.entry(operator.clone()).or_default() += *size;
            }
        }
        let interned = crate::intern::stats();
        totals.insert(
            "interned".to_string(),
            crate::checkpoint::StateSize {
                bytes: interned.bytes,
                entries: interned.articles + interned.portals,
            },
        );
        totals
    }
}

/// A point-in-time copy of [`JobStats`], as written to `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Records read (blank lines excluded).
    pub records: u64,
    /// Blank lines skipped.
    pub blank_lines: u64,
    /// Valid records (late and duplicates included).
    pub valid: u64,
    /// Invalid records by reason code (late excluded).
    pub invalid: BTreeMap<String, u64>,
    /// Late events.
    pub late: u64,
    /// Duplicate beacons.
    pub duplicates: u64,
    /// Counted events.
    pub accepted: u64,
    /// Feature records emitted.
    pub features: u64,
}

impl JobStats {
    /// Counts one dead letter.
    pub fn dead_letter(&self, reason: Reason) {
        if let Some(index) = Reason::ALL.iter().position(|r| *r == reason) {
            self.dead_letters[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Dead letters so far for `reason`.
    pub fn dead_letters_for(&self, reason: Reason) -> u64 {
        Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |index| self.dead_letters[index].load(Ordering::Relaxed))
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let invalid = Reason::ALL
            .iter()
            .filter(|reason| **reason != Reason::Late)
            .map(|reason| (reason.code().to_string(), self.dead_letters_for(*reason)))
            .filter(|(_, count)| *count > 0)
            .collect();
        StatsSnapshot {
            records: load(&self.records_in),
            blank_lines: load(&self.blank_lines),
            valid: load(&self.valid),
            invalid,
            late: self.dead_letters_for(Reason::Late),
            duplicates: load(&self.duplicates),
            accepted: load(&self.accepted),
            features: load(&self.features),
        }
    }
}
