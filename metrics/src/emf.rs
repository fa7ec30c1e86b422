//! The job's metrics as CloudWatch embedded metric format (EMF) lines, so that CloudWatch has them
//! (and the alarms of `deploy/` data) from the job's log alone, with no agent and no API call.
//!
//! An EMF line is one JSON object: the values at its top level, and an `_aws` member that tells
//! CloudWatch Logs which of them are metrics, in which namespace, with which dimensions and units
//! ([the specification](https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)).
//! When `[metrics.emf] enabled = true`, the job prints one to standard output every `interval`
//! (60 s by default), made by an [`EmfReporter`]; on ECS the `awslogs` driver carries it to
//! CloudWatch Logs, which extracts the metrics. For example (one line, wrapped here):
//!
//! ```json
//! {"_aws":{"Timestamp":1764000060000,"CloudWatchMetrics":[{"Namespace":"Pageflow",
//!   "Dimensions":[["Environment"],["Environment","Process"]],
//!   "Metrics":[{"Name":"EventsIn","Unit":"Count"},{"Name":"WatermarkDelay","Unit":"Milliseconds"},…]}]},
//!  "Environment":"prod","Process":"0","EventsIn":120000,"EventsAccepted":118800,"Duplicates":600,
//!  "DeadLetters":600,"FeaturesEmitted":410,"WatermarkDelay":2150,"CheckpointAge":12000,
//!  "CheckpointFailures":0,"HttpRequests":5120,"Http5xx":0,"EventToFeatureP50":2480.0,
//!  "EventToFeatureP99":1801200.0,"ArrivalToVisibleP50":41.0,"ArrivalToVisibleP99":180.0,
//!  "HeapBytes":734003200}
//! ```
//!
//! **Namespace** `Pageflow` (`[metrics.emf] namespace`). **Dimensions**: `Environment`
//! (`[metrics.emf] environment`, `local` by default) and `Process` (this process's index in the
//! cluster, `0` alone); every metric is published under both dimension sets `[Environment]` and
//! `[Environment, Process]`, so an alarm can watch the whole job or one process.
//!
//! **Metrics** ([`EMF_METRICS`]); a Count is what happened during the interval (the difference
//! of the job's counters between two lines), the others are the value at the end of it:
//!
//! | name | unit | meaning |
//! |---|---|---|
//! | `EventsIn` | Count | records read from the sources (valid or not) |
//! | `EventsAccepted` | Count | valid, on-time, de-duplicated events counted |
//! | `Duplicates` | Count | duplicate beacons dropped |
//! | `DeadLetters` | Count | records sent to the dead-letter output, every reason |
//! | `FeaturesEmitted` | Count | feature records emitted, every type |
//! | `WatermarkDelay` | Milliseconds | wall clock minus the job watermark |
//! | `MillisBehindLatest` | Milliseconds | the largest Kinesis `MillisBehindLatest` over the shards being read |
//! | `IteratorAge` | Milliseconds | the largest iterator age over the shards being read |
//! | `CheckpointAge` | Milliseconds | time since the last committed checkpoint |
//! | `CheckpointFailures` | Count | checkpoints that failed |
//! | `HttpRequests` | Count | routed HTTP requests answered |
//! | `Http5xx` | Count | of which answered with a 5xx status |
//! | `EventToFeatureP50`, `EventToFeatureP99` | Milliseconds | event time → feature emitted, median and 99th percentile of the interval's records |
//! | `ArrivalToVisibleP50`, `ArrivalToVisibleP99` | Milliseconds | arrival → ranking visible over HTTP, of the interval's rankings |
//! | `HeapBytes` | Bytes | live heap of the process |
//!
//! A value that does not exist is left out of the line (and of its `Metrics` list, as the
//! specification requires), so CloudWatch sees missing data rather than a made-up zero:
//! `WatermarkDelay` before the first watermark and after a bounded input ended,
//! `MillisBehindLatest` and `IteratorAge` without a Kinesis source (or before a shard reported),
//! `CheckpointAge` before the first committed checkpoint, and a percentile over an interval
//! in which nothing was recorded. Alarms on those treat missing data as they see fit.

