//! The timely workers: each builds its part of the dataflow graph over its sources, with its
//! restored state, and forwards what the graph emits to the sink thread. With checkpoints on, the
//! coordinator steps the worker and injects checkpoint barriers; without, the worker just runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pageflow_dataflow::algorithms::graph::{GraphOptions, build};
use pageflow_dataflow::checkpoint::coordinator::SIZE_REPORT_INTERVAL;
use pageflow_dataflow::checkpoint::{CheckpointCoordinator, OperatorStates, WorkerRestore};
use pageflow_dataflow::monitor::DataflowMonitor;
use pageflow_dataflow::source::WorkerSources;
use pageflow_dataflow::stats::{JobStats, StateSizes};
use pageflow_dataflow::time::{Opinion, WatermarkBoard};
use pageflow_dataflow::watermark_exchange::WatermarkExchange;

use super::sinks::{SinkMessage, forward, forward_to_every_process};
use crate::checkpoints::Restored;
use crate::cluster::Agreement;
use crate::config::JobConfig;
use pageflow_serve::ServingState;

/// What the workers share with the rest of the job.
pub(super) struct WorkerContext {
    /// Takes checkpoints across the workers.
    pub coordinator: Arc<CheckpointCoordinator>,
    /// The run the operators' state changes belong to (the first checkpoint id of this run).
    pub run_id: u64,
    /// What the workers count.
    pub stats: Arc<JobStats>,
    /// Marked loaded once every worker has built its dataflow (`/readyz`).
    pub serving: Arc<ServingState>,
    /// To the sink thread.
    pub sender: SyncSender<SinkMessage>,
    /// Counts each operator's records and busy time for the operator view (`/v1/job`).
    pub monitor: Arc<DataflowMonitor>,
}

/// The job watermark's board, one replica per worker, all alike: each partition's initial opinion
/// and, after a restore, where the partitions not yet back stood. Each worker's replica hears the
/// others through the watermark exchange (`pageflow_dataflow::watermark_exchange`).
pub(super) fn watermark_boards(
    config: &JobConfig,
    opinions: Vec<Opinion>,
    restored: Option<&Restored>,
) -> Vec<Arc<WatermarkBoard>> {
    let board = WatermarkBoard::with_opinions(opinions);
    if let Some(restored) = restored {
        // Partitions that come back later (Kinesis shards await discovery) hold the watermark
        // where they stood meanwhile, as they would have had the job not stopped.
        let lag = config.semantics.max_out_of_orderness.ms();
        board.expect(
            restored.partitions.iter().filter(|p| !p.finished).map(|p| {
                let opinion = match p.max_ts {
                    Some(ts) => Opinion::At(ts.saturating_sub(lag)),
                    None => Opinion::Undefined,
                };
                (p.partition.clone(), opinion)
            }),
            config.semantics.idle_timeout.into(),
        );
    }
    (0..config.runtime.workers)
        .map(|_| Arc::new(board.replica()))
        .collect()
}

