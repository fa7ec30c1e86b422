//! The HTTP API: live rankings, related articles, health, metrics and a small live page.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/portals/{portal}/popular?n=` | the portal's popular ranking (first `n` items) |
//! | `GET /v1/portals/{portal}/trending?n=` | the portal's trending ranking (first `n` items) |
//! | `GET /v1/articles/{article_id}/related?portal=&n=` | the article's related articles in `portal` |
//! | `GET /v1/users/{user_id}/recommendations?portal=&n=` | what the reader should read next: Amazon Personalize blended with related-to-recent-reads and trending, without what they read (see [`super::recommend`]) |
//! | `GET /v1/portals/{portal}/popular/stream?n=`, `…/trending/stream?n=` | the same rankings as Server-Sent Events, pushed when they change (see [`super::stream`]) |
//! | `GET /v1/status` | the job's health as JSON: events/s, totals, dead letters, lag, watermark delay, checkpoints, readiness (see [`super::status`]) |
//! | `GET /v1/portals` | `{"portals":[...]}`, the portals with a ranking, sorted |
//! | `GET /healthz` | `{"status":"ok"}` while the process serves |
//! | `GET /readyz` | `{"status":"ready"}` once the state is loaded and the sources caught up, else 503 |
//! | `GET /metrics` | the [`Metrics`] in the Prometheus text format 0.0.4 |
//! | `GET /` | the dashboard, one self-contained HTML page: a portal's live popular and trending lists (streamed), a related-articles explorer, the job's health |
//!
//! A ranking answer is
//! `{"portal","kind","window_start","window_end","watermark","final","items":[{"article_id","views","engaged_views","score"}]}`:
//! the window `[window_start, window_end)` in ms since the epoch, the event time `watermark` it is
//! complete up to, and `final: false` when it is the provisional ranking of a window still filling
//! (served when it is newer than the last final one, see [`super::state`]). A related answer is
//! `{"portal","article_id","window_end","watermark","final":true,"items":[{"article_id","cooc","score"}]}`;
//! its `items` may be empty (the article had related articles and no longer has).
//!
//! `n` is 1 to 100, 10 when absent. Unknown query parameters are ignored. `portal` must match
//! `^[a-z0-9][a-z0-9-]{0,31}$`; `article_id` and `user_id` are 1 to 256 characters (Unicode code
//! points, after percent-decoding).
//!
//! Errors are `{"error":{"code":"…","message":"…"}}`; the message says what was wrong and what to
//! do, the code is stable:
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `invalid_portal` | the portal (path, or `portal=` query parameter) is missing or does not match the pattern |
//! | 400 | `invalid_n` | `n` is not a whole number from 1 to 100 |
//! | 400 | `invalid_article_id` | the article id is empty, longer than 256 characters or not UTF-8 |
//! | 400 | `invalid_user_id` | the user id is empty, longer than 256 characters or not UTF-8 |
//! | 400 | `invalid_query` | the query string cannot be decoded |
//! | 404 | `portal_not_found` | nothing (of this kind) was computed for the portal yet |
//! | 404 | `article_not_found` | no related list was computed for the article in this portal yet |
//! | 404 | `not_found` | no such endpoint |
//! | 401 | `unauthorized` | the route group needs an API key or a Cognito token and none was sent, or the one sent is unknown, malformed, expired or of a kind the group does not take; `WWW-Authenticate` names what it takes (see [`super::auth`]) |
//! | 403 | `forbidden` | the API key may not call this route group (its `groups`), or a CORS preflight from an origin not in `[serve.cors] allowed_origins` |
//! | 429 | `rate_limited` | the caller's rate limit is spent; `Retry-After` says in how many whole seconds to retry (see [`super::rate_limit`]) |
//! | 503 | `not_ready` | `/readyz`: the state is still loading, or a Kinesis shard is unread, failing or more than a minute behind |
//!
//! Who may call what is configured per route group in `[serve.auth]` (see [`super::auth`]); the
//! API is described by the OpenAPI document at `GET /openapi.json` (see [`super::openapi`]).
//!
//! JSON answers carry `Cache-Control: no-store`: they change every few seconds.

use std::collections::HashMap;

