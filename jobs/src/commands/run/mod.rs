//! `pageflow run`: the long-running job.
//!
//! ```text
//!  sources ─► timely workers (graph) ──bounded channel──► sink thread ──► JobOutputs
//!  (synthetic, files,                                         │          (local files, or
//!   Kinesis shards)                                           │           Kinesis + Firehose)
//!                                                             └──► serving state ◄── HTTP (axum)
//! ```
//!
//! The channel is bounded: when the sink falls behind (a slow disk, a throttled stream), the
//! workers block on it and stop reading their sources, so memory stays bounded. The sink thread
//! also mirrors the dataflow's counters into the Prometheus metrics. Kinesis readers and the AWS
//! sinks run on the job's tokio runtime, beside HTTP.
//!
//! The job ends by itself when its input does (files; Kinesis with `stop_at_latest`), and
//! otherwise on SIGINT or SIGTERM: then it stops reading, takes a final checkpoint, flushes the
//! sinks and exits 0 within `[checkpoint] stop_timeout`. At start it restores from the newest good
//! checkpoint, if there is one (see [`crate::checkpoints`]).
//!
//! The job's parts, one module each, in the order [`start_with`] assembles them:
//! `personalize` and `serving` (HTTP), `emf` (CloudWatch's metrics as log lines), `checkpointing` (restore and the checkpoint driver),
//! `sinks` (the sink thread and the outputs), `curated` (the curated lake's two-phase commit), `sources` (resumed from the checkpoint) and
//! `workers` (the timely workers running the graph).

mod checkpointing;
mod curated;
mod emf;
mod personalize;
pub(crate) mod serving;
mod sinks;
mod sources;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::checkpoint_store::{CheckpointStore, S3Lease, S3Store};
use pageflow_connectors::curated::CURATED_DIR;
use pageflow_connectors::dir_lock::{DirLock, this_process};
use pageflow_connectors::kinesis::consumer::KinesisConsumer;
use pageflow_connectors::personalize::EventForwarder;
use pageflow_dataflow::checkpoint::CheckpointCoordinator;
use pageflow_dataflow::clock::ManualClock;
use pageflow_dataflow::stats::JobStats;
use pageflow_dataflow::time::BoardView;

use self::checkpointing::{Checkpointing, start_checkpointing};
use self::emf::{EmfLines, start_emf};
use self::personalize::start_personalize;
use self::serving::start_http;
pub use self::sinks::SinkMessage;
use self::sinks::{CheckpointParts, SinkThread, job_outputs, sink_channel};
use self::sources::{Sources, worker_sources};
use self::workers::{WorkerContext, start_workers, watermark_boards};
use crate::checkpoints::{CheckpointDriver, PartsInbox};
use crate::config::{CheckpointStoreKind, JobConfig, SinksKind};
use pageflow_metrics::Metrics;
use pageflow_serve::{JobView, ServingState};

/// A running job's handles, for tests and the binary.
#[derive(Debug)]
pub struct RunningJob {
    /// Where HTTP listens.
    pub http_addr: Option<SocketAddr>,
    /// The live state served over HTTP.
    pub serving: Arc<ServingState>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The checkpoint the job restored from, if any.
    pub restored_from: Option<u64>,
    stop: Arc<AtomicBool>,
    sink: Option<std::thread::JoinHandle<Result<()>>>,
    kinesis: Option<KinesisConsumer>,
    checkpoints: Option<Arc<CheckpointDriver>>,
    coordinator: Arc<CheckpointCoordinator>,
    stop_timeout: Duration,
    /// Forwarding to Personalize, flushed at shutdown.
    personalize_events: Option<Arc<EventForwarder>>,
    runtime: tokio::runtime::Runtime,
    /// What the workers count, read directly (the metrics mirror it every half second).
    stats: Arc<JobStats>,
    /// Held until the job is dropped: another job on the same directories is refused.
    _directory_locks: Vec<DirLock>,
    /// The lease of the S3 checkpoint prefix: renewed while the job runs, released at shutdown.
    checkpoint_lease: Option<S3Lease>,
    /// This process's index in the cluster (0 for one process).
    process: usize,
    /// How many processes run the job.
    processes: usize,
    /// The CloudWatch EMF lines, when `[metrics.emf]` is enabled.
    emf: Option<EmfLines>,
}

