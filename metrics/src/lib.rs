//! Operational metrics of the job, and how Prometheus sees them.
//!
//! A [`Metrics`] holds a `prometheus-client` [`Registry`] (the Prometheus project's own Rust
//! client) with the job's typed counters, gauges and label families, and the latency histograms
//! of [`latency`]. The dataflow workers update them without locks (the counters are atomics) while
//! the HTTP side encodes the registry for `GET /metrics` with the crate's Prometheus text encoder
//! (format 0.0.4, [`PROMETHEUS_CONTENT_TYPE`]). Values that live elsewhere or depend on the
//! moment of the scrape are encoded by a collector (`scraped.rs`). There is no global registry: the
//! binary creates one `Arc<Metrics>` and hands clones to whoever reports or serves.
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
//! | `pageflow_cluster_processes` / `pageflow_cluster_process` | gauge | in a cluster: how many processes run the job, and this one's index (every figure here is this process's own; the watermark is the cluster's) |
//! | `pageflow_kinesis_iterator_age_ms{stream,shard}` | gauge | age of the newest record of the last batch read from each shard (0 when caught up) |
//! | `pageflow_kinesis_records_total{stream,shard}` | counter | user records read from each shard |
//! | `pageflow_kinesis_listings_total` | counter | completed `ListShards` discoveries |
//! | `pageflow_recommendations_total{personalize}` | counter | recommendation answers, by what Personalize did (`ok`, `not_configured`, `timeout`, `throttled`, `not_found`, `invalid_input`, `error`, `breaker_open`) |
//! | `pageflow_personalize_events_total{outcome}` | counter | pageviews offered to the Personalize event trackers and what became of them (`offered`, `sent`, `failed`, `dropped_queue_full`, `dropped_invalid`, `dropped_closed`) |
//! | `pageflow_personalize_calls_total{result}` | counter | `PutEvents` calls `sent` and `retried` |
//! | `pageflow_checkpoints_total{result}` | counter | checkpoints `completed` and `failed` |
//! | `pageflow_checkpoint_{duration,pause,save}_seconds`, `pageflow_checkpoint_{size,stored}_bytes`, `pageflow_checkpoint_last_success_timestamp_seconds` | gauge | the last committed checkpoint |
//! | `pageflow_state_bytes{operator}`, `pageflow_state_keys{operator}` | gauge | operator state as last reported |
//! | `pageflow_http_request_duration_seconds{group}` | histogram | time to answer an HTTP request (until the response head), by route group (see [`HTTP_ROUTE_GROUPS`]) |
//! | `pageflow_http_server_errors_total` | counter | routed HTTP requests answered with a 5xx status |
//! | `pageflow_event_to_ranking_seconds` | histogram | for each ranking made visible to the serving layer: wall clock then minus the ranking's watermark (see [`Metrics::record_ranking_visible`]) |
//! | `pageflow_event_to_feature_seconds` | histogram | for each feature record the sink writes: wall clock then minus the record's event time, [`Feature::event_time`] (see [`Metrics::record_feature`]) |
//! | `pageflow_arrival_to_visible_seconds` | histogram | for each ranking made visible: wall clock then minus the wall clock at which the job watermark first reached the ranking's watermark, the arrival of the data that closed it (see [`Metrics::record_arrival_to_visible_at`]) |
//! | `pageflow_checkpoint_durations_seconds` | histogram | every committed checkpoint, from request to commit |
//! | `pageflow_checkpoint_pauses_seconds` | histogram | every committed checkpoint, the longest the dataflow stood still for it |
//!
//! The histograms are HdrHistograms exported as Prometheus histograms (why not summaries: see
//! [`latency`]); their p50/p99 are also in `/v1/status` ([`Metrics::latencies`]), and those of
//! event → feature and arrival → visible in the EMF lines ([`emf`]). The two
//! checkpoint histograms are named in the plural because `pageflow_checkpoint_duration_seconds`
//! and `pageflow_checkpoint_pause_seconds` already name the gauges of the last checkpoint.
//!
//! `pageflow_events_per_second` is derived from samples of `pageflow_events_in_total`: every render
//! takes a sample, and [`Metrics::spawn_rate_sampler`] (or calls to [`Metrics::sample_rate`]) add one
//! per period so that the rate stays fresh between scrapes. The rate is the increase between the
//! oldest and the newest sample of the last [`RATE_WINDOW`] (the oldest sample kept is the newest one
//! at least that old, so a single scrape every 15 s still gives a rate).
//!
//! Compared with the hand-written rendering this replaced, every metric name (`# HELP`/`# TYPE`
//! lines and samples alike, `_total` included), label, help text and value is the same; what
//! changed is the spelling of float values (`0.0`, `3.0` where it wrote `0`, `3`: the same number
//! to Prometheus), the order of the series inside a labelled family (Prometheus reads no order),
//! and the order of the families. Counters are registered by their name without `_total`, which
//! the crate's encoder appends.

pub mod checkpoint_history;
pub mod emf;
pub mod heap;
pub mod latency;
mod scraped;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pageflow_connectors::kinesis::consumer::ConsumerStatus;
use pageflow_connectors::personalize::EventForwarder;
use pageflow_dataflow::event::Reason;
use pageflow_dataflow::features::Feature;
use pageflow_dataflow::live::LiveUpdate;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use latency::{
    ARRIVAL_TO_VISIBLE_BUCKETS, CHECKPOINT_BUCKETS, EVENT_TO_FEATURE_BUCKETS,
    EVENT_TO_RANKING_BUCKETS, HTTP_BUCKETS, LatencyHistogram, LatencySummary,
};
use scraped::{Observed, ScrapeTimeFamilies, lock};

