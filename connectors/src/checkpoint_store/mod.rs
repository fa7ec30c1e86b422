//! Checkpoints of the job's state: incremental, as a log-structured merge of immutable sorted runs
//! shared between checkpoints; where they are stored, how they are committed and compacted, and how
//! a restart finds the newest good one.
//!
//! # Stores
//!
//! A [`CheckpointStore`] is a small key-value store of immutable objects: a local directory
//! ([`LocalDirStore`]) or an S3 bucket and prefix ([`S3Store`]). Every write is atomic (a reader
//! sees all of an object or nothing), and a write can be *create-only*: it fails with
//! [`StoreError::AlreadyExists`] instead of replacing an object that is already there (a hard link
//! of a temporary file on a local disk, `If-None-Match: *` on S3). One file per store:
//! `local_dir.rs`, `s3.rs`; the trait in `store.rs`. Only one job may write under a prefix: a
//! local directory is locked ([`crate::dir_lock`]), an S3 prefix is held with a lease
//! ([`S3Lease`], `s3_lease.rs`).
//!
//! # Incremental checkpoints
//!
//! The job's state is a map of opaque keys to values. A checkpoint does not write all of it: the
//! workers hand [`Checkpoints::commit`] only what changed since the previous checkpoint (the
//! *parent*), as [`StateEntry`]s: upserts and tombstones (deleted keys). The commit writes them as
//! one new *run*, an immutable object of entries sorted by key, and a [`Manifest`] that lists the
//! runs whose merge is the state: the parent's runs, in order, and the new one. A key's value is
//! that of its newest entry; a key whose newest entry is a tombstone is absent.
//!
//! Runs are of two kinds ([`RunKind`]): *deltas*, one per checkpoint (what it changed), and the
//! parts of a *base*, all live keys as of some checkpoint, without tombstones, split by a hash of
//! the key into parts (16 by default) so that no one object holds the whole state. A manifest
//! lists at most one base (its parts by part number) followed by the deltas committed since, oldest
//! first.
//!
//! # Layout
//!
//! A checkpoint location holds manifests in one directory per checkpoint and runs in `runs/`,
//! shared by every manifest that lists them:
//!
//! ```text
//! chk-00000000000000000041/MANIFEST.json
//! chk-00000000000000000042/MANIFEST.json
//! runs/00000000000000000040-base-5e1f0c2a9d4b7e13-00000of00016.run   base part 0 of 16, compacting checkpoint 40
//! …
//! runs/00000000000000000040-base-5e1f0c2a9d4b7e13-00015of00016.run
//! runs/00000000000000000041-delta.run                                 what checkpoint 41 changed
//! runs/00000000000000000042-delta.run                                 what checkpoint 42 changed
//! ```
//!
//! Ids are zero-padded to 20 digits so that keys sort like ids. A delta's name is that of the
//! checkpoint that wrote it, so there is one per id; a base part's name carries the checkpoint it
//! compacts, a random 64-bit nonce (two compactions of the same checkpoint, say one by a process
//! that crashed and one by its successor, never write the same key) and its part number. The
//! manifest lists each run with its key, kind, entry count, size and SHA-256, along with the
//! format version, the parent, the number of workers, the fingerprint of the settings the state
//! depends on, and free-form facts for operators.
//!
//! A cluster of processes (format 3) writes one delta per process and checkpoint,
//! `runs/<id>-delta-p<process:04>.run`, each followed by a receipt naming it,
//! `chk-<id>/PART-p<process:04>.json`; one process waits for every receipt of the id and commits
//! a manifest listing the runs of every receipt since its parent ([`Checkpoints::write_part`],
//! [`Checkpoints::commit_parts`]). Each key belongs to one worker, so the deltas of one id never
//! share a key and may be listed side by side.
//!
//! # Run format
//!
//! A run is, byte by byte (varints are unsigned LEB128):
//!
//! ```text
//! "PFRN"                        magic
//! 0x01                          layout version
//! kind                          0x00 delta, 0x01 base part, followed by varint part, varint parts
//! entries, strictly increasing by key (bytewise):
//!   varint key length, key bytes,
//!   0x00 (tombstone) | 0x01 (upsert) followed by varint value length, value bytes
//! entry count                   u64, little-endian
//! "NRFP"                        end magic
//! ```
//!
//! Base parts hold only upserts, and only keys of their part: `FNV-1a-64(key)`, mixed by
//! SplitMix64's finaliser, modulo the number of parts. Every run is checked against its manifest
//! (size, SHA-256, then layout, kind and entry count) before any of its entries is used.
//!
//! # The manifest is the commit point
//!
//! [`Checkpoints::commit`] writes the delta run first and the manifest last, create-only. A
//! checkpoint without a manifest is *torn* (the writer stopped half-way) and never used; once the
//! manifest is there, every run it names was already complete. Create-only writes also mean that a
//! second writer of the same id fails ([`CheckpointError::Conflict`]) instead of mixing its objects
//! with the first one's. Runs are never modified, so a committed manifest means the same state for
//! as long as it exists.
//!
//! # Compaction
//!
//! Deltas pile up; merging them into a new base keeps restores fast and lets overwritten values and
//! tombstones go. After a commit whose deltas are due by the [`CompactionPolicy`] (more than 10
//! deltas, 64 MiB of deltas, or deltas of at least 1 MiB above half the base's size, by default), a
//! background thread owned by [`Checkpoints`] merges that checkpoint's base and deltas into a new
//! base: new objects, so that no committed manifest changes meaning. Commits go on meanwhile and
//! never wait for it. The next commit after it finished lists the new base followed by the deltas
//! committed since the compacted checkpoint. The merge of everything down to the base drops
//! tombstones (nothing older remains below them) and overwritten values.
//!
//! Memory stays bounded by one base part, not the state: the compaction holds the deltas it merges
//! (bounded by the policy's thresholds) and reads, merges and writes one part at a time. A part no
//! delta touched is reused as it is, not rewritten. When the state per part outgrows
//! [`CompactionPolicy::max_part_bytes`] (64 MiB), the number of parts doubles: each new part comes
//! from exactly one old part (`hash % 2n` refines `hash % n`), so splitting also reads one old part
//! at a time. A state of 2 GB is thus compacted and restored in parts of at most 64 MiB; the peak
//! is about two parts (the one read and the one written) plus the deltas.
//!
//! # Loading and fallback
//!
//! [`Checkpoints::load_latest`] tries checkpoints newest first. One that is torn, whose manifest does
//! not parse, or one of whose runs is missing or does not match the manifest's size, checksum, kind
//! or entry count is skipped with a warning naming it, the run and the problem, and the previous
//! one is tried. Every run of a checkpoint is read and checked (one at a time) before it is chosen,
//! so that a restore never starts from a checkpoint it then has to abandon half-way. Because runs
//! are shared, a damaged run damages every checkpoint that lists it: a damaged base part makes the
//! search fall back to the newest checkpoint that does not list it (one from before the compaction
//! that wrote it, if any is kept), a damaged delta to the one before that delta.
//!
//! Two things stop the search instead of being skipped: a manifest in a format this build does not
//! know ([`CheckpointError::UnknownFormat`]: another release wrote it, and starting from other
//! state would silently undo its work), and a store that fails (a transient S3 error must not make
//! the job fall back to older state). When committed checkpoints exist but none of them is usable,
//! the result is [`CheckpointError::NoneUsable`], not a fresh start: the operator decides.
//!
//! The chosen checkpoint's state is read as a stream ([`LoadedCheckpoint::entries`]): the live
//! keys, base part by base part (key order within a part), each part merged with the deltas'
//! entries of its keys and checked again before any of its entries is yielded.
//!
//! # Retention
//!
//! After each commit, manifests beyond the newest `keep` committed ones are deleted first, then
//! every run that no remaining manifest lists and that is older than the checkpoint just committed
//! (runs of deleted checkpoints, deltas of torn ones, bases of compactions no commit used), except
//! the output of a compaction still under way or waiting for a commit. A delete cut short
//! therefore leaves only garbage that no manifest references, never a manifest with a run missing;
//! the next commit deletes the rest.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//!
//! use pageflow_connectors::checkpoint_store::{Checkpoints, LocalDirStore, StateEntry};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("pageflow-doc-checkpoints-{}", std::process::id()));
//! let checkpoints = Checkpoints::new(Arc::new(LocalDirStore::new(&dir)?), 3);
//!
//! // The first checkpoint starts from empty state: everything is new.
//! let views = vec![StateEntry::put("page:1", "3 views"), StateEntry::put("page:2", "1 view")];
//! let first = checkpoints.commit(checkpoints.next_id()?, None, views, 1, "v1", BTreeMap::new())?;
//!
//! // The next one writes only what changed since.
//! let changes = vec![StateEntry::put("page:1", "4 views"), StateEntry::delete("page:2")];
//! let parent = Some(&first.manifest);
//! let second = checkpoints.commit(checkpoints.next_id()?, parent, changes, 1, "v1", BTreeMap::new())?;
//! assert_eq!(second.manifest.runs.len(), 2, "the first checkpoint's run is shared");
//! assert_eq!(second.bytes_written, second.manifest.runs[1].bytes);
//!
//! let loaded = checkpoints.load_latest()?.ok_or("a checkpoint was just written")?;
//! assert_eq!(loaded.manifest.id, second.manifest.id);
//! let state = loaded.entries().collect::<Result<Vec<_>, _>>()?;
//! assert_eq!(state, vec![(b"page:1".to_vec(), b"4 views".to_vec())]);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

