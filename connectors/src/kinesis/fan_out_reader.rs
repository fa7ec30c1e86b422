//! Reading one Kinesis shard with enhanced fan-out (EFO): `SubscribeToShard`.
//!
//! **Polling versus fan-out.** A polling consumer ([`super::PollingReader`]) asks for
//! records with `GetRecords`, and every polling consumer of a stream shares each shard's read
//! budget: 2 MB/s and 5 calls per second. An enhanced fan-out consumer is registered on the stream
//! once (`RegisterStreamConsumer`, see [`ensure_consumer`]) and then gets a budget of its own:
//! 2 MB/s per shard for *each* registered consumer. It does not ask, it subscribes: the service
//! keeps an HTTP connection open and pushes each new batch of records as an event as soon as it is
//! written (typically within about 70 ms instead of a polling interval). A subscription lasts at
//! most 5 minutes, after which the service simply ends the event stream and the consumer
//! subscribes again from where it was.
//!
//! A [`FanOutReader`] is the shared [`ShardReader`] skeleton (resume points, KPL unpacking, end of
//! shard, backoff: see [`super::shard_reader`]) fetching with [`FanOut`], so it has the same
//! methods, and yields the same [`ShardBatch`](super::ShardBatch)es, as the polling reader, and the rest of pageflow
//! does not care which one reads a shard:
//! - **One event, one batch.** [`FanOutReader::next_batch`] subscribes when there is no live
//!   subscription and returns the records of the next event, with its `MillisBehindLatest`.
//! - **Resubscribing never re-emits or skips.** Each event carries a *continuation sequence
//!   number*; when a subscription ends (after 5 minutes, a dropped connection, or
//!   [`FanOutSettings::renew_after`]) the next one starts `AFTER_SEQUENCE_NUMBER` of it, or at the
//!   last emitted user record when that is further on or inside a KPL aggregate. Started from a
//!   saved [`ResumePoint`], it continues after it exactly like the polling reader (same unpacking,
//!   [`super::shard_reader`]).
//! - **Throttling never kills it.** The service allows one `SubscribeToShard` per second per
//!   consumer and shard and one live subscription per consumer and shard (a second one is refused
//!   with `ResourceInUseException` until the first is released); those refusals,
//!   `LimitExceededException`, 5xx answers, broken event streams and silent ones back off with
//!   jitter ([`crate::retry::Backoff`]) and subscribe again. Only failures no retry fixes (a missing
//!   consumer or shard, no permission) are errors.
//! - **End of shard.** The last event of a closed shard has no continuation sequence number and
//!   names the child shards; the reader then reports them in
//!   [`ShardBatch::finished_with_children`](super::ShardBatch::finished_with_children) and is finished.
//!
//! The consumer is never deregistered here: a restarted job finds it by name and reuses it.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::event_stream::EventReceiver;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEvent,
    SubscribeToShardEventStream,
};

use crate::ConnectorError;
use crate::aws::classify;
use crate::kinesis::shard_reader::{
    CallPacing, FetchRecords, Fetched, ReadStart, ResumePoint, ShardCursor, ShardReader,
    StartPosition,
};
use crate::kinesis::shards::SequenceNumber;
use crate::retry::{Backoff, Jitter};

/// How long [`ensure_consumer`] waits for a consumer to become `ACTIVE` (AWS takes seconds; the
/// bound turns a stuck registration into an error instead of a hang).
pub const CONSUMER_ACTIVE_TIMEOUT: Duration = Duration::from_secs(180);

/// Tuning of a [`FanOutReader`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanOutSettings {
    /// Minimum time between two `SubscribeToShard` calls on this shard (the service allows one per
    /// second per consumer and shard).
    pub min_subscribe_interval: Duration,
    /// A subscription with no event for this long is taken for dead: it is dropped,
    /// [`FanOutReader::next_batch`] returns an empty batch, and the next call subscribes again.
    /// The service sends an event every few seconds even when nothing is written.
    pub idle_timeout: Duration,
    /// Renew a subscription once it is this old, instead of waiting for the service to end it
    /// (after 5 minutes). `None`: keep it until the service ends it.
    pub renew_after: Option<Duration>,
    /// Delays after throttling, refused subscriptions and transient errors.
    pub backoff: Backoff,
}

