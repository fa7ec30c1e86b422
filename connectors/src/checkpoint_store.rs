//! Checkpoints of the job's state: where they are stored, how they are laid out and committed, and
//! how a restart finds the newest good one.
//!
//! # Stores
//!
//! A [`CheckpointStore`] is a small key-value store of immutable objects: a local directory
//! ([`LocalDirStore`]) or an S3 bucket and prefix ([`S3Store`]). Every write is atomic (a reader
//! sees all of an object or nothing), and a write can be *create-only*: it fails with
//! [`StoreError::AlreadyExists`] instead of replacing an object that is already there (a hard link
//! of a temporary file on a local disk, `If-None-Match: *` on S3).
//!
//! # Layout
//!
//! Checkpoint `42` of a job with two workers is these objects:
//!
//! ```text
//! chk-00000000000000000042/worker-0.bin
//! chk-00000000000000000042/worker-1.bin
//! chk-00000000000000000042/MANIFEST.json
//! ```
//!
//! The id is zero-padded to 20 digits so that keys sort like ids. The parts' names and contents are
//! the job's business; the [`Manifest`] lists each with its size and SHA-256, along with the format
//! version, the number of workers, the fingerprint of the settings the state depends on, and free-form
//! facts for operators.
//!
//! # The manifest is the commit point
//!
//! [`Checkpoints::write`] writes every part first and the manifest last, create-only. A checkpoint
//! without a manifest is *torn* (the writer stopped half-way) and never used; once the manifest is
//! there, every part it names was already complete. Create-only writes also mean that a second
//! writer of the same id fails instead of mixing its parts with the first one's. After the commit,
//! checkpoints beyond the newest `keep` committed ones are deleted (manifest first, so that a delete
//! cut short leaves a torn checkpoint rather than a committed one with parts missing), and so are
//! the leftovers of torn checkpoints older than the one just written.
//!
//! # Fallback
//!
//! [`Checkpoints::load_latest`] tries checkpoints newest first. One that is torn, whose manifest does
//! not parse, or whose parts are missing or do not match the manifest's size or checksum is skipped
//! with a warning naming it and the problem, and the previous one is tried. Two things stop the
//! search instead of being skipped: a manifest in a format this build does not know
//! ([`CheckpointError::UnknownFormat`]: a newer release wrote it, and starting from an older state
//! would silently undo its work), and a store that fails (a transient S3 error must not make the
//! job fall back to older state). When committed checkpoints exist but none of them is usable, the
//! result is [`CheckpointError::NoneUsable`], not a fresh start: the operator decides.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//!
//! use pageflow_connectors::checkpoint_store::{Checkpoints, LocalDirStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("pageflow-doc-checkpoints-{}", std::process::id()));
//! let checkpoints = Checkpoints::new(Arc::new(LocalDirStore::new(&dir)?), 3);
//!
//! let id = checkpoints.next_id()?;
//! let parts = vec![("worker-0.bin".to_string(), b"state of worker 0".to_vec())];
//! let manifest = checkpoints.write(id, 1, "settings-v1", BTreeMap::new(), parts)?;
//! assert_eq!(manifest.parts[0].bytes, 17);
//!
//! let loaded = checkpoints.load_latest()?.ok_or("a checkpoint was just written")?;
//! assert_eq!(loaded.manifest.id, id);
//! assert_eq!(loaded.parts["worker-0.bin"], b"state of worker 0");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aws::retryable_service_code;
use crate::error::io_error_is_transient;
use crate::retry::{Backoff, Jitter};

/// Format of checkpoints this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The name of the manifest in a checkpoint's directory.
pub const MANIFEST_NAME: &str = "MANIFEST.json";

/// The prefix of a checkpoint's directory name; the id follows, zero-padded to 20 digits.
const CHECKPOINT_PREFIX: &str = "chk-";

/// The prefix of temporary files of [`LocalDirStore`]; no key may have a component starting so.
const TEMP_PREFIX: &str = ".tmp-";

