//! `pageflow collect` against moto: a mixed batch is answered with the accepted count and each
//! rejected event's index and reason, and exactly the accepted events are in their portals'
//! streams, in the request's order, keyed by `user_id`.

use std::process::Command;
use std::time::Duration;

use aws_sdk_kinesis::config::retry::RetryConfig;
use pageflow_tests::aws::{MotoServer, aws_env, http_request};
use pageflow_tests::clients::{kinesis_client, read_stream};
use pageflow_tests::fault_proxy::{Fault, FaultPlan, FaultProxy, KINESIS_PUT_RECORDS};
use pageflow_tests::job_process::{JobProcess, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

type TestResult = Result<(), Box<dyn std::error::Error>>;

pub(crate) fn pageview(id: &str, portal: &str, user: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","portal":"{portal}","user_id":"{user}","article_id":"a-{id}","ts":1700000000000,"dwell_ms":1500,"scroll_pct":60,"clicks":2}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_puts_exactly_the_accepted_events_in_order_keyed_by_user() -> TestResult {
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    create_streams(&kinesis).await?;
    let (_dir, collector, port) = start_collector(&moto.endpoint)?;
    let ready = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        http_request(port, "GET", "/readyz", &[], b"")
            .ok()
            .filter(|response| response.status == 200)
    });
    assert!(
        ready.is_some(),
        "ready once the streams are found:\n{}",
        collector.stderr()
    );

    // A JSON array as fetch() sends it: valid events of two portals, interleaved with bad ones.
    let events = [
        pageview("e-0", "g1", "u-1"),
        pageview("e-1", "g1", "u-2"),
        r#"{"event_id":"e-2","portal":"g1","article_id":"a","ts":1}"#.to_string(),
        pageview("e-3", "gshow", "u-1"),
        "{\"event_id\": NaN}".to_string(),
        pageview("e-5", "ge", "u-3"),
        pageview("e-6", "g1", "u-1"),
        pageview("e-7", "g1", "u-2"),
    ];
    let body = format!("[{}]", events.join(",\n "));
    let response = http_request(
        port,
        "POST",
        "/v1/collect",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )?;
    assert_eq!(response.status, 200, "{}", response.text());
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["accepted"], 5, "{answer}");
    let rejected: Vec<(u64, String)> = answer["rejected"]
        .as_array()
        .ok_or("rejected is a list")?
        .iter()
        .map(|r| {
            assert!(r["detail"].as_str().is_some_and(|d| !d.is_empty()), "{r}");
            (
                r["index"].as_u64().unwrap_or(u64::MAX),
                r["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            (2, "missing_field".to_string()),
            (3, "unknown_portal".to_string()),
            (4, "invalid_json".to_string()),
        ]
    );

    // newline-delimited JSON as sendBeacon sends it (text/plain), appended after the array's.
    let beacon = format!(
        "{}\n{}\n",
        pageview("e-8", "g1", "u-3"),
        pageview("e-9", "g1", "u-1")
    );
    let response = http_request(
        port,
        "POST",
        "/v1/collect",
        &[("Content-Type", "text/plain;charset=UTF-8")],
        beacon.as_bytes(),
    )?;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&response.body)?,
        serde_json::json!({"accepted": 2, "rejected": []})
    );

    // Nothing valid: 400 with every reason, nothing written.
    let response = http_request(port, "POST", "/v1/collect", &[], b"[{\"x\":1}, 7]")?;
    assert_eq!(response.status, 400, "{}", response.text());
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["error"]["code"], "no_valid_events");
    assert_eq!(answer["rejected"][1]["reason"], "not_object");

    let read = |stream: &'static str| {
        let kinesis = kinesis.clone();
        async move {
            read_stream(&kinesis, stream).await.map(|records| {
                records
                    .into_iter()
                    .map(|r| {
                        (
                            r.partition_key,
                            String::from_utf8_lossy(&r.data).to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        }
    };
    let g1 = read("pageviews-g1").await?;
    let expected_g1: Vec<(String, String)> = [
        ("e-0", "u-1"),
        ("e-1", "u-2"),
        ("e-6", "u-1"),
        ("e-7", "u-2"),
        ("e-8", "u-3"),
        ("e-9", "u-1"),
    ]
    .iter()
    .map(|(id, user)| (user.to_string(), pageview(id, "g1", user)))
    .collect();
    assert_eq!(g1, expected_g1, "exactly the accepted g1 events, in order");
    let ge = read("pageviews-ge").await?;
    assert_eq!(ge, vec![("u-3".to_string(), pageview("e-5", "ge", "u-3"))]);

    let metrics = http_request(port, "GET", "/metrics", &[], b"")?.text();
    for line in [
        "pageflow_collect_events_accepted_total 7",
        "pageflow_collect_events_written_total{path=\"kinesis\"} 7",
        "pageflow_collect_events_rejected_total{reason=\"unknown_portal\"} 1",
        "pageflow_collect_events_rejected_total{reason=\"not_object\"} 1",
        "pageflow_collect_requests_total{status=\"400\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    Ok(())
}

/// Starts `pageflow collect` for portals g1 and ge (streams `pageviews-<portal>`) with the AWS APIs
/// at `endpoint`; returns its directory (kept while it runs), the process and its port.
fn start_collector(
    endpoint: &str,
) -> Result<(tempfile::TempDir, JobProcess, u16), Box<dyn std::error::Error>> {
    start_collector_with(endpoint, &[])
}

/// [`start_collector`] with `PAGEFLOW__…` overrides in its environment.
fn start_collector_with(
    endpoint: &str,
    overrides: &[(&str, &str)],
) -> Result<(tempfile::TempDir, JobProcess, u16), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("collect.toml");
    std::fs::write(
        &config,
        format!(
            "[collect]\nlisten = \"127.0.0.1:0\"\nspool_dir = \"{}\"\n\n\
             [[collect.portals]]\nportal = \"g1\"\nstream = \"pageviews-g1\"\norigins = [\"https://g1.example.com\"]\n\n\
             [[collect.portals]]\nportal = \"ge\"\nstream = \"pageviews-ge\"\norigins = [\"https://ge.example.com\"]\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n",
            dir.path().join("spool").display(),
        ),
    )?;
    let mut collector = JobProcess::spawn(
        Command::new(BIN)
            .args(["collect", "--config"])
            .arg(&config)
            .envs(aws_env(endpoint))
            .envs(overrides.iter().copied()),
    )?;
    let address = collector.http_address(Duration::from_secs(30))?;
    let port: u16 = address.rsplit(':').next().ok_or("no port")?.parse()?;
    Ok((dir, collector, port))
}

pub(crate) async fn create_streams(kinesis: &aws_sdk_kinesis::Client) -> TestResult {
    for stream in ["pageviews-g1", "pageviews-ge"] {
        kinesis
            .create_stream()
            .stream_name(stream)
            .shard_count(1)
            .send()
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_kinesis_fails_are_sent_again_until_every_event_is_in_the_stream() -> TestResult {
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    create_streams(&kinesis).await?;
    // The first PutRecords loses some entries, the re-send of those is throttled as a whole, the
    // next one goes through.
    let proxy = FaultProxy::start(
        &moto.endpoint,
        FaultPlan::new(7).starting_with(KINESIS_PUT_RECORDS, &[Fault::Partial, Fault::Throttle]),
    )?;
    let (_dir, _collector, port) = start_collector(&proxy.endpoint())?;
    let ids: Vec<String> = (0..40).map(|i| format!("e-{i}")).collect();
    let body = ids
        .iter()
        .enumerate()
        .map(|(i, id)| pageview(id, "g1", &format!("u-{}", i % 7)))
        .collect::<Vec<_>>()
        .join("\n");
    let response = http_request(port, "POST", "/v1/collect", &[], body.as_bytes())?;
    assert_eq!(response.status, 200, "{}", response.text());
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["accepted"], 40);

    let stats = proxy.stats().operation(KINESIS_PUT_RECORDS);
    assert_eq!(stats.partial_calls, 1, "{stats:?}");
    assert_eq!(stats.throttled, 1, "{stats:?}");
    assert_eq!(
        stats.forwarded_entries, 40,
        "only the failed entries were sent again: {stats:?}"
    );
    let mut stored: Vec<String> = read_stream(&kinesis, "pageviews-g1")
        .await?
        .into_iter()
        .map(|r| {
            let event: serde_json::Value = serde_json::from_slice(&r.data).unwrap_or_default();
            assert_eq!(event["user_id"].as_str(), Some(r.partition_key.as_str()));
            event["event_id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    stored.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(stored, expected, "every event exactly once");
    Ok(())
}

#[test]
fn oversized_and_overfull_requests_are_413_with_an_error_code() -> TestResult {
    // No AWS needed (nothing listens there): the limits are checked before anything is written.
    let (_dir, _collector, port) = start_collector("http://127.0.0.1:9")?;

    let big = vec![b' '; 1024 * 1024 + 1];
    let response = http_request(port, "POST", "/v1/collect", &[], &big)?;
    assert_eq!(response.status, 413);
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["error"]["code"], "body_too_large");

    let many = vec![pageview("e", "g1", "u"); 501].join("\n");
    let response = http_request(port, "POST", "/v1/collect", &[], many.as_bytes())?;
    assert_eq!(response.status, 413);
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["error"]["code"], "too_many_events");

    let response = http_request(port, "GET", "/healthz", &[], b"")?;
    assert_eq!(response.status, 200);
    Ok(())
}

fn header<'a>(response: &'a pageflow_tests::aws::HttpResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn pages_may_send_only_their_own_portals_events() -> TestResult {
    // No AWS needed (nothing listens there): nothing here is written.
    let (_dir, _collector, port) = start_collector("http://127.0.0.1:9")?;
    let g1_page = ("Origin", "https://g1.example.com");

    let response = http_request(
        port,
        "OPTIONS",
        "/v1/collect",
        &[
            g1_page,
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    )?;
    assert_eq!(response.status, 204, "{}", response.text());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some("https://g1.example.com")
    );
    assert_eq!(
        header(&response, "access-control-allow-methods"),
        Some("POST")
    );

    let evil = ("Origin", "https://evil.example.com");
    let response = http_request(port, "OPTIONS", "/v1/collect", &[evil], b"")?;
    assert_eq!(response.status, 403);
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    let body = pageview("e-1", "g1", "u-1");
    let response = http_request(port, "POST", "/v1/collect", &[evil], body.as_bytes())?;
    assert_eq!(response.status, 403);
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["error"]["code"], "origin_not_allowed");

    // A g1 page sending a ge event: rejected for its origin, and the page may read why.
    let body = pageview("e-2", "ge", "u-1");
    let response = http_request(port, "POST", "/v1/collect", &[g1_page], body.as_bytes())?;
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some("https://g1.example.com")
    );
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["rejected"][0]["reason"], "origin_not_allowed");
    Ok(())
}

#[test]
fn a_client_over_its_rate_limit_is_answered_429() -> TestResult {
    // Set through the environment, as a deployment would; nothing here is written.
    let (_dir, _collector, port) = start_collector_with(
        "http://127.0.0.1:9",
        &[
            ("PAGEFLOW__COLLECT__RATE_LIMIT__ENABLED", "true"),
            ("PAGEFLOW__COLLECT__RATE_LIMIT__PER_SECOND", "0.01"),
            ("PAGEFLOW__COLLECT__RATE_LIMIT__BURST", "2"),
        ],
    )?;
    for _ in 0..2 {
        let response = http_request(port, "POST", "/v1/collect", &[], b"[7]")?;
        assert_eq!(response.status, 400, "{}", response.text());
    }
    let response = http_request(port, "POST", "/v1/collect", &[], b"[7]")?;
    assert_eq!(response.status, 429, "{}", response.text());
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["error"]["code"], "rate_limited");
    let wait: u64 = header(&response, "retry-after")
        .ok_or("Retry-After")?
        .parse()?;
    assert!(wait >= 1, "{wait}");
    // Health checks are never limited.
    assert_eq!(http_request(port, "GET", "/healthz", &[], b"")?.status, 200);
    Ok(())
}
