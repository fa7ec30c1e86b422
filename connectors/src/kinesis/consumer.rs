//! The Kinesis source of the job: every shard of every portal's stream, read as partitions of the
//! dataflow.
//!
//! ```text
//!            ┌──────── coordinator (one task per process) ─────┐
//!  ListShards│ discovery on an interval (jittered) and when a  │ assign_shard(stream, shard, W)
//!   ────────►│ shard ends; ShardLineage: children after parents├──────────┬───────────┐
//!            └───────────────▲─────────────────────────────────┘          ▼           ▼
//!                            │ shard done (+ children)       feed of local worker 0 … T-1
//!   reader task per shard ──►│ bounded channel ──► ShardPartition (a RecordSource) ──► ingest
//! ```
//!
//! - **One place discovers** (per process). The coordinator lists the shards (paginated
//!   `ListShards`), starts a reader task for every shard whose parents are done, and hands the shard
//!   to the worker chosen by the stable rendezvous hash ([`crate::kinesis::shards::assign_shard`]).
//!   Workers never call `ListShards`.
//! - **Children after parents, parents fully processed.** A shard counts as done only when its
//!   worker has taken its last records into the dataflow (the partition reports it on the poll
//!   after the one that returned them), so a child's records never enter before its parents'.
//! - **Backpressure.** Each shard's reader waits on a bounded channel: when the dataflow falls
//!   behind, the readers stop calling `GetRecords`, and memory stays bounded.
//! - **Per-shard event time.** Each shard is its own partition, with its own watermark and idleness
//!   in ingest (SEMANTICS: the job watermark is the minimum over partitions that are not idle).
//! - **Metrics.** [`ConsumerStatus`] keeps, per shard, `MillisBehindLatest`, the iterator age (how
//!   old the newest record read was when it was read) and the records read.
//! - **Polling or enhanced fan-out**, per stream: [`StreamSpec::fan_out_consumer`] names the
//!   consumer to register or reuse ([`crate::kinesis::fan_out_reader`]); the records are the same.
//! - **Resuming after a checkpoint.** [`ConsumerSettings::saved`] holds what a checkpoint says of
//!   each shard ([`SavedShards`]): a shard read to its end is never read again but counts as done,
//!   so its children may start; a shard with a saved position continues right after its last
//!   ingested user record (at its Kinesis record, skipping the user records up to it, so a
//!   position inside a KPL aggregate works too); every other shard starts from
//!   [`ConsumerSettings::start`].
//! - **Bounded reads.** With [`ConsumerSettings::stop_at_latest`], each shard ends once its reader
//!   is at the tip (`MillisBehindLatest` = 0), so a run over what a stream holds now finishes, like
//!   a replay (backfills, tests). Otherwise the consumer runs until stopped.
//! - **A cluster of processes.** Each process runs its own coordinator with its
//!   [`ConsumerPlacement`]; a shard is read by the process of its owner among all the cluster's
//!   workers, and the others learn that it is done through [`FinishedElsewhere`]. Why that reads
//!   every shard exactly once, after all its parents: [`crate::kinesis::shard_ownership`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc as std_mpsc};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use pageflow_dataflow::clock::unix_now_ms;
use pageflow_dataflow::event::{RawRecord, SourcePosition};
use pageflow_dataflow::source::{PartitionFeed, PollStatus, RecordSource, SourceError};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::ConnectorError;
use crate::kinesis::fan_out_reader::{FanOutReader, FanOutSettings, ensure_consumer, stream_arn};
use crate::kinesis::polling_reader::{PollingReader, ReaderSettings};
use crate::kinesis::shard_discovery::list_shards;
use crate::kinesis::shard_ownership::ProcessLineage;
pub use crate::kinesis::shard_ownership::{ConsumerPlacement, FinishedElsewhere, NowhereElse};
use crate::kinesis::shard_reader::{ResumePoint, ShardBatch, StartPosition};
use crate::kinesis::shards::{Position, SequenceNumber};
use crate::retry::{Backoff, Jitter};

/// One portal's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// The portal whose pageviews the stream carries (names the partitions).
    pub portal: String,
    /// The stream's name or ARN.
    pub stream: String,
    /// Read through this enhanced fan-out consumer (registered or reused, never deregistered)
    /// instead of polling.
    pub fan_out_consumer: Option<String>,
}

