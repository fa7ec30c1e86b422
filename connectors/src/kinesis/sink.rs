//! The features stream: feature records to a Kinesis data stream with `PutRecords`.
//!
//! Batches of at most 500 records and 5 MiB (data plus partition keys), records of at most 1 MiB;
//! partition keys as `SEMANTICS.md` says (`user_id` for sessions, `article_id` for related,
//! `portal` for rankings). Entries that fail with `ProvisionedThroughputExceededException` or
//! `InternalFailure` are re-sent alone with backoff ([`crate::batch::deliver`]); anything that can
//! never be written comes back as undeliverable, for the dead-letter output.
//!
//! Ordering: failed entries are re-sent before any later batch, so newer records never overtake
//! them, but within one `PutRecords` call Kinesis may write a later entry of a partition key while
//! an earlier one fails. Consumers that need strict order use `feature_id` and the event times in
//! the records, which are deterministic.

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use pageflow_dataflow::features::Feature;

use crate::aws::{classify, retryable_service_code};
use crate::batch::{
    BatchApi, BatchLimits, CallFailure, Delivery, EntryOutcome, OutRecord, RetryPolicy, deliver,
};

/// A Kinesis data stream written with `PutRecords`.
#[derive(Clone, Debug)]
pub struct KinesisStream {
    client: Client,
    stream: String,
}

impl KinesisStream {
    /// A writer using an existing client.
    pub fn with_client(client: Client, stream: &str) -> Self {
        KinesisStream {
            client,
            stream: stream.to_string(),
        }
    }

    /// Writes features, one JSON object per record, keyed as `SEMANTICS.md` says.
    pub async fn write_features(&self, features: &[Feature], policy: RetryPolicy) -> Delivery {
        self.write(feature_records(features), policy).await
    }

    /// Writes records made by [`feature_records`] (or any keyed records), in order.
    pub async fn write(&self, records: Vec<OutRecord>, policy: RetryPolicy) -> Delivery {
        deliver(self, records, policy).await
    }
}

/// Features as Kinesis records: one JSON object each, keyed as `SEMANTICS.md` says.
pub fn feature_records(features: &[Feature]) -> Vec<OutRecord> {
    features
        .iter()
        .map(|feature| OutRecord {
            partition_key: feature.partition_key().to_string(),
            data: feature.to_json().into_bytes(),
        })
        .collect()
}

impl BatchApi for KinesisStream {
    fn destination(&self) -> String {
        format!("kinesis stream {}", self.stream)
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_records: 500,
            max_batch_bytes: 5 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
        }
    }

    fn entry_size(&self, record: &OutRecord) -> usize {
        record.data.len() + record.partition_key.len()
    }

    fn retryable_code(&self, code: &str) -> bool {
        retryable_service_code(code)
    }

    async fn put_batch(&self, batch: &[OutRecord]) -> Result<Vec<EntryOutcome>, CallFailure> {
        let mut entries = Vec::with_capacity(batch.len());
        for record in batch {
            let entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(record.data.clone()))
                .partition_key(record.partition_key.clone())
                .build()
                .map_err(|error| CallFailure {
                    message: format!("invalid record: {error}"),
                    retryable: false,
                })?;
            entries.push(entry);
        }
        let request = self.client.put_records().set_records(Some(entries));
        let request = if self.stream.starts_with("arn:") {
            request.stream_arn(&self.stream)
        } else {
            request.stream_name(&self.stream)
        };
        match request.send().await {
            Ok(output) => Ok(output
                .records()
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
