//! The Amazon Personalize connector through the real SDK clients, against the fake Personalize
//! (`pageflow_tests::fake_personalize`) on loopback: recommendations within a budget and behind a
//! circuit breaker, and pageviews forwarded as grouped, paced, retried `PutEvents` calls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_personalizeevents::error::ProvideErrorMetadata;
use pageflow_connectors::ConnectorError;
use pageflow_connectors::personalize::{
    BreakerConfig, BreakerState, EventForwarder, ForwarderConfig, ForwarderStats, PersonalizeEvent,
    RecommendOutcome, RecommendationRequest, RecommendationSource, RecommendedItem, Recommender,
    RecommenderConfig,
};
use pageflow_connectors::retry::Backoff;
use pageflow_tests::fake_personalize::{FakeMode, FakePersonalize};

const CAMPAIGN: &str = "arn:aws:personalize:us-east-1:123456789012:campaign/articles";
const RECOMMENDER: &str = "arn:aws:personalize:us-east-1:123456789012:recommender/for-you";
const FILTER: &str = "arn:aws:personalize:us-east-1:123456789012:filter/portal";
const TRACKER: &str = "tracker-g1";

async fn start_fake() -> FakePersonalize {
    FakePersonalize::start()
        .await
        .unwrap_or_else(|e| panic!("the fake Personalize does not start: {e}"))
}

/// Waits until `condition` holds, checking every 10 ms, and fails the test after `timeout`.
async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A recommender with a budget generous enough for a loaded test machine.
fn recommender(fake: &FakePersonalize, breaker: BreakerConfig) -> Recommender {
    Recommender::new(
        &fake.runtime_client(),
        RecommenderConfig {
            timeout: Duration::from_secs(5),
            breaker,
        },
    )
}

fn campaign_request(user: &str, num_results: u32) -> RecommendationRequest {
    RecommendationRequest::new(
        RecommendationSource::Campaign(CAMPAIGN.to_string()),
        user,
        num_results,
    )
}