impl RunningJob {
    /// Whether the job has ended by itself: its input ended and every result is written, or a
    /// sink failed (then [`RunningJob::shutdown`] returns the error).
    pub fn has_ended(&self) -> bool {
        self.sink.as_ref().is_none_or(|sink| sink.is_finished())
    }

    /// A partition that failed for good (no retry can help), if any: the job must stop.
    pub fn source_failure(&self) -> Option<String> {
        self.stats.source_failure()
    }

    /// This process's index in the cluster and the number of processes (`(0, 1)` alone).
    pub fn place(&self) -> (usize, usize) {
        (self.process, self.processes)
    }

    /// What the other processes of a cluster said that this process must act on, if anything.
    pub fn cluster_news(&self) -> Option<ClusterNews> {
        if self.processes < 2 {
            return None;
        }
        if self.coordinator.failure_heard() {
            Some(ClusterNews::SourceFailedElsewhere)
        } else if self.process == 0 && self.coordinator.stop_asked() {
            Some(ClusterNews::StopAsked)
        } else if self.process != 0 && self.coordinator.is_ending() {
            Some(ClusterNews::Stopping)
        } else {
            None
        }
    }

    /// The job watermark as the workers see it now (`None` until there is one).
    pub fn watermark(&self) -> Option<u64> {
        Some(self.stats.watermark_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Records read from the sources so far, as the workers count them.
    pub fn records_in(&self) -> u64 {
        self.stats.records_in.load(Ordering::Relaxed)
    }

    /// Stops reading and takes a final checkpoint (when checkpoints are on), within `budget`;
    /// then [`RunningJob::shutdown`] flushes the sinks.
    pub fn checkpoint_and_stop(&self, budget: Duration) -> Result<Stopped> {
        match &self.checkpoints {
            Some(driver) => Ok(match driver.checkpoint_and_stop(budget)? {
                Some(id) => Stopped::Checkpointed(id),
                None => Stopped::InputEnded,
            }),
            None => {
                self.coordinator.pause_sources();
                Ok(Stopped::WithoutCheckpoint)
            }
        }
    }

    /// Asks for a checkpoint now (besides the timer's); its id, or `None` when checkpoints are
    /// off or one is still being taken.
    pub fn request_checkpoint(&self) -> Option<u64> {
        self.checkpoints
            .as_ref()
            .and_then(|driver| driver.request(false))
    }

    /// Waits until the checkpoint store's background compaction has ended (see
    /// [`CheckpointDriver::wait_for_compaction`]).
    pub fn wait_for_compaction(&self) {
        if let Some(driver) = &self.checkpoints {
            driver.wait_for_compaction();
        }
    }

    /// Flushes the sinks and stops serving. The dataflow threads end with the process.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(driver) = &self.checkpoints {
            driver.stop();
        }
        if let Some(kinesis) = self.kinesis.take() {
            kinesis.stop();
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(sink) = self.sink.take() {
            sink.join()
                .map_err(|_| anyhow!("the sink thread panicked"))??;
        }
        // The sink thread has mirrored the last counts: the last line reports them.
        if let Some(emf) = self.emf.take() {
            emf.finish();
        }
        // A checkpoint being written (the end-of-input one, say) is finished, not left torn.
        if let Some(driver) = &self.checkpoints
            && !driver.finish(self.stop_timeout)
        {
            tracing::warn!(
                "a checkpoint was still being written after {:?}; the next start skips it",
                self.stop_timeout
            );
        }
        // Events already counted are sent to Personalize, within the stop budget (a restart
        // from the last checkpoint sends those after it again, with the same event ids).
        if let Some(forwarder) = &self.personalize_events {
            let stats = self.runtime.block_on(forwarder.shutdown(self.stop_timeout));
            if stats.failed_events > 0 {
                tracing::warn!(
                    "{} events could not be sent to Personalize (see pageflow_personalize_events_total)",
                    stats.failed_events
                );
            }
        }
        if let Some(lease) = self.checkpoint_lease.take()
            && let Err(error) = lease.release()
        {
            tracing::warn!("{error}");
        }
        Ok(())
    }
}

/// What the processes of a cluster tell each other about stopping, as one process acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterNews {
    /// (Process 0.) Another process was told to stop: take the final checkpoint for the job.
    StopAsked,
    /// (Another process.) The job is stopping: process 0 takes the final checkpoint, to which
    /// this process adds its part.
    Stopping,
    /// A source failed for good in another process: the whole job stops.
    SourceFailedElsewhere,
}

