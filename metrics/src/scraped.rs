//! The families read at scrape time: values that live elsewhere (the Kinesis consumer's shard
//! table, the Personalize forwarder's counters, the heap counter, the checkpoint figures, the
//! operators' state sizes) or that depend on the moment of the scrape (the watermark's delay
//! behind the wall clock).
//!
//! They are a `prometheus-client` [`Collector`]: on each scrape it writes their `# HELP`/`# TYPE`
//! and samples with the crate's encoder, as if they were registered metrics. Families that only
//! exist with their source (Kinesis, Personalize) or with a value (the watermark) are left out
//! until then, as before.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pageflow_connectors::kinesis::consumer::{ConsumerStatus, ShardStatus};
use pageflow_connectors::personalize::{EventForwarder, ForwarderStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::CheckpointFigures;

/// Marks "no watermark yet" in the watermark atomic.
const NO_WATERMARK: u64 = 0;
/// The stored watermark is the real one plus this, so that 0 can mean "none".
const WATERMARK_OFFSET: u64 = 1;

/// What the job reports by handing over a value or a source, rather than by counting: shared by
/// [`crate::Metrics`] (which updates it) and the registry's collector (which encodes it).
#[derive(Debug)]
pub(crate) struct Observed {
    /// `watermark + 1`, saturating, or [`NO_WATERMARK`].
    watermark: AtomicU64,
    /// The wall clock (ms since the epoch) of the scrape being encoded, for the watermark delay.
    pub(crate) scrape_wall_ms: AtomicU64,
    /// The Kinesis consumer's per-shard state, when the source is Kinesis.
    pub(crate) kinesis: Mutex<Option<Arc<ConsumerStatus>>>,
    /// What the last checkpoints did.
    pub(crate) checkpoints: Mutex<CheckpointFigures>,
    /// Each operator's state (summed over workers) as last reported: `(bytes, keys)`.
    pub(crate) state: Mutex<BTreeMap<String, (u64, u64)>>,
    /// The Personalize event forwarder, when events are forwarded.
    pub(crate) personalize_events: Mutex<Option<Arc<EventForwarder>>>,
    /// This process's place in a cluster of processes, when the job runs as one.
    pub(crate) cluster: Mutex<Option<crate::ClusterPlace>>,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            watermark: AtomicU64::new(NO_WATERMARK),
            scrape_wall_ms: AtomicU64::new(0),
            kinesis: Mutex::default(),
            checkpoints: Mutex::default(),
            state: Mutex::default(),
            personalize_events: Mutex::default(),
            cluster: Mutex::default(),
        }
    }
}

impl Observed {
    pub(crate) fn set_watermark(&self, ms: u64) {
        self.watermark
            .store(ms.saturating_add(WATERMARK_OFFSET), Ordering::Relaxed);
    }

    pub(crate) fn watermark(&self) -> Option<u64> {
        match self.watermark.load(Ordering::Relaxed) {
            NO_WATERMARK => None,
            u64::MAX => Some(u64::MAX),
            stored => Some(stored - WATERMARK_OFFSET),
        }
    }
}

/// Locks `mutex`, a poisoned one included (the values stay usable).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registry's collector of the [`Observed`] families.
#[derive(Debug)]
pub(crate) struct ScrapeTimeFamilies(pub(crate) Arc<Observed>);

impl Collector for ScrapeTimeFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let observed = &self.0;
        encode_watermark(
            &mut encoder,
            observed.watermark(),
            observed.scrape_wall_ms.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "pageflow_heap_bytes",
            "Live heap of the process: bytes allocated and not yet freed.",
            crate::heap::live_bytes(),
        )?;
        let forwarder = lock(&observed.personalize_events).clone();
        if let Some(forwarder) = forwarder {
            encode_personalize_events(&mut encoder, &forwarder.stats())?;
        }
        let figures = lock(&observed.checkpoints).clone();
        encode_checkpoints(&mut encoder, &figures)?;
        let sizes = lock(&observed.state).clone();
        encode_state(&mut encoder, &sizes)?;
        let kinesis = lock(&observed.kinesis).clone();
        if let Some(status) = kinesis {
            encode_kinesis(&mut encoder, &status)?;
        }
        let cluster = lock(&observed.cluster).clone();
        if let Some(place) = cluster {
            gauge(
                &mut encoder,
                "pageflow_cluster_processes",
                "Processes that run the job together (a timely cluster).",
                place.addresses.len() as u64,
            )?;
            gauge(
                &mut encoder,
                "pageflow_cluster_process",
                "This process's index in the cluster (its metrics are its own).",
                place.process as u64,
            )?;
        }
        Ok(())
    }
}

