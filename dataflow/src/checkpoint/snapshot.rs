//! What one worker hands over at a checkpoint, and the entries that describe the sources.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CheckpointError;
use super::changes::{Change, DeferredPart};
use super::state_size::StateSize;

/// The name under which ingest saves source positions and the watermark.
pub const INGEST_STATE: &str = "ingest";

/// One worker's part of a checkpoint.
#[derive(Debug)]
pub struct WorkerSnapshot {
    /// The worker that saved it.
    pub worker: usize,
    /// How many workers the run has.
    pub workers: usize,
    /// Everything that changed in its operators since its previous part (encoded during the
    /// pause).
    pub changes: Vec<Change>,
    /// Changes copied out during the pause, encoded later ([`WorkerSnapshot::encode_deferred`]).
    pub deferred: Vec<DeferredPart>,
    /// The size of each operator's state when it was saved.
    pub sizes: BTreeMap<String, StateSize>,
}

impl WorkerSnapshot {
    /// Encodes the deferred changes into `changes` (after the direct ones: see
    /// [`super::changes::DeferredChanges`]).
    pub fn encode_deferred(&mut self) -> Result<(), CheckpointError> {
        for part in std::mem::take(&mut self.deferred) {
            part.encode_into(&mut self.changes)?;
        }
        Ok(())
    }

    /// Bytes of the encoded changes (keys and values).
    pub fn changed_bytes(&self) -> u64 {
        self.changes
            .iter()
            .map(|change| (change.key.len() + change.value.as_ref().map_or(0, Vec::len)) as u64)
            .sum()
    }

    /// Changed bytes by operator.
    pub fn changed_bytes_by_operator(&self) -> BTreeMap<String, u64> {
        let mut bytes = BTreeMap::new();
        for change in &self.changes {
            let operator =
                super::changes::parse_key(&change.key).map_or("?", |(operator, _, _)| operator);
            *bytes.entry(operator.to_string()).or_default() +=
                (change.key.len() + change.value.as_ref().map_or(0, Vec::len)) as u64;
        }
        bytes
    }
}

/// Where one source partition stood.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    /// The partition's name (`file:…`, `kinesis:<stream>/<shard>`, `synthetic:…`).
    pub partition: String,
    /// The position of the last record ingested from it (its `SourcePosition::position`); the
    /// partition resumes after it. `None` if nothing was read yet.
    pub position: Option<String>,
    /// The largest `ts` of its valid records (its watermark's basis).
    pub max_ts: Option<u64>,
    /// The partition had ended: it is not read again (a closed shard's children may start).
    pub finished: bool,
}

/// The keys of ingest's entries (all broadcast: partitions are placed by the job, not by a route).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IngestKey {
    /// A partition's position ([`PartitionCheckpoint`]), by partition name.
    Partition(String),
    /// The job watermark as one worker of one run saw it (a `Watermark`); a restore takes the
    /// largest.
    Watermark {
        /// The run that wrote it.
        run: u64,
        /// The worker.
        worker: usize,
    },
}