/// How a graceful stop went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// After this final checkpoint: a restart resumes from it without duplicates.
    Checkpointed(u64),
    /// The input ended first: every result is written.
    InputEnded,
    /// Checkpoints are off: open sessions and windows are lost.
    WithoutCheckpoint,
}

/// What a benchmark can put into a job besides its configuration.
#[derive(Clone, Debug, Default)]
pub struct RunHooks {
    /// Paces the synthetic source (when it is paced, i.e. not `simulated`) by this clock instead
    /// of the system's: `pageflow bench --soak` moves it forward in steps, so that the job sees
    /// live traffic whose time it controls.
    pub synthetic_clock: Option<ManualClock>,
}

/// Starts the job in the background and returns its handles.
pub fn start(config: JobConfig) -> Result<RunningJob> {
    start_with(config, RunHooks::default())
}

/// [`start`], with [`RunHooks`]. The job is assembled in the order its parts depend on each
/// other: the serving state and metrics, HTTP, checkpoints (restoring the serving state before
/// anything reads it), the sink thread, the sources (resumed from the checkpoint), the workers.
pub fn start_with(config: JobConfig, hooks: RunHooks) -> Result<RunningJob> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(anyhow!(
            "invalid configuration:\n  {}",
            problems.join("\n  ")
        ));
    }
    let config = for_this_process(config);
    let cluster = config.cluster.clone();
    let directory_locks = lock_directories(&config)?;
    let metrics = Arc::new(Metrics::new());
    let serving = Arc::new(ServingState::with_read_limits(
        config.recommendations.read_limits(),
    ));
    if cluster.is_cluster() {
        metrics.set_cluster(pageflow_metrics::ClusterPlace {
            process: cluster.process,
            addresses: cluster.addresses.clone(),
            threads: config.runtime.workers,
        });
    }
    let stats = Arc::new(JobStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    // The operator view (`/v1/job`): the workers attach to its monitor, the checkpoint writer
    // records into its history, and it shows the watermark board once there is one.
    let job_view = Arc::new(JobView::default());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("pageflow-io")
        .build()
        .context("cannot start the I/O runtime")?;
    // One job per S3 checkpoint prefix (the local directories are locked above); in a cluster,
    // process 0 holds it for the job (the others only add their parts).
    let checkpoint_lease = if cluster.process == 0 {
        crate::checkpoints::lock_s3_prefix(&config, &runtime, &this_process("pageflow run"))?
    } else {
        None
    };
    // The events/s gauge stays fresh between scrapes (the dashboard reads it every 2 s).
    {
        let _guard = runtime.enter();
        drop(Arc::clone(&metrics).spawn_rate_sampler(Duration::from_secs(1)));
    }
    // CloudWatch's metrics, as EMF lines on standard output.
    let emf = start_emf(&config.metrics.emf, &runtime, &metrics);
    let (personalize, personalize_feed) = start_personalize(&config, &runtime, &metrics)?;
    let http_addr = start_http(
        &config,
        &runtime,
        &serving,
        &metrics,
        personalize.as_ref(),
        &job_view,
        &stop,
    )?;

    let workers = config.runtime.workers;
    let coordinator = CheckpointCoordinator::new(workers);
    let Checkpointing {
        restored,
        restores,
        driver,
        run_id,
        agreement,
    } = start_checkpointing(
        &config,
        &runtime,
        &coordinator,
        &serving,
        &metrics,
        &job_view,
    )?;

    let (sender, receiver) = sink_channel();
    let sink = SinkThread {
        receiver,
        outputs: job_outputs(&config, &runtime, &metrics)?,
        serving: Arc::clone(&serving),
        metrics: Arc::clone(&metrics),
        stats: Arc::clone(&stats),
        stop: Arc::clone(&stop),
        checkpoints: driver.clone().map(|driver| CheckpointParts {
            driver,
            inbox: PartsInbox::new(workers),
            run: run_id,
            saves_serving: cluster.process == 0,
        }),
        personalize: personalize_feed.clone(),
        reads_from_every_process: cluster.is_cluster(),
        curated: open_curated(&config, &runtime, restored.as_ref().map(|r| r.id), &cluster)?,
    }
    .spawn()?;

    let Sources {
        local: sources,
        opinions,
        kinesis,
        finished_elsewhere,
    } = worker_sources(&config, &runtime, restored.as_ref(), &hooks)?;
    if let Some(consumer) = &kinesis {
        metrics.watch_kinesis(Arc::clone(&consumer.status));
    }
    let boards = watermark_boards(&config, opinions, restored.as_ref());
    // Serving shows local worker 0's replica, which hears every worker through the exchange.
    if let Some(first) = boards.first() {
        job_view.watch_board(BoardView::of(Arc::clone(first)));
        if let Some(finished) = &finished_elsewhere {
            finished.watch(BoardView::of(Arc::clone(first)));
        }
    }
    start_workers(
        &config,
        sources,
        restores,
        boards,
        agreement,
        WorkerContext {
            coordinator: Arc::clone(&coordinator),
            run_id,
            stats: Arc::clone(&stats),
            serving: Arc::clone(&serving),
            sender,
            monitor: Arc::clone(job_view.monitor()),
        },
    )?;

    Ok(RunningJob {
        http_addr,
        serving,
        metrics,
        restored_from: restored.as_ref().map(|r| r.id),
        stop,
        sink: Some(sink),
        kinesis,
        checkpoints: driver,
        coordinator,
        stop_timeout: config.checkpoint.stop_timeout.into(),
        personalize_events: personalize_feed.map(|feed| feed.forwarder),
        runtime,
        stats,
        _directory_locks: directory_locks,
        checkpoint_lease,
        process: cluster.process,
        processes: cluster.processes(),
        emf,
    })
}