/// What a checkpoint says of the shards: where to continue each one after a restart.
///
/// Partitions are named as [`ShardPartition`]s name themselves (`kinesis:<portal>/<shard id>`,
/// what `RawRecord.position.partition` holds). Shards named in neither set start from
/// [`ConsumerSettings::start`].
#[derive(Clone, Debug, Default)]
pub struct SavedShards {
    /// Partition name (as `ShardPartition::name()`, e.g. what RawRecord.position.partition holds) →
    /// position string of the last record ingested (`"<sequence>:<sub>"`).
    pub positions: HashMap<String, String>,
    /// Partitions fully read before the checkpoint: never read again; their children may start.
    pub finished: HashSet<String>,
}

/// Parses a saved position, `"<sequence>:<sub-sequence>"` as [`Position`] displays it.
fn parse_position(text: &str) -> Result<Position, String> {
    let (sequence, sub_sequence) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not <sequence number>:<sub-sequence number>"))?;
    let sequence = SequenceNumber::new(sequence)
        .ok_or_else(|| format!("{sequence:?} in {text:?} is not a decimal sequence number"))?;
    let sub_sequence = sub_sequence
        .parse()
        .map_err(|_| format!("{sub_sequence:?} in {text:?} is not a sub-sequence number"))?;
    Ok(Position {
        sequence,
        sub_sequence,
    })
}

/// The partition name of `shard` of the stream of `portal`.
pub(crate) fn partition_name(portal: &str, shard: &str) -> String {
    format!("kinesis:{portal}/{shard}")
}

/// How the consumer behaves.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// Where shards without a saved position start.
    pub start: StartPosition,
    /// Where the shards stood at the checkpoint being restored (nothing by default).
    pub saved: SavedShards,
    /// How often to list the shards when nothing else asks for it (±20 % jitter).
    pub discovery_interval: Duration,
    /// Shards per `ListShards` page.
    pub list_page_size: i32,
    /// How each shard is polled.
    pub reader: ReaderSettings,
    /// How each shard of an enhanced fan-out stream is subscribed to.
    pub fan_out: FanOutSettings,
    /// `GetRecords` batches buffered per shard before its reader waits for the dataflow.
    pub buffered_batches: usize,
    /// End each shard once it is read up to its tip (a bounded run).
    pub stop_at_latest: bool,
    /// Delays after failed listings and failed readers.
    pub backoff: Backoff,
    /// In a cluster, how often to ask whether shards read by other processes are done (while any
    /// is being read elsewhere), so that their children here start soon after.
    pub finished_elsewhere_interval: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            start: StartPosition::TrimHorizon,
            saved: SavedShards::default(),
            discovery_interval: Duration::from_secs(60),
            list_page_size: 1000,
            reader: ReaderSettings::default(),
            fan_out: FanOutSettings::default(),
            buffered_batches: 4,
            stop_at_latest: false,
            backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(30),
            },
            finished_elsewhere_interval: Duration::from_millis(500),
        }
    }
}

/// What one shard's reader has seen, for metrics and readiness.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShardStatus {
    /// The portal of the stream.
    pub portal: String,
    /// The stream.
    pub stream: String,
    /// The shard.
    pub shard: String,
    /// How far behind the tip the last `GetRecords` was.
    pub millis_behind_latest: Option<i64>,
    /// How old the newest record of the last non-empty batch was when it was read (0 when caught
    /// up): Kinesis's `GetRecords.IteratorAgeMilliseconds`.
    pub iterator_age_ms: Option<u64>,
    /// User records read.
    pub records: u64,
    /// Read to its end.
    pub finished: bool,
    /// The last failure no retry has fixed yet.
    pub last_error: Option<String>,
    /// Why the checkpoint's saved position of the shard could not be used (the shard was then read
    /// from [`ConsumerSettings::start`] instead).
    pub saved_position_error: Option<String>,
}

/// The consumer's state as metrics see it.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    shards: Mutex<BTreeMap<(String, String), ShardStatus>>,
    /// `ListShards` listings completed.
    pub listings: AtomicU64,
    /// Listings that failed with an error no retry fixes (they are tried again next interval).
    pub listing_failures: AtomicU64,
}

