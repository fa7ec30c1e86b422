//! A checkpoint's state as the merge of its changes, and how it is split among restored workers.
//!
//! [`StateImage`] applies changes in order (a later value of a key replaces an earlier one, a
//! tombstone deletes it): what the store's runs hold, merged, in memory. Tests and benchmarks use
//! it; the job streams the store's merged entries straight into a [`RestorePlan`] instead.
//!
//! [`RestorePlan`] deals entries out to `W` workers by placement: a keyed entry to the worker owning
//! its key group, a broadcast entry to every worker (shared, not copied). It also reads, on the
//! way, what the job needs before it builds the dataflow: where every source partition stood and
//! the watermark.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::CheckpointError;
use super::changes::{Change, Entry, Placement, decode, parse_key};
use super::snapshot::{INGEST_STATE, IngestKey, PartitionCheckpoint};
use crate::time::Watermark;

/// Operator name → `(key group, key, value)` of the keyed entries one worker restores.
type KeyedEntries = BTreeMap<String, Vec<(u16, Vec<u8>, Vec<u8>)>>;
/// Operator name → `(key, value)` of the broadcast entries every worker restores.
type BroadcastEntries = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// The entries one worker restores, by operator.
#[derive(Clone, Debug, Default)]
pub struct WorkerRestore {
    keyed: KeyedEntries,
    broadcast: Arc<BroadcastEntries>,
    taken: BTreeSet<String>,
    worker: usize,
    workers: usize,
}

/// One operator's restored entries on one worker.
#[derive(Debug)]
pub struct RestoredEntries {
    keyed: Vec<(u16, Vec<u8>, Vec<u8>)>,
    broadcast: Arc<BroadcastEntries>,
    operator: String,
    worker: usize,
    workers: usize,
}

impl RestoredEntries {
    /// Calls `apply` with every entry: broadcast ones first, then keyed ones.
    pub fn for_each(
        &self,
        mut apply: impl FnMut(Entry<'_>) -> Result<(), CheckpointError>,
    ) -> Result<(), CheckpointError> {
        for (key, value) in self.broadcast.get(&self.operator).into_iter().flatten() {
            apply(Entry {
                placement: Placement::Broadcast,
                key,
                value,
                worker: self.worker,
                workers: self.workers,
            })?;
        }
        for (group, key, value) in &self.keyed {
            apply(Entry {
                placement: Placement::Keyed(*group),
                key,
                value,
                worker: self.worker,
                workers: self.workers,
            })?;
        }
        Ok(())
    }
}

impl WorkerRestore {
    /// Hands over the entries of `operator` (once); `None` if the checkpoint holds none.
    pub fn take(&mut self, operator: &str) -> Option<RestoredEntries> {
        let keyed = self.keyed.remove(operator);
        let has_broadcast = self.broadcast.contains_key(operator) && !self.taken.contains(operator);
        if keyed.is_none() && !has_broadcast {
            return None;
        }
        self.taken.insert(operator.to_string());
        Some(RestoredEntries {
            keyed: keyed.unwrap_or_default(),
            broadcast: if has_broadcast {
                Arc::clone(&self.broadcast)
            } else {
                Arc::default()
            },
            operator: operator.to_string(),
            worker: self.worker,
            workers: self.workers,
        })
    }

    /// The operators whose entries nobody took yet.
    pub fn operators(&self) -> Vec<String> {
        self.keyed
            .keys()
            .chain(
                self.broadcast
                    .keys()
                    .filter(|name| !self.taken.contains(*name)),
            )
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Whether nothing is restored here.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.broadcast.is_empty()
    }
}

/// What a restore needs before the dataflow is built, besides the operators' entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredSources {
    /// Where every source partition stood, by name.
    pub partitions: BTreeMap<String, PartitionCheckpoint>,
    /// The job watermark when the checkpoint was taken.
    pub watermark: Option<Watermark>,
}

/// Deals a checkpoint's entries out to the workers of a run.
#[derive(Debug)]
pub struct RestorePlan {
    workers: Vec<KeyedEntries>,
    broadcast: BroadcastEntries,
    sources: RestoredSources,
    entries: u64,
    bytes: u64,
}

