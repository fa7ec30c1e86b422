//! `GET /v1/status`: the job's health in one JSON answer, for the dashboard and for operators.
//!
//! `/metrics` has the same figures for Prometheus, `/readyz` says yes or no to a load balancer;
//! this answer gathers what a person looking at the job wants at a glance: how fast events come
//! in, how many were refused and why, how far the job is behind its sources and behind the wall
//! clock, when it last checkpointed, and whether it is ready (with the reasons when it is not).
//! Everything is read from the [`Metrics`] and the [`ServingState`]; nothing is computed anew
//! except the event rate, which each request samples as a `/metrics` scrape does.
//!
//! ```json
//! {
//!   "ready": true,
//!   "not_ready": [],
//!   "uptime_s": 73.2,
//!   "now_ms": 1764000073200,
//!   "events": {
//!     "per_second": 2998.5,
//!     "in_total": 219000, "accepted_total": 214800, "duplicates_total": 2100,
//!     "blank_lines_total": 0, "dead_letters_total": 2100,
//!     "dead_letters_by_reason": {"bad_pattern": 410, "late": 900, "…": 0}
//!   },
//!   "watermark": {"ms": 1764000071000, "delay_ms": 2200, "input_ended": false},
//!   "lag_ms": null,
//!   "kinesis": null,
//!   "checkpoint": {"completed": 2, "failed": 0, "last_id": 2, "last_success_ms": 1764000061000,
//!                  "age_ms": 12200, "last_duration_s": 0.21},
//!   "portals": ["g1", "ge", "gshow"],
//!   "latency": {
//!     "http": {"rankings": {"count": 5120, "p50_s": 0.00021, "p99_s": 0.0019}, "…": {}},
//!     "event_to_ranking": {"count": 310, "p50_s": 2.1, "p99_s": 4.9},
//!     "event_to_feature": {"count": 2480, "p50_s": 2.3, "p99_s": 1801.2},
//!     "arrival_to_visible": {"count": 310, "p50_s": 0.041, "p99_s": 0.18},
//!     "checkpoint_duration": {"count": 2, "p50_s": 0.19, "p99_s": 0.21},
//!     "checkpoint_pause": {"count": 2, "p50_s": 0.02, "p99_s": 0.03}
//!   },
//!   "cluster": null
//! }
//! ```
//!
//! In a cluster, `"cluster"` reads e.g.
//! `{"process": 1, "processes": 2, "workers": 4, "peers": [{"process": 0, "address":
//! "pageflow-p0.pageflow.local:7100", "this_process": false}, {"process": 1, "address": "…",
//! "this_process": true}]}`.
//!
//! - `ready`/`not_ready`: what `/readyz` decides, with its reasons (empty when ready).
//! - `events.per_second`: records read per second over the last ~10 s
//!   ([`pageflow_metrics::RATE_WINDOW`]); the totals count since the process started;
//!   `dead_letters_by_reason` has every reason code, zeros included.
//! - `watermark.ms`: the job's event-time watermark, `null` before the first one; `delay_ms`:
//!   wall clock minus watermark (negative when the event times are ahead of this clock);
//!   `input_ended`: a bounded input was read to its end (the watermark is then +∞, and `ms` and
//!   `delay_ms` are `null`).
//! - `lag_ms`: how far behind the tip of its sources the job reads, the largest Kinesis
//!   `MillisBehindLatest` over the shards being read, by any process of the job (each partition
//!   reports its lag with its watermark, and every process hears every partition); `null` when
//!   the source is not Kinesis or no shard was read yet.
//! - `kinesis`: shard counts and lags when the source is Kinesis, else `null`.
//! - `checkpoint`: committed and failed checkpoints since start, the last committed one's id,
//!   commit time (ms since the epoch), age and duration; `null` ids and times before the first.
//! - `cluster`: when the job runs as several processes (`[cluster]`), this process's index, the
//!   number of processes and of workers, and every process with its address (`null` for one
//!   process). Every process answers for the whole job, but `events`, `kinesis`, `checkpoint`
//!   and `latency` are this process's own (its shards, its part of each checkpoint); `watermark`
//!   and `lag_ms` are the cluster's.
//! - `portals`: the portals with a ranking, sorted.
//! - `latency`: distributions since start (HdrHistogram, quantiles within 0.1 %; `p50_s` and
//!   `p99_s` are `null` while `count` is 0): `http` by route group (`rankings`,
//!   `recommendations`, `dashboard`, `metrics`, `open`), the time to answer a request up to the
//!   response head; `event_to_ranking`, for each ranking made visible, the wall clock minus the
//!   ranking's watermark (event time → visible); `event_to_feature`, for each feature record
//!   written, the wall clock minus its event time (its window's end, a session's last event:
//!   sessions wait a session gap, so they make the high quantiles); `arrival_to_visible`, for
//!   each ranking made visible, the wall clock minus the moment the job watermark first reached
//!   the ranking's watermark (the arrival of the data that closed it: the pipeline's own delay,
//!   at 10 ms resolution); `checkpoint_duration` (request to commit) and
//!   `checkpoint_pause` (the dataflow standing still) of each committed checkpoint. `/metrics`
//!   has them as histograms.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use pageflow_connectors::kinesis::consumer::ShardStatus;
use pageflow_dataflow::event::Reason;
use serde::Serialize;

