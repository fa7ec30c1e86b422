//! The seam between the dataflow and the outside world on the way in.
//!
//! A [`RecordSource`] is one *partition* (a file, a Kinesis shard, a synthetic stream): an ordered
//! sequence of raw records with positions. The ingest operator polls it, validates the records and
//! tracks the partition's watermark. Implementations live in `pageflow-connectors`; this crate only
//! defines the contract, so it stays free of I/O.

use crate::event::RawRecord;

/// What a poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    /// Records may have been appended; poll again soon.
    Ready,
    /// Nothing available right now (a live source that is caught up); poll again later.
    Pending,
    /// The partition has ended: nothing more will ever come (end of a file).
    Finished,
}

/// A failure to read from a source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What went wrong and what to do.
    pub message: String,
    /// Whether trying again may help (throttling, a dropped connection) or not (a missing file).
    pub retryable: bool,
}

/// The partitions each worker thread reads: index `w` holds worker `w`'s sources.
pub type SourcesByWorker = Vec<Vec<Box<dyn RecordSource>>>;

/// Partitions that appear while the job runs: Kinesis shards found by discovery, the children of
/// a shard that was split or merged once their parents are fully read.
///
/// The ingest operator asks its worker's feed for new partitions on every activation and reads
/// them like the ones it started with. While a feed is open, the worker has an opinion on the
/// watermark only through the partitions it holds; with none it is idle (it never lets the
/// watermark run to +∞ because a partition might still come).
pub trait PartitionFeed: Send {
    /// Appends the partitions assigned to this worker since the last call.
    fn poll_new(&mut self, out: &mut Vec<Box<dyn RecordSource>>);

    /// Whether no partition will ever be added again.
    fn is_closed(&self) -> bool;

    /// Whether the source is still finding its partitions for the first time (a Kinesis consumer
    /// that has not listed every stream yet). Meanwhile the worker holds the watermark back, as a
    /// partition with no watermark would: the events of a stream listed a moment later than the
    /// others are not late because of that (for at most the idle timeout, as any silent
    /// partition). Read it *before* [`PartitionFeed::poll_new`]: once it says `false`, every
    /// partition of the first discovery has been handed over.
    fn is_discovering(&self) -> bool {
        false
    }
}

/// What one worker reads: the partitions known at start and, for live sources, a feed of more.
#[derive(Default)]
pub struct WorkerSources {
    /// Partitions known when the job starts.
    pub partitions: Vec<Box<dyn RecordSource>>,
    /// Partitions added later, if the source has any.
    pub feed: Option<Box<dyn PartitionFeed>>,
}

impl WorkerSources {
    /// A worker's inputs: `partitions` now, and whatever `feed` adds later.
    pub fn new(
        partitions: Vec<Box<dyn RecordSource>>,
        feed: Option<Box<dyn PartitionFeed>>,
    ) -> Self {
        WorkerSources { partitions, feed }
    }

    /// The worker's opinion on the watermark before it has read anything: a worker with nothing to
    /// read and nothing to come is finished (it must not hold back a watermark it knows nothing
    /// about); one that waits for partitions is idle; one with partitions has no watermark yet.
    pub fn initial_opinion(&self) -> crate::time::Opinion {
        use crate::time::Opinion;
        if !self.partitions.is_empty() {
            Opinion::Undefined
        } else if self.feed.as_ref().is_some_and(|feed| !feed.is_closed()) {
            Opinion::Idle
        } else {
            Opinion::Finished
        }
    }
}

impl From<Vec<Box<dyn RecordSource>>> for WorkerSources {
    fn from(partitions: Vec<Box<dyn RecordSource>>) -> Self {
        WorkerSources {
            partitions,
            feed: None,
        }
    }
}

impl std::fmt::Debug for WorkerSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSources")
            .field("partitions", &self.partitions)
            .field("feed", &self.feed.as_ref().map(|feed| feed.is_closed()))
            .finish()
    }
}

/// One partition of input, read in order.
pub trait RecordSource: Send {
    /// The partition's stable name, e.g. `file:events.jsonl` (used in dead letters and metrics).
    fn name(&self) -> &str;

    /// Appends up to `max` records to `out` and says whether more may follow.
    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError>;

    /// Empty or whitespace-only lines skipped so far (files only: there is no record to dead-letter).
    fn blank_lines(&self) -> u64 {
        0
    }

    /// Whether only event time moves this partition's watermark (replays): idleness never applies.
    fn is_replay(&self) -> bool {
        false
    }

    /// How far behind the newest record its source holds this partition is read, in ms (a
    /// Kinesis shard's `MillisBehindLatest`); `None` when the source cannot tell. Reported with
    /// the partition's watermark, so that every process of a cluster knows the whole job's lag.
    fn lag_ms(&self) -> Option<u64> {
        None
    }

    /// Once this partition has finished: the partitions that continue it (a Kinesis shard's
    /// children after a reshard), which may reach a worker only later. Until a worker takes each
    /// up, the job watermark waits for it at this partition's watermark (see
    /// [`crate::time::WatermarkBoard::expect`]): otherwise, in the gap, the watermark could run
    /// ahead to the other partitions' and make the children's first records late.
    fn successors(&self) -> Vec<String> {
        Vec::new()
    }
}

impl std::fmt::Debug for dyn RecordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSource")
            .field("name", &self.name())
            .finish()
    }
}

/// A source over records held in memory: for tests and doc examples.
#[derive(Debug)]
pub struct VecSource {
    name: String,
    records: std::collections::VecDeque<RawRecord>,
}

impl VecSource {
    /// A partition named `name` whose records are `lines`, positioned by 1-based line number.
    pub fn from_lines<I, L>(name: &str, lines: I) -> Self
    where
        I: IntoIterator<Item = L>,
        L: Into<Vec<u8>>,
    {
        let records = lines
            .into_iter()
            .enumerate()
            .map(|(index, line)| RawRecord {
                position: crate::event::SourcePosition {
                    partition: name.to_string(),
                    position: (index + 1).to_string(),
                },
                bytes: line.into(),
                corrupt: None,
            })
            .collect();
        VecSource {
            name: name.to_string(),
            records,
        }
    }
}

impl RecordSource for VecSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError> {
        for _ in 0..max {
            match self.records.pop_front() {
                Some(record) => out.push(record),
                None => return Ok(PollStatus::Finished),
            }
        }
        Ok(if self.records.is_empty() {
            PollStatus::Finished
        } else {
            PollStatus::Ready
        })
    }

    fn is_replay(&self) -> bool {
        true
    }
}
