//! The archive through Kinesis Data Firehose: newline-delimited JSON with `PutRecordBatch`.
//!
//! One delivery stream per layer (`raw`, `processed`, `dead-letter`), each delivering to its S3
//! prefix; partitioning by portal and event date/hour is the delivery stream's dynamic
//! partitioning on the records' `portal` and `ts` fields (see `deploy/`).
//!
//! **Lines are packed**: up to [`LINES_PER_RECORD`] JSON lines (each ending in a newline) go into
//! one Firehose record of at most 1,000 KiB, which the delivery stream splits again before
//! partitioning (its record de-aggregation, JSON type: the template in `deploy/cloudformation`).
//! Firehose bills every record as at least 5 KB; one ~350-byte line per record was billed 14
//! times its size. Batches of at most 500 records and 4 MiB. Failed entries are re-sent alone
//! with backoff ([`crate::batch::deliver`]); what can never be written comes back as
//! undeliverable, line by line.

use aws_sdk_firehose::Client;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;

use crate::aws::{classify, retryable_service_code};
use crate::batch::{
    BatchApi, BatchLimits, CallFailure, Delivery, EntryOutcome, OutRecord, RetryPolicy, deliver,
};

/// One Firehose delivery stream written with `PutRecordBatch`.
#[derive(Clone, Debug)]
pub struct DeliveryStream {
    client: Client,
    name: String,
    /// Lines packed into one record (see the module docs).
    lines_per_record: usize,
}

impl DeliveryStream {
    /// A writer for the delivery stream `name`.
    pub fn with_client(client: Client, name: &str) -> Self {
        DeliveryStream {
            client,
            name: name.to_string(),
            lines_per_record: LINES_PER_RECORD,
        }
    }

    /// Packs at most `lines` lines into each record (1 to [`LINES_PER_RECORD`]; 1 sends one
    /// line per record, for a delivery stream without record de-aggregation).
    pub fn with_lines_per_record(mut self, lines: usize) -> Self {
        self.lines_per_record = lines.clamp(1, LINES_PER_RECORD);
        self
    }

    /// Writes JSON documents (one per item, without line breaks), each as one line, packed into
    /// records (see the module docs). `written` and `undeliverable` count lines.
    pub async fn write_lines(&self, lines: Vec<Vec<u8>>, policy: RetryPolicy) -> Delivery {
        let total = lines.len();
        let delivery = deliver(self, pack_lines(lines, self.lines_per_record), policy).await;
        unpack_delivery(delivery, total)
    }
}

/// The most lines packed into one Firehose record: record de-aggregation splits at most 500.
pub const LINES_PER_RECORD: usize = 500;

/// The largest Firehose record (1,000 KiB).
const MAX_RECORD_BYTES: usize = 1000 * 1024;

/// Packs lines (without line breaks) into records of at most `per_record` lines and 1,000 KiB,
/// each line ending in a newline, in order. A line too long for any record is a record of its own
/// (refused as undeliverable).
fn pack_lines(lines: Vec<Vec<u8>>, per_record: usize) -> Vec<OutRecord> {
    let mut records = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut in_current = 0;
    for line in lines {
        let size = line.len() + 1;
        if in_current > 0 && (in_current == per_record || current.len() + size > MAX_RECORD_BYTES) {
            records.push(OutRecord {
                partition_key: String::new(),
                data: std::mem::take(&mut current),
            });
            in_current = 0;
        }
        current.extend_from_slice(&line);
        current.push(b'\n');
        in_current += 1;
    }
    if in_current > 0 {
        records.push(OutRecord {
            partition_key: String::new(),
            data: current,
        });
    }
    records
}