/// The most keys one S3 `DeleteObjects` call takes.
const DELETE_CHUNK: usize = 1000;

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
fn validate_key(key: &str) -> Result<(), StoreError> {
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

// ---------------------------------------------------------------------------------------------
// Local directory
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------------------

/// Checkpoint objects in an S3 bucket under a prefix.
///
/// The methods are synchronous: each runs its requests with [`tokio::runtime::Handle::block_on`]
/// on the runtime given to [`S3Store::new`]. **They must not be called from inside a tokio runtime**
/// (an async task or a runtime worker thread: tokio panics); call them from the job's own threads
/// or from `tokio::task::spawn_blocking`. The runtime must be a multi-thread one (or a current-thread
/// one that another thread is driving), since `Handle::block_on` does not drive I/O itself.
///
/// Throttling, server errors, timeouts and transport failures are retried with
/// [`Backoff`] and [`Jitter`] (4 attempts by default, on top of the client's own retries and
/// within its timeouts). Create-only puts use `If-None-Match: *`; S3 answers 412 when the key
/// exists. Listing follows `ListObjectsV2` continuation tokens; deletes use `DeleteObjects` in
/// chunks of 1,000 keys.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Empty, or ending in `/`.
    prefix: String,
    runtime: tokio::runtime::Handle,
    attempts: u32,
    backoff: Backoff,
}

impl S3Store {
    /// A store of the objects under `prefix` (e.g. `checkpoints/job-1`; a trailing `/` is added) in
    /// `bucket`, making its requests on `runtime`.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let prefix = prefix.trim_start_matches('/');
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        S3Store {
            client,
            bucket: bucket.to_string(),
            prefix,
            runtime,
            attempts: 4,
            backoff: Backoff::default(),
        }
    }

    /// The same store retrying each request up to `attempts` times in all (at least 1), waiting
    /// `backoff` between attempts.
    pub fn with_retries(mut self, attempts: u32, backoff: Backoff) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn url_of(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    /// Runs `attempt` until it succeeds, fails in a way no retry fixes, or has failed
    /// `self.attempts` times, sleeping with backoff in between.
    fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut jitter = Jitter::new();
        let mut tries = 1;
        loop {
            match self.runtime.block_on(attempt()) {
                Err(error) if error.is_retryable() && tries < self.attempts => {
                    let delay = self.backoff.delay(tries, jitter.next_u64());
                    tracing::debug!(
                        location = %self.location(),
                        "checkpoint store request failed, retrying in {delay:?}: {error}"
                    );
                    std::thread::sleep(delay);
                    tries += 1;
                }
                Err(StoreError::Aws {
                    what,
                    message,
                    retryable: true,
                }) if tries > 1 => {
                    return Err(StoreError::Aws {
                        what,
                        message: format!("{message} (gave up after {tries} attempts)"),
                        retryable: true,
                    });
                }
                other => return other,
            }
        }
    }
}

/// What an S3 SDK error was: its message, whether a retry may help, and the HTTP status when the
/// service answered.
fn classify_s3<E>(error: &SdkError<E>) -> (String, bool, Option<u16>)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("Unknown").to_string();
            let message = service.err().message().unwrap_or_default().to_string();
            let retryable = retryable_service_code(&code) || status >= 500 || status == 429;
            (
                format!("{code} (HTTP {status}): {message}"),
                retryable,
                Some(status),
            )
        }
        SdkError::TimeoutError(_) => ("the request timed out".to_string(), true, None),
        SdkError::DispatchFailure(failure) => (
            format!("the request could not be sent: {failure:?}"),
            true,
            None,
        ),
        SdkError::ResponseError(_) => ("the response could not be read".to_string(), true, None),
        other => (other.to_string(), false, None),
    }
}

fn aws_error<E>(what: String, error: &SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (message, retryable, _) = classify_s3(error);
    StoreError::Aws {
        what,
        message,
        retryable,
    }
}