use super::health::readiness_problems;
use crate::api::json;
use crate::app::App;
use crate::state::ServingState;
use pageflow_metrics::latency::LatencySummary;
use pageflow_metrics::{Latencies, Metrics};

/// The status route.
pub(crate) fn routes() -> Router<App> {
    Router::new().route("/v1/status", get(status))
}

/// `GET /v1/status`.
async fn status(State(app): State<App>) -> Response {
    let events_per_second = app.metrics.sample_rate();
    let shards = app.metrics.kinesis_status().map(|status| status.shards());
    let now_ms = pageflow_dataflow::clock::unix_now_ms();
    json(&job_status(
        &app.state,
        &app.metrics,
        StatusInputs {
            shards: shards.as_deref(),
            now_ms,
            events_per_second,
            uptime: app.metrics.uptime(),
            job_lag_ms: app.job.lag_ms(),
        },
    ))
}

/// What the status is built from besides the state and the metrics: the readings that depend on
/// the moment (given, so that tests choose them).
#[derive(Clone, Copy, Debug)]
pub struct StatusInputs<'a> {
    /// The Kinesis shards, when the source is Kinesis.
    pub shards: Option<&'a [ShardStatus]>,
    /// The wall clock, ms since the epoch.
    pub now_ms: u64,
    /// The current event rate (records per second).
    pub events_per_second: f64,
    /// How long the job has run.
    pub uptime: Duration,
    /// The largest lag any partition of the whole job reports (from the watermark board, which
    /// hears every process's partitions); `None` when none reports one.
    pub job_lag_ms: Option<u64>,
}

/// The answer of `GET /v1/status`; the module docs describe each field.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobStatus {
    /// Whether `/readyz` says ready.
    pub ready: bool,
    /// Why not, in `/readyz`'s words; empty when ready.
    pub not_ready: Vec<String>,
    /// Seconds since the job started.
    pub uptime_s: f64,
    /// The wall clock the figures were taken at, ms since the epoch.
    pub now_ms: u64,
    /// Event rate and totals.
    pub events: EventFigures,
    /// The job's watermark and its delay.
    pub watermark: WatermarkFigures,
    /// The largest Kinesis `MillisBehindLatest` over the shards being read.
    pub lag_ms: Option<i64>,
    /// The Kinesis shards, when the source is Kinesis.
    pub kinesis: Option<KinesisFigures>,
    /// The checkpoints taken since start.
    pub checkpoint: CheckpointStatus,
    /// The portals with a ranking, sorted.
    pub portals: Vec<String>,
    /// Latency distributions since start.
    pub latency: LatencyStatus,
    /// The processes running the job together, when it runs as a cluster.
    pub cluster: Option<ClusterFigures>,
}

/// The processes of a cluster as this one sees them: every process answers for the whole job
/// (rankings, related, recommendations), while its counters are its own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterFigures {
    /// This process's index.
    pub process: usize,
    /// How many processes run the job.
    pub processes: usize,
    /// Worker threads of the whole job (processes × workers per process).
    pub workers: usize,
    /// Every process, in order, with its address (all connected while this one runs: a lost
    /// peer stops every process).
    pub peers: Vec<PeerFigures>,
}

/// One process of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerFigures {
    /// Its index.
    pub process: usize,
    /// Its `host:port` in `[cluster] addresses`.
    pub address: String,
    /// Whether it is the process answering.
    pub this_process: bool,
}

