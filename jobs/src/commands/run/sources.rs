//! The job's sources: every worker's partitions, built from `[source]` and resumed where the
//! restored checkpoint left them (synthetic partitions and files by record number; Kinesis shards
//! by sequence number, through the consumer this also starts).

use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::files::source::partition_name;
use pageflow_connectors::kinesis::consumer::{
    ConsumerPlacement, ConsumerSettings, FinishedElsewhere, KinesisConsumer, SavedShards,
    StreamSpec,
};
use pageflow_connectors::kinesis::polling_reader::ReaderSettings;
use pageflow_connectors::kinesis::shard_reader::StartPosition;
use pageflow_connectors::{JsonLinesFile, SyntheticConfig, SyntheticSource};
use pageflow_dataflow::clock::{Clock, SystemClock, unix_now_ms};
use pageflow_dataflow::placement::assign_partition;
use pageflow_dataflow::source::{RecordSource, WorkerSources};
use pageflow_dataflow::time::{BoardView, Opinion};

use super::RunHooks;
use crate::checkpoints::Restored;
use crate::config::{JobConfig, ReadMode, SourceKind, StartPositionName};

/// What [`worker_sources`] builds.
pub(super) struct Sources {
    /// The partitions of this process's workers (local index).
    pub local: Vec<WorkerSources>,
    /// Every worker's opinion on the watermark before it reads, for every worker of the job
    /// (global index): every replica of the board starts from them.
    pub opinions: Vec<Opinion>,
    /// The Kinesis consumer, when Kinesis is the source.
    pub kinesis: Option<KinesisConsumer>,
    /// For the Kinesis consumer: shards ended in other processes, once it sees the board.
    pub finished_elsewhere: Option<Arc<FinishedOnTheBoard>>,
}

