//! One job per S3 checkpoint prefix: a lease, the S3 counterpart of [`crate::dir_lock`].
//!
//! Two jobs writing checkpoints under one prefix would each take the other's manifests for their
//! own parents, and their retention would delete each other's runs. A local directory is locked
//! with `flock`, which the operating system releases when its holder dies; S3 has no such lock, so
//! the prefix is held with a *lease*: the object `<prefix>/.pageflow.lock`, holding who holds it,
//! since when, and until when ([`LeaseRecord`]).
//!
//! - **Taking it** is a conditional `PutObject`: `If-None-Match: *` creates it only if it does not
//!   exist. If it exists and has not expired, the job is refused
//!   ([`ConnectorError::PrefixInUse`] names the holder and when the lease runs out).
//! - **Taking over** an expired lease (its holder died without releasing it) is a `PutObject` with
//!   `If-Match: <the ETag read>`: of two jobs taking over at once, only one wins; the other sees a
//!   412, reads the new lease and is refused.
//! - **Renewing.** A background task rewrites the lease every [`LeaseSettings::renew_every`]
//!   (well inside [`LeaseSettings::ttl`]) with `If-Match` on its own last ETag, moving the expiry
//!   forward. A 412 means another job took the lease over (this one could not renew it in time):
//!   the lease is lost ([`S3Lease::lost`]) and the renewal stops.
//! - **Releasing** on a clean shutdown ([`S3Lease::release`]) deletes the object with `If-Match`,
//!   so that a lease taken over meanwhile is never deleted. A job that dies without releasing
//!   leaves its lease to expire: the next job waits at most one TTL.
//!
//! Expiry is judged by the clock of the job that reads the lease: the TTL must exceed the clock
//! skew between the machines (one minute by default; hosts synchronised with NTP are within
//! milliseconds). The clock is injected ([`pageflow_dataflow::clock::Clock`]), so tests expire a
//! lease without waiting for it.
//!
//! Like [`super::S3Store`], the synchronous methods block on the runtime they are given and must
//! not be called from inside a tokio runtime.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use pageflow_dataflow::clock::Clock;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::s3::classify_s3;
use crate::dir_lock::LOCK_FILE_NAME;
use crate::error::ConnectorError;

/// How long a lease lasts and how often its holder renews it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lasts after it is written: how long the next job waits after a holder
    /// died without releasing it.
    pub ttl: Duration,
    /// How often the holder renews it (a quarter of the TTL by default, so that three renewals in
    /// a row may fail before the lease runs out).
    pub renew_every: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            ttl: Duration::from_secs(60),
            renew_every: Duration::from_secs(15),
        }
    }
}

/// What the lease object says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it (process, host, start time), for the refusal of the next job.
    pub holder: String,
    /// When the holder took it (ms since the epoch).
    pub started_ms: u64,
    /// When it runs out unless renewed (ms since the epoch).
    pub expires_ms: u64,
}

/// The lease's ETag as last written by its holder, and whether it was lost.
#[derive(Debug)]
struct Held {
    etag: String,
    lost: Option<String>,
}

/// A held lease on an S3 prefix, renewed in the background until released or dropped.
///
/// Dropping it without [`S3Lease::release`] stops the renewal and leaves the lease to expire.
#[derive(Debug)]
pub struct S3Lease {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    record: LeaseRecord,
    settings: LeaseSettings,
    runtime: Handle,
    held: Arc<Mutex<Held>>,
    stop: Arc<Notify>,
    renewal: Option<JoinHandle<()>>,
}

/// Where the lease of `prefix` lives: `<prefix>/.pageflow.lock`.
pub fn lease_key(prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        LOCK_FILE_NAME.to_string()
    } else {
        format!("{prefix}/{LOCK_FILE_NAME}")
    }
}

