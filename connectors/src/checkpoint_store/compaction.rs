//! Compaction: merging a checkpoint's base and deltas into a new base, one part at a time, off the
//! committing thread; and the bookkeeping that hands a finished compaction to the next commit.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::manifest::{Manifest, RunInfo, RunKind, base_run_key, base_run_prefix, sha256_hex};
use super::runs::{PartMerge, Run, RunWriter, fetch_run};
use super::store::CheckpointStore;
use super::{CheckpointError, put_create_only};

/// The most parts a base is split into.
const MAX_BASE_PARTS: u32 = 1 << 16;

/// When a checkpoint's deltas are merged into a new base, and how big the base's parts may get.
///
/// After each commit, a compaction starts in the background when the checkpoint has deltas and
/// any of these holds: more than `max_deltas` deltas; deltas of `max_delta_bytes` or more; deltas
/// of at least `min_delta_bytes` that exceed `delta_ratio` times the base's size. A base has
/// `min_base_parts` parts, doubled (each part split in two) while the estimated state divided by
/// the number of parts exceeds `max_part_bytes`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompactionPolicy {
    /// Whether [`super::Checkpoints::commit`] starts compactions in the background; without, they
    /// run only when [`super::Checkpoints::compact`] is called.
    pub background: bool,
    /// Compact when a checkpoint has more deltas than this.
    pub max_deltas: usize,
    /// Compact when the deltas exceed this fraction of the base's bytes…
    pub delta_ratio: f64,
    /// …and are at least this many bytes (a small state is not rewritten for a few bytes).
    pub min_delta_bytes: u64,
    /// Compact when the deltas reach this many bytes, whatever the base's size. This also bounds
    /// the deltas a restore holds in memory.
    pub max_delta_bytes: u64,
    /// The number of parts of a new base (at least 1).
    pub min_base_parts: u32,
    /// The size a base part should not exceed; parts are doubled when the state outgrows it. A
    /// compaction or a restore holds one part (and the part it writes) in memory at a time.
    pub max_part_bytes: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            background: true,
            max_deltas: 10,
            delta_ratio: 0.5,
            min_delta_bytes: 1 << 20,
            max_delta_bytes: 64 << 20,
            min_base_parts: 16,
            max_part_bytes: 64 << 20,
        }
    }
}

impl CompactionPolicy {
    /// The default thresholds, compacting only when [`super::Checkpoints::compact`] is called (a
    /// writer thread that compacts between commits, tests, tools).
    pub fn manual() -> Self {
        CompactionPolicy {
            background: false,
            ..CompactionPolicy::default()
        }
    }

    /// Whether `manifest`'s deltas are due for compaction.
    pub fn is_due(&self, manifest: &Manifest) -> bool {
        let deltas = manifest.deltas();
        if deltas.is_empty() {
            return false;
        }
        let delta_bytes: u64 = deltas.iter().map(|run| run.bytes).sum();
        let base_bytes: u64 = manifest.base_parts().iter().map(|run| run.bytes).sum();
        deltas.len() > self.max_deltas
            || delta_bytes >= self.max_delta_bytes
            || (delta_bytes >= self.min_delta_bytes
                && delta_bytes as f64 > self.delta_ratio * base_bytes as f64)
    }

    /// The number of parts of the base that compacts `manifest`: the current base's, or
    /// `min_base_parts` for a first base, doubled while `estimated` bytes of state per part exceed
    /// `max_part_bytes`. Always a multiple of the current count, so that each new part comes from
    /// exactly one old part.
    fn part_count(&self, current: Option<u32>, estimated: u64) -> u32 {
        let mut parts = current.unwrap_or(self.min_base_parts.clamp(1, MAX_BASE_PARTS));
        while parts < MAX_BASE_PARTS && estimated / u64::from(parts) > self.max_part_bytes.max(1) {
            parts *= 2;
        }
        parts
    }
}