/// Builds every worker's sources from the configuration; for Kinesis, also starts the consumer.
///
/// Partitions go to the worker of the whole job (all processes) that the rendezvous hash names;
/// this process opens only those of its own workers, and tells every worker's initial opinion
/// (a worker with a partition has no watermark yet, one without is finished).
pub(super) fn worker_sources(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    restored: Option<&Restored>,
    hooks: &RunHooks,
) -> Result<Sources> {
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
    // The job's workers: process `p` holds `p × workers .. (p + 1) × workers`.
    let all_workers = workers * config.cluster.processes();
    let first_local = config.cluster.process * workers;
    let mut by_worker: Vec<Vec<Box<dyn RecordSource>>> = (0..workers).map(|_| Vec::new()).collect();
    let mut reading = vec![false; all_workers];
    // Marks the partition's owner as reading; the local index when this process opens it.
    let mut place = |name: &str| {
        let owner = assign_partition(name, all_workers);
        reading[owner] = true;
        owner
            .checked_sub(first_local)
            .filter(|&local| local < workers)
    };
    match config.source.kind {
        SourceKind::Synthetic => {
            let partitions = config.source.partitions;
            let now = unix_now_ms();
            let source = &config.source;
            let rate = source.events_per_second / partitions as f64;
            for index in 0..partitions {
                let name = format!("synthetic:{index}");
                let Some(local) = place(&name) else {
                    continue; // another process's
                };
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
                if let Some(delivered) = resume_after(&name)? {
                    source = source.resume_after(delivered);
                }
                by_worker[local].push(Box::new(source));
            }
        }
        SourceKind::Files => {
            for path in &config.source.paths {
                let name = partition_name(path);
                if saved(&name).is_some_and(|p| p.finished) {
                    continue; // read to its end before the checkpoint
                }
                let Some(local) = place(&name) else {
                    continue; // another process's
                };
                let mut file = JsonLinesFile::open(path)
                    .with_context(|| format!("cannot open input {}", path.display()))?;
                if let Some(line) = resume_after(&name)? {
                    file = file.resume_after(line)?;
                }
                by_worker[local].push(Box::new(file));
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
            // Each process lists the shards and reads those of its own workers; a shard read
            // elsewhere is known to have ended from the board (set once the boards exist).
            let finished_elsewhere = Arc::new(FinishedOnTheBoard::default());
            let (consumer, feeds) = KinesisConsumer::start(
                runtime.handle(),
                client,
                streams,
                ConsumerPlacement {
                    process: config.cluster.process,
                    processes: config.cluster.processes(),
                    threads: workers,
                },
                Arc::clone(&finished_elsewhere) as Arc<dyn FinishedElsewhere>,
                settings,
            );
            let local: Vec<WorkerSources> = feeds
                .into_iter()
                .map(|feed| WorkerSources::new(Vec::new(), Some(Box::new(feed))))
                .collect();
            // Every worker of every process has a feed of shards: all start alike.
            let opinion = local
                .first()
                .map_or(Opinion::Finished, WorkerSources::initial_opinion);
            return Ok(Sources {
                local,
                opinions: vec![opinion; all_workers],
                kinesis: Some(consumer),
                finished_elsewhere: Some(finished_elsewhere),
            });
        }
    }
    let opinions = reading
        .iter()
        .map(|&reads| {
            if reads {
                Opinion::Undefined
            } else {
                Opinion::Finished
            }
        })
        .collect();
    Ok(Sources {
        local: by_worker.into_iter().map(WorkerSources::from).collect(),
        opinions,
        kinesis: None,
        finished_elsewhere: None,
    })
}

/// Whether a Kinesis shard read by another process has ended, from the partitions' reports on
/// the watermark board: every worker's reports reach every process through the exchange, and a
/// shard's last report (`finished`) stays. Until the board is set, nothing has ended elsewhere.
#[derive(Debug, Default)]
pub(super) struct FinishedOnTheBoard(OnceLock<BoardView>);

impl FinishedOnTheBoard {
    /// Reads `board` from now on.
    pub(super) fn watch(&self, board: BoardView) {
        let _ = self.0.set(board);
    }
}

impl FinishedElsewhere for FinishedOnTheBoard {
    fn is_finished(&self, partition: &str) -> bool {
        self.0
            .get()
            .and_then(|board| board.partition(partition))
            .is_some_and(|report| report.finished)
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The partitions each process of a cluster of `processes` × 2 workers opens, and the initial
    /// opinions each computes.
    fn placed(config: &JobConfig, processes: usize) -> Vec<(Vec<Vec<String>>, Vec<Opinion>)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        (0..processes)
            .map(|process| {
                let mut config = config.clone();
                config.cluster.addresses = (0..processes)
                    .map(|p| format!("127.0.0.1:{}", 7100 + p))
                    .collect();
                config.cluster.process = process;
                let sources =
                    worker_sources(&config, &runtime, None, &RunHooks::default()).expect("sources");
                let names = sources
                    .local
                    .iter()
                    .map(|w| w.partitions.iter().map(|p| p.name().to_string()).collect())
                    .collect();
                (names, sources.opinions)
            })
            .collect()
    }

    #[test]
    fn each_partition_is_opened_by_one_process_and_every_process_knows_every_opinion() {
        let mut config = JobConfig::default();
        config.runtime.workers = 2;
        config.source.kind = SourceKind::Synthetic;
        config.source.partitions = 9;
        for processes in [1, 2, 3] {
            let placed = placed(&config, processes);
            let all_workers = processes * 2;
            let mut opened = Vec::new();
            for (process, (names, opinions)) in placed.iter().enumerate() {
                assert_eq!(names.len(), 2, "two local workers");
                assert_eq!(
                    opinions, &placed[0].1,
                    "every process starts the board alike"
                );
                assert_eq!(opinions.len(), all_workers);
                for (local, partitions) in names.iter().enumerate() {
                    let worker = process * 2 + local;
                    for name in partitions {
                        // Where the hash over the whole job puts it.
                        assert_eq!(assign_partition(name, all_workers), worker);
                    }
                    let expected = if partitions.is_empty() {
                        Opinion::Finished
                    } else {
                        Opinion::Undefined
                    };
                    assert_eq!(opinions[worker], expected, "worker {worker}");
                }
                opened.extend(names.iter().flatten().cloned());
            }
            let distinct: BTreeSet<&String> = opened.iter().collect();
            assert_eq!(
                opened.len(),
                9,
                "{processes} processes: each partition once"
            );
            assert_eq!(distinct.len(), 9);
        }
    }
}
