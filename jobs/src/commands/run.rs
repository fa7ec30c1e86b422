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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::dir_lock::{DirLock, this_process};
use pageflow_connectors::firehose_sink::FirehoseArchive;
use pageflow_connectors::kinesis_consumer::{
    ConsumerSettings, KinesisConsumer, SavedShards, StreamSpec,
};
use pageflow_connectors::kinesis_sink::KinesisStream;
use pageflow_connectors::kinesis_source::{ReaderSettings, StartPosition};
use pageflow_connectors::personalize::EventForwarder;
use pageflow_connectors::synthetic::{ManualClock, SystemClock, WallClock};
use pageflow_connectors::{JsonLinesFile, SyntheticConfig, SyntheticSource};
use pageflow_dataflow::algorithms::graph::{GraphOptions, build};
use pageflow_dataflow::checkpoint::coordinator::SIZE_REPORT_INTERVAL;
use pageflow_dataflow::checkpoint::{
    ChangeWriter, CheckpointCoordinator, OperatorStates, WorkerCheckpoint, WorkerRestore,
};
use pageflow_dataflow::event::{CompactEvent, DeadLetter, Reason};
use pageflow_dataflow::features::Feature;
use pageflow_dataflow::live::LiveUpdate;
use pageflow_dataflow::operators::ingest::RawValid;
use pageflow_dataflow::source::{RecordSource, WorkerSources};
use pageflow_dataflow::stats::{JobStats, StatsSnapshot};
use pageflow_dataflow::time::{Opinion, WatermarkBoard};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoints::{ChainStart, CheckpointDriver, PartsInbox, Restored, ToWrite};
use crate::config::{
    CheckpointStoreKind, JobConfig, ReadMode, SinksKind, SourceKind, StartPositionName,
};
use crate::outputs::{AwsOutputs, JobOutputs, LocalOutputs};
use pageflow_metrics::Metrics;
use pageflow_serve::auth::ServeSecurity;
use pageflow_serve::personalize::{
    PersonalizeRecommendations, Trackers, personalize_event, trackers,
};
use pageflow_serve::state::SERVING_STATE;
use pageflow_serve::{App, ServingState, app_router, serve};

/// What the workers hand to the sink thread.
#[derive(Debug)]
pub enum SinkMessage {
    /// Final features.
    Features(Vec<Feature>),
    /// Records that were not counted.
    DeadLetters(Vec<DeadLetter>),
    /// Valid records as received.
    Raw(Vec<RawValid>),
    /// Rankings and related lists for the live view.
    Live(Vec<LiveUpdate>),
    /// The counted events: readers' recent articles, and the Personalize event trackers.
    Accepted(Vec<CompactEvent>),
    /// One worker's part of a checkpoint: everything sent before it belongs to the checkpoint.
    Checkpoint(WorkerCheckpoint),
}

/// Batches buffered between the workers and the sink before the workers wait.
const SINK_CHANNEL_BATCHES: usize = 256;

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
        Ok(())
    }
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

