//! The endpoints of [`super`] answered through the whole router: answers, error codes, headers.

use axum::body::{Body, to_bytes};
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use pageflow_metrics::Metrics;

use pageflow_connectors::kinesis::consumer::ShardStatus;
use pageflow_dataflow::features::RankingKind;
use pageflow_metrics::PROMETHEUS_CONTENT_TYPE;

use super::health::{READY_MAX_LAG_MS, readiness_problems};
use crate::api::MAX_ARTICLE_ID_CHARS;
use crate::router::{router, serve};
use crate::state::ServingState;
use crate::state::tests::{ranking as ranking_update, related as related_update};

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
async fn related_takes_article_ids_with_slashes_as_they_are() {
    let (router, state, _) = setup();
    // An id that is a URL path, and one that ends in "/related" itself.
    for id in ["/noticia/2026/12/06/x.ghtml", "g1/politica/related"] {
        state.apply(related_update("g1", id, MIN, &["b"]));
        for path in [
            format!("/v1/articles/{id}/related?portal=g1"),
            format!("/v1/articles/{}/related?portal=g1", id.replace('/', "%2F")),
        ] {
            let answer = get(&router, &path).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
            assert_eq!(answer.json()["article_id"], id, "{path}");
            assert_eq!(answer.json()["items"][0]["article_id"], "b", "{path}");
        }
    }
    // A path under /v1/articles that does not end in /related is no endpoint.
    get(&router, "/v1/articles/a00/other?portal=g1")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // An empty id between the slashes.
    get(&router, "/v1/articles//related?portal=g1")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_article_id");
}

#[tokio::test]
async fn final_true_asks_for_the_last_final_ranking() {
    let (router, state, _) = setup();
    // g1's trending has a final window and a newer provisional one: by default the provisional.
    let newest = get(&router, "/v1/portals/g1/trending").await.json();
    assert_eq!(newest["final"], false);
    let last_final = get(&router, "/v1/portals/g1/trending?final=true")
        .await
        .json();
    assert_eq!(last_final["final"], true);
    assert!(last_final["window_end"].as_u64() < newest["window_end"].as_u64());
    let explicit = get(&router, "/v1/portals/g1/trending?final=false")
        .await
        .json();
    assert_eq!(explicit, newest);
    get(&router, "/v1/portals/g1/trending?final=yes")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_final");
    // A portal with only a provisional ranking has no final one yet.
    state.apply(ranking_update(
        RankingKind::Popular,
        "ge",
        61 * MIN,
        61 * MIN,
        false,
        &["p"],
    ));
    assert_eq!(
        get(&router, "/v1/portals/ge/popular").await.status,
        StatusCode::OK
    );
    get(&router, "/v1/portals/ge/popular?final=true")
        .await
        .assert_error(StatusCode::NOT_FOUND, "portal_not_found");
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
    assert!(problems(&[shard(Some(READY_MAX_LAG_MS + 1), None, false)]).contains("behind its tip"));
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
    // The first scrape was timed once its answer was ready: the second one shows it.
    let answer = get(&router, "/metrics").await;
    assert!(
        answer
            .body
            .contains("\npageflow_http_request_duration_seconds_count{group=\"metrics\"} 1\n"),
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
    for endpoint in [
        "/v1/portals",
        "popular?n=",
        "trending?n=",
        "2000",
        "/v1/job",
    ] {
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
