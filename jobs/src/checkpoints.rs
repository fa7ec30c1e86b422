//! Checkpoints in the running job: when they are taken, how a complete one is written, and how the
//! job restores from the newest good one at start.
//!
//! ```text
//!  trigger (every interval) ─► coordinator.request(id) ─► workers pause, drain, save what changed
//!        workers ──SinkMessage::Checkpoint (one part each)──► sink thread
//!        sink thread: all parts in ─► flush the outputs ─► + serving state's changes ─► writer
//!        writer thread: one delta run, then the manifest (the commit) ─► metrics
//!        store: merges the runs into a new base in the background (compaction)
//! ```
//!
//! The sink flushes before the checkpoint is handed on, so a committed checkpoint never covers a
//! result that was not delivered: after a crash, everything emitted since the checkpoint is
//! emitted again (with the same `feature_id`s), and nothing before it is lost.
//!
//! Checkpoints are incremental: each writes what changed since the previous one, on top of it (its
//! *parent*). A change that was handed over but not committed (a store that failed) is carried
//! into the next commit, so the chain never loses a change; a worker whose state could not be
//! encoded (a bug) stops checkpoints altogether rather than commit a chain with a hole in it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::checkpoint_store::{
    CheckpointStore, Checkpoints, LeaseSettings, LocalDirStore, Manifest, S3Lease, S3Store,
    StateEntry,
};
use pageflow_dataflow::checkpoint::changes::{decode, parse_key};
use pageflow_dataflow::checkpoint::snapshot::{INGEST_STATE, IngestKey};
use pageflow_dataflow::checkpoint::{
    Change, CheckpointCoordinator, PartitionCheckpoint, Restore, RestorePlan, RestoredSources,
    StateSize, WorkerCheckpoint, WorkerSnapshot,
};
use pageflow_dataflow::clock::SystemClock;
use pageflow_dataflow::config::SemanticsConfig;
use pageflow_dataflow::live::LiveUpdate;
use pageflow_dataflow::time::Watermark;

use crate::config::{CheckpointStoreKind, JobConfig};
use pageflow_metrics::Metrics;
use pageflow_metrics::checkpoint_history::{
    CheckpointHistory, CheckpointOutcome, CheckpointRecord,
};
use pageflow_serve::state::SERVING_STATE;

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
            let client = s3_client(config, runtime);
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

/// The S3 client of the checkpoint store and the curated lake's uploads (path-style addressing
/// with a custom endpoint).
pub(crate) fn s3_client(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
) -> aws_sdk_s3::Client {
    let sdk = runtime.block_on(config.aws.load());
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.aws.endpoint_url.is_some())
            .build(),
    )
}

/// Takes the lease of the S3 checkpoint prefix for `holder` when checkpoints go to S3 (`None`
/// otherwise; a local checkpoint directory is locked with the other directories): a second job
/// on the same prefix is refused with a message naming the holder. Hold it for as long as the job
/// runs and [`S3Lease::release`] it on a clean shutdown; dropped, it expires after its TTL.
pub fn lock_s3_prefix(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    holder: &str,
) -> Result<Option<S3Lease>> {
    let settings = &config.checkpoint;
    if !settings.enabled || settings.store != CheckpointStoreKind::S3 {
        return Ok(None);
    }
    let lease = S3Lease::acquire(
        s3_client(config, runtime),
        &settings.bucket,
        &settings.prefix,
        holder,
        LeaseSettings::default(),
        Arc::new(SystemClock::new()),
        runtime.handle().clone(),
    )?;
    Ok(Some(lease))
}