/// The curated lake's writer, when `[sinks] curated` is on: under `<sinks.dir>/curated/` (per
/// process in a cluster), recovered to the checkpoint `restored`; in AWS mode also uploaded to
/// `s3://<bucket>/<prefix>/curated/`. Finished hours are compacted once the watermark is a
/// session gap past their end (most of their sessions have closed).
fn open_curated(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    restored: Option<u64>,
    cluster: &crate::cluster::ClusterConfig,
) -> Result<Option<self::curated::CuratedSink>> {
    if !config.sinks.curated_enabled() {
        return Ok(None);
    }
    let writer = if cluster.is_cluster() {
        format!("p{}", cluster.process)
    } else {
        "w0".to_string()
    };
    // Without checkpoints nothing is restored: pending files of an earlier run are deleted.
    let restored = restored.filter(|_| config.checkpoint.enabled);
    let section = config.sinks.curated_section();
    let mirror: Option<Arc<dyn CheckpointStore>> =
        (config.sinks.kind == SinksKind::Aws && !section.bucket.trim().is_empty()).then(|| {
            let prefix = section.prefix.trim_matches('/');
            let prefix = if prefix.is_empty() {
                CURATED_DIR.to_string()
            } else {
                format!("{prefix}/{CURATED_DIR}")
            };
            Arc::new(S3Store::new(
                crate::checkpoints::s3_client(config, runtime),
                &section.bucket,
                &prefix,
                runtime.handle().clone(),
            )) as Arc<dyn CheckpointStore>
        });
    Ok(Some(self::curated::CuratedSink::open(
        &config.sinks.dir,
        &writer,
        restored,
        config.semantics.session_gap.ms(),
        config.checkpoint.stop_timeout.into(),
        mirror,
    )?))
}

/// The configuration as this process of a cluster runs it: its local sinks write under
/// `<sinks.dir>/process-<i>/`, while the local checkpoint directory stays the one every process
/// shares (`<sinks.dir>/checkpoints` unless set). One process: unchanged.
fn for_this_process(mut config: JobConfig) -> JobConfig {
    if config.cluster.is_cluster() {
        config.checkpoint.dir = Some(config.checkpoint.local_dir(&config.sinks));
        config.sinks.dir = config
            .sinks
            .dir
            .join(format!("process-{}", config.cluster.process));
    }
    config
}

