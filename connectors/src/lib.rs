//! # pageflow-connectors
//!
//! pageflow's edges: where records come from and where results go, for local runs and tests.
//!
//! - [`file_source`]: [`JsonLinesFile`], a JSON-lines file replayed as one source partition.
//! - [`synthetic`]: [`SyntheticTraffic`], a seeded generator of realistic news-portal traffic, and
//!   [`SyntheticSource`], the same traffic as a (paced or as-fast-as-possible) source partition.
//! - [`local_sink`]: the [`Sink`] trait and the local sinks: [`FeatureFileSink`] (the features
//!   stream as `features.jsonl`) and [`ArchiveSink`] (the raw/processed/dead-letter archive laid out
//!   like the Firehose-to-S3 one).
//! - [`retention`]: deleting the oldest closed sink files beyond a size budget or an age, so the
//!   local sinks do not fill the disk.
//! - [`checkpoint_store`]: where checkpoints of the job's state live
//!   ([`checkpoint_store::LocalDirStore`], [`checkpoint_store::S3Store`]), and
//!   [`checkpoint_store::Checkpoints`]: incremental checkpoints as immutable sorted runs shared
//!   between checkpoints (each commit writes only what changed, a background compaction merges the
//!   deltas into a base split in parts), their manifest, checksums, retention, and fallback to the
//!   previous good one.
//! - [`personalize`]: Amazon Personalize: a recommender (`GetRecommendations` within a time budget,
//!   behind a circuit breaker) and an event forwarder (`PutEvents` in batches of up to 10, paced,
//!   retried, never blocking the caller).
//! - [`error`]: [`ConnectorError`], the crate's one error type, which says whether a retry can help.
//!
//! Sources implement `pageflow_dataflow::source::RecordSource`; the dataflow itself does no I/O.

pub mod aws;
pub mod batch;
pub mod checkpoint_store;
pub mod dir_lock;
pub mod error;
pub mod file_source;
pub mod firehose_sink;
pub mod kinesis_consumer;
pub mod kinesis_fan_out;
pub mod kinesis_sink;
pub mod kinesis_source;
pub mod kpl;
pub mod local_sink;
pub mod personalize;
pub mod retention;
pub mod retry;
pub mod shard_discovery;
pub mod shards;
pub mod synthetic;

pub use error::ConnectorError;
pub use file_source::JsonLinesFile;
pub use local_sink::{ArchiveSink, FeatureFileSink, Sink};
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
