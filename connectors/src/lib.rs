//! # pageflow-connectors
//!
//! pageflow's edges: where records come from, where results go, and where checkpoints live. The
//! dataflow itself (`pageflow_dataflow`) does no I/O; everything that touches a file, a clock or
//! AWS is here, one folder per connector family.
//!
//! | module | what lives there | implements |
//! |--------|------------------|------------|
//! | [`kinesis`] | the Kinesis source ([`kinesis::KinesisConsumer`]: shard discovery and lineage, the polling and enhanced fan-out shard readers, KPL unpacking, positions and shard assignment) and the features sink ([`kinesis::KinesisStream`], `PutRecords`) | the consumer's partitions are `RecordSource`s fed through a `PartitionFeed`; the sink is a [`batch::BatchApi`] |
//! | [`firehose_sink`] | the archive through Kinesis Data Firehose ([`firehose_sink::FirehoseArchive`], `PutRecordBatch`) | [`batch::BatchApi`] |
//! | [`files`] | [`JsonLinesFile`] (a JSON-lines file replayed as one partition); the [`Sink`] trait and the local sinks [`FeatureFileSink`] (`features.jsonl`) and [`ArchiveSink`] (the archive laid out like the Firehose-to-S3 one) | `RecordSource`; [`Sink`] |
//! | [`synthetic`] | [`SyntheticTraffic`], a seeded generator of realistic news-portal traffic, split by concern (config, catalogue, spikes, sessions, malformed records, JSON output), and [`SyntheticSource`], the same traffic as a (paced or as-fast-as-possible) partition | `RecordSource` |
//! | [`personalize`] | Amazon Personalize: a recommender (`GetRecommendations` within a time budget, behind a circuit breaker) and an event forwarder (`PutEvents` in batches of up to 10, paced, retried, never blocking the caller) | — |
//! | [`checkpoint_store`] | incremental checkpoints ([`checkpoint_store::Checkpoints`]: immutable sorted runs shared between checkpoints, their manifest, compaction, checksums, retention, fallback to the previous good one) and the stores they live in: [`checkpoint_store::LocalDirStore`] and [`checkpoint_store::S3Store`], one file each; [`checkpoint_store::S3Lease`]: one job per S3 prefix | [`checkpoint_store::CheckpointStore`] |
//! | [`curated`] | the curated lake: Parquet tables of final results (`pageviews`, `sessions`, `popular`, `trending`, `related`), written with a two-phase commit tied to checkpoints and compacted per hour | — |
//! | [`files::retention`] | deleting the oldest closed local sink files beyond a size budget or an age, so the embedded default does not fill the disk | — |
//! | [`dir_lock`] | [`dir_lock::DirLock`]: one job per local directory (the S3 counterpart is [`checkpoint_store::S3Lease`]) | — |
//! | [`sqs_buffer`] | an SQS FIFO queue as the buffer in front of a Kinesis stream ([`sqs_buffer::SqsBuffer`]: `SendMessageBatch` in order per partition key, receive and delete for the drainer), used by the collector | [`batch::BatchApi`] |
//! | [`batch`] | batched delivery with per-entry retries, shared by the Kinesis and Firehose sinks | — |
//! | [`aws`] | AWS client configuration and the classification of SDK errors | — |
//! | [`retry`] | the one backoff-with-jitter policy every retry uses | — |
//! | [`error`] | [`ConnectorError`], the crate's one error type, which says whether a retry can help | — |
//!
//! `RecordSource` and `PartitionFeed` are `pageflow_dataflow::source`'s traits: a source is polled
//! by the dataflow's ingest, never pushes.

pub mod aws;
pub mod batch;
pub mod checkpoint_store;
pub mod curated;
pub mod dir_lock;
pub mod error;
pub mod files;
pub mod firehose_sink;
pub mod kinesis;
pub mod personalize;
pub mod retry;
pub mod sqs_buffer;
pub mod synthetic;

pub use error::ConnectorError;
pub use files::{ArchiveSink, FeatureFileSink, JsonLinesFile, Sink};
pub use synthetic::{SyntheticConfig, SyntheticSource, SyntheticTraffic};

#[cfg(test)]
mod throughput_tests {
    //! Rough throughput checks; meaningful only in an optimised build:
    //! `cargo test -p pageflow-connectors --release -- --ignored --nocapture throughput`.

    use std::io::BufWriter;
    use std::time::Instant;

    use pageflow_dataflow::source::{PollStatus, RecordSource};

    use crate::synthetic::write_json_lines;
    use crate::{JsonLinesFile, SyntheticConfig, SyntheticTraffic};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    #[ignore = "a benchmark: run in an optimised build"]
    fn throughput_of_generator_and_file_source() -> TestResult {
        let n = 2_000_000;
        let mut traffic = SyntheticTraffic::new(SyntheticConfig::default())?;
        let mut line = Vec::with_capacity(512);
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..n {
            line.clear();
            traffic.next_line(&mut line);
            bytes += line.len() + 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "generator: {:.2} M lines/s, {:.0} MB/s",
            n as f64 / seconds / 1e6,
            bytes as f64 / seconds / 1e6
        );

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("events.jsonl");
        let file = std::fs::File::create(&path)?;
        write_json_lines(&SyntheticConfig::default(), n, BufWriter::new(file))?;
        let size = std::fs::metadata(&path)?.len();
        let started = Instant::now();
        let mut source = JsonLinesFile::open(&path)?;
        let mut out = Vec::with_capacity(4096);
        let mut records = 0;
        loop {
            out.clear();
            let status = source.poll(4096, &mut out)?;
            records += out.len();
            if status == PollStatus::Finished {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(records as u64, n);
        println!(
            "file source: {:.0} MB/s, {:.2} M records/s",
            size as f64 / seconds / 1e6,
            records as f64 / seconds / 1e6
        );
        Ok(())
    }
}