impl Default for FanOutSettings {
    fn default() -> Self {
        FanOutSettings {
            min_subscribe_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            renew_after: None,
            backoff: Backoff::default(),
        }
    }
}

/// Reads one shard in order through an enhanced fan-out consumer.
pub type FanOutReader = ShardReader<FanOut>;

impl FanOutReader {
    /// A reader of `shard_id` through the consumer `consumer_arn` (from [`ensure_consumer`]), from
    /// `resume` if given, else from `start`. Nothing is called before [`Self::next_batch`].
    pub fn new(
        client: Client,
        consumer_arn: &str,
        shard_id: &str,
        start: StartPosition,
        resume: Option<ResumePoint>,
        settings: FanOutSettings,
    ) -> Self {
        let fetch = FanOut {
            client,
            consumer_arn: consumer_arn.to_string(),
            idle_timeout: settings.idle_timeout,
            renew_after: settings.renew_after,
            pacing: CallPacing::new(settings.min_subscribe_interval),
            continuation: None,
            subscription: None,
            subscriptions: 0,
        };
        ShardReader::with_fetch(fetch, shard_id, start, resume, settings.backoff)
    }

    /// How many subscriptions have delivered events so far (one per 5 minutes of reading, plus one
    /// per renewal after a failure; refused ones do not count): for metrics and tests.
    pub fn subscription_count(&self) -> u64 {
        self.fetch.subscriptions
    }
}

/// A live subscription: its events, when it started, whether an event has come.
#[derive(Debug)]
struct Subscription {
    events: EventReceiver<SubscribeToShardEventStream, SubscribeToShardEventStreamError>,
    started: Instant,
    delivered: bool,
}

/// Fetching with `SubscribeToShard`: one event of the live subscription per fetch.
#[derive(Debug)]
pub struct FanOut {
    client: Client,
    consumer_arn: String,
    idle_timeout: Duration,
    renew_after: Option<Duration>,
    pacing: CallPacing,
    /// The continuation sequence number of the last event: where the shard's reading got to, even
    /// past the last record (events without records move it too).
    continuation: Option<SequenceNumber>,
    subscription: Option<Subscription>,
    subscriptions: u64,
}

impl FetchRecords for FanOut {
    /// Returns the records of the next event, subscribing first when there is no live
    /// subscription.
    async fn fetch(&mut self, cursor: &ShardCursor) -> Fetched {
        let Some(subscription) = self.subscription.as_mut() else {
            return self.subscribe(cursor).await;
        };
        let received = tokio::time::timeout(self.idle_timeout, subscription.events.recv()).await;
        match received {
            Err(_silent) => {
                // Hand control back (an empty batch) and subscribe afresh next time.
                self.subscription = None;
                Fetched::Nothing
            }
            Ok(Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)))) => {
                if !subscription.delivered {
                    subscription.delivered = true;
                    self.subscriptions += 1;
                }
                let renew = self
                    .renew_after
                    .is_some_and(|age| subscription.started.elapsed() >= age);
                if renew {
                    // Ending it ourselves (after an event, so that every subscription reads
                    // something) is like the service ending it: the next continues from here.
                    self.subscription = None;
                }
                self.accept(event)
            }
            Ok(Ok(Some(_unknown))) => Fetched::Again, // an event type newer than this SDK
            Ok(Ok(None)) => {
                // The service ended the subscription (it does so after 5 minutes).
                self.subscription = None;
                Fetched::Again
            }
            Ok(Err(error)) => {
                self.subscription = None;
                let (message, retryable) = classify_stream_error(&error);
                if retryable {
                    Fetched::Transient
                } else {
                    Fetched::Fatal(self.fatal(cursor, "reading the event stream", &message))
                }
            }
        }
    }
}