mod compaction;
mod local_dir;
mod manifest;
mod runs;
mod s3;
mod s3_lease;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pageflow_dataflow::clock::unix_now_ms;

pub use compaction::{CompactionPolicy, CompactionReport};
pub use local_dir::LocalDirStore;
pub use manifest::{
    CLUSTER_FORMAT_VERSION, FORMAT_VERSION, MANIFEST_NAME, Manifest, PartReceipt, RUNS_PREFIX,
    RunInfo, RunKind, is_readable_format,
};
pub use runs::StateEntry;
pub use s3::S3Store;
pub use s3_lease::{LeaseRecord, LeaseSettings, S3Lease, lease_key};
pub use store::{CheckpointStore, StoreError};

use compaction::{CompactedBase, Compactor};
use manifest::{
    CHECKPOINT_PREFIX, base_run_prefix, checkpoint_dir, delta_part_run_key, delta_run_key,
    manifest_key, manifest_problem, parse_checkpoint_key, parse_receipt_name, parse_run_key,
    receipt_key, sha256_hex,
};

/// How often [`Checkpoints::commit_parts`] looks for the other processes' receipts.
const RECEIPT_POLL: Duration = Duration::from_millis(50);

/// What a manifest records about the job that wrote it.
#[derive(Clone, Copy, Debug)]
struct Shape {
    format_version: u32,
    workers: usize,
    processes: usize,
}
use runs::{PartMerge, Run, RunWriter, fetch_run};

/// A commit that failed, with its delta given back: its changes are in no checkpoint yet.
#[derive(Debug)]
pub struct CommitFailed {
    /// Why it failed.
    pub error: CheckpointError,
    /// The delta, to commit with the next changes (newer ones win).
    pub delta: Vec<StateEntry>,
}

impl std::fmt::Display for CommitFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for CommitFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<CommitFailed> for CheckpointError {
    fn from(failed: CommitFailed) -> Self {
        failed.error
    }
}

/// What [`Checkpoints::commit`] did, for the caller's metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The manifest written.
    pub manifest: Manifest,
    /// Bytes of the delta run this checkpoint wrote (0 when its delta was empty).
    pub bytes_written: u64,
    /// Bytes of every run the checkpoint's state is made of.
    pub state_bytes: u64,
    /// The background compaction whose base this checkpoint is the first to list, if any.
    pub compaction: Option<CompactionReport>,
}

/// A checkpoint chosen by [`Checkpoints::load_latest`] (or [`Checkpoints::load`]), every run of
/// which was checked. Its state is read with [`Self::entries`].
pub struct LoadedCheckpoint {
    /// Its manifest.
    pub manifest: Manifest,
    /// The warnings about newer checkpoints that were skipped to get to this one (also logged).
    pub skipped: Vec<String>,
    store: Arc<dyn CheckpointStore>,
    /// The deltas' runs, checked, in manifest order (they are small; the base is read part by
    /// part while iterating).
    deltas: Vec<Run>,
}

impl std::fmt::Debug for LoadedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCheckpoint")
            .field("manifest", &self.manifest)
            .field("skipped", &self.skipped)
            .field("location", &self.store.location())
            .finish_non_exhaustive()
    }
}

impl LoadedCheckpoint {
    /// The live state, streamed: each live key once with its newest value, base part by base part
    /// (in key order within a part), with at most two base parts in memory (the one merged and
    /// the next, read ahead on another thread). Each part is read and checked against the
    /// manifest before any of its entries is yielded; one that changed since it was checked at
    /// load time is the error [`CheckpointError::Damaged`], after which the iterator ends.
    pub fn entries(&self) -> LiveEntries<'_> {
        LiveEntries {
            checkpoint: self,
            parts: self.manifest.base_part_count().unwrap_or(1),
            next_part: 0,
            delta_offsets: None,
            base: None,
            merge: None,
            prefetch: None,
            finished: false,
        }
    }
}

/// A live key and its value, as [`LiveEntries`] yields them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The iterator of [`LoadedCheckpoint::entries`]: `(key, value)` of every live key.
#[derive(Debug)]
pub struct LiveEntries<'a> {
    checkpoint: &'a LoadedCheckpoint,
    /// Parts of the base (1 without a base).
    parts: u32,
    /// The part to read after the current one.
    next_part: u32,
    /// `[delta][part]` → offsets of the delta's entries of that part; computed on first use.
    delta_offsets: Option<Vec<Vec<Vec<usize>>>>,
    /// The current part's base run, if the base has that part.
    base: Option<Run>,
    /// The merge of the current part.
    merge: Option<PartMerge>,
    /// The next part's base run, being read and checked on another thread meanwhile.
    prefetch: Option<(u32, PartFetch)>,
    finished: bool,
}

/// A base part being read and checked on a thread of its own.
type PartFetch = std::thread::JoinHandle<Result<Result<Run, String>, StoreError>>;