use pageflow_connectors::kinesis::consumer::ShardStatus;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use pageflow_dataflow::event::is_valid_portal;
use pageflow_dataflow::features::{RankedItem, RankingKind, RelatedItem};
use serde::Serialize;

use super::state::{Ranking, ServingState};
use crate::metrics::{Metrics, PROMETHEUS_CONTENT_TYPE};

/// `n` when the query does not say.
pub const DEFAULT_N: usize = 10;
/// The largest `n` accepted.
pub const MAX_N: usize = 100;
/// The longest article id accepted, in characters.
pub const MAX_ARTICLE_ID_CHARS: usize = 256;
/// The longest portal accepted, in characters.
pub use pageflow_dataflow::event::MAX_PORTAL_CHARS;
/// The longest user id accepted, in characters.
pub const MAX_USER_ID_CHARS: usize = 256;

/// The live page served at `/`.
const INDEX_HTML: &str = include_str!("index.html");

/// What every handler gets: the live state, the metrics, and the optional parts of the serving
/// layer. Cheap to clone (every field is shared).
#[derive(Clone, Debug)]
pub struct App {
    pub(crate) state: Arc<ServingState>,
    pub(crate) metrics: Arc<Metrics>,
    /// Amazon Personalize for recommendations; `None` when no portal has a campaign configured.
    pub(crate) personalize: Option<Arc<super::personalize::PersonalizeRecommendations>>,
    /// How recommendations blend their sources.
    pub(crate) blend_shares: super::blend::BlendShares,
    /// Who may call what: policies, keys, tokens, rate limits, CORS, and the OpenAPI document.
    pub(crate) security: Arc<super::auth::ServeSecurity>,
}

impl App {
    /// The serving layer over `state`, with `metrics` at `/metrics`.
    pub fn new(state: Arc<ServingState>, metrics: Arc<Metrics>) -> Self {
        App {
            state,
            metrics,
            personalize: None,
            blend_shares: super::blend::BlendShares::default(),
            security: Arc::new(super::auth::ServeSecurity::open()),
        }
    }

    /// Guards the routes with `security` (by default every route is open, with no rate limit
    /// and no CORS).
    pub fn with_security(mut self, security: super::auth::ServeSecurity) -> Self {
        self.security = Arc::new(security);
        self
    }

    /// Recommendations ask `personalize` (see [`super::recommend`]).
    pub fn with_personalize(
        mut self,
        personalize: Arc<super::personalize::PersonalizeRecommendations>,
    ) -> Self {
        self.personalize = Some(personalize);
        self
    }

    /// Recommendations blend their sources by `shares`.
    pub fn with_blend_shares(mut self, shares: super::blend::BlendShares) -> Self {
        self.blend_shares = shares;
        self
    }
}

/// The API over `state`, with `metrics` at `/metrics` and nothing optional configured. See the
/// module docs for the endpoints.
pub fn router(state: Arc<ServingState>, metrics: Arc<Metrics>) -> Router {
    app_router(App::new(state, metrics))
}

/// The API of `app`. See the module docs for the endpoints.
pub fn app_router(app: App) -> Router {
    let security = Arc::clone(&app.security);
    let router = Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/portals", get(portals))
        .route("/v1/portals/{portal}/popular", get(popular))
        .route("/v1/portals/{portal}/trending", get(trending))
        .route("/v1/articles/{article_id}/related", get(related))
        .merge(super::stream::routes())
        .merge(super::status::routes())
        .merge(super::recommend::routes())
        .route("/openapi.json", get(super::openapi::openapi_json))
        // Every route above (not the fallback) goes through the guard; `auth::ROUTES` says
        // which policy applies to which path.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&security),
            super::auth::guard,
        ))
        .fallback(fallback)
        .with_state(app);
    // CORS outermost: preflights are answered before the guard, and every answer (401 and 429
    // included) carries the origin's headers.
    match &security.cors {
        Some(cors) => router.layer(axum::middleware::from_fn_with_state(
            Arc::clone(cors),
            super::cors::cors,
        )),
        None => router,
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the requests in flight
/// and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address reaches the handlers (and the rate limits of anonymous callers).
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// An error answer: status, stable code, and a message saying what to do.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn bad_request(code: &'static str, message: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        }
    }

    pub(crate) fn not_found(code: &'static str, message: String) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message,
        }
    }
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, json(&body)).into_response()
    }
}