impl FanOut {
    /// Takes an event's records and moves the continuation past it; the event without a
    /// continuation that names child shards is the shard's last.
    fn accept(&mut self, event: SubscribeToShardEvent) -> Fetched {
        let mut children = None;
        match SequenceNumber::new(event.continuation_sequence_number()) {
            Some(continuation) => {
                if self.continuation.as_ref().is_none_or(|c| *c < continuation) {
                    self.continuation = Some(continuation);
                }
            }
            // No continuation: the shard is closed and this was its end.
            None => {
                if let Some(child_shards) = &event.child_shards {
                    self.subscription = None;
                    children = Some(
                        child_shards
                            .iter()
                            .map(|c| c.shard_id().to_string())
                            .collect(),
                    );
                }
            }
        }
        Fetched::Records {
            millis_behind_latest: Some(event.millis_behind_latest),
            records: event.records,
            children,
        }
    }

    /// Where the next subscription starts: after the last event's continuation sequence number,
    /// unless the last emitted user record is further on, or is inside an aggregate not read to
    /// its end (then at that record, skipping the user records already emitted).
    fn read_start(&self, cursor: &ShardCursor) -> ReadStart {
        if let Some(continuation) = &self.continuation {
            let continuation_is_ahead = match &cursor.resume {
                None => true,
                Some(resume) => {
                    *continuation > resume.position.sequence
                        || (*continuation == resume.position.sequence && resume.record_complete)
                }
            };
            if continuation_is_ahead {
                return ReadStart {
                    kind: ShardIteratorType::AfterSequenceNumber,
                    sequence: Some(continuation.as_str().to_string()),
                    timestamp: None,
                };
            }
        }
        ReadStart::new(cursor.resume.as_ref(), cursor.start)
    }

    /// One `SubscribeToShard` call, after the rate limit's wait: [`Fetched::Again`] once
    /// subscribed, [`Fetched::Transient`] after a refusal that passes.
    async fn subscribe(&mut self, cursor: &ShardCursor) -> Fetched {
        self.pacing.wait().await;
        let from = self.read_start(cursor);
        let position = match StartingPosition::builder()
            .r#type(from.kind)
            .set_sequence_number(from.sequence)
            .set_timestamp(from.timestamp)
            .build()
        {
            Ok(position) => position,
            Err(e) => {
                return Fetched::Fatal(self.fatal(
                    cursor,
                    "building the starting position",
                    &e.to_string(),
                ));
            }
        };
        self.pacing.calling();
        let call = self
            .client
            .subscribe_to_shard()
            .consumer_arn(&self.consumer_arn)
            .shard_id(&cursor.shard_id)
            .starting_position(position)
            .send();
        // `send` returns once the first message of the event stream has arrived: bound it like
        // the wait for any other event.
        let Ok(result) = tokio::time::timeout(self.idle_timeout, call).await else {
            return Fetched::Transient;
        };
        match result {
            Ok(output) => {
                self.subscription = Some(Subscription {
                    events: output.event_stream,
                    started: Instant::now(),
                    delivered: false,
                });
                Fetched::Again
            }
            Err(error) => {
                let code = error.as_service_error().and_then(|e| e.code());
                let (message, retryable) = classify(&error);
                // `ResourceInUseException`: the previous subscription is not released yet, or the
                // consumer is not `ACTIVE` yet; both pass.
                if retryable || code == Some("ResourceInUseException") {
                    Fetched::Transient
                } else {
                    Fetched::Fatal(self.fatal(cursor, "subscribing to a shard", &message))
                }
            }
        }
    }

    fn fatal(&self, cursor: &ShardCursor, doing: &str, message: &str) -> ConnectorError {
        ConnectorError::Aws {
            what: format!(
                "{doing} (shard {}, enhanced fan-out consumer {})",
                cursor.shard_id, self.consumer_arn
            ),
            message: message.to_string(),
            retryable: false,
        }
    }
}

