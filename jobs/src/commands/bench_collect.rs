//! `pageflow bench --collect`: what the collector takes, in accepted events per second and in
//! request latency, on loopback.
//!
//! The collector runs as it runs in production: a child process, `pageflow collect --config
//! <generated toml>` listening on `127.0.0.1:0` (the address it announces is read from its log).
//! `--clients` keep-alive clients, each a thread of this process, `POST /v1/collect` requests of
//! `--batch` valid pageviews for `--seconds` (after one second of warm-up that is not counted);
//! each request is one page's beacon, so its events are of one portal (g1, ge, gshow in turn) and
//! of many readers. Every answer is read; only events the collector says it `accepted` (200) count.
//! Latencies (request written → answer read) go into an HDR histogram: p50, p90, p99, max.
//!
//! Behind the collector, a Kinesis for each `--backend`:
//! - `kinesis-local`: the local Kinesis of the integration tests (`scripts/aws-local/install.sh`
//!   installs it). It is an emulator written for correctness, and it is the bottleneck long
//!   before the collector is: its figures say what the emulator takes;
//! - `noop`: **the collector's cost with a no-op Kinesis**, a loopback HTTP server in this process
//!   that answers every `PutRecords` with success at once (the shape of Kinesis's JSON answer,
//!   nothing stored). A benchmark device only, never used by a test: it measures the collector
//!   (validation, CORS, rate limits, the SDK's request signing and HTTP) and nothing behind it;
//! - an `http://…` URL: any Kinesis endpoint already running (moto, a kinesis-local of your own);
//!   the streams are created there if missing.
//!
//! The load generator, the collector and the backend share this machine's cores: the figures are
//! a floor for the collector on a machine of its own.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;

use super::bench::Figure;

/// The portals the generated events belong to (one stream each).
const PORTALS: [&str; 3] = ["g1", "ge", "gshow"];

/// Distinct readers in the generated events.
const READERS: u64 = 50_000;

/// Load not counted at the start, while connections open and caches fill.
const WARM_UP: Duration = Duration::from_secs(1);

/// The slowest latency the histogram holds, in microseconds (a minute).
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// The largest batch the collector takes in one request (`request::MAX_EVENTS`).
const MAX_BATCH: usize = 500;

/// What Kinesis stands behind the collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// kinesis-local, started by the bench (the integration tests' emulator).
    KinesisLocal,
    /// A loopback server in the bench answering every `PutRecords` with success: the collector's
    /// own cost.
    NoOp,
    /// A Kinesis endpoint already running at this URL.
    Endpoint(String),
}

impl Backend {
    /// How the figures name it.
    fn label(&self) -> String {
        match self {
            Backend::KinesisLocal => "kinesis-local".to_string(),
            Backend::NoOp => "no-op Kinesis (collector cost)".to_string(),
            Backend::Endpoint(url) => format!("Kinesis at {url}"),
        }
    }
}

/// Reads `--backend`: comma-separated `kinesis-local`, `noop` or `http(s)://` URLs.
pub fn parse_backends(text: &str) -> Result<Vec<Backend>, String> {
    let mut backends = Vec::new();
    for part in text.split(',').map(str::trim) {
        let backend = match part {
            "kinesis-local" => Backend::KinesisLocal,
            "noop" => Backend::NoOp,
            url if url.starts_with("http://") || url.starts_with("https://") => {
                Backend::Endpoint(url.trim_end_matches('/').to_string())
            }
            other => {
                return Err(format!(
                    "`{other}` is not a backend: write `kinesis-local`, `noop` or a Kinesis endpoint URL such as `http://127.0.0.1:4567`, comma-separated"
                ));
            }
        };
        if !backends.contains(&backend) {
            backends.push(backend);
        }
    }
    Ok(backends)
}

/// Settings of `pageflow bench --collect`.
#[derive(Clone, Debug)]
pub struct CollectBenchSettings {
    /// Seconds of measured load per backend (after one second of warm-up, not counted).
    pub seconds: u64,
    /// Concurrent keep-alive clients.
    pub clients: u32,
    /// Events per request.
    pub batch: usize,
    /// The Kinesis backends measured, in turn.
    pub backends: Vec<Backend>,
}