/// Locks the directories this job writes to (the sinks' and, when local and elsewhere, the
/// checkpoints'), so that a second job on them refuses to start instead of writing the same files.
fn lock_directories(config: &JobConfig) -> Result<Vec<DirLock>> {
    let holder = this_process("pageflow run");
    let mut dirs = vec![config.sinks.dir.clone()];
    // In a cluster, process 0 holds the shared checkpoint directory for the job (the others
    // only add their parts, with create-only writes).
    if config.checkpoint.enabled
        && config.checkpoint.store == CheckpointStoreKind::Local
        && config.cluster.process == 0
    {
        let checkpoints = config.checkpoint.local_dir(&config.sinks);
        if !checkpoints.starts_with(&config.sinks.dir) {
            dirs.push(checkpoints);
        }
    }
    dirs.iter()
        .map(|dir| DirLock::acquire(dir, &holder).map_err(anyhow::Error::from))
        .collect()
}

/// The exit code when a source cannot be read and no retry would help (EX_UNAVAILABLE): a
/// supervisor restarting the job at once would meet the same failure.
pub const SOURCE_FAILED_EXIT_CODE: i32 = 69;

/// What woke `run` up.
enum Wake {
    /// SIGINT or SIGTERM.
    Signalled,
    /// The input ended (or a sink failed).
    Ended,
    /// A source of this process failed for good.
    SourceFailed(String),
    /// Another process of the cluster said something to act on.
    Cluster(ClusterNews),
}

/// How long a process whose source failed waits for every peer to hear it before exiting (so
/// that they exit as it does, not as if it were lost).
const FAILURE_TOLD_WITHIN: Duration = Duration::from_secs(5);