/// The `Content-Type` of [`Metrics::render_prometheus`]: the Prometheus text exposition format
/// 0.0.4, as `prometheus-client`'s encoder writes it.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The span over which `pageflow_events_per_second` is averaged.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The feature types (the `type` label values).
pub const FEATURE_TYPES: [&str; 4] = ["session", "popular", "trending", "related"];

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

/// The route groups of the HTTP API as the `group` label of
/// `pageflow_http_request_duration_seconds` names them: the serving layer's policy groups, and
/// `open` for the probes and the API description that no policy guards.
pub const HTTP_ROUTE_GROUPS: [&str; 5] = [
    "rankings",
    "recommendations",
    "dashboard",
    "metrics",
    "open",
];

/// `{reason="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `{type="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureTypeLabel {
    r#type: &'static str,
}

/// `{sink="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: &'static str,
}

/// `{personalize="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PersonalizeLabel {
    personalize: &'static str,
}

/// `{group="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteGroupLabel {
    group: &'static str,
}

/// A family of latency histograms, one per label set, each made by a plain function.
type HistogramFamily<L> = Family<L, LatencyHistogram, fn() -> LatencyHistogram>;

/// Where this process stands in a cluster of processes running one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPlace {
    /// This process's index in `addresses`.
    pub process: usize,
    /// Every process's `host:port`, in process order.
    pub addresses: Vec<String>,
    /// Worker threads in each process.
    pub threads: usize,
}

/// The job's counters, gauges and histograms. Cheap to update from any thread; share it as
/// `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    /// What `GET /metrics` encodes: every metric below (clones share their values) and the
    /// collector of `scraped.rs`.
    registry: Registry,
    /// Serialises encodings, each of which sets the scrape's wall clock first.
    encoding: Mutex<()>,
    events_in: Counter,
    events_accepted: Counter,
    dead_letters: Family<ReasonLabel, Counter>,
    duplicates: Counter,
    blank_lines: Counter,
    retention_deleted_files: Counter,
    retention_deleted_bytes: Counter,
    features_emitted: Family<FeatureTypeLabel, Counter>,
    live_keys: Gauge<u64, AtomicU64>,
    events_per_second: Gauge<f64, AtomicU64>,
    /// `(when, events_in)` samples, oldest first.
    rate_samples: Mutex<VecDeque<(Instant, u64)>>,
    sink_records: Family<SinkLabel, Counter>,
    sink_retried: Family<SinkLabel, Counter>,
    recommendations: Family<PersonalizeLabel, Counter>,
    http_latency: HistogramFamily<RouteGroupLabel>,
    /// Routed HTTP requests answered with a 5xx status.
    http_server_errors: Counter,
    event_to_ranking: LatencyHistogram,
    event_to_feature: LatencyHistogram,
    arrival_to_visible: LatencyHistogram,
    checkpoint_durations: LatencyHistogram,
    checkpoint_pauses: LatencyHistogram,
    /// Values handed over rather than counted (watermark, sources, checkpoint figures …).
    observed: Arc<Observed>,
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
    /// Of which finishing the records in flight (steps the dataflow would have taken anyway; the
    /// rest of the drain is waiting for the other workers), seconds.
    pub last_drain_work_s: f64,
    /// Bytes written by the last committed checkpoint (its delta run).
    pub last_size_bytes: u64,
    /// Bytes of every run the last committed checkpoint's state is made of.
    pub stored_bytes: u64,
    /// Bytes of state in memory by operator, when the last checkpoint was taken.
    pub state_bytes: BTreeMap<String, u64>,
    /// Keys held by operator, when the last checkpoint was taken.
    pub state_entries: BTreeMap<String, u64>,
}

/// The latency distributions at a glance, as `/v1/status` shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct Latencies {
    /// HTTP requests by route group, in [`HTTP_ROUTE_GROUPS`] order.
    pub http: Vec<(&'static str, LatencySummary)>,
    /// Event time to a visible ranking (see [`Metrics::record_ranking_visible`]).
    pub event_to_ranking: LatencySummary,
    /// Event time to the feature record emitted (see [`Metrics::record_feature`]).
    pub event_to_feature: LatencySummary,
    /// Arrival of the data that closed a ranking to the ranking visible (see
    /// [`Metrics::record_arrival_to_visible_at`]).
    pub arrival_to_visible: LatencySummary,
    /// Committed checkpoints, request to commit.
    pub checkpoint_duration: LatencySummary,
    /// Committed checkpoints, the longest the dataflow stood still.
    pub checkpoint_pause: LatencySummary,
}

/// The registry's `# HELP` text: the crate ends it with a full stop, so ours are given without.
fn help(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

/// A family with a series for each of `labels`, present (at zero) from the start.
fn family_of<L, M, C>(
    family: Family<L, M, C>,
    labels: impl IntoIterator<Item = L>,
) -> Family<L, M, C>
where
    L: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    for label in labels {
        drop(family.get_or_create(&label));
    }
    family
}

