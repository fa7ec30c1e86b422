//! Running the graph in two halves: up to a checkpoint, then restored from it on any number of
//! workers, as a crash and restart would. The tests use it to check that a restore continues
//! exactly; the benchmark, to time checkpoints and restores of large state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::algorithms::graph::{GraphOptions, build};
use crate::checkpoint::{CheckpointCoordinator, StateImage, WorkerCheckpoint};
use crate::config::SemanticsConfig;
use crate::event::{DeadLetter, RawRecord};
use crate::features::Feature;
use crate::source::{PollStatus, RecordSource, SourceError};
use crate::stats::JobStats;
use crate::time::{Opinion, WatermarkBoard};
use crate::watermark_exchange::WatermarkExchange;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// The run id of the next half (unique in the process).
static NEXT_RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What one half produced.
#[derive(Debug, Default)]
pub struct HalfRun {
    /// Features emitted (before the checkpoint, for a first half).
    pub features: Vec<Feature>,
    /// Dead letters emitted (likewise).
    pub dead_letters: Vec<DeadLetter>,
    /// The state at the checkpoint taken at the end of a first half: the restored state with
    /// every worker's changes applied.
    pub checkpoint: Option<StateImage>,
    /// Bytes the checkpoint's changes held (keys and values), over all workers.
    pub checkpoint_bytes: u64,
    /// From the call (restore included) until every record was read: the time to catch up.
    pub caught_up_after: Option<Duration>,
    /// How long the dataflow stood still for the checkpoint (the longest worker).
    pub paused_for: Option<Duration>,
    /// Of which saving state (the longest worker); the rest drained records in flight.
    pub saved_in: Option<Duration>,
}

/// A replay partition that stops after its records until `end` is set, then ends.
struct GatedSource {
    name: String,
    records: std::collections::VecDeque<RawRecord>,
    end: Option<Arc<AtomicBool>>,
}

impl RecordSource for GatedSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError> {
        for _ in 0..max {
            match self.records.pop_front() {
                Some(record) => out.push(record),
                None => break,
            }
        }
        if !self.records.is_empty() {
            return Ok(PollStatus::Ready);
        }
        Ok(match &self.end {
            Some(end) if !end.load(Ordering::SeqCst) => PollStatus::Pending,
            _ => PollStatus::Finished,
        })
    }

    fn is_replay(&self) -> bool {
        true
    }
}

#[derive(Default)]
struct Collected {
    features: Vec<Feature>,
    dead_letters: Vec<DeadLetter>,
    parts: Vec<WorkerCheckpoint>,
    /// Outputs collected when the checkpoint was taken.
    at_checkpoint: Option<(usize, usize)>,
    errors: Vec<String>,
}