impl LiveEntries<'_> {
    /// The base's run of `part`, if the base has that part.
    fn base_info(&self, part: u32) -> Option<&RunInfo> {
        self.checkpoint
            .manifest
            .base_parts()
            .iter()
            .find(|run| matches!(run.kind, RunKind::Base { part: p, .. } if p == part))
    }

    /// Starts reading `part`'s base run on a thread of its own (`None`: no such part, or no
    /// thread could be started, and it is read when needed).
    fn start_fetch(&self, part: u32) -> Option<PartFetch> {
        let info = self.base_info(part)?.clone();
        let store = Arc::clone(&self.checkpoint.store);
        std::thread::Builder::new()
            .name("checkpoint-read".to_string())
            .spawn(move || fetch_run(store.as_ref(), &info))
            .ok()
    }

    fn damaged(&self, reason: String) -> CheckpointError {
        CheckpointError::Damaged {
            id: self.checkpoint.manifest.id,
            location: self.checkpoint.store.location(),
            reason,
        }
    }

    fn advance(&mut self) -> Result<Option<KeyValue>, CheckpointError> {
        let checkpoint = self.checkpoint;
        if self.delta_offsets.is_none() {
            let mut offsets = Vec::with_capacity(checkpoint.deltas.len());
            for (run, info) in checkpoint.deltas.iter().zip(checkpoint.manifest.deltas()) {
                offsets.push(run.offsets_by_part(self.parts).map_err(|why| {
                    self.damaged(format!("run {} is not a valid run: {why}", info.key))
                })?);
            }
            self.delta_offsets = Some(offsets);
        }
        loop {
            if let Some(merge) = &mut self.merge {
                // Run 0 is the base part (empty when the base has no such part), then the deltas.
                let mut runs: Vec<&[u8]> = Vec::with_capacity(checkpoint.deltas.len() + 1);
                runs.push(self.base.as_ref().map_or(&[][..], Run::bytes));
                runs.extend(checkpoint.deltas.iter().map(Run::bytes));
                let part = self.next_part - 1;
                match merge.next_live(&runs) {
                    Ok(Some((key, value))) => return Ok(Some((key.to_vec(), value.to_vec()))),
                    Ok(None) => {}
                    Err(why) => return Err(self.damaged(format!("merging part {part}: {why}"))),
                }
                self.merge = None;
                self.base = None;
            }
            if self.next_part >= self.parts {
                return Ok(None);
            }
            let part = self.next_part;
            self.next_part += 1;
            let fetched = match self.prefetch.take() {
                Some((fetching, handle)) if fetching == part => {
                    Some(handle.join().map_err(|_| {
                        self.damaged(format!("the thread reading base part {part} panicked"))
                    })?)
                }
                _ => self
                    .base_info(part)
                    .map(|info| fetch_run(checkpoint.store.as_ref(), info)),
            };
            // The next part is read and checked while this one is merged.
            if self.next_part < self.parts {
                self.prefetch = self
                    .start_fetch(self.next_part)
                    .map(|h| (self.next_part, h));
            }
            self.base = match fetched {
                Some(fetched) => Some(fetched?.map_err(|why| {
                    self.damaged(format!("{why} (it changed after it was checked)"))
                })?),
                None => None,
            };
            let mut merge = PartMerge::default();
            if let Some(run) = &self.base {
                merge.add_run(0, run, None);
            }
            if let Some(offsets) = &mut self.delta_offsets {
                for (index, by_part) in offsets.iter_mut().enumerate() {
                    let part_offsets = by_part
                        .get_mut(part as usize)
                        .map(std::mem::take)
                        .unwrap_or_default();
                    merge.add_listed(index + 1, part_offsets);
                }
            }
            self.merge = Some(merge);
        }
    }
}

impl Iterator for LiveEntries<'_> {
    type Item = Result<KeyValue, CheckpointError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.advance() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(error) => {
                self.finished = true;
                Some(Err(error))
            }
        }
    }
}

/// A checkpoint present in the store, for `pageflow checkpoints list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// Its id.
    pub id: u64,
    /// Whether it can be used.
    pub status: CheckpointStatus,
    /// Its manifest, when it has one that parses.
    pub manifest: Option<Manifest>,
    /// How many runs its state is made of (0 without a manifest).
    pub runs: usize,
    /// Bytes of every run its state is made of, shared ones included.
    pub state_bytes: u64,
    /// Bytes it wrote itself: its delta run.
    pub bytes_written: u64,
}

/// The state of a checkpoint in [`Checkpoints::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointStatus {
    /// Its manifest parses, is in this build's format, and every run it names is present.
    Committed,
    /// It has no manifest: its write did not finish.
    Torn,
    /// It has a manifest but cannot be used; the reason says why.
    Corrupt(String),
}

/// A failure of [`Checkpoints`].
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed; [`StoreError::is_retryable`] says whether trying again may help.
    #[error("checkpoint store: {0}")]
    Store(#[from] StoreError),
    /// The newest committed checkpoint is in a format this build cannot read.
    #[error(
        "checkpoint {id} at {location} is in format {found}, but this build of pageflow reads formats \
         {supported} and {CLUSTER_FORMAT_VERSION}; run the pageflow release that wrote it, or move that checkpoint (chk-{id:020}) \
         out of the checkpoint location to start from the previous one"
    )]
    UnknownFormat {
        /// The checkpoint.
        id: u64,
        /// Its manifest's `format_version`.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
        /// The store's location.
        location: String,
    },
    /// Committed checkpoints exist, but every one of them is damaged.
    #[error(
        "no checkpoint at {location} is usable: {}; restore them from a backup, or move them out of \
         the checkpoint location to start from empty state",
        problems.join("; ")
    )]
    NoneUsable {
        /// The store's location.
        location: String,
        /// Each damaged checkpoint and what is wrong with it.
        problems: Vec<String>,
    },
    /// Another writer has already written this checkpoint id with other contents.
    #[error(
        "checkpoint {id} at {location} already has `{key}` with other contents: another writer uses \
         the same checkpoint ids; make sure only one job writes to this location, and number \
         checkpoints with `next_id`"
    )]
    Conflict {
        /// The checkpoint.
        id: u64,
        /// The object that was already there.
        key: String,
        /// The store's location.
        location: String,
    },
    /// A run that a checkpoint's state needs is missing or does not match its manifest: found by
    /// [`Checkpoints::load`], while streaming a loaded checkpoint, by a compaction, or by a commit
    /// whose parent lists such a run.
    #[error(
        "checkpoint {id} at {location} is damaged: {reason}; a restart falls back to the newest \
         checkpoint without that run, and a running job can start afresh by committing its whole \
         state as a checkpoint without a parent"
    )]
    Damaged {
        /// The checkpoint.
        id: u64,
        /// The store's location.
        location: String,
        /// Which run and what is wrong with it.
        reason: String,
    },
    /// Not every process of a cluster wrote its part of a checkpoint in time.
    #[error(
        "checkpoint {id} at {location} is not committed: process(es) {missing:?} of {processes} wrote \
         no part within {waited:?}; check that every process of the cluster is running and can write \
         to the checkpoint location (the next checkpoint tries again)"
    )]
    PartsMissing {
        /// The checkpoint.
        id: u64,
        /// The store's location.
        location: String,
        /// The processes whose receipt is missing.
        missing: Vec<usize>,
        /// How many processes the cluster has.
        processes: usize,
        /// How long the commit waited for them.
        waited: Duration,
    },
    /// The caller asked for something a checkpoint cannot hold (a bug, not a problem of the store).
    #[error("cannot write checkpoint {id}: {problem}")]
    Invalid {
        /// The checkpoint.
        id: u64,
        /// What is wrong.
        problem: String,
    },
}

