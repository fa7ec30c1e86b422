//! [`S3Store`]: checkpoint objects in an S3 bucket under a prefix, with retried requests and
//! create-only puts (`If-None-Match: *`).

use std::future::Future;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::store::{CheckpointStore, StoreError, validate_key};
use crate::aws::retryable_service_code;
use crate::retry::{Backoff, Jitter};

/// The most keys one S3 `DeleteObjects` call takes.
const DELETE_CHUNK: usize = 1000;

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
pub(super) fn classify_s3<E>(error: &SdkError<E>) -> (String, bool, Option<u16>)
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
