//! An exclusive lock on a local directory, held while a job writes there.
//!
//! Two jobs on one data directory append to the same features file and race on the same
//! checkpoints: the second must refuse to start, and say who holds the directory. The lock is an
//! advisory `flock` on `<dir>/.pageflow.lock` (`File::try_lock`): the operating system releases it
//! when its holder exits, however it exits (kill -9 included), so a crash never leaves a stale lock
//! behind. The file also says who holds it (process id, host, start time), for the refusal.
//!
//! ```
//! use pageflow_connectors::dir_lock::DirLock;
//! let dir = tempfile::tempdir()?;
//! let first = DirLock::acquire(dir.path(), "the first job")?;
//! let refused = DirLock::acquire(dir.path(), "the second job").err().map(|e| e.to_string());
//! assert!(refused.is_some_and(|message| message.contains("the first job")));
//! drop(first);
//! DirLock::acquire(dir.path(), "the second job")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::ConnectorError;

/// The lock file's name inside a locked directory.
pub const LOCK_FILE_NAME: &str = ".pageflow.lock";

/// A directory held exclusively until this is dropped.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    /// Open for as long as the lock is held: closing it releases the lock.
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, recording `holder` (who this process is) in the
    /// lock file. [`ConnectorError::DirectoryInUse`] names the current holder when another
    /// process (or another lock in this one) holds it.
    pub fn acquire(dir: &Path, holder: &str) -> Result<DirLock, ConnectorError> {
        std::fs::create_dir_all(dir).map_err(|source| ConnectorError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(LOCK_FILE_NAME);
        let open_error = |source| ConnectorError::Open {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut recorded = String::new();
                // Best effort: the refusal is what matters, the name only helps.
                let _ = file.read_to_string(&mut recorded);
                let recorded = recorded.trim();
                return Err(ConnectorError::DirectoryInUse {
                    dir: dir.to_path_buf(),
                    holder: if recorded.is_empty() {
                        "another process that did not say who it is".to_string()
                    } else {
                        recorded.to_string()
                    },
                });
            }
            Err(TryLockError::Error(source)) => return Err(open_error(source)),
        }
        let write_error = |source| ConnectorError::Write {
            path: path.clone(),
            source,
        };
        file.set_len(0).map_err(write_error)?;
        file.seek(SeekFrom::Start(0)).map_err(write_error)?;
        file.write_all(format!("{holder}\n").as_bytes())
            .map_err(write_error)?;
        Ok(DirLock {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// The directory held.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Who this process is, for a lock file: process id, host and start time (ms since the epoch).
pub fn this_process(what: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "an unnamed host".to_string());
    let started_ms = pageflow_dataflow::clock::unix_now_ms();
    format!(
        "{what} (process {} on {host}, started at {started_ms} ms since the epoch)",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_directory_is_refused_with_its_holder_until_released()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let held = DirLock::acquire(&data, &this_process("pageflow run"))?;
        assert_eq!(held.dir(), data);
        let error = match DirLock::acquire(&data, "a second job") {
            Ok(_) => return Err("a second lock on a held directory succeeded".into()),
            Err(error) => error,
        };
        assert!(!error.is_retryable());
        let message = error.to_string();
        assert!(message.contains("pageflow run (process "), "{message}");
        assert!(message.contains(&data.display().to_string()), "{message}");
        drop(held);
        let again = DirLock::acquire(&data, "a second job")?;
        let recorded = std::fs::read_to_string(data.join(LOCK_FILE_NAME))?;
        assert_eq!(
            recorded, "a second job\n",
            "the new holder replaces the old one"
        );
        drop(again);
        Ok(())
    }
}