/// Builds every worker's sources from the configuration; for Kinesis, also starts the consumer.
fn worker_sources(
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
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
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
                let clock: Box<dyn WallClock> = match &hooks.synthetic_clock {
                    Some(clock) => Box::new(clock.clone()),
                    None => Box::new(SystemClock),
                };
                let mut source = SyntheticSource::with_clock(synthetic, index as u32, clock)
                    .with_context(|| format!("synthetic partition {index}"))?;
                if let Some(delivered) = resume_after(&format!("synthetic:{index}"))? {
                    source = source.resume_after(delivered);
                }
                by_worker[index % workers].push(Box::new(source));
            }
        }
        SourceKind::Files => {
            for (index, path) in config.source.paths.iter().enumerate() {
                let mut file = JsonLinesFile::open(path)
                    .with_context(|| format!("cannot open input {}", path.display()))?;
                let name = file.name().to_string();
                if saved(&name).is_some_and(|p| p.finished) {
                    continue; // read to its end before the checkpoint
                }
                if let Some(line) = resume_after(&name)? {
                    file = file.resume_after(line)?;
                }
                by_worker[index % workers].push(Box::new(file));
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

/// The sink thread's outputs, from the configuration.
fn job_outputs(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    metrics: &Arc<Metrics>,
) -> Result<Box<dyn JobOutputs>> {
    let sinks = &config.sinks;
    match sinks.kind {
        SinksKind::Local => Ok(Box::new(LocalOutputs::open(&sinks.dir, sinks.archive)?)),
        SinksKind::Aws => {
            std::fs::create_dir_all(&sinks.dir).with_context(|| {
                format!("cannot create the data directory {}", sinks.dir.display())
            })?;
            let sdk = runtime.block_on(config.aws.load());
            let features =
                KinesisStream::with_client(config.aws.kinesis_client(&sdk), &sinks.kinesis.stream);
            let archive = sinks.archive.then(|| {
                FirehoseArchive::with_client(
                    &aws_sdk_firehose::Client::new(&sdk),
                    &sinks.firehose.raw,
                    &sinks.firehose.processed,
                    &sinks.firehose.dead_letter,
                )
            });
            Ok(Box::new(AwsOutputs::new(
                runtime.handle().clone(),
                features,
                archive,
                sinks.max_batch_delay.into(),
                &sinks.dir,
                Arc::clone(metrics),
            )))
        }
    }
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

/// [`start`], with [`RunHooks`].
pub fn start_with(config: JobConfig, hooks: RunHooks) -> Result<RunningJob> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(anyhow!(
            "invalid configuration:\n  {}",
            problems.join("\n  ")
        ));
    }
    let directory_locks = lock_directories(&config)?;
    let metrics = Arc::new(Metrics::new());
    let serving = Arc::new(ServingState::with_read_limits(
        config.recommendations.read_limits(),
    ));
    let stats = Arc::new(JobStats::default());
    let stop = Arc::new(AtomicBool::new(false));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("pageflow-io")
        .build()
        .context("cannot start the I/O runtime")?;
    // The events/s gauge stays fresh between scrapes (the dashboard reads it every 2 s).
    {
        let _guard = runtime.enter();
        drop(Arc::clone(&metrics).spawn_rate_sampler(Duration::from_secs(1)));
    }
    let (personalize, personalize_feed) = start_personalize(&config, &runtime, &metrics)?;
    let http_addr = if config.serve.enabled {
        let listen = config.serve.listen.clone();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&listen))
            .with_context(|| {
                format!(
                    "cannot listen on {listen}: is another process using it? Set [serve] listen"
                )
            })?;
        let addr = listener.local_addr()?;
        // API keys, Cognito tokens (the user pool's keys are fetched here), rate limits, CORS.
        let security = runtime
            .block_on(ServeSecurity::start(
                &config.serve.auth,
                &config.serve.rate_limit,
                &config.serve.cors,
            ))
            .map_err(|problem| anyhow!("cannot set up the HTTP API's security: {problem}"))?;
        let mut app = App::new(Arc::clone(&serving), Arc::clone(&metrics))
            .with_security(security)
            .with_blend_shares(config.recommendations.shares());
        if let Some(personalize) = &personalize {
            app = app.with_personalize(Arc::clone(personalize));
        }
        let app = app_router(app);
        let stop_http = Arc::clone(&stop);
        let serving_http = Arc::clone(&serving);
        runtime.spawn(async move {
            let shutdown = async move {
                while !stop_http.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Change streams end, so the graceful shutdown does not wait for them forever.
                serving_http.close();
            };
            if let Err(error) = serve(listener, app, shutdown).await {
                tracing::error!("the HTTP server stopped: {error}");
            }
        });
        Some(addr)
    } else {
        None
    };

    let workers = config.runtime.workers;
    let coordinator = CheckpointCoordinator::new(workers);
    let checkpointing = config.checkpoint.enabled;
    if checkpointing {
        serving.recent_reads().track_changes();
    }
    let (mut restored, driver, run_id) = if checkpointing {
        let store = crate::checkpoints::open_store(&config, &runtime)?;
        let restored = crate::checkpoints::restore(&store, &config.semantics, workers)?;
        let first_id = store.next_id()?;
        if let Some(restored) = &restored {
            for update in &restored.serving {
                serving.apply(update.clone());
            }
            serving.mark_saved();
            tracing::info!(
                checkpoint = restored.id,
                location = store.location(),
                partitions = restored.partitions.len(),
                entries = restored.restore.entries,
                bytes = restored.restore.bytes,
                load_ms = restored.loaded_in.as_millis() as u64,
                "restored from checkpoint {}; every source resumes after its saved position",
                restored.id
            );
        }
        let chain = ChainStart {
            parent: restored.as_ref().map(|r| r.manifest.clone()),
            sources: restored
                .as_ref()
                .map(|r| r.restore.sources.clone())
                .unwrap_or_default(),
            workers,
            first_id,
            fingerprint: crate::checkpoints::fingerprint(&config.semantics),
        };
        let driver = CheckpointDriver::start(
            Arc::clone(&coordinator),
            store,
            chain,
            config.checkpoint.interval.into(),
            Arc::clone(&metrics),
        )?;
        (restored, Some(Arc::new(driver)), first_id)
    } else {
        (None, None, 0)
    };
    let restores: Vec<WorkerRestore> = match restored.as_mut() {
        Some(restored) => std::mem::take(&mut restored.restore.workers),
        None => (0..workers).map(|_| WorkerRestore::default()).collect(),
    };

    let (sender, receiver) = sync_channel::<SinkMessage>(SINK_CHANNEL_BATCHES);
    let outputs = job_outputs(&config, &runtime, &metrics)?;
    let sink = {
        let (serving, metrics, stats, stop, driver, feed) = (
            Arc::clone(&serving),
            Arc::clone(&metrics),
            Arc::clone(&stats),
            Arc::clone(&stop),
            driver.clone(),
            personalize_feed.clone(),
        );
        std::thread::Builder::new()
            .name("pageflow-sink".into())
            .spawn(move || {
                let checkpoints = driver.map(|driver| (driver, PartsInbox::new(workers), run_id));
                sink_loop(
                    receiver,
                    outputs,
                    &serving,
                    &metrics,
                    &stats,
                    &stop,
                    checkpoints,
                    feed.as_ref(),
                )
            })
            .context("cannot start the sink thread")?
    };

    let (sources, kinesis) = worker_sources(&config, &runtime, restored.as_ref(), &hooks)?;
    if let Some(consumer) = &kinesis {
        metrics.watch_kinesis(Arc::clone(&consumer.status));
    }
    let opinions = sources.iter().map(WorkerSources::initial_opinion).collect();
    let board = Arc::new(WatermarkBoard::with_opinions(opinions));
    if let Some(restored) = &restored {
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
    let slots = Arc::new(std::sync::Mutex::new(
        sources
            .into_iter()
            .zip(restores)
            .map(Some)
            .collect::<Vec<_>>(),
    ));
    let semantics = config.semantics.clone();
    let options = GraphOptions {
        keep_raw: config.sinks.archive,
        live_interval: Some(config.serve.live_interval.into()),
        watermark_alignment: (config.runtime.watermark_alignment.ms() > 0)
            .then_some(config.runtime.watermark_alignment.ms()),
        // The partition holds the watermark and the job stops (`run` below).
        end_on_source_failure: false,
    };
    let worker_stats = Arc::clone(&stats);
    let worker_coordinator = Arc::clone(&coordinator);
    let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let serving_for_workers = Arc::clone(&serving);
    std::thread::Builder::new()
        .name("pageflow-timely".into())
        .spawn(move || {
            let result = timely::execute(timely::Config::process(workers), move |worker| {
                let index = worker.index();
                let (sources, restore) = slots
                    .lock()
                    .ok()
                    .and_then(|mut s| s.get_mut(index).and_then(Option::take))
                    .unwrap_or_default();
                let (board, stats, sender) = (
                    Arc::clone(&board),
                    Arc::clone(&worker_stats),
                    sender.clone(),
                );
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
                worker.dataflow::<u64, _, _>(|scope| {
                    let outputs =
                        build(scope, sources, board, &semantics, &options, stats, &states);
                    forward(outputs.features, sender.clone(), SinkMessage::Features);
                    forward(
                        outputs.dead_letters,
                        sender.clone(),
                        SinkMessage::DeadLetters,
                    );
                    forward(outputs.raw, sender.clone(), SinkMessage::Raw);
                    forward(outputs.live, sender.clone(), SinkMessage::Live);
                    forward(outputs.accepted, sender.clone(), SinkMessage::Accepted);
                });
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
                if checkpointing {
                    coordinator.run(worker, &states, &sizes.state_sizes, |part| {
                        // A closed channel means the job is stopping: the part is dropped with it.
                        let _ = sender.send(SinkMessage::Checkpoint(part));
                    });
                } else {
                    run_without_checkpoints(worker, &states, &sizes.state_sizes);
                }
            });
            match result {
                Ok(guards) => drop(guards.join()),
                Err(error) => tracing::error!("the timely workers failed to start: {error}"),
            }
        })
        .context("cannot start the dataflow")?;

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
    })
}

