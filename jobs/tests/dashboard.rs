//! The dashboard's data sources against a real `pageflow run`: the change stream pushes new
//! rankings over a real socket as they change (not buffered), `/v1/status` reports the running
//! job, and `/` is the dashboard. (The page itself is driven in headless Chromium by
//! `scripts/browser-test.sh`.)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pageflow_tests::http_get;

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

/// Kills the job when the test ends, however it ends.
struct Job(Child);

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `pageflow run` on synthetic traffic with one-second windows; returns it and its address.
fn start_job(dir: &std::path::Path) -> (Job, String) {
    let mut child = Command::new(BIN)
        .arg("run")
        .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
        .env("PAGEFLOW__SINKS__DIR", dir.to_string_lossy().to_string())
        .env("PAGEFLOW__CHECKPOINT__ENABLED", "false")
        .env("PAGEFLOW__SOURCE__EVENTS_PER_SECOND", "3000")
        .env("PAGEFLOW__SEMANTICS__SLIDE", "\"1s\"")
        .env("PAGEFLOW__SEMANTICS__TRENDING_WINDOW", "\"20s\"")
        .env("PAGEFLOW__SEMANTICS__TRENDING_RECENT", "\"5s\"")
        .env("PAGEFLOW__SEMANTICS__MAX_OUT_OF_ORDERNESS", "\"1s\"")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let stderr = child
        .stderr
        .take()
        .unwrap_or_else(|| panic!("stderr is piped"));
    let job = Job(child);
    // Reading stops at the job's end (EOF), so this loop is bounded by the job itself.
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_else(|e| panic!("reading the job's stderr: {e}"));
        if let Some(start) = line.find("http://") {
            let addr = line[start + "http://".len()..]
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            return (job, addr);
        }
    }
    panic!("the job ended without saying where it listens");
}

/// Polls `probe` until it returns `Some`, or fails the test after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (job, addr) = start_job(dir.path());
    wait_for("/readyz to answer 200", Duration::from_secs(30), || {
        let (status, _) = http_get(&addr, "/readyz")?;
        (status == 200).then_some(())
    });

    // The stream: headers, then rankings with ids that change as the ranking changes.
    let mut socket = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{e}"));
    write!(
        socket,
        "GET /v1/portals/g1/popular/stream?n=5 HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = BufReader::new(socket).lines();
    let status_line = lines
        .next()
        .unwrap_or_else(|| panic!("no answer"))
        .unwrap_or_else(|e| panic!("{e}"));
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
    let status: serde_json::Value = wait_for(
        "/v1/status to count events",
        Duration::from_secs(30),
        || {
            let (code, body) = http_get(&addr, "/v1/status")?;
            let value: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200 && value["events"]["in_total"].as_u64()? > 0).then_some(value)
        },
    );
    assert_eq!(status["ready"], true, "{status}");
    assert!(status["watermark"]["ms"].is_u64(), "{status}");
    assert!(status["uptime_s"].as_f64().is_some_and(|s| s > 0.0));
    assert_eq!(status["lag_ms"], serde_json::Value::Null, "not Kinesis");
    assert_eq!(status["portals"], serde_json::json!(["g1", "ge", "gshow"]));

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
