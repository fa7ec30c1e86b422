//! An Amazon SQS FIFO queue as the buffer in front of a Kinesis stream.
//!
//! When Kinesis refuses writes (throttling, an outage), the collector still owes its client an
//! answer within seconds. Like Snowplow's stream collector, it then puts the records in an SQS
//! queue, and a drainer moves them to Kinesis later. The queue must be a **FIFO** queue
//! (`….fifo`): a standard queue may hand messages back in any order, and a reader's pageviews
//! must reach Kinesis in the order they were taken.
//!
//! One record is one message:
//! - the body is the record (a JSON line, so valid message text);
//! - `MessageGroupId` is derived from the partition key (`user_id`): FIFO order holds within a
//!   group, which is exactly the order Kinesis keeps per partition key; a key that is not a valid
//!   group id (longer than 128 characters or outside printable ASCII) is replaced by its hash,
//!   which groups the same records;
//! - the partition key itself travels as the message attribute [`PARTITION_KEY_ATTRIBUTE`], so
//!   the drainer writes the record to Kinesis with its original key;
//! - `MessageDeduplicationId` is a hash of key and record: a batch re-sent after a timeout whose
//!   first try did succeed is not queued twice (within SQS's 5-minute deduplication interval).
//!
//! [`SqsBuffer::send`] goes through [`crate::batch::deliver`] (batches of 10 entries and 256 KiB,
//! failed entries re-sent in order); [`SqsBuffer::receive`] and [`SqsBuffer::delete`] are the
//! drainer's side: a message is deleted only after its record is in Kinesis.

use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use tokio::sync::OnceCell;

use crate::aws::{classify, retryable_service_code};
use crate::batch::{BatchApi, BatchLimits, CallFailure, Delivery, EntryOutcome, OutRecord};
use crate::batch::{RetryPolicy, deliver};

/// The message attribute holding the record's partition key.
pub const PARTITION_KEY_ATTRIBUTE: &str = "partition_key";

/// The most messages one `ReceiveMessage` returns (SQS's limit).
pub const MAX_RECEIVE: usize = 10;

/// A FIFO queue buffering one portal's records.
#[derive(Debug)]
pub struct SqsBuffer {
    client: aws_sdk_sqs::Client,
    /// The queue as configured: a name or a URL.
    queue: String,
    /// Its URL, looked up once when a name was configured.
    url: OnceCell<String>,
}

/// A message received from the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferedRecord {
    /// The record, with its original partition key.
    pub record: OutRecord,
    /// What deletes the message.
    pub receipt_handle: String,
    /// When SQS took it (ms since the epoch; 0 if SQS did not say).
    pub sent_ms: u64,
}

impl SqsBuffer {
    /// The queue `queue` (a name, or a URL starting with `https://` or `http://`).
    pub fn new(client: aws_sdk_sqs::Client, queue: &str) -> Self {
        SqsBuffer {
            client,
            queue: queue.to_string(),
            url: OnceCell::new(),
        }
    }

    /// The queue as configured.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The queue's URL (looked up by name once).
    pub async fn url(&self) -> Result<&str, CallFailure> {
        self.url
            .get_or_try_init(|| async {
                if self.queue.starts_with("https://") || self.queue.starts_with("http://") {
                    return Ok(self.queue.clone());
                }
                match self
                    .client
                    .get_queue_url()
                    .queue_name(&self.queue)
                    .send()
                    .await
                {
                    Ok(output) => {
                        output
                            .queue_url()
                            .map(str::to_string)
                            .ok_or_else(|| CallFailure {
                                message: format!("SQS gave no URL for queue {}", self.queue),
                                retryable: true,
                            })
                    }
                    Err(error) => Err(sdk_failure(
                        "find",
                        &self.queue,
                        "; check [[collect.portals]] sqs_queue and the queue's region",
                        &error,
                    )),
                }
            })
            .await
            .map(String::as_str)
    }

    /// Queues `records` in order, re-sending failed entries within `policy`; what could not be
    /// queued is in the answer's `undeliverable`.
    pub async fn send(&self, records: Vec<OutRecord>, policy: RetryPolicy) -> Delivery {
        deliver(self, records, policy).await
    }

    /// Up to `max` (at most [`MAX_RECEIVE`]) messages, waiting up to `wait` for the first (long
    /// polling); an empty answer means the queue had nothing visible for this long.
    pub async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<BufferedRecord>, CallFailure> {
        let url = self.url().await?;
        let output = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, MAX_RECEIVE) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names(PARTITION_KEY_ATTRIBUTE)
            .send()
            .await
            .map_err(|error| sdk_failure("receive from", &self.queue, "", &error))?;
        let mut received = Vec::new();
        for message in output.messages() {
            let (Some(body), Some(receipt)) = (message.body(), message.receipt_handle()) else {
                continue;
            };
            let partition_key = message
                .message_attributes()
                .and_then(|attributes| attributes.get(PARTITION_KEY_ATTRIBUTE))
                .and_then(|value| value.string_value())
                .map(str::to_string)
                // Queued by something else than pageflow: its group is the best key there is.
                .or_else(|| {
                    message
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                        .cloned()
                })
                .unwrap_or_else(|| "unknown".to_string());
            let sent_ms = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            received.push(BufferedRecord {
                record: OutRecord {
                    partition_key,
                    data: body.as_bytes().to_vec(),
                },
                receipt_handle: receipt.to_string(),
                sent_ms,
            });
        }
        Ok(received)
    }

    /// Deletes the messages of `receipts` (each already written to Kinesis).
    pub async fn delete(&self, receipts: &[String]) -> Result<(), CallFailure> {
        let url = self.url().await?;
        for chunk in receipts.chunks(MAX_RECEIVE) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| invalid("delete entry", error))?;
            let output = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|error| {
                    sdk_failure("delete drained messages from", &self.queue, "", &error)
                })?;
            if let Some(failed) = output.failed().first() {
                return Err(CallFailure {
                    message: format!(
                        "SQS queue {} did not delete {} drained message(s): {}: {}",
                        self.queue,
                        output.failed().len(),
                        failed.code(),
                        failed.message().unwrap_or_default()
                    ),
                    retryable: !failed.sender_fault(),
                });
            }
        }
        Ok(())
    }
}

