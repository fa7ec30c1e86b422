//! Ingest: the source operator that turns raw records into events, dead letters and raw archive
//! records, and that owns event time.
//!
//! Each worker polls the partitions it was given, in order. For every record, in arrival order:
//! 1. [`validate`](crate::event::validate()) it; an invalid record becomes a dead letter;
//! 2. judge it against the job watermark *before* counting it into its partition: below the
//!    watermark it is `late` and becomes a dead letter;
//! 3. count it into its partition's watermark (`max ts − max_out_of_orderness`) and emit it.
//!
//! Duplicates are decided later, by the [`deduplicate`](super::dedup) operator, because a retried
//! beacon may arrive through another partition.
//!
//! The operator holds its capability at the tick of the job watermark (see
//! [`crate::time::WatermarkBoard`]): every event it emits is on time, so its timestamp is at or after
//! the capability. All records of one batch travel at the capability's time, in arrival order, so
//! operators downstream see each partition's records in order (they use `ts` from the data and
//! finality from the frontier, `docs/semantics-notes.md` N7).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::snapshot::{INGEST_STATE, IngestKey};
use crate::checkpoint::{
    ChangeWriter, CheckpointError, Checkpointed, Entry, OperatorStates, PartitionCheckpoint,
    Placement, StateSize,
};
use crate::event::{
    CompactEvent, DeadLetter, DetailedEvent, PageviewDetails, RawRecord, Reason, validate,
};
use crate::ids::FastMap;
use crate::source::{PollStatus, RecordSource, WorkerSources};
use crate::stats::JobStats;
use crate::time::{Opinion, PartitionClock, PartitionWatermark, Watermark, combine};
use crate::watermark_exchange::BoardPublisher;

/// What ingest emits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ingested {
    /// A valid, on-time event (possibly a duplicate, decided downstream).
    Event(CompactEvent),
    /// The same with its optional fields, instead of [`Ingested::Event`] when
    /// [`IngestConfig::keep_details`] asks for them (the curated `pageviews` table).
    Detailed(DetailedEvent),
    /// A record that will not be counted, with its reason.
    DeadLetter(DeadLetter),
    /// A valid record's bytes as received, for the `raw/` archive (only when asked for).
    Raw(RawValid),
}

/// A valid record as received, with what the archive needs to place it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawValid {
    /// The record's portal.
    pub portal: String,
    /// The record's event time.
    pub ts: u64,
    /// The record's bytes, without the line break.
    pub bytes: Vec<u8>,
}

/// How ingest behaves.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// See [`crate::config::SemanticsConfig::max_out_of_orderness`].
    pub max_out_of_orderness: u64,
    /// See [`crate::config::SemanticsConfig::idle_timeout`].
    pub idle_timeout: u64,
    /// The tick of the dataflow's timestamps.
    pub slide: u64,
    /// Emit [`Ingested::Raw`] for every valid record.
    pub keep_raw: bool,
    /// Emit on-time events as [`Ingested::Detailed`] (with `url`, `referrer`, `device`).
    pub keep_details: bool,
    /// Records polled from one partition per activation.
    pub batch: usize,
    /// How long to wait before polling again when every partition is caught up.
    pub poll_interval: Duration,
    /// Watermark alignment (Flink's): a partition whose own watermark is more than this ahead of
    /// the job watermark is not polled until the job watermark catches up. When partitions are
    /// read faster than real time (a backlog, a replay of several files, a restart after
    /// downtime), the fastest would otherwise run far ahead in event time, and every stateful
    /// operator would hold its events until the slowest catches up. Results do not change: the
    /// job watermark, and so what is late, never depends on how fast a partition ahead is read.
    pub alignment: Option<u64>,
    /// What a partition that fails for good (an error no retry fixes) does besides stopping the
    /// job ([`crate::stats::JobStats::fail_source`]): `false` holds the watermark where it is, so
    /// nothing is final that the partition's records could still change, while the job stops
    /// (`pageflow run`); `true` ends the partition, so that a bounded run ends and reports the
    /// failure instead of waiting for ever (replays, whose results are then discarded).
    pub end_on_failure: bool,
}