/// Runs the graph over `records` (one partition named `partition`, on worker 0) on `workers`
/// workers, restored from `restore` if given. With `checkpoint_at_end`, the partition waits after
/// its records, a checkpoint is taken once all of them are read, and only the outputs emitted
/// before it are kept; otherwise the partition ends and the run goes to completion.
pub fn run_half(
    config: &SemanticsConfig,
    partition: &str,
    records: Vec<RawRecord>,
    workers: usize,
    restore: Option<&StateImage>,
    checkpoint_at_end: bool,
) -> Result<HalfRun, String> {
    let started = Instant::now();
    let workers = workers.max(1);
    // Every half is a new run of the checkpoint lineage: the keys of its parts differ from
    // those of every earlier run (as the job numbers a run by its first checkpoint id).
    let run = NEXT_RUN.fetch_add(1, Ordering::SeqCst);
    let restores = match restore {
        Some(saved) => saved.split(workers).map_err(|e| e.to_string())?.workers,
        None => (0..workers).map(|_| Default::default()).collect(),
    };
    let slots = Arc::new(Mutex::new(
        restores.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let end = Arc::new(AtomicBool::new(false));
    let total = records.len() as u64;
    let source = Arc::new(Mutex::new(Some(GatedSource {
        name: partition.to_string(),
        records: records.into(),
        end: checkpoint_at_end.then(|| Arc::clone(&end)),
    })));
    let mut opinions = vec![Opinion::Finished; workers];
    opinions[0] = Opinion::Undefined;
    // Every worker's replica of the board starts alike.
    let board = WatermarkBoard::with_opinions(opinions);
    let replicas = Arc::new(Mutex::new(
        (0..workers)
            .map(|_| Some(Arc::new(board.replica())))
            .collect::<Vec<_>>(),
    ));
    let stats = Arc::new(JobStats::default());
    let coordinator = CheckpointCoordinator::new(workers);
    let collected: Arc<Mutex<Collected>> = Arc::default();

    let driver = {
        let (coordinator, collected, stats, end) = (
            Arc::clone(&coordinator),
            Arc::clone(&collected),
            Arc::clone(&stats),
            Arc::clone(&end),
        );
        std::thread::spawn(move || -> Result<Option<Duration>, String> {
            if !checkpoint_at_end {
                return Ok(None);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            let wait_for = |what: &str, done: &dyn Fn() -> bool| {
                while !done() {
                    if Instant::now() > deadline {
                        return Err(format!("timed out waiting for {what}"));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            };
            wait_for("the records to be read", &|| {
                stats.records_in.load(Ordering::SeqCst) >= total
            })?;
            let caught_up = started.elapsed();
            if !coordinator.request(1, false) {
                return Err("the checkpoint request was refused".to_string());
            }
            wait_for("every worker's part", &|| {
                collected.lock().map(|c| c.parts.len()).unwrap_or(0) >= workers
            })?;
            end.store(true, Ordering::SeqCst);
            Ok(Some(caught_up))
        })
    };

    let config = config.clone();
    let worker_collected = Arc::clone(&collected);
    let worker_coordinator = Arc::clone(&coordinator);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let restore = slots
            .lock()
            .ok()
            .and_then(|mut slots| slots.get_mut(index).and_then(Option::take))
            .unwrap_or_default();
        let coordinator = Arc::clone(&worker_coordinator);
        if let Err(error) = coordinator.attach(worker) {
            if let Ok(mut c) = worker_collected.lock() {
                c.errors.push(error.to_string());
            }
            return;
        }
        let states = coordinator.states(index, run, restore);
        let board = replicas
            .lock()
            .ok()
            .and_then(|mut replicas| replicas.get_mut(index).and_then(Option::take))
            .unwrap_or_else(|| Arc::new(WatermarkBoard::new(workers)));
        let exchange = WatermarkExchange::new(index, board);
        let sources: Vec<Box<dyn RecordSource>> = if index == 0 {
            source
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .map(|s| Box::new(s) as Box<dyn RecordSource>)
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        let sink = Arc::clone(&worker_collected);
        worker.dataflow::<u64, _, _>(|scope| {
            let outputs = build(
                scope,
                sources,
                exchange.publisher(),
                &config,
                &GraphOptions::default(),
                Arc::clone(&stats),
                &states,
            );
            let features_sink = Arc::clone(&sink);
            outputs
                .features
                .sink(Pipeline, "Collect", move |(input, _frontier)| {
                    input.for_each(|_cap, data| {
                        if let Ok(mut c) = features_sink.lock() {
                            c.features.append(data);
                        }
                    });
                });
            let letters_sink = Arc::clone(&sink);
            outputs
                .dead_letters
                .sink(Pipeline, "Collect", move |(input, _frontier)| {
                    input.for_each(|_cap, data| {
                        if let Ok(mut c) = letters_sink.lock() {
                            c.dead_letters.append(data);
                        }
                    });
                });
        });
        exchange.install(worker);
        let errors = states.restore_errors();
        if !errors.is_empty()
            && let Ok(mut c) = sink.lock()
        {
            c.errors.extend(errors);
        }
        coordinator.run(worker, &states, &stats.state_sizes, |part| {
            if part.end_of_input {
                return; // only the checkpoint taken at the cut is of interest here
            }
            if let Ok(mut c) = sink.lock() {
                let counts = (c.features.len(), c.dead_letters.len());
                // Every worker stands still while parts are handed over: the counts agree.
                if c.at_checkpoint.is_some_and(|seen| seen != counts) {
                    c.errors
                        .push("outputs moved while the checkpoint was taken".to_string());
                }
                c.at_checkpoint = Some(counts);
                c.parts.push(part);
            }
        });
    })?;
    for result in guards.join() {
        result?;
    }
    let caught_up_after = driver
        .join()
        .map_err(|_| "the driver panicked".to_string())??;

    let mut collected = std::mem::take(&mut *collected.lock().map_err(|e| e.to_string())?);
    if !collected.errors.is_empty() {
        return Err(collected.errors.join("; "));
    }
    let mut half = HalfRun {
        caught_up_after,
        paused_for: collected.parts.iter().map(|p| p.paused_for).max(),
        saved_in: collected.parts.iter().map(|p| p.saved_in).max(),
        ..HalfRun::default()
    };
    if checkpoint_at_end {
        let (features, letters) = collected.at_checkpoint.ok_or("no checkpoint was taken")?;
        collected.features.truncate(features);
        collected.dead_letters.truncate(letters);
        let mut image = restore.cloned().unwrap_or_default();
        for part in collected.parts {
            let mut snapshot = part.snapshot.map_err(|e| e.to_string())?;
            snapshot.encode_deferred().map_err(|e| e.to_string())?;
            half.checkpoint_bytes += snapshot.changed_bytes();
            image.apply(snapshot.changes);
        }
        half.checkpoint = Some(image);
    }
    half.features = collected.features;
    half.dead_letters = collected.dead_letters;
    Ok(half)
}