/// Classifies an error received on the event stream. The service's errors there are messages of
/// the stream whose metadata has no error code (the SDK keeps the type in the variant only), so
/// [`classify`] cannot tell them apart: they are told apart by variant here.
fn classify_stream_error<R: std::fmt::Debug>(
    error: &SdkError<SubscribeToShardEventStreamError, R>,
) -> (String, bool) {
    use SubscribeToShardEventStreamError as Stream;
    let Some(service) = error.as_service_error() else {
        return classify(error); // transport: a broken or unreadable stream
    };
    let retryable = match service {
        // Another subscription of this consumer to this shard is still live (it will be
        // released), or the consumer or stream is being updated.
        Stream::ResourceInUseException(_)
        | Stream::InternalFailureException(_)
        | Stream::KmsThrottlingException(_) => true,
        Stream::ResourceNotFoundException(_)
        | Stream::KmsDisabledException(_)
        | Stream::KmsInvalidStateException(_)
        | Stream::KmsAccessDeniedException(_)
        | Stream::KmsNotFoundException(_)
        | Stream::KmsOptInRequired(_) => false,
        // Not modelled: trust its code if it has one, else assume trouble that passes, since
        // ending the reader cannot be undone.
        other => other.code().is_none_or(crate::aws::retryable_service_code),
    };
    (service.to_string(), retryable)
}

/// The ARN of a stream given its name (or its ARN, returned as is): `SubscribeToShard` and the
/// consumer calls take ARNs only. Retries throttling and transient errors for up to
/// [`CONSUMER_ACTIVE_TIMEOUT`].
pub async fn stream_arn(
    client: &Client,
    stream: &str,
    backoff: Backoff,
) -> Result<String, ConnectorError> {
    if stream.starts_with("arn:") {
        return Ok(stream.to_string());
    }
    let what = || format!("looking up the ARN of stream {stream}");
    let mut retry = Retry::new(backoff, CONSUMER_ACTIVE_TIMEOUT);
    loop {
        match client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
        {
            Ok(output) => {
                return output
                    .stream_description_summary()
                    .map(|s| s.stream_arn().to_string())
                    .filter(|arn| !arn.is_empty())
                    .ok_or_else(|| ConnectorError::Aws {
                        what: what(),
                        message: "DescribeStreamSummary answered without a stream ARN".to_string(),
                        retryable: true,
                    });
            }
            Err(error) => {
                let (message, retryable) = classify(&error);
                if !retryable {
                    return Err(ConnectorError::Aws {
                        what: what(),
                        message,
                        retryable: false,
                    });
                }
                retry.wait(&what(), &message).await?;
            }
        }
    }
}

/// The ARN of the enhanced fan-out consumer `consumer_name` of the stream `stream_arn`, registered
/// first if it does not exist, once it is `ACTIVE`: waits up to [`CONSUMER_ACTIVE_TIMEOUT`].
///
/// Safe to call from many workers at once: when another one registers the consumer first
/// (`ResourceInUseException`), this one finds it. The consumer is never deregistered, so that a
/// restarted job reuses it.
pub async fn ensure_consumer(
    client: &Client,
    stream_arn: &str,
    consumer_name: &str,
    backoff: Backoff,
) -> Result<String, ConnectorError> {
    ensure_consumer_within(
        client,
        stream_arn,
        consumer_name,
        backoff,
        CONSUMER_ACTIVE_TIMEOUT,
    )
    .await
}

/// [`ensure_consumer`] with another bound on the total wait.
pub async fn ensure_consumer_within(
    client: &Client,
    stream_arn: &str,
    consumer_name: &str,
    backoff: Backoff,
    timeout: Duration,
) -> Result<String, ConnectorError> {
    let what = || format!("registering enhanced fan-out consumer {consumer_name} of {stream_arn}");
    let fatal = |message: String| ConnectorError::Aws {
        what: what(),
        message,
        retryable: false,
    };
    let mut retry = Retry::new(backoff, timeout);
    loop {
        let described = client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(consumer_name)
            .send()
            .await;
        let waiting_for = match described {
            Ok(output) => match output.consumer_description() {
                Some(consumer) if *consumer.consumer_status() == ConsumerStatus::Active => {
                    return Ok(consumer.consumer_arn().to_string());
                }
                Some(consumer) => format!("its status is {}", consumer.consumer_status().as_str()),
                None => "DescribeStreamConsumer answered without a description".to_string(),
            },
            Err(error)
                if error.as_service_error().and_then(|e| e.code())
                    == Some("ResourceNotFoundException") =>
            {
                match client
                    .register_stream_consumer()
                    .stream_arn(stream_arn)
                    .consumer_name(consumer_name)
                    .send()
                    .await
                {
                    // Registered: it is `CREATING`; look again after a pause.
                    Ok(_) => "it was just registered".to_string(),
                    Err(error) => {
                        let code = error.as_service_error().and_then(|e| e.code());
                        let (message, retryable) = classify(&error);
                        if code == Some("ResourceInUseException") {
                            // Someone else registered it (or it is being deleted): look again.
                            message
                        } else if retryable {
                            message
                        } else {
                            return Err(fatal(message));
                        }
                    }
                }
            }
            Err(error) => {
                let (message, retryable) = classify(&error);
                if !retryable {
                    return Err(fatal(message));
                }
                message
            }
        };
        retry
            .wait(&what(), &format!("it is not ACTIVE yet ({waiting_for})"))
            .await?;
    }
}

