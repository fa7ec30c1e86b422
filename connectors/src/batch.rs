//! Batched delivery with per-entry retries: the common core of the Kinesis `PutRecords` and the
//! Firehose `PutRecordBatch` sinks.
//!
//! Both APIs take up to a few hundred records per call and answer per entry: most succeed, some
//! fail (throttling, an internal failure) while the call itself succeeds. [`deliver`] cuts records
//! into batches within the service's limits, sends each, and re-sends only the entries that failed
//! with a retryable code, after a jittered backoff, in their original order and before any later
//! batch, so a retried record is never overtaken by newer records of the same stream. An entry that
//! fails with a code no retry can fix, that keeps failing after the last attempt, or that is larger
//! than a record may be, is returned as *undeliverable* with the reason: nothing is dropped silently.

use std::collections::VecDeque;
use std::future::Future;

use crate::retry::{Backoff, Jitter};

/// One record to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRecord {
    /// The partition key (Kinesis); ignored by Firehose.
    pub partition_key: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The service's limits on one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Records per call.
    pub max_records: usize,
    /// Bytes per call (as the service counts them, see [`BatchApi::entry_size`]).
    pub max_batch_bytes: usize,
    /// Bytes per record.
    pub max_record_bytes: usize,
}

/// The answer for one entry of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Written.
    Written,
    /// Not written: the service's error code and message.
    Failed {
        /// E.g. `ProvisionedThroughputExceededException`.
        code: String,
        /// The service's explanation.
        message: String,
    },
}

impl EntryOutcome {
    /// The outcome of an entry whose answer carries an optional error code and message (the
    /// shape of both `PutRecords` and `PutRecordBatch` results).
    pub fn from_response(code: Option<&str>, message: Option<&str>) -> Self {
        match code {
            None => EntryOutcome::Written,
            Some(code) => EntryOutcome::Failed {
                code: code.to_string(),
                message: message.unwrap_or_default().to_string(),
            },
        }
    }
}

/// A call that failed as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallFailure {
    /// What went wrong.
    pub message: String,
    /// Whether sending the same batch again may work (throttling, a 5xx, a timeout).
    pub retryable: bool,
}

/// A batch API: Kinesis `PutRecords`, Firehose `PutRecordBatch`, or a test double.
pub trait BatchApi {
    /// The destination, for messages (e.g. `kinesis stream features`).
    fn destination(&self) -> String;
    /// The limits of one call.
    fn limits(&self) -> BatchLimits;
    /// How many bytes the service counts for an entry.
    fn entry_size(&self, record: &OutRecord) -> usize;
    /// Whether an entry that failed with `code` may succeed if sent again.
    fn retryable_code(&self, code: &str) -> bool;
    /// Sends one batch; on success returns one outcome per entry, in order.
    fn put_batch(
        &self,
        batch: &[OutRecord],
    ) -> impl Future<Output = Result<Vec<EntryOutcome>, CallFailure>>;
}

/// How hard to try.
///
/// The default retries retryable failures (throttling, 5xx, timeouts) until they succeed, with
/// capped backoff: during an outage the sink slows down and, through its bounded channel, the whole
/// job with it, instead of turning valid records into dead letters. Only failures no retry can fix
/// become undeliverable. A bound (`max_attempts`) is for callers that must not wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per entry (or per batch, for whole-call failures), the first included; `None` to
    /// keep trying retryable failures.
    pub max_attempts: Option<u32>,
    /// The delays between them.
    pub backoff: Backoff,
}

impl RetryPolicy {
    fn may_retry(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt < max)
    }
}

/// What happened to a delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Records written.
    pub written: usize,
    /// Calls made.
    pub calls: usize,
    /// Entries re-sent after a failure.
    pub retried_entries: usize,
    /// Records that could not be written, each with the reason (for the dead-letter output).
    pub undeliverable: Vec<(OutRecord, String)>,
    /// A failure no retry can fix (a missing stream, no permission): the delivery stopped and every
    /// record not yet written is in `undeliverable`. The job should stop and say this.
    pub fatal: Option<String>,
}