/// Locks the directories this job writes to (the sinks' and, when local and elsewhere, the
/// checkpoints'), so that a second job on them refuses to start instead of writing the same files.
fn lock_directories(config: &JobConfig) -> Result<Vec<DirLock>> {
    let holder = this_process("pageflow run");
    let mut dirs = vec![config.sinks.dir.clone()];
    if config.checkpoint.enabled && config.checkpoint.store == CheckpointStoreKind::Local {
        let checkpoints = config.checkpoint.local_dir(&config.sinks);
        if !checkpoints.starts_with(&config.sinks.dir) {
            dirs.push(checkpoints);
        }
    }
    dirs.iter()
        .map(|dir| DirLock::acquire(dir, &holder).map_err(anyhow::Error::from))
        .collect()
}

/// Stops the process when a worker cannot go on: a restore that failed half-way must not run on
/// partial state. Exit code 78 (EX_CONFIG): the data or the settings need a person.
fn fatal(message: &str) -> ! {
    tracing::error!("{message}");
    crate::say!("pageflow: {message}");
    std::process::exit(78)
}

/// Forwarding counted pageviews to Personalize event trackers.
#[derive(Clone, Debug)]
struct PersonalizeFeed {
    forwarder: Arc<EventForwarder>,
    trackers: Trackers,
}