/// One unlabelled gauge. `value` is an integer or a float (`+Inf`, `-Inf` and `NaN` spelled the
/// Prometheus way).
fn gauge<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One family of `kind` (counter or gauge) with one label: `(label value, value)` per series.
/// `name` is the name without `_total` for a counter (the encoder adds it).
fn family<'v>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    label: &str,
    series: impl IntoIterator<Item = (&'v str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (value_of_label, value) in series {
        let labels = [(label, value_of_label)];
        let series_encoder = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(series_encoder)?,
            _ => ConstGauge::new(value).encode(series_encoder)?,
        }
    }
    Ok(())
}

/// `pageflow_watermark_ms` and `pageflow_watermark_delay_ms`: headers always, samples once there
/// is a watermark; +∞ (the end of a bounded input) gives `+Inf` and `-Inf`.
fn encode_watermark(
    encoder: &mut DescriptorEncoder<'_>,
    watermark: Option<u64>,
    wall_ms: u64,
) -> Result<(), std::fmt::Error> {
    const WATERMARK: &str = "pageflow_watermark_ms";
    const WATERMARK_HELP: &str = "The job's event-time watermark in milliseconds since the Unix epoch (absent until there is one).";
    const DELAY: &str = "pageflow_watermark_delay_ms";
    const DELAY_HELP: &str =
        "Wall clock minus the watermark, in milliseconds (absent until there is a watermark).";
    match watermark {
        Some(u64::MAX) => {
            gauge(encoder, WATERMARK, WATERMARK_HELP, f64::INFINITY)?;
            gauge(encoder, DELAY, DELAY_HELP, f64::NEG_INFINITY)
        }
        Some(ms) => {
            gauge(encoder, WATERMARK, WATERMARK_HELP, ms)?;
            let delay = pageflow_dataflow::time::signed_difference_ms(wall_ms, ms);
            gauge(encoder, DELAY, DELAY_HELP, delay)
        }
        None => {
            // The families are described, with no sample, until there is a watermark.
            encoder.encode_descriptor(WATERMARK, WATERMARK_HELP, None, MetricType::Gauge)?;
            encoder.encode_descriptor(DELAY, DELAY_HELP, None, MetricType::Gauge)?;
            Ok(())
        }
    }
}

/// The Personalize event forwarder's families.
fn encode_personalize_events(
    encoder: &mut DescriptorEncoder<'_>,
    stats: &ForwarderStats,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        (
            "pageflow_personalize_events",
            "Pageviews offered to the Personalize event trackers, and what became of them.",
            MetricType::Counter,
        ),
        "outcome",
        [
            ("offered", stats.offered),
            ("sent", stats.sent_events),
            ("failed", stats.failed_events),
            ("dropped_queue_full", stats.dropped_queue_full),
            ("dropped_invalid", stats.dropped_invalid),
            ("dropped_closed", stats.dropped_closed),
        ],
    )?;
    family(
        encoder,
        (
            "pageflow_personalize_calls",
            "PutEvents calls sent, and calls retried after throttling or a failure.",
            MetricType::Counter,
        ),
        "result",
        [("sent", stats.sent_calls), ("retried", stats.retried_calls)],
    )
}

/// The checkpoint families: outcomes, the last one's duration, pause and size. (Their
/// distributions over every checkpoint are the registry's histograms.)
fn encode_checkpoints(
    encoder: &mut DescriptorEncoder<'_>,
    figures: &CheckpointFigures,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        (
            "pageflow_checkpoints",
            "Checkpoints taken, by result (completed: committed; failed: not written).",
            MetricType::Counter,
        ),
        "result",
        [("completed", figures.completed), ("failed", figures.failed)],
    )?;
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
            "pageflow_checkpoint_drain_work_seconds",
            "Of the last pause, the time spent finishing records in flight (work the dataflow would have done anyway).",
            figures.last_drain_work_s,
        ),
    ] {
        gauge(encoder, name, help, value)?;
    }
    gauge(
        encoder,
        "pageflow_checkpoint_size_bytes",
        "Bytes written by the last committed checkpoint (what changed since the one before).",
        figures.last_size_bytes,
    )?;
    gauge(
        encoder,
        "pageflow_checkpoint_stored_bytes",
        "Bytes of every run the last committed checkpoint's state is made of (base and deltas).",
        figures.stored_bytes,
    )?;
    const LAST_SUCCESS: &str = "pageflow_checkpoint_last_success_timestamp_seconds";
    const LAST_SUCCESS_HELP: &str = "When the last checkpoint was committed (absent until one is).";
    match figures.last_success_ms {
        Some(ms) => gauge(encoder, LAST_SUCCESS, LAST_SUCCESS_HELP, ms as f64 / 1000.0),
        None => encoder
            .encode_descriptor(LAST_SUCCESS, LAST_SUCCESS_HELP, None, MetricType::Gauge)
            .map(drop),
    }
}