/// A bounded sequence of backoff waits for the setup calls.
#[derive(Debug)]
struct Retry {
    backoff: Backoff,
    deadline: Instant,
    timeout: Duration,
    attempt: u32,
    jitter: Jitter,
}

impl Retry {
    fn new(backoff: Backoff, timeout: Duration) -> Self {
        Retry {
            backoff,
            deadline: Instant::now() + timeout,
            timeout,
            attempt: 0,
            jitter: Jitter::new(),
        }
    }

    /// Waits before the next attempt, or fails (retryable: a later run may succeed) once the
    /// deadline has passed; `last` says why the last attempt did not succeed.
    async fn wait(&mut self, what: &str, last: &str) -> Result<(), ConnectorError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectorError::Aws {
                what: what.to_string(),
                message: format!(
                    "gave up after {:.1} s: {last}; if the stream is being resharded or the \
                     consumer created or deleted, try again in a few minutes",
                    self.timeout.as_secs_f64()
                ),
                retryable: true,
            });
        }
        self.attempt = self.attempt.saturating_add(1);
        let delay = self
            .backoff
            .delay(self.attempt, self.jitter.next_u64())
            .min(left);
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::shard_reader::ShardBatch;
    use crate::kinesis::shards::Position;

    /// What the reader makes of one event.
    fn accept(reader: &mut FanOutReader, event: SubscribeToShardEvent) -> ShardBatch {
        match reader.fetch.accept(event) {
            Fetched::Records {
                records,
                millis_behind_latest,
                children,
            } => reader.take(records, millis_behind_latest, children),
            other => panic!("an event gives records, not {other:?}"),
        }
    }

    /// Where the reader's next subscription would start.
    fn read_start(reader: &FanOutReader) -> ReadStart {
        reader.fetch.read_start(&reader.cursor)
    }

    fn reader(resume: Option<ResumePoint>) -> FanOutReader {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .build();
        FanOutReader::new(
            Client::from_conf(config),
            "arn:aws:kinesis:us-east-1:000000000000:stream/g1/consumer/c:1",
            "shardId-000000000000",
            StartPosition::TrimHorizon,
            resume,
            FanOutSettings::default(),
        )
    }

    fn seq(text: &str) -> SequenceNumber {
        SequenceNumber::new(text).unwrap_or_else(|| panic!("{text} is a sequence number"))
    }

    fn resume(sequence: &str, sub_sequence: u64, record_complete: bool) -> ResumePoint {
        ResumePoint {
            position: Position {
                sequence: seq(sequence),
                sub_sequence,
            },
            record_complete,
        }
    }

    fn record(sequence: &str, data: &[u8]) -> aws_sdk_kinesis::types::Record {
        aws_sdk_kinesis::types::Record::builder()
            .sequence_number(sequence)
            .partition_key("u")
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .build()
            .unwrap()
    }

    fn event(
        records: Vec<aws_sdk_kinesis::types::Record>,
        continuation: &str,
        children: Option<&[&str]>,
    ) -> SubscribeToShardEvent {
        let children = children.map(|ids| {
            ids.iter()
                .map(|id| {
                    aws_sdk_kinesis::types::ChildShard::builder()
                        .shard_id(*id)
                        .set_parent_shards(Some(vec!["shardId-000000000000".to_string()]))
                        .hash_key_range(
                            aws_sdk_kinesis::types::HashKeyRange::builder()
                                .starting_hash_key("0")
                                .ending_hash_key("1")
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap()
                })
                .collect()
        });
        SubscribeToShardEvent::builder()
            .set_records(Some(records))
            .continuation_sequence_number(continuation)
            .millis_behind_latest(7)
            .set_child_shards(children)
            .build()
            .unwrap()
    }

    #[test]
    fn starts_from_the_start_position_then_after_the_continuation() {
        let mut reader = reader(None);
        assert_eq!(read_start(&reader).kind, ShardIteratorType::TrimHorizon);
        let batch = accept(&mut reader, event(vec![record("100", b"a")], "100", None));
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.millis_behind_latest, Some(7));
        // An event without records still moves the continuation: no need to re-read from 100.
        let batch = accept(&mut reader, event(vec![], "250", None));
        assert!(batch.records.is_empty());
        let start = read_start(&reader);
        assert_eq!(start.kind, ShardIteratorType::AfterSequenceNumber);
        assert_eq!(start.sequence.as_deref(), Some("250"));
        // An older continuation (never sent by the service) does not move it back.
        accept(&mut reader, event(vec![], "200", None));
        assert_eq!(read_start(&reader).sequence.as_deref(), Some("250"));
    }

    #[test]
    fn resubscribes_at_a_partly_emitted_aggregate_and_skips_what_was_emitted() {
        // Saved inside the aggregate at 300 (user records 0..=1 of 3 emitted).
        let mut reader = reader(Some(resume("300", 1, false)));
        let start = read_start(&reader);
        assert_eq!(start.kind, ShardIteratorType::AtSequenceNumber);
        assert_eq!(start.sequence.as_deref(), Some("300"));

        // The subscription ends before any event: the same start again (not the continuation of
        // an earlier subscription, not the start position).
        assert_eq!(read_start(&reader), start);

        let packed = crate::kinesis::kpl::aggregate(&[
            ("u", b"a0".as_slice()),
            ("u", b"a1".as_slice()),
            ("u", b"a2".as_slice()),
        ]);
        let batch = accept(
            &mut reader,
            event(
                vec![record("300", &packed), record("301", b"b")],
                "301",
                None,
            ),
        );
        let data: Vec<&[u8]> = batch.records.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(
            data,
            [b"a2".as_slice(), b"b".as_slice()],
            "a0, a1 were emitted before"
        );
        assert_eq!(reader.resume_point(), Some(&resume("301", 0, true)));
        let start = read_start(&reader);
        assert_eq!(start.kind, ShardIteratorType::AfterSequenceNumber);
        assert_eq!(start.sequence.as_deref(), Some("301"));
    }

    #[test]
    fn a_continuation_behind_the_resume_point_is_not_used() {
        let mut reader = reader(Some(resume("500", 0, true)));
        accept(&mut reader, event(vec![], "400", None));
        let start = read_start(&reader);
        assert_eq!(start.kind, ShardIteratorType::AfterSequenceNumber);
        assert_eq!(start.sequence.as_deref(), Some("500"));
    }

    #[test]
    fn the_event_without_continuation_ends_the_shard_with_its_children() {
        let mut reader = reader(None);
        accept(&mut reader, event(vec![record("1", b"x")], "1", None));
        assert!(!reader.is_finished());
        let batch = accept(
            &mut reader,
            event(
                vec![record("2", b"y")],
                "",
                Some(&["shardId-000000000001", "shardId-000000000002"]),
            ),
        );
        assert!(reader.is_finished());
        assert_eq!(batch.records.len(), 1, "the last event's records are kept");
        assert_eq!(
            batch.finished_with_children,
            Some(vec![
                "shardId-000000000001".to_string(),
                "shardId-000000000002".to_string()
            ])
        );
    }

    #[tokio::test]
    async fn a_finished_reader_returns_empty_batches_without_calling() {
        let mut reader = reader(None);
        accept(&mut reader, event(vec![], "", Some(&[])));
        assert!(reader.is_finished());
        let batch = reader.next_batch().await.unwrap();
        assert_eq!(batch, ShardBatch::default());
        assert_eq!(reader.subscription_count(), 0);
    }
}
