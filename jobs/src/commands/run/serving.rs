//! HTTP serving: the rankings, related lists, recommendations, dashboard and metrics, on the job's
//! tokio runtime, from the serving state the sink thread keeps up to date.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::config::JobConfig;
use pageflow_metrics::Metrics;
use pageflow_serve::auth::ServeSecurity;
use pageflow_serve::personalize::PersonalizeRecommendations;
use pageflow_serve::{App, JobView, ServingState, app_router, serve};

/// Starts serving HTTP on `[serve] listen` (when `[serve] enabled`) until `stop` is set; returns
/// the address it listens on.
pub(crate) fn start_http(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    serving: &Arc<ServingState>,
    metrics: &Arc<Metrics>,
    personalize: Option<&Arc<PersonalizeRecommendations>>,
    job_view: &Arc<JobView>,
    stop: &Arc<AtomicBool>,
) -> Result<Option<SocketAddr>> {
    if !config.serve.enabled {
        return Ok(None);
    }
    let listen = config.serve.listen.clone();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&listen))
        .with_context(|| {
            format!("cannot listen on {listen}: is another process using it? Set [serve] listen")
        })?;
    let addr = listener.local_addr()?;
    // API keys, Cognito tokens (the user pool's keys are fetched here), rate limits, CORS.
    let security = runtime
        .block_on(ServeSecurity::start(
            &config.serve.auth,
            &config.serve.rate_limit,
            &config.serve.cors,
        ))
        .map_err(|problem| anyhow!("cannot set up the HTTP API's security: {problem}"))?;
    let mut app = App::new(Arc::clone(serving), Arc::clone(metrics))
        .with_security(security)
        .with_blend_shares(config.recommendations.shares())
        .with_job_view(Arc::clone(job_view));
    if let Some(personalize) = personalize {
        app = app.with_personalize(Arc::clone(personalize));
    }
    let app = app_router(app);
    let stop_http = Arc::clone(stop);
    let serving_http = Arc::clone(serving);
    runtime.spawn(async move {
        let shutdown = async move {
            while !stop_http.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Change streams end, so the graceful shutdown does not wait for them forever.
            serving_http.close();
        };
        if let Err(error) = serve(listener, app, shutdown).await {
            tracing::error!("the HTTP server stopped: {error}");
        }
    });
    Ok(Some(addr))
}