use serde_json::{Map, Value, json};

use crate::Metrics;
use crate::latency::LatencySnapshot;

/// A CloudWatch unit, as EMF spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmfUnit {
    /// A number of things in the interval.
    Count,
    /// A duration.
    Milliseconds,
    /// A size.
    Bytes,
}

impl EmfUnit {
    /// The unit's name in the `Unit` member.
    pub fn name(self) -> &'static str {
        match self {
            EmfUnit::Count => "Count",
            EmfUnit::Milliseconds => "Milliseconds",
            EmfUnit::Bytes => "Bytes",
        }
    }
}

/// Every metric a line may hold, with its unit, in the order of the line.
pub const EMF_METRICS: [(&str, EmfUnit); 17] = [
    ("EventsIn", EmfUnit::Count),
    ("EventsAccepted", EmfUnit::Count),
    ("Duplicates", EmfUnit::Count),
    ("DeadLetters", EmfUnit::Count),
    ("FeaturesEmitted", EmfUnit::Count),
    ("WatermarkDelay", EmfUnit::Milliseconds),
    ("MillisBehindLatest", EmfUnit::Milliseconds),
    ("IteratorAge", EmfUnit::Milliseconds),
    ("CheckpointAge", EmfUnit::Milliseconds),
    ("CheckpointFailures", EmfUnit::Count),
    ("HttpRequests", EmfUnit::Count),
    ("Http5xx", EmfUnit::Count),
    ("EventToFeatureP99", EmfUnit::Milliseconds),
    ("EventToFeatureP50", EmfUnit::Milliseconds),
    ("ArrivalToVisibleP99", EmfUnit::Milliseconds),
    ("ArrivalToVisibleP50", EmfUnit::Milliseconds),
    ("HeapBytes", EmfUnit::Bytes),
];

/// The dimension sets every metric is published under.
pub const EMF_DIMENSION_SETS: [&[&str]; 2] = [&["Environment"], &["Environment", "Process"]];

/// Where the lines' metrics go: `[metrics.emf]`'s `namespace` and `environment`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmfSettings {
    /// The CloudWatch namespace (`Pageflow`).
    pub namespace: String,
    /// The `Environment` dimension's value (`local`, `staging`, `prod` …).
    pub environment: String,
}

/// The counters and distributions as the last line saw them, to report the next interval's share.
#[derive(Clone, Debug, Default)]
struct Totals {
    events_in: u64,
    events_accepted: u64,
    duplicates: u64,
    dead_letters: u64,
    features_emitted: u64,
    checkpoint_failures: u64,
    http_requests: u64,
    http_5xx: u64,
    event_to_feature: LatencySnapshot,
    arrival_to_visible: LatencySnapshot,
}

impl Totals {
    fn of(metrics: &Metrics) -> Self {
        Totals {
            events_in: metrics.events_in(),
            events_accepted: metrics.events_accepted(),
            duplicates: metrics.duplicates(),
            dead_letters: metrics.dead_letters_total(),
            features_emitted: metrics.features_emitted_total(),
            checkpoint_failures: metrics.checkpoints().failed,
            http_requests: metrics.http_requests_total(),
            http_5xx: metrics.http_server_errors(),
            event_to_feature: metrics.event_to_feature.snapshot(),
            arrival_to_visible: metrics.arrival_to_visible.snapshot(),
        }
    }
}

/// Makes the EMF lines of one job: each line reports the interval since the one before (the
/// first, since the reporter was made).
#[derive(Debug)]
pub struct EmfReporter {
    settings: EmfSettings,
    previous: Totals,
}

impl EmfReporter {
    /// A reporter whose first line counts from now.
    pub fn new(settings: EmfSettings, metrics: &Metrics) -> Self {
        EmfReporter {
            settings,
            previous: Totals::of(metrics),
        }
    }

