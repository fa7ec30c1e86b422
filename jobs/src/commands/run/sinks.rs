//! The job's sinks: the thread that takes everything the timely workers emit and delivers it.
//!
//! The workers [`forward`] their output streams into one bounded channel of [`SinkMessage`]s; the
//! [`SinkThread`] drains it and
//!
//! - writes features, dead letters and the raw archive to the [`JobOutputs`] (local files, or
//!   Kinesis + Firehose: [`job_outputs`]);
//! - hands final features and counted events to the curated lake ([`CuratedSink`]), which
//!   pre-commits them at each checkpoint and makes them visible once it is committed;
//! - applies rankings and related lists to the serving state (recording their event → visible and
//!   arrival → visible latencies), and records readers' recent articles (and offers them to
//!   Personalize, when configured);
//! - counts each feature written and its event → feature latency;
//! - assembles the workers' checkpoint parts: once every worker's part is in, the outputs are
//!   flushed (everything before the checkpoint is delivered before it may be committed) and the
//!   checkpoint is handed to the [`CheckpointDriver`] with the serving state's changes;
//! - mirrors the dataflow's counters into the Prometheus metrics every half second.
//!
//! The channel is bounded ([`SINK_CHANNEL_BATCHES`]): when the sink falls behind, the workers block
//! on it and stop reading their sources, so memory stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pageflow_connectors::firehose_sink::FirehoseArchive;
use pageflow_connectors::kinesis::sink::KinesisStream;
use pageflow_dataflow::checkpoint::{ChangeWriter, WorkerCheckpoint};
use pageflow_dataflow::event::{CompactEvent, DeadLetter, DetailedEvent, Reason};
use pageflow_dataflow::features::Feature;
use pageflow_dataflow::live::LiveUpdate;
use pageflow_dataflow::operators::ingest::RawValid;
use pageflow_dataflow::stats::{JobStats, StatsSnapshot};
use timely::ExchangeData;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;

use super::curated::CuratedSink;
use super::personalize::PersonalizeFeed;
use crate::checkpoints::{CheckpointDriver, PartsInbox, ToWrite};
use crate::config::{JobConfig, SinksKind};
use crate::outputs::{AwsOutputs, JobOutputs, LocalOutputs, LocalRetention};
use pageflow_metrics::Metrics;
use pageflow_serve::ServingState;
use pageflow_serve::personalize::personalize_event;
use pageflow_serve::state::SERVING_STATE;

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
    /// The events this process's workers counted: the Personalize event trackers, and (one
    /// process) readers' recent articles.
    Accepted(Vec<CompactEvent>),
    /// The events every process counted (a cluster): readers' recent articles, which every
    /// process serves.
    Reads(Vec<CompactEvent>),
    /// The counted events with their optional fields, for the curated lake's `pageviews`.
    Pageviews(Vec<DetailedEvent>),
    /// One worker's part of a checkpoint: everything sent before it belongs to the checkpoint.
    Checkpoint(WorkerCheckpoint),
}

/// Batches buffered between the workers and the sink before the workers wait.
const SINK_CHANNEL_BATCHES: usize = 256;

/// The channel from the workers to the sink thread.
pub(super) fn sink_channel() -> (SyncSender<SinkMessage>, Receiver<SinkMessage>) {
    sync_channel(SINK_CHANNEL_BATCHES)
}

