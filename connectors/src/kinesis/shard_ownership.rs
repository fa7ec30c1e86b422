//! The Kinesis consumer across the processes of a cluster: which process reads which shard, and how
//! a process learns that a shard read by another process is done.
//!
//! A job may run as a timely cluster of `P` processes with `T` workers each, `W = P × T` workers
//! numbered globally (process `p` holds workers `p·T .. (p+1)·T`). Every process runs its own
//! consumer coordinator and lists the shards on its own (`P×` the `ListShards` calls of one
//! process, well within the limit). No message passes between the coordinators:
//!
//! - **Ownership.** A shard belongs to worker `assign_shard(stream, shard, W)`
//!   ([`crate::kinesis::shards::assign_shard`]); only that worker's process starts a reader for it
//!   and hands it to its local feed `owner − p·T` ([`ConsumerPlacement::local_worker`]).
//! - **Remote shards.** A shard another process owns stays in this process's lineage as *remote*:
//!   started (its parents are done), but read elsewhere. It becomes done here when
//!   [`FinishedElsewhere::is_finished`] says so (the job answers from its replicated watermark
//!   board, where each worker's partitions report `finished`, broadcast to every process). Its
//!   children come from this process's own listing, which is taken again whenever a shard ends.
//! - **Restored positions.** A shard the checkpoint saved as finished is done in every process; a
//!   saved position is used only by the owner's process, whichever worker or process read the shard
//!   before the restore.
//!
//! **Why every shard is read exactly once, after all its parents, whichever process lists first.**
//! The owner is a pure function of `(stream, shard, W)`, the same in every process, so exactly one
//! process starts a reader for a shard (and it does so once: its lineage starts each shard once).
//! That process starts the shard only once its own lineage holds every parent done; a parent is done
//! there only when it was read to its end *and its last records were ingested*: by a local
//! partition's report, or by `is_finished`, which is true only after the owner's partition reported
//! the same. "Done" is monotone (a finished partition never becomes unfinished, in the board or in a
//! lineage), so a process that lists late or polls late only starts later, never wrongly. A parent
//! no longer listed (trimmed) holds nothing back in any process, as in one process.
//!
//! **Bounded runs** (`stop_at_latest`) close a process's feeds only when every shard of every stream
//! is done in its lineage, remote shards included, so each process ends only once every shard is
//! done somewhere.

use std::collections::{BTreeSet, HashSet};

use crate::kinesis::consumer::partition_name;
use crate::kinesis::shard_discovery::{ShardInfo, ShardLineage};
use crate::kinesis::shards::assign_shard;

/// Where this process stands in the cluster: which of the workers reading the streams are its own.
///
/// `process` must be below `processes`. One process is [`ConsumerPlacement::single`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerPlacement {
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads per process (the same in every process).
    pub threads: usize,
}

impl ConsumerPlacement {
    /// One process with `workers` workers: every shard is read here.
    pub fn single(workers: usize) -> Self {
        ConsumerPlacement {
            process: 0,
            processes: 1,
            threads: workers,
        }
    }

    /// Workers of the whole cluster (`processes × threads`, at least 1).
    pub fn workers(&self) -> usize {
        self.processes.max(1) * self.threads.max(1)
    }

    /// Workers of this process (at least 1), one feed each.
    pub fn local_workers(&self) -> usize {
        self.threads.max(1)
    }

    /// The local worker (`0..local_workers()`) that reads `shard` of `stream`, or `None` when a
    /// worker of another process owns it.
    pub fn local_worker(&self, stream: &str, shard: &str) -> Option<usize> {
        let owner = assign_shard(stream, shard, self.workers());
        let first = self.process * self.local_workers();
        (first..first + self.local_workers())
            .contains(&owner)
            .then(|| owner - first)
    }
}

/// Tells a process's consumer that a shard read by another process is done: read to its end and its
/// last records ingested there.
///
/// Asked on every tick of the coordinator (and when a listing makes a remote shard startable) for
/// every remote shard not yet known done; once it answers `true` for a partition it must keep doing
/// so (done is monotone).
pub trait FinishedElsewhere: Send + Sync {
    /// Whether the partition `partition` (`kinesis:<portal>/<shard id>`, as
    /// [`crate::kinesis::ShardPartition`] names itself) finished in the process that reads it.
    fn is_finished(&self, partition: &str) -> bool;
}

