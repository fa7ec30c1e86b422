//! Running the graph over finite input to completion: `pageflow replay`, the tests, the benchmark.
//!
//! The sources are split among `workers` timely worker threads of this process, or, with
//! [`replay_lines_in`], among the workers of several processes (each process gathers what its own
//! workers emit; the union over the processes is the whole result). When every source has ended,
//! the watermark jumps to +∞ ("End of a replay"), every operator flushes, and the outputs are
//! gathered and put in canonical order (`docs/semantics-notes.md` N20), so the result is the same
//! whatever the number of workers.

use std::any::Any;
use std::sync::{Arc, Mutex};

use timely::communication::allocator::AllocatorBuilder;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::config::SemanticsConfig;
use crate::event::{DeadLetter, DetailedEvent};
use crate::features::{Feature, sort_features};
use crate::operators::ingest::RawValid;
use crate::source::SourcesByWorker;
use crate::stats::{JobStats, StatsSnapshot};
use crate::time::{Opinion, WatermarkBoard};
use crate::watermark_exchange::WatermarkExchange;

use super::graph::{GraphOptions, build};

/// Everything a finite run produced.
#[derive(Debug, Default)]
pub struct ReplayOutput {
    /// Features in canonical order ([`replay`]; from [`replay_lines`] only with
    /// [`GraphOptions::keep_pageviews`], for the curated lake, and otherwise empty).
    pub features: Vec<Feature>,
    /// Features as JSON lines in canonical order ([`replay_lines`]; empty from [`replay`]).
    pub feature_lines: Vec<String>,
    /// Dead letters in input order (by partition, then position).
    pub dead_letters: Vec<DeadLetter>,
    /// Valid records as received (when asked for), in no particular order.
    pub raw: Vec<RawValid>,
    /// The counted events with their optional fields (with [`GraphOptions::keep_pageviews`]),
    /// by `(ts, event_id)`.
    pub pageviews: Vec<DetailedEvent>,
    /// Counters.
    pub stats: StatsSnapshot,
}

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The worker threads could not be started or one of them failed.
    #[error("the timely workers failed: {0}")]
    Workers(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A partition could not be read and no retry would help; the results would be incomplete.
    #[error("{0}")]
    Source(String),
}

/// Runs the graph over `sources_by_worker` (one list of partitions per worker thread) to the end.
pub fn replay(
    config: &SemanticsConfig,
    sources_by_worker: SourcesByWorker,
    options: &GraphOptions,
) -> Result<ReplayOutput, ReplayError> {
    run(config, sources_by_worker, options, false, None)
}

/// Like [`replay`], with the features as JSON lines: each worker writes the lines of the features
/// it emits, so that turning them into text runs in parallel with the rest of the graph rather
/// than after it (what `pageflow replay` writes to `features.jsonl`).
pub fn replay_lines(
    config: &SemanticsConfig,
    sources_by_worker: SourcesByWorker,
    options: &GraphOptions,
) -> Result<ReplayOutput, ReplayError> {
    run(config, sources_by_worker, options, true, None)
}

/// The communication of this process's workers, connected (for a cluster) to the other
/// processes' workers: what timely's `CommunicationConfig::try_build` returns.
pub type Communication = (Vec<AllocatorBuilder>, Box<dyn Any + Send>);

/// Like [`replay_lines`], on `communication`: this process's workers of a job whose workers are
/// numbered globally. `sources_by_worker` has one entry per worker of the whole job, and only
/// this process's entries hold sources; `reading[w]` says whether worker `w` (of any process)
/// reads a partition, so that every process's board starts alike. The output holds what this
/// process's workers emitted.
pub fn replay_lines_in(
    config: &SemanticsConfig,
    sources_by_worker: SourcesByWorker,
    reading: &[bool],
    options: &GraphOptions,
    communication: Communication,
) -> Result<ReplayOutput, ReplayError> {
    run(
        config,
        sources_by_worker,
        options,
        true,
        Some((communication, reading.to_vec())),
    )
}