/// The operators' state: bytes in memory and keys held, per operator.
fn encode_state(
    encoder: &mut DescriptorEncoder<'_>,
    sizes: &BTreeMap<String, (u64, u64)>,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        (
            "pageflow_state_bytes",
            "Bytes of state held in memory, by operator (summed over workers; `interned` is the table of portal and article ids every worker shares).",
            MetricType::Gauge,
        ),
        "operator",
        sizes
            .iter()
            .map(|(operator, (bytes, _))| (operator.as_str(), *bytes)),
    )?;
    family(
        encoder,
        (
            "pageflow_state_keys",
            "Keys held, by operator: open sessions, remembered event ids, articles, article pairs.",
            MetricType::Gauge,
        ),
        "operator",
        sizes
            .iter()
            .map(|(operator, (_, keys))| (operator.as_str(), *keys)),
    )
}

/// The Kinesis consumer's families: shard counts and per-shard lag.
fn encode_kinesis(
    encoder: &mut DescriptorEncoder<'_>,
    status: &ConsumerStatus,
) -> Result<(), std::fmt::Error> {
    let shards = status.shards();
    let finished = shards.iter().filter(|s| s.finished).count() as u64;
    family(
        encoder,
        (
            "pageflow_kinesis_shards",
            "Kinesis shards being read and read to their end.",
            MetricType::Gauge,
        ),
        "state",
        [
            ("reading", shards.len() as u64 - finished),
            ("finished", finished),
        ],
    )?;
    let listings = ConstCounter::new(status.listings.load(Ordering::Relaxed));
    listings.encode(encoder.encode_descriptor(
        "pageflow_kinesis_listings",
        "Completed ListShards discoveries.",
        None,
        MetricType::Counter,
    )?)?;
    let reading = || shards.iter().filter(|s| !s.finished);
    per_shard(
        encoder,
        (
            "pageflow_kinesis_millis_behind_latest",
            "How far behind the tip of each shard being read the consumer is (MillisBehindLatest).",
            MetricType::Gauge,
        ),
        reading().filter_map(|s| Some((s, ConstGauge::new(s.millis_behind_latest?)))),
    )?;
    per_shard(
        encoder,
        (
            "pageflow_kinesis_iterator_age_ms",
            "Age of the newest record of the last batch read from each shard (0 when caught up).",
            MetricType::Gauge,
        ),
        reading().filter_map(|s| Some((s, ConstGauge::new(s.iterator_age_ms?)))),
    )?;
    per_shard(
        encoder,
        (
            "pageflow_kinesis_records",
            "User records read from each shard.",
            MetricType::Counter,
        ),
        shards.iter().map(|s| (s, ConstCounter::new(s.records))),
    )
}

/// One family with a series per shard, labelled `stream` and `shard`.
fn per_shard<'s, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    series: impl IntoIterator<Item = (&'s ShardStatus, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (shard, value) in series {
        let labels = [
            ("stream", shard.stream.as_str()),
            ("shard", shard.shard.as_str()),
        ];
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    /// The forwarder's families from fixed counters (a real forwarder needs an AWS client).
    #[derive(Debug)]
    struct FixedForwarder(ForwarderStats);

    impl Collector for FixedForwarder {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            encode_personalize_events(&mut encoder, &self.0)
        }
    }

    #[test]
    fn personalize_families() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(FixedForwarder(ForwarderStats {
            offered: 9,
            sent_events: 7,
            retried_calls: 2,
            ..ForwarderStats::default()
        })));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        let families = crate::tests::parse_families(&text);
        assert_eq!(families["pageflow_personalize_events_total"], "counter");
        assert_eq!(families["pageflow_personalize_calls_total"], "counter");
        for expected in [
            "pageflow_personalize_events_total{outcome=\"offered\"} 9",
            "pageflow_personalize_events_total{outcome=\"sent\"} 7",
            "pageflow_personalize_events_total{outcome=\"dropped_closed\"} 0",
            "pageflow_personalize_calls_total{result=\"retried\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "missing `{expected}` in\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = crate::Metrics::new();
        metrics.set_state_sizes(BTreeMap::from([("a\"b\\c\nd".to_string(), (1, 1))]));
        let text = metrics.render_prometheus();
        assert!(
            text.contains("pageflow_state_bytes{operator=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
        crate::tests::parse_families(&text);
    }
}
