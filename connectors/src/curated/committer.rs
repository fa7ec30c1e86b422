//! Exactly-once files across crashes: the two-phase commit of the curated lake (Flink's
//! `FileSink` is the model).
//!
//! ```text
//!  rows ─► buffered per (table, portal, hour)
//!  checkpoint N taken ─► pre-commit: every buffer ─► _pending/<writer>/c<N>/<table>/portal=…/date=…/part-HH-c<N>-<writer>.parquet (fsync'd)
//!                        (and the compaction of finished hours, see `compaction`)
//!  checkpoint N committed ─► commit through N: each pending file renamed to the same path under curated/
//!  restart from checkpoint N ─► pending of checkpoints ≤ N committed, of > N deleted, temporaries deleted
//! ```
//!
//! Why this gives every row exactly once: the rows buffered before checkpoint N are in the pending
//! files of N before N may be committed (the sink thread pre-commits before it hands the checkpoint
//! to the writer). If N commits, they are made visible (now, or at the next start if the process
//! dies first); if it does not, the job restarts from an earlier checkpoint, the pending files of
//! the later ones are deleted, and the replayed input produces their rows again. A checkpoint that
//! failed is covered by the next one that commits (its changes are carried into it), so commits go
//! *through* an id: every pending checkpoint up to it. Renaming is idempotent (a file already moved
//! is skipped), so a commit interrupted by a crash is simply done again.
//!
//! The names are deterministic (hour, checkpoint id, writer), and every writer (a process of a
//! cluster) has its own pending directory and only ever touches its own files. `_pending` and the
//! `.tmp-` temporaries are hidden from readers (names starting with `_` or `.`).

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pageflow_dataflow::event::DetailedEvent;
use pageflow_dataflow::features::Feature;

use super::compaction::{self, Compaction};
use super::parquet_file::{self, TEMP_PREFIX};
use super::rows::{Partition, PartitionedRows};
use crate::checkpoint_store::{CheckpointStore, StoreError};
use crate::error::ConnectorError;

/// The directory under `curated/` that holds pre-committed files.
pub const PENDING_DIR: &str = "_pending";

/// The file extension of a sidecar that lists the files a compacted file replaces.
pub const REPLACES_SUFFIX: &str = ".replaces";

/// What a pre-commit wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Precommitted {
    /// Parquet files written (compacted ones included).
    pub files: usize,
    /// Rows in them (new rows; compacted rows not counted again).
    pub rows: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// The curated lake's writer for one process: buffers rows, pre-commits them at checkpoints,
/// commits them when the checkpoint is committed.
#[derive(Debug)]
pub struct CuratedCommitter {
    /// `<sinks.dir>/curated`.
    root: PathBuf,
    /// This writer's name in file names (`w0`, or `p<i>` for process `i` of a cluster).
    writer: String,
    /// Rows not pre-committed yet.
    rows: PartitionedRows,
    /// When and whether finished hours are compacted.
    compaction: Compaction,
    /// Hours this writer has committed files to since it started (or found several of its own
    /// files in at start): the candidates for compaction.
    hours: BTreeSet<Partition>,
    /// Where committed files are also published (AWS mode: the archive bucket's `curated/`
    /// prefix), keyed by their path under `curated/`.
    mirror: Option<Arc<dyn CheckpointStore>>,
}

impl CuratedCommitter {
    /// Like [`CuratedCommitter::open`], also publishing every committed file to `mirror` (AWS
    /// mode: an [`crate::checkpoint_store::S3Store`] on the archive bucket's `curated/` prefix),
    /// under the same path. A file is uploaded from its pending copy *before* it is renamed
    /// locally, and a compaction's replaced objects are deleted before the compacted one is
    /// uploaded: the pending file survives a crash until its upload has succeeded, and recovery
    /// uploads it again (the keys are deterministic, so a second upload is the same object).
    /// Objects of checkpoints that never commit are never uploaded.
    pub fn open_with_mirror(
        root: &Path,
        writer: &str,
        restored: Option<u64>,
        compaction: Compaction,
        mirror: Arc<dyn CheckpointStore>,
    ) -> Result<Self, ConnectorError> {
        Self::open_inner(root, writer, restored, compaction, Some(mirror))
    }

