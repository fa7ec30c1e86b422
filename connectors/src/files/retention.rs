//! Retention for the local sinks' files: what a Flink or Kafka user expects of a rolling file sink.
//!
//! The local sinks write files that only grow: the layered archive (one file per layer, portal and
//! event hour, so rolled by time already), the features stream (`features.jsonl`, rolled by size
//! and age by [`crate::FeatureFileSink`]) and the dead letters (the archive's `dead-letter/` layer).
//! Left alone they fill a laptop's disk (the archive alone takes about 1.4 GB per hour at the
//! default synthetic rate). Retention deletes **closed** files, oldest first:
//!
//! - every closed file last written more than [`RetentionPolicy::max_age`] ago;
//! - then, while all the files together (open ones included) are over
//!   [`RetentionPolicy::max_bytes`], the least recently written closed file.
//!
//! A file being written is never deleted, even when it alone is over the budget: retention only
//! frees what no writer holds (as Kafka never deletes the active segment). Age is measured from a
//! file's modification time to a `now` the caller passes in, so tests move time without sleeping.
//! A deleted archive file that receives a late record later is simply created again.
//!
//! [`plan`] decides (a pure function over [`FileEntry`]s); [`enforce`] scans the directories,
//! deletes what the plan says, removes directories it emptied and logs each deletion.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How much of the local sinks' output is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The most bytes all the files may take together; `None`: no limit.
    pub max_bytes: Option<u64>,
    /// The longest a closed file is kept after its last write; `None`: no limit.
    pub max_age: Option<Duration>,
}

impl RetentionPolicy {
    /// Keeps everything.
    pub const UNLIMITED: RetentionPolicy = RetentionPolicy {
        max_bytes: None,
        max_age: None,
    };
}

/// One file under retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its last write.
    pub modified: SystemTime,
    /// Whether a writer has it open (then it is never deleted).
    pub open: bool,
}

/// What one pass of retention deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The files deleted, with their sizes, oldest first.
    pub files: Vec<(PathBuf, u64)>,
}

impl Deleted {
    /// The bytes freed.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, bytes)| bytes).sum()
    }
}

/// Which of `files` to delete under `policy` at `now`: indexes into `files`, oldest first.
pub fn plan(files: &[FileEntry], policy: &RetentionPolicy, now: SystemTime) -> Vec<usize> {
    let mut closed: Vec<usize> = (0..files.len()).filter(|&i| !files[i].open).collect();
    // Oldest first; the path breaks ties so that the order does not depend on the scan.
    closed.sort_by(|&a, &b| {
        (files[a].modified, &files[a].path).cmp(&(files[b].modified, &files[b].path))
    });
    let mut total: u64 = files.iter().map(|f| f.bytes).sum();
    let mut doomed = Vec::new();
    for index in closed {
        let file = &files[index];
        // A modification time in the future (a clock step) counts as new.
        let age = now.duration_since(file.modified).unwrap_or_default();
        let too_old = policy.max_age.is_some_and(|max| age > max);
        let over_budget = policy.max_bytes.is_some_and(|max| total > max);
        if too_old || over_budget {
            total -= file.bytes;
            doomed.push(index);
        } else {
            // The rest are newer (and the total is within the budget).
            break;
        }
    }
    doomed
}

/// The files of a sink's directory that retention manages.
#[derive(Clone, Debug)]
pub struct ManagedFiles {
    /// Directories whose `.jsonl` files, at any depth, are managed (the archive).
    pub trees: Vec<PathBuf>,
    /// Single files or rolled files: `(directory, file-name prefix)`; the directory's `.jsonl`
    /// files starting with the prefix are managed (the features file and its rolled files).
    pub named: Vec<(PathBuf, String)>,
}

/// Scans `managed`, deletes what [`plan`] says (never a path in `open`), removes the directories
/// the deletions emptied (below the trees' roots), and logs each deletion. A file that cannot be
/// read or deleted is logged and skipped: retention never stops the job.
pub fn enforce(
    managed: &ManagedFiles,
    open: &[&Path],
    policy: &RetentionPolicy,
    now: SystemTime,
) -> Deleted {
    if *policy == RetentionPolicy::UNLIMITED {
        return Deleted::default();
    }
    let mut files = Vec::new();
    for tree in &managed.trees {
        collect_tree(tree, open, &mut files);
    }
    for (dir, prefix) in &managed.named {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(prefix.as_str()) && name.ends_with(".jsonl") {
                push_file(entry.path(), open, &mut files);
            }
        }
    }
    let mut deleted = Deleted::default();
    for index in plan(&files, policy, now) {
        let file = &files[index];
        match std::fs::remove_file(&file.path) {
            Ok(()) => {
                tracing::info!(
                    file = %file.path.display(),
                    bytes = file.bytes,
                    "retention deleted a closed sink file (see [sinks.retention])"
                );
                deleted.files.push((file.path.clone(), file.bytes));
                remove_empty_parents(&file.path, &managed.trees);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                file = %file.path.display(),
                "retention cannot delete a sink file: {error}; check the permissions of [sinks] dir"
            ),
        }
    }
    deleted
}

/// Adds every `.jsonl` file under `dir` (at any depth) to `files`.
fn collect_tree(dir: &Path, open: &[&Path], files: &mut Vec<FileEntry>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => collect_tree(&path, open, files),
            Ok(kind) if kind.is_file() && path.extension().is_some_and(|e| e == "jsonl") => {
                push_file(path, open, files);
            }
            _ => {}
        }
    }
}

