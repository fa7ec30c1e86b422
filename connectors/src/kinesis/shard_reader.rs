//! The skeleton both Kinesis shard readers share; each says only how it fetches records.
//!
//! A [`ShardReader`] reads one shard in order and yields its user records in [`ShardBatch`]es, each
//! record with its [`Position`] (sequence number and, inside a KPL aggregate, sub-sequence
//! number). What is the same for the polling reader ([`super::polling_reader`], `GetRecords`) and
//! the enhanced fan-out reader ([`super::fan_out_reader`], `SubscribeToShard`) lives here:
//!
//! - **Where to start.** From a saved [`ResumePoint`] (the last user record emitted) when there is
//!   one, else from the configured [`StartPosition`] (`ReadStart`, in the terms both APIs use).
//! - **Resume after, never again.** `unpack_record` unpacks KPL aggregates, skips the user
//!   records at or before the resume point (emitted before a restart) and moves the resume point
//!   to the last one emitted, which is what a checkpoint saves.
//! - **End of shard.** When the shard is closed and read to its end, the batch names the child
//!   shards ([`ShardBatch::finished_with_children`]); the reader is then finished and every later
//!   call returns an empty batch without calling AWS. The consumer starts a child only once all its
//!   parents are finished.
//! - **Retries.** A failure a retry may fix (throttling, 5xx, a broken connection) backs off with
//!   jitter ([`crate::retry::Backoff`], the one policy) and tries again; the count of failures in
//!   a row resets when records come. Only failures no retry fixes are returned as errors.
//!
//! What differs is a [`FetchRecords`]: one attempt to fetch the next Kinesis records, which says
//! how it went ([`Fetched`]).

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::{Record, ShardIteratorType};

use crate::ConnectorError;
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

/// The shard a reader reads and how far it got: what a [`FetchRecords`] needs to know to fetch
/// the next records (the reader moves `resume` as it emits records).
#[derive(Clone, Debug)]
pub struct ShardCursor {
    /// The shard's id.
    pub shard_id: String,
    /// Where to start when there is no resume point.
    pub start: StartPosition,
    /// The last user record emitted.
    pub resume: Option<ResumePoint>,
}

/// How one attempt to fetch went.
#[derive(Debug)]
pub enum Fetched {
    /// Kinesis records, in order (possibly none).
    Records {
        /// The records, still packed (KPL aggregates are unpacked by the reader).
        records: Vec<Record>,
        /// How far behind the tip of the shard the reader is.
        millis_behind_latest: Option<i64>,
        /// `Some(children)`: the shard is closed and these were its last records.
        children: Option<Vec<String>>,
    },
    /// Nothing for now: the reader returns an empty batch, and the caller asks again later.
    Nothing,
    /// Nothing yet, but try again at once (an iterator or subscription was renewed).
    Again,
    /// A failure a retry may fix: back off, then try again.
    Transient,
    /// A failure no retry fixes (a missing stream, shard or consumer; no permission).
    Fatal(ConnectorError),
}

/// How a reader fetches a shard's records: the one thing the polling and the fan-out readers do
/// differently.
pub trait FetchRecords: Send + std::fmt::Debug {
    /// One attempt to fetch the records after `cursor` (waiting as the API's rate limit requires).
    fn fetch(&mut self, cursor: &ShardCursor) -> impl Future<Output = Fetched> + Send;
}

/// Reads one shard in order, fetching with `F`: [`super::PollingReader`] or
/// [`super::FanOutReader`].
#[derive(Debug)]
pub struct ShardReader<F> {
    pub(super) fetch: F,
    pub(super) cursor: ShardCursor,
    finished: bool,
    backoff: Backoff,
    failures: u32,
    jitter: Jitter,
}

impl<F: FetchRecords> ShardReader<F> {
    /// A reader of `shard_id` fetching with `fetch`, from `resume` if given, else from `start`,
    /// backing off after failures with `backoff`.
    pub(super) fn with_fetch(
        fetch: F,
        shard_id: &str,
        start: StartPosition,
        resume: Option<ResumePoint>,
        backoff: Backoff,
    ) -> Self {
        ShardReader {
            fetch,
            cursor: ShardCursor {
                shard_id: shard_id.to_string(),
                start,
                resume,
            },
            finished: false,
            backoff,
            failures: 0,
            jitter: Jitter::new(),
        }
    }

    /// The last user record emitted, to save in a checkpoint.
    pub fn resume_point(&self) -> Option<&ResumePoint> {
        self.cursor.resume.as_ref()
    }

    /// The shard's id.
    pub fn shard_id(&self) -> &str {
        &self.cursor.shard_id
    }

    /// Whether the shard is closed and fully read.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Reads the next batch (possibly empty), waiting as the API's rate limit and the backoff
    /// require.
    ///
    /// Errors only for failures no retry can fix (a missing stream, shard or consumer; no
    /// permission).
    pub async fn next_batch(&mut self) -> Result<ShardBatch, ConnectorError> {
        if self.finished {
            return Ok(ShardBatch::default());
        }
        loop {
            match self.fetch.fetch(&self.cursor).await {
                Fetched::Records {
                    records,
                    millis_behind_latest,
                    children,
                } => {
                    self.failures = 0;
                    return Ok(self.take(records, millis_behind_latest, children));
                }
                Fetched::Nothing => return Ok(ShardBatch::default()),
                Fetched::Again => {}
                Fetched::Transient => self.back_off().await,
                Fetched::Fatal(error) => return Err(error),
            }
        }
    }