    /// The line for the interval ending now.
    pub fn line(&mut self, metrics: &Metrics) -> String {
        self.line_at(metrics, crate::wall_clock_ms())
    }

    /// The line for the interval ending at wall clock `now_ms` (ms since the epoch), which is
    /// also its `Timestamp`.
    pub fn line_at(&mut self, metrics: &Metrics, now_ms: u64) -> String {
        let now = Totals::of(metrics);
        let before = std::mem::replace(&mut self.previous, now);
        let now = &self.previous;
        let count = |of: fn(&Totals) -> u64| Some(Value::from(of(now).saturating_sub(of(&before))));
        let millis = |quantile: Option<f64>| quantile.map(|seconds| Value::from(seconds * 1000.0));
        let event_to_feature = now.event_to_feature.summary_since(&before.event_to_feature);
        let arrival_to_visible = now
            .arrival_to_visible
            .summary_since(&before.arrival_to_visible);
        let kinesis = metrics.kinesis_status().map(|status| status.shards());
        let largest =
            |of: fn(&pageflow_connectors::kinesis::consumer::ShardStatus) -> Option<u64>| {
                kinesis
                    .iter()
                    .flatten()
                    .filter(|shard| !shard.finished)
                    .filter_map(of)
                    .max()
                    .map(Value::from)
            };
        let values: [Option<Value>; EMF_METRICS.len()] = [
            count(|t| t.events_in),
            count(|t| t.events_accepted),
            count(|t| t.duplicates),
            count(|t| t.dead_letters),
            count(|t| t.features_emitted),
            metrics
                .watermark()
                .filter(|watermark| *watermark != u64::MAX)
                .map(|watermark| {
                    Value::from(pageflow_dataflow::time::signed_difference_ms(
                        now_ms, watermark,
                    ))
                }),
            largest(|shard| {
                shard
                    .millis_behind_latest
                    .map(|ms| ms.max(0).unsigned_abs())
            }),
            largest(|shard| shard.iterator_age_ms),
            metrics
                .checkpoints()
                .last_success_ms
                .map(|committed| Value::from(now_ms.saturating_sub(committed))),
            count(|t| t.checkpoint_failures),
            count(|t| t.http_requests),
            count(|t| t.http_5xx),
            millis(event_to_feature.p99_s),
            millis(event_to_feature.p50_s),
            millis(arrival_to_visible.p99_s),
            millis(arrival_to_visible.p50_s),
            Some(Value::from(crate::heap::live_bytes())),
        ];
        let process = metrics.cluster().map_or(0, |place| place.process);
        self.document(now_ms, process, values)
    }

