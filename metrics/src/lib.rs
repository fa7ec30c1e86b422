//! Operational metrics of the job, rendered in the Prometheus text format.
//!
//! A [`Metrics`] is a small hand-written registry: a fixed set of counters and gauges kept in
//! atomics, so that the dataflow workers can update them without locks while the HTTP side renders
//! them for `GET /metrics`. There is no global registry: the binary creates one `Arc<Metrics>` and
//! hands clones to whoever reports or serves.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `pageflow_events_in_total` | counter | records read from the sources (valid or not) |
//! | `pageflow_events_accepted_total` | counter | valid, on-time, de-duplicated events counted |
//! | `pageflow_dead_letters_total{reason}` | counter | records sent to the dead-letter output, one series per reason code |
//! | `pageflow_duplicates_total` | counter | valid on-time events dropped as duplicate beacons |
//! | `pageflow_blank_lines_total` | counter | empty or whitespace-only lines skipped |
//! | `pageflow_features_emitted_total{type}` | counter | feature records emitted (`session`, `popular`, `trending`, `related`) |
//! | `pageflow_watermark_ms` | gauge | the job's watermark (event time, ms since the epoch); absent until there is one |
//! | `pageflow_watermark_delay_ms` | gauge | wall clock minus watermark, computed when rendered |
//! | `pageflow_events_per_second` | gauge | records read per second over the last ~10 s |
//! | `pageflow_live_keys` | gauge | keys held in live state (open sessions, windows …), as set by the job |
//! | `pageflow_heap_bytes` | gauge | live heap of the process: bytes allocated and not freed (see [`crate::heap`]; 0 when the counting allocator is not installed) |
//! | `pageflow_sink_records_total{sink}` | counter | records written by the AWS sinks (`kinesis`, `firehose_raw`, `firehose_processed`, `firehose_dead_letter`) |
//! | `pageflow_sink_retention_deleted_files_total` / `_bytes_total` | counter | closed local sink files (and their bytes) deleted by `[sinks.retention]` |
//! | `pageflow_sink_retried_total{sink}` | counter | entries the AWS sinks had to send again (partial failures, throttling) |
//! | `pageflow_kinesis_shards{state}` | gauge | shards being read (`reading`) and read to their end (`finished`) |
//! | `pageflow_kinesis_millis_behind_latest{stream,shard}` | gauge | how far behind the tip of each shard being read the consumer is |
//! | `pageflow_kinesis_iterator_age_ms{stream,shard}` | gauge | age of the newest record of the last batch read from each shard (0 when caught up) |
//! | `pageflow_kinesis_records_total{stream,shard}` | counter | user records read from each shard |
//! | `pageflow_kinesis_listings_total` | counter | completed `ListShards` discoveries |
//! | `pageflow_recommendations_total{personalize}` | counter | recommendation answers, by what Personalize did (`ok`, `not_configured`, `timeout`, `throttled`, `not_found`, `invalid_input`, `error`, `breaker_open`) |
//! | `pageflow_personalize_events_total{outcome}` | counter | pageviews offered to the Personalize event trackers and what became of them (`offered`, `sent`, `failed`, `dropped_queue_full`, `dropped_invalid`, `dropped_closed`) |
//! | `pageflow_personalize_calls_total{result}` | counter | `PutEvents` calls `sent` and `retried` |
//!
//! `pageflow_events_per_second` is derived from samples of `pageflow_events_in_total`: every render
//! takes a sample, and [`Metrics::spawn_rate_sampler`] (or calls to [`Metrics::sample_rate`]) add one
//! per period so that the rate stays fresh between scrapes. The rate is the increase between the
//! oldest and the newest sample of the last [`RATE_WINDOW`] (the oldest sample kept is the newest one
//! at least that old, so a single scrape every 15 s still gives a rate).

pub mod checkpoint_history;
pub mod heap;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pageflow_connectors::kinesis::consumer::ConsumerStatus;
use pageflow_connectors::personalize::{EventForwarder, ForwarderStats};
use pageflow_dataflow::event::Reason;
use pageflow_dataflow::features::Feature;

/// The `Content-Type` of [`Metrics::render_prometheus`]: the text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The span over which `pageflow_events_per_second` is averaged.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The feature types, in the order they are rendered (the `type` label values).
pub const FEATURE_TYPES: [&str; 4] = ["session", "popular", "trending", "related"];

/// Marks "no watermark yet" in the watermark atomic.
const NO_WATERMARK: u64 = 0;
/// The stored watermark is the real one plus this, so that 0 can mean "none".
const WATERMARK_OFFSET: u64 = 1;