/// One process: no shard is read elsewhere, so none is ever finished elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct NowhereElse;

impl FinishedElsewhere for NowhereElse {
    fn is_finished(&self, _partition: &str) -> bool {
        false
    }
}

/// One stream's shards as one process of the cluster sees them: the lineage, and the started shards
/// that another process reads.
#[derive(Debug, Default)]
pub(crate) struct ProcessLineage {
    lineage: ShardLineage,
    /// Started shards read by another process, not yet known done.
    remote: BTreeSet<String>,
}

impl ProcessLineage {
    /// Merges a fresh listing (see [`ShardLineage::update`]).
    pub(crate) fn update(&mut self, listing: &[ShardInfo]) {
        self.lineage.update(listing);
    }

    /// A shard read here is done (its partition reported it), with the children its reader saw.
    pub(crate) fn finish(&mut self, shard: &str, children: &[String]) {
        self.lineage.finish(shard, children);
    }

    /// Whether a started shard is read by another process and not yet known done.
    pub(crate) fn waits_elsewhere(&self) -> bool {
        !self.remote.is_empty()
    }

    /// Asks about every remote shard not yet done and marks done those finished elsewhere; true
    /// when any was (the stream should be listed again to learn their children).
    pub(crate) fn poll_elsewhere(
        &mut self,
        portal: &str,
        elsewhere: &dyn FinishedElsewhere,
    ) -> bool {
        let finished: Vec<String> = self
            .remote
            .iter()
            .filter(|shard| elsewhere.is_finished(&partition_name(portal, shard)))
            .cloned()
            .collect();
        for shard in &finished {
            self.remote.remove(shard);
            self.lineage.finish(shard, &[]);
        }
        !finished.is_empty()
    }

    /// Starts every shard whose parents are done, as far as that goes: shards the checkpoint saved
    /// as finished and remote shards already finished elsewhere are done at once (so their children
    /// may start in the same call), other remote shards are remembered, and the shards this process
    /// reads are returned with their local worker, in the order they became ready.
    pub(crate) fn start_ready(
        &mut self,
        portal: &str,
        stream: &str,
        placement: &ConsumerPlacement,
        saved_finished: &HashSet<String>,
        elsewhere: &dyn FinishedElsewhere,
    ) -> Vec<(String, usize)> {
        let mut local = Vec::new();
        loop {
            let ready = self.lineage.start_ready();
            if ready.is_empty() {
                return local;
            }
            for shard in ready {
                let name = partition_name(portal, &shard);
                if saved_finished.contains(&name) {
                    // Read to its end before the checkpoint: done without a reader, in every
                    // process, so its children may start (the next round of this loop).
                    self.lineage.finish(&shard, &[]);
                } else if let Some(worker) = placement.local_worker(stream, &shard) {
                    local.push((shard, worker));
                } else if elsewhere.is_finished(&name) {
                    self.lineage.finish(&shard, &[]);
                } else {
                    self.remote.insert(shard);
                }
            }
        }
    }

