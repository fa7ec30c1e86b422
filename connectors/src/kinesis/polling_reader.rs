//! Reading one Kinesis shard with the polling API: `GetShardIterator` + `GetRecords`.
//!
//! A [`ShardReader`] yields the shard's user records in order, each with its [`Position`]
//! (sequence number and, inside a KPL aggregate, sub-sequence number):
//! - **Rate.** At most one `GetRecords` per `min_call_interval` (default 200 ms: the service allows
//!   5 calls per second per shard, shared by every consumer of the stream).
//! - **Throttling never kills it.** `ProvisionedThroughputExceededException`, `LimitExceeded`, 5xx
//!   and transport errors back off with jitter ([`crate::retry::Backoff`]) and try again.
//! - **Expired iterators are renewed** from the last position, never from the start.
//! - **Resume after, never again.** Started from a saved [`ResumePoint`], it continues *after* the
//!   last user record emitted: `AFTER_SEQUENCE_NUMBER` when that record was complete,
//!   `AT_SEQUENCE_NUMBER` and skipping the already emitted user records when the saved position is
//!   inside a KPL aggregate.
//! - **KPL aggregates** are unpacked ([`crate::kinesis::kpl`]); a corrupt one is returned as such, with its
//!   bytes, for the dead-letter output.
//! - **End of shard.** When the shard is closed and read to its end (no next iterator), the reader
//!   reports the child shards, which may start only once every parent is fully read.
//!
//! The enhanced fan-out reader ([`crate::kinesis::fan_out_reader`]) shares the unpacking and the choice of
//! the starting position, so both readers emit and resume exactly alike.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::ShardIteratorType;

use crate::ConnectorError;
use crate::aws::classify;
use crate::kinesis::kpl::{Deaggregated, deaggregate};
use crate::kinesis::shards::{Position, SequenceNumber};
use crate::retry::{Backoff, Jitter};

/// Where to start a shard that has no saved position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest record still retained.
    TrimHorizon,
    /// Only records written from now on.
    Latest,
    /// Records written at or after this time (ms since the epoch).
    AtTimestamp(u64),
}

/// A saved position: the last user record emitted, and whether it was the last of its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// The last user record emitted.
    pub position: Position,
    /// It was the last user record of its Kinesis record (always true for unaggregated records).
    pub record_complete: bool,
}

/// One user record read from the shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRecord {
    /// Where it is.
    pub position: Position,
    /// Its partition key.
    pub partition_key: String,
    /// Its bytes (a pageview, or a corrupt aggregate's bytes).
    pub data: Vec<u8>,
    /// When Kinesis received it (ms since the epoch), if known.
    pub arrival_ms: Option<u64>,
    /// Why the record cannot be used (a corrupt KPL aggregate), for the dead-letter output.
    pub corrupt: Option<String>,
}

/// What one read returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardBatch {
    /// The user records, in order.
    pub records: Vec<ShardRecord>,
    /// How far behind the tip of the shard the reader is.
    pub millis_behind_latest: Option<i64>,
    /// The shard is closed and fully read: its children, to start once all their parents are read.
    pub finished_with_children: Option<Vec<String>>,
}

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

/// Reads one shard in order.
#[derive(Debug)]
pub struct ShardReader {
    client: Client,
    stream: String,
    shard_id: String,
    start: StartPosition,
    settings: ReaderSettings,
    iterator: Option<String>,
    resume: Option<ResumePoint>,
    last_call: Option<Instant>,
    failures: u32,
    jitter: Jitter,
    finished: bool,
}

impl ShardReader {
    /// A reader of `shard_id` in `stream` (name or ARN), from `resume` if given, else from `start`.
    pub fn new(
        client: Client,
        stream: &str,
        shard_id: &str,
        start: StartPosition,
        resume: Option<ResumePoint>,
        settings: ReaderSettings,
    ) -> Self {
        ShardReader {
            client,
            stream: stream.to_string(),
            shard_id: shard_id.to_string(),
            start,
            settings,
            iterator: None,
            resume,
            last_call: None,
            failures: 0,
            jitter: Jitter::new(),
            finished: false,
        }
    }

    /// The last user record emitted, to save in a checkpoint.
    pub fn resume_point(&self) -> Option<&ResumePoint> {
        self.resume.as_ref()
    }

