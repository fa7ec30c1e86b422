//! [`LocalDirStore`]: checkpoint objects as files under a local directory, written atomically
//! (temporary file, sync, rename or hard link, sync of the directory).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::store::{CheckpointStore, StoreError, TEMP_PREFIX, validate_key};

/// Checkpoint objects as files under a local directory; keys are relative paths with `/` between
/// components.
///
/// A put writes a temporary file (`.tmp-…`) in the key's directory, syncs it, moves it into place
/// (`rename`, or `hard_link` for create-only writes, which fails if the name exists) and syncs the
/// directory, so that a crash leaves either the old state or the complete new file. A crash between
/// the two may leave a temporary file; [`CheckpointStore::list`] never shows it, and deleting the
/// last key of a directory removes such leftovers and the directory.
#[derive(Debug)]
pub struct LocalDirStore {
    dir: PathBuf,
}

/// Distinguishes the temporary files of concurrent puts in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalDirStore {
    /// A store in `dir`, which is created (with its parents) if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            action: "create directory",
            path: dir.clone(),
            source,
        })?;
        Ok(LocalDirStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, key: &str) -> PathBuf {
        key.split('/')
            .fold(self.dir.clone(), |path, component| path.join(component))
    }

    /// Creates `parent` (a directory under the root) if missing, and syncs the directories whose
    /// entries changed.
    fn ensure_parent(&self, parent: &Path) -> Result<(), StoreError> {
        if parent.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(parent).map_err(|source| StoreError::Io {
            action: "create directory",
            path: parent.to_path_buf(),
            source,
        })?;
        let mut changed = parent.parent();
        while let Some(dir) = changed {
            sync_dir(dir)?;
            if dir == self.dir {
                break;
            }
            changed = dir.parent();
        }
        Ok(())
    }

    /// Removes the directories from `dir` up to (not including) the root that hold nothing but
    /// temporary leftovers of interrupted puts.
    fn remove_empty_dirs(&self, mut dir: PathBuf) {
        while dir != self.dir && dir.starts_with(&self.dir) {
            let Ok(entries) = fs::read_dir(&dir) else {
                return;
            };
            let mut leftovers = Vec::new();
            for entry in entries {
                let Ok(entry) = entry else { return };
                if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    return;
                }
                leftovers.push(entry.path());
            }
            for leftover in leftovers {
                // Best effort: a leftover that stays only keeps its directory.
                let _ = fs::remove_file(leftover);
            }
            if fs::remove_dir(&dir).is_err() {
                return;
            }
            match dir.parent() {
                Some(parent) => dir = parent.to_path_buf(),
                None => return,
            }
        }
    }
}

