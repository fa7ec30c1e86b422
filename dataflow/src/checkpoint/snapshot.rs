//! What a checkpoint holds, and how it is split again for a run with any number of workers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CheckpointError;
use super::entries::{EntryWriter, read_entries};
use crate::time::Watermark;

/// The name under which ingest saves source positions and the watermark.
pub const INGEST_STATE: &str = "ingest";

/// One worker's saved operator state: operator name → entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// The worker that saved it.
    pub worker: usize,
    /// How many workers the run had.
    pub workers: usize,
    /// Operator name → encoded entries (see [`super::entries`]).
    pub operators: BTreeMap<String, Vec<u8>>,
}

impl WorkerSnapshot {
    /// The bytes stored for this worker.
    pub fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        bincode::serialize(self).map_err(|error| CheckpointError::Encode(error.to_string()))
    }

    /// Reads back what [`WorkerSnapshot::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        bincode::deserialize(bytes).map_err(|error| CheckpointError::Decode(error.to_string()))
    }

    /// Bytes of state held, by operator.
    pub fn sizes(&self) -> BTreeMap<String, u64> {
        self.operators
            .iter()
            .map(|(name, bytes)| (name.clone(), bytes.len() as u64))
            .collect()
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

/// What ingest saves: one entry per partition and the job watermark of each worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IngestEntry {
    /// A partition's position.
    Partition(PartitionCheckpoint),
    /// A restored position this worker kept without reading the partition (it belongs to another
    /// worker now, or has not come back yet); a [`IngestEntry::Partition`] of the same name wins.
    Carried(PartitionCheckpoint),
    /// A worker's job watermark.
    Watermark(Watermark),
}

/// The operator state of a whole checkpoint: every worker's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    workers: Vec<WorkerSnapshot>,
}

impl SavedState {
    /// The state of a run, from each of its workers' snapshots (in any order).
    pub fn new(mut workers: Vec<WorkerSnapshot>) -> Result<Self, CheckpointError> {
        workers.sort_by_key(|snapshot| snapshot.worker);
        let count = workers.len();
        for (index, snapshot) in workers.iter().enumerate() {
            if snapshot.worker != index || snapshot.workers != count {
                return Err(CheckpointError::Decode(format!(
                    "the checkpoint's worker parts do not fit together: part {index} says worker {} of {} but there are {count} parts",
                    snapshot.worker, snapshot.workers
                )));
            }
        }
        Ok(SavedState { workers })
    }

    /// Every worker's snapshot, in worker order.
    pub fn snapshots(&self) -> &[WorkerSnapshot] {
        &self.workers
    }

    /// How many workers saved it.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Where every partition stood.
    pub fn partitions(&self) -> Result<Vec<PartitionCheckpoint>, CheckpointError> {
        let mut read = BTreeMap::new();
        let mut carried = BTreeMap::new();
        for entry in self.ingest_entries()? {
            match entry {
                IngestEntry::Partition(partition) => {
                    read.insert(partition.partition.clone(), partition);
                }
                IngestEntry::Carried(partition) => {
                    carried.insert(partition.partition.clone(), partition);
                }
                IngestEntry::Watermark(_) => {}
            }
        }
        for (name, partition) in carried {
            read.entry(name).or_insert(partition);
        }
        Ok(read.into_values().collect())
    }

    /// The job watermark when the checkpoint was taken.
    pub fn watermark(&self) -> Result<Watermark, CheckpointError> {
        let mut watermark = Watermark::MinusInfinity;
        for entry in self.ingest_entries()? {
            if let IngestEntry::Watermark(saved) = entry {
                watermark = watermark.max(saved);
            }
        }
        Ok(watermark)
    }

    fn ingest_entries(&self) -> Result<Vec<IngestEntry>, CheckpointError> {
        let mut entries = Vec::new();
        for snapshot in &self.workers {
            if let Some(bytes) = snapshot.operators.get(INGEST_STATE) {
                for entry in read_entries(bytes) {
                    entries.push(entry?.decode::<IngestEntry>()?);
                }
            }
        }
        Ok(entries)
    }

    /// Splits the state for a run with `workers` workers: for each new worker, operator name →
    /// its entries. Keyed entries go to `route % workers` (where the exchange sends that key's
    /// records); shared entries go to every worker.
    pub fn split(&self, workers: usize) -> Result<Vec<BTreeMap<String, Vec<u8>>>, CheckpointError> {
        let workers = workers.max(1);
        let mut writers: Vec<BTreeMap<String, EntryWriter>> =
            (0..workers).map(|_| BTreeMap::new()).collect();
        for snapshot in &self.workers {
            for (name, bytes) in &snapshot.operators {
                for entry in read_entries(bytes) {
                    let entry = entry?;
                    match entry.route {
                        Some(route) => writers[(route % workers as u64) as usize]
                            .entry(name.clone())
                            .or_default()
                            .copy(&entry),
                        None => {
                            for writer in writers.iter_mut() {
                                writer.entry(name.clone()).or_default().copy(&entry);
                            }
                        }
                    }
                }
            }
        }
        Ok(writers
            .into_iter()
            .map(|operators| {
                operators
                    .into_iter()
                    .map(|(name, writer)| (name, writer.into_bytes()))
                    .collect()
            })
            .collect())
    }
}
