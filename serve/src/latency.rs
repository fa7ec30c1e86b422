//! How long the API takes to answer: a middleware that times every routed request and records it
//! in the job's [`Metrics`] by route group (`pageflow_http_request_duration_seconds{group}`, and
//! the p50/p99 in `/v1/status`), and counts the answers with a 5xx status
//! (`pageflow_http_server_errors_total`, the `Http5xx` of the EMF lines).
//!
//! It is a route layer outside the auth guard, so the time counts authentication and rate limits
//! as well as the handler, from the request reaching its route to the response head being ready
//! (a change stream's body, which goes on for minutes, is not counted). Requests that match no
//! route (the 404 fallback) and CORS preflights answered before routing are not timed. The group
//! is the route's policy group as [`crate::auth::ROUTES`] lists it, or `open` for the probes and
//! the API description that no policy guards.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use pageflow_metrics::Metrics;

use crate::auth::{RouteAccess, route_access};

/// The `group` label of the route `path` (a router path template): its policy group's key, or
/// `open`.
pub(crate) fn route_group(path: &str) -> &'static str {
    match route_access(path) {
        RouteAccess::AlwaysOpen => "open",
        RouteAccess::Group(group) => group.key(),
    }
}

/// Times the request and records it under its route group.
pub(crate) async fn record_latency(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let group = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| route_group(path.as_str()));
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(group) = group {
        metrics.record_http_request(group, started.elapsed());
        metrics.record_http_status(response.status().as_u16());
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use pageflow_metrics::HTTP_ROUTE_GROUPS;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::{ROUTES, RouteGroup};
    use crate::router::router;
    use crate::state::ServingState;

    #[test]
    fn every_route_has_a_group_the_metrics_know() {
        for route in ROUTES {
            let group = route_group(route.path);
            assert!(
                HTTP_ROUTE_GROUPS.contains(&group),
                "{}: {group}",
                route.path
            );
        }
        for group in RouteGroup::ALL {
            assert!(HTTP_ROUTE_GROUPS.contains(&group.key()), "{group:?}");
        }
        assert_eq!(route_group("/healthz"), "open");
        assert_eq!(route_group("/v1/portals/{portal}/popular"), "rankings");
    }

    #[tokio::test]
    async fn the_middleware_records_each_routed_request_by_group() {
        let metrics = Arc::new(Metrics::new());
        let app = router(Arc::new(ServingState::new()), Arc::clone(&metrics));
        let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        let count = |group: &str| {
            metrics
                .latencies()
                .http
                .iter()
                .find(|(g, _)| *g == group)
                .map_or(0, |(_, summary)| summary.count)
        };
        assert_eq!(count("open"), 0);
        let answer = app.clone().oneshot(get("/healthz")).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        app.clone().oneshot(get("/v1/portals")).await.unwrap();
        app.clone().oneshot(get("/v1/portals")).await.unwrap();
        // No route: not timed.
        let answer = app.clone().oneshot(get("/no/such/path")).await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        assert_eq!(count("open"), 1);
        assert_eq!(count("rankings"), 2);
        assert_eq!(count("metrics"), 0);
        assert_eq!(
            metrics.http_requests_total(),
            3,
            "what EMF reports as HttpRequests"
        );
        assert_eq!(metrics.http_server_errors(), 0, "no 5xx among them");
        let latencies = metrics.latencies();
        let rankings = latencies.http.iter().find(|(g, _)| *g == "rankings");
        assert!(rankings.is_some_and(|(_, s)| s.p50_s.is_some() && s.sum_s > 0.0));
        let text = metrics.render_prometheus();
        assert!(
            text.contains("\npageflow_http_request_duration_seconds_count{group=\"rankings\"} 2\n"),
            "{text}"
        );
    }
}