/// Syncs a directory so that the names created or moved in it survive a crash (Unix only; other
/// systems have no portable way to do it).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    if cfg!(unix) {
        File::open(dir)
            .and_then(|handle| handle.sync_all())
            .map_err(|source| StoreError::Io {
                action: "sync directory",
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

impl CheckpointStore for LocalDirStore {
    fn put(&self, key: &str, bytes: &[u8], create_only: bool) -> Result<(), StoreError> {
        validate_key(key)?;
        let path = self.path_of(key);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        self.ensure_parent(&parent)?;
        let file_name = key.rsplit('/').next().unwrap_or(key);
        let temp = parent.join(format!(
            "{TEMP_PREFIX}{}-{}-{file_name}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let io_error = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };

        let written = File::create_new(&temp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .map_err(io_error("write", &temp));
        if let Err(error) = written {
            let _ = fs::remove_file(&temp);
            return Err(error);
        }

        if create_only {
            let linked = fs::hard_link(&temp, &path);
            // The temporary name is removed either way; failing to remove it leaves a leftover
            // that `list` ignores.
            let _ = fs::remove_file(&temp);
            match linked {
                Ok(()) => {}
                Err(source) if source.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::AlreadyExists {
                        key: key.to_string(),
                    });
                }
                Err(source) => return Err(io_error("create", &path)(source)),
            }
        } else if let Err(source) = fs::rename(&temp, &path) {
            let _ = fs::remove_file(&temp);
            return Err(io_error("replace", &path)(source));
        }
        sync_dir(&parent)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        validate_key(key)?;
        let path = self.path_of(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(source) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        // (directory, its key prefix with a trailing `/`, or empty for the root)
        let mut pending = vec![(self.dir.clone(), String::new())];
        while let Some((dir, dir_key)) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Deleted while listing: it holds nothing any more.
                Err(source) if source.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(StoreError::Io {
                        action: "list directory",
                        path: dir,
                        source,
                    });
                }
            };
            for entry in entries {
                let entry = entry.map_err(|source| StoreError::Io {
                    action: "list directory",
                    path: dir.clone(),
                    source,
                })?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue; // Not UTF-8: not a key this store wrote.
                };
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let key = format!("{dir_key}{name}");
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                if file_type.is_dir() {
                    let dir_prefix = format!("{key}/");
                    // Only descend where keys with the prefix can be.
                    if dir_prefix.starts_with(prefix) || prefix.starts_with(&dir_prefix) {
                        pending.push((entry.path(), dir_prefix));
                    }
                } else if file_type.is_file() && key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut parents = BTreeSet::new();
        for key in keys {
            validate_key(key)?;
            let path = self.path_of(key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(source) if source.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        action: "delete",
                        path,
                        source,
                    });
                }
            }
            if let Some(parent) = path.parent() {
                parents.insert(parent.to_path_buf());
            }
        }
        // Deepest first, so that a parent is emptied before it is looked at.
        for parent in parents.into_iter().rev() {
            self.remove_empty_dirs(parent);
        }
        Ok(())
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn local() -> Result<(tempfile::TempDir, LocalDirStore), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = LocalDirStore::new(dir.path().join("checkpoints"))?;
        Ok((dir, store))
    }

    #[test]
    fn checkpoint_store_create_only_put_of_an_existing_key_fails() -> TestResult {
        let (_dir, store) = local()?;
        store.put("a/b", b"one", true)?;
        let error = store.put("a/b", b"two", true);
        assert!(
            matches!(&error, Err(StoreError::AlreadyExists { key }) if key == "a/b"),
            "{error:?}"
        );
        assert_eq!(store.get("a/b")?, Some(b"one".to_vec()));
        store.put("a/b", b"three", false)?;
        assert_eq!(store.get("a/b")?, Some(b"three".to_vec()));
        assert_eq!(store.list("")?, vec!["a/b"], "no temporary files are left");
        assert_eq!(store.get("a/c")?, None);
        store.delete(&["a/b".to_string(), "a/missing".to_string()])?;
        assert!(store.list("")?.is_empty());
        assert_eq!(
            fs::read_dir(store.dir())?.count(),
            0,
            "deleting the last key of a directory removes the directory"
        );
        Ok(())
    }

    #[test]
    fn checkpoint_store_rejects_bad_keys() -> TestResult {
        let (_dir, store) = local()?;
        for key in ["", "/a", "a//b", "a/../b", "a/", ".tmp-x", "a\\b"] {
            assert!(
                matches!(
                    store.put(key, b"x", false),
                    Err(StoreError::InvalidKey { .. })
                ),
                "{key:?}"
            );
        }
        assert!(store.list("")?.is_empty(), "nothing was written");
        Ok(())
    }

    #[test]
    fn checkpoint_store_list_filters_by_prefix() -> TestResult {
        let (_dir, store) = local()?;
        for key in ["chk-1/a", "chk-1/b", "chk-2/a", "other/x", "top"] {
            store.put(key, key.as_bytes(), false)?;
        }
        assert_eq!(store.list("chk-1/")?, vec!["chk-1/a", "chk-1/b"]);
        assert_eq!(store.list("chk-")?, vec!["chk-1/a", "chk-1/b", "chk-2/a"]);
        assert_eq!(store.list("t")?, vec!["top"]);
        assert_eq!(store.list("chk-2/a")?, vec!["chk-2/a"]);
        assert_eq!(store.list("")?.len(), 5);
        Ok(())
    }
}
