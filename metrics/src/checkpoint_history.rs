//! The last checkpoints, one record each, for an operator to see at a glance what Flink's
//! checkpoint history tab shows: when each was taken, how much it wrote, how long it took and how
//! long the dataflow stood still for it, and whether it was committed.
//!
//! The checkpoint writer records each outcome ([`CheckpointHistory::record`]); the serving layer
//! reads the list ([`CheckpointHistory::recent`]). Only the last [`CheckpointHistory::capacity`]
//! are kept: the Prometheus figures cover the whole run.

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many checkpoints a history keeps unless told otherwise.
pub const DEFAULT_CHECKPOINT_HISTORY: usize = 50;

/// One checkpoint, committed or not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointRecord {
    /// Its id.
    pub id: u64,
    /// When it ended (committed or failed), ms since the epoch.
    pub at_ms: u64,
    /// Bytes it wrote (what changed since the one before); 0 when it failed.
    pub bytes_written: u64,
    /// Bytes of every run its state is made of (base and deltas); 0 when it failed.
    pub total_bytes: u64,
    /// From request to commit (pause, sink flush, write), ms.
    pub duration_ms: u64,
    /// The longest any worker's dataflow stood still for it, ms.
    pub pause_ms: u64,
    /// Committed, or why not.
    pub outcome: CheckpointOutcome,
}

/// Whether a checkpoint was committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// Its manifest is written: a restart may resume from it.
    #[default]
    Completed,
    /// It was not written, for this reason; the job tried again at the next interval.
    Failed(String),
}

/// The last checkpoints, oldest first. Share it as `Arc<CheckpointHistory>`.
#[derive(Debug)]
pub struct CheckpointHistory {
    capacity: usize,
    records: Mutex<VecDeque<CheckpointRecord>>,
}

impl Default for CheckpointHistory {
    fn default() -> Self {
        CheckpointHistory::new(DEFAULT_CHECKPOINT_HISTORY)
    }
}

impl CheckpointHistory {
    /// A history of the last `capacity` checkpoints (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        CheckpointHistory {
            capacity,
            records: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// How many checkpoints it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a checkpoint's outcome, forgetting the oldest when full.
    pub fn record(&self, record: CheckpointRecord) {
        let mut records = self.lock();
        if records.len() == self.capacity {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The checkpoints kept, oldest first.
    pub fn recent(&self) -> Vec<CheckpointRecord> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<CheckpointRecord>> {
        // A poisoned lock only means a writer panicked between two whole records.
        self.records
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(id: u64) -> CheckpointRecord {
        CheckpointRecord {
            id,
            at_ms: 1_000 * id,
            ..CheckpointRecord::default()
        }
    }

    #[test]
    fn keeps_the_last_n_oldest_first() {
        let history = CheckpointHistory::new(3);
        assert!(history.recent().is_empty());
        history.record(completed(1));
        history.record(completed(2));
        assert_eq!(
            history.recent().iter().map(|r| r.id).collect::<Vec<_>>(),
            [1, 2]
        );
        for id in 3..=7 {
            history.record(completed(id));
        }
        assert_eq!(
            history.recent().iter().map(|r| r.id).collect::<Vec<_>>(),
            [5, 6, 7]
        );
    }

    #[test]
    fn failures_are_kept_with_their_reason() {
        let history = CheckpointHistory::new(0);
        assert_eq!(history.capacity(), 1, "at least one is kept");
        history.record(CheckpointRecord {
            outcome: CheckpointOutcome::Failed("disk full".into()),
            ..completed(4)
        });
        assert_eq!(
            history.recent()[0].outcome,
            CheckpointOutcome::Failed("disk full".into())
        );
    }
}
