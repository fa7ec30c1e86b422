//! `pageflow bench --serve`: the serving layer under load, on loopback, while the job ingests.
//!
//! Starts `pageflow run` (this same binary) on the embedded synthetic source, with Personalize
//! configured for `g1` at an endpoint that accepts connections and never answers (Personalize
//! "down": calls run into the time budget until the circuit breaker opens), waits for rankings and
//! related lists, then drives HTTP load with `wrk` (Debian's `wrk` package: `apt-get install wrk`)
//! and prints requests per second and latency percentiles as figures, never asserting them:
//!
//! - `popular+trending`: the rankings of every portal, in turn;
//! - `related`: related lists of articles from the popular rankings;
//! - `recommendations, Personalize down`: readers' recommendations on the fallback path, first
//!   while the breaker is still closed (calls wait out the 150 ms budget), then once it is open.
//!
//! The load generator runs on the same two cores as the job, so the figures are a floor.

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::bench::Figure;

/// Settings of one load run.
#[derive(Clone, Copy, Debug)]
pub struct LoadSettings {
    /// Seconds of load per scenario.
    pub seconds: u64,
    /// Open connections.
    pub connections: u32,
    /// wrk threads.
    pub threads: u32,
    /// Synthetic events per second the job ingests meanwhile.
    pub events_per_second: u64,
}

impl Default for LoadSettings {
    fn default() -> Self {
        LoadSettings {
            seconds: 10,
            connections: 32,
            threads: 1,
            events_per_second: 20_000,
        }
    }
}

/// The job under load; killed when dropped.
struct Job(Child);

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs every scenario and returns the figures.
pub fn run(settings: LoadSettings) -> Result<Vec<Figure>> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!(
            "the serving benchmark drives load with wrk, which is not installed: apt-get install wrk"
        );
    }
    let work = tempfile_dir()?;
    // Personalize "down": connections are accepted and never answered.
    let blackhole = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    let blackhole_addr = blackhole.local_addr()?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in blackhole.incoming().flatten() {
            held.push(stream);
        }
    });

    let exe = std::env::current_exe().context("cannot find the pageflow binary")?;
    let mut child = Command::new(exe)
        .arg("run")
        .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
        .env("PAGEFLOW__SINKS__DIR", work.join("data"))
        .env("PAGEFLOW__CHECKPOINT__ENABLED", "false")
        .env(
            "PAGEFLOW__SOURCE__EVENTS_PER_SECOND",
            settings.events_per_second.to_string(),
        )
        .env("PAGEFLOW__SEMANTICS__SLIDE", "\"1s\"")
        .env("PAGEFLOW__SEMANTICS__TRENDING_WINDOW", "\"20s\"")
        .env("PAGEFLOW__SEMANTICS__TRENDING_RECENT", "\"5s\"")
        .env("PAGEFLOW__SEMANTICS__COOC_WINDOW", "\"60s\"")
        .env("PAGEFLOW__SEMANTICS__RELATED_INTERVAL", "\"2s\"")
        .env("PAGEFLOW__SEMANTICS__MAX_OUT_OF_ORDERNESS", "\"1s\"")
        .env(
            "PAGEFLOW__AWS__ENDPOINT_URL",
            format!("http://{blackhole_addr}"),
        )
        .env("PAGEFLOW__AWS__REGION", "us-east-1")
        .env(
            "PAGEFLOW__PERSONALIZE__PORTALS__G1__CAMPAIGN_ARN",
            "arn:aws:personalize:us-east-1:000000000000:campaign/bench",
        )
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("RUST_LOG", "warn,pageflow=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start pageflow run")?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    let job = Job(child);
    let addr = announced_address(stderr)?;
    eprintln!("job serving on http://{addr}/; waiting for rankings and related lists …");

    let portals = ["g1", "ge", "gshow"];
    let articles = wait_for_articles(&addr, &portals)?;
    let ranking_paths: Vec<String> = portals
        .iter()
        .flat_map(|p| {
            [
                format!("/v1/portals/{p}/popular?n=10"),
                format!("/v1/portals/{p}/trending?n=10"),
            ]
        })
        .collect();
    let related_paths: Vec<String> = articles
        .iter()
        .map(|(portal, article)| {
            format!(
                "/v1/articles/{}/related?portal={portal}&n=10",
                percent_encode(article)
            )
        })
        .collect();
    let reader_paths: Vec<String> = (0..200)
        .map(|i| format!("/v1/users/u{i}/recommendations?portal=g1&n=10"))
        .collect();

    let mut figures = Vec::new();
    let mut record = |name: String, value: f64, unit: &'static str| {
        println!("{name:<56} {value:>12.2} {unit}");
        figures.push(Figure { name, value, unit });
    };
    let full = settings.seconds;
    for (scenario, paths, seconds) in [
        ("popular+trending", &ranking_paths, full),
        ("related", &related_paths, full),
        // The first calls wait out the budget until the breaker opens: measured apart.
        (
            "recommendations, Personalize down, first 3 s",
            &reader_paths,
            3,
        ),
        (
            "recommendations, Personalize down, breaker open",
            &reader_paths,
            full,
        ),
    ] {
        let result = wrk(
            &addr,
            paths,
            LoadSettings {
                seconds,
                ..settings
            },
            &work,
        )?;
        record(
            format!("{scenario}: requests/s"),
            result.requests_per_second,
            "req/s",
        );
        record(format!("{scenario}: p50"), result.p50_ms, "ms");
        record(format!("{scenario}: p99"), result.p99_ms, "ms");
        if result.failed > 0 {
            record(
                format!("{scenario}: non-2xx answers"),
                result.failed as f64,
                "answers",
            );
        }
    }
    drop(job);
    let _ = std::fs::remove_dir_all(&work);
    Ok(figures)
}

