//! Reading one Kinesis shard with the polling API: `GetShardIterator` + `GetRecords`.
//!
//! A [`PollingReader`] is the shared [`ShardReader`] skeleton (resume points, KPL unpacking, end
//! of shard, backoff: see [`super::shard_reader`]) fetching with [`Polling`]:
//! - **Rate.** At most one `GetRecords` per `min_call_interval` (default 200 ms: the service allows
//!   5 calls per second per shard, shared by every consumer of the stream).
//! - **Throttling never kills it.** `ProvisionedThroughputExceededException`, `LimitExceeded`, 5xx
//!   and transport errors back off with jitter ([`crate::retry::Backoff`]) and try again.
//! - **Expired iterators are renewed** from the last position, never from the start.
//! - **Resume after, never again.** Started from a saved [`ResumePoint`], it continues *after* the
//!   last user record emitted: `AFTER_SEQUENCE_NUMBER` when that record was complete,
//!   `AT_SEQUENCE_NUMBER` and skipping the already emitted user records when the saved position is
//!   inside a KPL aggregate.
//! - **End of shard.** When the shard is closed and read to its end (no next iterator), the reader
//!   reports the child shards, which may start only once every parent is fully read.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;

use crate::ConnectorError;
use crate::aws::classify;
use crate::kinesis::shard_reader::{
    CallPacing, FetchRecords, Fetched, ReadStart, ResumePoint, ShardCursor, ShardReader,
    StartPosition,
};
use crate::retry::Backoff;

/// Tuning of a reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderSettings {
    /// Records per `GetRecords` call (at most 10,000).
    pub max_records: i32,
    /// Minimum time between two `GetRecords` calls on this shard.
    pub min_call_interval: Duration,
    /// Delays after throttling and transient errors.
    pub backoff: Backoff,
}

impl Default for ReaderSettings {
    fn default() -> Self {
        ReaderSettings {
            max_records: 10_000,
            min_call_interval: Duration::from_millis(200),
            backoff: Backoff::default(),
        }
    }
}

/// Reads one shard in order with `GetRecords`.
pub type PollingReader = ShardReader<Polling>;

impl PollingReader {
    /// A reader of `shard_id` in `stream` (name or ARN), from `resume` if given, else from `start`.
    pub fn new(
        client: Client,
        stream: &str,
        shard_id: &str,
        start: StartPosition,
        resume: Option<ResumePoint>,
        settings: ReaderSettings,
    ) -> Self {
        let fetch = Polling {
            client,
            stream: stream.to_string(),
            max_records: settings.max_records,
            pacing: CallPacing::new(settings.min_call_interval),
            iterator: None,
        };
        ShardReader::with_fetch(fetch, shard_id, start, resume, settings.backoff)
    }
}

/// Fetching with `GetShardIterator` + `GetRecords`.
#[derive(Debug)]
pub struct Polling {
    client: Client,
    stream: String,
    max_records: i32,
    pacing: CallPacing,
    /// The iterator for the next `GetRecords`; `None` before the first and after an expired one.
    iterator: Option<String>,
}

impl FetchRecords for Polling {
    async fn fetch(&mut self, cursor: &ShardCursor) -> Fetched {
        self.pacing.wait().await;
        let iterator = match self.iterator.take() {
            Some(iterator) => iterator,
            None => match self.acquire_iterator(cursor).await {
                Ok(iterator) => iterator,
                Err(failure) => return failure,
            },
        };
        self.pacing.calling();
        let result = self
            .client
            .get_records()
            .shard_iterator(&iterator)
            .limit(self.max_records)
            .send()
            .await;
        match result {
            Ok(output) => {
                let children = match output.next_shard_iterator {
                    Some(next) => {
                        self.iterator = Some(next);
                        None
                    }
                    None => Some(
                        output
                            .child_shards()
                            .iter()
                            .map(|c| c.shard_id().to_string())
                            .collect(),
                    ),
                };
                Fetched::Records {
                    records: output.records,
                    millis_behind_latest: output.millis_behind_latest,
                    children,
                }
            }
            Err(error) => {
                let expired = error.as_service_error().and_then(|e| e.code())
                    == Some("ExpiredIteratorException");
                let (message, retryable) = classify(&error);
                if expired {
                    // Renew from the last position (not from the start): `self.iterator` is None.
                    Fetched::Again
                } else if retryable {
                    Fetched::Transient
                } else {
                    Fetched::Fatal(self.fatal(cursor, &message))
                }
            }
        }
    }
}

impl Polling {
    /// Gets an iterator from the saved position or the start; on failure, what to do next.
    async fn acquire_iterator(&mut self, cursor: &ShardCursor) -> Result<String, Fetched> {
        let request = self.client.get_shard_iterator().shard_id(&cursor.shard_id);
        let request = if self.stream.starts_with("arn:") {
            request.stream_arn(&self.stream)
        } else {
            request.stream_name(&self.stream)
        };
        let from = ReadStart::new(cursor.resume.as_ref(), cursor.start);
        let request = request
            .shard_iterator_type(from.kind)
            .set_starting_sequence_number(from.sequence)
            .set_timestamp(from.timestamp);
        match request.send().await {
            Ok(output) => output.shard_iterator.ok_or(Fetched::Again),
            Err(error) => {
                let (message, retryable) = classify(&error);
                if retryable {
                    Err(Fetched::Transient)
                } else {
                    Err(Fetched::Fatal(self.fatal(cursor, &message)))
                }
            }
        }
    }

    fn fatal(&self, cursor: &ShardCursor, message: &str) -> ConnectorError {
        ConnectorError::Aws {
            what: format!(
                "reading shard {} of stream {}",
                cursor.shard_id, self.stream
            ),
            message: message.to_string(),
            retryable: false,
        }
    }
}