/// A failed SDK call of `queue`: what was being done, the SDK's reason, and whether a retry may
/// help (see [`classify`]).
fn sdk_failure<E, R>(
    doing: &str,
    queue: &str,
    hint: &str,
    error: &aws_sdk_sqs::error::SdkError<E, R>,
) -> CallFailure
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (message, retryable) = classify(error);
    CallFailure {
        message: format!("cannot {doing} SQS queue {queue}: {message}{hint}"),
        retryable,
    }
}

/// A request this code built wrongly (a missing required field): no retry can help.
fn invalid(what: &str, error: impl std::fmt::Display) -> CallFailure {
    CallFailure {
        message: format!("invalid {what}: {error}"),
        retryable: false,
    }
}

/// The message group of a partition key: the key itself when SQS allows it (1–128 printable
/// ASCII characters), else `h-` and its hash.
pub fn group_id(partition_key: &str) -> String {
    let allowed = !partition_key.is_empty()
        && partition_key.len() <= 128
        && partition_key.bytes().all(|b| b.is_ascii_graphic());
    if allowed {
        partition_key.to_string()
    } else {
        format!(
            "h-{:032x}",
            xxhash_rust::xxh3::xxh3_128(partition_key.as_bytes())
        )
    }
}

/// The deduplication id of a record: a hash of its key and bytes.
pub fn deduplication_id(record: &OutRecord) -> String {
    let mut bytes = Vec::with_capacity(record.partition_key.len() + 1 + record.data.len());
    bytes.extend_from_slice(record.partition_key.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&record.data);
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

impl BatchApi for SqsBuffer {
    fn destination(&self) -> String {
        format!("SQS queue {}", self.queue)
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_records: 10,
            max_batch_bytes: 256 * 1024,
            max_record_bytes: 256 * 1024,
        }
    }

    fn entry_size(&self, record: &OutRecord) -> usize {
        // The body, and the attribute as SQS counts it (name, type and value).
        record.data.len()
            + PARTITION_KEY_ATTRIBUTE.len()
            + "String".len()
            + record.partition_key.len()
    }

    fn retryable_code(&self, code: &str) -> bool {
        retryable_service_code(code)
            || matches!(
                code,
                "RequestThrottled" | "KmsThrottled" | "AWS.SimpleQueueService.RequestThrottled"
            )
    }

    async fn put_batch(&self, batch: &[OutRecord]) -> Result<Vec<EntryOutcome>, CallFailure> {
        let url = self.url().await?;
        let mut entries = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            let body = std::str::from_utf8(&record.data).map_err(|_| CallFailure {
                message: "a record is not UTF-8 text and cannot be an SQS message".to_string(),
                retryable: false,
            })?;
            let key = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(&record.partition_key)
                .build()
                .map_err(|error| invalid("message attribute", error))?;
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .message_group_id(group_id(&record.partition_key))
                .message_deduplication_id(deduplication_id(record))
                .message_attributes(PARTITION_KEY_ATTRIBUTE, key)
                .build()
                .map_err(|error| invalid("SQS entry", error))?;
            entries.push(entry);
        }
        let output = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|error| sdk_failure("send to", &self.queue, "", &error))?;
        // SQS answers successes and failures in two lists, by entry id.
        let mut outcomes = vec![
            EntryOutcome::Failed {
                code: "MissingEntryResult".into(),
                message: "SQS did not report this entry".into(),
            };
            batch.len()
        ];
        for ok in output.successful() {
            if let Some(slot) = ok
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| outcomes.get_mut(i))
            {
                *slot = EntryOutcome::Written;
            }
        }
        for failed in output.failed() {
            if let Some(slot) = failed
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| outcomes.get_mut(i))
            {
                *slot = EntryOutcome::Failed {
                    code: failed.code().to_string(),
                    message: failed.message().unwrap_or_default().to_string(),
                };
            }
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printable_key_is_its_own_group_and_others_are_hashed_alike() {
        assert_eq!(group_id("u-48213"), "u-48213");
        let long = "x".repeat(129);
        for key in ["joão", "a b", "", long.as_str()] {
            let group = group_id(key);
            assert!(
                group.starts_with("h-") && group.len() == 34,
                "{key}: {group}"
            );
            assert_eq!(group, group_id(key), "the same key, the same group");
        }
        assert_ne!(group_id("joão"), group_id("joao "));
    }

    #[test]
    fn the_deduplication_id_depends_on_key_and_bytes() {
        let record = |key: &str, data: &str| OutRecord {
            partition_key: key.into(),
            data: data.as_bytes().to_vec(),
        };
        let id = deduplication_id(&record("u", "{}"));
        assert_eq!(id.len(), 32);
        assert_eq!(id, deduplication_id(&record("u", "{}")));
        assert_ne!(id, deduplication_id(&record("v", "{}")));
        // The separator keeps "ab"+"c" apart from "a"+"bc".
        assert_ne!(
            deduplication_id(&record("ab", "c")),
            deduplication_id(&record("a", "bc"))
        );
    }
}