    /// Opens the lake at `root` for `writer` after a (re)start from checkpoint `restored`
    /// (`None`: no checkpoint, the job starts from scratch): finishes the commit of every
    /// pending checkpoint up to `restored`, deletes the pending files of later ones (their rows
    /// come again from the replayed input) and any temporary file.
    pub fn open(
        root: &Path,
        writer: &str,
        restored: Option<u64>,
        compaction: Compaction,
    ) -> Result<Self, ConnectorError> {
        Self::open_inner(root, writer, restored, compaction, None)
    }

    fn open_inner(
        root: &Path,
        writer: &str,
        restored: Option<u64>,
        compaction: Compaction,
        mirror: Option<Arc<dyn CheckpointStore>>,
    ) -> Result<Self, ConnectorError> {
        fs::create_dir_all(root).map_err(|source| ConnectorError::CreateDir {
            path: root.to_path_buf(),
            source,
        })?;
        let mut committer = CuratedCommitter {
            root: root.to_path_buf(),
            writer: writer.to_string(),
            rows: PartitionedRows::default(),
            compaction,
            hours: BTreeSet::new(),
            mirror,
        };
        delete_temporaries(root)?;
        for (id, dir) in committer.pending_checkpoints()? {
            if restored.is_some_and(|restored| id <= restored) {
                committer.commit_pending(&dir)?;
            } else {
                remove_dir_all(&dir)?;
                tracing::info!(
                    checkpoint = id,
                    "curated: deleted the pending files of a checkpoint that was not committed; the replayed input writes their rows again"
                );
            }
        }
        let found = compaction::hours_to_compact(root, writer)?;
        committer.hours.extend(found);
        Ok(committer)
    }

    /// The lake's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds the rows of final features.
    pub fn add_features(&mut self, features: &[Feature]) {
        self.rows.add_features(features);
    }

    /// Adds counted events (`pageviews`).
    pub fn add_pageviews(&mut self, events: &[DetailedEvent]) {
        self.rows.add_pageviews(events);
    }

    /// Rows buffered and not pre-committed yet.
    pub fn buffered_rows(&self) -> usize {
        self.rows.row_count()
    }

    /// Phase one, when checkpoint `checkpoint` is taken (before it may be committed): writes every
    /// buffered row to pending files of the checkpoint, and the compaction of the hours finished
    /// by `watermark_ms` (see [`Compaction`]).
    pub fn precommit(
        &mut self,
        checkpoint: u64,
        watermark_ms: u64,
    ) -> Result<Precommitted, ConnectorError> {
        let pending = self.pending_dir(checkpoint);
        let mut done = Precommitted::default();
        for (partition, rows) in self.rows.take() {
            let batch = rows
                .to_batch(partition.table)
                .map_err(|e| ConnectorError::Parquet {
                    path: pending.join(partition.dir()),
                    what: "encode",
                    message: e.to_string(),
                })?;
            let path =
                pending
                    .join(partition.dir())
                    .join(part_name(&partition, checkpoint, &self.writer));
            done.bytes += parquet_file::write_atomically(&path, partition.table, &[batch])?;
            done.files += 1;
            done.rows += rows.row_count();
        }
        let finished: Vec<Partition> = self
            .hours
            .iter()
            .filter(|hour| self.compaction.is_finished(hour, watermark_ms))
            .cloned()
            .collect();
        for hour in finished {
            self.hours.remove(&hour);
            if let Some(bytes) =
                compaction::precommit(&self.root, &pending, &hour, checkpoint, &self.writer)?
            {
                done.bytes += bytes;
                done.files += 1;
            }
        }
        Ok(done)
    }

