//! Recommendations with Amazon Personalize, against the fake Personalize server on loopback (no
//! local Personalize server exists; see `pageflow_tests::fake_personalize`): the blend, the time
//! budget, the circuit breaker, and the job forwarding its counted pageviews with `PutEvents`.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::Request;
use pageflow::config::{PersonalizeConfig, PortalPersonalize};
use pageflow_dataflow::config::Millis;
use pageflow_dataflow::features::{RankedItem, RankingKind, RelatedItem};
use pageflow_dataflow::live::LiveUpdate;
use pageflow_metrics::Metrics;
use pageflow_serve::personalize::PersonalizeRecommendations;
use pageflow_serve::{App, ServingState, app_router};
use pageflow_tests::fake_personalize::{FakeMode, FakePersonalize};
use pageflow_tests::http_get;
use pageflow_tests::job_process::{JobProcess, poll_until};
use serde_json::Value;
use tower::ServiceExt;

const CAMPAIGN: &str = "arn:aws:personalize:us-east-1:000000000000:campaign/g1-articles";

fn personalize_config(timeout: Millis, breaker_failures: u32) -> PersonalizeConfig {
    PersonalizeConfig {
        timeout: Some(timeout),
        breaker_failures: Some(breaker_failures),
        breaker_open_for: Some(Millis::seconds(60)),
        portals: BTreeMap::from([(
            "g1".to_string(),
            PortalPersonalize {
                campaign_arn: Some(CAMPAIGN.to_string()),
                ..PortalPersonalize::default()
            },
        )]),
        ..PersonalizeConfig::default()
    }
}

/// g1 with trending t1..t3, a related list of a1 (→ r1), and reader u1 who read a1.
fn state() -> Arc<ServingState> {
    let state = Arc::new(ServingState::new());
    state.apply(LiveUpdate::Ranking {
        kind: RankingKind::Trending,
        portal: "g1".into(),
        window_start: 0,
        window_end: 60_000,
        watermark: 60_000,
        is_final: true,
        items: ["t1", "t2", "t3"]
            .iter()
            .map(|id| RankedItem {
                article_id: (*id).into(),
                views: 3,
                engaged_views: 1,
                score: 1.0,
            })
            .collect(),
    });
    state.apply(LiveUpdate::Related {
        portal: "g1".into(),
        article_id: "a1".into(),
        window_end: 60_000,
        items: vec![RelatedItem {
            article_id: "r1".into(),
            cooc: 4,
            score: 0.5,
        }],
    });
    state.recent_reads().record("g1", "u1", "a1", 1_000);
    state
}

fn router(fake: &FakePersonalize, config: &PersonalizeConfig, metrics: &Arc<Metrics>) -> Router {
    let personalize = PersonalizeRecommendations::new(&fake.runtime_client(), config);
    app_router(App::new(state(), Arc::clone(metrics)).with_personalize(Arc::new(personalize)))
}