/// The delivery of packed records, counted in lines: an undeliverable record gives back each of
/// its lines (one dead letter each).
fn unpack_delivery(mut delivery: Delivery, lines: usize) -> Delivery {
    let undeliverable: Vec<(OutRecord, String)> = delivery
        .undeliverable
        .drain(..)
        .flat_map(|(record, reason)| {
            record
                .data
                .split_inclusive(|byte| *byte == b'\n')
                .map(|line| {
                    (
                        OutRecord {
                            partition_key: String::new(),
                            data: line.to_vec(),
                        },
                        reason.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    delivery.written = lines.saturating_sub(undeliverable.len());
    delivery.undeliverable = undeliverable;
    delivery
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize, size: usize) -> Vec<u8> {
        let mut text = format!("{{\"n\":{n},\"pad\":\"");
        text.push_str(&"x".repeat(size.saturating_sub(text.len() + 2)));
        text.push_str("\"}");
        text.into_bytes()
    }

    #[test]
    fn lines_are_packed_by_count_and_size_and_keep_their_order() {
        let lines: Vec<Vec<u8>> = (0..1_200).map(|n| line(n, 100)).collect();
        let records = pack_lines(lines.clone(), LINES_PER_RECORD);
        let counts: Vec<usize> = records
            .iter()
            .map(|r| r.data.iter().filter(|b| **b == b'\n').count())
            .collect();
        assert_eq!(counts, [500, 500, 200], "at most 500 lines a record");
        let joined: Vec<u8> = records.iter().flat_map(|r| r.data.clone()).collect();
        let expected: Vec<u8> = lines
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect();
        assert_eq!(
            joined, expected,
            "the same lines, in order, each ending in a newline"
        );

        let big: Vec<Vec<u8>> = (0..30).map(|n| line(n, 100 * 1024)).collect();
        let records = pack_lines(big, LINES_PER_RECORD);
        assert!(records.iter().all(|r| r.data.len() <= MAX_RECORD_BYTES));
        assert_eq!(records.len(), 4, "9 lines of 100 KiB fill a record");

        let huge = pack_lines(
            vec![line(0, 10), line(1, MAX_RECORD_BYTES + 1), line(2, 10)],
            LINES_PER_RECORD,
        );
        assert_eq!(huge.len(), 3, "a line too long for any record goes alone");
    }

    #[test]
    fn an_undeliverable_record_gives_back_each_of_its_lines() {
        let records = pack_lines((0..3).map(|n| line(n, 50)).collect(), LINES_PER_RECORD);
        assert_eq!(
            pack_lines((0..3).map(|n| line(n, 50)).collect(), 1).len(),
            3
        );
        let delivery = Delivery {
            written: 0,
            calls: 1,
            retried_entries: 0,
            undeliverable: vec![(records[0].clone(), "too large".into())],
            fatal: None,
        };
        let delivery = unpack_delivery(delivery, 3);
        assert_eq!(delivery.written, 0);
        assert_eq!(delivery.undeliverable.len(), 3);
        assert_eq!(
            delivery.undeliverable[1].0.data,
            [line(1, 50), b"\n".to_vec()].concat()
        );
        assert!(
            delivery
                .undeliverable
                .iter()
                .all(|(_, why)| why == "too large")
        );
    }
}

/// The three archive layers.
#[derive(Clone, Debug)]
pub struct FirehoseArchive {
    /// Valid records as received.
    pub raw: DeliveryStream,
    /// Features.
    pub processed: DeliveryStream,
    /// Dead letters.
    pub dead_letter: DeliveryStream,
}

impl FirehoseArchive {
    /// Writers for the delivery streams `raw`, `processed` and `dead_letter`.
    pub fn with_client(client: &Client, raw: &str, processed: &str, dead_letter: &str) -> Self {
        FirehoseArchive {
            raw: DeliveryStream::with_client(client.clone(), raw),
            processed: DeliveryStream::with_client(client.clone(), processed),
            dead_letter: DeliveryStream::with_client(client.clone(), dead_letter),
        }
    }
}

impl BatchApi for DeliveryStream {
    fn destination(&self) -> String {
        format!("firehose delivery stream {}", self.name)
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_records: 500,
            max_batch_bytes: 4 * 1024 * 1024,
            max_record_bytes: 1000 * 1024,
        }
    }

    fn entry_size(&self, record: &OutRecord) -> usize {
        record.data.len()
    }

    fn retryable_code(&self, code: &str) -> bool {
        retryable_service_code(code)
    }

    async fn put_batch(&self, batch: &[OutRecord]) -> Result<Vec<EntryOutcome>, CallFailure> {
        let mut records = Vec::with_capacity(batch.len());
        for record in batch {
            let record = Record::builder()
                .data(Blob::new(record.data.clone()))
                .build()
                .map_err(|error| CallFailure {
                    message: format!("invalid record: {error}"),
                    retryable: false,
                })?;
            records.push(record);
        }
        match self
            .client
            .put_record_batch()
            .delivery_stream_name(&self.name)
            .set_records(Some(records))
            .send()
            .await
        {
            Ok(output) => Ok(output
                .request_responses()
                .iter()
                .map(|entry| EntryOutcome::from_response(entry.error_code(), entry.error_message()))
                .collect()),
            Err(error) => {
                let (message, retryable) = classify(&error);
                Err(CallFailure { message, retryable })
            }
        }
    }
}