/// What one compaction did, for metrics and the log line it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionReport {
    /// The checkpoint whose state was compacted.
    pub checkpoint: u64,
    /// How many deltas were merged into the base.
    pub deltas_merged: usize,
    /// The number of parts of the new base.
    pub parts: u32,
    /// Parts written anew.
    pub parts_written: usize,
    /// Parts of the old base kept as they were (no delta touched their keys).
    pub parts_reused: usize,
    /// Bytes read: the deltas and the old parts that were rewritten.
    pub bytes_read: u64,
    /// Bytes written: the new parts.
    pub bytes_written: u64,
    /// Bytes of the new base, reused parts included.
    pub base_bytes: u64,
    /// Live keys in the new base.
    pub entries: u64,
    /// How long it took.
    pub duration: Duration,
}

/// A finished compaction, waiting for a commit to use it.
#[derive(Clone, Debug)]
pub(super) struct CompactedBase {
    /// The runs it replaces: every run of the compacted checkpoint. A commit uses the new base
    /// when its parent's runs start with these.
    pub(super) replaces: Vec<RunInfo>,
    /// The new base's parts, by part number.
    pub(super) base: Vec<RunInfo>,
    /// The prefix of the keys of the parts it wrote (protected from pruning until a manifest
    /// references them).
    pub(super) prefix: String,
    pub(super) report: CompactionReport,
}

impl CompactedBase {
    /// The runs of a checkpoint whose parent has `parent_runs`: the new base in place of the
    /// runs it replaces, then the parent's later deltas; `None` if the parent does not build on
    /// the compacted checkpoint.
    pub(super) fn apply_to(&self, parent_runs: &[RunInfo]) -> Option<Vec<RunInfo>> {
        let later = parent_runs.strip_prefix(self.replaces.as_slice())?;
        Some(self.base.iter().chain(later).cloned().collect())
    }
}