impl CollectBenchSettings {
    /// Every problem with the settings, each naming the flag and what to do.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.seconds == 0 {
            problems.push("--seconds must be at least 1".to_string());
        }
        if self.clients == 0 {
            problems.push("--clients must be at least 1".to_string());
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            problems.push(format!(
                "--batch {} is outside 1..={MAX_BATCH}: the collector takes at most {MAX_BATCH} events per request",
                self.batch
            ));
        }
        if self.backends.is_empty() {
            problems.push(
                "--backend names no backend: write `kinesis-local`, `noop` or a URL".to_string(),
            );
        }
        problems
    }
}

/// The latency percentiles of one run, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl LatencySummary {
    /// The percentiles of `histogram` (microseconds).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Runs the load against a collector in front of each backend and returns the figures.
pub fn run(settings: &CollectBenchSettings) -> Result<Vec<Figure>> {
    let problems = settings.validate();
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the bench's threads")?;
    let mut figures = Vec::new();
    let mut record = |name: String, value: f64, unit: &'static str| {
        println!("{name:<64} {value:>12.2} {unit}");
        figures.push(Figure { name, value, unit });
    };
    println!(
        "pageflow bench --collect: {} clients, {} events per request, {} s per backend ({} build)",
        settings.clients,
        settings.batch,
        settings.seconds,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    for backend in &settings.backends {
        let work = scratch_dir(backend)?;
        let (endpoint, _server) = start_backend(&runtime, backend)?;
        runtime.block_on(create_streams(&endpoint))?;
        let collector = start_collector(&work, &endpoint)?;
        let cpu_before = cpu_seconds(collector.child.id());
        let result = drive_load(&collector.addr, settings)?;
        let cpu_after = cpu_seconds(collector.child.id());
        // Where the events went: with a slow backend the collector makes them durable in its
        // spool instead, and the figures then measure the spool, not Kinesis.
        let paths = get(&collector.addr, "/metrics")
            .map(|(_, body)| written_by_path(&String::from_utf8_lossy(&body)))
            .unwrap_or_default();
        drop(collector);
        let _ = std::fs::remove_dir_all(&work);

        let label = backend.label();
        let latency = LatencySummary::of(&result.latency);
        record(
            format!("collect, {label}: accepted events/s"),
            result.accepted as f64 / result.seconds,
            "events/s",
        );
        record(
            format!("collect, {label}: requests/s"),
            result.answered as f64 / result.seconds,
            "req/s",
        );
        record(format!("collect, {label}: p50"), latency.p50_ms, "ms");
        record(format!("collect, {label}: p90"), latency.p90_ms, "ms");
        record(format!("collect, {label}: p99"), latency.p99_ms, "ms");
        record(format!("collect, {label}: max"), latency.max_ms, "ms");
        // The collector's own CPU time over the whole run (warm-up included), per accepted event
        // of the whole run: what one event costs it, whatever shares the cores.
        if let (Some(before), Some(after)) = (cpu_before, cpu_after)
            && result.accepted_all > 0
        {
            let per_event = (after - before) / result.accepted_all as f64;
            record(
                format!("collect, {label}: collector CPU per event"),
                per_event * 1e6,
                "µs",
            );
            record(
                format!("collect, {label}: events/s per collector core"),
                1.0 / per_event,
                "events/s",
            );
        }
        for (path, events) in &paths {
            record(
                format!("collect, {label}: events written to {path} (whole run)"),
                *events as f64,
                "events",
            );
        }
        if result.refused > 0 {
            record(
                format!("collect, {label}: requests not answered 200"),
                result.refused as f64,
                "requests",
            );
        }
    }
    Ok(figures)
}

/// CPU time the process `pid` has used, in seconds: the sum over its threads of the first field
/// of `/proc/<pid>/task/<tid>/schedstat` (nanoseconds on a CPU). `None` where there is no such
/// file (not Linux, or no schedstats).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let mut nanos: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanos += schedstat_run_nanos(&text)?;
    }
    Some(nanos as f64 / 1e9)
}