impl IngestConfig {
    /// Settings for the given semantics.
    pub fn new(semantics: &crate::config::SemanticsConfig) -> Self {
        IngestConfig {
            max_out_of_orderness: semantics.max_out_of_orderness.ms(),
            idle_timeout: semantics.idle_timeout.ms(),
            slide: semantics.slide.ms(),
            keep_raw: false,
            keep_details: false,
            batch: 4096,
            poll_interval: Duration::from_millis(5),
            alignment: None,
            end_on_failure: false,
        }
    }
}

/// How often a worker shows its partitions' watermarks on the board.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

struct Partition {
    source: Box<dyn RecordSource>,
    clock: PartitionClock,
    /// The position of the last record taken from the source: where a restore resumes after.
    last_position: Option<String>,
    /// Processing time of the last record or of the start, for idleness.
    last_activity: Instant,
    blank_lines_reported: u64,
    /// Failed for good: not polled again.
    failed: bool,
    /// Once finished: the partitions that continue it (see `RecordSource::successors`).
    successors: Vec<String>,
}

impl Partition {
    fn new(source: Box<dyn RecordSource>, now: Instant) -> Self {
        Partition {
            source,
            clock: PartitionClock::default(),
            last_position: None,
            last_activity: now,
            blank_lines_reported: 0,
            failed: false,
            successors: Vec::new(),
        }
    }

    /// Its opinion as it stood before it finished: what its successors hold the watermark at.
    fn last_watermark(&self, config: &IngestConfig) -> Opinion {
        match self.clock.watermark(config.max_out_of_orderness) {
            None => Opinion::Undefined,
            Some(wm) => Opinion::At(wm),
        }
    }

    /// What the partition shows operators on the board (see [`crate::time::WatermarkBoard::partitions`]).
    fn report(&self, config: &IngestConfig, now: Instant, job: Watermark) -> PartitionWatermark {
        PartitionWatermark {
            watermark_ms: self.clock.watermark(config.max_out_of_orderness),
            idle: self.opinion(config, now) == Opinion::Idle,
            finished: self.clock.finished,
            job_watermark_ms: job.ms(),
            lag_ms: self.source.lag_ms(),
        }
    }

    fn opinion(&self, config: &IngestConfig, now: Instant) -> Opinion {
        if self.clock.finished && !self.successors.is_empty() {
            // Until the end of this activation, when its successors are expected on the board.
            self.last_watermark(config)
        } else if self.clock.finished {
            Opinion::Finished
        } else if !self.source.is_replay()
            && now.duration_since(self.last_activity) >= Duration::from_millis(config.idle_timeout)
        {
            Opinion::Idle
        } else {
            match self.clock.watermark(config.max_out_of_orderness) {
                None => Opinion::Undefined,
                Some(wm) => Opinion::At(wm),
            }
        }
    }
}

/// Ingest's state on one worker: its partitions, the job watermark, and saved positions.
struct IngestState {
    partitions: Vec<Partition>,
    /// Partitions of this worker that ended (a checkpoint records them as done).
    ended: Vec<PartitionCheckpoint>,
    job_watermark: Watermark,
    /// Restored positions not yet claimed by a partition of this worker, by name.
    restored: FastMap<String, PartitionCheckpoint>,
    /// What the last checkpoint holds of each partition this worker read, and of its watermark:
    /// only what differs is written again.
    saved: FastMap<String, PartitionCheckpoint>,
    saved_watermark: Option<Watermark>,
}

impl IngestState {
    fn add(&mut self, source: Box<dyn RecordSource>, now: Instant, board: &mut BoardPublisher) {
        let mut partition = Partition::new(source, now);
        board.claim(partition.source.name());
        if let Some(saved) = self.restored.remove(partition.source.name()) {
            partition.clock.max_ts = saved.max_ts;
            partition.last_position = saved.position;
        }
        self.partitions.push(partition);
    }
}

