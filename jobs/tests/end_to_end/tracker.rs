//! The browser tracker (`GET /tracker.js`) in headless Chromium, on the test page that
//! `pageflow collect` serves, against moto:
//! - what the browser measured arrives in the portal's stream: one view per page view with its
//!   dwell (the visible time only), scroll depth and clicks, one user id across pages, and a view
//!   left while offline delivered exactly once when the browser is online again, nothing from a
//!   page whose consent was not given or was withdrawn;
//! - end to end: the tracker → `collect` → Kinesis → `pageflow run` (AWS source) → the viewed
//!   article in the final popular ranking over HTTP (a later pixel view closes its window).
//!
//! The browser side is `tests/browser/tracker.test.mjs` (node, playwright-core, Debian's
//! chromium), installed by `scripts/browser-install.sh`; without them these tests fail saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aws_sdk_kinesis::config::retry::RetryConfig;
use pageflow_tests::aws::{MotoServer, aws_env, http_request};
use pageflow_tests::clients::{kinesis_client, read_stream};
use pageflow_tests::job_process::{JobProcess, poll_until};

use crate::support::BIN;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The browser the script drives (as `scripts/browser-install.sh` installs it).
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The browser to use, or why the test cannot run and which script installs what is missing.
fn browser() -> Result<String, String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.to_string());
    let install =
        "run `bash scripts/browser-install.sh` (scripts/test.sh does before `cargo test`)";
    if !Path::new(&chromium).exists() {
        return Err(format!("the browser {chromium} is missing: {install}"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err(format!("node is not installed: {install}"));
    }
    let playwright =
        workspace_root().join("tests/browser/node_modules/playwright-core/package.json");
    if !playwright.exists() {
        return Err(format!(
            "playwright-core is not installed in tests/browser: {install}"
        ));
    }
    Ok(chromium)
}

/// Runs `tests/browser/tracker.test.mjs` with `env`; the JSON object it prints last.
fn run_browser(
    collector_url: &str,
    env: &[(&str, &str)],
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let chromium = browser()?;
    let root = workspace_root();
    let output = Command::new("node")
        .arg(root.join("tests/browser/tracker.test.mjs"))
        .current_dir(&root)
        .env("COLLECTOR_URL", collector_url)
        .env("CHROMIUM", chromium)
        .envs(env.iter().copied())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("the browser test failed:\n{stdout}\n{stderr}").into());
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| {
        format!("the browser test printed no result ({e}):\n{stdout}\n{stderr}").into()
    })
}

/// A port free on loopback now, so that the collector's own page origin can be configured.
fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `pageflow collect` for g1 (stream `pageviews-g1`) on `port`, whose test page's origin
/// (`http://127.0.0.1:PORT`) may send g1's events.
fn start_collector(
    endpoint: &str,
    dir: &Path,
    port: u16,
) -> Result<JobProcess, Box<dyn std::error::Error>> {
    let config = dir.join("collect.toml");
    std::fs::write(
        &config,
        format!(
            "[collect]\nlisten = \"127.0.0.1:{port}\"\nspool_dir = \"{}\"\n\n\
             [[collect.portals]]\nportal = \"g1\"\nstream = \"pageviews-g1\"\norigins = [\"http://127.0.0.1:{port}\"]\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n",
            dir.join("spool").display(),
        ),
    )?;
    let mut collector = JobProcess::spawn(
        Command::new(BIN)
            .args(["collect", "--config"])
            .arg(&config)
            .envs(aws_env(endpoint)),
    )?;
    collector.http_address(Duration::from_secs(30))?;
    Ok(collector)
}

async fn create_stream(kinesis: &aws_sdk_kinesis::Client) -> TestResult {
    kinesis
        .create_stream()
        .stream_name("pageviews-g1")
        .shard_count(1)
        .send()
        .await?;
    Ok(())
}

