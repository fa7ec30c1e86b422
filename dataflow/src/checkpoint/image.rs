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
    /// The keyed entries of this process's workers, `first ..`.
    workers: Vec<KeyedEntries>,
    /// The job's first worker in this process.
    first: usize,
    /// Every worker of the job, in every process.
    all_workers: usize,
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
    /// A plan for `workers` workers, all in this process.
    pub fn new(workers: usize) -> Self {
        Self::for_process(workers, 0..workers)
    }

    /// A plan for the workers `local` of a job of `all_workers` in several processes: keyed
    /// entries are dealt over every worker of the job, as they were saved, and only this
    /// process's are kept (each process reads the checkpoint and keeps its share); broadcast
    /// entries go to every worker.
    pub fn for_process(all_workers: usize, local: std::ops::Range<usize>) -> Self {
        let all_workers = all_workers.max(1);
        let first = local.start.min(all_workers - 1);
        let count = local.len().clamp(1, all_workers - first);
        RestorePlan {
            first,
            all_workers,
            workers: (0..count).map(|_| BTreeMap::new()).collect(),
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
                let worker = usize::from(group) % self.all_workers;
                // Another process's worker holds it.
                if let Some(local) = worker
                    .checked_sub(self.first)
                    .and_then(|local| self.workers.get_mut(local))
                {
                    push_to(local, operator, (group, own_key, value));
                }
            }
            Placement::Broadcast => push_to(&mut self.broadcast, operator, (own_key, value)),
        }
        Ok(())
    }

    /// The entries of each worker, and what was read about the sources.
    pub fn finish(self) -> Restore {
        let broadcast = Arc::new(self.broadcast);
        let (first, workers) = (self.first, self.all_workers);
        Restore {
            workers: self
                .workers
                .into_iter()
                .enumerate()
                .map(|(local, keyed)| WorkerRestore {
                    keyed,
                    broadcast: Arc::clone(&broadcast),
                    taken: BTreeSet::new(),
                    worker: first + local,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::changes::ChangeWriter;

    /// What `restore` hands each operator's entries to: `(worker, workers, group or none, key)`.
    fn dealt(restore: Restore) -> Vec<(usize, usize, Option<u16>, Vec<u8>)> {
        let mut seen = Vec::new();
        for mut worker in restore.workers {
            if let Some(entries) = worker.take("op") {
                entries
                    .for_each(|entry| {
                        let group = match entry.placement {
                            Placement::Keyed(group) => Some(group),
                            Placement::Broadcast => None,
                        };
                        seen.push((entry.worker, entry.workers, group, entry.key.to_vec()));
                        Ok(())
                    })
                    .unwrap();
            }
        }
        seen.sort();
        seen
    }

    #[test]
    fn each_process_keeps_its_workers_share_of_a_checkpoint_dealt_over_the_whole_job() {
        let mut changes = Vec::new();
        {
            let mut writer = ChangeWriter::new("op", 0, 1, &mut changes);
            for route in 0..64u64 {
                writer
                    .put(
                        Placement::of_route(route),
                        &route,
                        &format!("value {route}"),
                    )
                    .unwrap();
            }
            writer.put(Placement::Broadcast, "every", &1u8).unwrap();
        }
        let plan = |mut plan: RestorePlan| {
            for change in &changes {
                plan.add(change.key.clone(), change.value.clone().unwrap())
                    .unwrap();
            }
            plan.finish()
        };
        // One process of 6 workers, against 3 processes of 2.
        let whole = dealt(plan(RestorePlan::new(6)));
        let mut by_process: Vec<_> = (0..3)
            .flat_map(|process| {
                dealt(plan(RestorePlan::for_process(
                    6,
                    process * 2..process * 2 + 2,
                )))
            })
            .collect();
        by_process.sort();
        assert_eq!(by_process, whole, "the same entries on the same workers");
        assert_eq!(
            whole.iter().filter(|e| e.2.is_none()).count(),
            6,
            "broadcast to all"
        );
        assert!(
            whole.iter().all(|e| e.1 == 6),
            "every worker knows the job has 6"
        );
        let process_1 = dealt(plan(RestorePlan::for_process(6, 2..4)));
        assert!(process_1.iter().all(|e| (2..4).contains(&e.0)));
        assert!(
            process_1.iter().filter(|e| e.2.is_some()).count() < 64,
            "only its share"
        );
    }
}