/// The job's counters and gauges. Cheap to update from any thread; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    events_in: AtomicU64,
    events_accepted: AtomicU64,
    dead_letters: [AtomicU64; Reason::ALL.len()],
    duplicates: AtomicU64,
    blank_lines: AtomicU64,
    retention_deleted_files: AtomicU64,
    retention_deleted_bytes: AtomicU64,
    features_emitted: [AtomicU64; FEATURE_TYPES.len()],
    /// `watermark + 1`, saturating, or [`NO_WATERMARK`].
    watermark: AtomicU64,
    live_keys: AtomicU64,
    /// `f64` bits of the last computed rate.
    events_per_second: AtomicU64,
    /// `(when, events_in)` samples, oldest first.
    rate_samples: Mutex<VecDeque<(Instant, u64)>>,
    /// Records written and entries re-sent per AWS sink, in [`SINKS`] order.
    sink_records: [AtomicU64; SINKS.len()],
    sink_retried: [AtomicU64; SINKS.len()],
    /// The Kinesis consumer's per-shard state, when the source is Kinesis.
    kinesis: Mutex<Option<Arc<ConsumerStatus>>>,
    /// What the last checkpoints did.
    checkpoints: Mutex<CheckpointFigures>,
    /// Each operator's state (summed over workers) as last reported: `(bytes, keys)`.
    state: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    /// Recommendation answers by Personalize outcome, in [`RECOMMENDATION_OUTCOMES`] order.
    recommendations: [AtomicU64; RECOMMENDATION_OUTCOMES.len()],
    /// The Personalize event forwarder, when events are forwarded.
    personalize_events: Mutex<Option<Arc<EventForwarder>>>,
    /// When this registry was created (the job's start), for [`Metrics::uptime`].
    started: Instant,
}

/// The figures of the checkpoints taken so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointFigures {
    /// Checkpoints committed.
    pub completed: u64,
    /// Checkpoints that failed (not committed).
    pub failed: u64,
    /// The last committed checkpoint's id.
    pub last_id: Option<u64>,
    /// When it was committed (ms since the epoch).
    pub last_success_ms: Option<u64>,
    /// From request to commit (pause, sink flush, write), seconds.
    pub last_duration_s: f64,
    /// The longest any worker's dataflow stood still for it, seconds.
    pub last_pause_s: f64,
    /// Of which saving operator state (the rest drained records in flight), seconds.
    pub last_save_s: f64,
    /// Bytes written by the last committed checkpoint (its delta run).
    pub last_size_bytes: u64,
    /// Bytes of every run the last committed checkpoint's state is made of.
    pub stored_bytes: u64,
    /// Bytes of state in memory by operator, when the last checkpoint was taken.
    pub state_bytes: std::collections::BTreeMap<String, u64>,
    /// Keys held by operator, when the last checkpoint was taken.
    pub state_entries: std::collections::BTreeMap<String, u64>,
}

/// What Personalize did for a recommendation answer, as the `personalize` label names it.
pub const RECOMMENDATION_OUTCOMES: [&str; 8] = [
    "ok",
    "not_configured",
    "timeout",
    "throttled",
    "not_found",
    "invalid_input",
    "error",
    "breaker_open",
];

/// The AWS sinks, as the `sink` label names them.
pub const SINKS: [&str; 4] = [
    "kinesis",
    "firehose_raw",
    "firehose_processed",
    "firehose_dead_letter",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            events_in: AtomicU64::new(0),
            events_accepted: AtomicU64::new(0),
            dead_letters: std::array::from_fn(|_| AtomicU64::new(0)),
            duplicates: AtomicU64::new(0),
            blank_lines: AtomicU64::new(0),
            retention_deleted_files: AtomicU64::new(0),
            retention_deleted_bytes: AtomicU64::new(0),
            features_emitted: std::array::from_fn(|_| AtomicU64::new(0)),
            watermark: AtomicU64::new(NO_WATERMARK),
            live_keys: AtomicU64::new(0),
            events_per_second: AtomicU64::new(0f64.to_bits()),
            rate_samples: Mutex::new(VecDeque::new()),
            sink_records: std::array::from_fn(|_| AtomicU64::new(0)),
            sink_retried: std::array::from_fn(|_| AtomicU64::new(0)),
            kinesis: Mutex::new(None),
            checkpoints: Mutex::new(CheckpointFigures::default()),
            state: Mutex::default(),
            recommendations: std::array::from_fn(|_| AtomicU64::new(0)),
            personalize_events: Mutex::new(None),
            started: Instant::now(),
        }
    }
}