/// A checkpoint loaded at start.
#[derive(Debug)]
pub struct Restored {
    /// Its id.
    pub id: u64,
    /// Its manifest: the parent of the next checkpoint.
    pub manifest: Manifest,
    /// Every worker's operator state, and the sources' positions.
    pub restore: Restore,
    /// Where every source partition stood.
    pub partitions: Vec<PartitionCheckpoint>,
    /// The serving layer's state.
    pub serving: Vec<LiveUpdate>,
    /// How long loading, verifying and dealing it out took.
    pub loaded_in: Duration,
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

/// Loads the newest good checkpoint, if any, and deals it out to `workers` workers; refuses one
/// taken with other semantics.
pub fn restore(
    checkpoints: &Checkpoints,
    semantics: &SemanticsConfig,
    workers: usize,
) -> Result<Option<Restored>> {
    restore_share(checkpoints, semantics, workers, 0..workers)
}

/// [`restore`] for a process of a cluster: the job has `all_workers`, this process runs the
/// workers `local`, and keeps their share of the keyed state (and all of the rest).
pub fn restore_share(
    checkpoints: &Checkpoints,
    semantics: &SemanticsConfig,
    all_workers: usize,
    local: std::ops::Range<usize>,
) -> Result<Option<Restored>> {
    let started = Instant::now();
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
    let mut plan = RestorePlan::for_process(all_workers, local);
    let mut serving = Vec::new();
    for entry in loaded.entries() {
        let (key, value) = entry?;
        match parse_key(&key) {
            Some((SERVING_STATE, _, _)) => {
                serving.push(decode::<LiveUpdate>(&value).map_err(|error| {
                    anyhow!(
                        "checkpoint {}: cannot read the serving state: {error}",
                        manifest.id
                    )
                })?)
            }
            _ => plan.add(key, value)?,
        }
    }
    let restore = plan.finish();
    Ok(Some(Restored {
        id: manifest.id,
        manifest: loaded.manifest.clone(),
        partitions: restore.sources.partitions.values().cloned().collect(),
        restore,
        serving,
        loaded_in: started.elapsed(),
    }))
}

/// Collects the workers' parts of each checkpoint in the sink thread.
#[derive(Debug)]
pub struct PartsInbox {
    workers: usize,
    /// Parts of checkpoints not complete yet, in the order they arrived.
    pending: Vec<(u64, Vec<WorkerCheckpoint>)>,
}

/// Every worker's part of one checkpoint.
#[derive(Debug)]
pub struct CompleteParts {
    /// The checkpoint's id.
    pub id: u64,
    /// What changed on every worker (and in earlier parts that never completed), in order, or
    /// the first failure. Their deferred changes are encoded by the writer, each snapshot's
    /// after its direct ones, snapshot by snapshot (a later part's changes win).
    pub changes: Result<Vec<WorkerSnapshot>, String>,
    /// The size of every operator's state, summed over the workers.
    pub sizes: BTreeMap<String, StateSize>,
    /// The longest any worker stood still.
    pub paused_for: Duration,
    /// The longest any worker took to save its state (part of `paused_for`).
    pub saved_in: Duration,
    /// The longest any worker spent finishing records in flight (part of `paused_for`).
    pub drained_work: Duration,
    /// Every worker's part belongs to one consistent cut (see
    /// [`WorkerCheckpoint::consistent`]); when not, the changes go into the next checkpoint.
    pub consistent: bool,
    /// The checkpoint before a graceful stop.
    pub is_final: bool,
}

impl PartsInbox {
    /// An inbox for `workers` workers.
    pub fn new(workers: usize) -> Self {
        PartsInbox {
            workers,
            pending: Vec::new(),
        }
    }