/// Latency distributions since start, each as count, p50 and p99.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyStatus {
    /// HTTP requests by route group (every group present).
    pub http: BTreeMap<&'static str, Quantiles>,
    /// For each ranking made visible: wall clock minus its watermark.
    pub event_to_ranking: Quantiles,
    /// For each feature record written: wall clock minus its event time.
    pub event_to_feature: Quantiles,
    /// For each ranking made visible: wall clock minus the arrival of the data that closed it.
    pub arrival_to_visible: Quantiles,
    /// Committed checkpoints, request to commit.
    pub checkpoint_duration: Quantiles,
    /// Committed checkpoints, the longest the dataflow stood still.
    pub checkpoint_pause: Quantiles,
}

/// One distribution: how many values, and its median and 99th percentile in seconds (`None`
/// while there is no value).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Quantiles {
    /// Values recorded.
    pub count: u64,
    /// The median, seconds.
    pub p50_s: Option<f64>,
    /// The 99th percentile, seconds.
    pub p99_s: Option<f64>,
}

impl From<LatencySummary> for Quantiles {
    fn from(summary: LatencySummary) -> Self {
        Quantiles {
            count: summary.count,
            p50_s: summary.p50_s,
            p99_s: summary.p99_s,
        }
    }
}

impl From<Latencies> for LatencyStatus {
    fn from(latencies: Latencies) -> Self {
        LatencyStatus {
            http: latencies
                .http
                .into_iter()
                .map(|(group, summary)| (group, summary.into()))
                .collect(),
            event_to_ranking: latencies.event_to_ranking.into(),
            event_to_feature: latencies.event_to_feature.into(),
            arrival_to_visible: latencies.arrival_to_visible.into(),
            checkpoint_duration: latencies.checkpoint_duration.into(),
            checkpoint_pause: latencies.checkpoint_pause.into(),
        }
    }
}

/// Event rate and totals since start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventFigures {
    /// Records read per second over the last ~10 s.
    pub per_second: f64,
    /// Records read (valid or not).
    pub in_total: u64,
    /// Valid, on-time, de-duplicated events.
    pub accepted_total: u64,
    /// Duplicate beacons dropped.
    pub duplicates_total: u64,
    /// Blank lines skipped.
    pub blank_lines_total: u64,
    /// Records sent to the dead-letter output.
    pub dead_letters_total: u64,
    /// The same by reason code, every code present.
    pub dead_letters_by_reason: BTreeMap<&'static str, u64>,
}

/// The job's event-time watermark.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WatermarkFigures {
    /// ms since the epoch; `None` before the first and after the input ended.
    pub ms: Option<u64>,
    /// Wall clock minus watermark, ms.
    pub delay_ms: Option<i64>,
    /// A bounded input was read to its end (the watermark is +∞).
    pub input_ended: bool,
}

/// The Kinesis consumer at a glance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KinesisFigures {
    /// Shards being read.
    pub shards_reading: usize,
    /// Shards read to their end.
    pub shards_finished: usize,
    /// Shards being read whose last attempt failed (retried).
    pub shards_failing: usize,
    /// The largest `MillisBehindLatest` over the shards being read.
    pub max_millis_behind_latest: Option<i64>,
    /// The largest iterator age over the shards being read.
    pub max_iterator_age_ms: Option<u64>,
}

/// The checkpoints taken since start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointStatus {
    /// Committed.
    pub completed: u64,
    /// Not committed.
    pub failed: u64,
    /// The last committed one's id.
    pub last_id: Option<u64>,
    /// When it was committed, ms since the epoch.
    pub last_success_ms: Option<u64>,
    /// How long ago, ms.
    pub age_ms: Option<u64>,
    /// From request to commit, seconds.
    pub last_duration_s: f64,
}

