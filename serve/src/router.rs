//! The route table: which path goes to which handler (in [`crate::routes`]), behind which layers
//! (the auth guard with its rate limits, the request timer of [`crate::latency`], then CORS
//! outermost). The endpoints, their answers and
//! error codes are listed in [`crate::routes`]; what every handler gets is [`App`].

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use pageflow_metrics::Metrics;

use crate::api::ApiError;
use crate::app::App;
use crate::routes::{
    dashboard, health, job, openapi, rankings, recommendations, related, status, stream,
};
use crate::state::ServingState;

/// The API over `state`, with `metrics` at `/metrics` and nothing optional configured. See the
/// module docs for the endpoints.
pub fn router(state: Arc<ServingState>, metrics: Arc<Metrics>) -> Router {
    app_router(App::new(state, metrics))
}

/// The API of `app`. See the module docs for the endpoints.
pub fn app_router(app: App) -> Router {
    let security = Arc::clone(&app.security);
    let router = Router::new()
        .route("/", get(dashboard::index))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics_text))
        .route("/v1/portals", get(rankings::portals))
        .route("/v1/portals/{portal}/popular", get(rankings::popular))
        .route("/v1/portals/{portal}/trending", get(rankings::trending))
        .route(crate::auth::RELATED_ROUTER_PATH, get(related::related))
        .merge(stream::routes())
        .merge(status::routes())
        .merge(job::routes())
        .merge(recommendations::routes())
        .route("/openapi.json", get(openapi::openapi_json))
        // Every route above (not the fallback) goes through the guard; `auth::ROUTES` says
        // which policy applies to which path.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&security),
            crate::auth::guard,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app.metrics),
            crate::latency::record_latency,
        ))
        .fallback(fallback)
        .with_state(app);
    // CORS outermost: preflights are answered before the guard, and every answer (401 and 429
    // included) carries the origin's headers.
    match &security.cors {
        Some(cors) => router.layer(axum::middleware::from_fn_with_state(
            Arc::clone(cors),
            crate::cors::cors,
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

/// Any other path.
async fn fallback() -> ApiError {
    ApiError::not_found(
        "not_found",
        "no such endpoint: GET /openapi.json lists them (e.g. /v1/portals/{portal}/popular, /v1/articles/{article_id}/related?portal=, /v1/users/{user_id}/recommendations?portal=)".to_string(),
    )
}