    /// The EMF object: the present values at the top level and the directive naming them.
    fn document(
        &self,
        now_ms: u64,
        process: usize,
        values: [Option<Value>; EMF_METRICS.len()],
    ) -> String {
        let mut root = Map::new();
        let mut definitions = Vec::new();
        for ((name, unit), value) in EMF_METRICS.into_iter().zip(values) {
            if let Some(value) = value {
                definitions.push(json!({"Name": name, "Unit": unit.name()}));
                root.insert(name.to_string(), value);
            }
        }
        root.insert(
            "Environment".to_string(),
            Value::from(self.settings.environment.as_str()),
        );
        root.insert("Process".to_string(), Value::from(process.to_string()));
        root.insert(
            "_aws".to_string(),
            json!({
                "Timestamp": now_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.settings.namespace,
                    "Dimensions": EMF_DIMENSION_SETS,
                    "Metrics": definitions,
                }],
            }),
        );
        Value::Object(root).to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use pageflow_dataflow::event::Reason;
    use pageflow_dataflow::features::Feature;

    use super::*;

    fn settings() -> EmfSettings {
        EmfSettings {
            namespace: "Pageflow".to_string(),
            environment: "test".to_string(),
        }
    }

    /// Checks `line` against the EMF specification and returns it parsed: one JSON object; `_aws`
    /// with exactly `Timestamp` (ms since the epoch, an integer) and `CloudWatchMetrics`, an array
    /// of directives with exactly `Namespace` (a non-empty string), `Dimensions` (an array of
    /// dimension sets, each an array of at most 30 names, each a string member of the root) and
    /// `Metrics` (at most 100 definitions `{Name, Unit}` with a known unit, each name a number
    /// member of the root, none twice).
    fn parse_emf(line: &str) -> Map<String, Value> {
        assert!(!line.contains('\n'), "one line: {line}");
        let Value::Object(root) = serde_json::from_str::<Value>(line).unwrap() else {
            panic!("not an object: {line}");
        };
        let aws = root["_aws"].as_object().unwrap();
        assert_eq!(
            aws.keys().collect::<BTreeSet<_>>(),
            BTreeSet::from([&"CloudWatchMetrics".to_string(), &"Timestamp".to_string()]),
            "{line}"
        );
        assert!(aws["Timestamp"].is_u64(), "{line}");
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert!(!directives.is_empty());
        for directive in directives {
            let directive = directive.as_object().unwrap();
            assert_eq!(directive.len(), 3, "{line}");
            assert!(
                directive["Namespace"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            );
            for set in directive["Dimensions"].as_array().unwrap() {
                let set = set.as_array().unwrap();
                assert!(!set.is_empty() && set.len() <= 30, "{line}");
                for dimension in set {
                    let name = dimension.as_str().unwrap();
                    assert!(
                        root[name].is_string(),
                        "dimension {name} not at the root: {line}"
                    );
                }
            }
            let definitions = directive["Metrics"].as_array().unwrap();
            assert!(definitions.len() <= 100);
            let mut seen = BTreeSet::new();
            for definition in definitions {
                let definition = definition.as_object().unwrap();
                assert_eq!(definition.len(), 2, "{line}");
                let name = definition["Name"].as_str().unwrap();
                assert!(seen.insert(name), "{name} twice");
                assert!(
                    ["Count", "Milliseconds", "Bytes"]
                        .contains(&definition["Unit"].as_str().unwrap()),
                    "{line}"
                );
                assert!(root[name].is_number(), "{name} has no value: {line}");
            }
        }
        root
    }

    /// A latency in milliseconds as HdrHistogram reports it: within 0.1 % of `expected`.
    fn assert_near(got: &Value, expected: f64) {
        let got = got
            .as_f64()
            .unwrap_or_else(|| panic!("not a number: {got}"));
        assert!(
            (got - expected).abs() <= expected * 0.001,
            "{got} vs {expected}"
        );
    }

    /// The metric names the directive of `root` declares.
    fn declared(root: &Map<String, Value>) -> Vec<String> {
        root["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["Name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_line_follows_the_specification_and_the_contract() {
        let metrics = Metrics::new();
        let mut reporter = EmfReporter::new(settings(), &metrics);
        metrics.add_events_in(10);
        metrics.set_watermark(50_000);
        metrics.checkpoint_completed(|figures| figures.last_success_ms = Some(55_000));
        metrics.record_http_request("rankings", Duration::from_millis(2));
        metrics.record_http_status(200);
        metrics.record_arrival_to_visible_at(59_000, 59_040);
        let root = parse_emf(&reporter.line_at(&metrics, 60_000));
        assert_eq!(root["_aws"]["Timestamp"], 60_000);
        let directive = &root["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Pageflow");
        assert_eq!(
            directive["Dimensions"],
            json!([["Environment"], ["Environment", "Process"]])
        );
        assert_eq!(root["Environment"], "test");
        assert_eq!(root["Process"], "0", "alone: process 0");
        for (name, unit) in EMF_METRICS {
            let definition = directive["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["Name"] == name);
            // Only the Kinesis lags and the feature latency have no value here.
            if ["MillisBehindLatest", "IteratorAge"].contains(&name)
                || name.starts_with("EventToFeature")
            {
                assert!(definition.is_none(), "{name} without a value");
                assert!(!root.contains_key(name));
                continue;
            }
            let definition = definition.unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(definition["Unit"], unit.name(), "{name}");
        }
        assert_eq!(root["EventsIn"], 10);
        assert_eq!(root["WatermarkDelay"], 10_000);
        assert_eq!(root["CheckpointAge"], 5_000);
        assert_eq!(root["HttpRequests"], 1);
        assert_eq!(root["Http5xx"], 0);
        assert_near(&root["ArrivalToVisibleP50"], 40.0);
        assert_near(&root["ArrivalToVisibleP99"], 40.0);
        assert!(root["HeapBytes"].is_u64());
    }

    #[test]
    fn counts_are_the_interval_s_and_percentiles_the_interval_s_records() {
        let metrics = Metrics::new();
        metrics.add_events_in(1_000);
        // What happened before the reporter started is not reported.
        let mut reporter = EmfReporter::new(settings(), &metrics);
        metrics.add_events_in(7);
        metrics.add_dead_letters(Reason::Late, 2);
        metrics.add_dead_letters(Reason::InvalidJson, 1);
        metrics.checkpoint_failed();
        metrics.record_http_status(503);
        let session_ended_at = |end_ts: u64| {
            Feature::Session(pageflow_dataflow::features::SessionFeature {
                feature_id: "f".into(),
                portal: "g1".into(),
                user_id: "u".into(),
                session_id: "s".into(),
                start_ts: 0,
                end_ts,
                views: 1,
                distinct_articles: 1,
                dwell_ms_total: 0,
                clicks_total: 0,
                max_scroll_pct: 0,
                articles: vec![],
            })
        };
        metrics.record_feature_at(&session_ended_at(10_000), 12_000);
        let first = parse_emf(&reporter.line_at(&metrics, 60_000));
        assert_eq!(first["EventsIn"], 7);
        assert_eq!(first["DeadLetters"], 3);
        assert_eq!(first["CheckpointFailures"], 1);
        assert_eq!(first["Http5xx"], 1);
        assert_eq!(first["FeaturesEmitted"], 1);
        assert_near(&first["EventToFeatureP50"], 2_000.0);

        metrics.add_events_in(5);
        metrics.record_feature_at(&session_ended_at(10_000), 10_500);
        let second = parse_emf(&reporter.line_at(&metrics, 120_000));
        assert_eq!(second["EventsIn"], 5, "the delta, not the total of 1,012");
        assert_eq!(second["DeadLetters"], 0);
        assert_eq!(second["CheckpointFailures"], 0);
        assert_eq!(second["Http5xx"], 0);
        assert_eq!(second["FeaturesEmitted"], 1);
        assert_near(&second["EventToFeatureP99"], 500.0); // this interval's record only

        // Nothing recorded in the third interval: no percentile, counts at zero.
        let third = parse_emf(&reporter.line_at(&metrics, 180_000));
        assert_eq!(third["EventsIn"], 0);
        assert!(
            !declared(&third)
                .iter()
                .any(|n| n.starts_with("EventToFeature"))
        );
        assert!(!third.contains_key("EventToFeatureP50"));
    }

    #[test]
    fn a_cluster_process_reports_its_index_and_an_ended_input_no_delay() {
        let metrics = Metrics::new();
        metrics.set_cluster(crate::ClusterPlace {
            process: 2,
            addresses: vec!["a:1".into(), "b:1".into(), "c:1".into()],
            threads: 1,
        });
        metrics.set_watermark(u64::MAX);
        let mut reporter = EmfReporter::new(settings(), &metrics);
        let root = parse_emf(&reporter.line_at(&metrics, 1_000));
        assert_eq!(root["Process"], "2");
        assert!(!declared(&root).contains(&"WatermarkDelay".to_string()));
        assert!(!declared(&root).contains(&"CheckpointAge".to_string()));
    }
}