impl CheckpointStore for S3Store {
    fn put(&self, key: &str, bytes: &[u8], create_only: bool) -> Result<(), StoreError> {
        validate_key(key)?;
        let full_key = self.full_key(key);
        self.run(|| {
            let mut request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .body(ByteStream::from(bytes.to_vec()));
            if create_only {
                request = request.if_none_match("*");
            }
            let key = key.to_string();
            let what = format!("writing {}", self.url_of(&key));
            async move {
                match request.send().await {
                    Ok(_) => Ok(()),
                    Err(error) => {
                        let (message, retryable, status) = classify_s3(&error);
                        if create_only && status == Some(412) {
                            Err(StoreError::AlreadyExists { key })
                        } else {
                            Err(StoreError::Aws {
                                what,
                                message,
                                retryable,
                            })
                        }
                    }
                }
            }
        })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        validate_key(key)?;
        let full_key = self.full_key(key);
        self.run(|| {
            let request = self.client.get_object().bucket(&self.bucket).key(&full_key);
            let what = format!("reading {}", self.url_of(key));
            async move {
                let output = match request.send().await {
                    Ok(output) => output,
                    Err(error) => {
                        // Only a missing key: a missing bucket (also a 404) is an error.
                        let missing = error.as_service_error().is_some_and(|service| {
                            service.is_no_such_key() || service.code() == Some("NoSuchKey")
                        });
                        return if missing {
                            Ok(None)
                        } else {
                            Err(aws_error(what, &error))
                        };
                    }
                };
                match output.body.collect().await {
                    Ok(body) => Ok(Some(body.into_bytes().to_vec())),
                    Err(error) => Err(StoreError::Aws {
                        what,
                        message: format!("the body could not be read: {error}"),
                        retryable: true,
                    }),
                }
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full_prefix = self.full_key(prefix);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.run(|| {
                let request = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full_prefix)
                    .set_continuation_token(token.clone());
                let what = format!("listing s3://{}/{full_prefix}", self.bucket);
                async move {
                    request
                        .send()
                        .await
                        .map_err(|error| aws_error(what, &error))
                }
            })?;
            keys.extend(page.contents().iter().filter_map(|object| {
                object
                    .key()
                    .and_then(|key| key.strip_prefix(&self.prefix))
                    .map(str::to_string)
            }));
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() || page.is_truncated() == Some(false) {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            validate_key(key)?;
        }
        for chunk in keys.chunks(DELETE_CHUNK) {
            let mut objects = Vec::with_capacity(chunk.len());
            for key in chunk {
                let object = ObjectIdentifier::builder()
                    .key(self.full_key(key))
                    .build()
                    .map_err(|error| StoreError::Aws {
                        what: format!("deleting {}", self.url_of(key)),
                        message: error.to_string(),
                        retryable: false,
                    })?;
                objects.push(object);
            }
            let what = format!(
                "deleting {} objects under s3://{}/{}",
                chunk.len(),
                self.bucket,
                self.prefix
            );
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|error| StoreError::Aws {
                    what: what.clone(),
                    message: error.to_string(),
                    retryable: false,
                })?;
            self.run(|| {
                let request = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete.clone());
                let what = what.clone();
                async move {
                    let output = request
                        .send()
                        .await
                        .map_err(|error| aws_error(what.clone(), &error))?;
                    let failed: Vec<_> = output
                        .errors()
                        .iter()
                        .filter(|error| error.code() != Some("NoSuchKey"))
                        .collect();
                    if failed.is_empty() {
                        return Ok(());
                    }
                    let retryable = failed
                        .iter()
                        .all(|error| error.code().is_some_and(retryable_service_code));
                    let first = failed
                        .iter()
                        .take(3)
                        .map(|error| {
                            format!(
                                "{}: {} {}",
                                error.key().unwrap_or("?"),
                                error.code().unwrap_or("Unknown"),
                                error.message().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    Err(StoreError::Aws {
                        what,
                        message: format!("{} keys were not deleted ({first})", failed.len()),
                        retryable,
                    })
                }
            })?;
        }
        Ok(())
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------

/// One part of a checkpoint in its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// The part's name in the checkpoint's directory, e.g. `worker-0.bin`.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// The commit record of a checkpoint, written last (as pretty JSON) at
/// `chk-<id:020>/MANIFEST.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format of the checkpoint; this build reads and writes [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The checkpoint's id (the number in its directory's name).
    pub id: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// How many workers wrote it.
    pub workers: usize,
    /// Fingerprint of the settings the state depends on; the job refuses a mismatch (opaque here).
    pub fingerprint: String,
    /// Every part, with its size and checksum.
    pub parts: Vec<PartInfo>,
    /// Free-form facts for operators and tools (watermark, sources, sizes), opaque here.
    pub info: BTreeMap<String, String>,
}

/// A checkpoint read back and verified.
#[derive(Clone, PartialEq, Eq)]
pub struct LoadedCheckpoint {
    /// Its manifest.
    pub manifest: Manifest,
    /// Every part's bytes by name.
    pub parts: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for LoadedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The parts' sizes, not their (possibly huge) bytes.
        let sizes: BTreeMap<&String, usize> = self
            .parts
            .iter()
            .map(|(name, bytes)| (name, bytes.len()))
            .collect();
        f.debug_struct("LoadedCheckpoint")
            .field("manifest", &self.manifest)
            .field("part_sizes", &sizes)
            .finish()
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
}

/// The state of a checkpoint in [`Checkpoints::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointStatus {
    /// Its manifest parses, is in this build's format, and every part it names is present.
    Committed,
    /// It has no manifest: its write did not finish.
    Torn,
    /// It has a manifest but cannot be used; the reason says why.
    Corrupt(String),
}

/// A failure of [`Checkpoints`].
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed.
    #[error("checkpoint store: {0}")]
    Store(#[from] StoreError),
    /// The newest committed checkpoint is in a format this build cannot read.
    #[error(
        "checkpoint {id} at {location} is in format {found}, but this build of pageflow reads format \
         {supported}; run the pageflow release that wrote it, or move that checkpoint (chk-{id:020}) \
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
            CheckpointError::UnknownFormat { .. }
            | CheckpointError::NoneUsable { .. }
            | CheckpointError::Conflict { .. }
            | CheckpointError::Invalid { .. } => false,
        }
    }
}

/// The directory (key prefix without the `/`) of checkpoint `id`.
fn checkpoint_dir(id: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{id:020}")
}

/// The key of `name` in checkpoint `id`.
fn key_of(id: u64, name: &str) -> String {
    format!("{}/{name}", checkpoint_dir(id))
}

/// The checkpoint id and the name within it of a key like `chk-00000000000000000042/worker-0.bin`;
/// `None` for keys that are not part of a checkpoint.
fn parse_key(key: &str) -> Option<(u64, &str)> {
    let (dir, name) = key.split_once('/')?;
    let digits = dir.strip_prefix(CHECKPOINT_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    Some((digits.parse().ok()?, name))
}

/// Lowercase hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

/// The SHA-256 of `bytes`, lowercase hex.
fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// What is wrong with a part name, if anything.
fn part_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name == MANIFEST_NAME {
        Some("MANIFEST.json is the manifest's name")
    } else if name.contains('/') || name.contains('\\') || name.contains('\0') {
        Some("it contains `/`, `\\` or NUL")
    } else if name.starts_with('.') {
        Some("it starts with `.`")
    } else {
        None
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
    /// Usable; the parts' bytes when they were read.
    Good(Manifest, BTreeMap<String, Vec<u8>>),
}

/// Checkpoint logic over any store: layout, manifest, checksums, retention, fallback.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Arc<dyn CheckpointStore>,
    keep: usize,
}

impl Checkpoints {
    /// Checkpoints in `store`, keeping the newest `keep` committed ones (at least 1).
    pub fn new(store: Arc<dyn CheckpointStore>, keep: usize) -> Self {
        Checkpoints {
            store,
            keep: keep.max(1),
        }
    }