    /// Takes one part; returns the checkpoint once every worker's part is in. Parts of earlier
    /// checkpoints that never completed (the dataflow ended while one was taken) go with it, first:
    /// their changes are not in any checkpoint yet.
    pub fn add(&mut self, part: WorkerCheckpoint) -> Option<CompleteParts> {
        let id = part.id;
        match self.pending.iter_mut().find(|(pending, _)| *pending == id) {
            Some((_, parts)) => parts.push(part),
            None => self.pending.push((id, vec![part])),
        }
        let at = self
            .pending
            .iter()
            .position(|(pending, parts)| *pending == id && parts.len() >= self.workers)?;
        let taken: Vec<(u64, Vec<WorkerCheckpoint>)> = self.pending.drain(..=at).collect();
        let complete = taken
            .last()
            .map(|(_, parts)| parts.as_slice())
            .unwrap_or_default();
        let paused_for = complete
            .iter()
            .map(|p| p.paused_for)
            .max()
            .unwrap_or_default();
        let saved_in = complete
            .iter()
            .map(|p| p.saved_in)
            .max()
            .unwrap_or_default();
        let drained_work = complete
            .iter()
            .map(|p| p.drained_work)
            .max()
            .unwrap_or_default();
        let is_final = complete.iter().any(|p| p.is_final);
        let consistent = complete.iter().all(|p| p.consistent);
        let mut sizes: BTreeMap<String, StateSize> = BTreeMap::new();
        let mut changes = Ok(Vec::new());
        let last = taken.len() - 1;
        for (index, (_, parts)) in taken.into_iter().enumerate() {
            for part in parts {
                match (part.snapshot, &mut changes) {
                    (Ok(mut snapshot), Ok(all)) => {
                        if index == last {
                            for (operator, size) in std::mem::take(&mut snapshot.sizes) {
                                *sizes.entry(operator).or_default() += size;
                            }
                        }
                        all.push(snapshot);
                    }
                    (Err(error), Ok(_)) => changes = Err(error.to_string()),
                    (_, Err(_)) => {}
                }
            }
        }
        Some(CompleteParts {
            id,
            changes,
            sizes,
            paused_for,
            saved_in,
            drained_work,
            consistent,
            is_final,
        })
    }
}

/// A complete checkpoint on its way to the store.
#[derive(Debug)]
pub struct ToWrite {
    /// The workers' parts.
    pub parts: CompleteParts,
    /// What changed in the serving layer's state.
    pub serving: Vec<Change>,
    /// The job watermark when it was taken (ms), for the manifest's facts.
    pub watermark_ms: u64,
}

/// What became of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed.
    Committed(u64),
    /// Not written, and why.
    Failed(u64, String),
}

/// Where the chain of checkpoints a job writes starts.
#[derive(Debug, Default)]
pub struct ChainStart {
    /// The checkpoint restored, which the first checkpoint builds on.
    pub parent: Option<Manifest>,
    /// What the restored checkpoint says of the sources (for the manifests' facts).
    pub sources: RestoredSources,
    /// The job's workers.
    pub workers: usize,
    /// The first checkpoint id to write (ids never repeat in a location).
    pub first_id: u64,
    /// The fingerprint of the settings the state depends on ([`fingerprint`]).
    pub fingerprint: String,
    /// This process's place in a cluster; `None` for one process.
    pub cluster: Option<ClusterPart>,
}

/// How a process of a cluster writes its checkpoints: each process writes its part (the changes
/// of its workers) and a receipt; process 0 commits once every process's receipt is in.
#[derive(Clone, Copy, Debug)]
pub struct ClusterPart {
    /// This process.
    pub process: usize,
    /// How many processes the cluster has.
    pub processes: usize,
    /// How long process 0 waits for the other processes' parts before the checkpoint fails.
    pub timeout: Duration,
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
    /// The store (shared with the writer), for waiting on its background compaction.
    store: Checkpoints,
    /// Whether this process only writes parts (a process of a cluster other than 0).
    writes_parts_only: bool,
    /// For such a process: the newest checkpoint seen committed by process 0, and when the store
    /// was last asked.
    seen_committed: Arc<Mutex<(Option<u64>, Option<Instant>)>>,
}