/// A feature's place in the canonical order (N20) and its JSON line.
type FeatureLine = ((u64, &'static str, String), String);

fn run(
    config: &SemanticsConfig,
    sources_by_worker: SourcesByWorker,
    options: &GraphOptions,
    as_lines: bool,
    cluster: Option<(Communication, Vec<bool>)>,
) -> Result<ReplayOutput, ReplayError> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(ReplayError::Config(problems));
    }
    let workers = sources_by_worker.len().max(1);
    let (communication, reading) = match cluster {
        Some((communication, reading)) => (Some(communication), reading),
        None => (
            None,
            sources_by_worker.iter().map(|s| !s.is_empty()).collect(),
        ),
    };
    let opinions = (0..workers)
        .map(|w| match reading.get(w) {
            Some(true) => Opinion::Undefined,
            _ => Opinion::Finished,
        })
        .collect();
    // Every worker's replica of the board starts alike.
    let board = WatermarkBoard::with_opinions(opinions);
    let stats = Arc::new(JobStats::default());
    let slots = Arc::new(Mutex::new(
        sources_by_worker
            .into_iter()
            .map(|sources| Some((sources, Arc::new(board.replica()))))
            .collect::<Vec<_>>(),
    ));
    let collected: Arc<Mutex<ReplayOutput>> = Arc::default();
    let lines: Arc<Mutex<Vec<FeatureLine>>> = Arc::default();

    let config = config.clone();
    // A partition that cannot be read ends the replay (with the error below), not a wait.
    let options = GraphOptions {
        end_on_source_failure: true,
        ..options.clone()
    };
    let worker_stats = Arc::clone(&stats);
    let sink = Arc::clone(&collected);
    let lines_sink = Arc::clone(&lines);
    let (builders, others) = match communication {
        Some(communication) => communication,
        None => timely::CommunicationConfig::Process(workers)
            .try_build()
            .map_err(ReplayError::Workers)?,
    };
    let worker_config = timely::WorkerConfig::default();
    let guards = timely::execute::execute_from(builders, others, worker_config, move |worker| {
        let index = worker.index();
        let (sources, board) = slots
            .lock()
            .ok()
            .and_then(|mut slots| slots.get_mut(index).and_then(Option::take))
            .unwrap_or_else(|| (Default::default(), Arc::new(WatermarkBoard::new(workers))));
        let exchange = WatermarkExchange::new(index, board);
        let stats = Arc::clone(&worker_stats);
        let sink = Arc::clone(&sink);
        worker.dataflow::<u64, _, _>(|scope| {
            let outputs = build(
                scope,
                sources,
                exchange.publisher(),
                &config,
                &options,
                stats,
                &Default::default(),
            );
            if as_lines {
                if options.keep_pageviews {
                    collect(outputs.features.clone(), &sink, |out| &mut out.features);
                }
                let lines = Arc::clone(&lines_sink);
                outputs
                    .features
                    .sink(Pipeline, "CollectLines", move |(input, _frontier)| {
                        input.for_each(|_cap, data| {
                            let batch: Vec<FeatureLine> = data
                                .iter()
                                .map(|f| {
                                    let (ts, kind, id) = f.sort_key();
                                    ((ts, kind, id.to_string()), f.to_json())
                                })
                                .collect();
                            if let Ok(mut lines) = lines.lock() {
                                lines.extend(batch);
                            }
                        });
                    });
            } else {
                collect(outputs.features, &sink, |out| &mut out.features);
            }
            collect(outputs.dead_letters, &sink, |out| &mut out.dead_letters);
            collect(outputs.raw, &sink, |out| &mut out.raw);
            collect(outputs.pageviews, &sink, |out| &mut out.pageviews);
        });
        exchange.install(worker);
    })
    .map_err(ReplayError::Workers)?;
    for result in guards.join() {
        result.map_err(ReplayError::Workers)?;
    }
    if let Some(failure) = stats.source_failure() {
        return Err(ReplayError::Source(failure));
    }

    let mut output = std::mem::take(
        &mut *collected
            .lock()
            .map_err(|e| ReplayError::Workers(e.to_string()))?,
    );
    sort_features(&mut output.features);
    let mut lines = std::mem::take(
        &mut *lines
            .lock()
            .map_err(|e| ReplayError::Workers(e.to_string()))?,
    );
    lines.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    output.feature_lines = lines.into_iter().map(|(_, line)| line).collect();
    output
        .dead_letters
        .sort_by(|a, b| position_key(a).cmp(&position_key(b)));
    output
        .pageviews
        .sort_by(|a, b| (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id)));
    let mut snapshot = stats.snapshot();
    snapshot.features = if as_lines {
        output.feature_lines.len()
    } else {
        output.features.len()
    } as u64;
    output.stats = snapshot;
    Ok(output)
}