/// The status of the job behind `state` and `metrics` at `inputs.now_ms`.
pub fn job_status(state: &ServingState, metrics: &Metrics, inputs: StatusInputs<'_>) -> JobStatus {
    let not_ready = readiness_problems(state.is_loaded(), inputs.shards);
    let dead_letters_by_reason = Reason::ALL
        .iter()
        .map(|reason| (reason.code(), metrics.dead_letters(*reason)))
        .collect();
    let watermark = match metrics.watermark() {
        Some(u64::MAX) => WatermarkFigures {
            ms: None,
            delay_ms: None,
            input_ended: true,
        },
        Some(ms) => WatermarkFigures {
            ms: Some(ms),
            delay_ms: Some(pageflow_dataflow::time::signed_difference_ms(
                inputs.now_ms,
                ms,
            )),
            input_ended: false,
        },
        None => WatermarkFigures {
            ms: None,
            delay_ms: None,
            input_ended: false,
        },
    };
    let kinesis = inputs.shards.map(kinesis_figures);
    let checkpoints = metrics.checkpoints();
    JobStatus {
        ready: not_ready.is_empty(),
        not_ready,
        uptime_s: inputs.uptime.as_secs_f64(),
        now_ms: inputs.now_ms,
        events: EventFigures {
            per_second: inputs.events_per_second,
            in_total: metrics.events_in(),
            accepted_total: metrics.events_accepted(),
            duplicates_total: metrics.duplicates(),
            blank_lines_total: metrics.blank_lines(),
            dead_letters_total: metrics.dead_letters_total(),
            dead_letters_by_reason,
        },
        watermark,
        lag_ms: inputs
            .job_lag_ms
            .map(|lag| i64::try_from(lag).unwrap_or(i64::MAX))
            .or_else(|| kinesis.as_ref().and_then(|k| k.max_millis_behind_latest)),
        kinesis,
        checkpoint: CheckpointStatus {
            completed: checkpoints.completed,
            failed: checkpoints.failed,
            last_id: checkpoints.last_id,
            last_success_ms: checkpoints.last_success_ms,
            age_ms: checkpoints
                .last_success_ms
                .map(|at| inputs.now_ms.saturating_sub(at)),
            last_duration_s: checkpoints.last_duration_s,
        },
        portals: state.portals(),
        latency: metrics.latencies().into(),
        cluster: metrics.cluster().map(|place| ClusterFigures {
            process: place.process,
            processes: place.addresses.len(),
            workers: place.addresses.len() * place.threads,
            peers: place
                .addresses
                .iter()
                .enumerate()
                .map(|(process, address)| PeerFigures {
                    process,
                    address: address.clone(),
                    this_process: process == place.process,
                })
                .collect(),
        }),
    }
}