impl CheckpointError {
    /// Whether trying again may succeed: only when the store failed transiently.
    pub fn is_retryable(&self) -> bool {
        match self {
            CheckpointError::Store(error) => error.is_retryable(),
            CheckpointError::PartsMissing { .. } => true,
            CheckpointError::UnknownFormat { .. }
            | CheckpointError::NoneUsable { .. }
            | CheckpointError::Conflict { .. }
            | CheckpointError::Damaged { .. }
            | CheckpointError::Invalid { .. } => false,
        }
    }
}

/// The changes of a failed commit, to go with the next one: the delta itself when it was not
/// taken yet, else the run it became, read back (a failure is rare; the copy only happens then).
fn given_back(delta: Option<Vec<StateEntry>>, run: Option<Vec<u8>>) -> Vec<StateEntry> {
    match (delta, run) {
        (Some(delta), _) => delta,
        (None, Some(bytes)) => Run::parse(bytes)
            .and_then(|run| run.entries())
            .unwrap_or_default(),
        (None, None) => Vec::new(),
    }
}

/// A create-only put that accepts an object already there with the same bytes (a retried request
/// that had succeeded); other bytes are a [`CheckpointError::Conflict`] of checkpoint `id`.
fn put_create_only(
    store: &dyn CheckpointStore,
    id: u64,
    key: &str,
    bytes: &[u8],
    location: &str,
) -> Result<(), CheckpointError> {
    match store.put(key, bytes, true) {
        Ok(()) => Ok(()),
        Err(StoreError::AlreadyExists { .. }) => {
            if store.get(key)?.as_deref() == Some(bytes) {
                Ok(())
            } else {
                Err(CheckpointError::Conflict {
                    id,
                    key: key.to_string(),
                    location: location.to_string(),
                })
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// A value that tells compactions apart (in base part names): random per process, different for
/// every call.
fn new_nonce() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    crate::retry::Jitter::new().next_u64() ^ call.rotate_left(40)
}

/// Sorts a delta by key and keeps the last occurrence of each key.
fn sorted_unique(mut delta: Vec<StateEntry>) -> Vec<StateEntry> {
    // Stable: equal keys stay in the caller's order.
    delta.sort_by(|a, b| a.key.cmp(&b.key));
    // `dedup_by` keeps the first of equal neighbours; swapping moves the later entry into it.
    delta.dedup_by(|later, kept| {
        if later.key == kept.key {
            std::mem::swap(later, kept);
            true
        } else {
            false
        }
    });
    delta
}

/// The objects of a checkpoint location.
#[derive(Debug, Default)]
struct Scan {
    /// The names in each checkpoint's directory, by id (`MANIFEST.json`; anything else is a
    /// leftover of another format or writer).
    dirs: BTreeMap<u64, BTreeSet<String>>,
    /// Every run object's key.
    runs: BTreeSet<String>,
}

impl Scan {
    fn has_manifest(&self, id: u64) -> bool {
        self.dirs
            .get(&id)
            .is_some_and(|names| names.contains(MANIFEST_NAME))
    }

    /// Ids with a manifest, oldest first.
    fn manifest_ids(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.dirs
            .iter()
            .filter(|(_, names)| names.contains(MANIFEST_NAME))
            .map(|(id, _)| *id)
    }

    /// The largest id any object names.
    fn max_id(&self) -> Option<u64> {
        let runs = self
            .runs
            .iter()
            .filter_map(|key| parse_run_key(key))
            .map(|name| name.checkpoint());
        self.dirs.keys().copied().chain(runs).max()
    }
}

/// What was found when a checkpoint was inspected.
enum Inspection {
    /// No manifest.
    Torn,
    /// A manifest in another format.
    UnknownFormat(u32),
    /// Something is wrong; the manifest when it parsed.
    Corrupt(String, Option<Manifest>),
    /// A manifest of this format, well formed, whose runs are all present (not yet read).
    Good(Manifest),
}

impl Inspection {
    /// The manifest, when it parsed.
    fn manifest(&self) -> Option<&Manifest> {
        match self {
            Inspection::Good(manifest) | Inspection::Corrupt(_, Some(manifest)) => Some(manifest),
            _ => None,
        }
    }
}

/// Checkpoint logic over any store: layout, manifests, checksums, compaction, retention, fallback.
///
/// Clones share the compaction under way; one job (one writer) per checkpoint location.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Arc<dyn CheckpointStore>,
    keep: usize,
    policy: CompactionPolicy,
    compactor: Arc<Compactor>,
}

impl Checkpoints {
    /// Checkpoints in `store`, keeping the newest `keep` committed ones (at least 1), compacting in
    /// the background by [`CompactionPolicy::default`].
    pub fn new(store: Arc<dyn CheckpointStore>, keep: usize) -> Self {
        Checkpoints {
            store,
            keep: keep.max(1),
            policy: CompactionPolicy::default(),
            compactor: Arc::default(),
        }
    }

    /// The same checkpoints compacting by `policy`.
    pub fn with_compaction(mut self, policy: CompactionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The compaction policy.
    pub fn compaction_policy(&self) -> &CompactionPolicy {
        &self.policy
    }

    /// Where the checkpoints are.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Commits checkpoint `id`: the state of `parent` (empty state when `None`) changed by `delta`.
    ///
    /// `delta` is in any order and may repeat a key (the last occurrence wins). It is written as
    /// one run (none when empty), then the manifest, create-only (the commit point; a second
    /// writer of the same id fails with [`CheckpointError::Conflict`]), listing the parent's runs
    /// and the new one. If a compaction of the parent's state or of an ancestor's finished since
    /// the last commit, the manifest lists its base instead of the runs it merged. Then manifests
    /// beyond the newest `keep` and runs nothing references are deleted, and a background
    /// compaction starts if this checkpoint's deltas are due.
    ///
    /// `parent` must be a committed checkpoint of this location older than `id`, normally the
    /// previous commit's manifest or the loaded one; a parent whose runs were deleted in the
    /// meantime, or one a compaction found damaged, is refused ([`CheckpointError::Damaged`]).
    /// Runs are written create-only too; a delta already there with the same bytes (a retried
    /// request that had succeeded) is fine. A failure of the clean-up after the commit is logged
    /// and does not fail the commit: the checkpoint is committed, and the next commit cleans up
    /// again.
    ///
    /// When the commit fails, the error gives the delta back ([`CommitFailed`]): its changes are
    /// in no checkpoint, and the caller commits them with its next changes.
    pub fn commit(
        &self,
        id: u64,
        parent: Option<&Manifest>,
        delta: Vec<StateEntry>,
        workers: usize,
        fingerprint: &str,
        info: BTreeMap<String, String>,
    ) -> Result<Commit, CommitFailed> {
        let mut delta = Some(delta);
        match self.try_commit(id, parent, &mut delta, workers, fingerprint, info) {
            Ok(commit) => Ok(commit),
            Err((error, run)) => Err(CommitFailed {
                error,
                delta: given_back(delta, run),
            }),
        }
    }

    /// [`Checkpoints::commit`]: takes the delta out of `delta` when it writes it; on an error
    /// after that, gives back the run it wrote.
    fn try_commit(
        &self,
        id: u64,
        parent: Option<&Manifest>,
        delta: &mut Option<Vec<StateEntry>>,
        workers: usize,
        fingerprint: &str,
        info: BTreeMap<String, String>,
    ) -> Result<Commit, (CheckpointError, Option<Vec<u8>>)> {
        let early = |error: CheckpointError| (error, None);
        let location = self.location();
        if let Some(parent) = parent {
            if !is_readable_format(parent.format_version) {
                return Err(early(CheckpointError::Invalid {
                    id,
                    problem: format!(
                        "its parent, checkpoint {}, is in format {}, not {FORMAT_VERSION} or \
                         {CLUSTER_FORMAT_VERSION}",
                        parent.id, parent.format_version
                    ),
                }));
            }
            if parent.id >= id {
                return Err(early(CheckpointError::Invalid {
                    id,
                    problem: format!("its parent, checkpoint {}, is not older", parent.id),
                }));
            }
        }

        let (mut runs, compacted) = self.runs_to_build_on(id, parent).map_err(early)?;
        // A parent's run that retention has deleted (the parent was not among the newest `keep`)
        // would make this checkpoint damaged from the start.
        let present: BTreeSet<String> = self
            .store
            .list(RUNS_PREFIX)
            .map_err(|error| early(error.into()))?
            .into_iter()
            .collect();
        if let Some(missing) = runs.iter().find(|run| !present.contains(&run.key)) {
            return Err(early(CheckpointError::Damaged {
                id: parent.map_or(id, |parent| parent.id),
                location,
                reason: format!(
                    "run {} is missing (was the parent deleted by retention?)",
                    missing.key
                ),
            }));
        }

        let (own_run, run_bytes) =
            match self.write_delta(id, delta_run_key(id), delta.take().unwrap_or_default()) {
                Ok(Some((info, bytes))) => (Some(info), Some(bytes)),
                Ok(None) => (None, None),
                Err((error, bytes)) => return Err((error, bytes)),
            };
        runs.extend(own_run);
        let shape = Shape {
            format_version: FORMAT_VERSION,
            workers,
            processes: 1,
        };
        self.commit_manifest(id, parent, runs, compacted, shape, fingerprint, info)
            .map_err(|error| (error, run_bytes))
    }

    /// Writes process `process`'s part of checkpoint `id` of a cluster: its delta run
    /// (`runs/<id>-delta-p<process>.run`, none when `delta` is empty), then its receipt
    /// (`chk-<id>/PART-p<process>.json`), both create-only. Nothing is committed: one process
    /// commits every part with [`Checkpoints::commit_parts`]. On failure the delta comes back, to
    /// go with the next part (a part without a receipt is never committed).
    pub fn write_part(
        &self,
        id: u64,
        process: usize,
        delta: Vec<StateEntry>,
    ) -> Result<PartReceipt, CommitFailed> {
        let give_back = |error, bytes: Option<Vec<u8>>| CommitFailed {
            error,
            delta: given_back(None, bytes),
        };
        let (run, bytes) = match self.write_delta(id, delta_part_run_key(id, process), delta) {
            Ok(Some((run, bytes))) => (Some(run), Some(bytes)),
            Ok(None) => (None, None),
            Err((error, bytes)) => return Err(give_back(error, bytes)),
        };
        let receipt = PartReceipt {
            checkpoint: id,
            process,
            run,
        };
        let json = match serde_json::to_vec_pretty(&receipt) {
            Ok(json) => json,
            Err(error) => {
                let error = CheckpointError::Invalid {
                    id,
                    problem: format!("the part's receipt cannot be encoded: {error}"),
                };
                return Err(give_back(error, bytes));
            }
        };
        let location = self.location();
        if let Err(error) = put_create_only(
            self.store.as_ref(),
            id,
            &receipt_key(id, process),
            &json,
            &location,
        ) {
            return Err(give_back(error, bytes));
        }
        Ok(receipt)
    }

    /// Commits checkpoint `id` of a cluster of `processes` (format 3), as the one process that
    /// commits. Waits until every process's receipt of `id` is in the store (looking every 50 ms,
    /// at most `timeout`), then writes a manifest listing `parent`'s runs and the runs of every
    /// receipt of a checkpoint after `parent` up to `id`, ordered by checkpoint and process:
    /// parts of earlier checkpoints that were never committed are included, as the processes
    /// that wrote them count their changes as saved.
    #[allow(clippy::too_many_arguments, reason = "the parts of one manifest")]
    pub fn commit_parts(
        &self,
        id: u64,
        parent: Option<&Manifest>,
        processes: usize,
        timeout: Duration,
        workers: usize,
        fingerprint: &str,
        info: BTreeMap<String, String>,
    ) -> Result<Commit, CheckpointError> {
        let location = self.location();
        if let Some(parent) = parent {
            if !is_readable_format(parent.format_version) {
                return Err(CheckpointError::Invalid {
                    id,
                    problem: format!(
                        "its parent, checkpoint {}, is in format {}",
                        parent.id, parent.format_version
                    ),
                });
            }
            if parent.id >= id {
                return Err(CheckpointError::Invalid {
                    id,
                    problem: format!("its parent, checkpoint {}, is not older", parent.id),
                });
            }
        }
        let started = Instant::now();
        loop {
            let written = self.receipts_of(id)?;
            let missing: Vec<usize> = (0..processes).filter(|p| !written.contains(p)).collect();
            if missing.is_empty() {
                break;
            }
            if started.elapsed() >= timeout {
                return Err(CheckpointError::PartsMissing {
                    id,
                    location,
                    missing,
                    processes,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(RECEIPT_POLL);
        }
        let after = parent.map_or(0, |parent| parent.id);
        let mut receipts = Vec::new();
        for key in self.store.list(CHECKPOINT_PREFIX)? {
            let Some((of, name)) = parse_checkpoint_key(&key) else {
                continue;
            };
            let Some(process) = parse_receipt_name(name) else {
                continue;
            };
            if of <= after || of > id {
                continue;
            }
            let bytes = self
                .store
                .get(&key)?
                .ok_or_else(|| CheckpointError::Damaged {
                    id: of,
                    location: location.clone(),
                    reason: format!("its receipt {key} was listed but is gone"),
                })?;
            let receipt: PartReceipt =
                serde_json::from_slice(&bytes).map_err(|error| CheckpointError::Damaged {
                    id: of,
                    location: location.clone(),
                    reason: format!("its receipt {key} does not parse: {error}"),
                })?;
            if receipt.checkpoint != of || receipt.process != process {
                return Err(CheckpointError::Damaged {
                    id: of,
                    location: location.clone(),
                    reason: format!("its receipt {key} is that of another part"),
                });
            }
            receipts.push(receipt);
        }
        receipts.sort_by_key(|receipt| (receipt.checkpoint, receipt.process));
        let (mut runs, compacted) = self.runs_to_build_on(id, parent)?;
        let present: BTreeSet<String> = self.store.list(RUNS_PREFIX)?.into_iter().collect();
        runs.extend(receipts.into_iter().filter_map(|receipt| receipt.run));
        if let Some(missing) = runs.iter().find(|run| !present.contains(&run.key)) {
            return Err(CheckpointError::Damaged {
                id,
                location,
                reason: format!("run {} is missing", missing.key),
            });
        }
        let shape = Shape {
            format_version: CLUSTER_FORMAT_VERSION,
            workers,
            processes,
        };
        self.commit_manifest(id, parent, runs, compacted, shape, fingerprint, info)
    }

    /// The processes whose receipt of checkpoint `id` is in the store.
    fn receipts_of(&self, id: u64) -> Result<BTreeSet<usize>, CheckpointError> {
        Ok(self
            .store
            .list(&format!("{}/", checkpoint_dir(id)))?
            .iter()
            .filter_map(|key| parse_checkpoint_key(key))
            .filter_map(|(_, name)| parse_receipt_name(name))
            .collect())
    }

    /// Commits checkpoint `id` with `runs` (its parent's, possibly compacted, and its own): the
    /// manifest, create-only, then the clean-up and maybe a background compaction.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of one manifest; two callers"
    )]
    fn commit_manifest(
        &self,
        id: u64,
        parent: Option<&Manifest>,
        runs: Vec<RunInfo>,
        compacted: Option<CompactedBase>,
        shape: Shape,
        fingerprint: &str,
        info: BTreeMap<String, String>,
    ) -> Result<Commit, CheckpointError> {
        let location = self.location();
        let manifest = Manifest {
            format_version: shape.format_version,
            id,
            created_ms: unix_now_ms(),
            workers: shape.workers,
            processes: shape.processes,
            fingerprint: fingerprint.to_string(),
            parent: parent.map(|parent| parent.id),
            runs,
            info,
        };
        let bytes_written = manifest.bytes_written();
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|error| CheckpointError::Invalid {
                id,
                problem: format!("the manifest cannot be encoded: {error}"),
            })?;
        put_create_only(self.store.as_ref(), id, &manifest_key(id), &json, &location)?;

        if let Some(compacted) = &compacted {
            // A manifest references the new base now: it needs no protection any more.
            let mut state = self.compactor.lock();
            if state
                .pending
                .as_ref()
                .is_some_and(|pending| pending.prefix == compacted.prefix)
            {
                state.pending = None;
            }
            state.protected.remove(&compacted.prefix);
        }
        if let Err(error) = self.prune(id) {
            tracing::warn!(
                checkpoint = id,
                location = %location,
                "checkpoint {id} is committed, but deleting old checkpoints and runs failed (the \
                 next commit tries again): {error}"
            );
        }
        if self.policy.background && self.policy.is_due(&manifest) {
            self.compactor.start_background(
                Arc::clone(&self.store),
                manifest.clone(),
                self.policy.clone(),
                new_nonce(),
            );
        }
        Ok(Commit {
            bytes_written,
            state_bytes: manifest.state_bytes(),
            compaction: compacted.map(|compacted| compacted.report),
            manifest,
        })
    }

    /// The runs checkpoint `id` builds on: `parent`'s, with the pending compaction's base in place
    /// of the runs it merged when it applies (a pending compaction that does not is dropped), and
    /// that compaction.
    fn runs_to_build_on(
        &self,
        id: u64,
        parent: Option<&Manifest>,
    ) -> Result<(Vec<RunInfo>, Option<CompactedBase>), CheckpointError> {
        let mut state = self.compactor.lock();
        if let (Some(parent), Some((key, reason))) = (parent, &state.damaged_run)
            && parent.runs.iter().any(|run| &run.key == key)
        {
            return Err(CheckpointError::Damaged {
                id: parent.id,
                location: self.location(),
                reason: format!(
                    "{reason} (found by a compaction; checkpoint {id} would build on it)"
                ),
            });
        }
        let parent_runs = parent.map_or(&[][..], |parent| parent.runs.as_slice());
        let applied = state
            .pending
            .as_ref()
            .map(|pending| (pending.apply_to(parent_runs), pending));
        match applied {
            Some((Some(runs), pending)) => {
                let pending = pending.clone();
                Ok((runs, Some(pending)))
            }
            Some((None, _)) => {
                // The parent does not build on the compacted checkpoint (a restart from another
                // one, or a fresh start): the new base will never be used; retention deletes it.
                if let Some(pending) = state.pending.take() {
                    state.protected.remove(&pending.prefix);
                }
                Ok((parent_runs.to_vec(), None))
            }
            None => Ok((parent_runs.to_vec(), None)),
        }
    }

    /// Writes checkpoint `id`'s delta as a run; `None` when it is empty.
    /// Writes the delta as one run; returns it and its bytes (kept until the manifest is written,
    /// so that a failed commit can give the delta back), or on failure the bytes encoded so far.
    #[allow(
        clippy::type_complexity,
        reason = "the run and its bytes, or the error and the bytes: used once, by try_commit"
    )]
    fn write_delta(
        &self,
        id: u64,
        key: String,
        delta: Vec<StateEntry>,
    ) -> Result<Option<(RunInfo, Vec<u8>)>, (CheckpointError, Option<Vec<u8>>)> {
        if delta.is_empty() {
            return Ok(None);
        }
        let mut writer = RunWriter::new(RunKind::Delta);
        // Entry by entry, so that the delta's memory goes as the run's grows.
        for entry in sorted_unique(delta) {
            writer.push(&entry.key, entry.value.as_deref());
        }
        let (bytes, entries) = writer.finish();
        if let Err(error) = put_create_only(self.store.as_ref(), id, &key, &bytes, &self.location())
        {
            return Err((error, Some(bytes)));
        }
        let info = RunInfo {
            key,
            kind: RunKind::Delta,
            checkpoint: id,
            entries,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        Ok(Some((info, bytes)))
    }

    /// Compacts `manifest`'s state now, on the calling thread (after waiting for a background
    /// compaction to end): its base and deltas are merged into a new base, which the next commit
    /// building on `manifest` lists instead. `None` when there is nothing to compact (no deltas).
    ///
    /// For a writer thread that compacts between commits ([`CompactionPolicy::manual`]), tools and
    /// tests; with the default policy, commits start compactions in the background by themselves.
    pub fn compact(
        &self,
        manifest: &Manifest,
    ) -> Result<Option<CompactionReport>, CheckpointError> {
        let nonce = new_nonce();
        let prefix = base_run_prefix(manifest.id, nonce);
        self.compactor.idle().protected.insert(prefix.clone());
        let outcome = compaction::compact(self.store.as_ref(), manifest, &self.policy, nonce);
        self.compactor.finish(&manifest.runs, &outcome);
        self.compactor.release(&prefix);
        outcome.map(|compacted| compacted.map(|compacted| compacted.report))
    }

    /// Waits until no background compaction is running; returns the report of the finished
    /// compaction that the next commit will use, if any (a graceful stop, tests).
    pub fn wait_for_compaction(&self) -> Option<CompactionReport> {
        self.compactor
            .idle()
            .pending
            .as_ref()
            .map(|pending| pending.report.clone())
    }

    /// The objects of the location: one listing of the manifests' directories, one of the runs.
    fn scan(&self) -> Result<Scan, CheckpointError> {
        let mut scan = Scan::default();
        for key in self.store.list(CHECKPOINT_PREFIX)? {
            if let Some((id, name)) = parse_checkpoint_key(&key) {
                scan.dirs.entry(id).or_default().insert(name.to_string());
            }
        }
        scan.runs = self.store.list(RUNS_PREFIX)?.into_iter().collect();
        Ok(scan)
    }

    /// Every checkpoint of the location, newest first: those with a manifest, and torn ones (a
    /// directory without a manifest, or a delta run of an id without a manifest that no manifest
    /// lists; a listed one belongs to a checkpoint retention has deleted but whose run is shared).
    fn survey(&self, scan: &Scan) -> Result<Vec<(u64, Inspection)>, CheckpointError> {
        let mut found = BTreeMap::new();
        for id in scan.manifest_ids() {
            found.insert(id, self.inspect(id, scan)?);
        }
        let listed: BTreeSet<String> = found
            .values()
            .filter_map(Inspection::manifest)
            .flat_map(|manifest| manifest.run_keys().map(str::to_string))
            .collect();
        for &id in scan.dirs.keys() {
            found.entry(id).or_insert(Inspection::Torn);
        }
        for key in &scan.runs {
            if let Some(manifest::RunName::Delta(id)) = parse_run_key(key)
                && !listed.contains(key)
            {
                found.entry(id).or_insert(Inspection::Torn);
            }
        }
        Ok(found.into_iter().rev().collect())
    }

    /// Deletes manifests beyond the newest `keep` committed ones, then leftovers in directories
    /// without a kept manifest, then the runs no kept manifest lists that are older than `written`
    /// (the checkpoint just committed), except the output of compactions not yet in a manifest.
    fn prune(&self, written: u64) -> Result<(), CheckpointError> {
        let scan = self.scan()?;
        let committed: Vec<u64> = scan.manifest_ids().rev().collect();
        let kept: BTreeSet<u64> = committed.iter().take(self.keep).copied().collect();
        // Manifests first: a delete cut short leaves garbage no manifest lists, never a committed
        // checkpoint with a run missing.
        let manifests: Vec<String> = committed
            .iter()
            .skip(self.keep)
            .map(|id| manifest_key(*id))
            .collect();
        if !manifests.is_empty() {
            self.store.delete(&manifests)?;
        }
        let leftovers: Vec<String> = scan
            .dirs
            .iter()
            .filter(|(id, names)| {
                !kept.contains(id) && (names.contains(MANIFEST_NAME) || **id < written)
            })
            .flat_map(|(id, names)| {
                names
                    .iter()
                    .filter(|name| name.as_str() != MANIFEST_NAME)
                    .map(|name| format!("{}/{name}", manifest::checkpoint_dir(*id)))
            })
            .collect();
        if !leftovers.is_empty() {
            self.store.delete(&leftovers)?;
        }

        let mut listed = BTreeSet::new();
        for &id in &kept {
            match self.inspect(id, &scan)? {
                Inspection::UnknownFormat(found) => {
                    // Another release's manifest may list runs this build would take for garbage.
                    tracing::warn!(
                        checkpoint = id,
                        location = %self.location(),
                        "checkpoint {id} is in format {found}, one this build does not read: no runs are \
                         deleted while it is kept"
                    );
                    return Ok(());
                }
                inspection => {
                    if let Some(manifest) = inspection.manifest() {
                        listed.extend(manifest.run_keys().map(str::to_string));
                    }
                }
            }
        }
        // Read after the listing: a compaction registers its prefix before writing a part, so a
        // part in the listing is either listed by a manifest or protected here.
        let protected = self.compactor.lock().protected.clone();
        let runs: Vec<String> = scan
            .runs
            .iter()
            .filter(|key| {
                !listed.contains(*key)
                    && !protected.iter().any(|prefix| key.starts_with(prefix))
                    && parse_run_key(key).is_some_and(|name| name.checkpoint() < written)
            })
            .cloned()
            .collect();
        if !runs.is_empty() {
            self.store.delete(&runs)?;
        }
        tracing::debug!(
            location = %self.location(),
            "deleted {} manifests, {} leftovers and {} runs",
            manifests.len(),
            leftovers.len(),
            runs.len()
        );
        Ok(())
    }

    /// The id for the next checkpoint: one more than the largest id any object names (committed,
    /// torn or corrupt checkpoints, runs, so that ids never repeat), or 1 when there is none.
    pub fn next_id(&self) -> Result<u64, CheckpointError> {
        Ok(self.scan()?.max_id().map_or(1, |id| id.saturating_add(1)))
    }

    /// Whether checkpoint `id` has been committed: its manifest, the commit point, is in the
    /// store. One small read, for a process of a cluster to learn that process 0 committed a
    /// checkpoint it wrote a part of (the manifest itself is checked when it is loaded).
    pub fn is_committed(&self, id: u64) -> Result<bool, CheckpointError> {
        Ok(self.store.get(&manifest_key(id))?.is_some())
    }

    /// Loads the newest good checkpoint, trying them newest first.
    ///
    /// A checkpoint with no manifest (a torn write), a manifest that does not parse or does not
    /// match its directory, or a run that is missing or does not match the manifest (size,
    /// SHA-256, layout, kind, entry count) is skipped with a warning saying which checkpoint, what
    /// is wrong, and which one is tried next (also in [`LoadedCheckpoint::skipped`]). Every run of
    /// a checkpoint is checked, one at a time, before it is chosen; the deltas' runs are kept, the
    /// base is read again part by part by [`LoadedCheckpoint::entries`]. A manifest whose
    /// `format_version` is not [`FORMAT_VERSION`] is the error [`CheckpointError::UnknownFormat`];
    /// a store failure is an error too (never a reason to fall back). `Ok(None)` when there is no
    /// committed checkpoint at all (nothing, or only torn ones); [`CheckpointError::NoneUsable`]
    /// when there are committed ones but every one is damaged.
    pub fn load_latest(&self) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
        let scan = self.scan()?;
        let checkpoints = self.survey(&scan)?;
        let mut checked = CheckedRuns::default();
        let mut problems = Vec::new();
        let mut skipped = Vec::new();
        for (index, (id, inspection)) in checkpoints.iter().enumerate() {
            let id = *id;
            let problem = match inspection {
                Inspection::Good(manifest) => match self.check_runs(manifest, &mut checked)? {
                    Ok(deltas) => {
                        return Ok(Some(LoadedCheckpoint {
                            manifest: manifest.clone(),
                            skipped,
                            store: Arc::clone(&self.store),
                            deltas,
                        }));
                    }
                    Err(reason) => {
                        problems.push(format!("checkpoint {id}: {reason}"));
                        format!("is damaged: {reason}")
                    }
                },
                Inspection::UnknownFormat(found) => {
                    return Err(CheckpointError::UnknownFormat {
                        id,
                        found: *found,
                        supported: FORMAT_VERSION,
                        location: self.location(),
                    });
                }
                Inspection::Torn => "has no manifest (its write did not finish)".to_string(),
                Inspection::Corrupt(reason, _) => {
                    problems.push(format!("checkpoint {id}: {reason}"));
                    format!("is damaged: {reason}")
                }
            };
            let next = match checkpoints.get(index + 1) {
                Some((older, _)) => format!("trying the previous one, {older}"),
                None => "no older checkpoint is left".to_string(),
            };
            let warning = format!(
                "checkpoint {id} at {} {problem}; skipping it and {next}",
                self.location()
            );
            tracing::warn!(checkpoint = id, location = %self.location(), "{warning}");
            skipped.push(warning);
        }
        if problems.is_empty() {
            Ok(None)
        } else {
            Err(CheckpointError::NoneUsable {
                location: self.location(),
                problems,
            })
        }
    }

    /// Loads checkpoint `id`, checking every run as [`Self::load_latest`] does but without falling
    /// back: `None` when it has no manifest, [`CheckpointError::Damaged`] when it cannot be used,
    /// [`CheckpointError::UnknownFormat`] for another format.
    pub fn load(&self, id: u64) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
        let scan = self.scan()?;
        let damaged = |reason| CheckpointError::Damaged {
            id,
            location: self.location(),
            reason,
        };
        match self.inspect(id, &scan)? {
            Inspection::Torn => Ok(None),
            Inspection::UnknownFormat(found) => Err(CheckpointError::UnknownFormat {
                id,
                found,
                supported: FORMAT_VERSION,
                location: self.location(),
            }),
            Inspection::Corrupt(reason, _) => Err(damaged(reason)),
            Inspection::Good(manifest) => {
                let deltas = self
                    .check_runs(&manifest, &mut CheckedRuns::default())?
                    .map_err(damaged)?;
                Ok(Some(LoadedCheckpoint {
                    manifest,
                    skipped: Vec::new(),
                    store: Arc::clone(&self.store),
                    deltas,
                }))
            }
        }
    }

    /// Reads and checks every run of `manifest` (runs `checked` already knows are not read again;
    /// the others several at a time, see [`fetch_runs`]); returns its deltas' runs, or what is
    /// wrong with the first bad run in the manifest's order.
    fn check_runs(
        &self,
        manifest: &Manifest,
        checked: &mut CheckedRuns,
    ) -> Result<Result<Vec<Run>, String>, CheckpointError> {
        let unchecked: Vec<&RunInfo> = manifest
            .runs
            .iter()
            .filter(|info| !checked.problems.contains_key(*info) && !checked.good.contains(*info))
            .collect();
        for (info, outcome) in unchecked
            .iter()
            .zip(fetch_runs(self.store.as_ref(), &unchecked)?)
        {
            match outcome {
                Err(problem) => {
                    checked.problems.insert((*info).clone(), problem);
                }
                Ok(run) => {
                    checked.good.insert((*info).clone());
                    // A base part was dropped: it is read again while streaming.
                    if let Some(run) = run {
                        checked.deltas.insert((*info).clone(), run);
                    }
                }
            }
        }
        if let Some(problem) = manifest
            .runs
            .iter()
            .find_map(|info| checked.problems.get(info))
        {
            return Ok(Err(problem.clone()));
        }
        let mut deltas = Vec::with_capacity(manifest.deltas().len());
        for info in manifest.deltas() {
            match checked.deltas.remove(info) {
                Some(run) => deltas.push(run),
                // Checked for another checkpoint and handed out (cannot happen: a checkpoint is
                // returned as soon as its runs are good); read it again.
                None => match fetch_run(self.store.as_ref(), info)? {
                    Ok(run) => deltas.push(run),
                    Err(problem) => return Ok(Err(problem)),
                },
            }
        }
        Ok(Ok(deltas))
    }

    /// Every checkpoint present with its state, newest first (for `pageflow checkpoints list`).
    ///
    /// This is the cheap check: the manifest is read and parsed and each run it names must be
    /// present, but runs are not read, so sizes and checksums are not verified
    /// ([`Self::load_latest`] verifies them). A manifest in an unknown format is listed as
    /// [`CheckpointStatus::Corrupt`] with a reason that says so.
    pub fn list(&self) -> Result<Vec<CheckpointSummary>, CheckpointError> {
        let scan = self.scan()?;
        let mut summaries = Vec::new();
        for (id, inspection) in self.survey(&scan)? {
            let (status, manifest) = match inspection {
                Inspection::Good(manifest) => (CheckpointStatus::Committed, Some(manifest)),
                Inspection::Torn => (CheckpointStatus::Torn, None),
                Inspection::UnknownFormat(found) => (
                    CheckpointStatus::Corrupt(format!(
                        "written in format {found}; this build reads formats {FORMAT_VERSION} and {CLUSTER_FORMAT_VERSION}"
                    )),
                    None,
                ),
                Inspection::Corrupt(reason, manifest) => {
                    (CheckpointStatus::Corrupt(reason), manifest)
                }
            };
            summaries.push(CheckpointSummary {
                id,
                status,
                runs: manifest.as_ref().map_or(0, |m| m.runs.len()),
                state_bytes: manifest.as_ref().map_or(0, Manifest::state_bytes),
                bytes_written: manifest.as_ref().map_or(0, Manifest::bytes_written),
                manifest,
            });
        }
        Ok(summaries)
    }

    /// Reads checkpoint `id`'s manifest and checks it: format, fields, shape, and that every run it
    /// lists is in `scan` (runs are not read).
    fn inspect(&self, id: u64, scan: &Scan) -> Result<Inspection, CheckpointError> {
        if !scan.has_manifest(id) {
            return Ok(Inspection::Torn);
        }
        // Deleted since the listing: as good as torn.
        let Some(json) = self.store.get(&manifest_key(id))? else {
            return Ok(Inspection::Torn);
        };
        let value: serde_json::Value = match serde_json::from_slice(&json) {
            Ok(value) => value,
            Err(error) => {
                return Ok(Inspection::Corrupt(
                    format!("its manifest is not valid JSON ({error})"),
                    None,
                ));
            }
        };
        // The format first: another format may have other fields.
        let Some(found) = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
        else {
            return Ok(Inspection::Corrupt(
                "its manifest has no numeric format_version".to_string(),
                None,
            ));
        };
        if !u32::try_from(found).is_ok_and(is_readable_format) {
            return Ok(match u32::try_from(found) {
                Ok(found) => Inspection::UnknownFormat(found),
                Err(_) => Inspection::Corrupt(
                    format!("its manifest's format_version {found} is out of range"),
                    None,
                ),
            });
        }
        let manifest: Manifest = match serde_json::from_value(value) {
            Ok(manifest) => manifest,
            Err(error) => {
                return Ok(Inspection::Corrupt(
                    format!("its manifest does not have the expected fields ({error})"),
                    None,
                ));
            }
        };
        if let Some(problem) = manifest_problem(&manifest, id) {
            return Ok(Inspection::Corrupt(problem, Some(manifest)));
        }
        if let Some(missing) = manifest
            .runs
            .iter()
            .find(|run| !scan.runs.contains(&run.key))
        {
            let problem = format!("run {} is missing", missing.key);
            return Ok(Inspection::Corrupt(problem, Some(manifest)));
        }
        Ok(Inspection::Good(manifest))
    }
}