impl Default for Metrics {
    fn default() -> Self {
        let dead_letters = family_of(
            Family::default(),
            Reason::ALL.map(|reason| ReasonLabel {
                reason: reason.code(),
            }),
        );
        let features_emitted = family_of(
            Family::default(),
            FEATURE_TYPES.map(|r#type| FeatureTypeLabel { r#type }),
        );
        let sink_records = family_of(Family::default(), SINKS.map(|sink| SinkLabel { sink }));
        let sink_retried = family_of(Family::default(), SINKS.map(|sink| SinkLabel { sink }));
        let recommendations = family_of(
            Family::default(),
            RECOMMENDATION_OUTCOMES.map(|personalize| PersonalizeLabel { personalize }),
        );
        let http_latency: HistogramFamily<RouteGroupLabel> = family_of(
            Family::new_with_constructor(|| LatencyHistogram::new(HTTP_BUCKETS)),
            HTTP_ROUTE_GROUPS.map(|group| RouteGroupLabel { group }),
        );
        let metrics = Metrics {
            registry: Registry::default(),
            encoding: Mutex::new(()),
            events_in: Counter::default(),
            events_accepted: Counter::default(),
            dead_letters,
            duplicates: Counter::default(),
            blank_lines: Counter::default(),
            retention_deleted_files: Counter::default(),
            retention_deleted_bytes: Counter::default(),
            features_emitted,
            live_keys: Gauge::default(),
            events_per_second: Gauge::default(),
            rate_samples: Mutex::new(VecDeque::new()),
            sink_records,
            sink_retried,
            recommendations,
            http_latency,
            http_server_errors: Counter::default(),
            event_to_ranking: LatencyHistogram::new(EVENT_TO_RANKING_BUCKETS),
            event_to_feature: LatencyHistogram::new(EVENT_TO_FEATURE_BUCKETS),
            arrival_to_visible: LatencyHistogram::new(ARRIVAL_TO_VISIBLE_BUCKETS),
            checkpoint_durations: LatencyHistogram::new(CHECKPOINT_BUCKETS),
            checkpoint_pauses: LatencyHistogram::new(CHECKPOINT_BUCKETS),
            observed: Arc::default(),
            started: Instant::now(),
        };
        metrics.registered()
    }
}

impl Metrics {
    /// A registry with every counter at zero and no watermark.
    pub fn new() -> Self {
        Self::default()
    }

    /// `self` with every metric registered (counters by their name without `_total`: the
    /// encoder adds it).
    fn registered(mut self) -> Self {
        let registry = &mut self.registry;
        registry.register(
            "pageflow_events_in",
            help("Records read from the sources, valid or not."),
            self.events_in.clone(),
        );
        registry.register(
            "pageflow_events_accepted",
            help("Valid, on-time, de-duplicated events counted into the results."),
            self.events_accepted.clone(),
        );
        registry.register(
            "pageflow_dead_letters",
            help("Records sent to the dead-letter output, by reason code."),
            self.dead_letters.clone(),
        );
        registry.register(
            "pageflow_duplicates",
            help("Valid on-time events dropped as duplicate beacons (same event_id within dedup_window)."),
            self.duplicates.clone(),
        );
        registry.register(
            "pageflow_blank_lines",
            help("Empty or whitespace-only input lines skipped."),
            self.blank_lines.clone(),
        );
        registry.register(
            "pageflow_sink_retention_deleted_files",
            help("Closed local sink files deleted by [sinks.retention] (over max_bytes or older than max_age)."),
            self.retention_deleted_files.clone(),
        );
        registry.register(
            "pageflow_sink_retention_deleted_bytes",
            help("Bytes of the local sink files deleted by [sinks.retention]."),
            self.retention_deleted_bytes.clone(),
        );
        registry.register(
            "pageflow_features_emitted",
            help("Feature records emitted to the features stream, by type."),
            self.features_emitted.clone(),
        );
        registry.register(
            "pageflow_events_per_second",
            help("Records read per second over the last 10 seconds."),
            self.events_per_second.clone(),
        );
        registry.register(
            "pageflow_live_keys",
            help("Keys held in live state (open sessions, windows and the like)."),
            self.live_keys.clone(),
        );
        registry.register(
            "pageflow_sink_records",
            help("Records written by the AWS sinks."),
            self.sink_records.clone(),
        );
        registry.register(
            "pageflow_sink_retried",
            help("Entries the AWS sinks sent again after partial failures or throttling."),
            self.sink_retried.clone(),
        );
        registry.register(
            "pageflow_recommendations",
            help("Recommendation answers, by what Personalize did for them."),
            self.recommendations.clone(),
        );
        registry.register(
            "pageflow_http_request_duration_seconds",
            help("Time to answer an HTTP request, from the request reaching the route (authentication and rate limits included) to the response head being ready (a stream's body is not counted), by route group (`open`: probes and the API description)."),
            self.http_latency.clone(),
        );
        registry.register(
            "pageflow_event_to_ranking_seconds",
            help("For each popular or trending ranking made visible to the serving layer: the wall clock at that moment minus the ranking's watermark, the event time it is complete up to. Event time to visible, so it includes the sources' own delay and the allowed out-of-orderness; the time since an event's arrival is at most this."),
            self.event_to_ranking.clone(),
        );
        registry.register(
            "pageflow_event_to_feature_seconds",
            help("For each feature record the sink writes: the wall clock at that moment minus the record's event time (the end of its window; a session's last event). Sessions are emitted a session gap after their last event, so their values sit at the gap and above."),
            self.event_to_feature.clone(),
        );
        registry.register(
            "pageflow_arrival_to_visible_seconds",
            help("For each ranking made visible to the serving layer: the wall clock at that moment minus the wall clock at which the job watermark first reached the ranking's watermark (the arrival of the data that closed it). The pipeline's own delay, without the sources' or the allowed out-of-orderness."),
            self.arrival_to_visible.clone(),
        );
        registry.register(
            "pageflow_http_server_errors",
            help("Routed HTTP requests answered with a 5xx status (every routed request is counted in pageflow_http_request_duration_seconds_count)."),
            self.http_server_errors.clone(),
        );
        registry.register(
            "pageflow_checkpoint_durations_seconds",
            help("Every committed checkpoint, from request to commit (pause, sink flush, write); pageflow_checkpoint_duration_seconds is the last one."),
            self.checkpoint_durations.clone(),
        );
        registry.register(
            "pageflow_checkpoint_pauses_seconds",
            help("Every committed checkpoint, the longest the dataflow stood still for it (drain and save); pageflow_checkpoint_pause_seconds is the last one."),
            self.checkpoint_pauses.clone(),
        );
        registry.register_collector(Box::new(ScrapeTimeFamilies(Arc::clone(&self.observed))));
        self
    }