/// Delivers `records` through `api`, in order, within its limits, retrying what can be retried.
pub async fn deliver<A: BatchApi>(
    api: &A,
    records: Vec<OutRecord>,
    policy: RetryPolicy,
) -> Delivery {
    let limits = api.limits();
    let mut jitter = Jitter::new();
    let mut report = Delivery::default();
    let mut queue: VecDeque<OutRecord> = VecDeque::with_capacity(records.len());
    for record in records {
        let size = api.entry_size(&record);
        if size > limits.max_record_bytes {
            let reason = format!(
                "record of {size} bytes is larger than the {} bytes {} accepts; it cannot be sent",
                limits.max_record_bytes,
                api.destination()
            );
            report.undeliverable.push((record, reason));
        } else {
            queue.push_back(record);
        }
    }

    while !queue.is_empty() {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(record) = queue.front() {
            let size = api.entry_size(record);
            if batch.len() == limits.max_records
                || (!batch.is_empty() && bytes + size > limits.max_batch_bytes)
            {
                break;
            }
            bytes += size;
            batch.extend(queue.pop_front());
        }

        let mut attempt = 1;
        loop {
            report.calls += 1;
            match api.put_batch(&batch).await {
                Ok(outcomes) => {
                    let mut retry = Vec::new();
                    for (record, outcome) in
                        batch
                            .into_iter()
                            .zip(outcomes.into_iter().chain(std::iter::repeat_with(|| {
                                EntryOutcome::Failed {
                                    code: "MissingEntryResult".into(),
                                    message: "the service answered fewer entries than were sent"
                                        .into(),
                                }
                            })))
                    {
                        match outcome {
                            EntryOutcome::Written => report.written += 1,
                            EntryOutcome::Failed { code, message } => {
                                if api.retryable_code(&code) && policy.may_retry(attempt) {
                                    retry.push(record);
                                } else {
                                    let reason = if api.retryable_code(&code) {
                                        format!(
                                            "{} kept failing after {attempt} attempts: {code}: {message}",
                                            api.destination()
                                        )
                                    } else {
                                        format!(
                                            "{} refused the record: {code}: {message}",
                                            api.destination()
                                        )
                                    };
                                    report.undeliverable.push((record, reason));
                                }
                            }
                        }
                    }
                    if retry.is_empty() {
                        break;
                    }
                    report.retried_entries += retry.len();
                    tokio::time::sleep(policy.backoff.delay(attempt, jitter.next_u64())).await;
                    attempt += 1;
                    batch = retry;
                }
                Err(failure) if failure.retryable && policy.may_retry(attempt) => {
                    tokio::time::sleep(policy.backoff.delay(attempt, jitter.next_u64())).await;
                    attempt += 1;
                }
                Err(failure) => {
                    let reason = format!("{}: {}", api.destination(), failure.message);
                    report.undeliverable.extend(
                        batch
                            .into_iter()
                            .chain(queue.drain(..))
                            .map(|r| (r, reason.clone())),
                    );
                    if !failure.retryable {
                        report.fatal = Some(reason);
                    }
                    return report;
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    /// An in-process double of a batch API: fails chosen records a number of times, records calls.
    struct FlakyApi {
        limits: BatchLimits,
        /// data → how many more times it fails, and with which code.
        failures: RefCell<HashMap<Vec<u8>, (u32, &'static str)>>,
        calls: RefCell<Vec<Vec<OutRecord>>>,
        written: RefCell<Vec<OutRecord>>,
        call_failures: RefCell<u32>,
    }

    impl FlakyApi {
        fn new(limits: BatchLimits) -> Self {
            FlakyApi {
                limits,
                failures: RefCell::default(),
                calls: RefCell::default(),
                written: RefCell::default(),
                call_failures: RefCell::new(0),
            }
        }
    }

    impl BatchApi for FlakyApi {
        fn destination(&self) -> String {
            "test stream".into()
        }
        fn limits(&self) -> BatchLimits {
            self.limits
        }
        fn entry_size(&self, record: &OutRecord) -> usize {
            record.data.len() + record.partition_key.len()
        }
        fn retryable_code(&self, code: &str) -> bool {
            code == "ProvisionedThroughputExceededException"
        }
        async fn put_batch(&self, batch: &[OutRecord]) -> Result<Vec<EntryOutcome>, CallFailure> {
            self.calls.borrow_mut().push(batch.to_vec());
            if *self.call_failures.borrow() > 0 {
                *self.call_failures.borrow_mut() -= 1;
                return Err(CallFailure {
                    message: "503".into(),
                    retryable: true,
                });
            }
            Ok(batch
                .iter()
                .map(
                    |record| match self.failures.borrow_mut().get_mut(&record.data) {
                        Some((times, code)) if *times > 0 => {
                            *times -= 1;
                            EntryOutcome::Failed {
                                code: (*code).into(),
                                message: "try later".into(),
                            }
                        }
                        _ => {
                            self.written.borrow_mut().push(record.clone());
                            EntryOutcome::Written
                        }
                    },
                )
                .collect())
        }
    }

    fn record(n: usize) -> OutRecord {
        OutRecord {
            partition_key: format!("k{}", n % 3),
            data: format!("record-{n:04}").into_bytes(),
        }
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: Some(4),
            backoff: Backoff {
                base: Duration::from_micros(10),
                max: Duration::from_micros(100),
            },
        }
    }

    fn run<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| rt.block_on(future))
            .unwrap()
    }

    #[test]
    fn batches_respect_count_and_byte_limits() {
        let api = FlakyApi::new(BatchLimits {
            max_records: 5,
            max_batch_bytes: 40,
            max_record_bytes: 40,
        });
        let records: Vec<OutRecord> = (0..23).map(record).collect();
        let report = run(deliver(&api, records.clone(), quick()));
        assert_eq!(report.written, 23);
        assert!(report.undeliverable.is_empty());
        for call in api.calls.borrow().iter() {
            assert!(call.len() <= 5);
            assert!(
                call.iter().map(|r| api.entry_size(r)).sum::<usize>() <= 40,
                "{call:?}"
            );
        }
        assert_eq!(*api.written.borrow(), records, "written in order");
    }

    #[test]
    fn only_failed_entries_are_retried_in_order_before_later_batches() {
        let api = FlakyApi::new(BatchLimits {
            max_records: 4,
            max_batch_bytes: 1 << 20,
            max_record_bytes: 1 << 20,
        });
        for n in [1, 2] {
            api.failures.borrow_mut().insert(
                record(n).data,
                (2, "ProvisionedThroughputExceededException"),
            );
        }
        let records: Vec<OutRecord> = (0..8).map(record).collect();
        let report = run(deliver(&api, records, quick()));
        assert_eq!(report.written, 8);
        assert_eq!(report.retried_entries, 4);
        let calls = api.calls.borrow();
        assert_eq!(
            calls[1],
            vec![record(1), record(2)],
            "the retry holds only the failed entries, in order"
        );
        assert_eq!(calls[2], vec![record(1), record(2)]);
        assert_eq!(
            calls[3].first(),
            Some(&record(4)),
            "the next batch waits for the retries"
        );
        let written: Vec<String> = api
            .written
            .borrow()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect();
        assert_eq!(
            written[..4],
            ["record-0000", "record-0003", "record-0001", "record-0002"]
        );
    }

    #[test]
    fn nothing_is_lost_silently() {
        let api = FlakyApi::new(BatchLimits {
            max_records: 10,
            max_batch_bytes: 1 << 20,
            max_record_bytes: 20,
        });
        api.failures.borrow_mut().insert(
            record(1).data,
            (100, "ProvisionedThroughputExceededException"),
        );
        api.failures
            .borrow_mut()
            .insert(record(2).data, (1, "KMSAccessDeniedException"));
        let mut records: Vec<OutRecord> = (0..5).map(record).collect();
        records.push(OutRecord {
            partition_key: "k".into(),
            data: vec![b'x'; 64],
        });
        let report = run(deliver(&api, records, quick()));
        assert_eq!(report.written, 3);
        let reasons: Vec<&str> = report
            .undeliverable
            .iter()
            .map(|(_, reason)| reason.as_str())
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("larger than")));
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("refused") && r.contains("KMSAccessDenied"))
        );
        assert!(reasons.iter().any(|r| r.contains("after 4 attempts")));
        assert!(report.fatal.is_none());
    }

    #[test]
    fn without_a_bound_retryable_failures_are_retried_until_written() {
        let api = FlakyApi::new(BatchLimits {
            max_records: 10,
            max_batch_bytes: 1 << 20,
            max_record_bytes: 1 << 20,
        });
        api.failures.borrow_mut().insert(
            record(1).data,
            (25, "ProvisionedThroughputExceededException"),
        );
        *api.call_failures.borrow_mut() = 12;
        let unbounded = RetryPolicy {
            max_attempts: None,
            ..quick()
        };
        let report = run(deliver(&api, (0..3).map(record).collect(), unbounded));
        assert_eq!(
            report.written, 3,
            "a throttled record is delayed, not dead-lettered"
        );
        assert!(report.undeliverable.is_empty());
    }

    #[test]
    fn whole_call_failures_are_retried_then_reported() {
        let api = FlakyApi::new(BatchLimits {
            max_records: 10,
            max_batch_bytes: 1 << 20,
            max_record_bytes: 1 << 20,
        });
        *api.call_failures.borrow_mut() = 2;
        let report = run(deliver(&api, (0..3).map(record).collect(), quick()));
        assert_eq!((report.written, report.calls), (3, 3));
        *api.call_failures.borrow_mut() = 10;
        let report = run(deliver(&api, (0..3).map(record).collect(), quick()));
        assert_eq!(report.written, 0);
        assert_eq!(report.undeliverable.len(), 3);
    }
}