    /// Where the checkpoints are.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Writes the parts, then the manifest (create-only: a second writer of the same id fails with
    /// [`CheckpointError::Conflict`]), then deletes checkpoints beyond the newest `keep` committed
    /// ones and the leftovers of torn checkpoints older than this one. `manifest.parts` is filled
    /// in here (sizes and SHA-256, in the order given). Returns the manifest written.
    ///
    /// Parts are written create-only too; an object that is already there with the same bytes (a
    /// retried request that had succeeded) is fine. A failure of the clean-up after the commit is
    /// logged and does not fail the write: the checkpoint is committed, and the next write cleans
    /// up again.
    pub fn write(
        &self,
        id: u64,
        workers: usize,
        fingerprint: &str,
        info: BTreeMap<String, String>,
        parts: Vec<(String, Vec<u8>)>,
    ) -> Result<Manifest, CheckpointError> {
        let mut names = BTreeSet::new();
        for (name, _) in &parts {
            if let Some(problem) = part_name_problem(name) {
                return Err(CheckpointError::Invalid {
                    id,
                    problem: format!("invalid part name {name:?}: {problem}"),
                });
            }
            if !names.insert(name.as_str()) {
                return Err(CheckpointError::Invalid {
                    id,
                    problem: format!("the part name {name:?} is used twice"),
                });
            }
        }

        let mut infos = Vec::with_capacity(parts.len());
        for (name, bytes) in &parts {
            self.put_create_only(id, &key_of(id, name), bytes)?;
            infos.push(PartInfo {
                name: name.clone(),
                bytes: bytes.len() as u64,
                sha256: sha256_hex(bytes),
            });
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id,
            created_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|since| since.as_millis() as u64)
                .unwrap_or(0),
            workers,
            fingerprint: fingerprint.to_string(),
            parts: infos,
            info,
        };
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|error| CheckpointError::Invalid {
                id,
                problem: format!("the manifest cannot be encoded: {error}"),
            })?;
        self.put_create_only(id, &key_of(id, MANIFEST_NAME), &json)?;