/// Merges `manifest`'s base and deltas into a new base, reading one old part at a time, and writes
/// the parts that changed (create-only) under [`base_run_prefix`]`(manifest.id, nonce)`. `None`
/// when there is nothing to compact (no deltas).
pub(super) fn compact(
    store: &dyn CheckpointStore,
    manifest: &Manifest,
    policy: &CompactionPolicy,
    nonce: u64,
) -> Result<Option<CompactedBase>, CheckpointError> {
    let started = Instant::now();
    let old_base = manifest.base_parts();
    let deltas_info = manifest.deltas();
    if deltas_info.is_empty() {
        return Ok(None);
    }
    let damaged = |reason: String| CheckpointError::Damaged {
        id: manifest.id,
        location: store.location(),
        reason,
    };

    let mut bytes_read = 0;
    let mut deltas = Vec::with_capacity(deltas_info.len());
    for info in deltas_info {
        let run = fetch_run(store, info)?.map_err(damaged)?;
        bytes_read += run.len() as u64;
        deltas.push(run);
    }
    let old_parts = manifest.base_part_count();
    let estimated = old_base
        .iter()
        .chain(deltas_info)
        .map(|run| run.bytes)
        .sum();
    let parts = policy.part_count(old_parts, estimated);
    // [delta][new part] → offsets of the delta's entries of that part.
    let mut delta_offsets = Vec::with_capacity(deltas.len());
    for (run, info) in deltas.iter().zip(deltas_info) {
        let offsets = run
            .offsets_by_part(parts)
            .map_err(|why| damaged(format!("run {} is not a valid run: {why}", info.key)))?;
        delta_offsets.push(offsets);
    }
    // Without a base, each new part has its own (empty) "old part".
    let old_count = old_parts.unwrap_or(parts);
    let prefix = base_run_prefix(manifest.id, nonce);
    let location = store.location();

    let mut base = Vec::new();
    let (mut parts_written, mut parts_reused, mut bytes_written, mut entries) = (0, 0, 0, 0);
    for old_part in 0..old_count {
        let old_info = old_base
            .iter()
            .find(|run| matches!(run.kind, RunKind::Base { part, .. } if part == old_part));
        // Read when a new part needs it, once for all the new parts it splits into.
        let mut old_run: Option<Run> = None;
        for new_part in (old_part..parts).step_by(old_count as usize) {
            let touched = delta_offsets.iter().any(|offsets| {
                offsets
                    .get(new_part as usize)
                    .is_some_and(|o| !o.is_empty())
            });
            if !touched && parts == old_count {
                // Nothing changed in this part's keys: the new base shares the old part.
                if let Some(info) = old_info {
                    base.push(info.clone());
                    parts_reused += 1;
                    entries += info.entries;
                }
                continue;
            }
            if old_run.is_none()
                && let Some(info) = old_info
            {
                let run = fetch_run(store, info)?.map_err(damaged)?;
                bytes_read += run.len() as u64;
                old_run = Some(run);
            }

            let mut merge = PartMerge::default();
            let mut runs: Vec<&[u8]> = Vec::with_capacity(deltas.len() + 1);
            if let Some(run) = &old_run {
                let only = (parts != old_count).then_some((new_part, parts));
                merge.add_run(runs.len(), run, only);
                runs.push(run.bytes());
            }
            for (run, offsets) in deltas.iter().zip(delta_offsets.iter_mut()) {
                let part_offsets = offsets
                    .get_mut(new_part as usize)
                    .map(std::mem::take)
                    .unwrap_or_default();
                merge.add_listed(runs.len(), part_offsets);
                runs.push(run.bytes());
            }
            let kind = RunKind::Base {
                part: new_part,
                parts,
            };
            let mut writer = RunWriter::new(kind);
            while let Some((key, value)) = merge
                .next_live(&runs)
                .map_err(|why| damaged(format!("merging part {new_part}: {why}")))?
            {
                writer.push(key, Some(value));
            }
            if writer.entries() == 0 {
                // Every key of the part was deleted: an absent part is an empty one.
                continue;
            }
            let (bytes, count) = writer.finish();
            let key = base_run_key(manifest.id, nonce, new_part, parts);
            put_create_only(store, manifest.id, &key, &bytes, &location)?;
            bytes_written += bytes.len() as u64;
            entries += count;
            parts_written += 1;
            base.push(RunInfo {
                key,
                kind,
                checkpoint: manifest.id,
                entries: count,
                bytes: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            });
        }
    }
    base.sort_by_key(|run| match run.kind {
        RunKind::Base { part, .. } => part,
        RunKind::Delta => u32::MAX,
    });
    let report = CompactionReport {
        checkpoint: manifest.id,
        deltas_merged: deltas_info.len(),
        parts,
        parts_written,
        parts_reused,
        bytes_read,
        bytes_written,
        base_bytes: base.iter().map(|run| run.bytes).sum(),
        entries,
        duration: started.elapsed(),
    };
    tracing::info!(
        checkpoint = manifest.id,
        location = %location,
        "compacted checkpoint {}: {} deltas into a base of {} parts ({} written, {} reused), read {} \
         bytes, wrote {} bytes, base {} bytes with {} keys, in {:?}",
        report.checkpoint,
        report.deltas_merged,
        report.parts,
        report.parts_written,
        report.parts_reused,
        report.bytes_read,
        report.bytes_written,
        report.base_bytes,
        report.entries,
        report.duration
    );
    Ok(Some(CompactedBase {
        replaces: manifest.runs.clone(),
        base,
        prefix,
        report,
    }))
}