/// The events of `pageviews-g1`, by `event_id`, each with how many times it is there.
async fn events_by_id(
    kinesis: &aws_sdk_kinesis::Client,
) -> Result<BTreeMap<String, (serde_json::Value, usize)>, Box<dyn std::error::Error>> {
    let mut events: BTreeMap<String, (serde_json::Value, usize)> = BTreeMap::new();
    for record in read_stream(kinesis, "pageviews-g1").await? {
        let event: serde_json::Value = serde_json::from_slice(&record.data)?;
        assert_eq!(
            event["user_id"].as_str(),
            Some(record.partition_key.as_str()),
            "keyed by user"
        );
        let id = event["event_id"].as_str().unwrap_or_default().to_string();
        events.entry(id).or_insert((event, 0)).1 += 1;
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_delivers_each_view_once_with_what_the_browser_measured() -> TestResult {
    browser()?;
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    create_stream(&kinesis).await?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let collector = start_collector(&moto.endpoint, dir.path(), port)?;
    let url = format!("http://127.0.0.1:{port}");

    let result = tokio::task::spawn_blocking(move || {
        run_browser(&url, &[("SCENARIO", "measure")]).map_err(|e| e.to_string())
    })
    .await??;
    let events = events_by_id(&kinesis).await?;
    let id = |view: &str| {
        result[view]["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let views = [
        "first",
        "second",
        "offline_left",
        "offline_sender",
        "consented",
    ];
    assert_eq!(result["accepted"], views.len(), "{result}");
    let expected: Vec<String> = views.iter().map(|view| id(view)).collect();
    assert_eq!(
        events.keys().cloned().collect::<Vec<_>>(),
        {
            let mut sorted = expected.clone();
            sorted.sort();
            sorted
        },
        "one event per page view, nothing else: {result}\n{}",
        collector.stderr()
    );
    for view in views {
        let (event, copies) = &events[&id(view)];
        assert_eq!(*copies, 1, "{view} delivered exactly once: {event}");
        assert_eq!(event["article_id"], result[view]["article"], "{event}");
        assert_eq!(event["portal"], "g1");
        assert_eq!(
            event["user_id"], result["user_id"],
            "one reader on every page: {event}"
        );
        assert!(
            event["url"]
                .as_str()
                .is_some_and(|url| url.contains("/tracker/test.html?portal=g1")),
            "{event}"
        );
        assert!(
            event["ts"]
                .as_u64()
                .is_some_and(|ts| ts > 1_700_000_000_000)
        );
    }

    // The measured page: 3 button clicks and the link, scrolled to 75 %, the dwell its visible time.
    let (first, _) = &events[&id("first")];
    assert_eq!(first["clicks"], 4, "{first}");
    let scroll = first["scroll_pct"].as_u64().unwrap_or_default();
    assert!((74..=76).contains(&scroll), "scrolled to 75 %: {first}");
    let dwell = first["dwell_ms"].as_i64().unwrap_or_default();
    let visible = result["first"]["visible_ms"].as_i64().unwrap_or_default();
    let hidden = result["first"]["hidden_ms"].as_i64().unwrap_or_default();
    assert!(hidden >= 2000, "{result}");
    assert!(
        (dwell - visible).abs() <= 300,
        "dwell {dwell} ms is the visible time {visible} ms (hidden {hidden} ms not counted)"
    );
    let (second, _) = &events[&id("second")];
    assert_eq!(second["referrer"], first["url"], "{second}");
    assert_eq!(second["clicks"], 0, "{second}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_article_viewed_in_the_browser_appears_in_the_jobs_popular_ranking() -> TestResult {
    browser()?;
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    create_stream(&kinesis).await?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let _collector = start_collector(&moto.endpoint, dir.path(), port)?;

    // The job reads the portal's stream from its start and serves its rankings.
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"kinesis\"\n\n[source.kinesis]\nstart_position = \"trim_horizon\"\ndiscovery_interval = \"2s\"\n\n\
             [[source.kinesis.streams]]\nportal = \"g1\"\nstream = \"pageviews-g1\"\n\n\
             [sinks]\nkind = \"local\"\ndir = \"{}\"\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n\
             [serve]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nworkers = 1\n",
            dir.path().join("out").display(),
            moto.endpoint,
        ),
    )?;
    let mut job = JobProcess::spawn(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .envs(aws_env(&moto.endpoint))
            .env("RUST_LOG", "warn"),
    )?;
    let address = job.http_address(Duration::from_secs(60))?;
    let job_port: u16 = address.rsplit(':').next().ok_or("no port")?.parse()?;

    let url = format!("http://127.0.0.1:{port}");
    let result = tokio::task::spawn_blocking(move || {
        run_browser(
            &url,
            &[("SCENARIO", "visit"), ("ARTICLE", "tracker-e2e-article")],
        )
        .map_err(|e| e.to_string())
    })
    .await??;
    assert_eq!(result["visit"]["article"], "tracker-e2e-article");

    // A page without JavaScript (the pixel) views another article 70 s later: the job's watermark
    // passes the end of the one-minute slide that holds the browser's view, so that window is final.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        + 70_000;
    let pixel = http_request(
        port,
        "GET",
        &format!(
            "/v1/pixel.gif?portal=g1&user_id=pixel-reader&article_id=pixel%2Farticle&ts={later}&_=1"
        ),
        &[],
        b"",
    )?;
    assert_eq!(pixel.status, 200, "{}", pixel.text());
    assert!(pixel.body.starts_with(b"GIF89a"));
    assert!(
        pixel
            .headers
            .iter()
            .any(|(name, value)| name.eq_ignore_ascii_case("cache-control") && value == "no-store"),
        "{:?}",
        pixel.headers
    );

    let mut last_answer = String::new();
    let ranked = poll_until(Duration::from_secs(60), Duration::from_millis(250), || {
        let response = http_request(
            job_port,
            "GET",
            "/v1/portals/g1/popular?n=10&final=true",
            &[],
            b"",
        )
        .ok()?;
        last_answer = response.text();
        let answer: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
        answer["items"]
            .as_array()?
            .iter()
            .find(|item| item["article_id"] == "tracker-e2e-article")
            .cloned()
    });
    let item = ranked.ok_or_else(|| {
        format!(
            "the viewed article never appeared in /v1/portals/g1/popular (last answer: {last_answer}):\n{}\nstatus: {}",
            job.stderr(),
            http_request(job_port, "GET", "/v1/status", &[], b"")
                .map(|r| r.text())
                .unwrap_or_default()
        )
    })?;
    assert_eq!(item["views"], 1, "{item}");
    Ok(())
}
