//! Checkpoints in the running job: when they are taken, how a complete one is written, and how the
//! job restores from the newest good one at start.
//!
//! ```text
//!  trigger (every interval) ─► coordinator.request(id) ─► workers pause, drain, save
//!        workers ──SinkMessage::Checkpoint (one part each)──► sink thread
//!        sink thread: all parts in ─► flush the outputs ─► + serving state ─► writer thread
//!        writer thread: parts, then the manifest (the commit) ─► metrics
//! ```
//!
//! The sink flushes before the checkpoint is handed on, so a committed checkpoint never covers a
//! result that was not delivered: after a crash, everything emitted since the checkpoint is
//! emitted again (with the same `feature_id`s), and nothing before it is lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::checkpoint_store::{CheckpointStore, Checkpoints, LocalDirStore, S3Store};
use pageflow_dataflow::checkpoint::{
    CheckpointCoordinator, END_OF_INPUT, PartitionCheckpoint, SavedState, WorkerCheckpoint,
    WorkerSnapshot,
};
use pageflow_dataflow::config::SemanticsConfig;
use pageflow_dataflow::live::LiveUpdate;

use crate::config::{CheckpointStoreKind, JobConfig};
use crate::metrics::Metrics;

/// The part holding the serving layer's state.
const SERVING_PART: &str = "serving.bin";

/// The part name of worker `index`'s state.
fn worker_part(index: usize) -> String {
    format!("worker-{index}.bin")
}

/// What the state depends on besides the code: the semantics. A checkpoint taken with other
/// windows or gaps cannot continue, so the job refuses it.
pub fn fingerprint(semantics: &SemanticsConfig) -> String {
    let text = serde_json::to_string(semantics).unwrap_or_default();
    format!(
        "semantics-{:016x}",
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    )
}

/// Opens the configured store.
pub fn open_store(config: &JobConfig, runtime: &tokio::runtime::Runtime) -> Result<Checkpoints> {
    let settings = &config.checkpoint;
    let store: Arc<dyn CheckpointStore> = match settings.store {
        CheckpointStoreKind::Local => {
            let dir = settings.local_dir(&config.sinks);
            Arc::new(
                LocalDirStore::new(&dir)
                    .with_context(|| format!("cannot use {} for checkpoints", dir.display()))?,
            )
        }
        CheckpointStoreKind::S3 => {
            let sdk = runtime.block_on(config.aws.load());
            let client = aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    .force_path_style(config.aws.endpoint_url.is_some())
                    .build(),
            );
            Arc::new(S3Store::new(
                client,
                &settings.bucket,
                &settings.prefix,
                runtime.handle().clone(),
            ))
        }
    };
    Ok(Checkpoints::new(store, settings.keep))
}

/// A checkpoint loaded at start.
#[derive(Debug)]
pub struct Restored {
    /// Its id.
    pub id: u64,
    /// The operator state of every worker that saved it.
    pub state: SavedState,
    /// Where every source partition stood.
    pub partitions: Vec<PartitionCheckpoint>,
    /// The serving layer's state.
    pub serving: Vec<LiveUpdate>,
}

impl Restored {
    /// The saved position of a partition, if it was read at all.
    pub fn partition(&self, name: &str) -> Option<&PartitionCheckpoint> {
        self.partitions.iter().find(|p| p.partition == name)
    }
}

/// The job cannot start from its checkpoints without a person deciding (an unknown format, other
/// semantics, every checkpoint damaged): restarting it again will not help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnusableCheckpoint(pub String);

