//! [`CheckpointStore`]: where checkpoint objects live, a small key-value store of immutable
//! objects with atomic and create-only writes; [`StoreError`] says what went wrong and whether a
//! retry can help. The two stores are [`super::LocalDirStore`] and [`super::S3Store`].

use std::io;
use std::path::PathBuf;

use crate::error::io_error_is_transient;

/// The prefix of temporary files of [`super::LocalDirStore`]; no key may have a component starting so.
pub(super) const TEMP_PREFIX: &str = ".tmp-";

/// Where checkpoint objects live: a small key-value store of immutable objects.
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Writes `bytes` under `key` atomically (readers see all of it or nothing). With `create_only`,
    /// fails with [`StoreError::AlreadyExists`] if the key exists (local: hard-link of a temp file;
    /// S3: `If-None-Match: *`).
    fn put(&self, key: &str, bytes: &[u8], create_only: bool) -> Result<(), StoreError>;
    /// The object's bytes, or `None` if it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key that starts with `prefix` (relative keys, sorted).
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes the keys (missing ones are fine).
    fn delete(&self, keys: &[String]) -> Result<(), StoreError>;
    /// Where this store is, for log lines and error messages, e.g. `s3://bucket/prefix` or a path.
    fn location(&self) -> String;
}

/// A failure of a [`CheckpointStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A create-only write found the key already there.
    #[error(
        "`{key}` already exists and was not replaced; another writer created it first (is a second \
         job writing to the same checkpoint location?)"
    )]
    AlreadyExists {
        /// The key, relative to the store.
        key: String,
    },
    /// A local file or directory operation failed.
    #[error(
        "cannot {action} `{}`: {source}; check that the checkpoint directory is writable and has \
         free space",
        path.display()
    )]
    Io {
        /// What was being done, e.g. `write`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// S3 refused a request in a way no retry fixes, or kept failing.
    #[error(
        "{what}: {message}; check that the bucket exists, the region and endpoint, and that the IAM \
         role may s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject there"
    )]
    Aws {
        /// What was being done, e.g. `writing s3://bucket/prefix/chk-…/MANIFEST.json`.
        what: String,
        /// The service's error code and message.
        message: String,
        /// Whether trying again later may work.
        retryable: bool,
    },
    /// A key that the stores cannot hold (a bug in the caller, not a problem of the store).
    #[error(
        "invalid checkpoint object key {key:?}: {reason}; keys are relative paths of non-empty \
         components separated by `/`"
    )]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl StoreError {
    /// Whether trying the same operation again may succeed: transient I/O errors, throttling,
    /// server errors and timeouts. An existing key, a missing permission or bucket, or an invalid
    /// key is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::AlreadyExists { .. } | StoreError::InvalidKey { .. } => false,
            StoreError::Io { source, .. } => io_error_is_transient(source),
            StoreError::Aws { retryable, .. } => *retryable,
        }
    }
}

/// Checks that `key` is a relative path of ordinary, non-empty components.
pub(super) fn validate_key(key: &str) -> Result<(), StoreError> {
    let invalid = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.contains('\\') || key.contains('\0') {
        return invalid("it contains a backslash or a NUL character");
    }
    for component in key.split('/') {
        if component.is_empty() {
            return invalid("it has an empty component (a leading, trailing or doubled `/`)");
        }
        if component == "." || component == ".." {
            return invalid("it has a `.` or `..` component");
        }
        if component.starts_with(TEMP_PREFIX) {
            return invalid(
                "a component starts with `.tmp-`, which is reserved for temporary files",
            );
        }
    }
    Ok(())
}