/// The first field of a `schedstat` line: nanoseconds spent running.
fn schedstat_run_nanos(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `pageflow_collect_events_written_total{path="…"}` of the collector's `/metrics`: events made
/// durable by path (kinesis, sqs, spool), those with any.
fn written_by_path(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("pageflow_collect_events_written_total{path=\"")?;
            let (path, rest) = rest.split_once('"')?;
            let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            (value > 0.0).then(|| (path.to_string(), value as u64))
        })
        .collect()
}

/// A fresh scratch directory for one backend's collector (its config and spool).
fn scratch_dir(backend: &Backend) -> Result<PathBuf> {
    let name = match backend {
        Backend::KinesisLocal => "kinesis-local",
        Backend::NoOp => "noop",
        Backend::Endpoint(_) => "endpoint",
    };
    let dir = std::env::temp_dir().join(format!(
        "pageflow-bench-collect-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A backend kept running until dropped.
enum RunningBackend {
    /// The no-op server's task.
    NoOp(tokio::task::JoinHandle<()>),
    /// kinesis-local's process.
    KinesisLocal(Child),
    /// Somebody else's server.
    External,
}

impl Drop for RunningBackend {
    fn drop(&mut self) {
        match self {
            RunningBackend::NoOp(task) => task.abort(),
            RunningBackend::KinesisLocal(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            RunningBackend::External => {}
        }
    }
}

/// Starts `backend`; returns its endpoint URL.
fn start_backend(
    runtime: &tokio::runtime::Runtime,
    backend: &Backend,
) -> Result<(String, RunningBackend)> {
    match backend {
        Backend::NoOp => {
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .context("cannot bind a loopback port for the no-op Kinesis")?;
            let addr = listener.local_addr()?;
            let task = runtime.spawn(async move {
                let _ = axum::serve(listener, noop_kinesis::router()).await;
            });
            Ok((format!("http://{addr}"), RunningBackend::NoOp(task)))
        }
        Backend::KinesisLocal => {
            let (endpoint, child) = start_kinesis_local()?;
            Ok((endpoint, RunningBackend::KinesisLocal(child)))
        }
        Backend::Endpoint(url) => Ok((url.clone(), RunningBackend::External)),
    }
}

/// The installed kinesis-local's `main.js`.
fn kinesis_local_main() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/aws-local/node_modules/kinesis-local/main.js")
}

/// Starts kinesis-local on a free port (plain HTTP) and waits for its health check.
fn start_kinesis_local() -> Result<(String, Child)> {
    let main = kinesis_local_main();
    if !main.is_file() {
        bail!(
            "kinesis-local is not installed ({} does not exist): run `bash scripts/aws-local/install.sh`, or leave it out with `--backend noop`",
            main.display()
        );
    }
    let package = main
        .parent()
        .context("main.js lies in the package's directory")?;
    let plain = free_port()?;
    let tls = free_port()?;
    // Runs main.js and exits when standard input ends: the bench holds the pipe, so a bench
    // killed without its `Drop` does not leave the server behind.
    const EXIT_WITH_STDIN: &str = "process.stdin.on('end', () => process.exit(0)); \
         process.stdin.on('error', () => process.exit(0)); \
         process.stdin.resume(); \
         require(process.argv[1]);";
    let mut command = Command::new("node");
    command
        .args(["-e", EXIT_WITH_STDIN])
        .arg(&main)
        .current_dir(package)
        .env("KINESIS_MOCK_PLAIN_PORT", plain.to_string())
        .env("KINESIS_MOCK_TLS_PORT", tls.to_string())
        .env("KINESIS_MOCK_CERT_PATH", package.join("server.json"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCOUNT_ID", "000000000000")
        .env("SHOULD_PERSIST_DATA", "false")
        .env("LOAD_DATA_IF_EXISTS", "false")
        .env("LOG_LEVEL", "ERROR")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for variable in ["CREATE_STREAM_DURATION", "UPDATE_SHARD_COUNT_DURATION"] {
        command.env(variable, "0ms");
    }
    let mut child = command
        .spawn()
        .context("cannot start kinesis-local: is `node` installed (Node.js 18 or later)?")?;
    let endpoint = format!("http://127.0.0.1:{plain}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = get(&format!("127.0.0.1:{plain}"), "/healthcheck") {
            return Ok((endpoint, child));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("kinesis-local exited at start ({status}); run it by hand to see why");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("kinesis-local did not answer its health check within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP port free on loopback just now.
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// The stream of `portal` in the bench.
fn stream_name(portal: &str) -> String {
    format!("bench-pageviews-{portal}")
}

/// Creates the portals' streams at `endpoint` (those already there are kept) and waits until
/// each is `ACTIVE`.
async fn create_streams(endpoint: &str) -> Result<()> {
    use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
    // Local servers take any credentials; the bench's own, so that no provider chain is asked.
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(config);
    for portal in PORTALS {
        let name = stream_name(portal);
        if let Err(error) = client
            .create_stream()
            .stream_name(&name)
            .shard_count(2)
            .send()
            .await
        {
            let exists = error
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception());
            if !exists {
                let (message, _) = pageflow_connectors::aws::classify(&error);
                bail!("cannot create the stream {name} at {endpoint}: {message}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let summary = client
                .describe_stream_summary()
                .stream_name(&name)
                .send()
                .await;
            let active = summary
                .ok()
                .and_then(|s| s.stream_description_summary)
                .is_some_and(|s| s.stream_status == aws_sdk_kinesis::types::StreamStatus::Active);
            if active {
                break;
            }
            if Instant::now() > deadline {
                bail!("the stream {name} at {endpoint} is not ACTIVE after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The collector under load; killed when dropped.
struct RunningCollector {
    child: Child,
    addr: String,
}

impl Drop for RunningCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The origin the generated pages of `portal` send from.
fn origin(portal: &str) -> String {
    format!("https://{portal}.bench.example")
}

/// The collector's configuration: the bench's portals and streams, `endpoint` for AWS.
fn collector_config(spool: &Path, endpoint: &str) -> String {
    let mut text = format!(
        "[collect]\nlisten = \"127.0.0.1:0\"\nspool_dir = {:?}\n\n",
        spool.display().to_string()
    );
    for portal in PORTALS {
        text.push_str(&format!(
            "[[collect.portals]]\nportal = \"{portal}\"\nstream = \"{}\"\norigins = [\"{}\"]\n\n",
            stream_name(portal),
            origin(portal)
        ));
    }
    text.push_str(&format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n"
    ));
    text
}

/// Starts `pageflow collect` in front of `endpoint` and waits until `/readyz` answers 200.
fn start_collector(work: &Path, endpoint: &str) -> Result<RunningCollector> {
    let config = work.join("collect.toml");
    std::fs::write(&config, collector_config(&work.join("spool"), endpoint))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let exe = std::env::current_exe().context("cannot find the pageflow binary")?;
    let mut child = Command::new(exe)
        .arg("collect")
        .arg("--config")
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start pageflow collect")?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    // Killed on every way out from here.
    let mut collector = RunningCollector {
        child,
        addr: String::new(),
    };
    collector.addr = super::bench_serve::announced_address(stderr)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some((200, _)) = get(&collector.addr, "/readyz") {
            return Ok(collector);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(anyhow!(
        "the collector at {} was not ready within 60 s: it could not find its streams",
        collector.addr
    ))
}

/// What the clients measured.
struct LoadResult {
    /// Events the collector accepted in the measured time.
    accepted: u64,
    /// Events the collector accepted in the whole run, warm-up included.
    accepted_all: u64,
    /// Requests answered in the measured time.
    answered: u64,
    /// Of them, answered other than 200.
    refused: u64,
    /// The measured time.
    seconds: f64,
    /// Request latencies in microseconds.
    latency: Histogram<u64>,
}

/// One client's counts.
struct ClientResult {
    accepted: u64,
    accepted_all: u64,
    answered: u64,
    refused: u64,
    latency: Histogram<u64>,
}

/// Runs the clients against `addr` for the warm-up and the measured seconds.
fn drive_load(addr: &str, settings: &CollectBenchSettings) -> Result<LoadResult> {
    let started = Instant::now();
    let measure_from = started + WARM_UP;
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..settings.clients)
        .map(|client| {
            let addr = addr.to_string();
            let stop = Arc::clone(&stop);
            let batch = settings.batch;
            std::thread::spawn(move || run_client(&addr, client, batch, measure_from, &stop))
        })
        .collect();
    std::thread::sleep(WARM_UP + Duration::from_secs(settings.seconds));
    stop.store(true, Ordering::SeqCst);
    let measured_until = Instant::now();
    let mut total = LoadResult {
        accepted: 0,
        accepted_all: 0,
        answered: 0,
        refused: 0,
        seconds: measured_until.duration_since(measure_from).as_secs_f64(),
        latency: latency_histogram()?,
    };
    for handle in handles {
        let client = handle
            .join()
            .map_err(|_| anyhow!("a load client panicked"))??;
        total.accepted += client.accepted;
        total.accepted_all += client.accepted_all;
        total.answered += client.answered;
        total.refused += client.refused;
        total
            .latency
            .add(&client.latency)
            .context("cannot merge the clients' latencies")?;
    }
    Ok(total)
}

/// An empty latency histogram: 1 µs to a minute, 3 significant digits.
fn latency_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
        .map_err(|e| anyhow!("cannot make a latency histogram: {e}"))
}

/// One keep-alive client: requests until `stop`, counting those started after `measure_from`.
fn run_client(
    addr: &str,
    client: u32,
    batch: usize,
    measure_from: Instant,
    stop: &AtomicBool,
) -> Result<ClientResult> {
    let mut result = ClientResult {
        accepted: 0,
        accepted_all: 0,
        answered: 0,
        refused: 0,
        latency: latency_histogram()?,
    };
    let connection =
        TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    connection.set_nodelay(true)?;
    connection.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = connection.try_clone()?;
    let mut reader = BufReader::new(connection);
    let mut request = Vec::with_capacity(512 + batch * 256);
    let mut sequence: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        request.clear();
        let portal = PORTALS[(sequence as usize + client as usize) % PORTALS.len()];
        let body = events_body(client, sequence, batch, portal);
        write!(
            request,
            "POST /v1/collect HTTP/1.1\r\nHost: {addr}\r\nOrigin: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            origin(portal),
            body.len()
        )?;
        request.extend_from_slice(body.as_bytes());
        sequence += 1;

        let sent = Instant::now();
        writer
            .write_all(&request)
            .context("cannot send a request to the collector")?;
        let (status, answer) = read_response(&mut reader)?;
        let elapsed = sent.elapsed();
        let accepted = if status == 200 {
            accepted_count(&answer).unwrap_or(0)
        } else {
            0
        };
        result.accepted_all += accepted;
        if sent < measure_from {
            continue;
        }
        result.answered += 1;
        if status == 200 {
            result.accepted += accepted;
        } else {
            result.refused += 1;
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(MAX_LATENCY_MICROS);
        result
            .latency
            .record(micros.clamp(1, MAX_LATENCY_MICROS))
            .map_err(|e| anyhow!("cannot record a latency: {e}"))?;
    }
    Ok(result)
}

/// A request's body: `batch` valid pageviews of `portal` as a JSON array, each with its own
/// `event_id`, readers spread over [`READERS`].
fn events_body(client: u32, sequence: u64, batch: usize, portal: &str) -> String {
    use std::fmt::Write as _;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut body = String::with_capacity(batch * 200);
    body.push('[');
    for index in 0..batch as u64 {
        if index > 0 {
            body.push(',');
        }
        let n = sequence * batch as u64 + index;
        let reader = (n * 7919 + u64::from(client) * 104_729) % READERS;
        let _ = write!(
            body,
            r#"{{"event_id":"bench-{client}-{sequence}-{index}","portal":"{portal}","user_id":"u-{reader:06}","article_id":"{portal}/noticias/artigo-{:04}","ts":{now},"dwell_ms":{},"scroll_pct":{},"clicks":{}}}"#,
            n % 997,
            (n % 120) * 1000,
            n % 101,
            n % 3
        );
    }
    body.push(']');
    body
}

/// Reads one HTTP/1.1 answer: its status and body (by `Content-Length`; the collector does not
/// chunk its answers).
fn read_response(reader: &mut impl BufRead) -> Result<(u16, Vec<u8>)> {
    let mut head = Vec::with_capacity(256);
    loop {
        let before = head.len();
        let read = reader
            .read_until(b'\n', &mut head)
            .context("cannot read the collector's answer")?;
        if read == 0 {
            bail!("the collector closed the connection");
        }
        if &head[before..] == b"\r\n" {
            break;
        }
    }
    let (status, length) = parse_response_head(&head).ok_or_else(|| {
        anyhow!(
            "cannot read the collector's answer: {}",
            String::from_utf8_lossy(&head)
        )
    })?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .context("cannot read the collector's answer's body")?;
    Ok((status, body))
}

/// The status and `Content-Length` of an answer's head (status line and headers).
fn parse_response_head(head: &[u8]) -> Option<(u16, usize)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()?
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map_or(Some(0), |(_, value)| value.trim().parse().ok())?;
    Some((status, length))
}

/// `accepted` of a 200 answer's body.
fn accepted_count(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["accepted"].as_u64()
}

/// One GET on loopback: status and body.
fn get(addr: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    read_response(&mut BufReader::new(stream)).ok()
}

/// A Kinesis that takes every record and keeps none: for measuring the collector's own cost only.
mod noop_kinesis {
    use axum::Router;
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;

    /// Every Kinesis call is a `POST /` naming its operation in `X-Amz-Target`.
    pub fn router() -> Router {
        Router::new().route("/", post(answer))
    }

    async fn answer(headers: HeaderMap, body: Bytes) -> Response {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let operation = target.rsplit('.').next().unwrap_or_default();
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let name = request["StreamName"]
            .as_str()
            .unwrap_or("bench")
            .to_string();
        let answer = match operation {
            "PutRecords" => {
                let records = request["Records"].as_array().map_or(0, Vec::len);
                let entries: Vec<serde_json::Value> = (0..records)
                    .map(|n| {
                        serde_json::json!({
                            "SequenceNumber": format!("{n}"),
                            "ShardId": "shardId-000000000000"
                        })
                    })
                    .collect();
                serde_json::json!({"FailedRecordCount": 0, "Records": entries})
            }
            "DescribeStreamSummary" => serde_json::json!({
                "StreamDescriptionSummary": {
                    "StreamName": name,
                    "StreamARN": format!("arn:aws:kinesis:us-east-1:000000000000:stream/{name}"),
                    "StreamStatus": "ACTIVE",
                    "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                    "RetentionPeriodHours": 24,
                    "StreamCreationTimestamp": 1_795_435_200,
                    "EnhancedMonitoring": [],
                    "EncryptionType": "NONE",
                    "OpenShardCount": 1,
                    "ConsumerCount": 0
                }
            }),
            "CreateStream" => serde_json::json!({}),
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
                    serde_json::json!({
                        "__type": "UnknownOperationException",
                        "message": format!("the no-op Kinesis of the bench does not answer {other}")
                    })
                    .to_string(),
                )
                    .into_response();
            }
        };
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
            answer.to_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CollectBenchSettings {
        CollectBenchSettings {
            seconds: 10,
            clients: 16,
            batch: 10,
            backends: vec![Backend::NoOp],
        }
    }

    #[test]
    fn settings_out_of_range_are_each_reported() {
        assert_eq!(settings().validate(), Vec::<String>::new());
        let bad = CollectBenchSettings {
            seconds: 0,
            clients: 0,
            batch: 501,
            backends: Vec::new(),
        };
        let problems = bad.validate();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("--batch 501")));
        let zero_batch = CollectBenchSettings {
            batch: 0,
            ..settings()
        };
        assert_eq!(zero_batch.validate().len(), 1);
    }

    #[test]
    fn backends_are_read_in_order_without_repeats() {
        assert_eq!(
            parse_backends("kinesis-local, noop,http://127.0.0.1:4567/,noop"),
            Ok(vec![
                Backend::KinesisLocal,
                Backend::NoOp,
                Backend::Endpoint("http://127.0.0.1:4567".to_string())
            ])
        );
        let problem = parse_backends("moto").unwrap_err();
        assert!(problem.contains("`moto` is not a backend"), "{problem}");
    }

    #[test]
    fn the_summary_gives_percentiles_in_milliseconds() {
        let mut histogram = latency_histogram().unwrap();
        // 1..=1000 µs, then one slow request of 50 ms.
        for micros in 1..=1000 {
            histogram.record(micros).unwrap();
        }
        histogram.record(50_000).unwrap();
        let summary = LatencySummary::of(&histogram);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.01;
        assert!(close(summary.p50_ms, 0.5), "{summary:?}");
        assert!(close(summary.p90_ms, 0.9), "{summary:?}");
        assert!(close(summary.p99_ms, 0.99), "{summary:?}");
        assert!(close(summary.max_ms, 50.0), "{summary:?}");
    }

    #[test]
    fn generated_events_are_valid_pageviews_with_their_own_ids() {
        let body = events_body(3, 42, 10, "ge");
        let events: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert_eq!(events.len(), 10);
        let mut ids = std::collections::BTreeSet::new();
        for event in &events {
            let line = serde_json::to_vec(event).unwrap();
            let valid = pageflow_dataflow::event::validate(&line)
                .unwrap_or_else(|e| panic!("{event} is not valid: {e:?}"));
            assert_eq!(&*valid.portal, "ge");
            ids.insert(event["event_id"].as_str().unwrap().to_string());
        }
        assert_eq!(ids.len(), 10);
    }

    #[test]
    fn written_events_are_read_by_path_from_the_metrics() {
        let metrics = "# TYPE pageflow_collect_events_written_total counter\n\
            pageflow_collect_events_written_total{path=\"kinesis\"} 120\n\
            pageflow_collect_events_written_total{path=\"sqs\"} 0\n\
            pageflow_collect_events_written_total{path=\"spool\"} 7\n\
            pageflow_collect_events_accepted_total 127\n";
        assert_eq!(
            written_by_path(metrics),
            vec![("kinesis".to_string(), 120), ("spool".to_string(), 7)]
        );
    }

    #[test]
    fn cpu_time_is_read_from_schedstat() {
        assert_eq!(
            schedstat_run_nanos("123456789 2000 17\n"),
            Some(123_456_789)
        );
        assert_eq!(schedstat_run_nanos(""), None);
        // This process has used some CPU by now.
        if let Some(seconds) = cpu_seconds(std::process::id()) {
            assert!(seconds > 0.0);
        }
    }

    #[test]
    fn answers_are_read_by_their_content_length() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 30\r\n\r\n{\"accepted\":10,\"rejected\":[]}\nHTTP/1.1 503";
        let mut reader = BufReader::new(&answer[..]);
        let (status, body) = read_response(&mut reader).unwrap();
        assert_eq!(status, 200);
        assert_eq!(accepted_count(&body), Some(10));
        assert_eq!(
            parse_response_head(b"HTTP/1.1 429 Too Many Requests\r\n\r\n"),
            Some((429, 0))
        );
        assert_eq!(parse_response_head(b"SSH-2.0\r\n\r\n"), None);
    }

    #[test]
    fn the_collector_config_lists_every_portal_with_its_origin() {
        let text = collector_config(Path::new("/tmp/spool"), "http://127.0.0.1:1");
        let config: crate::config::JobConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.collect.validate(), Vec::<String>::new());
        assert_eq!(config.collect.portals.len(), PORTALS.len());
        assert_eq!(config.collect.listen, "127.0.0.1:0");
    }
}