    /// Phase two, once checkpoint `checkpoint` is committed: makes the pending files of every
    /// checkpoint up to it visible, oldest first. Doing it again is harmless.
    pub fn commit_through(&mut self, checkpoint: u64) -> Result<(), ConnectorError> {
        for (id, dir) in self.pending_checkpoints()? {
            if id <= checkpoint {
                self.commit_pending(&dir)?;
            }
        }
        // Nothing pending: the empty directories go too (removing a directory that is not
        // empty fails, and is left alone).
        let _ = fs::remove_dir(self.pending_root());
        let _ = fs::remove_dir(self.root.join(PENDING_DIR));
        Ok(())
    }

    /// Pre-commits and commits at once under `id`: for a job without checkpoints (nothing to
    /// recover to, so nothing to wait for) and for replays.
    pub fn publish(&mut self, id: u64, watermark_ms: u64) -> Result<Precommitted, ConnectorError> {
        let done = self.precommit(id, watermark_ms)?;
        self.commit_through(id)?;
        Ok(done)
    }

    fn pending_root(&self) -> PathBuf {
        self.root.join(PENDING_DIR).join(&self.writer)
    }

    fn pending_dir(&self, checkpoint: u64) -> PathBuf {
        self.pending_root().join(format!("c{checkpoint:020}"))
    }

    /// This writer's pending checkpoints, by id.
    fn pending_checkpoints(&self) -> Result<Vec<(u64, PathBuf)>, ConnectorError> {
        let dir = self.pending_root();
        let mut found = Vec::new();
        for (name, path) in list_dir(&dir)? {
            match name.strip_prefix('c').and_then(|id| id.parse::<u64>().ok()) {
                Some(id) => found.push((id, path)),
                None => tracing::warn!(
                    path = %path.display(),
                    "curated: ignoring an unexpected entry in the pending directory"
                ),
            }
        }
        found.sort();
        Ok(found)
    }

    /// Moves every file of one pending checkpoint to its visible place (replacing what a
    /// compacted file replaces), then removes the pending directory.
    fn commit_pending(&mut self, dir: &Path) -> Result<(), ConnectorError> {
        let mut files = Vec::new();
        collect_files(dir, Path::new(""), &mut files)?;
        files.sort();
        let mut synced = BTreeSet::new();
        // Compactions first: the parts a compacted file replaces are removed before it appears,
        // so a reader never sees a row twice (a crash in between hides the hour's rows until the
        // next start finishes this commit).
        for relative in files.iter().filter(|f| is_sidecar(f)) {
            let parquet = sidecar_target(relative);
            let target_dir = self.root.join(relative.parent().unwrap_or(Path::new("")));
            let partition_dir = relative.parent().unwrap_or(Path::new(""));
            for replaced in read_replaced(&dir.join(relative))? {
                self.unpublish(&partition_dir.join(&replaced))?;
                remove_file(&target_dir.join(replaced))?;
            }
            self.rename_visible(dir, &parquet, &mut synced)?;
            remove_file(&dir.join(relative))?;
        }
        for relative in files.iter().filter(|f| !is_sidecar(f)) {
            self.rename_visible(dir, relative, &mut synced)?;
        }
        for target_dir in &synced {
            parquet_file::sync_dir(target_dir)?;
        }
        remove_dir_all(dir)
    }

    /// Renames `dir/relative` to `root/relative` unless it was moved already; remembers the
    /// directory to sync and the hour for compaction.
    fn rename_visible(
        &mut self,
        dir: &Path,
        relative: &Path,
        synced: &mut BTreeSet<PathBuf>,
    ) -> Result<(), ConnectorError> {
        let from = dir.join(relative);
        let to = self.root.join(relative);
        if from.exists() {
            self.publish_copy(relative, &from)?;
        }
        let target_dir = to.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&target_dir).map_err(|source| ConnectorError::CreateDir {
            path: target_dir.clone(),
            source,
        })?;
        match fs::rename(&from, &to) {
            Ok(()) => {}
            // Moved by an earlier, interrupted commit.
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(ConnectorError::Write { path: to, source }),
        }
        if let Some(hour) = compaction::partition_of(relative)
            && !compaction::is_compacted_name(relative)
        {
            self.hours.insert(hour);
        }
        synced.insert(target_dir);
        Ok(())
    }
}