/// Starts `[runtime] workers` timely workers on a thread of their own; this process's worker
/// `i` reads `sources[i]` and restores `restores[i]`. In a cluster, first connects to every
/// peer (waiting up to `[cluster] connect_timeout`), checking that all start from `agreement`;
/// the workers then run one dataflow with every process's.
pub(super) fn start_workers(
    config: &JobConfig,
    sources: Vec<WorkerSources>,
    restores: Vec<WorkerRestore>,
    boards: Vec<Arc<WatermarkBoard>>,
    agreement: Agreement,
    context: WorkerContext,
) -> Result<()> {
    let WorkerContext {
        coordinator: worker_coordinator,
        run_id,
        stats: worker_stats,
        serving: serving_for_workers,
        sender,
        monitor,
    } = context;
    let workers = config.runtime.workers;
    let processes = config.cluster.processes();
    let first_local = config.cluster.process * workers;
    let checkpointing = config.checkpoint.enabled;
    // A cluster always runs the control plane: it tells every process when the job stops.
    let coordinated = checkpointing || processes > 1;
    let slots = Arc::new(Mutex::new(
        sources
            .into_iter()
            .zip(restores)
            .zip(boards)
            .map(|((sources, restore), board)| Some((sources, restore, board)))
            .collect::<Vec<_>>(),
    ));
    let semantics = config.semantics.clone();
    let options = GraphOptions {
        keep_raw: config.sinks.archive,
        keep_pageviews: config.sinks.curated_enabled(),
        live_interval: Some(config.serve.live_interval.into()),
        watermark_alignment: (config.runtime.watermark_alignment.ms() > 0)
            .then_some(config.runtime.watermark_alignment.ms()),
        // The partition holds the watermark and the job stops (`run` in the parent module).
        end_on_source_failure: false,
    };
    let built = Arc::new(AtomicUsize::new(0));
    exit_when_a_worker_panics();
    if processes > 1 {
        // Past this point a peer may leave first without that being a failure.
        worker_coordinator.when_the_job_ends(crate::cluster::leave);
    }
    let (builders, others) = config.cluster.connect(workers, agreement)?;
    std::thread::Builder::new()
        .name("pageflow-timely".into())
        .spawn(move || {
            let run = move |worker: &mut timely::worker::Worker| {
                let index = worker.index();
                let Some((sources, restore, board)) = slots.lock().ok().and_then(|mut s| {
                    s.get_mut(index - first_local).and_then(Option::take)
                }) else {
                    fatal(&format!(
                        "worker {index} found no sources, restore or watermark board prepared for it; this is a bug in pageflow, please report it"
                    ));
                };
                let exchange = WatermarkExchange::new(index, board);
                let (stats, sender) = (Arc::clone(&worker_stats), sender.clone());
                let coordinator = Arc::clone(&worker_coordinator);
                let states = if checkpointing {
                    if let Err(error) = coordinator.attach(worker) {
                        fatal(&format!("{error}"));
                    }
                    coordinator.states(index, run_id, restore)
                } else {
                    OperatorStates::default()
                };
                let sizes = Arc::clone(&stats);
                // After the coordinator's listener, which it keeps (see `DataflowMonitor::attach`).
                monitor.attach(worker);
                worker.dataflow::<u64, _, _>(|scope| {
                    let outputs = build(
                        scope,
                        sources,
                        exchange.publisher(),
                        &semantics,
                        &options,
                        stats,
                        &states,
                    );
                    forward(outputs.features, sender.clone(), SinkMessage::Features);
                    forward(
                        outputs.dead_letters,
                        sender.clone(),
                        SinkMessage::DeadLetters,
                    );
                    forward(outputs.raw, sender.clone(), SinkMessage::Raw);
                    forward(outputs.pageviews, sender.clone(), SinkMessage::Pageviews);
                    if processes > 1 {
                        // Every process serves the whole job.
                        forward_to_every_process(
                            outputs.live,
                            processes,
                            workers,
                            sender.clone(),
                            SinkMessage::Live,
                        );
                        forward_to_every_process(
                            outputs.accepted.clone(),
                            processes,
                            workers,
                            sender.clone(),
                            SinkMessage::Reads,
                        );
                    } else {
                        forward(outputs.live, sender.clone(), SinkMessage::Live);
                    }
                    forward(outputs.accepted, sender.clone(), SinkMessage::Accepted);
                });
                // The exchange is plumbing: the operator view shows the job's graph only.
                monitor.hide_dataflow(exchange.install(worker));
                let errors = states.restore_errors();
                if !errors.is_empty() {
                    fatal(&format!(
                        "restoring the checkpoint failed on worker {index}: {}",
                        errors.join("; ")
                    ));
                }
                // Every worker has built its part of the dataflow with its state: /readyz may say
                // yes once the sources are caught up.
                if built.fetch_add(1, Ordering::SeqCst) + 1 == workers {
                    serving_for_workers.mark_loaded();
                }
                if coordinated {
                    coordinator.run(worker, &states, &sizes.state_sizes, |part| {
                        if checkpointing {
                            // A closed channel means the job is stopping: the part is dropped
                            // with it.
                            let _ = sender.send(SinkMessage::Checkpoint(part));
                        }
                    });
                } else {
                    run_without_checkpoints(worker, &states, &sizes.state_sizes);
                }
            };
            let result = timely::execute::execute_from(
                builders,
                others,
                timely::WorkerConfig::default(),
                run,
            );
            match result {
                Ok(guards) => drop(guards.join()),
                Err(error) => tracing::error!("the timely workers failed to start: {error}"),
            }
        })
        .context("cannot start the dataflow")?;
    Ok(())
}