/// How often a process of a cluster other than 0 asks the store whether process 0 committed.
const COMMIT_LOOKUP_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The id of the final checkpoint handed to the writer, once there is one (plus one; 0:
    /// none yet).
    final_id: AtomicU64,
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
    /// Starts the writer and the timer: checkpoint ids continue from `chain.first_id`, and the
    /// first checkpoint builds on `chain.parent` (the one restored, or none for empty state).
    pub fn start(
        coordinator: Arc<CheckpointCoordinator>,
        checkpoints: Checkpoints,
        chain: ChainStart,
        interval: Duration,
        metrics: Arc<Metrics>,
        history: Arc<CheckpointHistory>,
    ) -> Result<Self> {
        let ChainStart {
            parent,
            sources: known,
            workers,
            first_id,
            fingerprint,
            cluster,
        } = chain;
        let known = &known;
        let (writes, to_write) = channel::<ToWrite>();
        let driver = CheckpointDriver {
            coordinator,
            writes,
            next_id: Arc::new(AtomicU64::new(first_id)),
            stop: Arc::new(AtomicBool::new(false)),
            progress: Arc::default(),
            store: checkpoints.clone(),
            writes_parts_only: cluster.is_some_and(|cluster| cluster.process != 0),
            seen_committed: Arc::default(),
        };
        {
            let progress = Arc::clone(&driver.progress);
            let mut writer = Writer {
                checkpoints,
                fingerprint,
                parent,
                workers,
                carried: Vec::new(),
                broken: None,
                cluster,
                partitions: known
                    .partitions
                    .iter()
                    .map(|(name, saved)| (name.clone(), saved.finished))
                    .collect(),
                watermark: known.watermark.unwrap_or(Watermark::MinusInfinity),
            };
            std::thread::Builder::new()
                .name("pageflow-checkpoint-writer".into())
                .spawn(move || writer.run(to_write, &metrics, &history, &progress))
                .context("cannot start the checkpoint writer")?;
        }
        // In a cluster only process 0 asks for checkpoints; the others take part in those.
        if cluster.is_none_or(|cluster| cluster.process == 0) {
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

    /// Hands a complete checkpoint to the writer.
    pub fn write(&self, checkpoint: ToWrite) {
        let id = checkpoint.parts.id;
        // The end-of-input checkpoint is numbered by the workers: no later id may repeat it.
        self.next_id.fetch_max(id + 1, Ordering::SeqCst);
        if checkpoint.parts.is_final {
            self.progress.final_id.store(id + 1, Ordering::SeqCst);
            self.progress.changed.notify_all();
        }
        self.progress.queued.fetch_add(1, Ordering::SeqCst);
        if self.writes.send(checkpoint).is_err() {
            self.progress.queued.fetch_sub(1, Ordering::SeqCst);
            self.progress.report(Outcome::Failed(
                id,
                "the checkpoint writer has stopped".into(),
            ));
        }
    }

    /// The newest checkpoint committed so far by this driver's writer (in a cluster, for a
    /// process other than 0: whose part this process wrote), if any. The curated lake makes its
    /// pending files visible up to it.
    pub fn last_committed(&self) -> Option<u64> {
        let outcomes = self
            .progress
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Committed(id) => Some(*id),
                Outcome::Failed(..) => None,
            })
            .max()
    }

    /// The newest checkpoint the *job* has committed, as far as this process knows: for one
    /// process or process 0, [`Self::last_committed`]; for another process of a cluster, the
    /// newest checkpoint it wrote its part of whose manifest process 0 has put in the store (asked
    /// at most once a second). What becomes visible outside the job on a
    /// checkpoint (the curated lake's files) waits for this, so that a crash between a part and
    /// the commit never shows a row the restored job produces again.
    pub fn committed_by_the_job(&self) -> Option<u64> {
        if !self.writes_parts_only {
            return self.last_committed();
        }
        let mut seen = self
            .seen_committed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let written = self.last_committed();
        if written <= seen.0
            || seen
                .1
                .is_some_and(|at| at.elapsed() < COMMIT_LOOKUP_INTERVAL)
        {
            return seen.0;
        }
        seen.1 = Some(Instant::now());
        let mut parts: Vec<u64> = self
            .progress
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Committed(id) if Some(*id) > seen.0 => Some(*id),
                _ => None,
            })
            .collect();
        parts.sort_unstable();
        // Newest first: once one is committed, so are the earlier ones (or they failed, and the
        // newer one covers their rows).
        for id in parts.into_iter().rev() {
            match self.store.is_committed(id) {
                Ok(true) => {
                    seen.0 = Some(id);
                    break;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(
                        checkpoint = id,
                        "cannot tell whether process 0 committed: {error}"
                    );
                    break;
                }
            }
        }
        seen.0
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

    /// For a process of a cluster other than process 0, once the job is ending: waits until
    /// this process's part of the final checkpoint (which process 0 asked for) is written, at
    /// most `budget`; its id, or `Ok(None)` when the input ended first. Process 0 commits the
    /// checkpoint once every process's part is in.
    pub fn wait_for_final_part(&self, budget: Duration) -> Result<Option<u64>> {
        let deadline = Instant::now() + budget;
        self.stop.store(true, Ordering::SeqCst);
        let mut id = None;
        self.progress.wait_until(
            deadline,
            |_| {
                id = self.progress.final_id.load(Ordering::SeqCst).checked_sub(1);
                id.is_some()
            },
            || self.coordinator.has_ended(),
        );
        let Some(id) = id else {
            return if self.coordinator.has_ended() {
                Ok(None)
            } else {
                Err(anyhow!(
                    "process 0 did not take the final checkpoint within the stop budget of {budget:?}: stop every process of the cluster together (it may be stopped, or the budget too short: raise [checkpoint] stop_timeout and ECS stopTimeout)"
                ))
            };
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match self.wait_for(id, left) {
            Some(Outcome::Committed(id)) => Ok(Some(id)),
            Some(Outcome::Failed(id, why)) => Err(anyhow!(
                "this process's part of the final checkpoint {id} could not be written: {why}"
            )),
            None if self.coordinator.has_ended() => Ok(None),
            None => Err(anyhow!(
                "this process's part of the final checkpoint {id} was not written within the stop budget of {budget:?}; raise [checkpoint] stop_timeout (and ECS stopTimeout)"
            )),
        }
    }

    /// Waits until the store's background compaction (if one runs) has ended. A process that
    /// exits instead leaves a half-written base that no manifest lists (deleted later); one that
    /// goes on using the location in-process (a benchmark restarting the job, a test removing
    /// the directory) waits here first.
    pub fn wait_for_compaction(&self) {
        self.store.wait_for_compaction();
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

/// The writer thread's state: the chain of checkpoints it extends.
struct Writer {
    checkpoints: Checkpoints,
    fingerprint: String,
    /// The checkpoint the next one builds on.
    parent: Option<Manifest>,
    /// The job's workers (recorded in manifests).
    workers: usize,
    /// Changes handed over but not committed yet (a commit that failed): they go first into the
    /// next commit, whose newer changes win.
    carried: Vec<StateEntry>,
    /// Set when a worker's state could not be encoded: the chain would miss its changes, so no
    /// checkpoint is written any more (the job must be restarted to checkpoint again).
    broken: Option<String>,
    /// This process's place in a cluster; `None` for one process.
    cluster: Option<ClusterPart>,
    /// Every source partition in the state and whether it ended, and the job watermark: facts
    /// for the manifest, kept up to date from the changes (the store holds the rest).
    partitions: BTreeMap<String, bool>,
    watermark: Watermark,
}

/// What one commit did, for metrics and logs.
struct Written {
    bytes_written: u64,
    stored_bytes: u64,
    entries: usize,
}

impl Writer {
    /// Follows the source partitions and the watermark through ingest's changes.
    fn note_sources(&mut self, changes: &[Change]) {
        for change in changes {
            let Some((INGEST_STATE, _, key)) = parse_key(&change.key) else {
                continue;
            };
            let Some(value) = &change.value else {
                continue;
            };
            match decode::<IngestKey>(key) {
                Ok(IngestKey::Partition(name)) => {
                    if let Ok(saved) = decode::<PartitionCheckpoint>(value) {
                        self.partitions.insert(name, saved.finished);
                    }
                }
                Ok(IngestKey::Watermark { .. }) => {
                    if let Ok(watermark) = decode::<Watermark>(value) {
                        self.watermark = self.watermark.max(watermark);
                    }
                }
                Err(_) => {}
            }
        }
    }

    fn run(
        &mut self,
        to_write: Receiver<ToWrite>,
        metrics: &Metrics,
        history: &CheckpointHistory,
        progress: &Progress,
    ) {
        while let Ok(checkpoint) = to_write.recv() {
            let id = checkpoint.parts.id;
            let (paused_for, saved_in, drained_work) = (
                checkpoint.parts.paused_for,
                checkpoint.parts.saved_in,
                checkpoint.parts.drained_work,
            );
            let sizes = checkpoint.parts.sizes.clone();
            let outcome = self.write(checkpoint);
            let duration = progress
                .requested_at
                .lock()
                .ok()
                .and_then(|at| *at)
                .filter(|(requested, _)| *requested == id)
                .map(|(_, at)| at.elapsed())
                .unwrap_or_default();
            let now_ms = pageflow_dataflow::clock::unix_now_ms();
            history.record(CheckpointRecord {
                id,
                at_ms: now_ms,
                bytes_written: outcome.as_ref().map_or(0, |w| w.bytes_written),
                total_bytes: outcome.as_ref().map_or(0, |w| w.stored_bytes),
                duration_ms: duration.as_millis() as u64,
                pause_ms: paused_for.as_millis() as u64,
                outcome: match &outcome {
                    Ok(_) => CheckpointOutcome::Completed,
                    Err(error) => CheckpointOutcome::Failed(format!("{error:#}")),
                },
            });
            match outcome {
                Ok(written) => {
                    metrics.checkpoint_completed(|figures| {
                        figures.last_id = Some(id);
                        figures.last_success_ms = Some(now_ms);
                        figures.last_duration_s = duration.as_secs_f64();
                        figures.last_pause_s = paused_for.as_secs_f64();
                        figures.last_save_s = saved_in.as_secs_f64();
                        figures.last_drain_work_s = drained_work.as_secs_f64();
                        figures.last_size_bytes = written.bytes_written;
                        figures.stored_bytes = written.stored_bytes;
                        figures.state_bytes = sizes
                            .iter()
                            .map(|(op, size)| (op.clone(), size.bytes))
                            .collect();
                        figures.state_entries = sizes
                            .iter()
                            .map(|(op, size)| (op.clone(), size.entries))
                            .collect();
                    });
                    if self.cluster.is_some_and(|cluster| cluster.process != 0) {
                        tracing::info!(
                            checkpoint = id,
                            bytes_written = written.bytes_written,
                            entries = written.entries,
                            paused_ms = paused_for.as_millis() as u64,
                            location = self.checkpoints.location(),
                            "this process's part of the checkpoint is written (process 0 commits it)"
                        );
                    } else {
                        tracing::info!(
                            checkpoint = id,
                            bytes_written = written.bytes_written,
                            entries = written.entries,
                            stored_bytes = written.stored_bytes,
                            duration_ms = duration.as_millis() as u64,
                            paused_ms = paused_for.as_millis() as u64,
                            location = self.checkpoints.location(),
                            "checkpoint committed"
                        );
                    }
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

    fn write(&mut self, checkpoint: ToWrite) -> Result<Written> {
        let ToWrite {
            parts,
            serving,
            watermark_ms,
        } = checkpoint;
        let id = parts.id;
        if let Some(why) = &self.broken {
            return Err(anyhow!(
                "checkpoints are stopped since a worker's state could not be saved ({why}); restart the job to take checkpoints again"
            ));
        }
        let encoded = parts.changes.and_then(|snapshots| {
            let mut changes = Vec::new();
            for mut snapshot in snapshots {
                snapshot
                    .encode_deferred()
                    .map_err(|error| format!("worker {}: {error}", snapshot.worker))?;
                changes.append(&mut snapshot.changes);
            }
            Ok(changes)
        });
        let changes = match encoded {
            Ok(changes) => changes,
            Err(why) => {
                self.broken = Some(why.clone());
                return Err(anyhow!(
                    "a worker's state could not be saved: {why}; this is a bug in pageflow: checkpoints stop until the job is restarted (it restarts from checkpoint {})",
                    self.parent.as_ref().map_or(0, |p| p.id)
                ));
            }
        };
        self.note_sources(&changes);
        let mut delta = std::mem::take(&mut self.carried);
        delta.extend(changes.into_iter().chain(serving).map(|change| StateEntry {
            key: change.key,
            value: change.value,
        }));
        if !parts.consistent {
            // Something moved between the drain and a worker's save: these parts are no cut, but
            // every change in them is the newest of its key, so the next checkpoint carries them.
            self.carried = delta;
            return Err(anyhow!(
                "checkpoint {id} is not written: a worker sent or received records after the dataflow was found still and before it saved (a timer fired); its changes go into the next checkpoint"
            ));
        }
        let entries = delta.len();
        let mut info = BTreeMap::new();
        info.insert("watermark_ms".to_string(), watermark_ms.to_string());
        info.insert("watermark".to_string(), format!("{:?}", self.watermark));
        info.insert("partitions".to_string(), self.partitions.len().to_string());
        info.insert(
            "finished_partitions".to_string(),
            self.partitions.values().filter(|f| **f).count().to_string(),
        );
        info.insert("final".to_string(), parts.is_final.to_string());
        for (operator, size) in &parts.sizes {
            info.insert(
                format!("state.{operator}"),
                format!("{} bytes, {} entries", size.bytes, size.entries),
            );
        }
        if let Some(cluster) = self.cluster {
            return self.write_part(id, cluster, delta, info);
        }
        match self.checkpoints.commit(
            id,
            self.parent.as_ref(),
            delta,
            self.workers,
            &self.fingerprint,
            info,
        ) {
            Ok(commit) => {
                if let Some(report) = &commit.compaction {
                    tracing::info!(
                        checkpoint = id,
                        merged_deltas = report.deltas_merged,
                        bytes_read = report.bytes_read,
                        bytes_written = report.bytes_written,
                        duration_ms = report.duration.as_millis() as u64,
                        "the checkpoint builds on a compacted base"
                    );
                }
                Ok(self.built_on(commit, entries))
            }
            Err(failed) => {
                // The changes are in no checkpoint: the next commit carries them.
                self.carried = failed.delta;
                Err(failed.error.into())
            }
        }
    }

    /// A process of a cluster: writes this process's part; process 0 then commits every
    /// process's part as checkpoint `id`. A part that is written counts as saved even when the
    /// commit fails (the next commit lists it), so only a part that could not be written is
    /// carried.
    fn write_part(
        &mut self,
        id: u64,
        cluster: ClusterPart,
        delta: Vec<StateEntry>,
        info: BTreeMap<String, String>,
    ) -> Result<Written> {
        let entries = delta.len();
        let receipt = match self.checkpoints.write_part(id, cluster.process, delta) {
            Ok(receipt) => receipt,
            Err(failed) => {
                self.carried = failed.delta;
                return Err(failed.error.into());
            }
        };
        let part_bytes = receipt.run.as_ref().map_or(0, |run| run.bytes);
        if cluster.process != 0 {
            return Ok(Written {
                bytes_written: part_bytes,
                stored_bytes: 0,
                entries,
            });
        }
        let commit = self.checkpoints.commit_parts(
            id,
            self.parent.as_ref(),
            cluster.processes,
            cluster.timeout,
            self.workers,
            &self.fingerprint,
            info,
        )?;
        Ok(self.built_on(commit, entries))
    }

    /// The next checkpoint builds on `commit`; what it wrote, for metrics and logs.
    fn built_on(
        &mut self,
        commit: pageflow_connectors::checkpoint_store::Commit,
        entries: usize,
    ) -> Written {
        let written = Written {
            bytes_written: commit.bytes_written,
            stored_bytes: commit.state_bytes,
            entries,
        };
        self.parent = Some(commit.manifest);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(id: u64, key: &[u8], value: &[u8], consistent: bool) -> CompleteParts {
        CompleteParts {
            id,
            changes: Ok(vec![WorkerSnapshot {
                worker: 0,
                workers: 1,
                changes: vec![Change {
                    key: key.to_vec(),
                    value: Some(value.to_vec()),
                }],
                deferred: Vec::new(),
                sizes: BTreeMap::new(),
            }]),
            sizes: BTreeMap::new(),
            paused_for: Duration::ZERO,
            saved_in: Duration::ZERO,
            drained_work: Duration::ZERO,
            consistent,
            is_final: false,
        }
    }

    fn writer(checkpoints: &Checkpoints, cluster: Option<ClusterPart>) -> Writer {
        Writer {
            checkpoints: checkpoints.clone(),
            fingerprint: "test".into(),
            parent: None,
            workers: 2,
            carried: Vec::new(),
            broken: None,
            cluster,
            partitions: BTreeMap::new(),
            watermark: Watermark::MinusInfinity,
        }
    }

    /// A checkpoint's state: its keys and values in key order.
    type State = Vec<(Vec<u8>, Vec<u8>)>;

    /// The newest committed checkpoint's manifest and state.
    fn latest(checkpoints: &Checkpoints) -> (Manifest, State) {
        let loaded = checkpoints
            .load_latest()
            .expect("loads")
            .expect("a checkpoint is committed");
        let entries = loaded
            .entries()
            .collect::<Result<_, _>>()
            .expect("its entries read");
        (loaded.manifest, entries)
    }

    fn to_write(parts: CompleteParts) -> ToWrite {
        ToWrite {
            parts,
            serving: Vec::new(),
            watermark_ms: 0,
        }
    }

    #[test]
    fn each_process_of_a_cluster_writes_its_part_and_process_0_commits_them_all() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = |_| Arc::new(LocalDirStore::new(dir.path()).expect("a local store"));
        let part = |process| ClusterPart {
            process,
            processes: 2,
            timeout: Duration::from_millis(300),
        };
        // Two processes, each with its own store on the shared directory.
        let mut first = writer(&Checkpoints::new(store(0), 2), Some(part(0)));
        let second_store = Checkpoints::new(store(1), 2);
        let mut second = writer(&second_store, Some(part(1)));

        // Process 0's part alone: no commit, but its part counts as saved.
        let error = first
            .write(to_write(parts(1, b"a", b"1", true)))
            .err()
            .expect("process 1's part is missing");
        assert!(
            format!("{error:#}").contains("process(es) [1] of 2"),
            "{error:#}"
        );
        assert!(first.carried.is_empty(), "a written part is not carried");
        second
            .write(to_write(parts(1, b"b", b"1", true)))
            .expect("process 1 writes its part");
        assert!(second_store.load_latest().expect("loads").is_none());

        // Both parts of checkpoint 2: process 0 commits them, and the parts of 1 with them.
        second
            .write(to_write(parts(2, b"c", b"2", true)))
            .expect("process 1 writes its part");
        // What process 1 asks before its curated files of 2 become visible.
        assert!(!second_store.is_committed(2).expect("asks the store"));
        let written = first
            .write(to_write(parts(2, b"a", b"2", true)))
            .expect("process 0 commits");
        assert!(written.bytes_written > 0);
        assert!(second_store.is_committed(2).expect("asks the store"));
        assert!(
            !second_store.is_committed(1).expect("asks the store"),
            "1 never committed"
        );
        let (manifest, entries) = latest(&second_store);
        assert_eq!((manifest.id, manifest.processes), (2, 2));
        assert_eq!(
            entries,
            vec![
                (b"a".to_vec(), b"2".to_vec()),
                (b"b".to_vec(), b"1".to_vec()),
                (b"c".to_vec(), b"2".to_vec()),
            ]
        );
    }

    #[test]
    fn parts_that_are_no_consistent_cut_are_not_committed_but_carried_into_the_next() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Arc::new(LocalDirStore::new(dir.path()).expect("a local store"));
        let checkpoints = Checkpoints::new(store, 2);
        let mut writer = writer(&checkpoints, None);
        let write = to_write;

        let refused = writer.write(write(parts(1, b"a", b"1", false)));
        let error = format!("{:#}", refused.err().expect("not written"));
        assert!(error.contains("checkpoint 1 is not written"), "{error}");
        assert!(
            checkpoints.load_latest().expect("loads").is_none(),
            "nothing is committed"
        );

        writer
            .write(write(parts(2, b"b", b"2", true)))
            .expect("the next checkpoint is written");
        let (manifest, entries) = latest(&checkpoints);
        assert_eq!(manifest.id, 2);
        assert_eq!(
            entries,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ],
            "checkpoint 1's changes are carried into checkpoint 2"
        );
    }
}