/// Every partition's position as a broadcast entry named by the partition (partitions are placed
/// by the job, not by a route), so every restored worker knows every position; an entry stays in
/// the checkpoint until its partition is read again, so a partition that comes back late (a
/// Kinesis shard awaiting discovery) still finds it. The job watermark as one entry per worker
/// and run; a restore takes the largest.
impl Checkpointed for IngestState {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        let current = self
            .partitions
            .iter()
            .map(|partition| PartitionCheckpoint {
                partition: partition.source.name().to_string(),
                position: partition.last_position.clone(),
                max_ts: partition.clock.max_ts,
                finished: partition.clock.finished,
            })
            .chain(self.ended.iter().cloned());
        for position in current {
            if self.saved.get(&position.partition) != Some(&position) {
                out.put(
                    Placement::Broadcast,
                    &IngestKey::Partition(position.partition.clone()),
                    &position,
                )?;
                self.saved.insert(position.partition.clone(), position);
            }
        }
        if self.saved_watermark != Some(self.job_watermark) {
            let key = IngestKey::Watermark {
                run: out.run(),
                worker: out.worker(),
            };
            out.put(Placement::Broadcast, &key, &self.job_watermark)?;
            self.saved_watermark = Some(self.job_watermark);
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        match entry.key::<IngestKey>()? {
            IngestKey::Partition(name) => {
                let saved: PartitionCheckpoint = entry.value()?;
                self.restored.insert(name, saved);
            }
            IngestKey::Watermark { .. } => {
                let watermark: Watermark = entry.value()?;
                self.job_watermark = self.job_watermark.max(watermark);
            }
        }
        Ok(())
    }

    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        // What is restored is what the store holds.
        self.saved = self.restored.clone();
        Ok(())
    }

    fn size(&self) -> StateSize {
        StateSize {
            bytes: ((self.partitions.len() + self.ended.len() + self.restored.len())
                * std::mem::size_of::<PartitionCheckpoint>()) as u64,
            entries: (self.partitions.len() + self.ended.len()) as u64,
        }
    }
}