/// The exit code when a worker thread panicked (70, EX_SOFTWARE: a bug in pageflow).
pub const WORKER_PANICKED_EXIT_CODE: i32 = 70;

/// From now on, a panic of a timely worker thread (`timely:work-<index>`) ends the process with
/// [`WORKER_PANICKED_EXIT_CODE`] once the panic is printed. Without it the other workers wait
/// for the dead one's progress forever: the job would look alive (HTTP answers, nothing moves)
/// and never restart.
fn exit_when_a_worker_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or_default();
            if name.starts_with("timely:") && crate::cluster::is_leaving() {
                // A peer left first and the worker touched its closed connection: expected
                // while the job ends (the process is exiting anyway).
                return;
            }
            previous(info);
            if let Some(message) = worker_panic_message(name, info.payload()) {
                tracing::error!("{message}");
                crate::say!("pageflow: {message}");
                std::process::exit(WORKER_PANICKED_EXIT_CODE);
            }
        }));
    });
}

/// What to say when the thread named `thread` panicked with `payload`; `None` when it is not a
/// timely worker.
fn worker_panic_message(thread: &str, payload: &(dyn std::any::Any + Send)) -> Option<String> {
    let worker: usize = thread.strip_prefix("timely:work-")?.parse().ok()?;
    let reason = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    Some(format!(
        "worker {worker} failed ({reason}); this is a bug in pageflow, please report it with the lines above. The job stops (exit code {WORKER_PANICKED_EXIT_CODE}); restarted, it resumes from its last checkpoint"
    ))
}

/// Stops the process when a worker cannot go on: a restore that failed half-way must not run on
/// partial state. Exit code 78 (EX_CONFIG): the data or the settings need a person.
fn fatal(message: &str) -> ! {
    tracing::error!("{message}");
    crate::say!("pageflow: {message}");
    std::process::exit(78)
}

/// Steps a worker until its dataflow completes, reporting its state's sizes every few seconds
/// (the job without checkpoints; with them, the coordinator does this).
fn run_without_checkpoints(
    worker: &mut timely::worker::Worker,
    states: &OperatorStates,
    sizes: &StateSizes,
) {
    let mut reported = Instant::now();
    sizes.report(worker.index(), states.sizes());
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if reported.elapsed() >= SIZE_REPORT_INTERVAL {
            sizes.report(worker.index(), states.sizes());
            reported = Instant::now();
        }
    }
    sizes.report(worker.index(), states.sizes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_thread_panic_names_the_worker_and_what_to_do() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("index out of bounds".to_string());
        let message =
            worker_panic_message("timely:work-3", payload.as_ref()).expect("a worker thread");
        assert!(
            message.starts_with("worker 3 failed (index out of bounds)"),
            "{message}"
        );
        assert!(message.contains("exit code 70"), "{message}");
        assert!(
            message.contains("resumes from its last checkpoint"),
            "{message}"
        );
        let payload: Box<dyn std::any::Any + Send> = Box::new("x");
        assert_eq!(
            worker_panic_message("pageflow-sink", payload.as_ref()),
            None
        );
        assert_eq!(
            worker_panic_message("timely:recv-1", payload.as_ref()),
            None
        );
    }
}