/// `pageflow run`: starts the job and runs until SIGINT or SIGTERM.
///
/// In a cluster, a signal to any process stops the whole job: that process asks the others
/// through the control plane, process 0 takes the final checkpoint, every process writes its part
/// of it and exits 0. A source failing for good in any process stops every process with
/// [`SOURCE_FAILED_EXIT_CODE`].
pub fn run(config: JobConfig) -> Result<()> {
    let budget: Duration = config.checkpoint.stop_timeout.into();
    let job = start(config)?;
    let (process, processes) = job.place();
    let place = if processes > 1 {
        format!(" as process {process} of {processes}")
    } else {
        String::new()
    };
    // The signals are caught before the job says it is running: a SIGTERM sent as soon as it
    // says so (an orchestrator, a test) must stop it cleanly, not kill it outright. (During the
    // start, Ctrl-C still ends the process at once, e.g. while it waits for its peers.)
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut terminate, mut interrupt) = {
        let _entered = signals.enter();
        (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
        )
    };
    match job.http_addr {
        Some(addr) => {
            tracing::info!("serving rankings on http://{addr}/ (metrics at /metrics)");
            crate::say!("pageflow is running{place}: open http://{addr}/ ; stop with Ctrl-C");
        }
        None => crate::say!("pageflow is running{place} (serving is off); stop with Ctrl-C"),
    }
    let wake = signals.block_on(async {
        let news = async {
            loop {
                if let Some(failure) = job.source_failure() {
                    return Wake::SourceFailed(failure);
                }
                if let Some(news) = job.cluster_news() {
                    return Wake::Cluster(news);
                }
                if job.has_ended() {
                    return Wake::Ended;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let wake = tokio::select! {
            _ = interrupt.recv() => Wake::Signalled,
            _ = terminate.recv() => Wake::Signalled,
            wake = news => wake,
        };
        Ok::<_, std::io::Error>(wake)
    })?;
    match wake {
        Wake::SourceFailed(failure) => {
            if processes > 1 {
                // The other processes stop too, and say why, rather than find this one lost.
                job.coordinator.report_failure();
                await_within(FAILURE_TOLD_WITHIN, || job.coordinator.failure_heard());
                crate::cluster::leave();
            }
            // No final checkpoint (the last one is consistent, and stopping soon matters more):
            // the sinks deliver what was emitted, the dataflow ends with the process.
            crate::say!(
                "pageflow: {failure}; the job stops without a final checkpoint. Fix the source (or \
                 remove it from the configuration), then start again: it resumes from the last \
                 checkpoint and emits what followed it again, with the same feature ids"
            );
            job.shutdown()?;
            std::process::exit(SOURCE_FAILED_EXIT_CODE)
        }
        Wake::Cluster(ClusterNews::SourceFailedElsewhere) => {
            crate::cluster::leave();
            crate::say!(
                "pageflow: a source failed for good in another process of the cluster (its log says which and why); every process stops without a final checkpoint. Fix the source, then start every process again: the job resumes from the last checkpoint"
            );
            job.shutdown()?;
            std::process::exit(SOURCE_FAILED_EXIT_CODE)
        }
        Wake::Ended => {
            let read = job.records_in();
            if processes > 1 {
                crate::say!(
                    "pageflow: the input has ended; every result is written (process {process} read {read} records)"
                );
            } else {
                crate::say!(
                    "pageflow: the input has ended; every result is written ({read} records read)"
                );
            }
            job.shutdown()?;
            std::process::exit(0)
        }
        Wake::Signalled | Wake::Cluster(_) if process != 0 => stop_as_a_peer(job, budget),
        Wake::Signalled | Wake::Cluster(_) => {
            if matches!(wake, Wake::Cluster(ClusterNews::StopAsked)) {
                crate::say!("pageflow: another process of the cluster was told to stop");
            }
            stop_gracefully(job, budget)
        }
    }
}

/// The graceful stop of one process, or of process 0 for the cluster: stops reading, takes the
/// final checkpoint (every process adds its part), flushes the sinks and exits.
fn stop_gracefully(job: RunningJob, budget: Duration) -> ! {
    crate::say!("pageflow: stopping: reading stopped, taking the final checkpoint");
    if job.processes > 1 && job.checkpoints.is_none() {
        // Without a checkpoint to ask for, the stop itself is what every process must hear.
        job.coordinator.ask_to_stop();
        await_within(budget, || job.coordinator.stop_asked());
        crate::cluster::leave();
    }
    let stopped = job.checkpoint_and_stop(budget);
    finish_stop(job, stopped)
}

/// The graceful stop of a process of a cluster other than process 0: asks the job to stop (if
/// this process was the one told), then adds its part to the final checkpoint process 0 takes,
/// flushes its sinks and exits.
fn stop_as_a_peer(job: RunningJob, budget: Duration) -> ! {
    crate::say!(
        "pageflow: stopping: reading stopped, adding this process's part to the final checkpoint process 0 takes"
    );
    job.coordinator.ask_to_stop();
    job.coordinator.pause_sources();
    let stopped = match &job.checkpoints {
        Some(driver) => driver
            .wait_for_final_part(budget)
            .map(|id| id.map_or(Stopped::InputEnded, Stopped::Checkpointed)),
        None => {
            await_within(budget, || job.coordinator.stop_asked());
            crate::cluster::leave();
            Ok(Stopped::WithoutCheckpoint)
        }
    };
    finish_stop(job, stopped)
}

/// Waits until `done` holds, at most `budget`.
fn await_within(budget: Duration, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + budget;
    while !done() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Shuts the job down after a graceful stop and exits, saying how it went.
fn finish_stop(job: RunningJob, stopped: Result<Stopped>) -> ! {
    let peer = job.processes > 1 && job.process != 0;
    if let Err(error) = job.shutdown() {
        crate::say!("pageflow: {}", crate::stderr::describe(&error));
        std::process::exit(1)
    }
    match stopped {
        Ok(Stopped::Checkpointed(id)) if peer => {
            crate::say!(
                "pageflow: stopped after writing this process's part of checkpoint {id} (process 0 commits it); a restart of every process resumes from it"
            );
            std::process::exit(0)
        }
        Ok(Stopped::Checkpointed(id)) => {
            crate::say!("pageflow: stopped after checkpoint {id}; a restart resumes from it");
            std::process::exit(0)
        }
        Ok(Stopped::InputEnded) => {
            crate::say!("pageflow: the input ended while stopping; every result is written");
            std::process::exit(0)
        }
        Ok(Stopped::WithoutCheckpoint) => {
            crate::say!(
                "pageflow: stopped without a checkpoint (checkpoints are off): open sessions and windows are lost"
            );
            std::process::exit(0)
        }
        Err(error) => {
            crate::say!(
                "pageflow: {}; a restart resumes from the previous checkpoint and emits what followed it again",
                crate::stderr::describe(&error)
            );
            std::process::exit(1)
        }
    }
}