    /// The shard's id.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Whether the shard is closed and fully read.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Reads the next batch (possibly empty), waiting as the rate limit and backoff require.
    ///
    /// Errors only for failures no retry can fix (a missing stream or shard, no permission).
    pub async fn next_batch(&mut self) -> Result<ShardBatch, ConnectorError> {
        if self.finished {
            return Ok(ShardBatch::default());
        }
        loop {
            if let Some(last) = self.last_call {
                let wait = self
                    .settings
                    .min_call_interval
                    .saturating_sub(last.elapsed());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let iterator = match self.iterator.take() {
                Some(iterator) => iterator,
                None => match self.acquire_iterator().await? {
                    Some(iterator) => iterator,
                    None => continue, // transient failure, backed off already
                },
            };
            self.last_call = Some(Instant::now());
            let result = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(self.settings.max_records)
                .send()
                .await;
            match result {
                Ok(output) => {
                    self.failures = 0;
                    let mut batch = ShardBatch {
                        millis_behind_latest: output.millis_behind_latest,
                        ..ShardBatch::default()
                    };
                    for record in output.records() {
                        unpack_record(record, &mut self.resume, &mut batch.records);
                    }
                    match output.next_shard_iterator {
                        Some(next) => self.iterator = Some(next),
                        None => {
                            self.finished = true;
                            let children = output
                                .child_shards()
                                .iter()
                                .map(|c| c.shard_id().to_string())
                                .collect();
                            batch.finished_with_children = Some(children);
                        }
                    }
                    return Ok(batch);
                }
                Err(error) => {
                    let expired = error.as_service_error().and_then(|e| e.code())
                        == Some("ExpiredIteratorException");
                    let (message, retryable) = classify(&error);
                    if expired {
                        // Renew from the last position (not from the start): `self.iterator` is None.
                        continue;
                    }
                    if !retryable {
                        return Err(self.fatal(&message));
                    }
                    self.back_off().await;
                }
            }
        }
    }

    /// Gets an iterator from the saved position or the start; `None` after a transient failure.
    async fn acquire_iterator(&mut self) -> Result<Option<String>, ConnectorError> {
        let request = self.client.get_shard_iterator().shard_id(&self.shard_id);
        let request = if self.stream.starts_with("arn:") {
            request.stream_arn(&self.stream)
        } else {
            request.stream_name(&self.stream)
        };
        let from = ReadStart::new(self.resume.as_ref(), self.start);
        let request = request
            .shard_iterator_type(from.kind)
            .set_starting_sequence_number(from.sequence)
            .set_timestamp(from.timestamp);
        match request.send().await {
            Ok(output) => Ok(output.shard_iterator),
            Err(error) => {
                let (message, retryable) = classify(&error);
                if retryable {
                    self.back_off().await;
                    Ok(None)
                } else {
                    Err(self.fatal(&message))
                }
            }
        }
    }

    async fn back_off(&mut self) {
        self.failures += 1;
        tokio::time::sleep(
            self.settings
                .backoff
                .delay(self.failures, self.jitter.next_u64()),
        )
        .await;
    }

    fn fatal(&self, message: &str) -> ConnectorError {
        ConnectorError::Aws {
            what: format!("reading shard {} of stream {}", self.shard_id, self.stream),
            message: message.to_string(),
            retryable: false,
        }
    }
}

/// Where reading a shard starts, in the terms both `GetShardIterator` and `SubscribeToShard` use.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ReadStart {
    /// The iterator (or starting position) type.
    pub(crate) kind: ShardIteratorType,
    /// For `AT_`/`AFTER_SEQUENCE_NUMBER`.
    pub(crate) sequence: Option<String>,
    /// For `AT_TIMESTAMP`.
    pub(crate) timestamp: Option<aws_sdk_kinesis::primitives::DateTime>,
}

impl ReadStart {
    /// After the saved position if there is one (at its record when it is inside a KPL aggregate,
    /// whose emitted user records are then skipped), else `start`.
    pub(crate) fn new(resume: Option<&ResumePoint>, start: StartPosition) -> Self {
        let at = |kind, sequence: Option<String>| ReadStart {
            kind,
            sequence,
            timestamp: None,
        };
        match (resume, start) {
            (Some(resume), _) if resume.record_complete => at(
                ShardIteratorType::AfterSequenceNumber,
                Some(resume.position.sequence.as_str().to_string()),
            ),
            (Some(resume), _) => at(
                ShardIteratorType::AtSequenceNumber,
                Some(resume.position.sequence.as_str().to_string()),
            ),
            (None, StartPosition::TrimHorizon) => at(ShardIteratorType::TrimHorizon, None),
            (None, StartPosition::Latest) => at(ShardIteratorType::Latest, None),
            (None, StartPosition::AtTimestamp(ms)) => ReadStart {
                kind: ShardIteratorType::AtTimestamp,
                sequence: None,
                timestamp: Some(aws_sdk_kinesis::primitives::DateTime::from_millis(
                    ms as i64,
                )),
            },
        }
    }
}

/// Unpacks one Kinesis record into `out` as user records (KPL aggregates de-aggregated, a corrupt
/// one returned whole and flagged), skipping those at or before `resume` (emitted before a
/// restart) and moving `resume` to the last one pushed. Shared by the polling [`ShardReader`] and
/// the enhanced fan-out reader ([`crate::kinesis::fan_out_reader`]), so both resume exactly alike.
pub(crate) fn unpack_record(
    record: &aws_sdk_kinesis::types::Record,
    resume: &mut Option<ResumePoint>,
    out: &mut Vec<ShardRecord>,
) {
    let Some(sequence) = SequenceNumber::new(record.sequence_number()) else {
        return;
    };
    let arrival_ms = record
        .approximate_arrival_timestamp()
        .and_then(|t| u64::try_from(t.to_millis().ok()?).ok());
    let data = record.data().as_ref();
    let (user_records, corrupt) = match deaggregate(data) {
        Deaggregated::NotAggregated => (
            vec![(
                0,
                record.partition_key().unwrap_or_default().to_string(),
                data.to_vec(),
            )],
            None,
        ),
        Deaggregated::Aggregated(users) => (
            users
                .into_iter()
                .map(|u| (u.sub_sequence, u.partition_key, u.data))
                .collect(),
            None,
        ),
        Deaggregated::Corrupt(reason) => (
            vec![(
                0,
                record.partition_key().unwrap_or_default().to_string(),
                data.to_vec(),
            )],
            Some(reason),
        ),
    };
    let count = user_records.len();
    for (index, (sub_sequence, partition_key, data)) in user_records.into_iter().enumerate() {
        let position = Position {
            sequence: sequence.clone(),
            sub_sequence,
        };
        if resume
            .as_ref()
            .is_some_and(|resume| position <= resume.position)
        {
            continue; // emitted before the restart
        }
        *resume = Some(ResumePoint {
            position: position.clone(),
            record_complete: index + 1 == count,
        });
        out.push(ShardRecord {
            position,
            partition_key,
            data,
            arrival_ms,
            corrupt: corrupt.clone(),
        });
    }
}
