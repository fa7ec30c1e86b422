//! The dashboard's data sources against a real `pageflow run`: the change stream pushes new
//! rankings over a real socket as they change (not buffered), `/v1/status` reports the running
//! job, and `/` is the dashboard. (The page itself is driven in headless Chromium by
//! `scripts/browser-test.sh`.)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use pageflow_tests::http_get;
use pageflow_tests::job_process::{FAST_WINDOWS, JobProcess, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

/// How long the job may take to start serving.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Starts `pageflow run` on synthetic traffic with one-second windows; returns it and its address.
fn start_job(dir: &std::path::Path) -> (JobProcess, String) {
    let mut job = JobProcess::spawn(
        Command::new(BIN)
            .arg("run")
            .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
            .env("PAGEFLOW__SINKS__DIR", dir.to_string_lossy().to_string())
            .env("PAGEFLOW__CHECKPOINT__ENABLED", "false")
            .env("PAGEFLOW__SOURCE__EVENTS_PER_SECOND", "3000")
            .envs(FAST_WINDOWS.iter().copied())
            .env("RUST_LOG", "warn"),
    )
    .unwrap();
    let addr = job.http_address(START_LIMIT).unwrap();
    (job, addr)
}

/// The `id:` of the next `event: ranking` frame on an open event stream (chunk-size lines of the
/// chunked encoding are skipped: every frame is one chunk).
fn next_ranking_id(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> String {
    let mut in_ranking = false;
    for line in lines {
        let line = line.unwrap_or_else(|e| panic!("reading the event stream: {e}"));
        if line == "event: ranking" {
            in_ranking = true;
        } else if let Some(id) = line.strip_prefix("id: ")
            && in_ranking
        {
            return id.to_string();
        } else if line.is_empty() {
            in_ranking = false;
        }
    }
    panic!("the event stream ended");
}

#[test]
fn the_job_streams_changing_rankings_and_reports_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let (job, addr) = start_job(dir.path());
    poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let (status, _) = http_get(&addr, "/readyz")?;
        (status == 200).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for /readyz to answer 200:\n{}",
            job.stderr()
        )
    });

    // The stream: headers, then rankings with ids that change as the ranking changes.
    let mut socket = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        socket,
        "GET /v1/portals/g1/popular/stream?n=5 HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(socket).lines();
    let status_line = lines.next().unwrap_or_else(|| panic!("no answer")).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    let headers: Vec<String> = lines
        .by_ref()
        .map_while(|line| line.ok().filter(|line| !line.is_empty()))
        .collect();
    assert!(
        headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("content-type: text/event-stream")),
        "{headers:?}"
    );
    let first = next_ranking_id(&mut lines);
    let second = next_ranking_id(&mut lines);
    assert_ne!(first, second, "a new event means a changed ranking");
    let parts: Vec<&str> = second.split('-').collect();
    assert!(
        parts.len() == 3 && ["f", "p"].contains(&parts[1]) && parts[2].len() == 16,
        "<window_end>-<f|p>-<hash>: {second}"
    );

    // The status of the running job.
    let status: serde_json::Value =
        poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            let (code, body) = http_get(&addr, "/v1/status")?;
            let value: serde_json::Value = serde_json::from_str(&body).ok()?;
            // Rankings were streamed above: their event-to-ranking latency is being recorded.
            let ranked = value["latency"]["event_to_ranking"]["count"].as_u64()? > 0;
            (code == 200 && value["events"]["in_total"].as_u64()? > 0 && ranked).then_some(value)
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out waiting for /v1/status to count events:\n{}",
                job.stderr()
            )
        });
    assert_eq!(status["ready"], true, "{status}");
    assert!(status["watermark"]["ms"].is_u64(), "{status}");
    assert!(status["uptime_s"].as_f64().is_some_and(|s| s > 0.0));
    assert_eq!(status["lag_ms"], serde_json::Value::Null, "not Kinesis");
    assert_eq!(status["portals"], serde_json::json!(["g1", "ge", "gshow"]));
    let probes = &status["latency"]["http"]["open"];
    assert!(
        probes["count"].as_u64() >= Some(1),
        "/readyz was timed: {status}"
    );
    assert!(probes["p99_s"].as_f64().is_some(), "{status}");
    assert!(
        status["latency"]["event_to_ranking"]["p50_s"].is_f64(),
        "{status}"
    );

    // The dashboard, with the hooks the browser test uses.
    let (code, page) = http_get(&addr, "/").unwrap_or_else(|| panic!("no answer for /"));
    assert_eq!(code, 200);
    for hook in [
        "popular/stream?n=",
        "/v1/status",
        "data-testid=\"popular-list\"",
        "data-testid=\"trending-list\"",
        "data-testid=\"related-input\"",
        "data-testid=\"health-events-per-second\"",
    ] {
        assert!(page.contains(hook), "the dashboard lacks {hook}");
    }
    drop(job);
}
