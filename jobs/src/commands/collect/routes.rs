//! The collector's HTTP routes.
//!
//! - `POST /v1/collect`: a body of events ([`super::request`]) → 200
//!   `{"accepted": n, "rejected": [{"index", "reason", "detail"}]}` once every accepted event is
//!   durable (in its portal's stream, SQS queue or the spool: [`super::delivery`]); 400 when no
//!   event is valid (the same fields, plus `error`) or the body is not a list of events; 413 beyond [`MAX_BODY_BYTES`] or [`MAX_EVENTS`]; 503 (with
//!   `Retry-After`, code `not_durable`) when an accepted event is durable nowhere (Kinesis, SQS and
//!   the spool all refused it), so the client sends it again;
//!   403 from a page origin no portal lists; 429 (with `Retry-After`) when the client's address
//!   has used up its rate limit ([`super::client_limits`]).
//! - `OPTIONS /v1/collect`: the CORS preflight ([`super::cors`]): 204 for a listed origin, else 403.
//! - `GET /v1/pixel.gif?…`: the same for one event given as query fields ([`super::pixel`]).
//! - `GET /tracker.js`, `GET /tracker/test.html`: the browser tracker and its test page ([`super::tracker`]).
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 once every portal's stream has been found, else 503.
//! - `GET /metrics`: the counters ([`super::metrics`]).
//!
//! Errors are `{"error": {"code", "message"}}` with a stable code, as the serving API answers them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde::Serialize;

use super::client_limits::ClientLimits;
use super::cors::{self, Origins};
use super::delivery::DurableWriter;
use super::metrics::CollectMetrics;
use super::request::{BodyError, MAX_BODY_BYTES, MAX_EVENTS, RejectedEvent, judge};

/// What the routes share.
#[derive(Debug)]
pub struct Collector {
    /// The portals collected here.
    pub portals: BTreeSet<String>,
    /// Their streams, buffers and spool.
    pub writer: DurableWriter,
    /// The page origins allowed per portal.
    pub origins: Origins,
    /// The rate limits per client address.
    pub limits: ClientLimits,
    /// The counters.
    pub metrics: Arc<CollectMetrics>,
    /// Set once every portal's stream has been found.
    pub ready: Arc<AtomicBool>,
}

/// The routes over `collector`.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/v1/collect", post(collect).options(preflight))
        .route("/v1/pixel.gif", get(super::pixel::pixel))
        .route("/tracker.js", get(super::tracker::tracker_js))
        .route("/tracker/test.html", get(super::tracker::test_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(collector)
}

/// The answer to a request whose events were judged.
#[derive(Serialize)]
struct CollectAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail<'a>>,
    accepted: usize,
    rejected: &'a [RejectedEvent],
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

/// A JSON answer that must not be cached.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            bytes,
        )
            .into_response(),
        // Only strings and integers are serialised: this cannot happen.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json(
        status,
        &ErrorBody {
            error: ErrorDetail { code, message },
        },
    )
}

fn body_too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!(
            "the body is larger than {MAX_BODY_BYTES} bytes (1 MiB), the most a request may carry: send the events in several requests of at most {MAX_EVENTS}"
        ),
    )
}

/// Reads the body, refusing it as soon as it is larger than [`MAX_BODY_BYTES`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(body_too_large());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                &format!("the body could not be read ({e}); send the request again"),
            )
        })?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(body_too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn collect(State(collector): State<Arc<Collector>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let origin = cors::origin(&headers);
    let mut response = match (origin, collector.limits.check(&headers, &parts.extensions)) {
        (Some(origin), _) if !collector.origins.allowed(origin) => origin_not_allowed(origin),
        (_, Err(retry_after_secs)) => rate_limited(retry_after_secs),
        (_, Ok(())) => answer(&collector, &headers, origin, body).await,
    };
    if let Some(origin) = origin
        && collector.origins.allowed(origin)
    {
        cors::allow(response.headers_mut(), origin);
    }
    collector.metrics.record_request(response.status().as_u16());
    response
}

fn rate_limited(retry_after_secs: u64) -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!(
            "this client sent more requests than its rate limit allows: wait {retry_after_secs} s, and batch events into fewer requests"
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

fn origin_not_allowed(origin: &str) -> Response {
    error(
        StatusCode::FORBIDDEN,
        cors::ORIGIN_NOT_ALLOWED,
        &format!(
            "pages of {origin} may not send events here: add the origin to the `origins` of its portal in [[collect.portals]]"
        ),
    )
}

/// The CORS preflight of `POST /v1/collect`.
async fn preflight(State(collector): State<Arc<Collector>>, headers: HeaderMap) -> Response {
    match cors::origin(&headers) {
        Some(origin) if collector.origins.allowed(origin) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            cors::allow_preflight(response.headers_mut(), origin);
            response
        }
        Some(origin) => origin_not_allowed(origin),
        None => error(
            StatusCode::BAD_REQUEST,
            "not_a_preflight",
            "an OPTIONS request without `Origin` is not a CORS preflight: POST the events to /v1/collect",
        ),
    }
}

async fn answer(
    collector: &Collector,
    headers: &HeaderMap,
    origin: Option<&str>,
    body: Body,
) -> Response {
    match read_body(headers, body).await {
        Ok(bytes) => accept(collector, &bytes, origin).await,
        Err(response) => response,
    }
}

/// Judges the events of `bytes` (a JSON array or NDJSON), writes the accepted ones durably and
/// answers as `POST /v1/collect` does; `origin` is the sending page's, when it said one.
pub(super) async fn accept(collector: &Collector, bytes: &[u8], origin: Option<&str>) -> Response {
    let mut judged = match judge(bytes, |portal| collector.portals.contains(portal)) {
        Ok(judged) => judged,
        Err(problem) => {
            let (status, code) = match problem {
                BodyError::NoEvents => (StatusCode::BAD_REQUEST, "no_events"),
                BodyError::TooManyEvents { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "too_many_events")
                }
                BodyError::BrokenArray { .. } => (StatusCode::BAD_REQUEST, "invalid_body"),
            };
            return error(status, code, &problem.to_string());
        }
    };
    if let Some(origin) = origin {
        collector.origins.restrict(&mut judged, origin);
    }
    for rejection in &judged.rejected {
        collector.metrics.record_rejected(rejection.reason);
    }
    collector.metrics.add_accepted(judged.accepted.len() as u64);
    if judged.accepted.is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            &CollectAnswer {
                error: Some(ErrorDetail {
                    code: "no_valid_events",
                    message: "no event of the request is valid: see `rejected` for each one's reason, and fix them before sending them again",
                }),
                accepted: 0,
                rejected: &judged.rejected,
            },
        );
    }
    match collector.writer.store(&judged.accepted).await {
        Ok(_) => json(
            StatusCode::OK,
            &CollectAnswer {
                error: None,
                accepted: judged.accepted.len(),
                rejected: &judged.rejected,
            },
        ),
        Err(failure) => {
            collector.metrics.record_write_failure();
            tracing::warn!(undurable = failure.undurable, "collect: {failure}");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_durable",
                &failure.to_string(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(State(collector): State<Arc<Collector>>) -> Response {
    if collector.ready.load(Ordering::SeqCst) {
        json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the portals' streams have not all been found yet: check [[collect.portals]] stream and [aws], and the log",
        )
    }
}

async fn metrics(State(collector): State<Arc<Collector>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        collector.metrics.render(),
    )
        .into_response()
}