/// Appends every batch of `stream` to the field `field` of the shared output.
fn collect<D: Clone + 'static>(
    stream: timely::dataflow::StreamVec<'_, u64, D>,
    sink: &Arc<Mutex<ReplayOutput>>,
    field: fn(&mut ReplayOutput) -> &mut Vec<D>,
) {
    let sink = Arc::clone(sink);
    stream.sink(Pipeline, "Collect", move |(input, _frontier)| {
        input.for_each(|_cap, data| {
            if let Ok(mut out) = sink.lock() {
                field(&mut out).append(data);
            }
        });
    });
}

/// Orders dead letters by partition, then numerically by position where positions are numbers.
fn position_key(letter: &DeadLetter) -> (&str, usize, &str) {
    let position = letter.position.position.as_str();
    (letter.position.partition.as_str(), position.len(), position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Millis;
    use crate::oracle;
    use crate::oracle::test_util::generated;
    use crate::source::VecSource;

    fn one_partition(records: &[crate::event::RawRecord], workers: usize) -> SourcesByWorker {
        let mut by_worker: SourcesByWorker = (0..workers).map(|_| Vec::new()).collect();
        by_worker[0].push(Box::new(VecSource::from_lines(
            "file:test.jsonl",
            records.iter().map(|r| r.bytes.clone()),
        )));
        by_worker
    }

    fn same_as_the_oracle(records: &[crate::event::RawRecord], config: &SemanticsConfig) {
        let expected = oracle::run(records, config);
        let expected: Vec<String> = expected.features.iter().map(Feature::to_json).collect();
        assert!(expected.iter().any(|f| f.contains("\"related\"")));
        for workers in [1, 2] {
            let output = replay(
                config,
                one_partition(records, workers),
                &GraphOptions::default(),
            )
            .unwrap();
            let features: Vec<String> = output.features.iter().map(Feature::to_json).collect();
            let missing: Vec<&String> = expected
                .iter()
                .filter(|f| !features.contains(f))
                .take(3)
                .collect();
            let extra: Vec<&String> = features
                .iter()
                .filter(|f| !expected.contains(f))
                .take(3)
                .collect();
            assert!(
                features == expected,
                "{workers} workers: {} features, {} expected\nmissing {missing:#?}\nextra {extra:#?}",
                features.len(),
                expected.len()
            );
        }
    }

    #[test]
    fn a_day_of_generated_traffic_equals_the_oracle() {
        same_as_the_oracle(
            &generated(6_000, 26 * 3_600_000, 3),
            &SemanticsConfig::default(),
        );
    }

    #[test]
    fn short_windows_equal_the_oracle() {
        let config = SemanticsConfig {
            cooc_window: Millis::minutes(40),
            cooc_slide: Millis::minutes(5),
            related_interval: Millis::minutes(7),
            trending_window: Millis::minutes(20),
            ..SemanticsConfig::default()
        };
        same_as_the_oracle(&generated(4_000, 4 * 3_600_000, 9), &config);
    }

    #[test]
    fn keeping_pageviews_changes_no_feature_and_yields_each_counted_event_once() {
        let records = generated(3_000, 6 * 3_600_000, 5);
        let config = SemanticsConfig::default();
        let plain = replay_lines(
            &config,
            one_partition(&records, 2),
            &GraphOptions::default(),
        )
        .unwrap();
        assert!(plain.pageviews.is_empty() && plain.features.is_empty());
        let options = GraphOptions {
            keep_pageviews: true,
            ..GraphOptions::default()
        };
        let kept = replay_lines(&config, one_partition(&records, 2), &options).unwrap();
        assert_eq!(kept.feature_lines, plain.feature_lines);
        let as_lines: Vec<String> = kept.features.iter().map(Feature::to_json).collect();
        assert_eq!(as_lines, kept.feature_lines, "the same features as records");
        assert_eq!(kept.stats, plain.stats);
        assert_eq!(kept.pageviews.len() as u64, plain.stats.accepted);
        let mut ids: Vec<(&str, u64)> = kept
            .pageviews
            .iter()
            .map(|p| (p.event.event_id.as_str(), p.event.ts))
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), kept.pageviews.len(), "no event twice");
    }
}