    /// Counts what one delivery of an AWS sink (one of [`SINKS`]) did.
    pub fn add_sink_delivery(&self, sink: &str, written: u64, retried: u64) {
        if let Some(sink) = SINKS.into_iter().find(|s| *s == sink) {
            let label = SinkLabel { sink };
            self.sink_records.get_or_create(&label).inc_by(written);
            self.sink_retried.get_or_create(&label).inc_by(retried);
        }
    }

    /// Records written by an AWS sink so far.
    pub fn sink_records(&self, sink: &str) -> u64 {
        SINKS.into_iter().find(|s| *s == sink).map_or(0, |sink| {
            self.sink_records.get_or_create(&SinkLabel { sink }).get()
        })
    }

    /// Replaces the operators' state sizes: operator → `(bytes, keys)`, summed over workers.
    pub fn set_state_sizes(&self, sizes: BTreeMap<String, (u64, u64)>) {
        *lock(&self.observed.state) = sizes;
    }

    /// The operators' state sizes as last set: operator → `(bytes, keys)`.
    pub fn state_sizes(&self) -> BTreeMap<String, (u64, u64)> {
        lock(&self.observed.state).clone()
    }

    /// Records a committed checkpoint: `update` fills in its figures, whose duration and pause
    /// also go into the checkpoint histograms.
    pub fn checkpoint_completed(&self, update: impl FnOnce(&mut CheckpointFigures)) {
        let (duration_s, pause_s) = {
            let mut figures = lock(&self.observed.checkpoints);
            figures.completed += 1;
            update(&mut figures);
            (figures.last_duration_s, figures.last_pause_s)
        };
        let seconds = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
        self.checkpoint_durations.record(seconds(duration_s));
        self.checkpoint_pauses.record(seconds(pause_s));
    }

    /// Counts a checkpoint that was not committed.
    pub fn checkpoint_failed(&self) {
        lock(&self.observed.checkpoints).failed += 1;
    }

    /// The checkpoint figures so far.
    pub fn checkpoints(&self) -> CheckpointFigures {
        lock(&self.observed.checkpoints).clone()
    }

    /// The Kinesis consumer's per-shard state, when the source is Kinesis.
    pub fn kinesis_status(&self) -> Option<Arc<ConsumerStatus>> {
        lock(&self.observed.kinesis).clone()
    }

    /// This process's place in the cluster of processes running the job (not called for one
    /// process): shown in `/v1/status` and as `pageflow_cluster_*` gauges.
    pub fn set_cluster(&self, place: ClusterPlace) {
        *lock(&self.observed.cluster) = Some(place);
    }

    /// This process's place in the cluster, when the job runs as several processes.
    pub fn cluster(&self) -> Option<ClusterPlace> {
        lock(&self.observed.cluster).clone()
    }

    /// Renders the Kinesis consumer's per-shard state from now on.
    pub fn watch_kinesis(&self, status: Arc<ConsumerStatus>) {
        *lock(&self.observed.kinesis) = Some(status);
    }

    /// Counts one recommendation answer by what Personalize did (one of
    /// [`RECOMMENDATION_OUTCOMES`]; anything else is counted as `error`).
    pub fn record_recommendation(&self, personalize: &str) {
        let personalize = RECOMMENDATION_OUTCOMES
            .into_iter()
            .find(|o| *o == personalize)
            .unwrap_or("error");
        self.recommendations
            .get_or_create(&PersonalizeLabel { personalize })
            .inc();
    }

    /// Recommendation answers so far with this Personalize outcome.
    pub fn recommendations(&self, personalize: &str) -> u64 {
        RECOMMENDATION_OUTCOMES
            .into_iter()
            .find(|o| *o == personalize)
            .map_or(0, |personalize| {
                self.recommendations
                    .get_or_create(&PersonalizeLabel { personalize })
                    .get()
            })
    }

    /// Reports the Personalize event forwarder's counters from now on.
    pub fn watch_personalize_events(&self, forwarder: Arc<EventForwarder>) {
        *lock(&self.observed.personalize_events) = Some(forwarder);
    }

    /// Counts `n` records read from a source (before validation).
    pub fn add_events_in(&self, n: u64) {
        self.events_in.inc_by(n);
    }