/// A checkpoint dealt out to workers.
#[derive(Debug, Default)]
pub struct Restore {
    /// Each worker's entries.
    pub workers: Vec<WorkerRestore>,
    /// Source positions and the watermark.
    pub sources: RestoredSources,
    /// Entries restored.
    pub entries: u64,
    /// Their bytes (keys and values).
    pub bytes: u64,
}

impl RestorePlan {
    /// A plan for `workers` workers.
    pub fn new(workers: usize) -> Self {
        RestorePlan {
            workers: (0..workers.max(1)).map(|_| BTreeMap::new()).collect(),
            broadcast: BTreeMap::new(),
            sources: RestoredSources::default(),
            entries: 0,
            bytes: 0,
        }
    }

    /// Adds one live entry (the latest value of a stored key).
    pub fn add(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), CheckpointError> {
        let (operator, placement, own_key) = parse_key(&key).ok_or_else(|| {
            CheckpointError::Decode(format!(
                "a stored key of {} bytes names no operator",
                key.len()
            ))
        })?;
        self.entries += 1;
        self.bytes += (key.len() + value.len()) as u64;
        if operator == INGEST_STATE {
            match decode::<IngestKey>(own_key)? {
                IngestKey::Partition(name) => {
                    let saved: PartitionCheckpoint = decode(&value)?;
                    self.sources.partitions.insert(name, saved);
                }
                IngestKey::Watermark { .. } => {
                    let saved: Watermark = decode(&value)?;
                    self.sources.watermark = self.sources.watermark.max(Some(saved));
                }
            }
        }
        let own_key = own_key.to_vec();
        // Millions of entries name a handful of operators: the name is allocated once.
        fn push_to<T>(lists: &mut BTreeMap<String, Vec<T>>, operator: &str, item: T) {
            match lists.get_mut(operator) {
                Some(list) => list.push(item),
                None => {
                    lists.insert(operator.to_string(), vec![item]);
                }
            }
        }
        match placement {
            Placement::Keyed(group) => {
                let worker = usize::from(group) % self.workers.len();
                push_to(&mut self.workers[worker], operator, (group, own_key, value));
            }
            Placement::Broadcast => push_to(&mut self.broadcast, operator, (own_key, value)),
        }
        Ok(())
    }

    /// The entries of each worker, and what was read about the sources.
    pub fn finish(self) -> Restore {
        let broadcast = Arc::new(self.broadcast);
        let workers = self.workers.len();
        Restore {
            workers: self
                .workers
                .into_iter()
                .enumerate()
                .map(|(worker, keyed)| WorkerRestore {
                    keyed,
                    broadcast: Arc::clone(&broadcast),
                    taken: BTreeSet::new(),
                    worker,
                    workers,
                })
                .collect(),
            sources: self.sources,
            entries: self.entries,
            bytes: self.bytes,
        }
    }
}

/// Changes merged in memory: the state they add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateImage {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl StateImage {
    /// Applies `changes` in order.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            match change.value {
                Some(value) => {
                    self.entries.insert(change.key, value);
                }
                None => {
                    self.entries.remove(&change.key);
                }
            }
        }
    }

    /// The live entries: stored key and value.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_slice(), value.as_slice()))
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of keys and values.
    pub fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|(key, value)| (key.len() + value.len()) as u64)
            .sum()
    }

    /// Bytes per operator.
    pub fn bytes_by_operator(&self) -> BTreeMap<String, u64> {
        let mut sizes = BTreeMap::new();
        for (key, value) in &self.entries {
            let operator = parse_key(key).map_or("?", |(operator, _, _)| operator);
            *sizes.entry(operator.to_string()).or_default() += (key.len() + value.len()) as u64;
        }
        sizes
    }

    /// Deals the state out to `workers` workers.
    pub fn split(&self, workers: usize) -> Result<Restore, CheckpointError> {
        let mut plan = RestorePlan::new(workers);
        for (key, value) in &self.entries {
            plan.add(key.clone(), value.clone())?;
        }
        Ok(plan.finish())
    }
}