impl ConsumerStatus {
    /// Every shard's status, finished ones included, ordered by stream and shard.
    pub fn shards(&self) -> Vec<ShardStatus> {
        self.lock().values().cloned().collect()
    }

    fn update(&self, stream: &str, shard: &str, change: impl FnOnce(&mut ShardStatus)) {
        if let Some(status) = self
            .lock()
            .get_mut(&(stream.to_string(), shard.to_string()))
        {
            change(status);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), ShardStatus>> {
        lock(&self.shards)
    }
}

/// The running consumer; dropping it (or [`KinesisConsumer::stop`]) stops discovery and readers.
#[derive(Debug)]
pub struct KinesisConsumer {
    /// Per-shard metrics.
    pub status: Arc<ConsumerStatus>,
    /// The coordinator and every reader task, to abort on stop.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl KinesisConsumer {
    /// Starts reading `streams` on `runtime` for this process's workers (`placement`; one process:
    /// [`ConsumerPlacement::single`]); returns the consumer and one feed per local worker (give
    /// feed `w` to local worker `w`'s ingest).
    ///
    /// `elsewhere` says when a shard read by another process of the cluster is done (one process:
    /// [`NowhereElse`]).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        client: Client,
        streams: Vec<StreamSpec>,
        placement: ConsumerPlacement,
        elsewhere: Arc<dyn FinishedElsewhere>,
        settings: ConsumerSettings,
    ) -> (KinesisConsumer, Vec<ShardFeed>) {
        let status = Arc::new(ConsumerStatus::default());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let discovering = Arc::new(AtomicBool::new(true));
        let (senders, feeds): (Vec<_>, Vec<_>) = (0..placement.local_workers())
            .map(|_| {
                let (sender, receiver) = std_mpsc::channel();
                (
                    sender,
                    ShardFeed {
                        receiver,
                        closed: false,
                        discovering: Arc::clone(&discovering),
                    },
                )
            })
            .unzip();
        let coordinator = Coordinator {
            runtime: runtime.clone(),
            client,
            streams,
            settings,
            status: Arc::clone(&status),
            tasks: Arc::clone(&tasks),
            feeds: senders,
            discovering,
            placement,
            elsewhere,
        };
        let coordinator = runtime.spawn(coordinator.run()).abort_handle();
        lock(&tasks).push(coordinator);
        (KinesisConsumer { status, tasks }, feeds)
    }