async fn recommendations(router: &Router, user: &str) -> Value {
    let request = Request::get(format!("/v1/users/{user}/recommendations?portal=g1&n=5"))
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn sources(body: &Value) -> Vec<(String, String)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personalize_answers_are_blended_without_what_was_read() {
    let fake = FakePersonalize::start().await.unwrap();
    // Personalize does not know u1 read a1 a moment ago: it recommends it first.
    fake.set_recommendations(
        "u1",
        &[
            ("a1", Some(0.9)),
            ("p1", Some(0.5)),
            ("p2", Some(0.4)),
            ("p3", None),
        ],
    );
    let metrics = Arc::new(Metrics::new());
    let router = router(&fake, &personalize_config(Millis(2_000), 5), &metrics);
    let body = recommendations(&router, "u1").await;
    assert_eq!(body["personalize"], "ok", "{body}");
    assert!(
        body["recommendation_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    let items = sources(&body);
    let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
    assert!(!ids.contains(&"a1"), "already read: {body}");
    assert_eq!(items.len(), 5, "{body}");
    for (id, source) in &items {
        let expected = match id.as_str() {
            "p1" | "p2" | "p3" => "personalize",
            "r1" => "related",
            "t1" | "t2" | "t3" => "trending",
            other => panic!("unexpected {other}: {body}"),
        };
        assert_eq!(source, expected, "{body}");
    }
    assert!(ids.contains(&"r1"), "related to the recent read: {body}");
    assert_eq!(ids[0], "p1", "{body}");
    // What Personalize was asked: the campaign, the reader, room for the articles already read.
    let asked = fake.recommendation_requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].campaign_arn.as_deref(), Some(CAMPAIGN));
    assert_eq!(asked[0].user_id.as_deref(), Some("u1"));
    assert_eq!(asked[0].num_results, Some(6));
    assert_eq!(metrics.recommendations("ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_personalize_is_skipped_after_the_budget() {
    let fake = FakePersonalize::start().await.unwrap();
    fake.set_recommendations("u1", &[("p1", Some(0.5))]);
    fake.set_default_mode(FakeMode::Slow(Duration::from_secs(30)));
    let metrics = Arc::new(Metrics::new());
    let router = router(&fake, &personalize_config(Millis(100), 5), &metrics);
    // Would take 30 s if the budget were not kept.
    let body = tokio::time::timeout(Duration::from_secs(10), recommendations(&router, "u1"))
        .await
        .unwrap_or_else(|_| panic!("the answer must come within the budget, not after 30 s"));
    assert_eq!(body["personalize"], "timeout", "{body}");
    assert_eq!(body["recommendation_id"], Value::Null);
    let items = sources(&body);
    assert!(!items.is_empty(), "pageflow's own lists answer: {body}");
    assert!(items.iter().all(|(_, source)| source != "personalize"));
    assert_eq!(
        fake.recommendation_requests().len(),
        1,
        "no retry within the budget"
    );
    assert_eq!(metrics.recommendations("timeout"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_open_the_breaker_and_personalize_is_not_called() {
    let fake = FakePersonalize::start().await.unwrap();
    fake.set_default_mode(FakeMode::ServiceUnavailable);
    let metrics = Arc::new(Metrics::new());
    let router = router(&fake, &personalize_config(Millis(2_000), 3), &metrics);
    for _ in 0..3 {
        let body = recommendations(&router, "u1").await;
        assert_eq!(body["personalize"], "error", "{body}");
    }
    fake.push_modes([FakeMode::Throttle]);
    let calls = fake.recommendation_requests().len();
    assert_eq!(calls, 3);
    for _ in 0..5 {
        let body = recommendations(&router, "u1").await;
        assert_eq!(body["personalize"], "breaker_open", "{body}");
        assert!(!sources(&body).is_empty(), "{body}");
    }
    assert_eq!(
        fake.recommendation_requests().len(),
        calls,
        "an open breaker does not call Personalize"
    );
    assert_eq!(metrics.recommendations("breaker_open"), 5);
    assert_eq!(metrics.recommendations("error"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_missing_campaigns_fall_back_and_say_why() {
    let fake = FakePersonalize::start().await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let router = router(&fake, &personalize_config(Millis(2_000), 5), &metrics);
    fake.push_modes([FakeMode::Throttle, FakeMode::NotFound]);
    let throttled = recommendations(&router, "u1").await;
    assert_eq!(throttled["personalize"], "throttled", "{throttled}");
    let missing = recommendations(&router, "u1").await;
    assert_eq!(missing["personalize"], "not_found", "{missing}");
    // A portal without a campaign never calls Personalize.
    let calls = fake.recommendation_requests().len();
    let request = Request::get("/v1/users/u1/recommendations?portal=ge")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    // Nothing known about ge: 404, without asking Personalize.
    assert_eq!(response.status(), 404);
    assert_eq!(fake.recommendation_requests().len(), calls);
}

/// The whole job: counted pageviews of a tracked portal go to its event tracker in calls of at
/// most 10 events of one reader and session, each event once; recommendations use the campaign.
#[test]
fn the_job_forwards_its_pageviews_and_serves_recommendations() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = runtime.block_on(FakePersonalize::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut job = JobProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_pageflow"))
            .arg("run")
            .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
            .env("PAGEFLOW__SINKS__DIR", dir.path())
            .env("PAGEFLOW__CHECKPOINT__ENABLED", "false")
            .env("PAGEFLOW__SOURCE__EVENTS_PER_SECOND", "400")
            .env("PAGEFLOW__AWS__ENDPOINT_URL", fake.endpoint())
            .env("PAGEFLOW__AWS__REGION", "us-east-1")
            .env(
                "PAGEFLOW__PERSONALIZE__PORTALS__G1__TRACKING_ID",
                "track-g1",
            )
            .env("PAGEFLOW__PERSONALIZE__PORTALS__G1__CAMPAIGN_ARN", CAMPAIGN)
            .env("PAGEFLOW__PERSONALIZE__EVENTS__LINGER", "\"200ms\"")
            // The budget is not what this test checks (`a_slow_personalize_is_skipped_after_the_budget`
            // does): a loaded machine must not turn a prompt fake into a timeout.
            .env("PAGEFLOW__PERSONALIZE__TIMEOUT", "\"10s\"")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_LOG", "info"),
    )
    .unwrap();
    let addr = job.http_address(Duration::from_secs(60)).unwrap();

    let calls = poll_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let calls = fake.accepted_put_events();
        (calls.iter().map(|c| c.events.len()).sum::<usize>() >= 200).then_some(calls)
    })
    .unwrap_or_else(|| panic!("no events reached the tracker: {}", job.stderr()));
    let mut event_ids = HashSet::new();
    for call in &calls {
        assert_eq!(call.tracking_id.as_deref(), Some("track-g1"));
        assert!((1..=10).contains(&call.events.len()), "{call:?}");
        assert!(call.user_id.as_deref().is_some_and(|u| !u.is_empty()));
        assert!(call.session_id.as_deref().is_some_and(|s| !s.is_empty()));
        for event in &call.events {
            assert_eq!(event.event_type.as_deref(), Some("pageview"));
            assert!(event.item_id.is_some(), "{event:?}");
            let id = event.event_id.clone().unwrap_or_default();
            assert!(event_ids.insert(id.clone()), "event {id} sent twice");
        }
    }

    // A reader the tracker heard of gets Personalize's items, minus what they read.
    let reader = calls[0].user_id.clone().unwrap_or_default();
    fake.set_recommendations(&reader, &[("p-1", Some(0.9)), ("p-2", Some(0.8))]);
    let body: Value = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let (status, body) = http_get(
            &addr,
            &format!("/v1/users/{reader}/recommendations?portal=g1&n=5"),
        )?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    })
    .unwrap_or_else(|| panic!("no recommendations: {}", job.stderr()));
    assert_eq!(body["personalize"], "ok", "{body}");
    let items = sources(&body);
    assert!(
        items.contains(&("p-1".to_string(), "personalize".to_string())),
        "{body}"
    );

    let (status, metrics) = http_get(&addr, "/metrics").unwrap_or_else(|| panic!("metrics"));
    assert_eq!(status, 200);
    let sent = metrics
        .lines()
        .find(|l| l.starts_with("pageflow_personalize_events_total{outcome=\"sent\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(sent >= 200, "{metrics}");
    assert!(
        metrics.contains("pageflow_recommendations_total{personalize=\"ok\"} 1"),
        "{metrics}"
    );
    job.kill();
}