/// Shard counts and the largest lags over the shards still being read.
fn kinesis_figures(shards: &[ShardStatus]) -> KinesisFigures {
    let reading = || shards.iter().filter(|shard| !shard.finished);
    KinesisFigures {
        shards_reading: reading().count(),
        shards_finished: shards.iter().filter(|shard| shard.finished).count(),
        shards_failing: reading().filter(|shard| shard.last_error.is_some()).count(),
        max_millis_behind_latest: reading()
            .filter_map(|shard| shard.millis_behind_latest)
            .max(),
        max_iterator_age_ms: reading().filter_map(|shard| shard.iterator_age_ms).max(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use pageflow_dataflow::features::RankingKind;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::router::router;
    use crate::state::tests::ranking as ranking_update;

    const NOW_MS: u64 = 1_764_000_000_000;

    fn inputs(shards: Option<&[ShardStatus]>) -> StatusInputs<'_> {
        StatusInputs {
            shards,
            now_ms: NOW_MS,
            events_per_second: 12.5,
            uptime: Duration::from_millis(4_500),
            job_lag_ms: None,
        }
    }

    #[test]
    fn a_fresh_job_has_zeros_and_nulls() {
        let status = job_status(&ServingState::new(), &Metrics::new(), inputs(None));
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(value["ready"], false);
        assert!(
            value["not_ready"][0]
                .as_str()
                .is_some_and(|reason| reason.contains("loading")),
            "{value}"
        );
        assert_eq!(value["uptime_s"], 4.5);
        assert_eq!(value["events"]["per_second"], 12.5);
        assert_eq!(value["events"]["in_total"], 0);
        assert_eq!(value["events"]["dead_letters_total"], 0);
        let reasons = value["events"]["dead_letters_by_reason"]
            .as_object()
            .unwrap_or_else(|| panic!("{value}"));
        assert_eq!(reasons.len(), Reason::ALL.len());
        assert_eq!(
            value["watermark"],
            json!({"ms": null, "delay_ms": null, "input_ended": false})
        );
        assert_eq!(value["lag_ms"], Value::Null);
        assert_eq!(value["kinesis"], Value::Null);
        assert_eq!(
            value["checkpoint"],
            json!({"completed": 0, "failed": 0, "last_id": null, "last_success_ms": null,
                   "age_ms": null, "last_duration_s": 0.0})
        );
        assert_eq!(value["portals"], json!([]));
        let none = json!({"count": 0, "p50_s": null, "p99_s": null});
        assert_eq!(
            value["latency"],
            json!({
                "http": {"dashboard": none, "metrics": none, "open": none,
                         "rankings": none, "recommendations": none},
                "event_to_ranking": none,
                "event_to_feature": none,
                "arrival_to_visible": none,
                "checkpoint_duration": none,
                "checkpoint_pause": none,
            })
        );
        assert_eq!(value["cluster"], Value::Null, "one process");
    }

    #[test]
    fn a_process_of_a_cluster_lists_every_process_and_itself() {
        let metrics = Metrics::new();
        metrics.set_cluster(pageflow_metrics::ClusterPlace {
            process: 1,
            addresses: vec!["p0.local:7100".into(), "p1.local:7100".into()],
            threads: 2,
        });
        let status = job_status(&ServingState::new(), &metrics, inputs(None));
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(
            value["cluster"],
            json!({"process": 1, "processes": 2, "workers": 4, "peers": [
                {"process": 0, "address": "p0.local:7100", "this_process": false},
                {"process": 1, "address": "p1.local:7100", "this_process": true},
            ]})
        );
        let rendered = metrics.render_prometheus();
        assert!(
            rendered.contains("pageflow_cluster_processes 2"),
            "{rendered}"
        );
        assert!(
            rendered.contains("pageflow_cluster_process 1"),
            "{rendered}"
        );
    }

    #[test]
    fn a_running_job_reports_its_figures() {
        let state = ServingState::new();
        state.mark_loaded();
        state.apply(ranking_update(
            RankingKind::Popular,
            "g1",
            60_000,
            60_000,
            true,
            &["a"],
        ));
        let metrics = Metrics::new();
        metrics.add_events_in(100);
        metrics.add_events_accepted(90);
        metrics.add_duplicates(4);
        metrics.add_dead_letters(Reason::Late, 5);
        metrics.add_dead_letters(Reason::InvalidJson, 1);
        metrics.set_watermark(NOW_MS - 2_500);
        metrics.checkpoint_completed(|figures| {
            figures.last_id = Some(7);
            figures.last_success_ms = Some(NOW_MS - 10_000);
            figures.last_duration_s = 0.25;
        });
        let status = job_status(&state, &metrics, inputs(None));
        assert!(status.ready, "{status:?}");
        assert!(status.not_ready.is_empty());
        assert_eq!(status.events.in_total, 100);
        assert_eq!(status.events.accepted_total, 90);
        assert_eq!(status.events.duplicates_total, 4);
        assert_eq!(status.events.dead_letters_total, 6);
        assert_eq!(status.events.dead_letters_by_reason["late"], 5);
        assert_eq!(status.events.dead_letters_by_reason["invalid_json"], 1);
        assert_eq!(status.events.dead_letters_by_reason["too_large"], 0);
        assert_eq!(status.watermark.ms, Some(NOW_MS - 2_500));
        assert_eq!(status.watermark.delay_ms, Some(2_500));
        assert_eq!(status.checkpoint.last_id, Some(7));
        assert_eq!(status.checkpoint.age_ms, Some(10_000));
        assert_eq!(status.checkpoint.completed, 1);
        assert_eq!(status.portals, ["g1"]);
        // The latencies: the checkpoint above, rankings seen 1.5 s and 3 s after their watermark.
        metrics.record_ranking_visible_at(60_000, 61_500);
        metrics.record_ranking_visible_at(60_000, 63_000);
        // Their data arrived 25 ms and 250 ms before; a feature written 2 s after its window.
        metrics.record_arrival_to_visible_at(61_475, 61_500);
        metrics.record_arrival_to_visible_at(62_750, 63_000);
        let ranking = pageflow_dataflow::features::Feature::ranking(
            pageflow_dataflow::features::RankingKind::Trending,
            "g1",
            0,
            60_000,
            vec![],
        );
        metrics.record_feature_at(&ranking, 62_000);
        let status = job_status(&state, &metrics, inputs(None));
        let latency = &status.latency;
        assert_eq!(latency.checkpoint_duration.count, 1);
        let near = |got: Option<f64>, expected: f64| {
            got.is_some_and(|got| (got - expected).abs() <= expected * 0.001)
        };
        assert!(near(latency.checkpoint_duration.p50_s, 0.25), "{latency:?}");
        assert_eq!(latency.event_to_ranking.count, 2);
        assert!(near(latency.event_to_ranking.p50_s, 1.5), "{latency:?}");
        assert!(near(latency.event_to_ranking.p99_s, 3.0), "{latency:?}");
        assert_eq!(latency.arrival_to_visible.count, 2);
        assert!(near(latency.arrival_to_visible.p50_s, 0.025), "{latency:?}");
        assert!(near(latency.arrival_to_visible.p99_s, 0.25), "{latency:?}");
        assert_eq!(latency.event_to_feature.count, 1);
        assert!(near(latency.event_to_feature.p50_s, 2.0), "{latency:?}");
        assert_eq!(latency.http["rankings"].count, 0);

        // Event times ahead of the clock: a negative delay. The end of a bounded input: +∞.
        metrics.set_watermark(NOW_MS + 1_000);
        let status = job_status(&state, &metrics, inputs(None));
        assert_eq!(status.watermark.delay_ms, Some(-1_000));
        metrics.set_watermark(u64::MAX);
        let status = job_status(&state, &metrics, inputs(None));
        assert_eq!(
            status.watermark,
            WatermarkFigures {
                ms: None,
                delay_ms: None,
                input_ended: true
            }
        );
    }

    #[test]
    fn kinesis_lag_is_the_largest_over_shards_being_read() {
        let state = ServingState::new();
        state.mark_loaded();
        let shard =
            |name: &str, lag: Option<i64>, finished: bool, error: Option<&str>| ShardStatus {
                stream: "pageviews-g1".into(),
                shard: name.into(),
                millis_behind_latest: lag,
                iterator_age_ms: lag.map(|lag| lag.unsigned_abs()),
                finished,
                last_error: error.map(str::to_string),
                ..ShardStatus::default()
            };
        let shards = [
            shard("shardId-0", Some(1_200), false, None),
            shard("shardId-1", Some(300), false, Some("throttled")),
            shard("shardId-2", Some(99_999), true, None),
        ];
        let status = job_status(&state, &Metrics::new(), inputs(Some(&shards)));
        assert_eq!(
            status.lag_ms,
            Some(1_200),
            "a finished shard does not count"
        );
        assert_eq!(
            status.kinesis,
            Some(KinesisFigures {
                shards_reading: 2,
                shards_finished: 1,
                shards_failing: 1,
                max_millis_behind_latest: Some(1_200),
                max_iterator_age_ms: Some(1_200),
            })
        );
        assert!(!status.ready, "a failing shard keeps the job from ready");

        // Shards found but none read yet: no lag known.
        let unread = [shard("shardId-0", None, false, None)];
        let status = job_status(&state, &Metrics::new(), inputs(Some(&unread)));
        assert_eq!(status.lag_ms, None);
        assert!(status.not_ready.iter().any(|r| r.contains("not been read")));

        // In a cluster, the board's partitions (every process's shards) give the job's lag.
        let status = job_status(
            &state,
            &Metrics::new(),
            StatusInputs {
                job_lag_ms: Some(4_000),
                ..inputs(Some(&shards))
            },
        );
        assert_eq!(status.lag_ms, Some(4_000), "the whole job's lag wins");
    }

    #[tokio::test]
    async fn the_route_answers_json_that_is_not_cached() {
        let state = Arc::new(ServingState::new());
        let metrics = Arc::new(Metrics::new());
        metrics.add_events_in(10);
        let router = router(Arc::clone(&state), Arc::clone(&metrics));
        let get = |router: Router| async move {
            let response = router
                .oneshot(Request::get("/v1/status").body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(header(header::CONTENT_TYPE), "application/json");
            assert_eq!(header(header::CACHE_CONTROL), "no-store");
            let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        };
        let body = get(router.clone()).await;
        assert_eq!(body["ready"], false);
        assert_eq!(body["events"]["in_total"], 10);
        assert!(body["events"]["per_second"].is_number(), "{body}");
        assert!(body["uptime_s"].as_f64().is_some_and(|s| s >= 0.0));
        assert!(body["now_ms"].as_u64().is_some_and(|ms| ms > NOW_MS / 2));
        state.mark_loaded();
        assert_eq!(get(router).await["ready"], true);
    }
}