    /// Stops discovery and every reader.
    pub fn stop(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for KinesisConsumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker's end of the consumer: the shards assigned to it, as they start.
#[derive(Debug)]
pub struct ShardFeed {
    receiver: std_mpsc::Receiver<Box<dyn RecordSource>>,
    closed: bool,
    /// Set until every stream has been listed once and its first shards handed over.
    discovering: Arc<AtomicBool>,
}

impl PartitionFeed for ShardFeed {
    fn poll_new(&mut self, out: &mut Vec<Box<dyn RecordSource>>) {
        loop {
            match self.receiver.try_recv() {
                Ok(partition) => out.push(partition),
                Err(std_mpsc::TryRecvError::Empty) => return,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.closed
    }

    fn is_discovering(&self) -> bool {
        self.discovering.load(Ordering::SeqCst)
    }
}

/// What a reader task hands its partition.
#[derive(Debug)]
enum ShardMessage {
    Records(Vec<RawRecord>),
    End { children: Vec<String> },
}

/// A shard done in the dataflow, reported to the coordinator.
#[derive(Debug)]
struct ShardDone {
    stream_index: usize,
    shard: String,
    children: Vec<String>,
}

/// One shard as a partition of the dataflow, fed by its reader task.
#[derive(Debug)]
pub struct ShardPartition {
    name: String,
    stream_index: usize,
    shard: String,
    receiver: mpsc::Receiver<ShardMessage>,
    pending: std::collections::VecDeque<RawRecord>,
    /// The reader reported the end; `Some(children)` until the coordinator is told.
    ending: Option<Vec<String>>,
    finished: bool,
    done: mpsc::UnboundedSender<ShardDone>,
    /// Where its reader records how far behind the tip it is (`(stream, shard)` in it).
    status: Arc<ConsumerStatus>,
    stream: String,
    portal: String,
    /// Once ended: its children's partition names (`RecordSource::successors`).
    successors: Vec<String>,
}

impl RecordSource for ShardPartition {
    fn name(&self) -> &str {
        &self.name
    }

    fn successors(&self) -> Vec<String> {
        self.successors.clone()
    }

    fn lag_ms(&self) -> Option<u64> {
        let shards = self.status.lock();
        let behind = shards
            .get(&(self.stream.clone(), self.shard.clone()))?
            .millis_behind_latest?;
        u64::try_from(behind).ok()
    }

    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError> {
        if self.finished {
            return Ok(PollStatus::Finished);
        }
        while self.pending.len() < max && self.ending.is_none() {
            match self.receiver.try_recv() {
                Ok(ShardMessage::Records(records)) => self.pending.extend(records),
                Ok(ShardMessage::End { children }) => self.ending = Some(children),
                // A stopped consumer: nothing more comes, but the shard is not finished (it must
                // not let the watermark run to the end of time).
                Err(_) => break,
            }
        }
        if self.pending.is_empty()
            && let Some(children) = self.ending.take()
        {
            self.successors = children
                .iter()
                .map(|child| partition_name(&self.portal, child))
                .collect();
            // Every record of the shard was returned by an earlier poll, so ingest has taken them
            // in: only now may the children start.
            let _ = self.done.send(ShardDone {
                stream_index: self.stream_index,
                shard: self.shard.clone(),
                children,
            });
            self.finished = true;
            return Ok(PollStatus::Finished);
        }
        let take = self.pending.len().min(max);
        out.extend(self.pending.drain(..take));
        Ok(if take > 0 || self.ending.is_some() {
            PollStatus::Ready
        } else {
            PollStatus::Pending
        })
    }
}

struct Coordinator {
    runtime: tokio::runtime::Handle,
    client: Client,
    streams: Vec<StreamSpec>,
    settings: ConsumerSettings,
    status: Arc<ConsumerStatus>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    feeds: Vec<std_mpsc::Sender<Box<dyn RecordSource>>>,
    /// Shared with the feeds: cleared once every stream has been listed (see
    /// `PartitionFeed::is_discovering`).
    discovering: Arc<AtomicBool>,
    /// Which shards this process reads.
    placement: ConsumerPlacement,
    /// Which shards read by other processes are done.
    elsewhere: Arc<dyn FinishedElsewhere>,
}

impl Coordinator {
    async fn run(self) {
        let mut lineages: Vec<ProcessLineage> = self
            .streams
            .iter()
            .map(|_| ProcessLineage::default())
            .collect();
        let mut listed = vec![false; self.streams.len()];
        let (done_sender, mut done_receiver) = mpsc::unbounded_channel::<ShardDone>();
        let mut jitter = Jitter::new();
        let mut due: Vec<usize> = (0..self.streams.len()).collect();
        let mut consumer_arns: Vec<Option<String>> = self.streams.iter().map(|_| None).collect();
        // Shards the listing shows closed, told to their fan-out readers (see `ReaderTask::probe_end`).
        let mut closed_flags: BTreeMap<(usize, String), Arc<AtomicBool>> = BTreeMap::new();
        // When the streams are listed next unless something else asks first; drawn anew after
        // every wake-up but a check for shards done elsewhere.
        let mut discovery_at: Option<tokio::time::Instant> = None;
        loop {
            for (index, lineage) in lineages.iter_mut().enumerate() {
                if lineage.poll_elsewhere(&self.streams[index].portal, &*self.elsewhere)
                    && !due.contains(&index)
                {
                    // A shard ended in another process: list again so that every child is known.
                    due.push(index);
                }
            }
            for index in std::mem::take(&mut due) {
                let spec = &self.streams[index];
                if let Some(name) = &spec.fan_out_consumer
                    && consumer_arns[index].is_none()
                {
                    match self.register(&spec.stream, name).await {
                        Ok(arn) => consumer_arns[index] = Some(arn),
                        Err(error) => {
                            tracing::error!(
                                stream = spec.stream,
                                "cannot set up the enhanced fan-out consumer {name}: {error}; retrying at the next discovery"
                            );
                            continue;
                        }
                    }
                }
                match list_shards(
                    &self.client,
                    &spec.stream,
                    self.settings.list_page_size,
                    self.settings.backoff,
                )
                .await
                {
                    Ok(listing) => {
                        self.status.listings.fetch_add(1, Ordering::Relaxed);
                        lineages[index].update(&listing);
                        listed[index] = true;
                        for shard in listing.iter().filter(|s| s.closed) {
                            closed_flags
                                .entry((index, shard.shard_id.clone()))
                                .or_default()
                                .store(true, Ordering::SeqCst);
                        }
                    }
                    Err(error) => {
                        self.status.listing_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            stream = spec.stream,
                            "cannot list the shards: {error}; retrying at the next discovery"
                        );
                    }
                }
                let ready = lineages[index].start_ready(
                    &spec.portal,
                    &spec.stream,
                    &self.placement,
                    &self.settings.saved.finished,
                    &*self.elsewhere,
                );
                for (shard, worker) in ready {
                    let partition = self.start_reader(
                        index,
                        &shard,
                        consumer_arns[index].as_deref(),
                        Arc::clone(closed_flags.entry((index, shard.clone())).or_default()),
                        done_sender.clone(),
                    );
                    if self.feeds[worker].send(Box::new(partition)).is_err() {
                        return; // the dataflow is gone
                    }
                }
            }
            if listed.iter().all(|l| *l) {
                // Every stream's first shards are handed over (sent above, before this store).
                self.discovering.store(false, Ordering::SeqCst);
            }
            if self.settings.stop_at_latest
                && listed.iter().all(|l| *l)
                && lineages.iter().all(ProcessLineage::all_done)
            {
                // A bounded run: every shard is read to where it was; closing the feeds lets the
                // workers finish.
                break;
            }
            let discovery = *discovery_at.get_or_insert_with(|| {
                let interval = self
                    .settings
                    .discovery_interval
                    .mul_f64(0.8 + 0.4 * ((jitter.next_u64() >> 11) as f64 / (1u64 << 53) as f64));
                tokio::time::Instant::now() + interval
            });
            let waits_elsewhere = lineages.iter().any(ProcessLineage::waits_elsewhere);
            tokio::select! {
                done = done_receiver.recv() => {
                    let Some(done) = done else { break };
                    discovery_at = None;
                    self.status.update(&self.streams[done.stream_index].stream, &done.shard, |s| s.finished = true);
                    lineages[done.stream_index].finish(&done.shard, &done.children);
                    // A closed shard means a reshard: list again so that every child is known.
                    if !due.contains(&done.stream_index) {
                        due.push(done.stream_index);
                    }
                }
                _ = tokio::time::sleep_until(discovery) => {
                    discovery_at = None;
                    due = (0..self.streams.len()).collect();
                }
                // Shards read by other processes are asked about at the top of the loop.
                _ = tokio::time::sleep(self.settings.finished_elsewhere_interval), if waits_elsewhere => {}
            }
        }
    }

    async fn register(&self, stream: &str, consumer: &str) -> Result<String, ConnectorError> {
        let arn = stream_arn(&self.client, stream, self.settings.backoff).await?;
        ensure_consumer(&self.client, &arn, consumer, self.settings.backoff).await
    }

    /// Where the partition `name` continues after the checkpoint: right after its saved position
    /// (`None` without one), and why a saved position that cannot be used was ignored.
    ///
    /// The saved record is read again and its user records up to the saved one skipped
    /// (`AT_SEQUENCE_NUMBER`, `record_complete: false`): a checkpoint does not say whether the
    /// position was the last user record of a KPL aggregate, and this is right either way.
    fn saved_resume_point(
        &self,
        stream: &str,
        name: &str,
    ) -> (Option<ResumePoint>, Option<String>) {
        let Some(text) = self.settings.saved.positions.get(name) else {
            return (None, None);
        };
        match parse_position(text) {
            Ok(position) => {
                tracing::info!(
                    stream,
                    partition = name,
                    "continuing after the checkpoint's position {position}"
                );
                (
                    Some(ResumePoint {
                        position,
                        record_complete: false,
                    }),
                    None,
                )
            }
            Err(problem) => {
                let start = self.settings.start;
                let message = format!(
                    "the checkpoint's position of {name} cannot be used: {problem}; reading the \
                     shard from the configured start ({start:?}) instead, so records may come \
                     again or be missed; check the checkpoint (it should hold the \
                     <sequence>:<sub-sequence> of the last record taken in)"
                );
                tracing::error!(stream, partition = name, "{message}");
                (None, Some(message))
            }
        }
    }

    fn start_reader(
        &self,
        stream_index: usize,
        shard: &str,
        consumer_arn: Option<&str>,
        closed: Arc<AtomicBool>,
        done: mpsc::UnboundedSender<ShardDone>,
    ) -> ShardPartition {
        let spec = &self.streams[stream_index];
        let (sender, receiver) = mpsc::channel(self.settings.buffered_batches.max(1));
        let name = partition_name(&spec.portal, shard);
        let (resume, saved_position_error) = self.saved_resume_point(&spec.stream, &name);
        self.status.lock().insert(
            (spec.stream.clone(), shard.to_string()),
            ShardStatus {
                portal: spec.portal.clone(),
                stream: spec.stream.clone(),
                shard: shard.to_string(),
                saved_position_error,
                ..ShardStatus::default()
            },
        );
        let reader = match consumer_arn {
            Some(arn) => AnyReader::FanOut(Box::new(FanOutReader::new(
                self.client.clone(),
                arn,
                shard,
                self.settings.start,
                resume,
                self.settings.fan_out,
            ))),
            None => AnyReader::Polling(Box::new(PollingReader::new(
                self.client.clone(),
                &spec.stream,
                shard,
                self.settings.start,
                resume,
                self.settings.reader,
            ))),
        };
        let probe = consumer_arn.map(|_| EndProbe {
            client: self.client.clone(),
            stream: spec.stream.clone(),
            start: self.settings.start,
            settings: self.settings.reader,
            closed,
            last: None,
        });
        let task = ReaderTask {
            reader,
            probe,
            partition: name.clone(),
            stream: spec.stream.clone(),
            sender,
            status: Arc::clone(&self.status),
            stop_at_latest: self.settings.stop_at_latest,
            backoff: self.settings.backoff,
        };
        let handle = self.runtime.spawn(task.run()).abort_handle();
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle);
        ShardPartition {
            name,
            stream_index,
            shard: shard.to_string(),
            receiver,
            pending: std::collections::VecDeque::new(),
            ending: None,
            finished: false,
            done,
            status: Arc::clone(&self.status),
            stream: spec.stream.clone(),
            portal: spec.portal.clone(),
            successors: Vec::new(),
        }
    }
}

/// A shard's reader: polling or enhanced fan-out, the same records either way.
enum AnyReader {
    Polling(Box<PollingReader>),
    FanOut(Box<FanOutReader>),
}

impl AnyReader {
    async fn next_batch(&mut self) -> Result<ShardBatch, ConnectorError> {
        match self {
            AnyReader::Polling(reader) => reader.next_batch().await,
            AnyReader::FanOut(reader) => reader.next_batch().await,
        }
    }

    fn shard_id(&self) -> &str {
        match self {
            AnyReader::Polling(reader) => reader.shard_id(),
            AnyReader::FanOut(reader) => reader.shard_id(),
        }
    }
}

/// Confirms with one `GetRecords` that a closed shard read through enhanced fan-out is read to its
/// end. The service ends a closed shard's subscription with its children, but a subscription can
/// also just go quiet (an emulator, a lost final event); then, once discovery lists the shard as
/// closed and the subscription brings nothing, the polling API tells whether anything is left
/// after the last record emitted (its answer has no next iterator and names the children).
struct EndProbe {
    client: Client,
    stream: String,
    start: StartPosition,
    settings: ReaderSettings,
    /// Set by the coordinator when a listing shows the shard closed.
    closed: Arc<AtomicBool>,
    last: Option<std::time::Instant>,
}

/// The least time between two end-of-shard probes of one shard.
const END_PROBE_INTERVAL: Duration = Duration::from_secs(5);

impl EndProbe {
    /// `Some(children)` when the shard is closed and nothing is left after `resume`.
    async fn at_end(&mut self, shard: &str, resume: Option<ResumePoint>) -> Option<Vec<String>> {
        if !self.closed.load(Ordering::SeqCst)
            || self
                .last
                .is_some_and(|last| last.elapsed() < END_PROBE_INTERVAL)
        {
            return None;
        }
        self.last = Some(std::time::Instant::now());
        let mut reader = PollingReader::new(
            self.client.clone(),
            &self.stream,
            shard,
            self.start,
            resume,
            self.settings,
        );
        match reader.next_batch().await {
            Ok(batch) if batch.records.is_empty() => batch.finished_with_children,
            // Records are left: the subscription will bring them.
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(
                    stream = self.stream,
                    shard,
                    "end-of-shard probe failed: {error}"
                );
                None
            }
        }
    }
}

struct ReaderTask {
    reader: AnyReader,
    probe: Option<EndProbe>,
    partition: String,
    stream: String,
    sender: mpsc::Sender<ShardMessage>,
    status: Arc<ConsumerStatus>,
    stop_at_latest: bool,
    backoff: Backoff,
}

impl ReaderTask {
    async fn run(mut self) {
        let shard = self.reader.shard_id().to_string();
        let mut failures = 0u32;
        let mut jitter = Jitter::new();
        loop {
            let batch = match self.reader.next_batch().await {
                Ok(batch) => {
                    failures = 0;
                    batch
                }
                Err(error) => {
                    // Retries inside the reader already covered throttling and transient faults;
                    // this one needs a person (permissions, a deleted stream). Keep trying slowly
                    // so that the job recovers by itself once it is fixed.
                    failures += 1;
                    self.report_error(&shard, &error);
                    tokio::time::sleep(self.backoff.delay(failures, jitter.next_u64())).await;
                    continue;
                }
            };
            let end = match &batch.finished_with_children {
                Some(children) => Some(children.clone()),
                // At the tip and nothing more came: `MillisBehindLatest = 0` alone is not enough
                // (kinesis-local reports 0 while records of the same put are still unread).
                None if self.stop_at_latest
                    && batch.millis_behind_latest == Some(0)
                    && batch.records.is_empty() =>
                {
                    Some(Vec::new())
                }
                None if batch.records.is_empty() => match (&mut self.probe, &self.reader) {
                    (Some(probe), AnyReader::FanOut(reader)) => {
                        probe.at_end(&shard, reader.resume_point().cloned()).await
                    }
                    _ => None,
                },
                None => None,
            };
            self.record_status(&shard, &batch);
            let records: Vec<RawRecord> = batch
                .records
                .into_iter()
                .map(|record| RawRecord {
                    position: SourcePosition {
                        partition: self.partition.clone(),
                        position: record.position.to_string(),
                    },
                    bytes: record.data,
                    corrupt: record.corrupt,
                })
                .collect();
            if !records.is_empty()
                && self
                    .sender
                    .send(ShardMessage::Records(records))
                    .await
                    .is_err()
            {
                return; // the partition was dropped: the job is stopping
            }
            if let Some(children) = end {
                let _ = self.sender.send(ShardMessage::End { children }).await;
                return;
            }
        }
    }

