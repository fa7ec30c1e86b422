//! `GET /v1/job`: the operator's view of the running job, what Flink's web UI shows: the job
//! graph with records in and out and how busy each operator is, the last checkpoints, and each
//! source partition's watermark.
//!
//! ```json
//! {
//!   "now_ms": 1764000073200,
//!   "watermark": {"ms": 1764000071000, "input_ended": false},
//!   "operators": [{"id": "0.1", "name": "Ingest", "records_in": 0, "records_out": 219000,
//!                  "busy_ratio": 0.12, "busy_ms_total": 8100}, "…"],
//!   "edges": [{"from": "0.1", "to": "0.2", "records": 219000}, "…"],
//!   "checkpoints": [{"id": 7, "at_ms": 1764000061000, "bytes_written": 48211,
//!                    "total_bytes": 912004, "duration_ms": 210, "pause_ms": 35,
//!                    "outcome": "completed", "error": null}, "…"],
//!   "partitions": [{"partition": "synthetic:0", "watermark_ms": 1764000071000,
//!                   "ahead_of_job_ms": 0, "idle": false, "finished": false}, "…"]
//! }
//! ```
//!
//! - `operators`: the job's operators in topological order (see
//!   [`pageflow_dataflow::monitor`]), summed over the workers: `records_in` received on their
//!   inputs, `records_out` emitted (once per output port), `busy_ratio` the share of wall time the
//!   operator ran over the last second, averaged over the workers (what timely can measure; its
//!   channels are unbounded, so "backpressure" shows as the busy time of the `ForwardToSink`
//!   operators waiting for the sink thread), `busy_ms_total` since the start.
//! - `edges`: records sent from one operator to another (`from` and `to` are operator ids).
//! - `checkpoints`: the last ones (up to 50), newest first: id, when it ended, bytes written
//!   and bytes its state is made of in total, request-to-commit duration, the longest pause of a
//!   worker's dataflow, and `outcome` `completed` or `failed` (then `error` says why).
//! - `partitions`: each source partition as its worker last reported it (about once a second),
//!   by name: its watermark (`null` before its first valid record), how far it is ahead of the
//!   job watermark as its worker saw both at that moment (`0`: it holds the job back; `null` when
//!   either is unknown), whether it is idle
//!   (no record for `idle_timeout`, so it does not hold the job back) or finished.
//! - `watermark`: the job watermark (`ms` `null` before the first and after the input ended).
//!
//! The lists are empty until the job has built its dataflow (or when the serving layer runs
//! without a job, as in tests).

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

use crate::api::json;
use crate::app::App;

/// The job route.
pub(crate) fn routes() -> Router<App> {
    Router::new().route("/v1/job", get(job))
}