fn push_file(path: PathBuf, open: &[&Path], files: &mut Vec<FileEntry>) {
    let Ok(metadata) = std::fs::metadata(&path) else {
        return; // deleted meanwhile
    };
    if !metadata.is_file() {
        return;
    }
    files.push(FileEntry {
        open: open.contains(&path.as_path()),
        bytes: metadata.len(),
        modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        path,
    });
}

/// Removes the now empty directories above `file`, up to (not including) the tree it is in.
fn remove_empty_parents(file: &Path, trees: &[PathBuf]) {
    let Some(root) = trees.iter().find(|tree| file.starts_with(tree)) else {
        return;
    };
    let mut dir = file.parent();
    while let Some(current) = dir {
        if current == root.as_path() || !current.starts_with(root) {
            break;
        }
        // Fails (and stops) when the directory is not empty.
        if std::fs::remove_dir(current).is_err() {
            break;
        }
        dir = current.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn entry(name: &str, bytes: u64, written: SystemTime, open: bool) -> FileEntry {
        FileEntry {
            path: PathBuf::from(name),
            bytes,
            modified: written,
            open,
        }
    }

    fn names(files: &[FileEntry], doomed: &[usize]) -> Vec<String> {
        doomed
            .iter()
            .map(|&i| files[i].path.display().to_string())
            .collect()
    }

    #[test]
    fn over_the_size_budget_the_oldest_closed_files_go_first_and_never_the_open_one() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let files = vec![
            entry("c", 100, t0 + 2 * HOUR, false),
            // The oldest of all, but being written.
            entry("open", 500, t0, true),
            entry("a", 100, t0 + HOUR, false),
            entry("d", 100, t0 + 3 * HOUR, false),
        ];
        let policy = RetentionPolicy {
            max_bytes: Some(650),
            max_age: None,
        };
        // 800 bytes in all: a and c (the oldest closed ones) go, leaving 600.
        assert_eq!(
            names(&files, &plan(&files, &policy, t0 + 4 * HOUR)),
            ["a", "c"]
        );
        // Even a budget the open file alone exceeds never deletes it.
        let tiny = RetentionPolicy {
            max_bytes: Some(1),
            max_age: None,
        };
        assert_eq!(
            names(&files, &plan(&files, &tiny, t0 + 4 * HOUR)),
            ["a", "c", "d"]
        );
    }

    #[test]
    fn files_older_than_max_age_go_as_the_injected_clock_moves() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let files = vec![
            entry("new", 10, t0 + 5 * HOUR, false),
            entry("old", 10, t0, false),
            entry("open-old", 10, t0, true),
        ];
        let policy = RetentionPolicy {
            max_bytes: None,
            max_age: Some(24 * HOUR),
        };
        assert!(plan(&files, &policy, t0 + 24 * HOUR).is_empty());
        assert_eq!(
            names(&files, &plan(&files, &policy, t0 + 25 * HOUR)),
            ["old"]
        );
        assert_eq!(
            names(&files, &plan(&files, &policy, t0 + 30 * HOUR)),
            ["old", "new"]
        );
        // A file written "in the future" (the clock stepped back) is not old.
        assert!(plan(&files, &policy, t0 - HOUR).is_empty());
    }

    #[test]
    fn enforce_deletes_closed_files_on_disk_and_their_emptied_directories()
    -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let archive = root.path().join("archive");
        let old_hour = archive.join("raw/portal=g1/date=2026-01-01/hour=00");
        let open_hour = archive.join("raw/portal=g1/date=2026-01-01/hour=01");
        std::fs::create_dir_all(&old_hour)?;
        std::fs::create_dir_all(&open_hour)?;
        let old = old_hour.join("part-local-0.jsonl");
        let open = open_hour.join("part-local-0.jsonl");
        std::fs::write(&old, "{}\n")?;
        std::fs::write(&open, "{}\n")?;
        let features = root.path().join("features.jsonl");
        let rolled = root.path().join("features-1.jsonl");
        std::fs::write(&features, "{}\n")?;
        std::fs::write(&rolled, "{}\n")?;
        // Not managed: the checkpoints under the same directory.
        std::fs::write(root.path().join("other.jsonl"), "{}\n")?;

        let managed = ManagedFiles {
            trees: vec![archive.clone()],
            named: vec![(root.path().to_path_buf(), "features".to_string())],
        };
        let policy = RetentionPolicy {
            max_bytes: None,
            max_age: Some(HOUR),
        };
        // Every file was just written: the clock is moved two hours on instead of sleeping.
        let later = SystemTime::now() + 2 * HOUR;
        let deleted = enforce(&managed, &[&open, &features], &policy, later);
        let mut gone: Vec<_> = deleted.files.iter().map(|(p, _)| p.clone()).collect();
        gone.sort();
        let mut expected = vec![old.clone(), rolled.clone()];
        expected.sort();
        assert_eq!(gone, expected);
        assert_eq!(deleted.bytes(), 6);
        assert!(!old_hour.exists(), "the emptied hour directory is removed");
        assert!(open.exists() && features.exists());
        assert!(archive.exists(), "the tree's root stays");
        assert!(root.path().join("other.jsonl").exists());
        Ok(())
    }
}