/// Reads and checks `runs`, as many at a time as there are cores (at most 8): the hashing of a
/// large local state uses every core, and S3's requests overlap. Returns, in `runs`' order, each
/// one's problem or, for a delta, the run (base parts are dropped once checked: a restore reads
/// them again one at a time). The first store failure, in order, is the error.
fn fetch_runs(
    store: &dyn CheckpointStore,
    runs: &[&RunInfo],
) -> Result<Vec<Result<Option<Run>, String>>, StoreError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, 8)
        .min(runs.len());
    let next = AtomicUsize::new(0);
    // Each thread takes the next run still unread and keeps what it found, by index.
    let mut found: Vec<_> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut found = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(info) = runs.get(index) else { break };
                        let fetched = fetch_run(store, info)
                            .map(|run| run.map(|run| (info.kind == RunKind::Delta).then_some(run)));
                        found.push((index, fetched));
                    }
                    found
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|reader| {
                reader
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    found.sort_unstable_by_key(|(index, _)| *index);
    found.into_iter().map(|(_, fetched)| fetched).collect()
}

/// What [`Checkpoints::check_runs`] learnt about runs, shared by the checkpoints one
/// [`Checkpoints::load_latest`] tries (they share most runs). By the whole description, not just
/// the key: a manifest that describes a run differently is checked on its own.
#[derive(Default)]
struct CheckedRuns {
    /// Runs that matched their description.
    good: BTreeSet<RunInfo>,
    /// Runs that did not, and why.
    problems: BTreeMap<RunInfo, String>,
    /// The checked deltas' runs, kept for the checkpoint that is chosen.
    deltas: BTreeMap<RunInfo, Run>,
}