/// A JSON answer that must not be cached.
pub(crate) fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
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
        // Only strings, integers and floats are serialised: this cannot happen.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The query parameters, or `invalid_query`.
pub(crate) type QueryParams = Result<Query<HashMap<String, String>>, QueryRejection>;

pub(crate) fn query_params(query: QueryParams) -> Result<HashMap<String, String>, ApiError> {
    query.map(|Query(params)| params).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "the query string cannot be decoded ({e}); percent-encode parameter values as UTF-8"
            ),
        )
    })
}

pub(crate) fn check_portal(portal: &str) -> Result<(), ApiError> {
    if is_valid_portal(portal) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_portal",
            format!(
                "portal {portal:?} is not a portal name: use 1 to {MAX_PORTAL_CHARS} lowercase letters, digits or '-', starting with a letter or digit (e.g. \"news-1\")"
            ),
        ))
    }
}

/// An id from the path (an article's, a user's): 1 to `max` characters after percent-decoding,
/// else 400 with `code`.
pub(crate) fn id_from_path(
    id: Result<Path<String>, PathRejection>,
    code: &'static str,
    what: &str,
    max: usize,
) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| {
        ApiError::bad_request(
            code,
            format!("the {what} in the path cannot be decoded ({e}); percent-encode it as UTF-8"),
        )
    })?;
    let chars = id.chars().count();
    if !(1..=max).contains(&chars) {
        return Err(ApiError::bad_request(
            code,
            format!(
                "the {what} has {chars} characters: give 1 to {max}, percent-encoded in the path"
            ),
        ));
    }
    Ok(id)
}

/// The `portal` query parameter, required and checked; `why` says why the route needs one.
pub(crate) fn portal_from_query<'a>(
    params: &'a HashMap<String, String>,
    why: &str,
) -> Result<&'a str, ApiError> {
    let Some(portal) = params.get("portal") else {
        return Err(ApiError::bad_request(
            "invalid_portal",
            format!("the portal query parameter is missing: {why}, add ?portal=<name>"),
        ));
    };
    check_portal(portal)?;
    Ok(portal)
}

/// `n` from the query: absent → [`DEFAULT_N`], else a whole number in `1..=MAX_N`.
pub(crate) fn parse_n(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    let Some(text) = params.get("n") else {
        return Ok(DEFAULT_N);
    };
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_N).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_n",
            format!(
                "n={text:?} is not allowed: give a whole number from 1 to {MAX_N}, or leave n out for {DEFAULT_N}"
            ),
        )),
    }
}

/// `GET /`: the live page.
async fn index() -> Response {
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                ),
            ),
        ],
        Html(INDEX_HTML),
    )
        .into_response()
}

/// `GET /healthz`.
async fn healthz() -> Response {
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
async fn readyz(State(app): State<App>) -> Response {
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
        problems.push("the job is still loading its state (restoring the checkpoint)".to_string());
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
async fn metrics_text(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        )],
        app.metrics.render_prometheus(),
    )
        .into_response()
}

/// `GET /v1/portals`.
async fn portals(State(app): State<App>) -> Response {
    #[derive(Serialize)]
    struct Portals {
        portals: Vec<String>,
    }
    json(&Portals {
        portals: app.state.portals(),
    })
}

/// The body of a ranking answer (also the data of a change stream's `ranking` event).
#[derive(Serialize)]
pub(crate) struct RankingBody<'a> {
    portal: &'a str,
    kind: &'static str,
    window_start: u64,
    window_end: u64,
    watermark: u64,
    #[serde(rename = "final")]
    is_final: bool,
    items: &'a [RankedItem],
}

/// `GET /v1/portals/{portal}/popular`.
async fn popular(
    State(app): State<App>,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    ranking(&app, RankingKind::Popular, portal, query)
}

/// `GET /v1/portals/{portal}/trending`.
async fn trending(
    State(app): State<App>,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    ranking(&app, RankingKind::Trending, portal, query)
}

