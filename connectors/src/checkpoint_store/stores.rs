//! The stores: [`CheckpointStore`], a small key-value store of immutable objects, on a local disk
//! ([`LocalDirStore`]) or in S3 ([`S3Store`]).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use crate::aws::retryable_service_code;
use crate::error::io_error_is_transient;
use crate::retry::{Backoff, Jitter};

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
