//! [`JobView`]: where the operator's view (`GET /v1/job`, see [`crate::routes::job`]) reads from,
//! and the answer it builds: the dataflow's monitor, the checkpoint history and the watermark
//! board, shared with the running job.

use std::sync::{Arc, OnceLock};

use pageflow_dataflow::monitor::{DataflowMonitor, EdgeStats, OperatorStats};
use pageflow_dataflow::time::{BoardView, Watermark};
use pageflow_metrics::checkpoint_history::{CheckpointHistory, CheckpointOutcome};
use serde::Serialize;

/// Where `GET /v1/job` reads from: the dataflow's monitor, the checkpoint history and the
/// watermark board. The job creates it before it starts serving, hands the monitor to its workers
/// and the history to its checkpoint writer, and shows the board once it has one.
#[derive(Debug, Default)]
pub struct JobView {
    monitor: Arc<DataflowMonitor>,
    checkpoints: Arc<CheckpointHistory>,
    board: OnceLock<BoardView>,
}

impl JobView {
    /// The monitor the workers attach to (see [`DataflowMonitor::attach`]).
    pub fn monitor(&self) -> &Arc<DataflowMonitor> {
        &self.monitor
    }

    /// The history the checkpoint writer records into.
    pub fn checkpoints(&self) -> &Arc<CheckpointHistory> {
        &self.checkpoints
    }

    /// Shows the partitions and the job watermark of `board` from now on (the first board
    /// given stays): a worker's replica, read-only.
    pub fn watch_board(&self, board: BoardView) {
        let _ = self.board.set(board);
    }

    /// How far behind the tip of its sources the whole job reads: the largest lag any partition
    /// still being read reports (Kinesis `MillisBehindLatest`), whichever process reads it, as
    /// the board has heard; `None` when no partition reports one.
    pub fn lag_ms(&self) -> Option<u64> {
        self.board
            .get()?
            .partitions()
            .values()
            .filter(|report| !report.finished)
            .filter_map(|report| report.lag_ms)
            .max()
    }

    /// The answer of `GET /v1/job` at `now_ms`.
    pub fn answer(&self, now_ms: u64) -> JobAnswer {
        let graph = self.monitor.snapshot();
        let checkpoints = self
            .checkpoints
            .recent()
            .into_iter()
            .rev()
            .map(|record| {
                let (outcome, error) = match record.outcome {
                    CheckpointOutcome::Completed => ("completed", None),
                    CheckpointOutcome::Failed(error) => ("failed", Some(error)),
                };
                CheckpointEntry {
                    id: record.id,
                    at_ms: record.at_ms,
                    bytes_written: record.bytes_written,
                    total_bytes: record.total_bytes,
                    duration_ms: record.duration_ms,
                    pause_ms: record.pause_ms,
                    outcome,
                    error,
                }
            })
            .collect();
        let (job_watermark, partitions) = match self.board.get() {
            Some(board) => (board.watermark(), board.partitions()),
            None => (Watermark::MinusInfinity, Default::default()),
        };
        let partitions = partitions
            .into_iter()
            .map(|(partition, report)| PartitionEntry {
                partition,
                watermark_ms: report.watermark_ms,
                ahead_of_job_ms: match (report.watermark_ms, report.job_watermark_ms) {
                    (Some(own), Some(job)) => {
                        Some(pageflow_dataflow::time::signed_difference_ms(own, job))
                    }
                    _ => None,
                },
                idle: report.idle,
                finished: report.finished,
            })
            .collect();
        JobAnswer {
            now_ms,
            watermark: JobWatermark {
                ms: job_watermark.ms(),
                input_ended: job_watermark == Watermark::PlusInfinity,
            },
            operators: graph.operators,
            edges: graph.edges,
            checkpoints,
            partitions,
        }
    }
}

/// The answer of `GET /v1/job`; the module docs describe each field.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobAnswer {
    /// The wall clock the figures were taken at, ms since the epoch.
    pub now_ms: u64,
    /// The job watermark.
    pub watermark: JobWatermark,
    /// The job's operators, in topological order.
    pub operators: Vec<OperatorStats>,
    /// The records between them.
    pub edges: Vec<EdgeStats>,
    /// The last checkpoints, newest first.
    pub checkpoints: Vec<CheckpointEntry>,
    /// The source partitions, by name.
    pub partitions: Vec<PartitionEntry>,
}

/// The job watermark.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobWatermark {
    /// ms since the epoch; `None` before the first and after the input ended.
    pub ms: Option<u64>,
    /// A bounded input was read to its end (the watermark is +∞).
    pub input_ended: bool,
}

/// One checkpoint of the history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointEntry {
    /// Its id.
    pub id: u64,
    /// When it ended, ms since the epoch.
    pub at_ms: u64,
    /// Bytes it wrote.
    pub bytes_written: u64,
    /// Bytes of every run its state is made of.
    pub total_bytes: u64,
    /// From request to commit, ms.
    pub duration_ms: u64,
    /// The longest pause of a worker's dataflow, ms.
    pub pause_ms: u64,
    /// `completed` or `failed`.
    pub outcome: &'static str,
    /// Why it failed.
    pub error: Option<String>,
}

/// One source partition's event time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionEntry {
    /// Its name (`file:…`, `synthetic:0`, `kinesis:<stream>/<shard>`).
    pub partition: String,
    /// Its watermark, ms since the epoch.
    pub watermark_ms: Option<u64>,
    /// Its watermark minus the job's, ms.
    pub ahead_of_job_ms: Option<i64>,
    /// It has had no record for `idle_timeout`.
    pub idle: bool,
    /// It has ended.
    pub finished: bool,
}