fn ranking(
    app: &App,
    kind: RankingKind,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let portal = portal_from_path(portal)?;
    let n = parse_n(&query_params(query)?)?;
    let Some(ranking) = app.state.ranking(&portal, kind) else {
        return Err(ApiError::not_found(
            "portal_not_found",
            format!(
                "no {} ranking for portal {portal:?} yet: check the name (GET /v1/portals lists the known ones) or retry once its first events are processed",
                kind.name()
            ),
        ));
    };
    Ok(json(&ranking_body(&ranking, n)))
}

/// The portal of a `/v1/portals/{portal}/…` path, decoded and checked (`invalid_portal`).
pub(crate) fn portal_from_path(
    portal: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(portal) = portal.map_err(|e| {
        ApiError::bad_request(
            "invalid_portal",
            format!("the portal in the path cannot be decoded ({e}); use lowercase letters, digits or '-'"),
        )
    })?;
    check_portal(&portal)?;
    Ok(portal)
}

/// The answer body of `ranking` cut to its first `n` items.
pub(crate) fn ranking_body(ranking: &Ranking, n: usize) -> RankingBody<'_> {
    RankingBody {
        portal: &ranking.portal,
        kind: ranking.kind.name(),
        window_start: ranking.window_start,
        window_end: ranking.window_end,
        watermark: ranking.watermark,
        is_final: ranking.is_final,
        items: &ranking.items[..n.min(ranking.items.len())],
    }
}

/// The body of a related answer.
#[derive(Serialize)]
struct RelatedBody<'a> {
    portal: &'a str,
    article_id: &'a str,
    window_end: u64,
    watermark: u64,
    #[serde(rename = "final")]
    is_final: bool,
    items: &'a [RelatedItem],
}

/// `GET /v1/articles/{article_id}/related?portal=`.
async fn related(
    State(app): State<App>,
    article_id: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let article_id = id_from_path(
        article_id,
        "invalid_article_id",
        "article id",
        MAX_ARTICLE_ID_CHARS,
    )?;
    let params = query_params(query)?;
    let portal = portal_from_query(&params, "article ids are per portal")?;
    let n = parse_n(&params)?;
    let Some(list) = app.state.related(portal, &article_id) else {
        return Err(if app.state.knows_portal(portal) {
            ApiError::not_found(
                "article_not_found",
                format!(
                    "no related articles computed for article {article_id:?} in portal {portal:?} yet: check the id, or retry after it has been read together with other articles"
                ),
            )
        } else {
            ApiError::not_found(
                "portal_not_found",
                format!(
                    "nothing computed for portal {portal:?} yet: check the name (GET /v1/portals lists the known ones) or retry once its first events are processed"
                ),
            )
        });
    };
    let items = &list.items[..n.min(list.items.len())];
    Ok(json(&RelatedBody {
        portal: &list.portal,
        article_id: &list.article_id,
        window_end: list.window_end,
        watermark: list.watermark(),
        is_final: true,
        items,
    }))
}