/// Personalize for recommendations and the event forwarder, for the portals that configure them.
fn start_personalize(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    metrics: &Metrics,
) -> Result<(
    Option<Arc<PersonalizeRecommendations>>,
    Option<PersonalizeFeed>,
)> {
    let personalize = &config.personalize;
    if !personalize.recommends() && !personalize.forwards_events() {
        return Ok((None, None));
    }
    let sdk = runtime.block_on(config.aws.load());
    let recommendations = personalize.recommends().then(|| {
        Arc::new(PersonalizeRecommendations::new(
            &config.aws.personalize_runtime_client(&sdk),
            personalize,
        ))
    });
    let feed = if personalize.forwards_events() {
        let forwarder = EventForwarder::start(
            &config.aws.personalize_events_client(&sdk),
            personalize.forwarder(),
            runtime.handle(),
        )
        .context("cannot start forwarding events to Personalize; check [personalize.events]")?;
        let forwarder = Arc::new(forwarder);
        metrics.watch_personalize_events(Arc::clone(&forwarder));
        Some(PersonalizeFeed {
            forwarder,
            trackers: trackers(personalize),
        })
    } else {
        None
    };
    Ok((recommendations, feed))
}

/// Steps a worker until its dataflow completes, reporting its state's sizes every few seconds
/// (the job without checkpoints; with them, the coordinator does this).
fn run_without_checkpoints(
    worker: &mut timely::worker::Worker,
    states: &OperatorStates,
    sizes: &pageflow_dataflow::stats::StateSizes,
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

/// Sends every batch of a stream to the sink thread (blocking when it is full: backpressure).
fn forward<'scope, D: Clone + 'static>(
    stream: timely::dataflow::StreamVec<'scope, u64, D>,
    sender: SyncSender<SinkMessage>,
    wrap: fn(Vec<D>) -> SinkMessage,
) {
    stream.sink(Pipeline, "ForwardToSink", move |(input, _frontier)| {
        input.for_each(|_cap, data| {
            // A closed channel means the job is stopping: the records are dropped with it.
            let _ = sender.send(wrap(std::mem::take(data)));
        });
    });
}

#[allow(
    clippy::too_many_arguments,
    reason = "the sink thread's whole context, passed once at its start"
)]
fn sink_loop(
    receiver: Receiver<SinkMessage>,
    mut outputs: Box<dyn JobOutputs>,
    serving: &ServingState,
    metrics: &Metrics,
    stats: &JobStats,
    stop: &AtomicBool,
    mut checkpoints: Option<(Arc<CheckpointDriver>, PartsInbox, u64)>,
    personalize: Option<&PersonalizeFeed>,
) -> Result<()> {
    let mut mirrored = StatsSnapshot::default();
    let mut last_mirror = Instant::now();
    // After the final checkpoint of a graceful stop, whatever the dataflow still emits is after
    // the checkpoint: a restart emits it again, so it is not written now (no duplicates).
    let mut after_final = false;
    while !stop.load(Ordering::SeqCst) {
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(SinkMessage::Checkpoint(part)) => {
                let Some((driver, inbox, run)) = checkpoints.as_mut() else {
                    continue;
                };
                if let Some(parts) = inbox.add(part) {
                    // Everything before the checkpoint is delivered before it may be committed.
                    outputs.flush()?;
                    after_final |= parts.is_final;
                    let mut changes = Vec::new();
                    let mut writer = ChangeWriter::new(SERVING_STATE, 0, *run, &mut changes);
                    if let Err(error) = serving.save_changes(&mut writer) {
                        tracing::error!("cannot save the serving state: {error}");
                    }
                    driver.write(ToWrite {
                        parts,
                        serving: changes,
                        watermark_ms: stats.watermark_ms.load(Ordering::Relaxed),
                    });
                }
            }
            Ok(_) if after_final => {}
            Ok(SinkMessage::Features(features)) => {
                for feature in &features {
                    metrics.record_feature(feature);
                }
                outputs.features(&features)?;
            }
            Ok(SinkMessage::DeadLetters(letters)) => outputs.dead_letters(&letters)?,
            Ok(SinkMessage::Raw(records)) => outputs.raw(&records)?,
            Ok(SinkMessage::Live(updates)) => {
                for update in updates {
                    let watermark = pageflow_metrics::ranking_watermark(&update);
                    serving.apply(update);
                    metrics.record_ranking_visible(watermark);
                }
            }
            Ok(SinkMessage::Accepted(events)) => {
                let reads = serving.recent_reads();
                for event in &events {
                    reads.record_article(event.article, &event.user_id, event.ts);
                }
                if let Some(feed) = personalize {
                    // Never waits: a full queue drops the event and counts it.
                    for sent in events
                        .iter()
                        .filter_map(|e| personalize_event(&feed.trackers, e))
                    {
                        feed.forwarder.offer(sent);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Every worker has finished: the input has ended.
            Err(RecvTimeoutError::Disconnected) => break,
        }
        outputs.tick()?;
        if last_mirror.elapsed() >= Duration::from_millis(500) {
            mirror_stats(stats, &mut mirrored, metrics, serving);
            last_mirror = Instant::now();
        }
    }
    outputs.flush()?;
    mirror_stats(stats, &mut mirrored, metrics, serving);
    Ok(())
}

/// Adds what the dataflow counted since the last call to the metrics.
fn mirror_stats(
    stats: &JobStats,
    previous: &mut StatsSnapshot,
    metrics: &Metrics,
    serving: &ServingState,
) {
    let now = stats.snapshot();
    metrics.add_events_in(now.records - previous.records);
    metrics.add_events_accepted(now.accepted - previous.accepted);
    metrics.add_duplicates(now.duplicates - previous.duplicates);
    metrics.add_blank_lines(now.blank_lines - previous.blank_lines);
    for reason in Reason::ALL {
        let count = |s: &StatsSnapshot| {
            if reason == Reason::Late {
                s.late
            } else {
                s.invalid.get(reason.code()).copied().unwrap_or(0)
            }
        };
        metrics.add_dead_letters(reason, count(&now) - count(previous));
    }
    let watermark = stats.watermark_ms.load(Ordering::Relaxed);
    if watermark > 0 {
        metrics.set_watermark(watermark);
    }
    metrics.set_live_keys(stats.open_sessions.load(Ordering::Relaxed));
    let mut sizes: std::collections::BTreeMap<String, (u64, u64)> = stats
        .state_sizes
        .totals()
        .into_iter()
        .map(|(operator, size)| (operator, (size.bytes, size.entries)))
        .collect();
    sizes.insert("serving_reads".to_string(), serving.recent_reads().size());
    metrics.set_state_sizes(sizes);
    *previous = now;
}

/// The exit code when a source cannot be read and no retry would help (EX_UNAVAILABLE): a
/// supervisor restarting the job at once would meet the same failure.
pub const SOURCE_FAILED_EXIT_CODE: i32 = 69;

/// `pageflow run`: starts the job and runs until SIGINT or SIGTERM.
pub fn run(config: JobConfig) -> Result<()> {
    let budget: Duration = config.checkpoint.stop_timeout.into();
    let job = start(config)?;
    if let Some(addr) = job.http_addr {
        tracing::info!("serving rankings on http://{addr}/ (metrics at /metrics)");
        crate::say!("pageflow is running: open http://{addr}/ ; stop with Ctrl-C");
    }
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signalled = signals.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let ended = async {
            while !job.has_ended() && job.source_failure().is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let signalled = tokio::select! {
            _ = tokio::signal::ctrl_c() => true,
            _ = terminate.recv() => true,
            _ = ended => false,
        };
        Ok::<_, std::io::Error>(signalled)
    })?;
    if let Some(failure) = job.source_failure() {
        // No final checkpoint (the last one is consistent, and stopping soon matters more): the
        // sinks deliver what was emitted, the dataflow ends with the process.
        crate::say!(
            "pageflow: {failure}; the job stops without a final checkpoint. Fix the source (or \
             remove it from the configuration), then start again: it resumes from the last \
             checkpoint and emits what followed it again, with the same feature ids"
        );
        job.shutdown()?;
        std::process::exit(SOURCE_FAILED_EXIT_CODE)
    }
    if !signalled {
        crate::say!("pageflow: the input has ended; every result is written");
        job.shutdown()?;
        std::process::exit(0)
    }
    crate::say!("pageflow: stopping: reading stopped, taking the final checkpoint");
    let stopped = job.checkpoint_and_stop(budget);
    job.shutdown()?;
    match stopped {
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
                "pageflow: {error:#}; a restart resumes from the previous checkpoint and emits what followed it again"
            );
            std::process::exit(1)
        }
    }
}