/// Loads the newest good checkpoint, if any; refuses one taken with other semantics.
pub fn restore(checkpoints: &Checkpoints, semantics: &SemanticsConfig) -> Result<Option<Restored>> {
    let loaded = match checkpoints.load_latest() {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return Ok(None),
        Err(error) if error.is_retryable() => return Err(error.into()),
        Err(error) => return Err(UnusableCheckpoint(error.to_string()).into()),
    };
    let manifest = &loaded.manifest;
    let expected = fingerprint(semantics);
    if manifest.fingerprint != expected {
        return Err(UnusableCheckpoint(format!(
            "checkpoint {} in {} was taken with different [semantics] settings ({} here, {} in the checkpoint): its windows and sessions cannot continue under the new ones. Restore the settings it was taken with, or move the checkpoints away to start from the sources' start positions",
            manifest.id,
            checkpoints.location(),
            expected,
            manifest.fingerprint
        ))
        .into());
    }
    let mut workers = Vec::new();
    for index in 0..manifest.workers {
        let name = worker_part(index);
        let bytes = loaded.parts.get(&name).ok_or_else(|| {
            anyhow!(
                "checkpoint {} has no part {name} although its manifest lists {} workers",
                manifest.id,
                manifest.workers
            )
        })?;
        workers.push(WorkerSnapshot::decode(bytes)?);
    }
    let state = SavedState::new(workers)?;
    let serving = match loaded.parts.get(SERVING_PART) {
        Some(bytes) => bincode::deserialize(bytes).map_err(|error| {
            anyhow!(
                "checkpoint {}: cannot read the serving state: {error}",
                manifest.id
            )
        })?,
        None => Vec::new(),
    };
    Ok(Some(Restored {
        id: manifest.id,
        partitions: state.partitions()?,
        state,
        serving,
    }))
}

/// Collects the workers' parts of each checkpoint in the sink thread.
#[derive(Debug)]
pub struct PartsInbox {
    workers: usize,
    pending: BTreeMap<u64, Vec<WorkerCheckpoint>>,
}

/// Every worker's part of one checkpoint.
#[derive(Debug)]
pub struct CompleteParts {
    /// The checkpoint's id.
    pub id: u64,
    /// Every worker's saved state, or the first failure.
    pub snapshots: Result<Vec<WorkerSnapshot>, String>,
    /// The longest any worker stood still.
    pub paused_for: Duration,
    /// The longest any worker took to save its state (part of `paused_for`).
    pub saved_in: Duration,
    /// The checkpoint before a graceful stop.
    pub is_final: bool,
}

impl PartsInbox {
    /// An inbox for `workers` workers.
    pub fn new(workers: usize) -> Self {
        PartsInbox {
            workers,
            pending: BTreeMap::new(),
        }
    }

    /// Takes one part; returns the checkpoint once every worker's part is in. Parts of older,
    /// incomplete checkpoints (a worker that ended meanwhile) are dropped.
    pub fn add(&mut self, part: WorkerCheckpoint) -> Option<CompleteParts> {
        let id = part.id;
        self.pending.retain(|pending, _| *pending >= id);
        let parts = self.pending.entry(id).or_default();
        parts.push(part);
        if parts.len() < self.workers {
            return None;
        }
        let parts = self.pending.remove(&id).unwrap_or_default();
        let paused_for = parts.iter().map(|p| p.paused_for).max().unwrap_or_default();
        let saved_in = parts.iter().map(|p| p.saved_in).max().unwrap_or_default();
        let is_final = parts.iter().any(|p| p.is_final);
        let snapshots = parts
            .into_iter()
            .map(|p| p.snapshot.map_err(|error| error.to_string()))
            .collect();
        Some(CompleteParts {
            id,
            snapshots,
            paused_for,
            saved_in,
            is_final,
        })
    }
}

/// A complete checkpoint on its way to the store.
#[derive(Debug)]
pub struct ToWrite {
    /// The workers' parts.
    pub parts: CompleteParts,
    /// The serving layer's state at the checkpoint.
    pub serving: Vec<LiveUpdate>,
}

/// What became of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed.
    Committed(u64),
    /// Not written, and why.
    Failed(u64, String),
}