/// A fresh scratch directory under the system's temporary directory.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pageflow-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Reads the job's log until it says where it serves.
pub(super) fn announced_address(stderr: std::process::ChildStderr) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = BufReader::new(stderr).lines();
    while Instant::now() < deadline {
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read the job's log")?;
        if let Some(start) = line.find("http://") {
            let rest = &line[start + "http://".len()..];
            let addr = rest.split('/').next().unwrap_or_default().to_string();
            // Keep draining the log, or the job blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok(addr);
        }
    }
    Err(anyhow!("the job did not say where it serves within 60 s"))
}

/// Waits until every portal has a popular ranking and related lists exist; returns
/// `(portal, article)` pairs that have a related list.
fn wait_for_articles(addr: &str, portals: &[&str]) -> Result<Vec<(String, String)>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let mut found = Vec::new();
        for portal in portals {
            let Some((200, body)) = get(addr, &format!("/v1/portals/{portal}/popular?n=20")) else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            for item in value["items"].as_array().into_iter().flatten() {
                let Some(article) = item["article_id"].as_str() else {
                    continue;
                };
                let path = format!(
                    "/v1/articles/{}/related?portal={portal}",
                    percent_encode(article)
                );
                if let Some((200, _)) = get(addr, &path) {
                    found.push(((*portal).to_string(), article.to_string()));
                }
            }
        }
        if found.len() >= 10 {
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(anyhow!(
        "no related lists within 120 s; is the job ingesting? (see its log)"
    ))
}

/// `text` as one path segment: every byte but RFC 3986's unreserved ones percent-encoded (article
/// ids contain `/`).
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// One GET on loopback: status and body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// What wrk measured.
#[derive(Clone, Copy, Debug, Default)]
struct WrkResult {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
}

/// Runs wrk against `paths` in turn.
fn wrk(addr: &str, paths: &[String], settings: LoadSettings, work: &Path) -> Result<WrkResult> {
    let script = work.join("paths.lua");
    let quoted: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        &script,
        format!(
            "local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n",
            quoted.join(", ")
        ),
    )
    .with_context(|| format!("cannot write {}", script.display()))?;
    let output = Command::new("wrk")
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{}", settings.connections))
        .arg(format!("-d{}s", settings.seconds))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}"))
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text).ok_or_else(|| anyhow!("cannot read wrk's output:\n{text}"))
}

/// Reads requests/s, the 50th and 99th latency percentiles and non-2xx answers from wrk's report.
fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut result = WrkResult::default();
    for line in text.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            result.requests_per_second = rate.trim().parse().ok()?;
        } else if let Some(latency) = line.strip_prefix("50%") {
            result.p50_ms = millis(latency.trim())?;
        } else if let Some(latency) = line.strip_prefix("99%") {
            result.p99_ms = millis(latency.trim())?;
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.failed = count.trim().parse().ok()?;
        }
    }
    (result.requests_per_second > 0.0).then_some(result)
}

/// wrk's `812.00us`, `3.21ms` or `1.02s` in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports() {
        let report = "Running 10s test @ http://127.0.0.1:8080
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   510.21us  200.11us   9.20ms   90.00%
  Latency Distribution
     50%  480.00us
     75%  600.00us
     90%  700.00us
     99%    1.20ms
  612345 requests in 10.00s, 400.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  61234.50
Transfer/sec:     40.00MB
";
        let result = parse_wrk(report).unwrap_or_else(|| panic!("parsed"));
        assert!((result.requests_per_second - 61_234.5).abs() < 1e-9);
        assert!((result.p50_ms - 0.48).abs() < 1e-9);
        assert!((result.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(result.failed, 12);
        assert_eq!(millis("1.5s"), Some(1500.0));
        assert_eq!(percent_encode("g1/a b"), "g1%2Fa%20b");
        assert!(parse_wrk("nothing").is_none());
    }
}
