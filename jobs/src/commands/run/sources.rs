//! The job's sources: every worker's partitions, built from `[source]` and resumed where the
//! restored checkpoint left them (synthetic partitions and files by record number; Kinesis shards
//! by sequence number, through the consumer this also starts).

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::kinesis::consumer::{
    ConsumerSettings, KinesisConsumer, SavedShards, StreamSpec,
};
use pageflow_connectors::kinesis::polling_reader::ReaderSettings;
use pageflow_connectors::kinesis::shard_reader::StartPosition;
use pageflow_connectors::{JsonLinesFile, SyntheticConfig, SyntheticSource};
use pageflow_dataflow::clock::{Clock, SystemClock, unix_now_ms};
use pageflow_dataflow::placement::assign_partition;
use pageflow_dataflow::source::{RecordSource, WorkerSources};

use super::RunHooks;
use crate::checkpoints::Restored;
use crate::config::{JobConfig, ReadMode, SourceKind, StartPositionName};

/// Builds every worker's sources from the configuration; for Kinesis, also starts the consumer.
pub(super) fn worker_sources(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    restored: Option<&Restored>,
    hooks: &RunHooks,
) -> Result<(Vec<WorkerSources>, Option<KinesisConsumer>)> {
    // Where a restored partition resumes: after its last record; ended ones are not read again.
    let saved = |name: &str| restored.and_then(|r| r.partition(name));
    let resume_after = |name: &str| -> Result<Option<u64>> {
        match saved(name).and_then(|p| p.position.as_deref()) {
            None => Ok(None),
            Some(position) => position.parse::<u64>().map(Some).map_err(|_| {
                anyhow!("the checkpoint's position `{position}` of {name} is not a record number: the checkpoint belongs to another source; move it away to start without it")
            }),
        }
    };
    let workers = config.runtime.workers;
    let mut by_worker: Vec<Vec<Box<dyn RecordSource>>> = (0..workers).map(|_| Vec::new()).collect();
    match config.source.kind {
        SourceKind::Synthetic => {
            let partitions = config.source.partitions;
            let now = unix_now_ms();
            let source = &config.source;
            let rate = source.events_per_second / partitions as f64;
            for index in 0..partitions {
                // A limit over all partitions, shared out (the first ones take the remainder).
                let limit = source.limit.map(|limit| {
                    let (share, rest) = (limit / partitions as u64, limit % partitions as u64);
                    share + u64::from((index as u64) < rest)
                });
                let synthetic = SyntheticConfig {
                    seed: source.seed,
                    portals: source.portals.clone(),
                    users: source
                        .users
                        .unwrap_or_else(|| SyntheticConfig::readers_for_rate(rate)),
                    events_per_second: (!source.simulated).then_some(rate),
                    simulated_events_per_second: rate,
                    start_ts: source.start_ts.unwrap_or(now),
                    limit,
                    ..SyntheticConfig::default()
                };
                let clock: Box<dyn Clock> = match &hooks.synthetic_clock {
                    Some(clock) => Box::new(clock.clone()),
                    None => Box::new(SystemClock::new()),
                };
                let mut source = SyntheticSource::with_clock(synthetic, index as u32, clock)
                    .with_context(|| format!("synthetic partition {index}"))?;
                if let Some(delivered) = resume_after(&format!("synthetic:{index}"))? {
                    source = source.resume_after(delivered);
                }
                let name = format!("synthetic:{index}");
                by_worker[assign_partition(&name, workers)].push(Box::new(source));
            }
        }
        SourceKind::Files => {
            for path in &config.source.paths {
                let mut file = JsonLinesFile::open(path)
                    .with_context(|| format!("cannot open input {}", path.display()))?;
                let name = file.name().to_string();
                if saved(&name).is_some_and(|p| p.finished) {
                    continue; // read to its end before the checkpoint
                }
                if let Some(line) = resume_after(&name)? {
                    file = file.resume_after(line)?;
                }
                by_worker[assign_partition(&name, workers)].push(Box::new(file));
            }
        }
        SourceKind::Kinesis => {
            let kinesis = &config.source.kinesis;
            let client = config
                .aws
                .kinesis_client(&runtime.block_on(config.aws.load()));
            let streams = kinesis
                .streams
                .iter()
                .map(|s| StreamSpec {
                    portal: s.portal.clone(),
                    stream: s.stream.clone(),
                    fan_out_consumer: (s.read == ReadMode::EnhancedFanOut)
                        .then(|| s.consumer_name.clone()),
                })
                .collect();
            let settings = ConsumerSettings {
                start: match kinesis.start_position {
                    StartPositionName::TrimHorizon => StartPosition::TrimHorizon,
                    StartPositionName::Latest => StartPosition::Latest,
                    StartPositionName::AtTimestamp => {
                        StartPosition::AtTimestamp(kinesis.start_timestamp_ms.unwrap_or(0))
                    }
                },
                discovery_interval: kinesis.discovery_interval.into(),
                reader: ReaderSettings {
                    max_records: kinesis.max_records,
                    min_call_interval: kinesis.poll_interval.into(),
                    ..ReaderSettings::default()
                },
                buffered_batches: kinesis.buffered_batches,
                stop_at_latest: kinesis.stop_at_latest,
                saved: saved_shards(restored),
                ..ConsumerSettings::default()
            };
            let (consumer, feeds) =
                KinesisConsumer::start(runtime.handle(), client, streams, workers, settings);
            let sources = feeds
                .into_iter()
                .map(|feed| WorkerSources::new(Vec::new(), Some(Box::new(feed))))
                .collect();
            return Ok((sources, Some(consumer)));
        }
    }
    Ok((
        by_worker.into_iter().map(WorkerSources::from).collect(),
        None,
    ))
}

/// The restored positions of Kinesis shards.
///
/// A shard that ended before the checkpoint resumes after its last record like any other, rather
/// than being marked finished: with `stop_at_latest` a shard "ends" at its tip while it is still
/// open, and must go on from there on the next run; a closed shard resumed near its end ends again
/// at once. A shard never read starts at `start_position`.
fn saved_shards(restored: Option<&Restored>) -> SavedShards {
    let mut saved = SavedShards::default();
    for partition in restored
        .map(|r| r.partitions.as_slice())
        .unwrap_or_default()
    {
        if let Some(position) = &partition.position {
            saved
                .positions
                .insert(partition.partition.clone(), position.clone());
        }
    }
    saved
}
