//! Health for load balancers and orchestrators (`/healthz`, `/readyz`) and the metrics for
//! Prometheus (`/metrics`).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pageflow_connectors::kinesis::consumer::ShardStatus;
use pageflow_metrics::PROMETHEUS_CONTENT_TYPE;
use serde::Serialize;

use crate::api::{ApiError, json};
use crate::app::App;

/// `GET /healthz`.
pub(crate) async fn healthz() -> Response {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
    }
    json(&Health { status: "ok" })
}

/// How far behind the tip of a shard the job may be and still take traffic.
pub const READY_MAX_LAG_MS: i64 = 60_000;

/// `GET /readyz`: 200 once the state is loaded (restored from the checkpoint, dataflow running)
/// and, with a Kinesis source, every shard has been read and is within [`READY_MAX_LAG_MS`] of
/// its tip with no failure outstanding; otherwise 503 `not_ready` listing what is missing.
pub(crate) async fn readyz(State(app): State<App>) -> Response {
    #[derive(Serialize)]
    struct Ready {
        status: &'static str,
    }
    let shards = app.metrics.kinesis_status().map(|status| status.shards());
    let problems = readiness_problems(app.state.is_loaded(), shards.as_deref());
    if problems.is_empty() {
        return json(&Ready { status: "ready" });
    }
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "not_ready",
        message: format!("not ready: {}", problems.join("; ")),
    }
    .into_response()
}

/// What keeps the job from taking traffic: its state not yet loaded, or Kinesis shards (when the
/// source is Kinesis) unread, failing or too far behind.
pub(crate) fn readiness_problems(loaded: bool, shards: Option<&[ShardStatus]>) -> Vec<String> {
    let mut problems = Vec::new();
    if !loaded {
        problems.push(
            "still loading its state (the job: restoring the checkpoint; `pageflow serve`: catching up with the features stream)"
                .to_string(),
        );
    }
    if let Some(shards) = shards {
        if shards.is_empty() {
            problems.push("no Kinesis shard has been found yet".to_string());
        }
        for shard in shards.iter().filter(|shard| !shard.finished) {
            let name = format!("{}/{}", shard.stream, shard.shard);
            if let Some(error) = &shard.last_error {
                problems.push(format!("shard {name} cannot be read: {error}"));
            }
            match shard.millis_behind_latest {
                None => problems.push(format!("shard {name} has not been read yet")),
                Some(lag) if lag > READY_MAX_LAG_MS => problems.push(format!(
                    "shard {name} is {lag} ms behind its tip (catching up; ready within {READY_MAX_LAG_MS} ms)"
                )),
                Some(_) => {}
            }
        }
    }
    problems
}

/// `GET /metrics`.
pub(crate) async fn metrics_text(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        )],
        app.metrics.render_prometheus(),
    )
        .into_response()
}