    /// Counts `n` events accepted (valid, on time, not duplicates).
    pub fn add_events_accepted(&self, n: u64) {
        self.events_accepted.inc_by(n);
    }

    /// Counts one record sent to the dead-letter output for `reason`.
    pub fn record_dead_letter(&self, reason: Reason) {
        self.add_dead_letters(reason, 1);
    }

    /// Counts `n` records sent to the dead-letter output for `reason`.
    pub fn add_dead_letters(&self, reason: Reason, n: u64) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.code(),
            })
            .inc_by(n);
    }

    /// Counts `n` duplicate beacons dropped.
    pub fn add_duplicates(&self, n: u64) {
        self.duplicates.inc_by(n);
    }

    /// Counts `n` blank lines skipped.
    pub fn add_blank_lines(&self, n: u64) {
        self.blank_lines.inc_by(n);
    }

    /// Counts closed local sink files deleted by retention, and their bytes.
    pub fn add_retention_deleted(&self, files: u64, bytes: u64) {
        self.retention_deleted_files.inc_by(files);
        self.retention_deleted_bytes.inc_by(bytes);
    }

    /// Local sink files deleted by retention so far.
    pub fn retention_deleted_files(&self) -> u64 {
        self.retention_deleted_files.get()
    }

    /// Counts one emitted feature record, by its type, and records its event-to-feature latency
    /// (now minus [`Feature::event_time`]).
    pub fn record_feature(&self, feature: &Feature) {
        self.record_feature_at(feature, wall_clock_ms());
    }

    /// [`Metrics::record_feature`] at wall clock `emitted_ms` (0 latency when the event time is
    /// ahead of the clock).
    pub fn record_feature_at(&self, feature: &Feature, emitted_ms: u64) {
        self.add_features_emitted(feature.kind(), 1);
        self.event_to_feature.record(Duration::from_millis(
            emitted_ms.saturating_sub(feature.event_time()),
        ));
    }

    /// Feature records emitted so far, every type together.
    pub fn features_emitted_total(&self) -> u64 {
        FEATURE_TYPES
            .iter()
            .map(|kind| self.features_emitted(kind))
            .sum()
    }

    /// Counts `n` emitted feature records of type `kind` (`session`, `popular`, `trending` or
    /// `related`, as [`Feature::kind`] returns). Returns `false`, counting nothing, for another type.
    pub fn add_features_emitted(&self, kind: &str, n: u64) -> bool {
        match FEATURE_TYPES.into_iter().find(|t| *t == kind) {
            Some(r#type) => {
                self.features_emitted
                    .get_or_create(&FeatureTypeLabel { r#type })
                    .inc_by(n);
                true
            }
            None => false,
        }
    }

    /// Sets the job's watermark (ms since the epoch). `u64::MAX` means +∞ (the end of a replay).
    pub fn set_watermark(&self, ms: u64) {
        self.observed.set_watermark(ms);
    }

    /// Sets the number of keys held in live state.
    pub fn set_live_keys(&self, n: u64) {
        self.live_keys.set(n);
    }

    /// Records one HTTP request answered in `elapsed` by a route of `group` (one of
    /// [`HTTP_ROUTE_GROUPS`]; another group is not recorded).
    pub fn record_http_request(&self, group: &str, elapsed: Duration) {
        if let Some(group) = HTTP_ROUTE_GROUPS.into_iter().find(|g| *g == group) {
            self.http_latency
                .get_or_create(&RouteGroupLabel { group })
                .record(elapsed);
        }
    }

    /// Counts a routed HTTP request's answer status (the latency is recorded by
    /// [`Metrics::record_http_request`]): a 5xx counts in `pageflow_http_server_errors_total`.
    pub fn record_http_status(&self, status: u16) {
        if (500..600).contains(&status) {
            self.http_server_errors.inc();
        }
    }

    /// Routed HTTP requests answered so far, every route group together.
    pub fn http_requests_total(&self) -> u64 {
        HTTP_ROUTE_GROUPS
            .into_iter()
            .map(|group| {
                self.http_latency
                    .get_or_create(&RouteGroupLabel { group })
                    .count()
            })
            .sum()
    }

    /// Routed HTTP requests answered with a 5xx status so far.
    pub fn http_server_errors(&self) -> u64 {
        self.http_server_errors.get()
    }

    /// Records that a ranking became visible to the serving layer at wall clock `visible_ms`
    /// when the job watermark had first reached the ranking's watermark at wall clock
    /// `arrived_ms` (see `pageflow_dataflow::watermark_arrivals`): the arrival-to-visible
    /// latency is the difference (0 if the clock went back).
    pub fn record_arrival_to_visible_at(&self, arrived_ms: u64, visible_ms: u64) {
        self.arrival_to_visible
            .record(Duration::from_millis(visible_ms.saturating_sub(arrived_ms)));
    }

    /// Records that a popular or trending ranking complete up to event time `watermark` (ms since
    /// the epoch) became visible to the serving layer at wall clock `visible_ms`: the event-to-
    /// ranking latency is `visible_ms − watermark` (0 when the event times are ahead of the
    /// clock). A watermark of +∞ (the end of a bounded input) is not a latency and is skipped.
    pub fn record_ranking_visible_at(&self, watermark: u64, visible_ms: u64) {
        if watermark != u64::MAX {
            self.event_to_ranking
                .record(Duration::from_millis(visible_ms.saturating_sub(watermark)));
        }
    }

    /// [`Metrics::record_ranking_visible_at`] now, for a ranking `update` just applied to the
    /// serving state (other updates are not rankings and are skipped). See
    /// [`ranking_watermark`] to take the watermark before the update is moved into the state.
    pub fn record_ranking_visible(&self, watermark: Option<u64>) {
        if let Some(watermark) = watermark {
            self.record_ranking_visible_at(watermark, wall_clock_ms());
        }
    }

    /// The latency distributions at a glance (count, sum and quantiles of each).
    pub fn latencies(&self) -> Latencies {
        Latencies {
            http: HTTP_ROUTE_GROUPS
                .into_iter()
                .map(|group| {
                    let summary = self
                        .http_latency
                        .get_or_create(&RouteGroupLabel { group })
                        .summary();
                    (group, summary)
                })
                .collect(),
            event_to_ranking: self.event_to_ranking.summary(),
            event_to_feature: self.event_to_feature.summary(),
            arrival_to_visible: self.arrival_to_visible.summary(),
            checkpoint_duration: self.checkpoint_durations.summary(),
            checkpoint_pause: self.checkpoint_pauses.summary(),
        }
    }

    /// Records read so far.
    pub fn events_in(&self) -> u64 {
        self.events_in.get()
    }

    /// Events accepted so far.
    pub fn events_accepted(&self) -> u64 {
        self.events_accepted.get()
    }

    /// Dead letters so far for `reason`.
    pub fn dead_letters(&self, reason: Reason) -> u64 {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.code(),
            })
            .get()
    }

    /// Dead letters so far, all reasons together.
    pub fn dead_letters_total(&self) -> u64 {
        Reason::ALL
            .iter()
            .map(|reason| self.dead_letters(*reason))
            .sum()
    }

    /// How long ago this registry was created: the job's uptime, as the binary creates its
    /// `Metrics` at start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.get()
    }

    /// Blank lines skipped so far.
    pub fn blank_lines(&self) -> u64 {
        self.blank_lines.get()
    }

    /// Feature records of type `kind` emitted so far (0 for an unknown type).
    pub fn features_emitted(&self, kind: &str) -> u64 {
        FEATURE_TYPES
            .into_iter()
            .find(|t| *t == kind)
            .map_or(0, |r#type| {
                self.features_emitted
                    .get_or_create(&FeatureTypeLabel { r#type })
                    .get()
            })
    }

    /// The last watermark set, if any (`u64::MAX` for +∞).
    pub fn watermark(&self) -> Option<u64> {
        self.observed.watermark()
    }

    /// The last value set with [`Metrics::set_live_keys`].
    pub fn live_keys(&self) -> u64 {
        self.live_keys.get()
    }

    /// The rate computed at the last sample, in records per second.
    pub fn events_per_second(&self) -> f64 {
        self.events_per_second.get()
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
            let mut samples = lock(&self.rate_samples);
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
        self.events_per_second.set(rate);
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
        self.sample_rate();
        self.render_at(wall_clock_ms())
    }

    /// The rendering, with the wall clock given (ms since the epoch); takes no rate sample.
    fn render_at(&self, wall_ms: u64) -> String {
        let _one_at_a_time = lock(&self.encoding);
        self.observed
            .scrape_wall_ms
            .store(wall_ms, Ordering::Relaxed);
        let mut out = String::with_capacity(8192);
        // Writing into a `String` cannot fail, and our collector only fails when the writer does.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            note_encoding_error(&mut out, error);
        }
        out
    }
}

