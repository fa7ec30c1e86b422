//! `GET /v1/users/{user_id}/recommendations?portal=&n=`: what this reader should read next.
//!
//! The answer blends three sources (see [`crate::blend`]): Amazon Personalize's recommendations for
//! the reader, when the portal has a campaign or recommender configured; articles read together with
//! what the reader just read (the job keeps every reader's recent articles, see
//! [`crate::recent_reads`]); and the portal's trending ranking. Articles the reader already read are
//! left out, and each item says which source placed it.
//!
//! Personalize is asked within a time budget and behind a circuit breaker (see
//! [`crate::personalize`]): when it is slow, failing, throttled, not configured or has nothing for
//! a cold reader, the answer comes from pageflow's own lists alone, at once. The answer says what
//! happened in `personalize` (`ok`, `not_configured`, `timeout`, `throttled`, `not_found`,
//! `invalid_input`, `error`, `breaker_open`: [`pageflow_metrics::RECOMMENDATION_OUTCOMES`]) and
//! carries Personalize's `recommendation_id` when it answered.
//!
//! ```text
//! {"user_id":"u1","portal":"g1","recommendation_id":"RID-…","personalize":"ok",
//!  "items":[{"article_id":"a1","source":"personalize","score":0.12},
//!           {"article_id":"a7","source":"related","score":0.4}, …]}
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use pageflow_dataflow::features::RankingKind;
use serde::Serialize;

use crate::api::{
    ApiError, MAX_USER_ID_CHARS, QueryParams, id_from_path, json, parse_n, portal_from_query,
    query_params,
};
use crate::app::App;
use crate::blend::{Candidate, Recommended, blend, related_candidates};
use crate::personalize::PersonalizeAnswer;

/// The recommendation routes.
pub(crate) fn routes() -> Router<App> {
    Router::new().route("/v1/users/{user_id}/recommendations", get(recommendations))
}

/// The body of a recommendations answer.
#[derive(Serialize)]
struct RecommendationsBody<'a> {
    user_id: &'a str,
    portal: &'a str,
    recommendation_id: Option<&'a str>,
    personalize: &'static str,
    items: &'a [Recommended],
}