/// Reads `sources` on this worker and emits what they contain, in arrival order.
///
/// `board` writes into this worker's replica of the board, which must have been created with one
/// opinion per worker of the job (each worker's [`WorkerSources::initial_opinion`]), and tells
/// the other workers (see [`crate::watermark_exchange`]). Partitions that the sources' feed adds later are read from
/// the activation that finds them on; finished partitions are dropped.
pub fn ingest<'scope>(
    scope: Scope<'scope, u64>,
    sources: WorkerSources,
    mut board: BoardPublisher,
    config: IngestConfig,
    stats: Arc<JobStats>,
    states: &OperatorStates,
) -> StreamVec<'scope, u64, Ingested> {
    let worker = scope.index();
    let state = states.attach(
        INGEST_STATE,
        IngestState {
            partitions: Vec::new(),
            ended: Vec::new(),
            job_watermark: Watermark::MinusInfinity,
            restored: FastMap::default(),
            saved: FastMap::default(),
            saved_watermark: None,
        },
    );
    let states = states.clone();
    source(scope, "Ingest", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let start = Instant::now();
        let WorkerSources {
            partitions: initial,
            mut feed,
        } = sources;
        for source in initial {
            state.borrow_mut().add(source, start, &mut board);
        }
        let mut added: Vec<Box<dyn RecordSource>> = Vec::new();
        let mut capability = Some(capability);
        let mut buffer: Vec<RawRecord> = Vec::new();
        let mut out: Vec<Ingested> = Vec::new();
        // When the partitions' watermarks were last shown on the board (for operators).
        let mut reported: Option<Instant> = None;

        move |output| {
            if states.is_paused() {
                // A checkpoint is being taken: read nothing, so every position stays put.
                activator.activate_after(config.poll_interval);
                return;
            }
            let Some(cap) = capability.as_mut() else {
                return;
            };
            let mut state = state.borrow_mut();
            let now = Instant::now();
            // Read before the poll: when it says done, the first discovery's partitions are in.
            let discovering = feed.as_ref().is_some_and(|feed| feed.is_discovering())
                && now.duration_since(start) < Duration::from_millis(config.idle_timeout);
            if let Some(feed) = feed.as_mut() {
                feed.poll_new(&mut added);
                for source in added.drain(..) {
                    state.add(source, now, &mut board);
                }
            }
            let IngestState {
                partitions,
                ended,
                job_watermark,
                ..
            } = &mut *state;
            // While more partitions may come, this worker is at least idle, never finished; while
            // the first ones are still being found, it holds the watermark (see
            // `PartitionFeed::is_discovering`).
            let feed_open = feed.as_ref().is_some_and(|feed| !feed.is_closed());
            let waiting = if discovering {
                Some(Opinion::Undefined)
            } else {
                feed_open.then_some(Opinion::Idle)
            };
            let others = board.board().others(worker);
            let mut more_ready = false;

            let ahead_of = match (config.alignment, *job_watermark) {
                (Some(lead), Watermark::At(wm)) => Some(wm.saturating_add(lead)),
                _ => None,
            };
            let mut held_back = false;
            for index in 0..partitions.len() {
                if partitions[index].clock.finished || partitions[index].failed {
                    continue;
                }
                if let (Some(limit), Some(own)) = (
                    ahead_of,
                    partitions[index]
                        .clock
                        .watermark(config.max_out_of_orderness),
                ) && own > limit
                {
                    // Far enough ahead: wait for the others (not idle: it has records).
                    partitions[index].last_activity = now;
                    held_back = true;
                    continue;
                }
                buffer.clear();
                let status = match partitions[index].source.poll(config.batch, &mut buffer) {
                    Ok(status) => status,
                    Err(error) if error.retryable => {
                        // The source retries; a failure here just means "nothing now".
                        tracing::warn!(
                            partition = partitions[index].source.name(),
                            "reading the partition failed; it is tried again: {error}"
                        );
                        PollStatus::Pending
                    }
                    Err(error) => {
                        let name = partitions[index].source.name();
                        tracing::error!(partition = name, "reading the partition failed: {error}");
                        stats.fail_source(format!("partition `{name}` cannot be read: {error}"));
                        partitions[index].failed = true;
                        partitions[index].clock.finished = config.end_on_failure;
                        PollStatus::Pending
                    }
                };
                let blank = partitions[index].source.blank_lines();
                stats.blank_lines.fetch_add(
                    blank - partitions[index].blank_lines_reported,
                    Ordering::Relaxed,
                );
                partitions[index].blank_lines_reported = blank;
                if let Some(last) = buffer.last() {
                    partitions[index].last_activity = now;
                    partitions[index].last_position = Some(last.position.position.clone());
                }
                stats
                    .records_in
                    .fetch_add(buffer.len() as u64, Ordering::Relaxed);

                for record in buffer.drain(..) {
                    if let Some(why) = record.corrupt {
                        stats.dead_letter(Reason::CorruptAggregate);
                        let detail = format!(
                            "the Kinesis record is a KPL aggregate that cannot be unpacked ({why}); none of its user records were counted: check the producer's KPL version and settings, then replay the bytes kept here"
                        );
                        out.push(Ingested::DeadLetter(DeadLetter::new(
                            Reason::CorruptAggregate,
                            detail,
                            record.position,
                            &record.bytes,
                        )));
                        continue;
                    }
                    let view = match validate(&record.bytes) {
                        Ok(view) => view,
                        Err(invalid) => {
                            stats.dead_letter(invalid.reason);
                            out.push(Ingested::DeadLetter(DeadLetter::new(
                                invalid.reason,
                                invalid.detail,
                                record.position,
                                &record.bytes,
                            )));
                            continue;
                        }
                    };
                    stats.valid.fetch_add(1, Ordering::Relaxed);
                    // The job watermark before this record is counted (SEMANTICS: judged first).
                    let local = combine(
                        partitions
                            .iter()
                            .map(|p| p.opinion(&config, now))
                            .chain(waiting),
                    );
                    *job_watermark = (*job_watermark)
                        .max(to_watermark(combine([local, others]), *job_watermark));
                    if job_watermark.is_late(view.ts) {
                        stats.dead_letter(Reason::Late);
                        let detail = format!(
                            "event time ts={} is below the job watermark {}: it arrived more than max_out_of_orderness after newer events; raise max_out_of_orderness if such delays are normal",
                            view.ts,
                            job_watermark.ms().unwrap_or_default()
                        );
                        let mut letter =
                            DeadLetter::new(Reason::Late, detail, record.position, &record.bytes);
                        letter.portal = Some(view.portal.to_string());
                        letter.ts = Some(view.ts);
                        out.push(Ingested::DeadLetter(letter));
                    } else if config.keep_details {
                        out.push(Ingested::Detailed(DetailedEvent {
                            event: CompactEvent::from(&view),
                            details: PageviewDetails::from_valid_record(&record.bytes),
                        }));
                    } else {
                        out.push(Ingested::Event(CompactEvent::from(&view)));
                    }
                    partitions[index].clock.observe(view.ts);
                    if config.keep_raw {
                        let (portal, ts) = (view.portal.to_string(), view.ts);
                        out.push(Ingested::Raw(RawValid {
                            portal,
                            ts,
                            bytes: record.bytes,
                        }));
                    }
                }
                match status {
                    PollStatus::Ready => more_ready = true,
                    PollStatus::Pending => {}
                    PollStatus::Finished => {
                        partitions[index].clock.finished = true;
                        partitions[index].successors = partitions[index].source.successors();
                    }
                }
            }

            if !out.is_empty() {
                output.session(&*cap).give_iterator(out.drain(..));
            }

            // Closed shards and ended files are dropped: they never hold the watermark back again.
            let report = reported.is_none_or(|at| now.duration_since(at) >= REPORT_INTERVAL);
            if report {
                reported = Some(now);
            }
            partitions.retain(|p| {
                if report || p.clock.finished {
                    board.report_partition(p.source.name(), p.report(&config, now, *job_watermark));
                }
                if p.clock.finished && !p.successors.is_empty() {
                    // The children of a shard may reach a worker only later: until then they
                    // hold the watermark where their parent stood (an idle partition's time at
                    // most), so that none of their records is late for the gap.
                    board.expect_successors(
                        p.successors.clone(),
                        p.last_watermark(&config),
                        Duration::from_millis(config.idle_timeout),
                    );
                }
                if p.clock.finished {
                    ended.push(PartitionCheckpoint {
                        partition: p.source.name().to_string(),
                        position: p.last_position.clone(),
                        max_ts: p.clock.max_ts,
                        finished: true,
                    });
                }
                !p.clock.finished
            });
            let local = combine(
                partitions
                    .iter()
                    .map(|p| p.opinion(&config, Instant::now()))
                    .chain(waiting),
            );
            let published = board.publish(local);
            *job_watermark = (*job_watermark).max(published);
            if let Watermark::At(wm) = *job_watermark
                && stats.watermark_ms.fetch_max(wm, Ordering::Relaxed) < wm
            {
                // The first time the job watermark reaches `wm`: the arrival of what closed it.
                stats
                    .watermark_arrivals
                    .record(wm, crate::clock::unix_now_ms());
            }
            match *job_watermark {
                Watermark::PlusInfinity => {
                    capability = None;
                    board.close();
                    return;
                }
                Watermark::At(wm) => {
                    let tick = wm - wm % config.slide;
                    if tick > *cap.time() {
                        cap.downgrade(&tick);
                    }
                }
                Watermark::MinusInfinity => {}
            }
            if matches!(local, Opinion::Finished) && partitions.is_empty() && !feed_open {
                // Nothing more will come from here; other workers' capabilities hold the frontier.
                capability = None;
                board.close();
            } else if more_ready {
                activator.activate();
            } else if held_back {
                // The partitions behind are read elsewhere: look again soon.
                activator.activate_after(Duration::from_millis(1));
            } else {
                activator.activate_after(config.poll_interval);
            }
        }
    })
}

