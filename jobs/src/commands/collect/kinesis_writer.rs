//! Accepted events to their portals' Kinesis streams with `PutRecords`.
//!
//! Each portal's events are one ordered delivery through [`KinesisStream`] (the job's own sink, see
//! [`pageflow_connectors::batch::deliver`]): batches of at most 500 records, partition key
//! `user_id` so each reader's events stay in order in one shard, and only the entries Kinesis
//! failed (throttling, an internal failure) re-sent, before anything later. The retries are
//! bounded ([`WRITE_POLICY`]): a beacon's request must be answered within seconds, and a request
//! whose events are not all written is answered 503 so that the client sends it again (the job
//! drops the duplicates this may make by `event_id`).

use std::collections::BTreeMap;
use std::time::Duration;

use pageflow_connectors::batch::{OutRecord, RetryPolicy};
use pageflow_connectors::kinesis::KinesisStream;
use pageflow_connectors::retry::Backoff;

use super::request::AcceptedEvent;

/// How hard one request tries: 5 attempts per entry, within about 1.5 s of backoff in all (each
/// attempt bounded by the client's attempt timeout, see `super::ATTEMPT_TIMEOUT`).
pub const WRITE_POLICY: RetryPolicy = RetryPolicy {
    max_attempts: Some(5),
    backoff: Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(800),
    },
};

/// Some accepted events could not be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{unwritten} of the request's events could not be written to Kinesis ({reason}); send the request again"
)]
pub struct WriteFailure {
    /// Events not written.
    pub unwritten: usize,
    /// Why, for the first of them.
    pub reason: String,
    /// Whether no retry can help (a missing stream, no permission): the configuration is wrong.
    pub fatal: bool,
}

/// The portals' streams.
#[derive(Clone, Debug)]
pub struct KinesisWriter {
    streams: BTreeMap<String, KinesisStream>,
    policy: RetryPolicy,
}

impl KinesisWriter {
    /// A writer for `streams` (portal → its stream).
    pub fn new(streams: BTreeMap<String, KinesisStream>, policy: RetryPolicy) -> Self {
        KinesisWriter { streams, policy }
    }

    /// Writes `events` (in the body's order) to their portals' streams; returns how many were
    /// written, or why some were not.
    pub async fn write(&self, events: &[AcceptedEvent]) -> Result<usize, WriteFailure> {
        let mut by_portal: BTreeMap<&str, Vec<OutRecord>> = BTreeMap::new();
        for event in events {
            by_portal
                .entry(event.portal.as_str())
                .or_default()
                .push(OutRecord {
                    partition_key: event.user_id.clone(),
                    data: event.record.clone(),
                });
        }
        let mut written = 0;
        let mut failure: Option<WriteFailure> = None;
        for (portal, records) in by_portal {
            let Some(stream) = self.streams.get(portal) else {
                // `judge` accepts only the configured portals; this is a bug if it happens.
                let unwritten = records.len();
                failure
                    .get_or_insert(WriteFailure {
                        unwritten: 0,
                        reason: format!("no stream is configured for portal `{portal}`"),
                        fatal: true,
                    })
                    .unwritten += unwritten;
                continue;
            };
            let delivery = stream.write(records, self.policy).await;
            written += delivery.written;
            if let Some((_, reason)) = delivery.undeliverable.first() {
                let entry = failure.get_or_insert(WriteFailure {
                    unwritten: 0,
                    reason: reason.clone(),
                    fatal: false,
                });
                entry.unwritten += delivery.undeliverable.len();
                entry.fatal |= delivery.fatal.is_some();
            }
        }
        match failure {
            None => Ok(written),
            Some(failure) => Err(failure),
        }
    }
}