/// Any other path.
async fn fallback() -> ApiError {
    ApiError::not_found(
        "not_found",
        "no such endpoint: GET /openapi.json lists them (e.g. /v1/portals/{portal}/popular, /v1/articles/{article_id}/related?portal=, /v1/users/{user_id}/recommendations?portal=)".to_string(),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::serve::state::tests::{ranking as ranking_update, related as related_update};

    const MIN: u64 = 60_000;

    struct Answer {
        status: StatusCode,
        content_type: String,
        cache_control: String,
        body: String,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
        }

        /// Asserts an error answer with `status` and `code`.
        fn assert_error(&self, status: StatusCode, code: &str) {
            assert_eq!(self.status, status, "{}", self.body);
            assert_eq!(self.content_type, "application/json");
            let body = self.json();
            assert_eq!(body["error"]["code"], code, "{}", self.body);
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.len() > 20, "{}", self.body);
        }
    }

    async fn get(router: &Router, uri: &str) -> Answer {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let header_of = |name: header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let status = response.status();
        let content_type = header_of(header::CONTENT_TYPE);
        let cache_control = header_of(header::CACHE_CONTROL);
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Answer {
            status,
            content_type,
            cache_control,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn articles(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("a{i:02}")).collect()
    }

    /// A state with g1 (popular: final 15 items; trending: final then newer provisional), and
    /// related lists for g1/a00 and g1/a01 (empty).
    fn setup() -> (Router, Arc<ServingState>, Arc<Metrics>) {
        let state = Arc::new(ServingState::new());
        let metrics = Arc::new(Metrics::new());
        let ids = articles(15);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        state.apply(ranking_update(
            RankingKind::Popular,
            "g1",
            120 * MIN,
            120 * MIN,
            true,
            &ids,
        ));
        state.apply(ranking_update(
            RankingKind::Trending,
            "g1",
            120 * MIN,
            120 * MIN,
            true,
            &["t-final"],
        ));
        state.apply(ranking_update(
            RankingKind::Trending,
            "g1",
            121 * MIN,
            120 * MIN + 30_000,
            false,
            &["t-prov"],
        ));
        state.apply(related_update("g1", "a00", 120 * MIN, &["b1", "b2", "b3"]));
        state.apply(related_update("g1", "a01", 120 * MIN, &[]));
        let router = router(Arc::clone(&state), Arc::clone(&metrics));
        (router, state, metrics)
    }

    #[tokio::test]
    async fn popular_final_ranking() {
        let (router, _, _) = setup();
        let answer = get(&router, "/v1/portals/g1/popular?n=2").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.content_type, "application/json");
        assert_eq!(answer.cache_control, "no-store");
        assert_eq!(
            answer.json(),
            json!({
                "portal": "g1",
                "kind": "popular",
                "window_start": 60 * MIN,
                "window_end": 120 * MIN,
                "watermark": 120 * MIN,
                "final": true,
                "items": [
                    {"article_id": "a00", "views": 15, "engaged_views": 0, "score": 15.0},
                    {"article_id": "a01", "views": 14, "engaged_views": 0, "score": 14.0}
                ]
            })
        );
        // Field order as documented.
        assert!(
            answer
                .body
                .starts_with(r#"{"portal":"g1","kind":"popular","window_start":"#),
            "{}",
            answer.body
        );
    }

    #[tokio::test]
    async fn n_truncates_with_default_ten() {
        let (router, _, _) = setup();
        let count = |answer: &Answer| answer.json()["items"].as_array().map_or(0, Vec::len);
        assert_eq!(count(&get(&router, "/v1/portals/g1/popular").await), 10);
        assert_eq!(count(&get(&router, "/v1/portals/g1/popular?n=1").await), 1);
        assert_eq!(
            count(&get(&router, "/v1/portals/g1/popular?n=3&other=x").await),
            3
        );
        // More than there are: all of them.
        assert_eq!(
            count(&get(&router, "/v1/portals/g1/popular?n=100").await),
            15
        );
        assert_eq!(
            count(&get(&router, "/v1/articles/a00/related?portal=g1&n=2").await),
            2
        );
    }

    #[tokio::test]
    async fn trending_serves_newer_provisional_then_final() {
        let (router, state, _) = setup();
        let body = get(&router, "/v1/portals/g1/trending").await.json();
        assert_eq!(body["kind"], "trending");
        assert_eq!(body["final"], false);
        assert_eq!(body["window_end"], 121 * MIN);
        assert_eq!(body["window_start"], 61 * MIN);
        assert_eq!(body["watermark"], 120 * MIN + 30_000);
        assert_eq!(body["items"][0]["article_id"], "t-prov");

        // The window becomes final: the final one is served.
        state.apply(ranking_update(
            RankingKind::Trending,
            "g1",
            121 * MIN,
            121 * MIN,
            true,
            &["t-final-2"],
        ));
        let body = get(&router, "/v1/portals/g1/trending").await.json();
        assert_eq!(body["final"], true);
        assert_eq!(body["window_end"], 121 * MIN);
        assert_eq!(body["items"][0]["article_id"], "t-final-2");

        // An older provisional does not hide the newer final one.
        state.apply(ranking_update(
            RankingKind::Trending,
            "g1",
            121 * MIN,
            120 * MIN,
            false,
            &["stale"],
        ));
        let body = get(&router, "/v1/portals/g1/trending").await.json();
        assert_eq!(body["final"], true);
        assert_eq!(body["items"][0]["article_id"], "t-final-2");
    }

    #[tokio::test]
    async fn ranking_errors() {
        let (router, state, _) = setup();
        for uri in [
            "/v1/portals//popular",
            "/v1/portals/G1/popular",
            "/v1/portals/-g1/popular",
            "/v1/portals/g_1/trending",
            "/v1/portals/g%201/popular",
            "/v1/portals/%FF/popular",
            "/v1/portals/abcdefghijabcdefghijabcdefghijabc/popular",
        ] {
            get(&router, uri)
                .await
                .assert_error(StatusCode::BAD_REQUEST, "invalid_portal");
        }
        // 32 characters is fine (and unknown).
        get(
            &router,
            "/v1/portals/abcdefghijabcdefghijabcdefghijab/popular",
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "portal_not_found");
        for n in ["0", "101", "abc", "", "-1", "2.5", "1e1"] {
            get(&router, &format!("/v1/portals/g1/popular?n={n}"))
                .await
                .assert_error(StatusCode::BAD_REQUEST, "invalid_n");
        }
        get(&router, "/v1/portals/g2/popular")
            .await
            .assert_error(StatusCode::NOT_FOUND, "portal_not_found");
        // A portal known only by one kind: the other kind is not found.
        state.apply(ranking_update(
            RankingKind::Popular,
            "g2",
            MIN,
            MIN,
            true,
            &["x"],
        ));
        assert_eq!(
            get(&router, "/v1/portals/g2/popular").await.status,
            StatusCode::OK
        );
        get(&router, "/v1/portals/g2/trending")
            .await
            .assert_error(StatusCode::NOT_FOUND, "portal_not_found");
        // Validation comes before lookup.
        get(&router, "/v1/portals/g2/trending?n=0")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_n");
    }

    #[tokio::test]
    async fn related_answers() {
        let (router, _, _) = setup();
        let answer = get(&router, "/v1/articles/a00/related?portal=g1").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.cache_control, "no-store");
        assert_eq!(
            answer.json(),
            json!({
                "portal": "g1",
                "article_id": "a00",
                "window_end": 120 * MIN,
                "watermark": 120 * MIN,
                "final": true,
                "items": [
                    {"article_id": "b1", "cooc": 2, "score": 0.5},
                    {"article_id": "b2", "cooc": 2, "score": 0.5},
                    {"article_id": "b3", "cooc": 2, "score": 0.5}
                ]
            })
        );
        // An emptied list is served as such.
        let body = get(&router, "/v1/articles/a01/related?portal=g1")
            .await
            .json();
        assert_eq!(body["items"], json!([]));
    }

    #[tokio::test]
    async fn related_decodes_article_ids() {
        let (router, state, _) = setup();
        let id = "é/x y".to_string() + &"z".repeat(251);
        assert_eq!(id.chars().count(), MAX_ARTICLE_ID_CHARS);
        state.apply(related_update("g1", &id, MIN, &["b"]));
        let encoded = "%C3%A9%2Fx%20y".to_string() + &"z".repeat(251);
        let answer = get(
            &router,
            &format!("/v1/articles/{encoded}/related?portal=g1"),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.json()["article_id"], id.as_str());
    }

    #[tokio::test]
    async fn related_errors() {
        let (router, _, _) = setup();
        let too_long = "a".repeat(MAX_ARTICLE_ID_CHARS + 1);
        get(
            &router,
            &format!("/v1/articles/{too_long}/related?portal=g1"),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_article_id");
        get(&router, "/v1/articles//related?portal=g1")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_article_id");
        get(&router, "/v1/articles/%FF%FE/related?portal=g1")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_article_id");
        get(&router, "/v1/articles/a00/related")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_portal");
        get(&router, "/v1/articles/a00/related?portal=")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_portal");
        get(&router, "/v1/articles/a00/related?portal=G1")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_portal");
        get(&router, "/v1/articles/a00/related?portal=g1&n=0")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_n");
        get(&router, "/v1/articles/nope/related?portal=g1")
            .await
            .assert_error(StatusCode::NOT_FOUND, "article_not_found");
        get(&router, "/v1/articles/a00/related?portal=g9")
            .await
            .assert_error(StatusCode::NOT_FOUND, "portal_not_found");
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let (router, _, _) = setup();
        for uri in ["/nope", "/v1/portals/g1", "/v1/portals/g1/popular/extra"] {
            get(&router, uri)
                .await
                .assert_error(StatusCode::NOT_FOUND, "not_found");
        }
    }

    #[tokio::test]
    async fn portals_and_health() {
        let (router, state, _) = setup();
        state.apply(ranking_update(
            RankingKind::Popular,
            "a-site",
            MIN,
            MIN,
            true,
            &["x"],
        ));
        let answer = get(&router, "/v1/portals").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json(), json!({"portals": ["a-site", "g1"]}));
        let answer = get(&router, "/healthz").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json(), json!({"status": "ok"}));
    }

    #[tokio::test]
    async fn ready_once_the_state_is_loaded() {
        let (router, state, _metrics) = setup();
        let answer = get(&router, "/readyz").await;
        answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
        assert!(answer.body.contains("loading its state"), "{}", answer.body);

        state.mark_loaded();
        assert_eq!(get(&router, "/readyz").await.status, StatusCode::OK);
    }

    #[test]
    fn kinesis_shards_must_be_read_healthy_and_near_their_tip() {
        let shard = |lag: Option<i64>, error: Option<&str>, finished: bool| ShardStatus {
            stream: "g1".into(),
            shard: "shardId-0".into(),
            millis_behind_latest: lag,
            last_error: error.map(str::to_string),
            finished,
            ..ShardStatus::default()
        };
        let problems = |shards: &[ShardStatus]| readiness_problems(true, Some(shards)).join("; ");
        assert!(problems(&[]).contains("no Kinesis shard"));
        assert!(problems(&[shard(None, None, false)]).contains("not been read yet"));
        assert!(
            problems(&[shard(Some(READY_MAX_LAG_MS + 1), None, false)]).contains("behind its tip")
        );
        assert!(problems(&[shard(Some(0), Some("AccessDenied"), false)]).contains("AccessDenied"));
        assert_eq!(problems(&[shard(Some(READY_MAX_LAG_MS), None, false)]), "");
        assert_eq!(
            problems(&[shard(None, None, true), shard(Some(5), None, false)]),
            "",
            "a shard read to its end does not count"
        );
        assert!(
            readiness_problems(true, None).is_empty(),
            "no Kinesis source"
        );
    }

    #[tokio::test]
    async fn metrics_endpoint() {
        let (router, _, metrics) = setup();
        metrics.add_events_in(3);
        metrics.record_dead_letter(pageflow_dataflow::event::Reason::Late);
        let answer = get(&router, "/metrics").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.content_type, PROMETHEUS_CONTENT_TYPE);
        assert!(
            answer
                .body
                .contains("# TYPE pageflow_events_in_total counter\n"),
            "{}",
            answer.body
        );
        assert!(
            answer.body.contains("\npageflow_events_in_total 3\n"),
            "{}",
            answer.body
        );
        assert!(
            answer
                .body
                .contains("\npageflow_dead_letters_total{reason=\"late\"} 1\n"),
            "{}",
            answer.body
        );
    }

    #[tokio::test]
    async fn index_is_a_self_contained_page() {
        let (router, _, _) = setup();
        let answer = get(&router, "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.content_type.starts_with("text/html"),
            "{}",
            answer.content_type
        );
        assert!(answer.body.starts_with("<!doctype html>"));
        assert!(answer.body.contains("<script>"));
        for endpoint in ["/v1/portals", "popular?n=", "trending?n=", "2000"] {
            assert!(answer.body.contains(endpoint), "{endpoint}");
        }
        // No external assets.
        for external in ["http://", "https://", " src=", "<link"] {
            assert!(!answer.body.contains(external), "{external}");
        }
    }

    #[tokio::test]
    async fn serve_stops_on_shutdown() {
        let (router, _, _) = setup();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            serve(listener, router, async {}),
        )
        .await;
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    }
}