impl CuratedCommitter {
    /// Uploads `local` to the mirror under `relative` (nothing without a mirror).
    fn publish_copy(&self, relative: &Path, local: &Path) -> Result<(), ConnectorError> {
        let Some(mirror) = &self.mirror else {
            return Ok(());
        };
        let bytes = fs::read(local).map_err(|source| ConnectorError::Open {
            path: local.to_path_buf(),
            source,
        })?;
        let key = mirror_key(relative);
        mirror
            .put(&key, &bytes, false)
            .map_err(|error| mirror_error(mirror.as_ref(), "uploading", &key, &error))
    }

    /// Deletes `relative` from the mirror (nothing without a mirror; a missing object is fine).
    fn unpublish(&self, relative: &Path) -> Result<(), ConnectorError> {
        let Some(mirror) = &self.mirror else {
            return Ok(());
        };
        let key = mirror_key(relative);
        mirror
            .delete(std::slice::from_ref(&key))
            .map_err(|error| mirror_error(mirror.as_ref(), "deleting", &key, &error))
    }
}

/// The mirror's key of a path under `curated/` (always `/`-separated).
fn mirror_key(relative: &Path) -> String {
    relative
        .iter()
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn mirror_error(
    mirror: &dyn CheckpointStore,
    what: &str,
    key: &str,
    error: &StoreError,
) -> ConnectorError {
    ConnectorError::Aws {
        what: format!("{what} the curated file `{key}` in {}", mirror.location()),
        message: format!(
            "{error}; the pending file stays and is published again at the next commit or start"
        ),
        retryable: error.is_retryable(),
    }
}

/// The name of the file a pre-commit writes for `partition` at `checkpoint`.
pub fn part_name(partition: &Partition, checkpoint: u64, writer: &str) -> String {
    format!(
        "part-{:02}-c{checkpoint:020}-{writer}.parquet",
        partition.hour_of_day()
    )
}

fn is_sidecar(path: &Path) -> bool {
    path.to_string_lossy().ends_with(REPLACES_SUFFIX)
}

fn sidecar_target(sidecar: &Path) -> PathBuf {
    let text = sidecar.to_string_lossy();
    PathBuf::from(text.strip_suffix(REPLACES_SUFFIX).unwrap_or(&text))
}

fn read_replaced(sidecar: &Path) -> Result<Vec<String>, ConnectorError> {
    let text = match fs::read_to_string(sidecar) {
        Ok(text) => text,
        Err(source) => {
            return Err(ConnectorError::Open {
                path: sidecar.to_path_buf(),
                source,
            });
        }
    };
    Ok(text
        .lines()
        .map(str::trim)
        // Only plain names of parts in the same directory, never a path elsewhere.
        .filter(|name| !name.is_empty() && !name.contains('/') && name.starts_with("part-"))
        .map(String::from)
        .collect())
}

/// The entries of `dir` (none if it does not exist), by name.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, ConnectorError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConnectorError::Open {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConnectorError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        found.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    found.sort();
    Ok(found)
}

/// Every file under `dir`, relative to the walk's start.
fn collect_files(
    dir: &Path,
    relative: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<(), ConnectorError> {
    for (name, path) in list_dir(&dir.join(relative))? {
        let child = relative.join(&name);
        if path.is_dir() {
            collect_files(dir, &child, files)?;
        } else {
            files.push(child);
        }
    }
    Ok(())
}

/// Deletes every `.tmp-` file under `dir` (left by a crash in the middle of a write).
fn delete_temporaries(dir: &Path) -> Result<(), ConnectorError> {
    for (name, path) in list_dir(dir)? {
        if path.is_dir() {
            delete_temporaries(&path)?;
        } else if name.starts_with(TEMP_PREFIX) {
            remove_file(&path)?;
        }
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), ConnectorError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ConnectorError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn remove_dir_all(path: &Path) -> Result<(), ConnectorError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ConnectorError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}
