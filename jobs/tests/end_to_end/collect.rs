//! `pageflow collect` against moto: a mixed batch is answered with the accepted count and each
//! rejected event's index and reason, and exactly the accepted events are in their portals'
//! streams, in the request's order, keyed by `user_id`.

use std::process::Command;
use std::time::Duration;

use aws_sdk_kinesis::config::retry::RetryConfig;
use pageflow_tests::aws::{MotoServer, aws_env, http_request};
use pageflow_tests::clients::{kinesis_client, read_stream};
use pageflow_tests::job_process::{JobProcess, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn pageview(id: &str, portal: &str, user: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","portal":"{portal}","user_id":"{user}","article_id":"a-{id}","ts":1700000000000,"dwell_ms":1500,"scroll_pct":60,"clicks":2}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_puts_exactly_the_accepted_events_in_order_keyed_by_user() -> TestResult {
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    for stream in ["pageviews-g1", "pageviews-ge"] {
        kinesis
            .create_stream()
            .stream_name(stream)
            .shard_count(1)
            .send()
            .await?;
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("collect.toml");
    std::fs::write(
        &config,
        format!(
            "[collect]\nlisten = \"127.0.0.1:0\"\nspool_dir = \"{}\"\n\n\
             [[collect.portals]]\nportal = \"g1\"\nstream = \"pageviews-g1\"\norigins = [\"https://g1.example.com\"]\n\n\
             [[collect.portals]]\nportal = \"ge\"\nstream = \"pageviews-ge\"\norigins = [\"https://ge.example.com\"]\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            dir.path().join("spool").display(),
            moto.endpoint
        ),
    )?;
    let mut collector = JobProcess::spawn(
        Command::new(BIN)
            .args(["collect", "--config"])
            .arg(&config)
            .envs(aws_env(&moto.endpoint)),
    )?;
    let address = collector.http_address(Duration::from_secs(30))?;
    let port: u16 = address.rsplit(':').next().ok_or("no port")?.parse()?;
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

#[test]
fn oversized_and_overfull_requests_are_413_with_an_error_code() -> TestResult {
    // No AWS needed: the limits are checked before anything is written.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("collect.toml");
    std::fs::write(
        &config,
        "[collect]\nlisten = \"127.0.0.1:0\"\n\n[[collect.portals]]\nportal = \"g1\"\nstream = \"pageviews-g1\"\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\n",
    )?;
    let mut collector = JobProcess::spawn(
        Command::new(BIN)
            .args(["collect", "--config"])
            .arg(&config)
            .envs(aws_env("http://127.0.0.1:9")),
    )?;
    let address = collector.http_address(Duration::from_secs(30))?;
    let port: u16 = address.rsplit(':').next().ok_or("no port")?.parse()?;

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