        if let Err(error) = self.prune(id) {
            tracing::warn!(
                checkpoint = id,
                location = %self.location(),
                "checkpoint {id} is committed, but deleting old checkpoints failed (the next \
                 checkpoint tries again): {error}"
            );
        }
        Ok(manifest)
    }

    /// A create-only put that accepts an object already there with the same bytes.
    fn put_create_only(&self, id: u64, key: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        match self.store.put(key, bytes, true) {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists { .. }) => {
                if self.store.get(key)?.as_deref() == Some(bytes) {
                    Ok(())
                } else {
                    Err(CheckpointError::Conflict {
                        id,
                        key: key.to_string(),
                        location: self.location(),
                    })
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The keys of every checkpoint present, by id: names within the checkpoint's directory.
    fn scan(&self) -> Result<BTreeMap<u64, BTreeSet<String>>, CheckpointError> {
        let mut present: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for key in self.store.list(CHECKPOINT_PREFIX)? {
            if let Some((id, name)) = parse_key(&key) {
                present.entry(id).or_default().insert(name.to_string());
            }
        }
        Ok(present)
    }

    /// Deletes committed checkpoints beyond the newest `keep` and torn ones older than `written`.
    fn prune(&self, written: u64) -> Result<(), CheckpointError> {
        let present = self.scan()?;
        let committed: Vec<u64> = present
            .iter()
            .rev()
            .filter(|(_, names)| names.contains(MANIFEST_NAME))
            .map(|(id, _)| *id)
            .collect();
        let kept: BTreeSet<u64> = committed.iter().take(self.keep).copied().collect();
        let doomed: Vec<(u64, &BTreeSet<String>)> = present
            .iter()
            .filter(|(id, names)| {
                !kept.contains(id) && (names.contains(MANIFEST_NAME) || **id < written)
            })
            .map(|(id, names)| (*id, names))
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        // Manifests first: a delete cut short leaves torn checkpoints, never committed ones with
        // parts missing.
        let manifests: Vec<String> = doomed
            .iter()
            .filter(|(_, names)| names.contains(MANIFEST_NAME))
            .map(|(id, _)| key_of(*id, MANIFEST_NAME))
            .collect();
        if !manifests.is_empty() {
            self.store.delete(&manifests)?;
        }
        let rest: Vec<String> = doomed
            .iter()
            .flat_map(|(id, names)| {
                names
                    .iter()
                    .filter(|name| name.as_str() != MANIFEST_NAME)
                    .map(|name| key_of(*id, name))
            })
            .collect();
        if !rest.is_empty() {
            self.store.delete(&rest)?;
        }
        tracing::debug!(
            location = %self.location(),
            "deleted checkpoints {:?}",
            doomed.iter().map(|(id, _)| *id).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// The id for the next checkpoint: one more than the largest id present (committed, torn or
    /// corrupt, so that ids never repeat), or 1 when there is none.
    pub fn next_id(&self) -> Result<u64, CheckpointError> {
        Ok(self
            .scan()?
            .keys()
            .next_back()
            .map_or(1, |id| id.saturating_add(1)))
    }

    /// Loads the newest good checkpoint, trying them newest first.
    ///
    /// A checkpoint with no manifest (a torn write), a manifest that does not parse or does not
    /// match its directory, a missing part, or a part whose size or checksum does not match is
    /// skipped with a warning saying which checkpoint, what is wrong, and which one is tried next.
    /// A manifest whose `format_version` is not [`FORMAT_VERSION`] is the error
    /// [`CheckpointError::UnknownFormat`]; a store failure is an error too (never a reason to fall
    /// back). `Ok(None)` when there is no committed checkpoint at all (nothing, or only torn ones);
    /// [`CheckpointError::NoneUsable`] when there are committed ones but every one is damaged.
    pub fn load_latest(&self) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
        let present = self.scan()?;
        let mut problems = Vec::new();
        for (&id, names) in present.iter().rev() {
            let problem = match self.inspect(id, names, true)? {
                Inspection::Good(manifest, parts) => {
                    return Ok(Some(LoadedCheckpoint { manifest, parts }));
                }
                Inspection::UnknownFormat(found) => {
                    return Err(CheckpointError::UnknownFormat {
                        id,
                        found,
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
            let next = match present.range(..id).next_back() {
                Some((older, _)) => format!("trying the previous one, {older}"),
                None => "no older checkpoint is left".to_string(),
            };
            tracing::warn!(
                checkpoint = id,
                location = %self.location(),
                "checkpoint {id} at {} {problem}; skipping it and {next}",
                self.location()
            );
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

    /// Every checkpoint present with its state, newest first (for `pageflow checkpoints list`).
    ///
    /// This is the cheap check: the manifest is read and parsed and each part it names must be
    /// present, but parts are not read, so sizes and checksums are not verified
    /// ([`Self::load_latest`] verifies them). A manifest in an unknown format is listed as
    /// [`CheckpointStatus::Corrupt`] with a reason that says so.
    pub fn list(&self) -> Result<Vec<CheckpointSummary>, CheckpointError> {
        let present = self.scan()?;
        let mut summaries = Vec::with_capacity(present.len());
        for (&id, names) in present.iter().rev() {
            let (status, manifest) = match self.inspect(id, names, false)? {
                Inspection::Good(manifest, _) => (CheckpointStatus::Committed, Some(manifest)),
                Inspection::Torn => (CheckpointStatus::Torn, None),
                Inspection::UnknownFormat(found) => (
                    CheckpointStatus::Corrupt(format!(
                        "written in format {found}; this build reads format {FORMAT_VERSION}"
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
                manifest,
            });
        }
        Ok(summaries)
    }

    /// Reads checkpoint `id`'s manifest and checks it; with `verify`, reads every part and checks
    /// its size and checksum, else only that each part is among `names`.
    fn inspect(
        &self,
        id: u64,
        names: &BTreeSet<String>,
        verify: bool,
    ) -> Result<Inspection, CheckpointError> {
        if !names.contains(MANIFEST_NAME) {
            return Ok(Inspection::Torn);
        }
        // Deleted since the listing: as good as torn.
        let Some(json) = self.store.get(&key_of(id, MANIFEST_NAME))? else {
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
        // The format first: a future format may have other fields.
        let Some(found) = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
        else {
            return Ok(Inspection::Corrupt(
                "its manifest has no numeric format_version".to_string(),
                None,
            ));
        };
        if found != u64::from(FORMAT_VERSION) {
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
        let corrupt = |reason: String| Ok(Inspection::Corrupt(reason, Some(manifest.clone())));
        if manifest.id != id {
            return corrupt(format!(
                "its manifest is that of checkpoint {}",
                manifest.id
            ));
        }
        let mut parts = BTreeMap::new();
        for part in &manifest.parts {
            if let Some(problem) = part_name_problem(&part.name) {
                return corrupt(format!(
                    "its manifest names a part {:?}: {problem}",
                    part.name
                ));
            }
            if !names.contains(&part.name) {
                return corrupt(format!("part {} is missing", part.name));
            }
            if !verify {
                continue;
            }
            let Some(bytes) = self.store.get(&key_of(id, &part.name))? else {
                return corrupt(format!("part {} is missing", part.name));
            };
            if bytes.len() as u64 != part.bytes {
                return corrupt(format!(
                    "part {} has {} bytes, its manifest says {}",
                    part.name,
                    bytes.len(),
                    part.bytes
                ));
            }
            let sha256 = sha256_hex(&bytes);
            if sha256 != part.sha256 {
                return corrupt(format!(
                    "part {} has SHA-256 {sha256}, its manifest says {}",
                    part.name, part.sha256
                ));
            }
            parts.insert(part.name.clone(), bytes);
        }
        Ok(Inspection::Good(manifest, parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn local() -> Result<(tempfile::TempDir, Arc<LocalDirStore>), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(LocalDirStore::new(dir.path().join("checkpoints"))?);
        Ok((dir, store))
    }

    fn parts_of(id: u64) -> Vec<(String, Vec<u8>)> {
        (0..2)
            .map(|worker| {
                (
                    format!("worker-{worker}.bin"),
                    format!("state of worker {worker} at checkpoint {id}").into_bytes(),
                )
            })
            .collect()
    }

    fn write(checkpoints: &Checkpoints, id: u64) -> Result<Manifest, CheckpointError> {
        let info = BTreeMap::from([("watermark".to_string(), format!("{}", id * 1000))]);
        checkpoints.write(id, 2, "fp", info, parts_of(id))
    }

    fn loaded_id(checkpoints: &Checkpoints) -> Result<Option<u64>, CheckpointError> {
        Ok(checkpoints.load_latest()?.map(|loaded| loaded.manifest.id))
    }

    #[test]
    fn checkpoint_store_round_trip_through_a_local_directory() -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 3);
        assert!(checkpoints.load_latest()?.is_none());
        assert_eq!(checkpoints.next_id()?, 1);

        let written = write(&checkpoints, 1)?;
        assert_eq!(written.format_version, FORMAT_VERSION);
        assert_eq!(written.parts.len(), 2);
        assert_eq!(written.parts[0].sha256, sha256_hex(&parts_of(1)[0].1));
        assert_eq!(written.parts[0].sha256.len(), 64);

        let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
        assert_eq!(loaded.manifest, written);
        assert_eq!(
            loaded.parts,
            parts_of(1).into_iter().collect::<BTreeMap<_, _>>()
        );
        assert_eq!(checkpoints.next_id()?, 2);
        assert_eq!(
            store.list("")?,
            vec![
                "chk-00000000000000000001/MANIFEST.json",
                "chk-00000000000000000001/worker-0.bin",
                "chk-00000000000000000001/worker-1.bin",
            ]
        );
        let summaries = checkpoints.list()?;
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].status, CheckpointStatus::Committed);
        assert_eq!(summaries[0].manifest.as_ref(), Some(&written));
        Ok(())
    }

    #[test]
    fn checkpoint_store_sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn checkpoint_store_keeps_only_the_newest_k() -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 2);
        for id in 1..=5 {
            write(&checkpoints, id)?;
        }
        let ids: Vec<u64> = checkpoints.list()?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![5, 4]);
        assert_eq!(store.list("")?.len(), 6, "two checkpoints of three objects");
        let dirs = fs::read_dir(store.dir())?.count();
        assert_eq!(dirs, 2, "deleted checkpoints leave no directories");
        assert_eq!(loaded_id(&checkpoints)?, Some(5));
        Ok(())
    }

    #[test]
    fn checkpoint_store_skips_a_torn_checkpoint() -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 3);
        write(&checkpoints, 1)?;
        // Checkpoint 2 stopped after its first part.
        store.put(&key_of(2, "worker-0.bin"), b"half", true)?;
        assert_eq!(loaded_id(&checkpoints)?, Some(1));
        assert_eq!(checkpoints.next_id()?, 3, "ids never repeat");
        let statuses: Vec<_> = checkpoints.list()?.into_iter().map(|s| s.status).collect();
        assert_eq!(
            statuses,
            vec![CheckpointStatus::Torn, CheckpointStatus::Committed]
        );

        // The next write cleans the torn leftovers up.
        write(&checkpoints, 3)?;
        let ids: Vec<u64> = checkpoints.list()?.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![3, 1]);
        Ok(())
    }

    #[test]
    fn checkpoint_store_only_torn_checkpoints_mean_none() -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 3);
        store.put(&key_of(7, "worker-0.bin"), b"half", false)?;
        assert!(checkpoints.load_latest()?.is_none());
        assert_eq!(checkpoints.next_id()?, 8);
        Ok(())
    }

    /// Writes checkpoints 1 and 2, damages 2 with `damage`, and checks that 1 is loaded and 2 is
    /// listed as corrupt with a reason containing `reason`.
    fn falls_back_after(
        damage: impl FnOnce(&LocalDirStore) -> TestResult,
        reason: &str,
    ) -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 3);
        write(&checkpoints, 1)?;
        write(&checkpoints, 2)?;
        damage(&store)?;
        assert_eq!(loaded_id(&checkpoints)?, Some(1));
        let summaries = checkpoints.list()?;
        assert_eq!(summaries[1].status, CheckpointStatus::Committed);
        // `list` does not read parts: only presence and the manifest are checked.
        if let CheckpointStatus::Corrupt(found) = &summaries[0].status {
            assert!(found.contains(reason), "{found}");
        }
        Ok(())
    }

    #[test]
    fn checkpoint_store_falls_back_after_a_flipped_byte() -> TestResult {
        falls_back_after(
            |store| {
                let path = store.path_of(&key_of(2, "worker-1.bin"));
                let mut bytes = fs::read(&path)?;
                bytes[3] ^= 0x01;
                fs::write(path, bytes)?;
                Ok(())
            },
            "SHA-256",
        )
    }

    #[test]
    fn checkpoint_store_falls_back_after_a_truncated_part() -> TestResult {
        falls_back_after(
            |store| {
                let path = store.path_of(&key_of(2, "worker-0.bin"));
                let bytes = fs::read(&path)?;
                fs::write(path, &bytes[..bytes.len() - 1])?;
                Ok(())
            },
            "bytes",
        )
    }

    #[test]
    fn checkpoint_store_falls_back_after_a_missing_part() -> TestResult {
        let (_dir, store) = local()?;
        falls_back_after(
            |store| Ok(store.delete(&[key_of(2, "worker-0.bin")])?),
            "missing",
        )?;
        // And `list` sees a missing part without reading anything.
        let checkpoints = Checkpoints::new(store.clone(), 3);
        write(&checkpoints, 1)?;
        store.delete(&[key_of(1, "worker-1.bin")])?;
        let summaries = checkpoints.list()?;
        assert_eq!(
            summaries[0].status,
            CheckpointStatus::Corrupt("part worker-1.bin is missing".to_string())
        );
        Ok(())
    }

    #[test]
    fn checkpoint_store_falls_back_after_a_manifest_that_is_not_json() -> TestResult {
        falls_back_after(
            |store| Ok(store.put(&key_of(2, MANIFEST_NAME), b"{\"format_version\": 1,", false)?),
            "not valid JSON",
        )
    }

    #[test]
    fn checkpoint_store_every_committed_checkpoint_damaged_is_an_error() -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 3);
        write(&checkpoints, 1)?;
        store.put(&key_of(1, MANIFEST_NAME), b"garbage", false)?;
        match checkpoints.load_latest() {
            Err(CheckpointError::NoneUsable { problems, .. }) => {
                assert_eq!(problems.len(), 1);
                assert!(problems[0].starts_with("checkpoint 1: "), "{problems:?}");
            }
            other => panic!("expected NoneUsable, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn checkpoint_store_unknown_format_is_a_hard_error() -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 3);
        write(&checkpoints, 1)?;
        let mut manifest = write(&checkpoints, 2)?;
        manifest.format_version = 2;
        store.put(
            &key_of(2, MANIFEST_NAME),
            &serde_json::to_vec(&manifest)?,
            false,
        )?;
        let error = match checkpoints.load_latest() {
            Err(error) => error,
            Ok(loaded) => panic!("expected UnknownFormat, got {loaded:?}"),
        };
        assert!(
            matches!(
                error,
                CheckpointError::UnknownFormat {
                    id: 2,
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        for needle in ["checkpoint 2", "format 2", "format 1", "release", "move"] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        assert!(!error.is_retryable());
        Ok(())
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
        Ok(())
    }

    #[test]
    fn checkpoint_store_second_writer_of_an_id_conflicts() -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 3);
        write(&checkpoints, 1)?;
        let mut other = parts_of(1);
        other[0].1.push(b'!');
        let error = checkpoints.write(1, 2, "fp", BTreeMap::new(), other);
        assert!(
            matches!(&error, Err(CheckpointError::Conflict { id: 1, key, .. })
                if key.ends_with("worker-0.bin")),
            "{error:?}"
        );
        // The same bytes again (a retried request that had succeeded) are fine up to the manifest,
        // whose creation time differs.
        let error = write(&checkpoints, 1);
        assert!(
            matches!(&error, Err(CheckpointError::Conflict { key, .. })
                if key.ends_with(MANIFEST_NAME)),
            "{error:?}"
        );
        assert_eq!(loaded_id(&checkpoints)?, Some(1));
        Ok(())
    }

    #[test]
    fn checkpoint_store_next_id_counts_torn_leftovers() -> TestResult {
        let (_dir, store) = local()?;
        let checkpoints = Checkpoints::new(store.clone(), 3);
        write(&checkpoints, 4)?;
        assert_eq!(checkpoints.next_id()?, 5);
        store.put(&key_of(9, "worker-1.bin"), b"x", true)?;
        assert_eq!(checkpoints.next_id()?, 10);
        // Keys that are not checkpoints are ignored.
        store.put("notes.txt", b"hello", false)?;
        store.put("chk-12/worker-0.bin", b"short id", false)?;
        assert_eq!(checkpoints.next_id()?, 10);
        Ok(())
    }

    #[test]
    fn checkpoint_store_rejects_bad_keys_and_part_names() -> TestResult {
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
        let checkpoints = Checkpoints::new(store.clone(), 3);
        for name in ["", "MANIFEST.json", "a/b", ".hidden"] {
            let parts = vec![(name.to_string(), b"x".to_vec())];
            assert!(
                matches!(
                    checkpoints.write(1, 1, "fp", BTreeMap::new(), parts),
                    Err(CheckpointError::Invalid { id: 1, .. })
                ),
                "{name:?}"
            );
        }
        let twice = vec![
            ("a".to_string(), b"x".to_vec()),
            ("a".to_string(), b"y".to_vec()),
        ];
        assert!(
            checkpoints
                .write(1, 1, "fp", BTreeMap::new(), twice)
                .is_err()
        );
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