    fn record_status(&self, shard: &str, batch: &ShardBatch) {
        let now = unix_now_ms();
        let newest = batch.records.iter().filter_map(|r| r.arrival_ms).max();
        self.status.update(&self.stream, shard, |status| {
            status.millis_behind_latest =
                batch.millis_behind_latest.or(status.millis_behind_latest);
            status.iterator_age_ms = Some(newest.map_or(0, |arrival| now.saturating_sub(arrival)));
            status.records += batch.records.len() as u64;
            status.last_error = None;
        });
    }

    fn report_error(&self, shard: &str, error: &ConnectorError) {
        tracing::error!(stream = self.stream, shard, "{error}");
        let message = error.to_string();
        self.status.update(&self.stream, shard, |status| {
            status.last_error = Some(message)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_positions_parse_as_positions_display() -> Result<(), String> {
        let sequence = "49590338271490256608559692538361571095921575989136588898";
        let position = parse_position(&format!("{sequence}:7"))?;
        assert_eq!(position.sequence.as_str(), sequence);
        assert_eq!(position.sub_sequence, 7);
        assert_eq!(parse_position(&position.to_string())?, position);
        for bad in [
            "", "12", ":0", "12:", "12:x", "0012:0", "1a:0", "12:-1", "12:0:0",
        ] {
            assert!(parse_position(bad).is_err(), "{bad:?} parsed");
        }
        Ok(())
    }
}