fn to_watermark(opinion: Opinion, current: Watermark) -> Watermark {
    match opinion {
        Opinion::Undefined => Watermark::MinusInfinity,
        Opinion::At(wm) => Watermark::At(wm),
        Opinion::Idle => current,
        Opinion::Finished => Watermark::PlusInfinity,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::algorithms::graph::GraphOptions;
    use crate::algorithms::replay::replay;
    use crate::config::SemanticsConfig;
    use crate::event::RawRecord;
    use crate::source::{PollStatus, RecordSource, SourceError, SourcesByWorker, VecSource};
    use crate::test_support::pageview_line;

    /// `(partition, newest event time in the batch)` for every non-empty poll, in poll order.
    type PollLog = Arc<Mutex<Vec<(&'static str, u64)>>>;

    /// A partition over in-memory lines that logs each poll's newest event time.
    struct LoggedPartition {
        label: &'static str,
        inner: VecSource,
        times: std::collections::VecDeque<u64>,
        log: PollLog,
    }

    impl RecordSource for LoggedPartition {
        fn name(&self) -> &str {
            self.inner.name()
        }

        fn poll(
            &mut self,
            max: usize,
            out: &mut Vec<RawRecord>,
        ) -> Result<PollStatus, SourceError> {
            let before = out.len();
            let status = self.inner.poll(max, out)?;
            let read = out.len() - before;
            if let Some(newest) = self.times.drain(..read).max() {
                self.log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((self.label, newest));
            }
            Ok(status)
        }

        fn is_replay(&self) -> bool {
            true
        }
    }

    /// Two partitions over the same ten minutes: `dense` with 100 events a second, `sparse` with
    /// 10. Read in equal batches, the sparse one runs minutes ahead in event time.
    fn partitions(log: &PollLog) -> SourcesByWorker {
        let partition = |label: &'static str, per_second: u64| {
            let times: Vec<u64> = (0..600 * per_second)
                .map(|i| 1_000_000 + i * 1000 / per_second)
                .collect();
            let lines = times.iter().enumerate().map(|(i, &ts)| {
                pageview_line(
                    &format!("{label}{i}"),
                    "g1",
                    &format!("u{}", i % 50),
                    "a",
                    ts,
                    0,
                    0,
                )
            });
            Box::new(LoggedPartition {
                label,
                inner: VecSource::from_lines(&format!("file:{label}"), lines),
                times: times.into(),
                log: Arc::clone(log),
            }) as Box<dyn RecordSource>
        };
        vec![vec![partition("dense", 100), partition("sparse", 10)]]
    }

    /// The furthest the sparse partition had been read ahead of the dense one when it was polled.
    fn largest_lead(alignment: Option<u64>) -> u64 {
        let log = PollLog::default();
        let options = GraphOptions {
            watermark_alignment: alignment,
            ..GraphOptions::default()
        };
        let output = replay(&SemanticsConfig::default(), partitions(&log), &options).unwrap();
        assert!(output.dead_letters.is_empty(), "{:?}", output.dead_letters);
        let log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut dense, mut sparse) = (0u64, 0u64);
        let mut lead = 0;
        for &(label, newest) in log.iter() {
            if label == "sparse" {
                // Polled again while already `sparse - dense` ahead.
                lead = lead.max(sparse.saturating_sub(dense));
                sparse = sparse.max(newest);
            } else {
                dense = dense.max(newest);
            }
        }
        lead
    }

    #[test]
    fn a_partition_ahead_waits_for_the_job_watermark() {
        let config = SemanticsConfig::default();
        let alignment = 60_000;
        let aligned = largest_lead(Some(alignment));
        // Held once its own watermark is `alignment` past the job watermark; the dense partition
        // sets that, `max_out_of_orderness` behind its newest event time.
        assert!(
            aligned <= alignment + config.max_out_of_orderness.ms(),
            "aligned: polled {aligned} ms ahead"
        );
        let free = largest_lead(None);
        assert!(
            free > 2 * alignment,
            "without alignment the sparse partition should run ahead; it ran {free} ms ahead"
        );
    }

    /// Ten records with failures after the fifth: for good (`retryable` false) or three that go
    /// away.
    struct FailingPartition {
        inner: VecSource,
        retryable: bool,
        failures_left: u32,
        polled: u32,
    }

    impl RecordSource for FailingPartition {
        fn name(&self) -> &str {
            "file:failing"
        }

        fn poll(
            &mut self,
            max: usize,
            out: &mut Vec<RawRecord>,
        ) -> Result<PollStatus, SourceError> {
            // Five records, then the failures, then the rest.
            if self.polled > 0 && self.failures_left > 0 {
                self.failures_left -= 1;
                return Err(SourceError {
                    message: "the disk went away".to_string(),
                    retryable: self.retryable,
                });
            }
            self.polled += 1;
            self.inner.poll(max.min(5), out)
        }

        fn is_replay(&self) -> bool {
            true
        }
    }

    fn failing(retryable: bool) -> SourcesByWorker {
        let lines = (0..10u64)
            .map(|i| pageview_line(&format!("e{i}"), "g1", "u", "a", 1_000_000 + i, 0, 0));
        vec![vec![Box::new(FailingPartition {
            inner: VecSource::from_lines("file:failing", lines),
            retryable,
            failures_left: 3,
            polled: 0,
        }) as Box<dyn RecordSource>]]
    }

    #[test]
    fn a_partition_that_fails_for_good_ends_a_replay_with_its_error() {
        let config = SemanticsConfig::default();
        let options = GraphOptions::default();
        match replay(&config, failing(false), &options) {
            Ok(output) => panic!("a failed partition gave results: {:?}", output.stats),
            Err(error) => {
                let message = error.to_string();
                assert!(message.contains("file:failing"), "{message}");
                assert!(message.contains("the disk went away"), "{message}");
            }
        }
        // A failure that goes away is retried: every record is read.
        let output = replay(&config, failing(true), &options).unwrap();
        assert_eq!(output.stats.records, 10);
    }
}