/// Takes checkpoints on a timer, writes complete ones, and reports outcomes. Clones share
/// everything (the timer thread holds one).
#[derive(Clone, Debug)]
pub struct CheckpointDriver {
    coordinator: Arc<CheckpointCoordinator>,
    writes: Sender<ToWrite>,
    next_id: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

/// What the driver, its timer and its writer share about checkpoints under way.
#[derive(Debug, Default)]
struct Progress {
    /// The latest outcomes, and a signal when one is added.
    outcomes: Mutex<Vec<Outcome>>,
    changed: Condvar,
    /// A checkpoint was requested and is not yet committed or failed.
    busy: AtomicBool,
    /// The last request, for the duration metric.
    requested_at: Mutex<Option<(u64, Instant)>>,
    /// Checkpoints handed to the writer and not yet committed or failed.
    queued: AtomicU64,
}

impl Progress {
    fn report(&self, outcome: Outcome) {
        let mut list = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        list.push(outcome);
        if list.len() > 64 {
            list.remove(0);
        }
        self.busy.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Waits until `done` holds over the outcomes, `give_up` says to stop, or `deadline` passes;
    /// returns whether `done` held.
    fn wait_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&[Outcome]) -> bool,
        mut give_up: impl FnMut() -> bool,
    ) -> bool {
        let mut guard = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if done(&guard) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || give_up() {
                return false;
            }
            guard = self
                .changed
                .wait_timeout(guard, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl CheckpointDriver {
    /// Starts the writer and the timer; ids continue after `first_id - 1`.
    pub fn start(
        coordinator: Arc<CheckpointCoordinator>,
        checkpoints: Checkpoints,
        first_id: u64,
        interval: Duration,
        fingerprint: String,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let (writes, to_write) = channel::<ToWrite>();
        let driver = CheckpointDriver {
            coordinator,
            writes,
            next_id: Arc::new(AtomicU64::new(first_id)),
            stop: Arc::new(AtomicBool::new(false)),
            progress: Arc::default(),
        };
        {
            let progress = Arc::clone(&driver.progress);
            std::thread::Builder::new()
                .name("pageflow-checkpoint-writer".into())
                .spawn(move || {
                    write_loop(to_write, &checkpoints, &fingerprint, &metrics, &progress)
                })
                .context("cannot start the checkpoint writer")?;
        }
        {
            let timer = driver.clone();
            std::thread::Builder::new()
                .name("pageflow-checkpoint-timer".into())
                .spawn(move || {
                    let mut next = Instant::now() + interval;
                    while !timer.stop.load(Ordering::SeqCst) {
                        let now = Instant::now();
                        if now < next {
                            std::thread::sleep((next - now).min(Duration::from_millis(50)));
                            continue;
                        }
                        next = now + interval;
                        if timer.request(false).is_none() {
                            tracing::debug!("the previous checkpoint is still in progress");
                        }
                    }
                })
                .context("cannot start the checkpoint timer")?;
        }
        Ok(driver)
    }

    /// Asks for the next checkpoint unless one is in progress; returns its id.
    pub fn request(&self, is_final: bool) -> Option<u64> {
        if self
            .progress
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut at) = self.progress.requested_at.lock() {
            *at = Some((id, Instant::now()));
        }
        if self.coordinator.request(id, is_final) {
            Some(id)
        } else {
            self.progress.busy.store(false, Ordering::SeqCst);
            None
        }
    }

    /// Hands a complete checkpoint to the writer (the end-of-input one gets the next id).
    pub fn write(&self, mut checkpoint: ToWrite) {
        if checkpoint.parts.id == END_OF_INPUT {
            checkpoint.parts.id = self.next_id.fetch_add(1, Ordering::SeqCst);
        }
        let id = checkpoint.parts.id;
        self.progress.queued.fetch_add(1, Ordering::SeqCst);
        if self.writes.send(checkpoint).is_err() {
            self.progress.queued.fetch_sub(1, Ordering::SeqCst);
            self.progress.report(Outcome::Failed(
                id,
                "the checkpoint writer has stopped".into(),
            ));
        }
    }

    /// Waits until checkpoint `id` is committed or failed, at most `timeout`; `None` on timeout
    /// or when the dataflow ended first.
    pub fn wait_for(&self, id: u64, timeout: Duration) -> Option<Outcome> {
        let mut found = None;
        self.progress.wait_until(
            Instant::now() + timeout,
            |outcomes| {
                found = outcomes
                    .iter()
                    .find(|o| match o {
                        Outcome::Committed(done) | Outcome::Failed(done, _) => *done == id,
                    })
                    .cloned();
                found.is_some()
            },
            || self.coordinator.has_ended(),
        );
        found
    }

    /// Takes the final checkpoint of a graceful stop: stops reading at once, waits for a
    /// checkpoint in progress, then asks for a final one and waits for it to be committed, all
    /// within `budget`. `Ok(None)` when the input ended meanwhile (every result is written then).
    pub fn checkpoint_and_stop(&self, budget: Duration) -> Result<Option<u64>> {
        let deadline = Instant::now() + budget;
        self.stop.store(true, Ordering::SeqCst);
        self.coordinator.pause_sources();
        loop {
            if self.coordinator.has_ended() {
                return Ok(None);
            }
            if let Some(id) = self.request(true) {
                let left = deadline.saturating_duration_since(Instant::now());
                return match self.wait_for(id, left) {
                    Some(Outcome::Committed(id)) => Ok(Some(id)),
                    Some(Outcome::Failed(id, why)) => {
                        Err(anyhow!("the final checkpoint {id} failed: {why}"))
                    }
                    None if self.coordinator.has_ended() => Ok(None),
                    None => Err(anyhow!(
                        "the final checkpoint {id} did not complete within the stop budget of {budget:?}; raise [checkpoint] stop_timeout (and ECS stopTimeout)"
                    )),
                };
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "a checkpoint was still in progress when the stop budget of {budget:?} ran out"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops taking checkpoints on the timer.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits, at most `timeout`, until every checkpoint handed to the writer is committed or
    /// failed, so that the process does not exit in the middle of a write. Returns whether it
    /// finished.
    pub fn finish(&self, timeout: Duration) -> bool {
        self.stop();
        self.progress.wait_until(
            Instant::now() + timeout,
            |_| self.progress.queued.load(Ordering::SeqCst) == 0,
            || false,
        )
    }
}

fn write_loop(
    to_write: Receiver<ToWrite>,
    checkpoints: &Checkpoints,
    fingerprint: &str,
    metrics: &Metrics,
    progress: &Progress,
) {
    while let Ok(ToWrite { parts, serving }) = to_write.recv() {
        let id = parts.id;
        let result = write_one(checkpoints, fingerprint, parts, serving);
        match result {
            Ok((size, state_bytes, paused_for, saved_in)) => {
                let duration = progress
                    .requested_at
                    .lock()
                    .ok()
                    .and_then(|at| *at)
                    .filter(|(requested, _)| *requested == id)
                    .map(|(_, at)| at.elapsed())
                    .unwrap_or_default();
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                metrics.checkpoint_completed(|figures| {
                    figures.last_id = Some(id);
                    figures.last_success_ms = Some(now_ms);
                    figures.last_duration_s = duration.as_secs_f64();
                    figures.last_pause_s = paused_for.as_secs_f64();
                    figures.last_save_s = saved_in.as_secs_f64();
                    figures.last_size_bytes = size;
                    figures.state_bytes = state_bytes;
                });
                tracing::info!(
                    checkpoint = id,
                    bytes = size,
                    duration_ms = duration.as_millis() as u64,
                    paused_ms = paused_for.as_millis() as u64,
                    location = checkpoints.location(),
                    "checkpoint committed"
                );
                progress.queued.fetch_sub(1, Ordering::SeqCst);
                progress.report(Outcome::Committed(id));
            }
            Err(error) => {
                metrics.checkpoint_failed();
                tracing::error!(
                    checkpoint = id,
                    "checkpoint not written: {error:#}; the job goes on and tries again at the next interval"
                );
                progress.queued.fetch_sub(1, Ordering::SeqCst);
                progress.report(Outcome::Failed(id, format!("{error:#}")));
            }
        }
    }
}

type Written = (u64, BTreeMap<String, u64>, Duration, Duration);

fn write_one(
    checkpoints: &Checkpoints,
    fingerprint: &str,
    parts: CompleteParts,
    serving: Vec<LiveUpdate>,
) -> Result<Written> {
    let state = SavedState::new(parts.snapshots.map_err(|why| anyhow!(why))?)?;
    let mut state_bytes: BTreeMap<String, u64> = BTreeMap::new();
    let mut files = Vec::new();
    for snapshot in state.snapshots() {
        for (operator, bytes) in snapshot.sizes() {
            *state_bytes.entry(operator).or_default() += bytes;
        }
        files.push((worker_part(snapshot.worker), snapshot.encode()?));
    }
    files.push((
        SERVING_PART.to_string(),
        bincode::serialize(&serving)
            .map_err(|e| anyhow!("cannot encode the serving state: {e}"))?,
    ));
    let size = files.iter().map(|(_, bytes)| bytes.len() as u64).sum();
    let partitions = state.partitions()?;
    let mut info = BTreeMap::new();
    info.insert("watermark".to_string(), format!("{:?}", state.watermark()?));
    info.insert("partitions".to_string(), partitions.len().to_string());
    info.insert(
        "finished_partitions".to_string(),
        partitions.iter().filter(|p| p.finished).count().to_string(),
    );
    info.insert("final".to_string(), parts.is_final.to_string());
    checkpoints.write(parts.id, state.workers(), fingerprint, info, files)?;
    Ok((size, state_bytes, parts.paused_for, parts.saved_in))
}