    /// Unpacks fetched records into a batch, moving the resume point past them, and ends the
    /// shard when they were its last.
    pub(super) fn take(
        &mut self,
        records: Vec<Record>,
        millis_behind_latest: Option<i64>,
        children: Option<Vec<String>>,
    ) -> ShardBatch {
        let mut batch = ShardBatch {
            millis_behind_latest,
            ..ShardBatch::default()
        };
        for record in &records {
            unpack_record(record, &mut self.cursor.resume, &mut batch.records);
        }
        if let Some(children) = children {
            self.finished = true;
            batch.finished_with_children = Some(children);
        }
        batch
    }

    async fn back_off(&mut self) {
        self.failures = self.failures.saturating_add(1);
        tokio::time::sleep(self.backoff.delay(self.failures, self.jitter.next_u64())).await;
    }
}

/// Keeps calls to an API at least `min_interval` apart (the per-shard rate limits of `GetRecords`
/// and `SubscribeToShard`).
#[derive(Clone, Copy, Debug)]
pub(super) struct CallPacing {
    min_interval: Duration,
    last_call: Option<Instant>,
}

impl CallPacing {
    pub(super) fn new(min_interval: Duration) -> Self {
        CallPacing {
            min_interval,
            last_call: None,
        }
    }

    /// Waits until the next call is allowed.
    pub(super) async fn wait(&self) {
        if let Some(last) = self.last_call {
            let wait = self.min_interval.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Notes that a call starts now.
    pub(super) fn calling(&mut self) {
        self.last_call = Some(Instant::now());
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
/// restart) and moving `resume` to the last one pushed. Shared by both readers, so they resume
/// exactly alike.
pub(crate) fn unpack_record(
    record: &Record,
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A fetcher that answers from a script, and notes where each fetch started from.
    #[derive(Debug, Default)]
    struct Scripted {
        answers: VecDeque<Fetched>,
        fetched_after: Vec<Option<ResumePoint>>,
    }

    impl FetchRecords for Scripted {
        async fn fetch(&mut self, cursor: &ShardCursor) -> Fetched {
            self.fetched_after.push(cursor.resume.clone());
            self.answers.pop_front().unwrap_or(Fetched::Nothing)
        }
    }

    fn reader(answers: Vec<Fetched>) -> ShardReader<Scripted> {
        let fetch = Scripted {
            answers: answers.into(),
            ..Scripted::default()
        };
        let no_wait = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        ShardReader::with_fetch(
            fetch,
            "shardId-0",
            StartPosition::TrimHorizon,
            None,
            no_wait,
        )
    }

    fn record(sequence: &str, data: &[u8]) -> Record {
        Record::builder()
            .sequence_number(sequence)
            .partition_key("u")
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .build()
            .unwrap()
    }

    fn records(records: Vec<Record>, children: Option<Vec<String>>) -> Fetched {
        Fetched::Records {
            records,
            millis_behind_latest: Some(0),
            children,
        }
    }

    #[tokio::test]
    async fn retries_what_passes_and_moves_the_resume_point_past_what_it_emits() {
        let mut reader = reader(vec![
            Fetched::Transient,
            Fetched::Again,
            records(vec![record("1", b"a"), record("2", b"b")], None),
            records(vec![record("3", b"c")], None),
        ]);
        let batch = reader.next_batch().await.unwrap();
        let data: Vec<&[u8]> = batch.records.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(data, [b"a".as_slice(), b"b".as_slice()]);
        assert_eq!(reader.failures, 0, "records reset the count of failures");
        let resume = reader.resume_point().cloned();
        assert_eq!(
            resume.as_ref().map(|r| r.position.to_string()),
            Some("2:0".into())
        );
        reader.next_batch().await.unwrap();
        assert_eq!(
            reader.fetch.fetched_after,
            vec![None, None, None, resume],
            "every fetch after a batch starts after its last record"
        );
    }

    #[tokio::test]
    async fn a_fatal_failure_is_returned_and_nothing_is_empty() {
        let fatal = ConnectorError::Aws {
            what: "reading shard shardId-0".into(),
            message: "no permission".into(),
            retryable: false,
        };
        let mut reader = reader(vec![Fetched::Nothing, Fetched::Fatal(fatal)]);
        assert_eq!(reader.next_batch().await.unwrap(), ShardBatch::default());
        let error = reader.next_batch().await.unwrap_err();
        assert!(error.to_string().contains("no permission"), "{error}");
        assert!(!reader.is_finished());
    }

    #[tokio::test]
    async fn the_last_records_end_the_shard_with_its_children_and_nothing_is_fetched_after() {
        let children = vec!["shardId-1".to_string(), "shardId-2".to_string()];
        let mut reader = reader(vec![records(
            vec![record("9", b"z")],
            Some(children.clone()),
        )]);
        let batch = reader.next_batch().await.unwrap();
        assert_eq!(batch.records.len(), 1, "the last records are kept");
        assert_eq!(batch.finished_with_children, Some(children));
        assert!(reader.is_finished());
        assert_eq!(reader.next_batch().await.unwrap(), ShardBatch::default());
        assert_eq!(
            reader.fetch.fetched_after.len(),
            1,
            "a finished reader does not fetch"
        );
    }
}