/// `GET /v1/users/{user_id}/recommendations?portal=&n=`.
async fn recommendations(
    State(app): State<App>,
    user_id: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let user_id = id_from_path(user_id, "invalid_user_id", "user id", MAX_USER_ID_CHARS)?;
    let params = query_params(query)?;
    let portal = portal_from_query(&params, "recommendations are per portal")?;
    let n = parse_n(&params)?;

    let recent = app.state.recent_reads().recent(portal, &user_id);
    let personalize = match &app.personalize {
        // Ask for more than `n`: some answers may be articles already read.
        Some(service) => service.ask(portal, &user_id, n + recent.len()).await,
        None => PersonalizeAnswer::not_configured(),
    };
    app.metrics.record_recommendation(personalize.status);

    // After the await: no lock is held across it, each read below takes and drops its own.
    let related = related_candidates(&recent, |article| app.state.related(portal, article));
    let trending: Vec<Candidate> = app
        .state
        .ranking(portal, RankingKind::Trending)
        .map(|ranking| {
            ranking
                .items
                .iter()
                .map(|item| Candidate {
                    article_id: Arc::from(item.article_id.as_str()),
                    score: Some(item.score),
                })
                .collect()
        })
        .unwrap_or_default();
    if personalize.items.is_empty()
        && related.is_empty()
        && trending.is_empty()
        && !app.state.knows_portal(portal)
    {
        return Err(ApiError::not_found(
            "portal_not_found",
            format!(
                "nothing computed for portal {portal:?} yet and no Personalize answer: check the name (GET /v1/portals lists the known ones) or retry once its first events are processed"
            ),
        ));
    }
    let already_read: HashSet<&str> = recent.iter().map(|read| &*read.article_id).collect();
    let items = blend(
        n,
        app.blend_shares,
        &personalize.items,
        &related,
        &trending,
        &already_read,
    );
    Ok(json(&RecommendationsBody {
        user_id: &user_id,
        portal,
        recommendation_id: personalize.recommendation_id.as_deref(),
        personalize: personalize.status,
        items: &items,
    }))
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::ServingState;
    use crate::router::app_router;
    use crate::state::tests::{ranking, related};
    use pageflow_metrics::Metrics;

    const MIN: u64 = 60_000;

    async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap();
        (status, body)
    }

    /// g1 with a trending ranking t1..t4 and related lists of a1 (→ r1, t1) and a2 (→ r2).
    fn setup() -> (Router, Arc<ServingState>) {
        let state = Arc::new(ServingState::new());
        state.apply(ranking(
            RankingKind::Trending,
            "g1",
            10 * MIN,
            10 * MIN,
            true,
            &["t1", "t2", "t3", "a1"],
        ));
        state.apply(related("g1", "a1", 10 * MIN, &["r1", "t1"]));
        state.apply(related("g1", "a2", 10 * MIN, &["r2"]));
        let router = app_router(App::new(Arc::clone(&state), Arc::new(Metrics::new())));
        (router, state)
    }

    fn items(body: &Value) -> Vec<(String, String)> {
        body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|item| {
                (
                    item["article_id"].as_str().unwrap_or_default().to_string(),
                    item["source"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_cold_reader_gets_trending() {
        let (router, _) = setup();
        let (status, body) = get(
            &router,
            "/v1/users/new-reader/recommendations?portal=g1&n=3",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["personalize"], "not_configured");
        assert_eq!(body["recommendation_id"], Value::Null);
        assert_eq!(body["user_id"], "new-reader");
        assert_eq!(
            items(&body),
            [
                ("t1".to_string(), "trending".to_string()),
                ("t2".to_string(), "trending".to_string()),
                ("t3".to_string(), "trending".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn a_reader_gets_related_to_recent_reads_without_what_they_read() {
        let (router, state) = setup();
        for (article, ts) in [("a2", 1), ("a1", 2), ("t2", 3)] {
            state.recent_reads().record("g1", "u1", article, ts);
        }
        let (status, body) = get(&router, "/v1/users/u1/recommendations?portal=g1&n=10").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let got = items(&body);
        // Related and trending alternate 3:2 (no Personalize): related offers a1's partners r1, t1
        // then a2's r2 (read earlier, so weighed less); trending offers t1, t3 (t2 and a1 were
        // read). t1 is placed once, by trending, which reaches it first.
        assert_eq!(
            got,
            [
                ("r1".to_string(), "related".to_string()),
                ("t1".to_string(), "trending".to_string()),
                ("r2".to_string(), "related".to_string()),
                ("t3".to_string(), "trending".to_string())
            ],
            "{body}"
        );
        // The reader's reads are per portal.
        let (_, body) = get(&router, "/v1/users/u1/recommendations?portal=g1&n=1").await;
        assert_eq!(items(&body).len(), 1);
    }

    /// The OpenAPI document lists exactly the outcomes an answer can carry.
    #[test]
    fn the_documented_personalize_outcomes_are_the_real_ones() {
        let document: Value = serde_json::from_str(crate::openapi::TEMPLATE).unwrap();
        let documented: Vec<&str> = document["components"]["schemas"]["Recommendations"]
            ["properties"]["personalize"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no enum"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(documented, pageflow_metrics::RECOMMENDATION_OUTCOMES);
        for outcome in [
            pageflow_connectors::personalize::RecommendOutcome::Ok,
            pageflow_connectors::personalize::RecommendOutcome::Timeout,
            pageflow_connectors::personalize::RecommendOutcome::Throttled,
            pageflow_connectors::personalize::RecommendOutcome::NotFound,
            pageflow_connectors::personalize::RecommendOutcome::InvalidInput,
            pageflow_connectors::personalize::RecommendOutcome::Error,
            pageflow_connectors::personalize::RecommendOutcome::BreakerOpen,
        ] {
            assert!(documented.contains(&outcome.as_str()), "{outcome}");
        }
    }

    #[tokio::test]
    async fn bad_requests_have_stable_codes() {
        let (router, _) = setup();
        let long = "u".repeat(MAX_USER_ID_CHARS + 1);
        for (uri, status, code) in [
            ("/v1/users/u1/recommendations", 400, "invalid_portal"),
            (
                "/v1/users/u1/recommendations?portal=G1",
                400,
                "invalid_portal",
            ),
            (
                "/v1/users/u1/recommendations?portal=g1&n=0",
                400,
                "invalid_n",
            ),
            (
                "/v1/users/u1/recommendations?portal=g1&n=101",
                400,
                "invalid_n",
            ),
            (
                &format!("/v1/users/{long}/recommendations?portal=g1") as &str,
                400,
                "invalid_user_id",
            ),
            (
                "/v1/users/u1/recommendations?portal=nowhere",
                404,
                "portal_not_found",
            ),
        ] {
            let (got, body) = get(&router, uri).await;
            assert_eq!(got.as_u16(), status, "{uri}: {body}");
            assert_eq!(body["error"]["code"], code, "{uri}: {body}");
        }
    }
}
