//! The archive through Kinesis Data Firehose: newline-delimited JSON with `PutRecordBatch`.
//!
//! One delivery stream per layer (`raw`, `processed`, `dead-letter`), each delivering to its S3
//! prefix; partitioning by portal and event date/hour is the delivery stream's dynamic
//! partitioning on the records' `portal` and `ts` fields (see `deploy/`). Batches of at most 500
//! records and 4 MiB, records of at most 1,000 KiB, each ending in a newline so that the objects
//! Firehose concatenates are JSON lines. Failed entries are re-sent alone with backoff
//! ([`crate::batch::deliver`]); what can never be written comes back as undeliverable.

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
}

impl DeliveryStream {
    /// A writer for the delivery stream `name`.
    pub fn with_client(client: Client, name: &str) -> Self {
        DeliveryStream {
            client,
            name: name.to_string(),
        }
    }

    /// Writes JSON documents (one per item, without line breaks), each as one line.
    pub async fn write_lines(&self, lines: Vec<Vec<u8>>, policy: RetryPolicy) -> Delivery {
        let records = lines
            .into_iter()
            .map(|mut data| {
                data.push(b'\n');
                OutRecord {
                    partition_key: String::new(),
                    data,
                }
            })
            .collect();
        deliver(self, records, policy).await
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