    /// Whether every known shard is done, here or elsewhere.
    pub(crate) fn all_done(&self) -> bool {
        self.lineage.all_done()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::kinesis::shard_discovery::tests::shard;

    /// Partitions finished somewhere in the test's cluster.
    #[derive(Default)]
    struct Board(Mutex<BTreeSet<String>>);

    impl FinishedElsewhere for Board {
        fn is_finished(&self, partition: &str) -> bool {
            self.0.lock().unwrap().contains(partition)
        }
    }

    impl Board {
        fn finish(&self, shard: &str) {
            self.0.lock().unwrap().insert(partition_name("g1", shard));
        }
    }

    #[test]
    fn each_shard_has_exactly_one_local_owner_in_the_cluster() {
        let shards: Vec<String> = (0..60).map(|i| format!("shardId-{i:012}")).collect();
        for processes in 1..=3 {
            for threads in 1..=3 {
                let placements: Vec<ConsumerPlacement> = (0..processes)
                    .map(|process| ConsumerPlacement {
                        process,
                        processes,
                        threads,
                    })
                    .collect();
                let mut per_process = vec![0; processes];
                for shard in &shards {
                    let owners: Vec<(usize, usize)> = placements
                        .iter()
                        .filter_map(|p| Some((p.process, p.local_worker("g1", shard)?)))
                        .collect();
                    assert_eq!(
                        owners.len(),
                        1,
                        "{shard} in {processes}×{threads}: {owners:?}"
                    );
                    let (process, local) = owners[0];
                    assert!(local < threads);
                    assert_eq!(
                        process * threads + local,
                        assign_shard("g1", shard, processes * threads),
                        "the owner is the global rendezvous worker"
                    );
                    per_process[process] += 1;
                }
                assert!(
                    per_process.iter().all(|n| *n > 0),
                    "{processes}×{threads}: {per_process:?}"
                );
            }
        }
        let single = ConsumerPlacement::single(4);
        for shard in &shards {
            assert_eq!(
                single.local_worker("g1", shard),
                Some(assign_shard("g1", shard, 4)),
                "one process assigns as before"
            );
        }
    }

    /// Two processes of one thread each, with shard ids chosen so that process 0 owns `parent`
    /// and process 1 owns its child.
    fn split_over_two_processes() -> (ConsumerPlacement, ConsumerPlacement, String, String) {
        let placement = |process| ConsumerPlacement {
            process,
            processes: 2,
            threads: 1,
        };
        let ids: Vec<String> = (0..20).map(|i| format!("shardId-{i:012}")).collect();
        let owner = |id: &String| assign_shard("pageviews", id, 2);
        let parent = ids.iter().find(|id| owner(id) == 0).unwrap().clone();
        let child = ids.iter().find(|id| owner(id) == 1).unwrap().clone();
        (placement(0), placement(1), parent, child)
    }

    #[test]
    fn a_child_of_a_remote_parent_starts_only_once_the_parent_finished_elsewhere() {
        let (zero, one, parent, child) = split_over_two_processes();
        let listing = [shard(&parent, &[]), shard(&child, &[&parent])];
        let board = Board::default();
        let none = HashSet::new();
        let mut reader = ProcessLineage::default();
        let mut waiter = ProcessLineage::default();
        reader.update(&listing);
        waiter.update(&listing);

        let start = |lineage: &mut ProcessLineage, placement| {
            lineage.start_ready("g1", "pageviews", &placement, &none, &board)
        };
        assert_eq!(start(&mut reader, zero), [(parent.clone(), 0)]);
        assert!(
            start(&mut waiter, one).is_empty(),
            "the parent is read elsewhere"
        );
        assert!(waiter.waits_elsewhere());
        assert!(!waiter.poll_elsewhere("g1", &board), "not finished yet");
        assert!(start(&mut waiter, one).is_empty(), "the child waits");
        assert!(!waiter.all_done(), "a bounded run may not end yet");

        // The parent's partition ends in process 0: its lineage frees the child, which process 0
        // does not read; the board tells process 1.
        reader.finish(&parent, std::slice::from_ref(&child));
        assert!(
            start(&mut reader, zero).is_empty(),
            "the child is read elsewhere"
        );
        board.finish(&parent);
        assert!(waiter.poll_elsewhere("g1", &board));
        assert!(!waiter.waits_elsewhere());
        assert_eq!(start(&mut waiter, one), [(child.clone(), 0)]);

        assert!(
            !reader.all_done(),
            "process 0 waits for the child read by process 1"
        );
        waiter.finish(&child, &[]);
        assert!(waiter.all_done());
        board.finish(&child);
        assert!(reader.poll_elsewhere("g1", &board));
        assert!(reader.all_done(), "every shard is done somewhere");
    }

    #[test]
    fn a_late_lister_and_a_restore_skip_what_is_done_elsewhere_or_saved() {
        let (_, one, parent, child) = split_over_two_processes();
        let listing = [shard(&parent, &[]), shard(&child, &[&parent])];
        // The parent finished in process 0 before process 1 listed for the first time.
        let board = Board::default();
        board.finish(&parent);
        let mut late = ProcessLineage::default();
        late.update(&listing);
        let started = late.start_ready("g1", "pageviews", &one, &HashSet::new(), &board);
        assert_eq!(started, [(child.clone(), 0)]);
        assert!(!late.waits_elsewhere());

        // A restore: the checkpoint saved the parent as finished; nobody has reported anything.
        let saved: HashSet<String> = [partition_name("g1", &parent)].into();
        let mut restored = ProcessLineage::default();
        restored.update(&listing);
        let started = restored.start_ready("g1", "pageviews", &one, &saved, &NowhereElse);
        assert_eq!(started, [(child, 0)]);
    }

    /// A reshard history over a cluster: whichever order the processes read in, every shard is
    /// started by exactly one process (its owner's), and only after all its parents were finished
    /// (by whichever process read them).
    #[test]
    fn a_cluster_reads_every_shard_once_after_its_parents() {
        // 0 and 1 merged into 4; 2 split into 5 and 6; 4 and 5 merged into 7; 3 split into 8, 9.
        let infos = [
            shard("0", &[]),
            shard("1", &[]),
            shard("2", &[]),
            shard("3", &[]),
            shard("4", &["0", "1"]),
            shard("5", &["2"]),
            shard("6", &["2"]),
            shard("7", &["4", "5"]),
            shard("8", &["3"]),
            shard("9", &["3"]),
        ];
        let parents: BTreeMap<&str, &[String]> = infos
            .iter()
            .map(|s| (s.shard_id.as_str(), s.parents.as_slice()))
            .collect();
        for (processes, threads) in [(2, 1), (2, 2), (3, 1), (3, 2)] {
            for seed in 0..20u64 {
                let board = Board::default();
                let placements: Vec<ConsumerPlacement> = (0..processes)
                    .map(|process| ConsumerPlacement {
                        process,
                        processes,
                        threads,
                    })
                    .collect();
                let mut lineages: Vec<ProcessLineage> = placements
                    .iter()
                    .map(|_| ProcessLineage::default())
                    .collect();
                let mut reading: Vec<(usize, String)> = Vec::new();
                let mut started: BTreeMap<String, usize> = BTreeMap::new();
                let mut finished: BTreeSet<String> = BTreeSet::new();
                let mut state = seed;
                let mut next = || {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 33) as usize
                };
                for round in 0.. {
                    // After a random phase, every tick lists and ends a shard, until all are done.
                    let settling = round >= 300;
                    assert!(
                        round < 2000,
                        "{processes}×{threads} seed {seed} never settles"
                    );
                    if settling
                        && reading.is_empty()
                        && lineages.iter().all(ProcessLineage::all_done)
                    {
                        break;
                    }
                    // A random process ticks: it lists, polls and starts what it may.
                    let process = next() % processes;
                    let lineage = &mut lineages[process];
                    if settling || next() % 2 == 0 {
                        lineage.update(&infos);
                    }
                    lineage.poll_elsewhere("g1", &board);
                    for (shard, worker) in lineage.start_ready(
                        "g1",
                        "s",
                        &placements[process],
                        &HashSet::new(),
                        &board,
                    ) {
                        assert_eq!(
                            process * threads + worker,
                            assign_shard("s", &shard, processes * threads)
                        );
                        assert!(
                            parents[shard.as_str()].iter().all(|p| finished.contains(p)),
                            "{shard} started before its parents finished"
                        );
                        assert!(
                            started.insert(shard.clone(), process).is_none(),
                            "{shard} twice"
                        );
                        reading.push((process, shard));
                    }
                    // Sometimes a shard being read ends in its process.
                    if !reading.is_empty() && (settling || next() % 3 == 0) {
                        let (process, shard) = reading.remove(next() % reading.len());
                        let children: Vec<String> = parents
                            .iter()
                            .filter(|(_, ps)| ps.contains(&shard))
                            .map(|(id, _)| id.to_string())
                            .collect();
                        lineages[process].finish(&shard, &children);
                        board.finish(&shard);
                        finished.insert(shard);
                    }
                }
                assert_eq!(
                    started.len(),
                    infos.len(),
                    "{processes}×{threads} seed {seed}"
                );
                assert!(lineages.iter().all(ProcessLineage::all_done));
            }
        }
    }
}