impl S3Lease {
    /// Takes the lease of `prefix` in `bucket` for `holder` (who this process is), or refuses
    /// with [`ConnectorError::PrefixInUse`] naming the current holder while its lease runs.
    /// Renews it in the background on `runtime` until released.
    pub fn acquire(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
        holder: &str,
        settings: LeaseSettings,
        clock: Arc<dyn Clock>,
        runtime: Handle,
    ) -> Result<S3Lease, ConnectorError> {
        let place = Place {
            client,
            bucket: bucket.to_string(),
            key: lease_key(prefix),
        };
        let (record, etag) = runtime.block_on(place.take(holder, settings.ttl, clock.as_ref()))?;
        let held = Arc::new(Mutex::new(Held { etag, lost: None }));
        let stop = Arc::new(Notify::new());
        let renewal = runtime.spawn(place.clone().renew(
            record.clone(),
            settings,
            clock,
            Arc::clone(&held),
            Arc::clone(&stop),
        ));
        Ok(S3Lease {
            client: place.client,
            bucket: place.bucket,
            key: place.key,
            record,
            settings,
            runtime,
            held,
            stop,
            renewal: Some(renewal),
        })
    }

    /// What this lease said when it was taken.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// `s3://bucket/key` of the lease object.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Why the lease was lost (another job took it over after this one failed to renew it in
    /// time), or `None` while it is held.
    pub fn lost(&self) -> Option<String> {
        self.lock().lost.clone()
    }