#[tokio::test]
async fn recommend_returns_items_and_sends_source_filter_and_count() {
    let fake = start_fake().await;
    fake.set_recommendations(
        "u1",
        &[
            ("a1", Some(0.9)),
            ("a2", Some(0.5)),
            ("a3", None),
            ("a4", Some(0.1)),
        ],
    );
    let recommender = recommender(&fake, BreakerConfig::default());

    let request = campaign_request("u1", 3)
        .with_filter(FILTER, [("PORTAL".to_string(), "\"g1\"".to_string())]);
    let result = recommender.recommend(&request).await;
    assert_eq!(RecommendOutcome::of(&result), RecommendOutcome::Ok);
    let answer = result.unwrap_or_else(|e| panic!("recommend fails: {e}"));
    assert_eq!(
        answer.items,
        vec![
            RecommendedItem {
                item_id: "a1".into(),
                score: Some(0.9)
            },
            RecommendedItem {
                item_id: "a2".into(),
                score: Some(0.5)
            },
            RecommendedItem {
                item_id: "a3".into(),
                score: None
            },
        ]
    );
    assert!(
        answer
            .recommendation_id
            .as_deref()
            .is_some_and(|id| id.starts_with("RID-")),
        "{answer:?}"
    );

    let recorded = fake.recommendation_requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].campaign_arn.as_deref(), Some(CAMPAIGN));
    assert_eq!(recorded[0].recommender_arn, None);
    assert_eq!(recorded[0].user_id.as_deref(), Some("u1"));
    assert_eq!(recorded[0].num_results, Some(3));
    assert_eq!(recorded[0].filter_arn.as_deref(), Some(FILTER));
    assert_eq!(
        recorded[0].filter_values,
        BTreeMap::from([("PORTAL".to_string(), "\"g1\"".to_string())])
    );

    let from_recommender = RecommendationRequest::new(
        RecommendationSource::Recommender(RECOMMENDER.to_string()),
        "u2",
        10,
    );
    let answer = recommender
        .recommend(&from_recommender)
        .await
        .unwrap_or_else(|e| panic!("recommend fails: {e}"));
    assert!(answer.items.is_empty(), "u2 has no canned items");
    let recorded = fake.recommendation_requests();
    assert_eq!(recorded[1].recommender_arn.as_deref(), Some(RECOMMENDER));
    assert_eq!(recorded[1].campaign_arn, None);
    assert_eq!(recorded[1].filter_arn, None);
    assert!(recorded[1].filter_values.is_empty());
    assert_eq!(recommender.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_slow_answer_times_out_within_the_budget_after_one_request() {
    let fake = start_fake().await;
    let recommender = Recommender::new(
        &fake.runtime_client(),
        RecommenderConfig {
            timeout: Duration::from_millis(300),
            breaker: BreakerConfig {
                failure_threshold: 100,
                ..BreakerConfig::default()
            },
        },
    );
    // Normal calls first open the connection (on a busy machine the first may not fit in the
    // budget), so that the slow one is sent at once.
    let mut warmed_up = false;
    for _ in 0..20 {
        if recommender
            .recommend(&campaign_request("u1", 5))
            .await
            .is_ok()
        {
            warmed_up = true;
            break;
        }
    }
    assert!(warmed_up, "no normal call fitted in the budget");
    fake.set_default_mode(FakeMode::Slow(Duration::from_secs(5)));
    let before = fake.request_count();

    let result = recommender.recommend(&campaign_request("u1", 5)).await;
    match &result {
        Err(error @ ConnectorError::PersonalizeTimeout { budget, .. }) => {
            assert_eq!(*budget, Duration::from_millis(300));
            assert!(error.is_retryable());
            assert!(error.to_string().contains("300ms budget"), "{error}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(RecommendOutcome::of(&result).as_str(), "timeout");
    eventually("the slow request arrived", Duration::from_secs(5), || {
        fake.request_count() == before + 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.request_count(),
        before + 1,
        "the SDK sent no second attempt"
    );
}

#[tokio::test]
async fn service_errors_map_to_their_kinds_without_sdk_retries() {
    let fake = start_fake().await;
    let recommender = recommender(
        &fake,
        BreakerConfig {
            failure_threshold: 100,
            open_for: Duration::from_secs(60),
        },
    );
    fake.push_modes([
        FakeMode::Throttle,
        FakeMode::NotFound,
        FakeMode::InvalidInput,
        FakeMode::InternalFailure,
        FakeMode::ServiceUnavailable,
    ]);
    let expected = [
        ("throttled", true),
        ("not_found", false),
        ("invalid_input", false),
        ("error", true),
        ("error", true),
    ];
    for (label, retryable) in expected {
        let result = recommender.recommend(&campaign_request("u1", 5)).await;
        assert_eq!(RecommendOutcome::of(&result).as_str(), label, "{result:?}");
        let error = result
            .err()
            .unwrap_or_else(|| panic!("expected a {label} error"));
        assert_eq!(error.is_retryable(), retryable, "{error}");
        assert!(error.to_string().contains(CAMPAIGN), "{error}");
    }
    assert_eq!(
        fake.request_count(),
        5,
        "each failure is one request: the SDK's retries are off even though the client had them"
    );

    let too_many = recommender.recommend(&campaign_request("u1", 501)).await;
    assert!(
        matches!(too_many, Err(ConnectorError::PersonalizeInvalidInput { ref message, .. }) if message.contains("1 to 500")),
        "{too_many:?}"
    );
    assert_eq!(fake.request_count(), 5, "an invalid request is not sent");
}

#[tokio::test]
async fn the_breaker_opens_short_circuits_and_closes_after_a_successful_probe() {
    let fake = start_fake().await;
    let recommender = recommender(
        &fake,
        BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(1),
        },
    );
    fake.set_default_mode(FakeMode::InternalFailure);
    for _ in 0..3 {
        let result = recommender.recommend(&campaign_request("u1", 5)).await;
        assert!(
            matches!(result, Err(ConnectorError::PersonalizeService { .. })),
            "{result:?}"
        );
    }
    assert_eq!(recommender.breaker_state(), BreakerState::Open);

    for _ in 0..5 {
        let result = recommender.recommend(&campaign_request("u1", 5)).await;
        assert_eq!(RecommendOutcome::of(&result), RecommendOutcome::BreakerOpen);
        assert!(
            result.as_ref().is_err_and(ConnectorError::is_retryable),
            "{result:?}"
        );
    }
    assert_eq!(fake.request_count(), 3, "an open breaker calls nothing");

    fake.set_default_mode(FakeMode::Ok);
    eventually("the breaker is half-open", Duration::from_secs(5), || {
        recommender.breaker_state() == BreakerState::HalfOpen
    })
    .await;
    let probe = recommender.recommend(&campaign_request("u1", 5)).await;
    assert!(probe.is_ok(), "{probe:?}");
    assert_eq!(recommender.breaker_state(), BreakerState::Closed);
    assert_eq!(fake.request_count(), 4);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let fake = start_fake().await;
    let recommender = recommender(
        &fake,
        BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_millis(500),
        },
    );
    fake.set_default_mode(FakeMode::Throttle);
    let first = recommender.recommend(&campaign_request("u1", 5)).await;
    assert_eq!(RecommendOutcome::of(&first), RecommendOutcome::Throttled);
    assert_eq!(recommender.breaker_state(), BreakerState::Open);

    eventually("the breaker is half-open", Duration::from_secs(5), || {
        recommender.breaker_state() == BreakerState::HalfOpen
    })
    .await;
    let probe = recommender.recommend(&campaign_request("u1", 5)).await;
    assert_eq!(RecommendOutcome::of(&probe), RecommendOutcome::Throttled);
    assert_eq!(recommender.breaker_state(), BreakerState::Open);
    let refused = recommender.recommend(&campaign_request("u1", 5)).await;
    assert_eq!(
        RecommendOutcome::of(&refused),
        RecommendOutcome::BreakerOpen
    );
    assert_eq!(fake.request_count(), 2);
}

/// Event `n` of `user`'s `session`, whose id names all three.
fn pageview(user: &str, session: &str, n: u32) -> PersonalizeEvent {
    PersonalizeEvent {
        tracking_id: TRACKER.to_string(),
        user_id: user.to_string(),
        session_id: session.to_string(),
        event_id: format!("{user}/{session}/{n}"),
        event_type: "pageview".to_string(),
        item_id: format!("article-{n}"),
        sent_at_ms: 1_700_000_000_000 + u64::from(n) * 1000,
        properties: Some(format!(
            r#"{{"dwellMs":{},"scrollPct":{},"clicks":1}}"#,
            1000 + n,
            n % 100
        )),
    }
}

/// Quick retries and a short linger.
fn quick_config() -> ForwarderConfig {
    ForwarderConfig {
        linger: Duration::from_millis(200),
        backoff: Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(50),
        },
        call_timeout: Duration::from_secs(5),
        ..ForwarderConfig::default()
    }
}

fn start_forwarder(fake: &FakePersonalize, config: ForwarderConfig) -> EventForwarder {
    EventForwarder::start(
        &fake.events_client(),
        config,
        &tokio::runtime::Handle::current(),
    )
    .unwrap_or_else(|e| panic!("the forwarder does not start: {e}"))
}

/// Every event is accounted for once shutdown is over.
fn assert_accounted(stats: &ForwarderStats) {
    assert_eq!(
        stats.offered,
        stats.dropped_queue_full
            + stats.dropped_invalid
            + stats.dropped_closed
            + stats.sent_events
            + stats.failed_events,
        "{stats:?}"
    );
}

/// The ids of the events the fake accepted, in arrival order.
fn accepted_event_ids(fake: &FakePersonalize) -> Vec<String> {
    fake.accepted_put_events()
        .iter()
        .flat_map(|call| call.events.iter())
        .map(|event| event.event_id.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn twenty_five_events_of_one_session_go_as_calls_of_10_10_and_5() {
    let fake = start_fake().await;
    let forwarder = start_forwarder(&fake, quick_config());
    for n in 0..25 {
        assert!(forwarder.offer(pageview("u1", "s1", n)));
    }
    eventually("25 events arrived", Duration::from_secs(10), || {
        accepted_event_ids(&fake).len() == 25
    })
    .await;

    let calls = fake.accepted_put_events();
    // The two full calls go at once and the rest after the linger; arrival order between calls
    // sent at the same time is not fixed, so compare the sizes sorted and find the last group.
    let mut sizes: Vec<usize> = calls.iter().map(|call| call.events.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [5, 10, 10]);
    let partial = calls
        .iter()
        .find(|call| call.events.len() == 5)
        .unwrap_or_else(|| panic!("a call of 5: {calls:?}"));
    let partial_ids: Vec<&str> = partial
        .events
        .iter()
        .filter_map(|e| e.event_id.as_deref())
        .collect();
    assert_eq!(
        partial_ids,
        ["u1/s1/20", "u1/s1/21", "u1/s1/22", "u1/s1/23", "u1/s1/24"],
        "the last five, in order"
    );
    for call in &calls {
        assert_eq!(call.tracking_id.as_deref(), Some(TRACKER));
        assert_eq!(call.user_id.as_deref(), Some("u1"));
        assert_eq!(call.session_id.as_deref(), Some("s1"));
    }
    let mut ids = accepted_event_ids(&fake);
    ids.sort();
    let mut expected: Vec<String> = (0..25).map(|n| format!("u1/s1/{n}")).collect();
    expected.sort();
    assert_eq!(ids, expected);

    let sent = pageview("u1", "s1", 24);
    let received = &partial.events[4];
    assert_eq!(received.event_type.as_deref(), Some("pageview"));
    assert_eq!(received.item_id.as_deref(), Some("article-24"));
    assert_eq!(
        received.sent_at_ms,
        Some(i64::try_from(sent.sent_at_ms).unwrap_or(i64::MAX))
    );
    assert_eq!(received.properties, sent.properties);

    let stats = forwarder.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.sent_events, 25);
    assert_eq!(stats.sent_calls, 3);
    assert_eq!(stats.retried_calls, 0);
    assert_accounted(&stats);
}

#[tokio::test]
async fn events_of_different_users_and_sessions_never_share_a_call() {
    let fake = start_fake().await;
    let forwarder = start_forwarder(&fake, quick_config());
    let mut offered = Vec::new();
    for n in 0..4 {
        for user in ["u1", "u2", "u3"] {
            for session in ["s1", "s2"] {
                let event = pageview(user, session, n);
                offered.push(event.event_id.clone());
                assert!(forwarder.offer(event));
            }
        }
    }
    let stats = forwarder.shutdown(Duration::from_secs(10)).await;
    assert_eq!(stats.sent_events, 24, "{stats:?}");

    let calls = fake.accepted_put_events();
    assert_eq!(calls.len(), 6, "one call per user and session");
    for call in &calls {
        let prefix = format!(
            "{}/{}/",
            call.user_id.as_deref().unwrap_or_default(),
            call.session_id.as_deref().unwrap_or_default()
        );
        for event in &call.events {
            assert!(
                event
                    .event_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(&prefix)),
                "{event:?} in the call for {prefix}"
            );
        }
    }
    let mut ids = accepted_event_ids(&fake);
    ids.sort();
    offered.sort();
    assert_eq!(ids, offered);
}

#[tokio::test]
async fn every_event_arrives_exactly_once_after_throttling_and_server_errors() {
    let fake = start_fake().await;
    fake.push_modes([
        FakeMode::Throttle,
        FakeMode::InternalFailure,
        FakeMode::ServiceUnavailable,
        FakeMode::Throttle,
        FakeMode::InternalFailure,
    ]);
    let forwarder = start_forwarder(&fake, quick_config());
    let mut offered = Vec::new();
    for user in ["u1", "u2", "u3"] {
        for n in 0..10 {
            let event = pageview(user, "s1", n);
            offered.push(event.event_id.clone());
            assert!(forwarder.offer(event));
        }
    }
    let stats = forwarder.shutdown(Duration::from_secs(10)).await;

    let mut ids = accepted_event_ids(&fake);
    ids.sort();
    offered.sort();
    assert_eq!(ids, offered, "each event accepted exactly once");
    assert_eq!(stats.sent_events, 30, "{stats:?}");
    assert_eq!(stats.sent_calls, 3);
    assert_eq!(stats.retried_calls, 5);
    assert_eq!(stats.failed_events, 0);
    assert_eq!(
        fake.put_events_requests().len(),
        8,
        "3 calls and 5 retries, no SDK retry"
    );
    assert_accounted(&stats);
}

#[tokio::test]
async fn a_call_out_of_attempts_or_refused_counts_its_events_as_failed() {
    let fake = start_fake().await;
    fake.set_default_mode(FakeMode::InternalFailure);
    let forwarder = start_forwarder(
        &fake,
        ForwarderConfig {
            max_attempts: 3,
            ..quick_config()
        },
    );
    for n in 0..4 {
        assert!(forwarder.offer(pageview("u1", "s1", n)));
    }
    eventually("the attempts are spent", Duration::from_secs(10), || {
        forwarder.stats().failed_events == 4
    })
    .await;
    assert_eq!(fake.put_events_requests().len(), 3);
    assert_eq!(forwarder.stats().retried_calls, 2);

    fake.set_default_mode(FakeMode::InvalidInput);
    for n in 0..2 {
        assert!(forwarder.offer(pageview("u2", "s1", n)));
    }
    let stats = forwarder.shutdown(Duration::from_secs(10)).await;
    assert_eq!(stats.failed_events, 6, "{stats:?}");
    assert_eq!(stats.retried_calls, 2, "refused input is not retried");
    assert_eq!(fake.put_events_requests().len(), 4);
    assert_eq!(stats.sent_events, 0);
    assert_accounted(&stats);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let fake = start_fake().await;
    let forwarder = start_forwarder(
        &fake,
        ForwarderConfig {
            queue_capacity: 5,
            ..quick_config()
        },
    );
    // This test's runtime has one thread and the loop never yields to it, so the forwarder's task
    // cannot take anything from the queue meanwhile: offers beyond its capacity must be refused at
    // once rather than wait.
    let accepted = (0..50)
        .filter(|n| forwarder.offer(pageview("u1", "s1", *n)))
        .count();
    assert_eq!(accepted, 5);
    let stats = forwarder.stats();
    assert_eq!(stats.offered, 50);
    assert_eq!(stats.dropped_queue_full, 45);

    let invalid = PersonalizeEvent {
        session_id: String::new(),
        ..pageview("u1", "s1", 99)
    };
    assert!(!forwarder.offer(invalid));
    let stats = forwarder.shutdown(Duration::from_secs(10)).await;
    assert_eq!(stats.dropped_invalid, 1);
    assert_eq!(stats.sent_events, 5, "{stats:?}");
    assert_eq!(accepted_event_ids(&fake).len(), 5);
    assert_accounted(&stats);
}

#[tokio::test]
async fn shutdown_flushes_lingering_groups_and_later_offers_are_refused() {
    let fake = start_fake().await;
    let forwarder = start_forwarder(
        &fake,
        ForwarderConfig {
            linger: Duration::from_secs(600),
            ..quick_config()
        },
    );
    assert!(forwarder.offer(pageview("u1", "s1", 0)));
    assert!(forwarder.offer(pageview("u1", "s1", 1)));
    assert!(forwarder.offer(pageview("u1", "s2", 2)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.request_count(), 0, "the groups are still lingering");

    let stats = forwarder.shutdown(Duration::from_secs(10)).await;
    assert_eq!(stats.sent_events, 3, "{stats:?}");
    assert_eq!(stats.sent_calls, 2);
    assert_eq!(accepted_event_ids(&fake).len(), 3);

    assert!(!forwarder.offer(pageview("u1", "s1", 3)));
    let stats = forwarder.shutdown(Duration::from_secs(1)).await;
    assert_eq!(stats.dropped_closed, 1);
    assert_accounted(&stats);
}

#[tokio::test]
async fn a_shutdown_budget_that_runs_out_counts_the_unsent_events_as_failed() {
    let fake = start_fake().await;
    fake.set_default_mode(FakeMode::Slow(Duration::from_secs(30)));
    let forwarder = start_forwarder(
        &fake,
        ForwarderConfig {
            call_timeout: Duration::from_secs(60),
            ..quick_config()
        },
    );
    for n in 0..3 {
        assert!(forwarder.offer(pageview("u1", "s1", n)));
    }
    eventually("the call is under way", Duration::from_secs(5), || {
        fake.request_count() == 1
    })
    .await;
    assert!(forwarder.offer(pageview("u2", "s1", 0)));

    let stats = forwarder.shutdown(Duration::from_millis(300)).await;
    assert_eq!(stats.sent_events, 0, "{stats:?}");
    assert_eq!(
        stats.failed_events, 4,
        "the call under way and the queued event"
    );
    assert_accounted(&stats);
}

#[tokio::test]
async fn calls_to_one_tracker_are_paced() {
    let fake = start_fake().await;
    // 20 calls a second with a burst of 2: 8 calls take at least (8 - 2) / 20 s.
    let forwarder = start_forwarder(
        &fake,
        ForwarderConfig {
            requests_per_second: 20.0,
            linger: Duration::from_millis(10),
            ..quick_config()
        },
    );
    let started = Instant::now();
    for session in 0..8 {
        assert!(forwarder.offer(pageview("u1", &format!("s{session}"), 0)));
    }
    eventually("8 calls arrived", Duration::from_secs(10), || {
        fake.accepted_put_events().len() == 8
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "8 calls in {:?}",
        started.elapsed()
    );
    let stats = forwarder.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.sent_calls, 8);
}

#[tokio::test]
async fn the_fake_refuses_what_personalize_refuses_in_the_sdks_error_shapes() {
    use aws_sdk_personalizeevents::operation::put_events::PutEventsError;
    use aws_sdk_personalizeevents::primitives::DateTime;
    use aws_sdk_personalizeevents::types::Event;
    use aws_sdk_personalizeruntime::operation::get_recommendations::GetRecommendationsError;

    let fake = start_fake().await;
    let events = fake.events_client();
    let event = |n: i64, properties: &str| {
        Event::builder()
            .event_id(format!("e{n}"))
            .event_type("pageview")
            .item_id("a1")
            .sent_at(DateTime::from_millis(1_700_000_000_000 + n))
            .properties(properties)
            .build()
            .unwrap_or_else(|e| panic!("the event builds: {e}"))
    };
    let put = |list: Vec<Event>, user: Option<&str>| {
        events
            .put_events()
            .tracking_id(TRACKER)
            .session_id("s1")
            .set_user_id(user.map(str::to_string))
            .set_event_list(Some(list))
            .send()
    };

    let eleven = (0..11).map(|n| event(n, r#"{"dwellMs":1}"#)).collect();
    let refused = put(eleven, Some("u1")).await;
    let error = refused
        .err()
        .unwrap_or_else(|| panic!("11 events are refused"));
    assert!(
        matches!(
            error.as_service_error(),
            Some(PutEventsError::InvalidInputException(_))
        ),
        "{error:?}"
    );
    assert_eq!(error.raw_response().map(|r| r.status().as_u16()), Some(400));

    let not_json = put(vec![event(1, "dwellMs=1")], Some("u1")).await;
    assert!(not_json.is_err(), "properties must be a JSON object");
    let anonymous = put(vec![event(2, r#"{"dwellMs":1}"#)], None).await;
    assert!(anonymous.is_ok(), "userId is optional: {anonymous:?}");

    fake.push_modes([FakeMode::Throttle; 3]);
    let throttled = put(vec![event(3, r#"{"dwellMs":1}"#)], Some("u1")).await;
    let error = throttled
        .err()
        .unwrap_or_else(|| panic!("throttled three times (the SDK's attempts)"));
    assert_eq!(error.code(), Some("ThrottlingException"));
    assert_eq!(error.message(), Some("Rate exceeded"));

    let runtime = fake.runtime_client();
    let invalid_requests = [
        runtime
            .get_recommendations()
            .campaign_arn(CAMPAIGN)
            .user_id("u1")
            .num_results(501),
        runtime
            .get_recommendations()
            .campaign_arn(CAMPAIGN)
            .recommender_arn(RECOMMENDER)
            .user_id("u1"),
        runtime.get_recommendations().campaign_arn(CAMPAIGN),
        runtime.get_recommendations().user_id("u1"),
    ];
    for request in invalid_requests {
        let error = request
            .send()
            .await
            .err()
            .unwrap_or_else(|| panic!("an invalid GetRecommendations is refused"));
        assert!(
            matches!(
                error.as_service_error(),
                Some(GetRecommendationsError::InvalidInputException(_))
            ),
            "{error:?}"
        );
    }
    fake.push_modes([FakeMode::NotFound]);
    let missing = runtime
        .get_recommendations()
        .campaign_arn(CAMPAIGN)
        .user_id("u1")
        .send()
        .await;
    assert!(
        matches!(
            missing.as_ref().err().and_then(|e| e.as_service_error()),
            Some(GetRecommendationsError::ResourceNotFoundException(_))
        ),
        "{missing:?}"
    );
}