impl Metrics {
    /// A registry with every counter at zero and no watermark.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts what one delivery of an AWS sink (one of [`SINKS`]) did.
    pub fn add_sink_delivery(&self, sink: &str, written: u64, retried: u64) {
        if let Some(index) = SINKS.iter().position(|s| *s == sink) {
            self.sink_records[index].fetch_add(written, Ordering::Relaxed);
            self.sink_retried[index].fetch_add(retried, Ordering::Relaxed);
        }
    }

    /// Records written by an AWS sink so far.
    pub fn sink_records(&self, sink: &str) -> u64 {
        SINKS
            .iter()
            .position(|s| *s == sink)
            .map_or(0, |index| self.sink_records[index].load(Ordering::Relaxed))
    }

    /// Replaces the operators' state sizes: operator → `(bytes, keys)`, summed over workers.
    pub fn set_state_sizes(&self, sizes: std::collections::BTreeMap<String, (u64, u64)>) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = sizes;
    }

    /// The operators' state sizes as last set: operator → `(bytes, keys)`.
    pub fn state_sizes(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a committed checkpoint.
    pub fn checkpoint_completed(&self, update: impl FnOnce(&mut CheckpointFigures)) {
        let mut figures = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        figures.completed += 1;
        update(&mut figures);
    }

    /// Counts a checkpoint that was not committed.
    pub fn checkpoint_failed(&self) {
        self.checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed += 1;
    }

    /// The checkpoint figures so far.
    pub fn checkpoints(&self) -> CheckpointFigures {
        self.checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Kinesis consumer's per-shard state, when the source is Kinesis.
    pub fn kinesis_status(&self) -> Option<Arc<ConsumerStatus>> {
        self.kinesis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Renders the Kinesis consumer's per-shard state from now on.
    pub fn watch_kinesis(&self, status: Arc<ConsumerStatus>) {
        *self.kinesis.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
    }

    /// Counts one recommendation answer by what Personalize did (one of
    /// [`RECOMMENDATION_OUTCOMES`]; anything else is counted as `error`).
    pub fn record_recommendation(&self, personalize: &str) {
        let index = RECOMMENDATION_OUTCOMES
            .iter()
            .position(|o| *o == personalize)
            .or_else(|| RECOMMENDATION_OUTCOMES.iter().position(|o| *o == "error"))
            .unwrap_or_default();
        self.recommendations[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Recommendation answers so far with this Personalize outcome.
    pub fn recommendations(&self, personalize: &str) -> u64 {
        RECOMMENDATION_OUTCOMES
            .iter()
            .position(|o| *o == personalize)
            .map_or(0, |i| self.recommendations[i].load(Ordering::Relaxed))
    }

    /// Reports the Personalize event forwarder's counters from now on.
    pub fn watch_personalize_events(&self, forwarder: Arc<EventForwarder>) {
        *self
            .personalize_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(forwarder);
    }

    /// Counts `n` records read from a source (before validation).
    pub fn add_events_in(&self, n: u64) {
        self.events_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` events accepted (valid, on time, not duplicates).
    pub fn add_events_accepted(&self, n: u64) {
        self.events_accepted.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one record sent to the dead-letter output for `reason`.
    pub fn record_dead_letter(&self, reason: Reason) {
        self.add_dead_letters(reason, 1);
    }

    /// Counts `n` records sent to the dead-letter output for `reason`.
    pub fn add_dead_letters(&self, reason: Reason, n: u64) {
        self.dead_letters[reason_index(reason)].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` duplicate beacons dropped.
    pub fn add_duplicates(&self, n: u64) {
        self.duplicates.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` blank lines skipped.
    pub fn add_blank_lines(&self, n: u64) {
        self.blank_lines.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts closed local sink files deleted by retention, and their bytes.
    pub fn add_retention_deleted(&self, files: u64, bytes: u64) {
        self.retention_deleted_files
            .fetch_add(files, Ordering::Relaxed);
        self.retention_deleted_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Local sink files deleted by retention so far.
    pub fn retention_deleted_files(&self) -> u64 {
        self.retention_deleted_files.load(Ordering::Relaxed)
    }

    /// Counts one emitted feature record, by its type.
    pub fn record_feature(&self, feature: &Feature) {
        self.add_features_emitted(feature.kind(), 1);
    }

    /// Counts `n` emitted feature records of type `kind` (`session`, `popular`, `trending` or
    /// `related`, as [`Feature::kind`] returns). Returns `false`, counting nothing, for another type.
    pub fn add_features_emitted(&self, kind: &str, n: u64) -> bool {
        match FEATURE_TYPES.iter().position(|t| *t == kind) {
            Some(i) => {
                self.features_emitted[i].fetch_add(n, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Sets the job's watermark (ms since the epoch). `u64::MAX` means +∞ (the end of a replay).
    pub fn set_watermark(&self, ms: u64) {
        self.watermark
            .store(ms.saturating_add(WATERMARK_OFFSET), Ordering::Relaxed);
    }

    /// Sets the number of keys held in live state.
    pub fn set_live_keys(&self, n: u64) {
        self.live_keys.store(n, Ordering::Relaxed);
    }

    /// Records read so far.
    pub fn events_in(&self) -> u64 {
        self.events_in.load(Ordering::Relaxed)
    }

    /// Events accepted so far.
    pub fn events_accepted(&self) -> u64 {
        self.events_accepted.load(Ordering::Relaxed)
    }

    /// Dead letters so far for `reason`.
    pub fn dead_letters(&self, reason: Reason) -> u64 {
        self.dead_letters[reason_index(reason)].load(Ordering::Relaxed)
    }

    /// Dead letters so far, all reasons together.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// How long ago this registry was created: the job's uptime, as the binary creates its
    /// `Metrics` at start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Blank lines skipped so far.
    pub fn blank_lines(&self) -> u64 {
        self.blank_lines.load(Ordering::Relaxed)
    }

    /// Feature records of type `kind` emitted so far (0 for an unknown type).
    pub fn features_emitted(&self, kind: &str) -> u64 {
        FEATURE_TYPES
            .iter()
            .position(|t| *t == kind)
            .map_or(0, |i| self.features_emitted[i].load(Ordering::Relaxed))
    }

    /// The last watermark set, if any (`u64::MAX` for +∞).
    pub fn watermark(&self) -> Option<u64> {
        match self.watermark.load(Ordering::Relaxed) {
            NO_WATERMARK => None,
            u64::MAX => Some(u64::MAX),
            stored => Some(stored - WATERMARK_OFFSET),
        }
    }

    /// The last value set with [`Metrics::set_live_keys`].
    pub fn live_keys(&self) -> u64 {
        self.live_keys.load(Ordering::Relaxed)
    }

    /// The rate computed at the last sample, in records per second.
    pub fn events_per_second(&self) -> f64 {
        f64::from_bits(self.events_per_second.load(Ordering::Relaxed))
    }

    /// Takes a sample of `pageflow_events_in_total` now and updates `pageflow_events_per_second`.
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate_at(Instant::now())
    }

    /// [`Metrics::sample_rate`] at a given instant (for tests and simulated clocks). Samples older
    /// than the newest one are ignored.
    pub fn sample_rate_at(&self, now: Instant) -> f64 {
        let count = self.events_in();
        let rate = {
            let mut samples = self
                .rate_samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if samples.back().is_none_or(|&(last, _)| last <= now) {
                samples.push_back((now, count));
            }
            // Keep the newest sample at least RATE_WINDOW old as the base, drop the ones before it.
            while samples
                .get(1)
                .is_some_and(|&(second, _)| now.duration_since(second) >= RATE_WINDOW)
            {
                samples.pop_front();
            }
            match (samples.front(), samples.back()) {
                (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
                    c1.saturating_sub(c0) as f64 / t1.duration_since(t0).as_secs_f64()
                }
                _ => 0.0,
            }
        };
        self.events_per_second
            .store(rate.to_bits(), Ordering::Relaxed);
        rate
    }

    /// Spawns a tokio task that samples the event rate every `period` (1 s is a good value) until
    /// the returned handle is aborted or the runtime shuts down. Must be called inside a runtime.
    pub fn spawn_rate_sampler(self: Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period.max(Duration::from_millis(10)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                self.sample_rate();
            }
        })
    }

    /// Every metric in the Prometheus text exposition format 0.0.4 (serve it with
    /// [`PROMETHEUS_CONTENT_TYPE`]). Takes a rate sample and reads the wall clock for the delay.
    pub fn render_prometheus(&self) -> String {
        let wall_ms = pageflow_dataflow::clock::unix_now_ms();
        self.sample_rate();
        self.render_at(wall_ms)
    }

    /// The rendering, with the wall clock given (ms since the epoch); takes no rate sample.
    fn render_at(&self, wall_ms: u64) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            header(out, name, help, "counter");
            let _ = writeln!(out, "{name} {value}");
        };
        counter(
            &mut out,
            "pageflow_events_in_total",
            "Records read from the sources, valid or not.",
            self.events_in(),
        );
        counter(
            &mut out,
            "pageflow_events_accepted_total",
            "Valid, on-time, de-duplicated events counted into the results.",
            self.events_accepted(),
        );
        header(
            &mut out,
            "pageflow_dead_letters_total",
            "Records sent to the dead-letter output, by reason code.",
            "counter",
        );
        for reason in Reason::ALL {
            let _ = writeln!(
                out,
                "pageflow_dead_letters_total{{reason=\"{}\"}} {}",
                reason.code(),
                self.dead_letters(reason)
            );
        }
        counter(
            &mut out,
            "pageflow_duplicates_total",
            "Valid on-time events dropped as duplicate beacons (same event_id within dedup_window).",
            self.duplicates(),
        );
        counter(
            &mut out,
            "pageflow_blank_lines_total",
            "Empty or whitespace-only input lines skipped.",
            self.blank_lines(),
        );
        counter(
            &mut out,
            "pageflow_sink_retention_deleted_files_total",
            "Closed local sink files deleted by [sinks.retention] (over max_bytes or older than max_age).",
            self.retention_deleted_files(),
        );
        counter(
            &mut out,
            "pageflow_sink_retention_deleted_bytes_total",
            "Bytes of the local sink files deleted by [sinks.retention].",
            self.retention_deleted_bytes.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "pageflow_features_emitted_total",
            "Feature records emitted to the features stream, by type.",
            "counter",
        );
        for kind in FEATURE_TYPES {
            let _ = writeln!(
                out,
                "pageflow_features_emitted_total{{type=\"{kind}\"}} {}",
                self.features_emitted(kind)
            );
        }
        header(
            &mut out,
            "pageflow_watermark_ms",
            "The job's event-time watermark in milliseconds since the Unix epoch (absent until there is one).",
            "gauge",
        );
        let watermark = self.watermark();
        match watermark {
            Some(u64::MAX) => out.push_str("pageflow_watermark_ms +Inf\n"),
            Some(ms) => {
                let _ = writeln!(out, "pageflow_watermark_ms {ms}");
            }
            None => {}
        }
        header(
            &mut out,
            "pageflow_watermark_delay_ms",
            "Wall clock minus the watermark, in milliseconds (absent until there is a watermark).",
            "gauge",
        );
        match watermark {
            Some(u64::MAX) => out.push_str("pageflow_watermark_delay_ms -Inf\n"),
            Some(ms) => {
                let delay = i128::from(wall_ms) - i128::from(ms);
                let _ = writeln!(out, "pageflow_watermark_delay_ms {delay}");
            }
            None => {}
        }
        header(
            &mut out,
            "pageflow_events_per_second",
            "Records read per second over the last 10 seconds.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "pageflow_events_per_second {}",
            format_float(self.events_per_second())
        );
        header(
            &mut out,
            "pageflow_live_keys",
            "Keys held in live state (open sessions, windows and the like).",
            "gauge",
        );
        let _ = writeln!(out, "pageflow_live_keys {}", self.live_keys());
        header(
            &mut out,
            "pageflow_heap_bytes",
            "Live heap of the process: bytes allocated and not yet freed.",
            "gauge",
        );
        let _ = writeln!(out, "pageflow_heap_bytes {}", crate::heap::live_bytes());
        for (name, help, values) in [
            (
                "pageflow_sink_records_total",
                "Records written by the AWS sinks.",
                &self.sink_records,
            ),
            (
                "pageflow_sink_retried_total",
                "Entries the AWS sinks sent again after partial failures or throttling.",
                &self.sink_retried,
            ),
        ] {
            header(&mut out, name, help, "counter");
            for (sink, value) in SINKS.iter().zip(values.iter()) {
                let _ = writeln!(
                    out,
                    "{name}{{sink=\"{sink}\"}} {}",
                    value.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut out,
            "pageflow_recommendations_total",
            "Recommendation answers, by what Personalize did for them.",
            "counter",
        );
        for (outcome, value) in RECOMMENDATION_OUTCOMES.iter().zip(&self.recommendations) {
            let _ = writeln!(
                out,
                "pageflow_recommendations_total{{personalize=\"{outcome}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let forwarder = self
            .personalize_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(forwarder) = forwarder {
            render_personalize_events(&mut out, &forwarder.stats());
        }
        render_checkpoints(&mut out, &self.checkpoints());
        render_state(&mut out, &self.state_sizes());
        let kinesis = self
            .kinesis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(status) = kinesis {
            render_kinesis(&mut out, &status);
        }
        out
    }
}

/// The Personalize event forwarder's families.
fn render_personalize_events(out: &mut String, stats: &ForwarderStats) {
    header(
        out,
        "pageflow_personalize_events_total",
        "Pageviews offered to the Personalize event trackers, and what became of them.",
        "counter",
    );
    for (outcome, value) in [
        ("offered", stats.offered),
        ("sent", stats.sent_events),
        ("failed", stats.failed_events),
        ("dropped_queue_full", stats.dropped_queue_full),
        ("dropped_invalid", stats.dropped_invalid),
        ("dropped_closed", stats.dropped_closed),
    ] {
        let _ = writeln!(
            out,
            "pageflow_personalize_events_total{{outcome=\"{outcome}\"}} {value}"
        );
    }
    header(
        out,
        "pageflow_personalize_calls_total",
        "PutEvents calls sent, and calls retried after throttling or a failure.",
        "counter",
    );
    let _ = writeln!(
        out,
        "pageflow_personalize_calls_total{{result=\"sent\"}} {}",
        stats.sent_calls
    );
    let _ = writeln!(
        out,
        "pageflow_personalize_calls_total{{result=\"retried\"}} {}",
        stats.retried_calls
    );
}

/// The checkpoint families: outcomes, the last one's duration, pause and size, state by operator.
fn render_checkpoints(out: &mut String, figures: &CheckpointFigures) {
    header(
        out,
        "pageflow_checkpoints_total",
        "Checkpoints taken, by result (completed: committed; failed: not written).",
        "counter",
    );
    let _ = writeln!(
        out,
        "pageflow_checkpoints_total{{result=\"completed\"}} {}",
        figures.completed
    );
    let _ = writeln!(
        out,
        "pageflow_checkpoints_total{{result=\"failed\"}} {}",
        figures.failed
    );
    for (name, help, value) in [
        (
            "pageflow_checkpoint_duration_seconds",
            "The last committed checkpoint, from request to commit (pause, sink flush, write).",
            figures.last_duration_s,
        ),
        (
            "pageflow_checkpoint_pause_seconds",
            "The longest the dataflow stood still for the last checkpoint (drain and save).",
            figures.last_pause_s,
        ),
        (
            "pageflow_checkpoint_save_seconds",
            "Of the last pause, the time spent saving operator state (the rest drained records in flight).",
            figures.last_save_s,
        ),
        (
            "pageflow_checkpoint_size_bytes",
            "Bytes written by the last committed checkpoint (what changed since the one before).",
            figures.last_size_bytes as f64,
        ),
        (
            "pageflow_checkpoint_stored_bytes",
            "Bytes of every run the last committed checkpoint's state is made of (base and deltas).",
            figures.stored_bytes as f64,
        ),
    ] {
        header(out, name, help, "gauge");
        let _ = writeln!(out, "{name} {}", format_float(value));
    }

    header(
        out,
        "pageflow_checkpoint_last_success_timestamp_seconds",
        "When the last checkpoint was committed (absent until one is).",
        "gauge",
    );
    if let Some(ms) = figures.last_success_ms {
        let _ = writeln!(
            out,
            "pageflow_checkpoint_last_success_timestamp_seconds {}",
            format_float(ms as f64 / 1000.0)
        );
    }
}

/// The operators' state: bytes in memory and keys held, per operator.
fn render_state(out: &mut String, sizes: &std::collections::BTreeMap<String, (u64, u64)>) {
    header(
        out,
        "pageflow_state_bytes",
        "Bytes of state held in memory, by operator (summed over workers; `interned` is the table of portal and article ids every worker shares).",
        "gauge",
    );
    for (operator, (bytes, _)) in sizes {
        let _ = writeln!(
            out,
            "pageflow_state_bytes{{operator=\"{}\"}} {bytes}",
            escape_label(operator)
        );
    }
    header(
        out,
        "pageflow_state_keys",
        "Keys held, by operator: open sessions, remembered event ids, articles, article pairs.",
        "gauge",
    );
    for (operator, (_, keys)) in sizes {
        let _ = writeln!(
            out,
            "pageflow_state_keys{{operator=\"{}\"}} {keys}",
            escape_label(operator)
        );
    }
}

/// The Kinesis consumer's families: shard counts and per-shard lag.
fn render_kinesis(out: &mut String, status: &ConsumerStatus) {
    let shards = status.shards();
    header(
        out,
        "pageflow_kinesis_shards",
        "Kinesis shards being read and read to their end.",
        "gauge",
    );
    let finished = shards.iter().filter(|s| s.finished).count();
    let _ = writeln!(
        out,
        "pageflow_kinesis_shards{{state=\"reading\"}} {}",
        shards.len() - finished
    );
    let _ = writeln!(
        out,
        "pageflow_kinesis_shards{{state=\"finished\"}} {finished}"
    );
    header(
        out,
        "pageflow_kinesis_listings_total",
        "Completed ListShards discoveries.",
        "counter",
    );
    let _ = writeln!(
        out,
        "pageflow_kinesis_listings_total {}",
        status.listings.load(Ordering::Relaxed)
    );
    let label = |s: &pageflow_connectors::kinesis::consumer::ShardStatus| {
        format!(
            "stream=\"{}\",shard=\"{}\"",
            escape_label(&s.stream),
            escape_label(&s.shard)
        )
    };
    header(
        out,
        "pageflow_kinesis_millis_behind_latest",
        "How far behind the tip of each shard being read the consumer is (MillisBehindLatest).",
        "gauge",
    );
    for shard in shards.iter().filter(|s| !s.finished) {
        if let Some(behind) = shard.millis_behind_latest {
            let _ = writeln!(
                out,
                "pageflow_kinesis_millis_behind_latest{{{}}} {behind}",
                label(shard)
            );
        }
    }
    header(
        out,
        "pageflow_kinesis_iterator_age_ms",
        "Age of the newest record of the last batch read from each shard (0 when caught up).",
        "gauge",
    );
    for shard in shards.iter().filter(|s| !s.finished) {
        if let Some(age) = shard.iterator_age_ms {
            let _ = writeln!(
                out,
                "pageflow_kinesis_iterator_age_ms{{{}}} {age}",
                label(shard)
            );
        }
    }
    header(
        out,
        "pageflow_kinesis_records_total",
        "User records read from each shard.",
        "counter",
    );
    for shard in &shards {
        let _ = writeln!(
            out,
            "pageflow_kinesis_records_total{{{}}} {}",
            label(shard),
            shard.records
        );
    }
}

/// A label value with `\`, `"` and line breaks escaped, as the text format requires.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The position of `reason` in [`Reason::ALL`].
fn reason_index(reason: Reason) -> usize {
    Reason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or_default()
}

/// Writes the `# HELP` and `# TYPE` lines of one metric family.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A float as Prometheus reads it (`NaN`, `+Inf`, `-Inf` spelled its way).
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines (not comments) of a rendering.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn aws_sink_and_kinesis_families() {
        let metrics = Metrics::new();
        let plain = metrics.render_at(0);
        assert!(
            !plain.contains("pageflow_kinesis_shards"),
            "no Kinesis families without a Kinesis source"
        );
        metrics.add_sink_delivery("kinesis", 500, 7);
        metrics.add_sink_delivery("firehose_raw", 3, 0);
        metrics.add_sink_delivery("no_such_sink", 9, 9);
        metrics.watch_kinesis(Arc::new(ConsumerStatus::default()));
        let text = metrics.render_at(0);
        let lines = samples(&text);
        for expected in [
            "pageflow_sink_records_total{sink=\"kinesis\"} 500",
            "pageflow_sink_retried_total{sink=\"kinesis\"} 7",
            "pageflow_sink_records_total{sink=\"firehose_raw\"} 3",
            "pageflow_sink_records_total{sink=\"firehose_dead_letter\"} 0",
            "pageflow_kinesis_shards{state=\"reading\"} 0",
            "pageflow_kinesis_listings_total 0",
        ] {
            assert!(lines.contains(&expected), "missing `{expected}` in\n{text}");
        }
        assert_eq!(metrics.sink_records("kinesis"), 500);
        assert!(!text.contains("no_such_sink"));
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let text = Metrics::new().render_at(0);
        for (name, kind) in [
            ("pageflow_events_in_total", "counter"),
            ("pageflow_events_accepted_total", "counter"),
            ("pageflow_dead_letters_total", "counter"),
            ("pageflow_duplicates_total", "counter"),
            ("pageflow_blank_lines_total", "counter"),
            ("pageflow_sink_retention_deleted_files_total", "counter"),
            ("pageflow_sink_retention_deleted_bytes_total", "counter"),
            ("pageflow_features_emitted_total", "counter"),
            ("pageflow_watermark_ms", "gauge"),
            ("pageflow_watermark_delay_ms", "gauge"),
            ("pageflow_events_per_second", "gauge"),
            ("pageflow_live_keys", "gauge"),
            ("pageflow_heap_bytes", "gauge"),
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}\n{text}");
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}\n{text}"
            );
        }
        assert!(text.ends_with('\n'));
        // Every line is a comment or `name[{labels}] value`.
        for line in samples(&text) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(series.starts_with("pageflow_"), "{line}");
            assert!(
                value.parse::<f64>().is_ok() || value.ends_with("Inf"),
                "{line}"
            );
        }
    }

    #[test]
    fn counters_and_labels() {
        let metrics = Metrics::new();
        metrics.add_events_in(7);
        metrics.add_events_in(3);
        metrics.add_events_accepted(5);
        metrics.record_dead_letter(Reason::Late);
        metrics.add_dead_letters(Reason::InvalidJson, 2);
        metrics.add_duplicates(1);
        metrics.add_blank_lines(4);
        assert!(metrics.add_features_emitted("popular", 2));
        assert!(metrics.add_features_emitted("related", 1));
        assert!(!metrics.add_features_emitted("nonsense", 1));
        metrics.set_live_keys(42);
        let text = metrics.render_at(0);
        let lines = samples(&text);
        for expected in [
            "pageflow_events_in_total 10",
            "pageflow_events_accepted_total 5",
            "pageflow_dead_letters_total{reason=\"late\"} 1",
            "pageflow_dead_letters_total{reason=\"invalid_json\"} 2",
            "pageflow_dead_letters_total{reason=\"too_large\"} 0",
            "pageflow_duplicates_total 1",
            "pageflow_blank_lines_total 4",
            "pageflow_features_emitted_total{type=\"popular\"} 2",
            "pageflow_features_emitted_total{type=\"related\"} 1",
            "pageflow_features_emitted_total{type=\"session\"} 0",
            "pageflow_live_keys 42",
        ] {
            assert!(lines.contains(&expected), "missing `{expected}` in\n{text}");
        }
        // One series per reason code, in the contract's order.
        let reasons: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("pageflow_dead_letters_total{reason=\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert_eq!(
            reasons,
            [
                "corrupt_aggregate",
                "too_large",
                "invalid_utf8",
                "invalid_json",
                "not_object",
                "missing_field",
                "wrong_type",
                "out_of_range",
                "bad_pattern",
                "late",
                "undeliverable"
            ]
        );
        assert_eq!(metrics.features_emitted("popular"), 2);
        assert_eq!(metrics.dead_letters(Reason::InvalidJson), 2);
    }

    #[test]
    fn watermark_and_delay() {
        let metrics = Metrics::new();
        let text = metrics.render_at(10_000);
        assert!(
            !samples(&text)
                .iter()
                .any(|l| l.starts_with("pageflow_watermark")),
            "{text}"
        );
        assert_eq!(metrics.watermark(), None);

        metrics.set_watermark(0);
        assert_eq!(metrics.watermark(), Some(0));
        metrics.set_watermark(7_000);
        assert_eq!(metrics.watermark(), Some(7_000));
        let text = metrics.render_at(10_000);
        let lines = samples(&text);
        assert!(lines.contains(&"pageflow_watermark_ms 7000"), "{text}");
        assert!(
            lines.contains(&"pageflow_watermark_delay_ms 3000"),
            "{text}"
        );
        // A watermark ahead of the wall clock gives a negative delay.
        let text = metrics.render_at(5_000);
        assert!(
            samples(&text).contains(&"pageflow_watermark_delay_ms -2000"),
            "{text}"
        );

        metrics.set_watermark(u64::MAX);
        let text = metrics.render_at(5_000);
        assert!(
            samples(&text).contains(&"pageflow_watermark_ms +Inf"),
            "{text}"
        );
        assert!(
            samples(&text).contains(&"pageflow_watermark_delay_ms -Inf"),
            "{text}"
        );
    }

    #[test]
    fn events_per_second_over_a_sliding_window() {
        let metrics = Metrics::new();
        let t0 = Instant::now();
        assert_eq!(metrics.sample_rate_at(t0), 0.0);
        metrics.add_events_in(100);
        let rate = metrics.sample_rate_at(t0 + Duration::from_secs(2));
        assert!((rate - 50.0).abs() < 1e-9, "{rate}");
        metrics.add_events_in(100);
        let rate = metrics.sample_rate_at(t0 + Duration::from_secs(4));
        assert!((rate - 50.0).abs() < 1e-9, "{rate}");
        // Nothing more for a while: the old burst leaves the window.
        metrics.sample_rate_at(t0 + Duration::from_secs(14));
        let rate = metrics.sample_rate_at(t0 + Duration::from_secs(24));
        assert_eq!(rate, 0.0);
        assert!(samples(&metrics.render_at(0)).contains(&"pageflow_events_per_second 0"));
        // Sparse samples (one scrape every 15 s) still give a rate.
        metrics.add_events_in(300);
        let rate = metrics.sample_rate_at(t0 + Duration::from_secs(39));
        assert!((rate - 20.0).abs() < 1e-9, "{rate}");
        assert!(samples(&metrics.render_at(0)).contains(&"pageflow_events_per_second 20"));
        // A sample from the past is ignored.
        let rate = metrics.sample_rate_at(t0);
        assert!((rate - 20.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn dead_letter_total_and_uptime() {
        let metrics = Metrics::new();
        assert_eq!(metrics.dead_letters_total(), 0);
        metrics.record_dead_letter(Reason::Late);
        metrics.add_dead_letters(Reason::InvalidJson, 2);
        assert_eq!(metrics.dead_letters_total(), 3);
        let before = metrics.uptime();
        assert!(metrics.uptime() >= before, "uptime never goes back");
    }

    #[test]
    fn float_formatting() {
        assert_eq!(format_float(2.5), "2.5");
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
    }
}