/// `GET /v1/job`.
async fn job(State(app): State<App>) -> Response {
    let now_ms = pageflow_dataflow::clock::unix_now_ms();
    json(&app.job.answer(now_ms))
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use pageflow_dataflow::time::{BoardView, Opinion, PartitionWatermark, WatermarkBoard};
    use pageflow_metrics::Metrics;
    use pageflow_metrics::checkpoint_history::{CheckpointOutcome, CheckpointRecord};
    use serde_json::{Value, json};
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::vec::ToStream;
    use tower::ServiceExt;

    use std::sync::Arc;

    use super::*;
    use crate::{JobView, ServingState, app_router};

    async fn get_job(app: App) -> Value {
        let response = app_router(app)
            .oneshot(Request::get("/v1/job").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn app() -> App {
        App::new(Arc::new(ServingState::new()), Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn without_a_job_the_lists_are_empty() {
        let body = get_job(app()).await;
        for list in ["operators", "edges", "checkpoints", "partitions"] {
            assert_eq!(body[list], json!([]), "{body}");
        }
        assert_eq!(body["watermark"], json!({"ms": null, "input_ended": false}));
        assert!(body["now_ms"].as_u64().is_some_and(|ms| ms > 0));
    }

    #[tokio::test]
    async fn answers_the_graph_the_checkpoints_and_the_partitions() {
        let view = Arc::new(JobView::default());
        let monitor = Arc::clone(view.monitor());
        timely::execute_directly(move |worker| {
            monitor.attach(worker);
            worker.dataflow::<u64, _, _>(|scope| {
                (0..42u64)
                    .to_stream(scope)
                    .sink(Pipeline, "Sink", |(input, _)| input.for_each(|_, _| {}));
            });
        });
        for id in 1..=3 {
            view.checkpoints().record(CheckpointRecord {
                id,
                at_ms: 1_000 * id,
                bytes_written: 10 * id,
                total_bytes: 100 * id,
                duration_ms: 20,
                pause_ms: 5,
                outcome: if id == 2 {
                    CheckpointOutcome::Failed("the store refused it".into())
                } else {
                    CheckpointOutcome::Completed
                },
            });
        }
        let board = Arc::new(WatermarkBoard::new(1));
        board.publish(0, Opinion::At(5_000));
        board.report_partition(
            "synthetic:0",
            PartitionWatermark {
                watermark_ms: Some(5_000),
                job_watermark_ms: Some(5_000),
                ..PartitionWatermark::default()
            },
        );
        board.report_partition(
            "synthetic:1",
            PartitionWatermark {
                watermark_ms: Some(7_500),
                idle: true,
                finished: false,
                job_watermark_ms: Some(5_000),
                lag_ms: Some(300),
            },
        );
        assert_eq!(view.lag_ms(), None, "no board yet");
        view.watch_board(BoardView::of(Arc::clone(&board)));
        assert_eq!(view.lag_ms(), Some(300), "the largest lag reported");

        let body = get_job(app().with_job_view(Arc::clone(&view))).await;
        let operators = body["operators"].as_array().unwrap();
        assert_eq!(operators.len(), 2, "{body}");
        assert_eq!(operators[0]["name"], "ToStreamBuilder");
        assert_eq!(operators[0]["records_out"], 42);
        assert_eq!(operators[1]["name"], "Sink");
        assert_eq!(operators[1]["records_in"], 42);
        for operator in operators {
            for field in [
                "id",
                "name",
                "records_in",
                "records_out",
                "busy_ratio",
                "busy_ms_total",
            ] {
                assert!(!operator[field].is_null(), "{field} in {operator}");
            }
        }
        assert_eq!(
            body["edges"],
            json!([{"from": operators[0]["id"], "to": operators[1]["id"], "records": 42}])
        );
        let checkpoints = body["checkpoints"].as_array().unwrap();
        assert_eq!(
            checkpoints
                .iter()
                .map(|c| c["id"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [3, 2, 1],
            "newest first"
        );
        assert_eq!(
            checkpoints[0],
            json!({"id": 3, "at_ms": 3000, "bytes_written": 30, "total_bytes": 300,
                   "duration_ms": 20, "pause_ms": 5, "outcome": "completed", "error": null})
        );
        assert_eq!(checkpoints[1]["outcome"], "failed");
        assert_eq!(checkpoints[1]["error"], "the store refused it");
        assert_eq!(body["watermark"], json!({"ms": 5000, "input_ended": false}));
        assert_eq!(
            body["partitions"],
            json!([
                {"partition": "synthetic:0", "watermark_ms": 5000, "ahead_of_job_ms": 0,
                 "idle": false, "finished": false},
                {"partition": "synthetic:1", "watermark_ms": 7500, "ahead_of_job_ms": 2500,
                 "idle": true, "finished": false},
            ])
        );
    }

    #[test]
    fn the_job_lag_leaves_out_partitions_read_to_their_end() {
        let view = JobView::default();
        let board = Arc::new(WatermarkBoard::new(1));
        let report = |lag, finished| PartitionWatermark {
            lag_ms: Some(lag),
            finished,
            ..PartitionWatermark::default()
        };
        board.report_partition("kinesis:g1/shardId-0", report(90_000, true));
        board.report_partition("kinesis:g1/shardId-1", report(1_200, false));
        board.report_partition("kinesis:ge/shardId-0", report(800, false));
        view.watch_board(BoardView::of(board));
        assert_eq!(view.lag_ms(), Some(1_200));
    }
}