    /// Stops the renewal and deletes the lease (only if it is still this one's), so that the next
    /// job may start at once.
    pub fn release(mut self) -> Result<(), ConnectorError> {
        self.stop.notify_one();
        if let Some(renewal) = self.renewal.take() {
            // The renewal ends after the request in flight, so the ETag below is the last one.
            let _ = self.runtime.block_on(renewal);
        }
        let (etag, lost) = {
            let held = self.lock();
            (held.etag.clone(), held.lost.clone())
        };
        if lost.is_some() {
            return Ok(()); // another job's lease now: not ours to delete
        }
        let deleted = self.runtime.block_on(
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .if_match(etag)
                .send(),
        );
        match deleted {
            Ok(_) => Ok(()),
            Err(error) => match classify_s3(&error) {
                (_, _, Some(404 | 412)) => {
                    tracing::warn!(
                        lease = %self.location(),
                        "the lease was no longer ours when released (taken over after it expired)"
                    );
                    Ok(())
                }
                (message, retryable, _) => Err(ConnectorError::Aws {
                    what: format!("releasing the checkpoint lease {}", self.location()),
                    message: format!(
                        "{message}; the lease expires by itself {} s after its last renewal",
                        self.settings.ttl.as_secs()
                    ),
                    retryable,
                }),
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for S3Lease {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

/// The lease object: bucket, key and the client that reaches them.
#[derive(Clone, Debug)]
struct Place {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
}

/// How a conditional write went.
enum Written {
    /// Written: the new ETag.
    Done(String),
    /// The condition did not hold (412), or `If-Match` found no object (404).
    ConditionFailed,
}

impl Place {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Creates the lease, or takes it over when it has expired; refuses while it runs.
    async fn take(
        &self,
        holder: &str,
        ttl: Duration,
        clock: &dyn Clock,
    ) -> Result<(LeaseRecord, String), ConnectorError> {
        const ATTEMPTS: u32 = 5;
        for _ in 0..ATTEMPTS {
            let now = clock.unix_now_ms();
            let record = LeaseRecord {
                holder: holder.to_string(),
                started_ms: now,
                expires_ms: now.saturating_add(duration_ms(ttl)),
            };
            if let Written::Done(etag) = self.write(&record, None).await? {
                return Ok((record, etag));
            }
            let Some((etag, current)) = self.read().await? else {
                continue; // released meanwhile: create it again
            };
            match current {
                Ok(current) if current.expires_ms > now => {
                    return Err(ConnectorError::PrefixInUse {
                        location: self.location(),
                        holder: current.holder,
                        expires_in_s: (current.expires_ms - now).div_ceil(1000),
                    });
                }
                Ok(expired) => {
                    if let Written::Done(new_etag) = self.write(&record, Some(etag)).await? {
                        tracing::warn!(
                            lease = %self.location(),
                            "took over the checkpoint lease of {}, which expired {} ms ago",
                            expired.holder,
                            now - expired.expires_ms
                        );
                        return Ok((record, new_etag));
                    }
                    // Renewed or taken by someone else first: look again.
                }
                Err(unreadable) => {
                    return Err(ConnectorError::PrefixInUse {
                        location: self.location(),
                        holder: format!(
                            "an unreadable lease ({unreadable}); if no job uses this prefix, \
                             delete the object"
                        ),
                        expires_in_s: duration_ms(ttl).div_ceil(1000),
                    });
                }
            }
        }
        Err(ConnectorError::Aws {
            what: format!("taking the checkpoint lease {}", self.location()),
            message: format!(
                "the lease changed under every one of {ATTEMPTS} attempts: other jobs are \
                 starting on this prefix; start one job per prefix"
            ),
            retryable: true,
        })
    }

    /// Renews the lease every `settings.renew_every` until stopped or lost.
    async fn renew(
        self,
        mut record: LeaseRecord,
        settings: LeaseSettings,
        clock: Arc<dyn Clock>,
        held: Arc<Mutex<Held>>,
        stop: Arc<Notify>,
    ) {
        let lock = || held.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tokio::time::sleep(settings.renew_every) => {}
            }
            record.expires_ms = clock
                .unix_now_ms()
                .saturating_add(duration_ms(settings.ttl));
            let etag = lock().etag.clone();
            match self.write(&record, Some(etag)).await {
                Ok(Written::Done(etag)) => lock().etag = etag,
                Ok(Written::ConditionFailed) => {
                    let message = format!(
                        "the checkpoint lease {} was taken over by another job after it expired: \
                         two jobs may now write checkpoints under one prefix; stop one of them",
                        self.location()
                    );
                    tracing::error!("{message}");
                    lock().lost = Some(message);
                    return;
                }
                Err(error) => tracing::warn!(
                    lease = %self.location(),
                    "cannot renew the checkpoint lease, trying again in {:?}: {error}",
                    settings.renew_every
                ),
            }
        }
    }

    /// Writes `record`: create-only without `if_match`, else only over that ETag.
    async fn write(
        &self,
        record: &LeaseRecord,
        if_match: Option<String>,
    ) -> Result<Written, ConnectorError> {
        let body = serde_json::to_vec(record).map_err(|e| ConnectorError::Aws {
            what: format!("writing the checkpoint lease {}", self.location()),
            message: e.to_string(),
            retryable: false,
        })?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        let request = match if_match {
            Some(etag) => request.if_match(etag),
            None => request.if_none_match("*"),
        };
        match request.send().await {
            Ok(output) => Ok(Written::Done(output.e_tag.unwrap_or_default())),
            Err(error) => match classify_s3(&error) {
                (_, _, Some(404 | 409 | 412)) => Ok(Written::ConditionFailed),
                (message, retryable, _) => Err(ConnectorError::Aws {
                    what: format!("writing the checkpoint lease {}", self.location()),
                    message,
                    retryable,
                }),
            },
        }
    }

    /// The lease's ETag and record (or why it cannot be read), or `None` if there is none.
    async fn read(&self) -> Result<Option<ReadLease>, ConnectorError> {
        let what = || format!("reading the checkpoint lease {}", self.location());
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) => {
                return match classify_s3(&error) {
                    (_, _, Some(404)) => Ok(None),
                    (message, retryable, _) => Err(ConnectorError::Aws {
                        what: what(),
                        message,
                        retryable,
                    }),
                };
            }
        };
        let etag = output.e_tag.clone().unwrap_or_default();
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| ConnectorError::Aws {
                what: what(),
                message: format!("the body could not be read: {e}"),
                retryable: true,
            })?
            .into_bytes();
        let record = serde_json::from_slice::<LeaseRecord>(&bytes).map_err(|e| {
            let text = String::from_utf8_lossy(&bytes);
            let shown: String = text.chars().take(200).collect();
            format!("{e}: {shown:?}")
        });
        Ok(Some((etag, record)))
    }
}

/// A lease as read: its ETag, and its record or why it cannot be parsed.
type ReadLease = (String, Result<LeaseRecord, String>);

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_lives_beside_the_checkpoints_of_its_prefix() {
        assert_eq!(
            lease_key("checkpoints/job-1"),
            "checkpoints/job-1/.pageflow.lock"
        );
        assert_eq!(
            lease_key("/checkpoints/job-1/"),
            "checkpoints/job-1/.pageflow.lock"
        );
        assert_eq!(lease_key(""), ".pageflow.lock");
    }

    #[test]
    fn the_default_renewal_leaves_room_for_three_failures_within_the_ttl() {
        let settings = LeaseSettings::default();
        assert!(settings.renew_every * 3 < settings.ttl);
    }
}