/// The watermark of a popular or trending ranking update, `None` for any other update: take it
/// before the update moves into the serving state, then pass it to
/// [`Metrics::record_ranking_visible`].
pub fn ranking_watermark(update: &LiveUpdate) -> Option<u64> {
    match update {
        LiveUpdate::Ranking { watermark, .. } => Some(*watermark),
        LiveUpdate::Related { .. } | LiveUpdate::Reads { .. } => None,
    }
}

/// An encoding error (impossible into a `String`) ends the text with a comment saying so, so
/// that a scrape shows it rather than a silently short page.
fn note_encoding_error(out: &mut String, error: std::fmt::Error) {
    out.push_str(&format!(
        "# the metrics could not be encoded in full: {error}\n"
    ));
}

/// The wall clock in ms since the epoch (0 before 1970).
fn wall_clock_ms() -> u64 {
    pageflow_dataflow::clock::unix_now_ms()
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
    }

    /// The metric families of a rendering in the Prometheus text format 0.0.4: name → type.
    /// Fails the test on any line that format does not allow: a `# HELP`/`# TYPE` pair per family
    /// (declared once, before its samples), samples `name{label="value",…} value` whose name is the
    /// family's (or its `_bucket`/`_sum`/`_count` for a histogram), label values quoted and
    /// escaped, values that are numbers, `+Inf`, `-Inf` or `NaN`.
    pub(crate) fn parse_families(text: &str) -> BTreeMap<String, String> {
        let mut families = BTreeMap::new();
        let mut helped = std::collections::BTreeSet::new();
        assert!(text.ends_with('\n'), "the text ends with a line break");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
                assert!(!help.is_empty(), "{line}");
                assert!(helped.insert(name.to_string()), "HELP twice: {line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                let earlier = families.insert(name.to_string(), kind.to_string());
                assert!(earlier.is_none(), "TYPE twice: {line}");
                continue;
            }
            assert!(!line.starts_with('#'), "an unknown comment: {line}");
            let name_end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or_else(|| panic!("no value: {line}"));
            let (name, mut rest) = line.split_at(name_end);
            let family = families
                .iter()
                .find(|(family, kind)| {
                    name == family.as_str()
                        || (kind.as_str() == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|suffix| name == format!("{family}{suffix}")))
                })
                .unwrap_or_else(|| panic!("a sample of no declared family: {line}"));
            if let Some(labels) = rest.strip_prefix('{') {
                rest = parse_labels(labels, line);
                if family.1 == "histogram" && name.ends_with("_bucket") {
                    assert!(line.contains("le=\""), "a bucket without `le`: {line}");
                }
            }
            let value = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("no space before the value: {line}"));
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "not a value: {line}"
            );
        }
        families
    }

    /// Checks `label="value",…}` and returns what follows the `}`.
    fn parse_labels<'a>(mut labels: &'a str, line: &str) -> &'a str {
        loop {
            let (key, rest) = labels
                .split_once("=\"")
                .unwrap_or_else(|| panic!("a label without a quoted value: {line}"));
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        let escaped = chars.next().map(|(_, c)| c);
                        assert!(
                            matches!(escaped, Some('\\' | '"' | 'n')),
                            "a bad escape: {line}"
                        );
                    }
                    Some((at, '"')) => break at,
                    Some((_, '\n')) | None => panic!("an unterminated label value: {line}"),
                    Some(_) => {}
                }
            };
            labels = &rest[end + 1..];
            if let Some(after) = labels.strip_prefix('}') {
                return after;
            }
            labels = labels
                .strip_prefix(',')
                .unwrap_or_else(|| panic!("labels not separated by commas: {line}"));
        }
    }

    /// Every metric name that dashboards and alarms know, with its type.
    const EVERY_FAMILY: [(&str, &str); 39] = [
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
        ("pageflow_sink_records_total", "counter"),
        ("pageflow_sink_retried_total", "counter"),
        ("pageflow_recommendations_total", "counter"),
        ("pageflow_checkpoints_total", "counter"),
        ("pageflow_checkpoint_duration_seconds", "gauge"),
        ("pageflow_checkpoint_pause_seconds", "gauge"),
        ("pageflow_checkpoint_save_seconds", "gauge"),
        ("pageflow_checkpoint_drain_work_seconds", "gauge"),
        ("pageflow_checkpoint_size_bytes", "gauge"),
        ("pageflow_checkpoint_stored_bytes", "gauge"),
        (
            "pageflow_checkpoint_last_success_timestamp_seconds",
            "gauge",
        ),
        ("pageflow_state_bytes", "gauge"),
        ("pageflow_state_keys", "gauge"),
        ("pageflow_kinesis_shards", "gauge"),
        ("pageflow_kinesis_listings_total", "counter"),
        ("pageflow_kinesis_millis_behind_latest", "gauge"),
        ("pageflow_kinesis_iterator_age_ms", "gauge"),
        ("pageflow_kinesis_records_total", "counter"),
        // New: the latency histograms.
        ("pageflow_http_request_duration_seconds", "histogram"),
        ("pageflow_event_to_ranking_seconds", "histogram"),
        ("pageflow_event_to_feature_seconds", "histogram"),
        ("pageflow_arrival_to_visible_seconds", "histogram"),
        ("pageflow_http_server_errors_total", "counter"),
        ("pageflow_checkpoint_durations_seconds", "histogram"),
        ("pageflow_checkpoint_pauses_seconds", "histogram"),
        // Rendered by the same encoder, tested in `scraped` (a forwarder needs an AWS client).
        ("pageflow_personalize_events_total", "counter"),
    ];

    #[test]
    fn renders_every_family_as_prometheus_text() {
        let metrics = Metrics::new();
        // A fresh registry: every family except those of a source not watched.
        let fresh = parse_families(&metrics.render_at(0));
        // Everything present: a watermark, a checkpoint, state sizes, a Kinesis source.
        metrics.set_watermark(5_000);
        metrics.checkpoint_completed(|figures| {
            figures.last_success_ms = Some(1_000);
            figures.last_duration_s = 0.25;
        });
        metrics.set_state_sizes(BTreeMap::from([("sessions".to_string(), (10, 2))]));
        metrics.watch_kinesis(Arc::new(ConsumerStatus::default()));
        metrics.record_http_request("rankings", Duration::from_millis(3));
        metrics.record_ranking_visible_at(5_000, 6_500);
        metrics.record_arrival_to_visible_at(6_000, 6_040);
        metrics.record_http_status(500);
        metrics.record_http_status(404);
        let text = metrics.render_at(9_000);
        let families = parse_families(&text);
        for (name, kind) in EVERY_FAMILY {
            if name.starts_with("pageflow_personalize") {
                continue;
            }
            assert_eq!(
                families.get(name).map(String::as_str),
                Some(kind),
                "{name}\n{text}"
            );
            if !name.starts_with("pageflow_kinesis") {
                assert_eq!(
                    fresh.get(name).map(String::as_str),
                    Some(kind),
                    "{name} (fresh)"
                );
            }
        }
        assert_eq!(
            families.len(),
            EVERY_FAMILY.len() - 1,
            "no family beyond the known ones: {families:?}"
        );
        let lines = samples(&text);
        for expected in [
            "pageflow_checkpoint_duration_seconds 0.25",
            "pageflow_checkpoint_last_success_timestamp_seconds 1.0",
            "pageflow_checkpoints_total{result=\"completed\"} 1",
            "pageflow_state_bytes{operator=\"sessions\"} 10",
            "pageflow_checkpoint_durations_seconds_bucket{le=\"0.25\"} 1",
            "pageflow_checkpoint_durations_seconds_bucket{le=\"0.1\"} 0",
            "pageflow_checkpoint_durations_seconds_count 1",
            "pageflow_event_to_ranking_seconds_bucket{le=\"1\"} 0",
            "pageflow_event_to_ranking_seconds_bucket{le=\"2.5\"} 1",
            "pageflow_event_to_ranking_seconds_sum 1.5",
            "pageflow_arrival_to_visible_seconds_bucket{le=\"0.025\"} 0",
            "pageflow_arrival_to_visible_seconds_bucket{le=\"0.05\"} 1",
            "pageflow_event_to_feature_seconds_count 0",
            "pageflow_http_server_errors_total 1",
            "pageflow_http_request_duration_seconds_count{group=\"rankings\"} 1",
            "pageflow_http_request_duration_seconds_bucket{group=\"rankings\",le=\"0.005\"} 1",
        ] {
            assert!(lines.contains(&expected), "missing `{expected}` in\n{text}");
        }
    }

    #[test]
    fn latencies_for_status() {
        let metrics = Metrics::new();
        let latencies = metrics.latencies();
        assert_eq!(
            latencies
                .http
                .iter()
                .map(|(group, _)| *group)
                .collect::<Vec<_>>(),
            HTTP_ROUTE_GROUPS
        );
        assert_eq!(latencies.event_to_ranking, LatencySummary::default());
        for ms in 1..=100 {
            metrics.record_http_request("metrics", Duration::from_millis(ms));
        }
        metrics.record_http_request("no_such_group", Duration::from_secs(1));
        // Event times ahead of the clock count as 0; the end of a bounded input is no latency.
        metrics.record_ranking_visible_at(9_000, 8_000);
        metrics.record_ranking_visible_at(u64::MAX, 8_000);
        metrics.record_ranking_visible(None);
        metrics.checkpoint_completed(|figures| {
            figures.last_duration_s = 2.0;
            figures.last_pause_s = 0.5;
        });
        let latencies = metrics.latencies();
        let (_, http) = latencies.http[3];
        assert_eq!(http.count, 100);
        let near = |got: Option<f64>, expected: f64| {
            got.is_some_and(|got| (got - expected).abs() <= expected * 0.001)
        };
        assert!(near(http.p50_s, 0.050), "{http:?}");
        assert!(near(http.p99_s, 0.099), "{http:?}");
        assert!(
            latencies
                .http
                .iter()
                .all(|(group, summary)| *group == "metrics" || summary.count == 0)
        );
        assert_eq!(latencies.event_to_ranking.count, 1);
        assert_eq!(latencies.event_to_ranking.p99_s, Some(0.0));
        assert_eq!(latencies.event_to_feature, LatencySummary::default());
        assert_eq!(latencies.arrival_to_visible, LatencySummary::default());
        // A ranking of the window ending at 60 s written at 62.5 s (and once at 59 s); rankings
        // visible 20 ms and 300 ms after the data that closed them arrived.
        let ranking = Feature::ranking(
            pageflow_dataflow::features::RankingKind::Popular,
            "g1",
            0,
            60_000,
            vec![],
        );
        metrics.record_feature_at(&ranking, 62_500);
        metrics.record_feature_at(&ranking, 59_000);
        metrics.record_arrival_to_visible_at(100_000, 100_020);
        metrics.record_arrival_to_visible_at(100_000, 100_300);
        let latencies = metrics.latencies();
        assert_eq!(metrics.features_emitted_total(), 2);
        assert_eq!(latencies.event_to_feature.count, 2);
        assert!(near(latencies.event_to_feature.p99_s, 2.5), "{latencies:?}");
        assert_eq!(
            latencies.event_to_feature.p50_s,
            Some(0.0),
            "written before its event time (a clock behind): 0"
        );
        assert_eq!(latencies.arrival_to_visible.count, 2);
        assert!(near(latencies.arrival_to_visible.p50_s, 0.020));
        assert!(near(latencies.arrival_to_visible.p99_s, 0.300));
        assert!(near(latencies.checkpoint_duration.p50_s, 2.0));
        assert!(near(latencies.checkpoint_pause.p50_s, 0.5));
        assert_eq!(
            ranking_watermark(&LiveUpdate::Reads {
                portal: "g1".into(),
                user_id: "u".into(),
                reads: vec![],
            }),
            None
        );
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
        // One series per reason code (Prometheus reads no order among them).
        let mut reasons: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("pageflow_dead_letters_total{reason=\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        reasons.sort_unstable();
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        assert_eq!(reasons, codes);
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
        assert!(samples(&metrics.render_at(0)).contains(&"pageflow_events_per_second 0.0"));
        // Sparse samples (one scrape every 15 s) still give a rate.
        metrics.add_events_in(300);
        let rate = metrics.sample_rate_at(t0 + Duration::from_secs(39));
        assert!((rate - 20.0).abs() < 1e-9, "{rate}");
        assert!(samples(&metrics.render_at(0)).contains(&"pageflow_events_per_second 20.0"));
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
}