/// What the clones of one [`super::Checkpoints`] share about compactions.
#[derive(Debug, Default)]
pub(super) struct Compactor {
    state: Mutex<CompactorState>,
    /// Notified when a background compaction ends.
    ended: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct CompactorState {
    /// A background compaction is under way.
    pub(super) running: bool,
    /// Key prefixes of compaction output that no manifest references yet and that pruning must
    /// leave alone: the running compaction's and the pending one's.
    pub(super) protected: BTreeSet<String>,
    /// A finished compaction that no commit has used yet.
    pub(super) pending: Option<CompactedBase>,
    /// A run a compaction found damaged, and what is wrong with it: checkpoints built on it would
    /// be damaged too, so commits whose parent references it are refused.
    pub(super) damaged_run: Option<(String, String)>,
}

impl Compactor {
    pub(super) fn lock(&self) -> MutexGuard<'_, CompactorState> {
        // The state stays consistent across a panic (plain assignments), so a poisoned lock is
        // still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until no background compaction is running; returns the state, locked.
    pub(super) fn idle(&self) -> MutexGuard<'_, CompactorState> {
        let mut state = self.lock();
        while state.running {
            state = self
                .ended
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state
    }

    /// Records a compaction's outcome: a result becomes the pending one (replacing and unprotecting
    /// an older pending one); a damaged run of `compacted_runs` (the compacted checkpoint's runs) is
    /// remembered. The compaction's prefix stays protected only if its result is pending.
    pub(super) fn finish(
        &self,
        compacted_runs: &[RunInfo],
        outcome: &Result<Option<CompactedBase>, CheckpointError>,
    ) {
        let mut state = self.lock();
        match outcome {
            Ok(Some(compacted)) => {
                if let Some(old) = state.pending.replace(compacted.clone()) {
                    state.protected.remove(&old.prefix);
                }
            }
            Ok(None) => {}
            Err(CheckpointError::Damaged { reason, .. }) => {
                if let Some(run) = compacted_runs.iter().find(|run| reason.contains(&run.key)) {
                    state.damaged_run = Some((run.key.clone(), reason.clone()));
                }
            }
            Err(_) => {}
        }
    }

    /// Unprotects `prefix` unless it is the pending compaction's.
    pub(super) fn release(&self, prefix: &str) {
        let mut state = self.lock();
        if state
            .pending
            .as_ref()
            .is_none_or(|pending| pending.prefix != prefix)
        {
            state.protected.remove(prefix);
        }
    }

    /// Starts compacting `manifest` on a thread of its own unless a compaction is running or
    /// waiting to be used; returns whether it started.
    pub(super) fn start_background(
        self: &Arc<Self>,
        store: Arc<dyn CheckpointStore>,
        manifest: Manifest,
        policy: CompactionPolicy,
        nonce: u64,
    ) -> bool {
        let prefix = base_run_prefix(manifest.id, nonce);
        {
            let mut state = self.lock();
            if state.running || state.pending.is_some() {
                return false;
            }
            state.running = true;
            // Before the first part is written, so that a concurrent prune never deletes it.
            state.protected.insert(prefix.clone());
        }
        let compactor = Arc::clone(self);
        let thread_prefix = prefix.clone();
        let spawned = std::thread::Builder::new()
            .name("pageflow-checkpoint-compactor".into())
            .spawn(move || {
                let _running = RunningGuard {
                    compactor: &compactor,
                    prefix: thread_prefix,
                };
                let outcome = compact(store.as_ref(), &manifest, &policy, nonce);
                if let Err(error) = &outcome {
                    tracing::warn!(
                        checkpoint = manifest.id,
                        location = %store.location(),
                        "compacting checkpoint {} failed (checkpoints go on with more deltas; a \
                         later commit tries again): {error}",
                        manifest.id
                    );
                }
                compactor.finish(&manifest.runs, &outcome);
            });
        if let Err(error) = spawned {
            tracing::warn!("cannot start a checkpoint compaction thread: {error}");
            let mut state = self.lock();
            state.running = false;
            state.protected.remove(&prefix);
            return false;
        }
        true
    }
}

/// Marks the background compaction as ended when dropped, even if it panicked, and unprotects its
/// output unless it is pending.
struct RunningGuard<'a> {
    compactor: &'a Compactor,
    prefix: String,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.compactor.release(&self.prefix);
        self.compactor.lock().running = false;
        self.compactor.ended.notify_all();
    }
}