/// The sink thread's outputs, from the configuration.
pub(super) fn job_outputs(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    metrics: &Arc<Metrics>,
) -> Result<Box<dyn JobOutputs>> {
    let sinks = &config.sinks;
    match sinks.kind {
        SinksKind::Local => Ok(Box::new(LocalOutputs::with_retention(
            &sinks.dir,
            sinks.archive,
            LocalRetention {
                policy: sinks.retention.policy(),
                roll: sinks.retention.roll(),
            },
            Some(Arc::clone(metrics)),
        )?)),
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

/// Sends every batch of a stream to the sink thread (blocking when it is full: backpressure).
pub(super) fn forward<'scope, D: Clone + 'static>(
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

/// Like [`forward`], for what every process of a cluster serves: each record goes to the first
/// worker of every process (through the dataflow, so a checkpoint's drain covers it), which
/// sends it to its own sink thread. Updates of one key come from one worker and keep their order.
pub(super) fn forward_to_every_process<'scope, D: ExchangeData + Clone>(
    stream: timely::dataflow::StreamVec<'scope, u64, D>,
    processes: usize,
    threads: usize,
    sender: SyncSender<SinkMessage>,
    wrap: fn(Vec<D>) -> SinkMessage,
) {
    stream
        .flat_map(move |record| (0..processes).map(move |process| (process, record.clone())))
        .sink(
            Exchange::new(move |(process, _): &(usize, D)| (process * threads) as u64),
            "ForwardToEveryProcess",
            move |(input, _frontier)| {
                input.for_each(|_cap, data| {
                    let records = data.drain(..).map(|(_, record)| record).collect();
                    // A closed channel means the job is stopping: the records are dropped with it.
                    let _ = sender.send(wrap(records));
                });
            },
        );
}

/// Where the sink thread sends a checkpoint once every worker's part of it is in.
#[derive(Debug)]
pub(super) struct CheckpointParts {
    /// Writes checkpoints to the store.
    pub driver: Arc<CheckpointDriver>,
    /// Collects the workers' parts of each checkpoint.
    pub inbox: PartsInbox,
    /// The run the serving state's changes belong to (the first checkpoint id of this run).
    pub run: u64,
    /// This process saves the serving state (one process, or process 0 of a cluster: every
    /// process holds the same).
    pub saves_serving: bool,
}

/// The sink thread's whole context, moved into the thread at its start.
pub(super) struct SinkThread {
    /// What the workers emit.
    pub receiver: Receiver<SinkMessage>,
    /// Where features, dead letters and the archive go.
    pub outputs: Box<dyn JobOutputs>,
    /// The live state served over HTTP.
    pub serving: Arc<ServingState>,
    /// The metrics the dataflow's counters are mirrored into.
    pub metrics: Arc<Metrics>,
    /// What the workers count.
    pub stats: Arc<JobStats>,
    /// Set when the job stops.
    pub stop: Arc<AtomicBool>,
    /// Assembling checkpoints, when they are on.
    pub checkpoints: Option<CheckpointParts>,
    /// Forwarding counted events to Personalize, when configured.
    pub personalize: Option<PersonalizeFeed>,
    /// Readers' recent articles come from every process ([`SinkMessage::Reads`]), not from
    /// this process's counted events (a cluster).
    pub reads_from_every_process: bool,
    /// The curated lake, when `[sinks] curated` is on.
    pub curated: Option<CuratedSink>,
}

impl SinkThread {
    /// Starts the thread; it ends when the workers have all finished (the input has ended), when
    /// `stop` is set, or with the first error of the outputs.
    pub(super) fn spawn(self) -> Result<JoinHandle<Result<()>>> {
        std::thread::Builder::new()
            .name("pageflow-sink".into())
            .spawn(move || self.run())
            .context("cannot start the sink thread")
    }

    fn run(mut self) -> Result<()> {
        let mut mirrored = StatsSnapshot::default();
        let mut last_mirror = Instant::now();
        // After the final checkpoint of a graceful stop, whatever the dataflow still emits is
        // after the checkpoint: a restart emits it again, so it is not written now (no duplicates).
        let mut after_final = false;
        while !self.stop.load(Ordering::SeqCst) {
            match self.receiver.recv_timeout(Duration::from_millis(100)) {
                Ok(SinkMessage::Checkpoint(part)) => after_final |= self.checkpoint_part(part)?,
                Ok(_) if after_final => {}
                Ok(SinkMessage::Features(features)) => {
                    self.outputs.features(&features)?;
                    if let Some(curated) = &mut self.curated {
                        curated.features(&features);
                    }
                    // Counted once written (handed to the AWS sink's batch, in AWS mode), with
                    // their event → feature latency.
                    for feature in &features {
                        self.metrics.record_feature(feature);
                    }
                }
                Ok(SinkMessage::DeadLetters(letters)) => self.outputs.dead_letters(&letters)?,
                Ok(SinkMessage::Raw(records)) => self.outputs.raw(&records)?,
                Ok(SinkMessage::Live(updates)) => {
                    for update in updates {
                        let watermark = pageflow_metrics::ranking_watermark(&update);
                        self.serving.apply(update);
                        self.ranking_visible(watermark);
                    }
                }
                Ok(SinkMessage::Accepted(events)) => self.accepted(&events),
                Ok(SinkMessage::Reads(events)) => self.record_reads(&events),
                Ok(SinkMessage::Pageviews(events)) => {
                    if let Some(curated) = &mut self.curated {
                        curated.pageviews(&events);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every worker has finished: the input has ended.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.outputs.tick()?;
            if let Some(curated) = &mut self.curated {
                let driver = self.checkpoints.as_ref().map(|c| &*c.driver);
                curated.tick(driver, self.stats.watermark_ms.load(Ordering::Relaxed))?;
            }
            if last_mirror.elapsed() >= Duration::from_millis(500) {
                mirror_stats(&self.stats, &mut mirrored, &self.metrics, &self.serving);
                last_mirror = Instant::now();
            }
        }
        self.outputs.flush()?;
        if let Some(curated) = &mut self.curated {
            let driver = self.checkpoints.as_ref().map(|c| &*c.driver);
            curated.finish(driver, self.stats.watermark_ms.load(Ordering::Relaxed))?;
        }
        mirror_stats(&self.stats, &mut mirrored, &self.metrics, &self.serving);
        Ok(())
    }

    /// Adds one worker's part of a checkpoint; once all are in, delivers everything before it and
    /// hands the checkpoint to the driver. Returns whether that was the final checkpoint.
    fn checkpoint_part(&mut self, part: WorkerCheckpoint) -> Result<bool> {
        let Some(CheckpointParts {
            driver,
            inbox,
            run,
            saves_serving,
        }) = self.checkpoints.as_mut()
        else {
            return Ok(false);
        };
        let Some(parts) = inbox.add(part) else {
            return Ok(false);
        };
        // Everything before the checkpoint is delivered before it may be committed.
        self.outputs.flush()?;
        let watermark_ms = self.stats.watermark_ms.load(Ordering::Relaxed);
        // The curated rows before it are pre-committed (pending files of this checkpoint).
        if let Some(curated) = &mut self.curated {
            curated.precommit(parts.id, watermark_ms)?;
        }
        let is_final = parts.is_final;
        let mut changes = Vec::new();
        if *saves_serving {
            let mut writer = ChangeWriter::new(SERVING_STATE, 0, *run, &mut changes);
            if let Err(error) = self.serving.save_changes(&mut writer) {
                tracing::error!("cannot save the serving state: {error}");
            }
        }
        driver.write(ToWrite {
            parts,
            serving: changes,
            watermark_ms,
        });
        Ok(is_final)
    }

    /// This process's counted events: the Personalize event trackers (each event is offered
    /// by the one process that counted it), and readers' recent articles unless those come
    /// from every process.
    fn accepted(&self, events: &[CompactEvent]) {
        if !self.reads_from_every_process {
            self.record_reads(events);
        }
        if let Some(feed) = &self.personalize {
            // Never waits: a full queue drops the event and counts it.
            for sent in events
                .iter()
                .filter_map(|e| personalize_event(&feed.trackers, e))
            {
                feed.forwarder.offer(sent);
            }
        }
    }

    /// Records the latencies of a ranking just made visible (`watermark`; `None` for another
    /// update): event time → visible, and arrival → visible, from when the job watermark first
    /// reached the ranking's (recorded by ingest; a watermark too old to be found is skipped).
    fn ranking_visible(&self, watermark: Option<u64>) {
        let Some(watermark) = watermark else {
            return;
        };
        let now = pageflow_dataflow::clock::unix_now_ms();
        self.metrics.record_ranking_visible_at(watermark, now);
        if let Some(arrived) = self.stats.watermark_arrivals.reached_at(watermark) {
            self.metrics.record_arrival_to_visible_at(arrived, now);
        }
    }

    /// Readers' recent articles, served by `/v1/recommendations` and its fallback.
    fn record_reads(&self, events: &[CompactEvent]) {
        let reads = self.serving.recent_reads();
        for event in events {
            reads.record_article(event.article, &event.user_id, event.ts);
        }
    }
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
